//! Which nodes a command talks to, and how each is addressed.
//!
//! Caisson has no API proxy: every node is dialled directly. `-n/--nodes`
//! names the nodes to act on; `-e/--endpoints` names the addresses to dial.
//! Both accept `host` or `host:port`, so either can select the targets.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use rustls::pki_types::ServerName;

use crate::clientconfig::Context;

/// One node's API address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As the operator wrote it; prefixes that node's output.
    pub label: String,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address;
    /// a leading `https://` is tolerated. The port defaults to the API's.
    pub fn parse(text: &str) -> Result<Target, String> {
        let label = text.trim();
        let rest = label
            .strip_prefix("https://")
            .unwrap_or(label)
            .trim_end_matches('/');
        if rest.is_empty() {
            return Err(format!("{text:?}: expected host or host:port"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: missing ']'"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{text:?}: expected ':' after ']'"))?,
                ),
            };
            addr.parse::<Ipv6Addr>()
                .map_err(|_| format!("{text:?}: {addr:?} is not an IPv6 address"))?;
            (addr, port)
        } else if rest.parse::<Ipv6Addr>().is_ok() {
            (rest, None)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => caisson_api::DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{text:?}: bad port {p:?}"))?,
        };
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(format!("{text:?}: expected host or host:port"));
        }
        Ok(Target {
            label: label.to_string(),
            host: host.to_string(),
            port,
        })
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    /// The name the node's certificate must hold.
    pub fn server_name(&self) -> Result<ServerName<'static>, String> {
        ServerName::try_from(self.host.clone())
            .map_err(|_| format!("{:?} is not a valid host name", self.host))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Flags beat the client config: `--nodes`, else `--endpoints`, else the
/// context's nodes, else its endpoints. Duplicates are dropped.
pub fn select(
    nodes: &[String],
    endpoints: &[String],
    context: Option<&Context>,
) -> Result<Vec<Target>, String> {
    let chosen: Vec<String> = if !nodes.is_empty() {
        nodes.to_vec()
    } else if !endpoints.is_empty() {
        endpoints.to_vec()
    } else if let Some(ctx) = context {
        if ctx.nodes.is_empty() {
            ctx.endpoints.clone()
        } else {
            ctx.nodes.clone()
        }
    } else {
        Vec::new()
    };
    let mut targets: Vec<Target> = Vec::new();
    for text in chosen.iter().filter(|s| !s.trim().is_empty()) {
        let t = Target::parse(text)?;
        if !targets
            .iter()
            .any(|seen| seen.host == t.host && seen.port == t.port)
        {
            targets.push(t);
        }
    }
    if targets.is_empty() {
        return Err(
            "no node to talk to: pass -n/--nodes, or set endpoints in the client config".into(),
        );
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> (String, u16) {
        let t = Target::parse(s).unwrap();
        (t.host, t.port)
    }

    #[test]
    fn parses_every_endpoint_form() {
        assert_eq!(hp("10.0.0.5"), ("10.0.0.5".into(), 50443));
        assert_eq!(hp("10.0.0.5:6443"), ("10.0.0.5".into(), 6443));
        assert_eq!(hp("node-1"), ("node-1".into(), 50443));
        assert_eq!(hp("https://node-1:1234/"), ("node-1".into(), 1234));
        assert_eq!(hp("fe80::1"), ("fe80::1".into(), 50443));
        assert_eq!(hp("[fe80::1]"), ("fe80::1".into(), 50443));
        assert_eq!(hp("[fe80::1]:9"), ("fe80::1".into(), 9));
        assert_eq!(
            Target::parse("[fe80::1]:9").unwrap().authority(),
            "[fe80::1]:9"
        );
        assert_eq!(
            Target::parse("10.0.0.5").unwrap().authority(),
            "10.0.0.5:50443"
        );
    }

    #[test]
    fn rejects_malformed_endpoints_by_name() {
        for bad in ["", "host:", "host:0", "host:99999", "[zz]:1", "[::1", "a b"] {
            assert!(Target::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Target::parse("host:x")
            .unwrap_err()
            .contains("bad port \"x\""));
    }

    #[test]
    fn flags_beat_the_context_and_nodes_beat_endpoints() {
        let ctx = Context {
            endpoints: vec!["e1".into(), "e2".into()],
            nodes: vec![],
            ca: String::new(),
            cert: String::new(),
            key: String::new(),
        };
        let labels = |v: Vec<Target>| v.into_iter().map(|t| t.label).collect::<Vec<_>>();
        assert_eq!(labels(select(&[], &[], Some(&ctx)).unwrap()), ["e1", "e2"]);
        let with_nodes = Context {
            nodes: vec!["n1".into()],
            ..ctx.clone()
        };
        assert_eq!(labels(select(&[], &[], Some(&with_nodes)).unwrap()), ["n1"]);
        assert_eq!(
            labels(select(&[], &["x".into()], Some(&with_nodes)).unwrap()),
            ["x"]
        );
        assert_eq!(
            labels(select(&["a".into(), "a:50443".into()], &["x".into()], None).unwrap()),
            ["a"]
        );
        assert!(select(&[], &[], None).is_err());
    }
}
