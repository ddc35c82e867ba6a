//! OpenStack: the config drive's files (`openstack/latest/…` on a medium
//! labelled `config-2`) and the metadata service at 169.254.169.254 (also
//! its EC2 flavour), and `network_data.json` in the config's terms.
//!
//! `network_data.json` → `[[network.interfaces]]`, one per link:
//!
//! | network_data.json | machine config |
//! |---|---|
//! | link `ethernet_mac_address` (else its `name`) | `mac` (else `name`) |
//! | link `mtu` | `mtu` |
//! | network `ipv4`/`ipv6`: `ip_address` + `netmask` (or `ip/prefix`) | `addresses` |
//! | route to `0.0.0.0/0` or `::/0` (or the network's `gateway`) | `gateways` |
//! | other routes (`network`/`netmask` via `gateway`) | `routes` |
//! | network `ipv4_dhcp` | `dhcp = true` |
//! | `services` of type `dns` (top level or per network) | `network.nameservers` |
//!
//! Not supported (named on the console and left out): links of type
//! `bond` and `vlan` (and the networks on them), IPv6 autoconfiguration
//! and DHCPv6 networks (the node runs DHCPv4 only).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use caisson_config::{Interface, Route};
use ipnet::IpNet;
use serde_json::Value;

use super::http::{status_text, Request};
use super::netdata::{mask_to_prefix, NetworkData};
use super::{read_limited, Limits};

pub const LABELS: [&str; 2] = ["config-2", "CONFIG-2"];
pub const USER_DATA: &str = "openstack/latest/user_data";
pub const META_DATA: &str = "openstack/latest/meta_data.json";
pub const NETWORK_DATA: &str = "openstack/latest/network_data.json";

/// What a config drive or the metadata service holds for the node.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStackData {
    pub user_data: Vec<u8>,
    /// Where the user data was read, for messages.
    pub user_data_path: String,
    pub hostname: Option<String>,
    /// Err: the file is there but unreadable or not JSON (said on the console).
    pub network: Option<Result<NetworkData, String>>,
}

/// The config drive mounted at `root`. `Ok(None)`: it carries no user data.
pub fn read_config_drive(root: &Path, limits: &Limits) -> Result<Option<OpenStackData>, String> {
    let Some(user_data) = read_limited(&root.join(USER_DATA), limits.user_data)? else {
        return Ok(None);
    };
    let hostname = read_limited(&root.join(META_DATA), limits.side_file)
        .ok()
        .flatten()
        .and_then(|b| hostname_from_meta(&String::from_utf8_lossy(&b)));
    let network = match read_limited(&root.join(NETWORK_DATA), limits.side_file) {
        Ok(None) => None,
        Ok(Some(b)) => Some(network_from_json(&String::from_utf8_lossy(&b))),
        Err(e) => Some(Err(e)),
    };
    Ok(Some(OpenStackData {
        user_data,
        user_data_path: USER_DATA.into(),
        hostname,
        network,
    }))
}

/// `hostname` of `meta_data.json`.
pub fn hostname_from_meta(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    v.get("hostname")?.as_str().map(str::to_string)
}

/// `network_data.json` in the config's terms.
pub fn network_from_json(json: &str) -> Result<NetworkData, String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("network_data.json is not JSON: {e}"))?;
    let mut out = NetworkData::default();
    let links: BTreeMap<&str, &Value> = v
        .get("links")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|l| Some((l.get("id")?.as_str()?, l)))
                .collect()
        })
        .unwrap_or_default();
    for net in v
        .get("networks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = net.get("id").and_then(Value::as_str).unwrap_or("?");
        let link_id = net.get("link").and_then(Value::as_str).unwrap_or("");
        let Some(link) = links.get(link_id) else {
            out.skipped.push(format!(
                "network {id} names link {link_id:?}, which `links` does not list"
            ));
            continue;
        };
        let link_type = link.get("type").and_then(Value::as_str).unwrap_or("phy");
        if matches!(link_type, "bond" | "vlan") {
            out.skipped.push(format!(
                "network {id} is on {link_type} link {link_id}: bonds and VLANs are not in the config's network section"
            ));
            continue;
        }
        let mac = link
            .get("ethernet_mac_address")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
        let name = link.get("name").and_then(Value::as_str).map(str::to_string);
        let mut iface = match (mac, name) {
            (Some(mac), _) => Interface {
                mac: Some(mac),
                ..Interface::default()
            },
            (None, Some(name)) => Interface {
                name: Some(name),
                ..Interface::default()
            },
            (None, None) => {
                out.skipped.push(format!(
                    "link {link_id} has neither ethernet_mac_address nor name to select it by"
                ));
                continue;
            }
        };
        iface.mtu = link
            .get("mtu")
            .and_then(Value::as_u64)
            .and_then(|m| u32::try_from(m).ok());
        let net_type = net.get("type").and_then(Value::as_str).unwrap_or("");
        match net_type {
            "ipv4" | "ipv6" => {
                if let Err(e) = static_network(net, &mut iface) {
                    out.skipped.push(format!("network {id}: {e}"));
                    continue;
                }
            }
            "ipv4_dhcp" | "dhcp4" => iface.dhcp = true,
            t if t.starts_with("ipv6_") => {
                out.skipped.push(format!(
                    "network {id} ({t}): IPv6 autoconfiguration and DHCPv6 are not done by the node (DHCPv4 only)"
                ));
                continue;
            }
            t => {
                out.skipped
                    .push(format!("network {id}: unknown type {t:?}"));
                continue;
            }
        }
        for ip in dns_services(net.get("services")) {
            out.add_nameserver(ip);
        }
        out.add(iface);
    }
    for ip in dns_services(v.get("services")) {
        out.add_nameserver(ip);
    }
    Ok(out)
}

