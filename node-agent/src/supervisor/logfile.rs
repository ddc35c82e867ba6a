//! Services' log lines on disk: `<dir>/<name>.log`, rotated to
//! `<name>.log.1` … `<name>.log.<keep>` when it would exceed its size cap,
//! so one service never holds more than `(keep + 1) × file_max` bytes.
//!
//! One thread writes for every service, fed by a bounded queue that the
//! services' readers never wait on: when the queue is full or a write fails
//! (disk full, DATA not mounted yet), the line is counted as dropped (it is
//! still in the service's in-memory log), and the next line that can be
//! written is preceded by a note saying how many went missing.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use tracing::warn;

/// Production: /var/log/caisson (on DATA).
pub const LOG_DIR: &str = "/var/log/caisson";
/// Lines waiting for the writer thread, across services.
pub const QUEUE: usize = 4096;

/// Size caps of one service's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A file is rotated before it would grow past this.
    pub file_max: u64,
    /// Rotated files kept besides the current one.
    pub keep: usize,
}

impl Default for LogLimits {
    fn default() -> LogLimits {
        LogLimits {
            file_max: 4 << 20,
            keep: 3,
        }
    }
}

/// One service's log file.
pub struct RotatingFile {
    path: PathBuf,
    limits: LogLimits,
    file: Option<File>,
    size: u64,
    /// Lines that did not reach the file, counted by whoever lost them.
    dropped: Arc<AtomicU64>,
    /// How many of those the file already has a note about.
    noted: u64,
}

impl RotatingFile {
    pub fn new(dir: &Path, name: &str, limits: LogLimits, dropped: Arc<AtomicU64>) -> RotatingFile {
        RotatingFile {
            path: dir.join(format!("{name}.log")),
            limits,
            file: None,
            size: 0,
            dropped,
            noted: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line; a failure counts it as dropped.
    pub fn write_line(&mut self, line: &str) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let mut text = String::new();
        if dropped > self.noted {
            text.push_str(&format!(
                "-- node-agent: {} lines missing here (disk full or too slow); the in-memory log has the latest --\n",
                dropped - self.noted
            ));
        }
        text.push_str(line);
        text.push('\n');
        match self.append(text.as_bytes()) {
            Ok(()) => self.noted = dropped,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                // Reopen next time: the file may have been the problem.
                self.file = None;
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = bytes.len() as u64;
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && self.size.saturating_add(len) > self.limits.file_max {
            self.rotate()?;
        }
        let file = match self.file.as_mut() {
            Some(f) => f,
            None => self.open()?,
        };
        file.write_all(bytes)?;
        self.size += len;
        Ok(())
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        Ok(self.file.insert(file))
    }

    /// `<name>.log.<keep-1>` → `.<keep>`, …, `<name>.log` → `.1`; the oldest
    /// is replaced by the rename.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.limits.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.limits.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.size = 0;
        Ok(())
    }
}

/// What the writer thread is sent.
enum Message {
    Line(usize, Arc<str>),
    /// Write what came before, close every file and end: DATA is about
    /// to be unmounted, and a file PID 1 holds open for writing keeps it
    /// busy (neither unmount nor a read-only remount would succeed).
    Close(tokio::sync::oneshot::Sender<()>),
}

/// The services' side of the writer thread.
#[derive(Clone)]
pub struct LogWriter {
    queue: Option<SyncSender<Message>>,
}

impl LogWriter {
    /// Start the thread; `files[i]` is service `i`'s file.
    pub fn start(files: Vec<RotatingFile>) -> LogWriter {
        let (tx, rx) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("service-logs".into())
            .spawn(move || write_all(rx, files));
        match spawned {
            Ok(_) => LogWriter { queue: Some(tx) },
            Err(e) => {
                warn!("supervisor: cannot start the log writer thread: {e}; service logs are kept in memory only");
                LogWriter { queue: None }
            }
        }
    }

