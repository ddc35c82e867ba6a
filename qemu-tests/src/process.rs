//! Host programs that talk to a running VM (nodectl, curl): run with a time
//! limit, or keep running and collect their output line by line. A network
//! call into a VM can hang, so nothing here waits without a bound.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::tools::describe;
use crate::{HarnessError, Result};

const POLL: Duration = Duration::from_millis(50);

/// A command that ran to its end.
#[derive(Debug, Clone)]
pub struct Finished {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout if the command succeeded, else an error with both outputs.
    pub fn ok(self) -> Result<String> {
        if self.success() {
            return Ok(self.stdout);
        }
        Err(HarnessError::Command {
            stderr: self.output(),
            command: self.command,
            status: self.status,
        })
    }

    /// stdout then stderr, for messages and for looking for a sentence
    /// wherever the program printed it.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `cmd` to completion, killing it (by its own pid) after `timeout`.
pub fn run_for(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    let command = describe(cmd);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HarnessError::Spawn {
            program: command.clone(),
            source,
        })?;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Spawn {
                    program: command,
                    source: e,
                });
            }
        }
    };
    let took = started.elapsed();
    let (stdout, stderr) = (joined(stdout), joined(stderr));
    match status {
        Some(status) => Ok(Finished {
            command,
            status,
            stdout,
            stderr,
            took,
        }),
        None => Err(HarnessError::CommandTimeout {
            command,
            waited: timeout,
            output: format!("{stdout}{stderr}"),
        }),
    }
}

fn read_all<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }))
}

fn joined(reader: Option<JoinHandle<String>>) -> String {
    reader.and_then(|r| r.join().ok()).unwrap_or_default()
}

/// A program that keeps printing (`nodectl logs -f`): its stdout lines are
/// collected as they come. Dropping it kills the program (by its own pid).
pub struct Stream {
    command: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// Index of the line the next search starts at.
    cursor: usize,
}

impl Stream {
    pub fn spawn(cmd: &mut Command) -> Result<Stream> {
        let command = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: command.clone(),
                source,
            })?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    stderr
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            });
        }
        Ok(Stream {
            command,
            child,
            lines,
            stderr,
            cursor: 0,
        })
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the program still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for a stdout line satisfying `matches`, searching from the
    /// previous match (inclusive) like the console does.
    pub fn wait_for(
        &mut self,
        expected: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(i) = lines[self.cursor..].iter().position(|l| matches(l)) {
                    self.cursor += i;
                    return Ok(lines[self.cursor].clone());
                }
            }
            let exited = !self.is_running();
            if exited || Instant::now() >= deadline {
                let why = if exited { " (it exited)" } else { "" };
                return Err(HarnessError::StreamTimeout {
                    command: self.command.clone(),
                    expected: format!("{expected}{why}"),
                    waited: timeout,
                    output: self.output(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(&format!("a line containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// stdout lines, then stderr, for failure messages.
    pub fn output(&self) -> String {
        let mut out = self.lines().join("\n");
        let err = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        if !err.is_empty() {
            out.push_str("\n--- stderr ---\n");
            out.push_str(&err);
        }
        out
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `attempt` until it succeeds or `timeout` has passed; returns the first
/// success or the last failure. For "the node answers again".
pub fn retry<T>(
    timeout: Duration,
    pause: Duration,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(pause),
        }
    }
}