fn static_network(net: &Value, iface: &mut Interface) -> Result<(), String> {
    let ip_text = net
        .get("ip_address")
        .and_then(Value::as_str)
        .ok_or("no ip_address")?;
    let address: IpNet = match ip_text.split_once('/') {
        Some(_) => ip_text
            .parse()
            .map_err(|e| format!("ip_address {ip_text:?}: {e}"))?,
        None => {
            let ip: IpAddr = ip_text
                .parse()
                .map_err(|e| format!("ip_address {ip_text:?}: {e}"))?;
            let mask = net
                .get("netmask")
                .and_then(Value::as_str)
                .ok_or("no netmask")?;
            let prefix =
                mask_to_prefix(mask).ok_or_else(|| format!("netmask {mask:?} is not a netmask"))?;
            IpNet::new(ip, prefix).map_err(|e| format!("{ip}/{prefix}: {e}"))?
        }
    };
    iface.addresses.push(address);
    if let Some(g) = net.get("gateway").and_then(Value::as_str) {
        push_gateway(iface, g.parse().map_err(|e| format!("gateway {g:?}: {e}"))?);
    }
    for r in net
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let field = |k: &str| r.get(k).and_then(Value::as_str);
        let (Some(network), Some(gateway)) = (field("network"), field("gateway")) else {
            return Err(format!("a route without network or gateway: {r}"));
        };
        let via: IpAddr = gateway
            .parse()
            .map_err(|e| format!("route gateway {gateway:?}: {e}"))?;
        let to: IpNet = match field("netmask") {
            Some(mask) => {
                let prefix =
                    mask_to_prefix(mask).ok_or_else(|| format!("route netmask {mask:?}"))?;
                let ip: IpAddr = network
                    .parse()
                    .map_err(|e| format!("route network {network:?}: {e}"))?;
                IpNet::new(ip, prefix).map_err(|e| e.to_string())?
            }
            None => network
                .parse()
                .map_err(|e| format!("route network {network:?}: {e}"))?,
        };
        if to.prefix_len() == 0 {
            push_gateway(iface, via);
        } else {
            iface.routes.push(Route {
                to: to.trunc(),
                via,
                metric: None,
            });
        }
    }
    Ok(())
}

fn push_gateway(iface: &mut Interface, g: IpAddr) {
    if !iface.gateways.iter().any(|e| e.is_ipv4() == g.is_ipv4()) {
        iface.gateways.push(g);
    }
}

fn dns_services(services: Option<&Value>) -> Vec<IpAddr> {
    services
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("dns"))
        .filter_map(|s| s.get("address")?.as_str()?.parse().ok())
        .collect()
}

/// The metadata service's address; tests point the client elsewhere.
pub const METADATA_HOST: &str = "169.254.169.254";

/// How the metadata service answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Metadata {
    Found(OpenStackData),
    /// It answered, without user data for this instance.
    NoUserData(String),
    /// It did not answer (or not as a metadata service does).
    Unreachable(String),
}

/// Where and how long: `host:port`, per request time-out, tries of the
/// first request.
#[derive(Debug, Clone)]
pub struct Service {
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    pub tries: u32,
    pub pause: Duration,
}

