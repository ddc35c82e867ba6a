//! The API listener and its supervisor.
//!
//! The listener serves one mode with one certificate. The supervisor
//! restarts it (new certificate, new router, maybe a new port) when the
//! agent asks (a config apply: first config, `[api]` or host name changed)
//! and when the node's addresses change, which it checks when the network
//! backend reports a change (`Node::follow_network` wakes it: a DHCP lease
//! bound or ended) and every [`ADDRESS_POLL`] besides (addresses the kernel
//! expires, or someone else adds). In maintenance mode address changes are ignored: the
//! throwaway certificate's fingerprint must stay what the console showed.
//!
//! A failure to serve (bind, certificate) is logged and retried every
//! [`RETRY`]; it never reaches the rest of the agent. Stopping a listener
//! only stops accepting: connections in flight (such as the apply call that
//! caused the restart) finish on their own tasks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use caisson_api::{Mode, DEFAULT_PORT};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::{certs, ConfigState, Node};

pub const ADDRESS_POLL: Duration = Duration::from_secs(5);
pub const RETRY: Duration = Duration::from_secs(5);

/// What the listener was started for; a difference means a restart.
#[derive(Debug, Clone, PartialEq)]
struct ServeKey {
    mode: Mode,
    port: u16,
    hostname: String,
    addresses: Vec<IpAddr>,
    api: Option<caisson_config::Api>,
    why: String,
}

impl ServeKey {
    /// Whether `other` needs a new listener.
    fn differs(&self, other: &ServeKey) -> bool {
        match (self.mode, other.mode) {
            (Mode::Maintenance, Mode::Maintenance) => self.port != other.port,
            _ => self != other,
        }
    }
}

struct Serving {
    key: ServeKey,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct Supervisor {
    node: Arc<Node>,
    serving: Option<Serving>,
    /// The address listing failed and that was said once.
    warned: bool,
}

/// Phase `api`: serve, then keep serving. The result of the first start is
/// the phase's.
pub async fn start(node: Arc<Node>) -> Result<String, String> {
    let mut sup = Supervisor {
        node,
        serving: None,
        warned: false,
    };
    let first = sup.restart().await;
    tokio::spawn(sup.run());
    first
}

impl Supervisor {
    async fn key(&mut self) -> ServeKey {
        let status = self.node.status();
        let mut addresses = match self.node.network.addresses().await {
            Ok(a) => {
                self.warned = false;
                a
            }
            Err(e) => {
                if !self.warned {
                    warn!("api: {e}; the certificate names the host only");
                    self.warned = true;
                }
                Vec::new()
            }
        };
        addresses.sort();
        let why = match &status.config {
            ConfigState::Maintenance { why } => why.clone(),
            ConfigState::Applied { .. } => String::new(),
        };
        ServeKey {
            mode: status.mode,
            port: match (status.mode, &status.api) {
                (Mode::Normal, Some(api)) => api.port,
                _ => DEFAULT_PORT,
            },
            hostname: status.hostname,
            addresses,
            api: status.api,
            why,
        }
    }

    async fn stop(&mut self) {
        if let Some(s) = self.serving.take() {
            let _ = s.stop.send(true);
            if let Err(e) = s.task.await {
                warn!("api: the listener task ended badly: {e}");
            }
            self.node.set_serving(None);
        }
    }

    /// Stop whatever serves, and serve afresh. The console line on success.
    async fn restart(&mut self) -> Result<String, String> {
        self.stop().await;
        let key = self.key().await;
        let tls = match (key.mode, &key.api) {
            (Mode::Normal, Some(api)) => {
                certs::normal(api, &key.hostname, &key.addresses, self.node.audit.clone())?
            }
            _ => certs::maintenance(&key.why, &key.hostname, &key.addresses, key.port)?,
        };
        let listener = bind(key.port).await?;
        let router =
            caisson_api::server::router(self.node.clone(), self.node.audit.clone(), key.mode);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(caisson_api::server::serve(
            listener, tls.config, router, stopped,
        ));
        info!("{}", tls.line);
        self.node.set_serving(Some(tls.detail));
        self.serving = Some(Serving { key, stop, task });
        Ok(tls.line)
    }

    async fn run(mut self) {
        loop {
            let wait = if self.serving.is_some() {
                ADDRESS_POLL
            } else {
                RETRY
            };
            tokio::select! {
                () = self.node.api_restart.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            // Asked or not, restart only for a difference: an apply may ask
            // twice (mode and [api]), and polls mostly find nothing new.
            if self.serving.is_some() {
                let now = self.key().await;
                let Some(serving) = &self.serving else {
                    continue;
                };
                if !serving.key.differs(&now) {
                    continue;
                }
                info!("api: restarting: {}", why_restart(&serving.key, &now));
            }
            if let Err(e) = self.restart().await {
                error!("api: cannot serve: {e}; retrying in {} s", RETRY.as_secs());
            }
        }
    }
}

fn why_restart(old: &ServeKey, new: &ServeKey) -> String {
    match (old.mode, new.mode) {
        (Mode::Maintenance, Mode::Normal) => {
            "the node has a config now: mutual TLS from here on".into()
        }
        (Mode::Normal, Mode::Maintenance) => format!("back to maintenance mode ({})", new.why),
        _ if old.api != new.api => "the config's [api] changed".into(),
        _ => format!(
            "host name or addresses changed; re-issuing the server certificate for {}, {}",
            new.hostname,
            certs::sans(&new.addresses).join(", ")
        ),
    }
}

/// All addresses, IPv6 and (through it, or on its own when IPv6 is off)
/// IPv4.
async fn bind(port: u16) -> Result<TcpListener, String> {
    match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(l) => Ok(l),
        Err(v6) => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .map_err(|v4| format!("binding port {port}: {v4} (IPv6: {v6})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mode: Mode, addresses: &[&str]) -> ServeKey {
        ServeKey {
            mode,
            port: 50443,
            hostname: "n".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            api: None,
            why: "no machine config".into(),
        }
    }

    #[test]
    fn new_addresses_renew_the_certificate_only_outside_maintenance_mode() {
        let a = key(Mode::Normal, &["10.0.2.15"]);
        let b = key(Mode::Normal, &["10.0.2.15", "10.0.3.1"]);
        assert!(a.differs(&b));
        assert!(!a.differs(&a.clone()));
        let m1 = key(Mode::Maintenance, &["10.0.2.15"]);
        let m2 = key(Mode::Maintenance, &["10.0.3.1"]);
        assert!(
            !m1.differs(&m2),
            "the fingerprint on the console must stay valid"
        );
        assert!(m1.differs(&a));
        assert!(why_restart(&m1, &a).contains("mutual TLS"));
        assert!(why_restart(&a, &b).starts_with("host name or addresses changed"));
    }
}
