//! A minimal QMP client: one JSON object per line over a unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{HarnessError, Result};

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Asynchronous events received while waiting for replies.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connect (retrying while QEMU creates the socket), read the greeting and
    /// leave capabilities negotiation mode.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(HarnessError::Qmp {
                        socket: socket.to_path_buf(),
                        message: format!("cannot connect: {e}"),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let io_err = |e: std::io::Error| HarnessError::Qmp {
            socket: socket.to_path_buf(),
            message: e.to_string(),
        };
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        let mut qmp = Qmp {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(qmp.error(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Run a command and return its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let line = format!("{request}\n");
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.error(format!("cannot send {command}: {e}")))?;
        loop {
            let reply = self.read_message()?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(self.error(format!("{command} failed: {err}")));
            }
            self.events.push(reply);
        }
    }

    /// Press the ACPI power button.
    pub fn system_powerdown(&mut self) -> Result<()> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// The run state, e.g. "running", "shutdown".
    pub fn query_status(&mut self) -> Result<String> {
        let status = self.execute("query-status", None)?;
        Ok(status
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Stop QEMU at once. QEMU may close the socket before it answers.
    pub fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None) {
            Ok(_) => Ok(()),
            Err(HarnessError::Qmp { message, .. }) if message.contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| self.error(format!("cannot read: {e}")))?;
        if n == 0 {
            return Err(self.error("connection closed by QEMU".into()));
        }
        serde_json::from_str(&line).map_err(|e| self.error(format!("bad message {line:?}: {e}")))
    }

    fn error(&self, message: String) -> HarnessError {
        HarnessError::Qmp {
            socket: self.socket.clone(),
            message,
        }
    }
}
