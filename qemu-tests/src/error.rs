use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use thiserror::Error;

/// Debug shows the Display text, so a test returning `Result<(), HarnessError>`
/// or calling `unwrap` prints the console tail readably.
#[derive(Error)]
pub enum HarnessError {
    #[error("{var} is not set: run the QEMU tests through `cargo xtask test`")]
    NotConfigured { var: &'static str },
    #[error("{var}={path} does not exist: run the QEMU tests through `cargo xtask test`")]
    MissingInput { var: &'static str, path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("timed out after {waited:?} waiting for {expected}\n--- last console lines of {console} ---\n{tail}")]
    Timeout {
        expected: String,
        waited: Duration,
        console: PathBuf,
        tail: String,
    },
    #[error("QEMU exited ({status}) before {expected} appeared\n--- last console lines of {console} ---\n{tail}")]
    Exited {
        expected: String,
        status: ExitStatus,
        console: PathBuf,
        tail: String,
    },
    #[error("QEMU was still running {waited:?} after it should have exited\n--- last console lines of {console} ---\n{tail}")]
    StillRunning {
        waited: Duration,
        console: PathBuf,
        tail: String,
    },
    #[error("{error}\n--- last console lines of {console} ---\n{tail}")]
    WithConsole {
        error: Box<HarnessError>,
        console: PathBuf,
        tail: String,
    },
    #[error(
        "timed out after {waited:?} waiting for {expected} from `{command}`; it printed:\n{output}"
    )]
    StreamTimeout {
        command: String,
        expected: String,
        waited: Duration,
        output: String,
    },
    #[error("`{command}` did not finish within {waited:?}; it printed:\n{output}")]
    CommandTimeout {
        command: String,
        waited: Duration,
        output: String,
    },
    #[error("`{command}`: {message}")]
    Output { command: String, message: String },
    #[error("QMP {socket}: {message}")]
    Qmp { socket: PathBuf, message: String },
    #[error("{image}: {message}")]
    Disk { image: PathBuf, message: String },
}

impl std::fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl HarnessError {
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> HarnessError {
        let path = path.into();
        move |source| HarnessError::Io {
            action,
            path,
            source,
        }
    }
}