impl Service {
    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        max: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        let r = Request {
            method,
            host: &self.host,
            port: self.port,
            path_and_query: path,
            headers,
            timeout: self.timeout,
            max_body: max,
        }
        .send()
        .await?;
        Ok((r.status, r.body))
    }

    /// The first request, tried `tries` times while the service does not answer.
    async fn first(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        max: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut last = String::new();
        for attempt in 1..=self.tries.max(1) {
            match self.call("GET", path, headers, max).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
            if attempt < self.tries {
                tokio::time::sleep(self.pause).await;
            }
        }
        Err(format!(
            "http://{}{path}: {last} ({} tries)",
            self.host,
            self.tries.max(1)
        ))
    }

    /// OpenStack's `/openstack/latest/user_data` (with `meta_data.json`
    /// and `network_data.json`).
    pub async fn openstack(&self, limits: &Limits) -> Metadata {
        let path = "/openstack/latest/user_data";
        let (status, body) = match self.first(path, &[], limits.user_data).await {
            Ok(answer) => answer,
            Err(e) => return Metadata::Unreachable(e),
        };
        match status {
            200 => {}
            404 => {
                return Metadata::NoUserData(format!("http://{}{path}: 404 Not Found", self.host))
            }
            s => {
                return Metadata::Unreachable(format!(
                    "http://{}{path}: the service answered {}",
                    self.host,
                    status_text(s)
                ))
            }
        }
        let side = |p: &'static str| async move {
            match self.call("GET", p, &[], limits.side_file).await {
                Ok((200, b)) => Ok(Some(b)),
                Ok((404, _)) => Ok(None),
                Ok((s, _)) => Err(format!("http://{}{p}: {}", self.host, status_text(s))),
                Err(e) => Err(format!("http://{}{p}: {e}", self.host)),
            }
        };
        let hostname = match side("/openstack/latest/meta_data.json").await {
            Ok(Some(b)) => hostname_from_meta(&String::from_utf8_lossy(&b)),
            _ => None,
        };
        let network = match side("/openstack/latest/network_data.json").await {
            Ok(None) => None,
            Ok(Some(b)) => Some(network_from_json(&String::from_utf8_lossy(&b))),
            Err(e) => Some(Err(e)),
        };
        Metadata::Found(OpenStackData {
            user_data: body,
            user_data_path: format!("http://{}{path}", self.host),
            hostname,
            network,
        })
    }

    /// EC2's `/latest/user-data`: an IMDSv2 session token first (PUT), the
    /// plain IMDSv1 GET when the service refuses one.
    pub async fn ec2(&self, limits: &Limits) -> Metadata {
        let token_path = "/latest/api/token";
        let ttl = [("X-aws-ec2-metadata-token-ttl-seconds", "300")];
        let token = match self.call("PUT", token_path, &ttl, 4096).await {
            Ok((200, b)) => Some(String::from_utf8_lossy(&b).trim().to_string()),
            _ => None,
        };
        let header;
        let headers: &[(&str, &str)] = match &token {
            Some(t) => {
                header = [("X-aws-ec2-metadata-token", t.as_str())];
                &header
            }
            None => &[],
        };
        let path = "/latest/user-data";
        let (status, body) = match self.first(path, headers, limits.user_data).await {
            Ok(answer) => answer,
            Err(e) => return Metadata::Unreachable(e),
        };
        match status {
            200 => {}
            404 => {
                return Metadata::NoUserData(format!("http://{}{path}: 404 Not Found", self.host))
            }
            s => {
                return Metadata::Unreachable(format!(
                    "http://{}{path}: the service answered {}",
                    self.host,
                    status_text(s)
                ))
            }
        }
        let hostname = match self
            .call("GET", "/latest/meta-data/local-hostname", headers, 1024)
            .await
        {
            Ok((200, b)) => {
                Some(String::from_utf8_lossy(&b).trim().to_string()).filter(|h| !h.is_empty())
            }
            _ => None,
        };
        Metadata::Found(OpenStackData {
            user_data: body,
            user_data_path: format!("http://{}{path}", self.host),
            hostname,
            network: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::testserver;
    use super::*;

    /// Nova's own example (one phy link with a static IPv4 network, one
    /// IPv6 network on it, a bond, a VLAN and DNS services).
    const NOVA: &str = r#"{
      "links": [
        {"id": "tap0", "type": "phy", "ethernet_mac_address": "FA:16:3E:9C:BF:3D", "mtu": 1450, "vif_id": "1"},
        {"id": "tap1", "type": "ovs", "ethernet_mac_address": "fa:16:3e:00:00:02"},
        {"id": "bond0", "type": "bond", "bond_links": ["tap0", "tap1"], "ethernet_mac_address": "fa:16:3e:00:00:03"},
        {"id": "vlan0", "type": "vlan", "vlan_link": "tap0", "vlan_id": 101, "vlan_mac_address": "fa:16:3e:00:00:04"}
      ],
      "networks": [
        {"id": "net0", "type": "ipv4", "link": "tap0", "ip_address": "10.0.2.21", "netmask": "255.255.255.0",
         "routes": [
           {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"},
           {"network": "192.168.10.0", "netmask": "255.255.255.0", "gateway": "10.0.2.1"}
         ],
         "services": [{"type": "dns", "address": "10.0.2.3"}]},
        {"id": "net1", "type": "ipv6", "link": "tap0", "ip_address": "fd00::21", "netmask": "ffff:ffff:ffff:ffff::",
         "routes": [{"network": "::", "netmask": "::", "gateway": "fd00::1"}]},
        {"id": "net2", "type": "ipv4_dhcp", "link": "tap1"},
        {"id": "net3", "type": "ipv4", "link": "bond0", "ip_address": "10.9.0.2/24"},
        {"id": "net4", "type": "ipv6_slaac", "link": "tap1"},
        {"id": "net5", "type": "ipv4", "link": "nope", "ip_address": "10.9.0.3/24"}
      ],
      "services": [{"type": "dns", "address": "8.8.8.8"}, {"type": "dns", "address": "10.0.2.3"}, {"type": "ntp", "address": "1.2.3.4"}]
    }"#;

    #[test]
    fn network_data_json_becomes_interfaces_by_mac() {
        let n = network_from_json(NOVA).unwrap();
        assert_eq!(n.interfaces.len(), 2, "{:#?}", n.interfaces);
        let tap0 = &n.interfaces[0];
        assert_eq!(tap0.mac.as_deref(), Some("fa:16:3e:9c:bf:3d"));
        assert_eq!(tap0.mtu, Some(1450));
        let addrs: Vec<String> = tap0.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.2.21/24", "fd00::21/64"]);
        let gws: Vec<String> = tap0.gateways.iter().map(|g| g.to_string()).collect();
        assert_eq!(gws, ["10.0.2.2", "fd00::1"]);
        assert_eq!(tap0.routes.len(), 1);
        assert_eq!(tap0.routes[0].to.to_string(), "192.168.10.0/24");
        assert_eq!(tap0.routes[0].via.to_string(), "10.0.2.1");
        assert!(!tap0.dhcp);
        let tap1 = &n.interfaces[1];
        assert!(tap1.dhcp && tap1.addresses.is_empty());
        let ns: Vec<String> = n.nameservers.iter().map(|i| i.to_string()).collect();
        assert_eq!(ns, ["10.0.2.3", "8.8.8.8"]);
        let skipped = n.skipped.join("\n");
        assert!(skipped.contains("net3 is on bond link bond0"), "{skipped}");
        assert!(skipped.contains("net4 (ipv6_slaac)"), "{skipped}");
        assert!(skipped.contains("net5 names link \"nope\""), "{skipped}");
    }

    #[test]
    fn the_translation_is_a_valid_config_network() {
        let n = network_from_json(NOVA).unwrap();
        let text = "version = 1\n[api]\nca_cert = \"\"\"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\"\"\"\nca_key = \"\"\"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\"\"\"\n";
        let merged =
            super::super::netdata::merge(text, Some(&n), None, "network_data.json").unwrap();
        let c = caisson_config::parse("merged", &merged.text).unwrap();
        assert_eq!(c.network.interfaces, n.interfaces);
    }

    #[test]
    fn broken_network_data_is_an_error_and_a_bad_network_is_skipped() {
        assert!(network_from_json("{").unwrap_err().contains("not JSON"));
        let n = network_from_json(
            r#"{"links":[{"id":"l","ethernet_mac_address":"fa:16:3e:00:00:01"}],
                "networks":[{"id":"n","type":"ipv4","link":"l","ip_address":"10.0.0.1","netmask":"255.0.255.0"}]}"#,
        )
        .unwrap();
        assert!(n.interfaces.is_empty());
        assert!(n.skipped[0].contains("is not a netmask"), "{:?}", n.skipped);
        assert_eq!(network_from_json("{}").unwrap(), NetworkData::default());
    }

    #[test]
    fn meta_data_gives_the_hostname() {
        assert_eq!(
            hostname_from_meta(r#"{"uuid": "x", "hostname": "vm-1.novalocal", "name": "vm-1"}"#)
                .as_deref(),
            Some("vm-1.novalocal")
        );
        assert_eq!(hostname_from_meta("{}"), None);
        assert_eq!(hostname_from_meta("nope"), None);
    }

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_config_drive_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_config_drive(dir.path(), &limits()).unwrap(), None);
        let latest = dir.path().join("openstack/latest");
        std::fs::create_dir_all(&latest).unwrap();
        std::fs::write(latest.join("user_data"), "version = 1\n").unwrap();
        std::fs::write(
            latest.join("meta_data.json"),
            r#"{"hostname": "drive-host"}"#,
        )
        .unwrap();
        std::fs::write(latest.join("network_data.json"), NOVA).unwrap();
        let d = read_config_drive(dir.path(), &limits()).unwrap().unwrap();
        assert_eq!(d.user_data, b"version = 1\n");
        assert_eq!(d.hostname.as_deref(), Some("drive-host"));
        assert_eq!(d.network.unwrap().unwrap().interfaces.len(), 2);
    }

    fn service(port: u16) -> Service {
        Service {
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_secs(5),
            tries: 2,
            pause: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn openstack_metadata_gives_user_data_hostname_and_network() {
        let (port, seen) = testserver::start(|req, _| match req {
            "GET /openstack/latest/user_data" => Some((200, b"version = 1\n".to_vec())),
            "GET /openstack/latest/meta_data.json" => {
                Some((200, br#"{"hostname":"md-host"}"#.to_vec()))
            }
            _ => Some((404, Vec::new())),
        });
        let Metadata::Found(d) = service(port).openstack(&limits()).await else {
            panic!("no user data")
        };
        assert_eq!(d.user_data, b"version = 1\n");
        assert_eq!(d.hostname.as_deref(), Some("md-host"));
        assert_eq!(d.network, None);
        assert_eq!(
            d.user_data_path,
            "http://127.0.0.1/openstack/latest/user_data"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn no_user_data_and_no_service_are_told_apart() {
        let (port, _) = testserver::start(|_, _| Some((404, Vec::new())));
        assert!(matches!(
            service(port).openstack(&limits()).await,
            Metadata::NoUserData(_)
        ));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Metadata::Unreachable(why) = service(closed).openstack(&limits()).await else {
            panic!()
        };
        assert!(
            why.contains("connect to 127.0.0.1") && why.contains("(2 tries)"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn ec2_uses_an_imdsv2_token_when_offered_and_v1_otherwise() {
        let (port, seen) = testserver::start(|req, headers| {
            let token = headers
                .iter()
                .find(|(k, _)| k == "x-aws-ec2-metadata-token")
                .map(|(_, v)| v.as_str());
            match (req, token) {
                ("PUT /latest/api/token", _) => Some((200, b"T0K3N".to_vec())),
                ("GET /latest/user-data", Some("T0K3N")) => Some((200, b"version = 1\n".to_vec())),
                ("GET /latest/meta-data/local-hostname", Some("T0K3N")) => {
                    Some((200, b"ip-10-0-0-5.ec2.internal\n".to_vec()))
                }
                _ => Some((401, Vec::new())),
            }
        });
        let Metadata::Found(d) = service(port).ec2(&limits()).await else {
            panic!("no user data")
        };
        assert_eq!(d.hostname.as_deref(), Some("ip-10-0-0-5.ec2.internal"));
        assert_eq!(seen.lock().unwrap()[0], "PUT /latest/api/token");

        // IMDSv1 only: the PUT is refused, the GET goes without a token.
        let (port, _) = testserver::start(|req, headers| match req {
            "PUT /latest/api/token" => Some((405, Vec::new())),
            "GET /latest/user-data"
                if headers.iter().all(|(k, _)| k != "x-aws-ec2-metadata-token") =>
            {
                Some((200, b"v1".to_vec()))
            }
            _ => Some((404, Vec::new())),
        });
        let Metadata::Found(d) = service(port).ec2(&limits()).await else {
            panic!("no user data over IMDSv1")
        };
        assert_eq!(d.user_data, b"v1");
        assert_eq!(d.hostname, None);
    }
}
