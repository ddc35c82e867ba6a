//! The kernel log, read from `/dev/kmsg` like dmesg(1) does.
//!
//! Each read(2) returns one record, `pri,seq,usec,flags[,…];message\n`
//! followed by optional ` KEY=value` continuation lines. Every open file
//! starts at the oldest record still in the buffer; reads are nonblocking
//! (EAGAIN at the end), EPIPE means records were overwritten before we got
//! to them and the read moves on.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::ring::CLIENT_QUEUE;

pub const DEV_KMSG: &str = "/dev/kmsg";
/// Records are at most about 1 KiB (PRINTK_MESSAGE_MAX); dict lines add more.
const RECORD_MAX: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// syslog level, 0 (emerg) to 7 (debug).
    pub level: u8,
    pub facility: u32,
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    pub message: String,
}

/// One record as read from /dev/kmsg; None if it is not one.
pub fn parse(raw: &[u8]) -> Option<Record> {
    let text = String::from_utf8_lossy(raw);
    let first = text.split('\n').next()?;
    let (prefix, message) = first.split_once(';')?;
    let mut fields = prefix.split(',');
    let pri: u32 = fields.next()?.trim().parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let usec = fields.next()?.parse().ok()?;
    Some(Record {
        level: (pri & 7) as u8,
        facility: pri >> 3,
        seq,
        usec,
        message: message.to_string(),
    })
}

impl Record {
    /// `[    3.123456] message`, as dmesg prints it.
    pub fn line(&self) -> String {
        format!(
            "[{:>5}.{:06}] {}",
            self.usec / 1_000_000,
            self.usec % 1_000_000,
            self.message
        )
    }
}

fn open() -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(DEV_KMSG)
}

/// The next record; `Ok(None)` at the end of the buffer.
fn next_record(f: &mut File, buf: &mut [u8]) -> io::Result<Option<Record>> {
    loop {
        match f.read(buf) {
            Ok(n) => {
                if let Some(r) = buf.get(..n).and_then(parse) {
                    return Ok(Some(r));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // Overwritten before we read it: go on with the next one.
            Err(e) if e.raw_os_error() == Some(Errno::EPIPE as i32) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The last `tail` records, and the file positioned after them.
fn read_tail(tail: usize) -> io::Result<(File, Vec<String>)> {
    let mut f = open()?;
    let mut buf = vec![0u8; RECORD_MAX];
    let mut lines = VecDeque::with_capacity(tail.min(1024));
    while let Some(r) = next_record(&mut f, &mut buf)? {
        if lines.len() == tail {
            lines.pop_front();
        }
        if tail > 0 {
            lines.push_back(r.line());
        }
    }
    Ok((f, lines.into()))
}

/// The kernel log: the last `tail` lines, then (with `follow`) new lines
/// until the client goes away.
pub fn stream(tail: usize, follow: bool) -> io::Result<mpsc::Receiver<String>> {
    let (f, history) = read_tail(tail)?;
    if !follow {
        let (tx, rx) = mpsc::channel(history.len().max(1));
        for line in history {
            let _ = tx.try_send(line);
        }
        return Ok(rx);
    }
    // SAFETY: the AsyncFd owns the File, whose descriptor stays open and
    // the same until the AsyncFd is dropped.
    let f = unsafe { AsyncFd::register_with_interest(f, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    tokio::spawn(follow_kmsg(f, history, tx));
    Ok(rx)
}

async fn follow_kmsg(mut f: AsyncFd<File>, history: Vec<String>, tx: mpsc::Sender<String>) {
    for line in history {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let mut buf = vec![0u8; RECORD_MAX];
    loop {
        let mut guard = tokio::select! {
            g = f.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    let _ = tx.send(format!("-- node-agent: reading {DEV_KMSG}: {e} --")).await;
                    return;
                }
            },
            () = tx.closed() => return,
        };
        loop {
            // try_io clears readiness when the read says WouldBlock.
            let read = guard.try_io(|inner| match inner.get_mut().read(&mut buf) {
                Err(e) if e.raw_os_error() == Some(Errno::EPIPE as i32) => Ok(0),
                other => other,
            });
            match read {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    if let Some(r) = buf.get(..n).and_then(parse) {
                        if tx.send(r.line()).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    let _ = tx
                        .send(format!("-- node-agent: reading {DEV_KMSG}: {e} --"))
                        .await;
                    return;
                }
                Err(_would_block) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_into_level_sequence_time_and_message() {
        let raw = b"6,339,5140900,-;NET: Registered PF_INET6 protocol family\n SUBSYSTEM=net\n DEVICE=+net:eth0\n";
        let r = parse(raw).unwrap();
        assert_eq!(
            r,
            Record {
                level: 6,
                facility: 0,
                seq: 339,
                usec: 5_140_900,
                message: "NET: Registered PF_INET6 protocol family".into(),
            }
        );
        assert_eq!(
            r.line(),
            "[    5.140900] NET: Registered PF_INET6 protocol family"
        );
    }

    #[test]
    fn facility_comes_from_the_high_bits_and_extra_prefix_fields_are_ignored() {
        // pri 30 = facility 3 (daemon), level 6; a fifth field (caller id).
        let r = parse(b"30,7,1000,c,caller=T1;hello; with semicolons\n").unwrap();
        assert_eq!((r.facility, r.level), (3, 6));
        assert_eq!(r.message, "hello; with semicolons");
        assert_eq!(r.line(), "[    0.001000] hello; with semicolons");
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"no semicolon here"), None);
        assert_eq!(parse(b"x,1,2,-;msg"), None);
        assert_eq!(parse(b"6,1;msg"), None);
    }

    #[test]
    fn non_utf8_bytes_do_not_break_parsing() {
        let r = parse(b"4,1,2,-;bad \xff byte\n").unwrap();
        assert_eq!(r.level, 4);
        assert!(r.message.starts_with("bad "));
    }
}
