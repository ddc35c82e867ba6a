//! containerd's health: its API answers `Version`.

use std::path::PathBuf;

use futures_util::future::BoxFuture;

use super::grpc;
use crate::supervisor::Probe;

/// Healthy when containerd answers the version call on its socket. A
/// socket file that exists, or even accepts connections, is not enough:
/// containerd creates it before its plugins are loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdProbe {
    pub socket: PathBuf,
}

impl ContainerdProbe {
    pub fn new(socket: impl Into<PathBuf>) -> ContainerdProbe {
        ContainerdProbe {
            socket: socket.into(),
        }
    }

    /// The node's: `/run/containerd/containerd.sock`.
    pub fn node() -> ContainerdProbe {
        ContainerdProbe::new(caisson_runtime_config::CONTAINERD_SOCKET)
    }
}

impl Probe for ContainerdProbe {
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let v = grpc::version(&self.socket)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "containerd {} (revision {}) answers on {}",
                v.version,
                v.revision,
                self.socket.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_socket_that_only_accepts_is_not_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let probe = ContainerdProbe::new(&path);
        let why = probe.check().await.unwrap_err();
        assert!(why.contains("no socket there"), "{why}");
        // Accepts connections, never speaks gRPC: a probe that only
        // connected would call this healthy.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            drop(s);
        });
        let why = probe.check().await.unwrap_err();
        assert!(why.contains(grpc::VERSION_METHOD), "{why}");
        hold.await.unwrap();
    }
}