    /// Queue a line without waiting; false if it was dropped.
    pub fn send(&self, service: usize, line: Arc<str>) -> bool {
        match &self.queue {
            Some(tx) => match tx.try_send(Message::Line(service, line)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        }
    }

    /// Write the lines queued so far, close every file and stop the
    /// thread; lines sent afterwards are dropped (they stay in the
    /// services' in-memory logs). Waits at most `limit`.
    pub async fn close(&self, limit: std::time::Duration) {
        let Some(tx) = &self.queue else { return };
        let (done, closed) = tokio::sync::oneshot::channel();
        let mut message = Message::Close(done);
        let closing = async {
            // The queue may be full; the thread is draining it.
            loop {
                match tx.try_send(message) {
                    Ok(()) => break,
                    Err(TrySendError::Disconnected(_)) => return,
                    Err(TrySendError::Full(m)) => {
                        message = m;
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
            let _ = closed.await;
        };
        if tokio::time::timeout(limit, closing).await.is_err() {
            warn!("supervisor: the service log files were not closed within {limit:?}");
        }
    }
}

/// Runs until every [`LogWriter`] is gone, or until told to close.
fn write_all(rx: Receiver<Message>, mut files: Vec<RotatingFile>) {
    while let Ok(message) = rx.recv() {
        match message {
            Message::Line(service, line) => {
                if let Some(file) = files.get_mut(service) {
                    file.write_line(&line);
                }
            }
            Message::Close(done) => {
                drop(files);
                // From now on a send fails, and counts its line as dropped.
                drop(rx);
                let _ = done.send(());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(dir: &Path) -> Vec<(String, u64)> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn rotation_keeps_the_newest_files_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            file_max: 100,
            keep: 3,
        };
        let mut file = RotatingFile::new(dir.path(), "svc", limits, Arc::default());
        // 30 lines of 10 bytes: 300 bytes, rotated every 10 lines.
        for i in 0..30 {
            file.write_line(&format!("line {i:04}"));
        }
        let all = sizes(dir.path());
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["svc.log", "svc.log.1", "svc.log.2"]);
        assert!(all.iter().all(|(_, size)| *size <= 100), "{all:?}");
        for i in 30..75 {
            file.write_line(&format!("line {i:04}"));
        }
        let all = sizes(dir.path());
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["svc.log", "svc.log.1", "svc.log.2", "svc.log.3"]);
        let total: u64 = all.iter().map(|(_, s)| s).sum();
        assert!(total <= 4 * 100, "{all:?}");
        // Newest last in svc.log, older ones in .1, .2, .3 in order.
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert!(read("svc.log").ends_with("line 0074\n"));
        assert!(read("svc.log.1").ends_with("line 0069\n"));
        assert!(
            read("svc.log.3").starts_with("line 0040\n"),
            "{}",
            read("svc.log.3")
        );
    }

    #[test]
    fn an_existing_file_is_continued_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("svc.log"), "x".repeat(95)).unwrap();
        let limits = LogLimits {
            file_max: 100,
            keep: 1,
        };
        let mut file = RotatingFile::new(dir.path(), "svc", limits, Arc::default());
        file.write_line("after a reboot");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("svc.log")).unwrap(),
            "after a reboot\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("svc.log.1"))
                .unwrap()
                .len(),
            95
        );
    }

    #[test]
    fn failed_writes_are_counted_and_noted_once_writing_works_again() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("logs");
        // A file where the directory should be: every open fails.
        std::fs::write(&blocked, "").unwrap();
        let dropped = Arc::new(AtomicU64::new(0));
        let mut file = RotatingFile::new(&blocked, "svc", LogLimits::default(), dropped.clone());
        file.write_line("one");
        file.write_line("two");
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        std::fs::remove_file(&blocked).unwrap();
        file.write_line("three");
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap(),
            "-- node-agent: 2 lines missing here (disk full or too slow); the in-memory log has the latest --\nthree\n"
        );
        file.write_line("four");
        assert!(std::fs::read_to_string(file.path())
            .unwrap()
            .ends_with("three\nfour\n"));
    }

    #[test]
    fn the_writer_thread_writes_each_service_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = ["a", "b"]
            .iter()
            .map(|n| RotatingFile::new(dir.path(), n, LogLimits::default(), Arc::default()))
            .collect();
        let writer = LogWriter::start(files);
        assert!(writer.send(0, Arc::from("to a")));
        assert!(writer.send(1, Arc::from("to b")));
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap_or_default();
        for _ in 0..200 {
            if read("a.log") == "to a\n" && read("b.log") == "to b\n" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("a.log: {:?}, b.log: {:?}", read("a.log"), read("b.log"));
    }

    /// What was queued is written; afterwards nothing is (re)opened, so
    /// nothing of the agent keeps DATA busy at shutdown.
    #[tokio::test]
    async fn close_writes_what_was_queued_then_holds_no_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![RotatingFile::new(
            dir.path(),
            "a",
            LogLimits::default(),
            Arc::default(),
        )];
        let writer = LogWriter::start(files);
        for i in 0..100 {
            assert!(writer.send(0, Arc::from(format!("line {i}"))));
        }
        writer.close(std::time::Duration::from_secs(10)).await;
        let text = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
        assert_eq!(text.lines().count(), 100, "{text}");
        assert!(text.ends_with("line 99\n"), "{text}");
        assert!(!writer.send(0, Arc::from("after the close")));
        let own_fds: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir.path()))
            .collect();
        assert!(own_fds.is_empty(), "still open: {own_fds:?}");
        // A second close (a second stop_all) returns at once.
        writer.close(std::time::Duration::from_secs(10)).await;
    }
}
