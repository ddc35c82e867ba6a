//! The client configuration, like talosconfig: named contexts, each with the
//! endpoints to reach and the certificates to present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// Environment variable that overrides the client config path.
pub const ENV_CONFIG: &str = "NODECTLCONFIG";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when none is named.
    pub context: String,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Addresses of nodes' APIs, `host` or `host:port`.
    pub endpoints: Vec<String>,
    /// Default targets of commands; empty means the endpoints.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// PEM of the cluster CA.
    pub ca: String,
    /// PEM of this client's certificate.
    pub cert: String,
    /// PEM of this client's key.
    pub key: String,
}

/// Where the client config lives: `--nodectlconfig`, else `$NODECTLCONFIG`,
/// else `$XDG_CONFIG_HOME/nodectl/config.toml`, else `~/.config/nodectl/config.toml`.
pub fn default_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(ENV_CONFIG).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("nodectl").join("config.toml")
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read client config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("client config {}", path.display()))
    }

    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("# nodectl client configuration: contexts, endpoints and certificates.\n{body}")
    }

    /// Add or replace a context and make it current.
    pub fn merge(&mut self, name: &str, ctx: Context) {
        self.contexts.insert(name.to_string(), ctx);
        self.context = name.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_merges() {
        let mut c = ClientConfig {
            context: "a".into(),
            contexts: BTreeMap::new(),
        };
        c.merge(
            "prod",
            Context {
                endpoints: vec!["10.0.0.1".into()],
                nodes: vec![],
                ca: "C".into(),
                cert: "X".into(),
                key: "K".into(),
            },
        );
        assert_eq!(c.context, "prod");
        let again: ClientConfig = toml::from_str(&c.render()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn flag_wins_over_environment() {
        assert_eq!(
            default_path(Some(Path::new("/x/y.toml"))),
            PathBuf::from("/x/y.toml")
        );
    }
}
