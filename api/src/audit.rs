//! The audit log: one JSON object per line on STATE, appended and fsynced
//! before the caller gets an answer. Records every mutating call and every
//! refusal.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Client certificate CN; "-" when there was none.
    pub cn: String,
    /// Role from the certificate; "-" when none or invalid.
    pub role: String,
    /// Endpoint name, or "tls" for handshake refusals.
    pub endpoint: String,
    /// Arguments with secrets masked.
    pub args: serde_json::Value,
    /// "ok", "refused: …" or "error: …".
    pub result: String,
}

impl AuditRecord {
    pub fn now(cn: &str, role: &str, endpoint: &str, args: serde_json::Value, result: String) -> AuditRecord {
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        AuditRecord { time_ms, cn: cn.into(), role: role.into(), endpoint: endpoint.into(), args, result }
    }
}

pub struct AuditLog {
    path: PathBuf,
    // Serialises appends so lines never interleave.
    lock: Mutex<()>,
}

impl AuditLog {
    pub fn new(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog { path: path.into(), lock: Mutex::new(()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record and fsync it.
    pub fn append(&self, record: &AuditRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// The last `n` records (all when the log is shorter). Lines that do not
    /// parse (a torn last line after a power cut) are skipped.
    pub fn tail(&self, n: usize) -> io::Result<Vec<AuditRecord>> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = std::collections::VecDeque::with_capacity(n.min(4096));
        for line in BufReader::new(f).lines() {
            let line = line?;
            if let Ok(r) = serde_json::from_str::<AuditRecord>(&line) {
                if out.len() == n {
                    out.pop_front();
                }
                if n > 0 {
                    out.push_back(r);
                }
            }
        }
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn appends_owner_only_lines_and_tails_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("audit.jsonl"));
        assert!(log.tail(5).unwrap().is_empty());
        for i in 0..5 {
            log.append(&AuditRecord::now("alice", "admin", "reboot", serde_json::json!({ "i": i }), "ok".into()))
                .unwrap();
        }
        // A torn line, as a power cut could leave.
        std::fs::OpenOptions::new().append(true).open(log.path()).unwrap().write_all(b"{\"time_ms\":1,").unwrap();
        let last = log.tail(2).unwrap();
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].args["i"], 4);
        assert_eq!(log.tail(100).unwrap().len(), 5);
        let mode = std::fs::metadata(log.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
