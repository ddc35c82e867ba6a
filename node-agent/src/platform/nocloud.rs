//! NoCloud seeds (a medium labelled `cidata`, e.g. made by `cloud-localds`):
//! `user-data`, `meta-data` (its `local-hostname`) and `network-config`,
//! version 1 or 2 (netplan), in the config's terms:
//!
//! | network-config | machine config |
//! |---|---|
//! | v1 `physical`: `mac_address` (else `name`); v2 ethernet: `match.macaddress` (else `match.name` without wildcards, else its id) | `mac` (else `name`) |
//! | `mtu` | `mtu` |
//! | v1 subnet `static`/`static6` `address` (+ `netmask`); v2 `addresses` | `addresses` |
//! | v1 subnet `gateway`; v2 `gateway4`/`gateway6`, a route `to: default` (or `0.0.0.0/0`, `::/0`) | `gateways` |
//! | v1 subnet `routes` (`network`/`destination` + `netmask`/`prefix`, `gateway`, `metric`); v2 `routes` (`to`, `via`, `metric`); v1 top-level `route` on the link whose subnet holds its gateway | `routes` |
//! | v1 subnet `dhcp`/`dhcp4`; v2 `dhcp4: true` | `dhcp = true` |
//! | v1 `nameserver` and subnet `dns_nameservers`/`dns_search`; v2 `nameservers` | `network.nameservers`, `network.search` |
//!
//! Not supported (named on the console and left out): bonds, bridges,
//! VLANs and the other virtual links, DHCPv6 and IPv6 autoconfiguration,
//! v2 matches by wildcard or driver.

use std::net::IpAddr;
use std::path::Path;

use caisson_config::{Interface, Route};
use ipnet::IpNet;
use serde_json::Value;

use super::netdata::{mask_to_prefix, NetworkData};
use super::{read_limited, Limits};

pub const LABELS: [&str; 2] = ["cidata", "CIDATA"];
pub const USER_DATA: &str = "user-data";
pub const META_DATA: &str = "meta-data";
pub const NETWORK_CONFIG: &str = "network-config";

#[derive(Debug, Clone, PartialEq)]
pub struct SeedData {
    pub user_data: Vec<u8>,
    pub hostname: Option<String>,
    /// Err: present but not readable as network-config (said on the console).
    pub network: Option<Result<NetworkData, String>>,
}

/// The seed mounted at `root`. `Ok(None)`: it has no `user-data`.
pub fn read_seed(root: &Path, limits: &Limits) -> Result<Option<SeedData>, String> {
    let Some(user_data) = read_limited(&root.join(USER_DATA), limits.user_data)? else {
        return Ok(None);
    };
    let hostname = read_limited(&root.join(META_DATA), limits.side_file)
        .ok()
        .flatten()
        .and_then(|b| hostname_from_meta(&String::from_utf8_lossy(&b)));
    let network = match read_limited(&root.join(NETWORK_CONFIG), limits.side_file) {
        Ok(None) => None,
        Ok(Some(b)) => Some(network_from_yaml(&String::from_utf8_lossy(&b))),
        Err(e) => Some(Err(e)),
    };
    Ok(Some(SeedData {
        user_data,
        hostname,
        network,
    }))
}

fn yaml(text: &str, what: &str) -> Result<Value, String> {
    serde_norway::from_str::<Value>(text).map_err(|e| format!("{what} is not YAML: {e}"))
}

/// `local-hostname` (else `hostname`) of `meta-data`.
pub fn hostname_from_meta(text: &str) -> Option<String> {
    let v = yaml(text, META_DATA).ok()?;
    ["local-hostname", "hostname"]
        .iter()
        .find_map(|k| v.get(k)?.as_str().map(str::to_string))
}

/// `network-config`, version 1 or 2, bare or under a `network:` key.
pub fn network_from_yaml(text: &str) -> Result<NetworkData, String> {
    let v = yaml(text, NETWORK_CONFIG)?;
    let v = match v.get("network") {
        Some(inner) if v.get("version").is_none() => inner.clone(),
        _ => v,
    };
    if v.get("config").and_then(Value::as_str) == Some("disabled") {
        return Ok(NetworkData {
            skipped: vec!["`config: disabled`: no network configuration".into()],
            ..NetworkData::default()
        });
    }
    match v.get("version").and_then(Value::as_u64) {
        Some(1) => Ok(v1(&v)),
        Some(2) => Ok(v2(&v)),
        Some(n) => Err(format!(
            "{NETWORK_CONFIG}: version {n} is not known (expected 1 or 2)"
        )),
        None => Err(format!("{NETWORK_CONFIG}: no `version` (expected 1 or 2)")),
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn add_dns(out: &mut NetworkData, servers: Option<&Value>, search: Option<&Value>, at: &str) {
    for s in str_list(servers) {
        match s.parse::<IpAddr>() {
            Ok(ip) => out.add_nameserver(ip),
            Err(_) => out
                .skipped
                .push(format!("{at}: nameserver {s:?} is not an IP address")),
        }
    }
    for d in str_list(search) {
        out.add_search(&d);
    }
}

/// `address` with an optional `netmask` (dotted, or a prefix length).
fn address(addr: &str, netmask: Option<&Value>) -> Result<IpNet, String> {
    if addr.contains('/') {
        return addr.parse().map_err(|e| format!("address {addr:?}: {e}"));
    }
    let ip: IpAddr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    let prefix = match netmask {
        None => return Err(format!("address {addr:?} has no prefix length or netmask")),
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u8::try_from(p).ok()),
        Some(Value::String(s)) => s.parse::<u8>().ok().or_else(|| mask_to_prefix(s)),
        Some(_) => None,
    }
    .ok_or_else(|| format!("netmask of {addr:?} is not a netmask"))?;
    IpNet::new(ip, prefix).map_err(|e| format!("{addr}/{prefix}: {e}"))
}

fn is_default(to: &IpNet) -> bool {
    to.prefix_len() == 0
}

fn push_gateway(iface: &mut Interface, g: IpAddr) {
    if !iface.gateways.iter().any(|e| e.is_ipv4() == g.is_ipv4()) {
        iface.gateways.push(g);
    }
}

/// A route of v1 (`network`/`destination`, `netmask`/`prefix`, `gateway`).
fn v1_route(r: &Value) -> Result<(IpNet, IpAddr, Option<u32>), String> {
    let net = r
        .get("network")
        .or_else(|| r.get("destination"))
        .and_then(Value::as_str)
        .ok_or("a route without network/destination")?;
    let to = address(net, r.get("netmask").or_else(|| r.get("prefix")))?.trunc();
    let gw = r
        .get("gateway")
        .and_then(Value::as_str)
        .ok_or("a route without gateway")?;
    let via = gw
        .parse()
        .map_err(|e| format!("route gateway {gw:?}: {e}"))?;
    let metric = r
        .get("metric")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok());
    Ok((to, via, metric))
}

fn v1(v: &Value) -> NetworkData {
    let mut out = NetworkData::default();
    let mut global_routes = Vec::new();
    for (i, entry) in v
        .get("config")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let kind = entry.get("type").and_then(Value::as_str).unwrap_or("");
        let name = entry.get("name").and_then(Value::as_str).unwrap_or("");
        let at = format!("config[{i}] ({kind} {name})");
        match kind {
            "physical" => {
                let mut iface = match (entry.get("mac_address").and_then(Value::as_str), name) {
                    (Some(mac), _) => Interface { mac: Some(mac.to_ascii_lowercase()), ..Interface::default() },
                    (None, n) if !n.is_empty() => Interface { name: Some(n.to_string()), ..Interface::default() },
                    _ => {
                        out.skipped.push(format!("{at}: neither mac_address nor name"));
                        continue;
                    }
                };
                iface.mtu = entry.get("mtu").and_then(Value::as_u64).and_then(|m| u32::try_from(m).ok());
                for (j, subnet) in entry.get("subnets").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    let sat = format!("{at} subnets[{j}]");
                    if let Err(e) = v1_subnet(subnet, &mut iface, &mut out, &sat) {
                        out.skipped.push(format!("{sat}: {e}"));
                    }
                }
                out.add(iface);
            }
            "nameserver" => add_dns(&mut out, entry.get("address"), entry.get("search"), &at),
            "route" => match v1_route(entry) {
                Ok(r) => global_routes.push((at, r)),
                Err(e) => out.skipped.push(format!("{at}: {e}")),
            },
            other => out.skipped.push(format!(
                "{at}: `{other}` links are not in the config's network section (only physical links)"
            )),
        }
    }
    // A route outside a link goes to the link whose subnet holds its gateway.
    for (at, (to, via, metric)) in global_routes {
        let owner = out
            .interfaces
            .iter_mut()
            .find(|i| i.addresses.iter().any(|a| a.contains(&via)));
        match owner {
            Some(i) if is_default(&to) => push_gateway(i, via),
            Some(i) => i.routes.push(Route { to, via, metric }),
            None => out
                .skipped
                .push(format!("{at}: no static link reaches gateway {via}")),
        }
    }
    out
}

fn v1_subnet(
    s: &Value,
    iface: &mut Interface,
    out: &mut NetworkData,
    at: &str,
) -> Result<(), String> {
    let kind = s.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "static" | "static6" => {
            let addr = s
                .get("address")
                .and_then(Value::as_str)
                .ok_or("no address")?;
            iface.addresses.push(address(addr, s.get("netmask"))?);
            if let Some(g) = s.get("gateway").and_then(Value::as_str) {
                push_gateway(iface, g.parse().map_err(|e| format!("gateway {g:?}: {e}"))?);
            }
            for r in s
                .get("routes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (to, via, metric) = v1_route(r)?;
                if is_default(&to) {
                    push_gateway(iface, via);
                } else {
                    iface.routes.push(Route { to, via, metric });
                }
            }
            add_dns(out, s.get("dns_nameservers"), s.get("dns_search"), at);
            Ok(())
        }
        "dhcp" | "dhcp4" => {
            iface.dhcp = true;
            Ok(())
        }
        "manual" => Ok(()),
        other => Err(format!(
            "subnet type {other:?}: the node runs DHCPv4 and static addresses only"
        )),
    }
}

const V2_UNSUPPORTED: [&str; 8] = [
    "bonds",
    "bridges",
    "vlans",
    "wifis",
    "tunnels",
    "vrfs",
    "modems",
    "dummy-devices",
];

fn v2(v: &Value) -> NetworkData {
    let mut out = NetworkData::default();
    for key in V2_UNSUPPORTED {
        if let Some(map) = v.get(key).and_then(Value::as_object) {
            for id in map.keys() {
                out.skipped.push(format!(
                    "{key}.{id}: {key} are not in the config's network section"
                ));
            }
        }
    }
    let Some(ethernets) = v.get("ethernets").and_then(Value::as_object) else {
        return out;
    };
    for (id, e) in ethernets {
        let at = format!("ethernets.{id}");
        let m = e.get("match");
        let mac = m.and_then(|m| m.get("macaddress")).and_then(Value::as_str);
        let name = m.and_then(|m| m.get("name")).and_then(Value::as_str);
        let mut iface = match (mac, name, m) {
            (Some(mac), _, _) => Interface {
                mac: Some(mac.to_ascii_lowercase()),
                ..Interface::default()
            },
            (None, Some(n), _) if !n.contains(['*', '?', '[']) => Interface {
                name: Some(n.to_string()),
                ..Interface::default()
            },
            (None, None, None) => Interface {
                name: Some(id.clone()),
                ..Interface::default()
            },
            _ => {
                out.skipped.push(format!(
                    "{at}: matches by wildcard or driver are not supported"
                ));
                continue;
            }
        };
        iface.mtu = e
            .get("mtu")
            .and_then(Value::as_u64)
            .and_then(|m| u32::try_from(m).ok());
        iface.dhcp = e.get("dhcp4").and_then(Value::as_bool).unwrap_or(false);
        if e.get("dhcp6").and_then(Value::as_bool) == Some(true) {
            out.skipped
                .push(format!("{at}: dhcp6: the node runs DHCPv4 only"));
        }
        let mut bad = Vec::new();
        for a in e
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // netplan also writes `- 10.0.0.5/24: {lifetime: 0}`.
            let text = a.as_str().or_else(|| {
                a.as_object()
                    .and_then(|o| o.keys().next())
                    .map(String::as_str)
            });
            match text.map(|t| address(t, None)) {
                Some(Ok(net)) => iface.addresses.push(net),
                Some(Err(e)) => bad.push(e),
                None => bad.push(format!("address {a} is not a string")),
            }
        }
        for key in ["gateway4", "gateway6"] {
            if let Some(g) = e.get(key).and_then(Value::as_str) {
                match g.parse() {
                    Ok(ip) => push_gateway(&mut iface, ip),
                    Err(err) => bad.push(format!("{key} {g:?}: {err}")),
                }
            }
        }
        for r in e
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let to = r.get("to").and_then(Value::as_str).unwrap_or("");
            let Some(via) = r.get("via").and_then(Value::as_str) else {
                bad.push(format!("route to {to:?} without `via`"));
                continue;
            };
            let Ok(via) = via.parse::<IpAddr>() else {
                bad.push(format!("route via {via:?} is not an IP address"));
                continue;
            };
            let metric = r
                .get("metric")
                .and_then(Value::as_u64)
                .and_then(|m| u32::try_from(m).ok());
            let dest = if to == "default" {
                Ok(if via.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
                    .parse::<IpNet>()
                    .map_err(|e| e.to_string()))
            } else {
                Ok(address(to, None))
            };
            match dest.and_then(|d| d) {
                Ok(net) if is_default(&net) => push_gateway(&mut iface, via),
                Ok(net) => iface.routes.push(Route {
                    to: net.trunc(),
                    via,
                    metric,
                }),
                Err(e) => bad.push(format!("route to {to:?}: {e}")),
            }
        }
        let ns = e.get("nameservers");
        add_dns(
            &mut out,
            ns.and_then(|n| n.get("addresses")),
            ns.and_then(|n| n.get("search")),
            &at,
        );
        if !bad.is_empty() {
            out.skipped
                .push(format!("{at}: {}; the link is left out", bad.join("; ")));
            continue;
        }
        out.add(iface);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[IpAddr]) -> Vec<String> {
        list.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn version_2_static_and_dhcp_ethernets() {
        let n = network_from_yaml(
            r#"
version: 2
ethernets:
  nic0:
    match:
      macaddress: "52:54:00:12:34:56"
    set-name: eth0
    addresses: [10.0.2.20/24, "fd00::20/64"]
    gateway4: 10.0.2.2
    mtu: 1400
    routes:
      - to: 192.168.0.0/16
        via: 10.0.2.1
        metric: 7
      - to: default
        via: fd00::1
    nameservers:
      addresses: [10.0.2.3]
      search: [example.org]
  eth1:
    dhcp4: true
    dhcp6: true
  lan:
    match:
      name: "enp*"
    dhcp4: true
bonds:
  bond0:
    interfaces: [eth1]
"#,
        )
        .unwrap();
        assert_eq!(n.interfaces.len(), 2, "{:#?}", n);
        // Map order is serde_json's (sorted, or as written): find each.
        let nic0 = n.interfaces.iter().find(|i| i.mac.is_some()).unwrap();
        assert_eq!(nic0.mac.as_deref(), Some("52:54:00:12:34:56"));
        let addrs: Vec<String> = nic0.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.2.20/24", "fd00::20/64"]);
        assert_eq!(ips(&nic0.gateways), ["10.0.2.2", "fd00::1"]);
        assert_eq!(nic0.routes.len(), 1);
        assert_eq!(
            (nic0.routes[0].to.to_string(), nic0.routes[0].metric),
            ("192.168.0.0/16".into(), Some(7))
        );
        assert_eq!(nic0.mtu, Some(1400));
        let eth1 = n.interfaces.iter().find(|i| i.name.is_some()).unwrap();
        assert_eq!((eth1.name.as_deref(), eth1.dhcp), (Some("eth1"), true));
        assert_eq!(ips(&n.nameservers), ["10.0.2.3"]);
        assert_eq!(n.search, ["example.org"]);
        let skipped = n.skipped.join("\n");
        assert!(skipped.contains("bonds.bond0"), "{skipped}");
        assert!(skipped.contains("ethernets.eth1: dhcp6"), "{skipped}");
        assert!(
            skipped.contains("ethernets.lan: matches by wildcard"),
            "{skipped}"
        );
    }

    #[test]
    fn version_2_under_a_network_key_as_cloud_localds_accepts_it() {
        let n = network_from_yaml(
            "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n",
        )
        .unwrap();
        assert_eq!(n.interfaces[0].name.as_deref(), Some("eth0"));
        assert!(n.interfaces[0].dhcp);
    }

    #[test]
    fn version_1_physical_links_subnets_nameservers_and_routes() {
        let n = network_from_yaml(
            r#"
version: 1
config:
  - type: physical
    name: eth0
    mac_address: "52:54:00:12:34:56"
    mtu: 1500
    subnets:
      - type: static
        address: 10.0.2.20
        netmask: 255.255.255.0
        gateway: 10.0.2.2
        dns_nameservers: [10.0.2.3]
        dns_search: [example.org]
        routes:
          - network: 172.16.0.0
            netmask: 255.240.0.0
            gateway: 10.0.2.1
            metric: 3
      - type: static6
        address: fd00::20/64
      - type: dhcp6
  - type: physical
    name: eth1
    subnets:
      - type: dhcp
  - type: bond
    name: bond0
  - type: nameserver
    address: [1.1.1.1, 10.0.2.3, nonsense]
    search: [corp.example]
  - type: route
    destination: 10.99.0.0/16
    gateway: 10.0.2.1
  - type: route
    destination: 0.0.0.0/0
    gateway: 192.0.2.1
"#,
        )
        .unwrap();
        assert_eq!(n.interfaces.len(), 2, "{n:#?}");
        let eth0 = &n.interfaces[0];
        assert_eq!(eth0.mac.as_deref(), Some("52:54:00:12:34:56"));
        let addrs: Vec<String> = eth0.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.2.20/24", "fd00::20/64"]);
        assert_eq!(ips(&eth0.gateways), ["10.0.2.2"]);
        let routes: Vec<String> = eth0
            .routes
            .iter()
            .map(|r| format!("{} via {} {:?}", r.to, r.via, r.metric))
            .collect();
        assert_eq!(
            routes,
            [
                "172.16.0.0/12 via 10.0.2.1 Some(3)",
                "10.99.0.0/16 via 10.0.2.1 None"
            ]
        );
        assert_eq!(n.interfaces[1].name.as_deref(), Some("eth1"));
        assert!(n.interfaces[1].dhcp);
        assert_eq!(ips(&n.nameservers), ["10.0.2.3", "1.1.1.1"]);
        assert_eq!(n.search, ["example.org", "corp.example"]);
        let skipped = n.skipped.join("\n");
        assert!(
            skipped.contains("subnets[2]: subnet type \"dhcp6\""),
            "{skipped}"
        );
        assert!(skipped.contains("(bond bond0): `bond` links"), "{skipped}");
        assert!(
            skipped.contains("\"nonsense\" is not an IP address"),
            "{skipped}"
        );
        assert!(
            skipped.contains("no static link reaches gateway 192.0.2.1"),
            "{skipped}"
        );
    }

    #[test]
    fn bad_network_config_is_an_error_naming_the_file() {
        assert!(network_from_yaml("version: 3\n")
            .unwrap_err()
            .contains("version 3"));
        assert!(network_from_yaml("ethernets: {}\n")
            .unwrap_err()
            .contains("no `version`"));
        assert!(network_from_yaml("version: [\n")
            .unwrap_err()
            .contains("not YAML"));
        let off = network_from_yaml("network:\n  config: disabled\n").unwrap();
        assert!(off.is_empty() && off.skipped[0].contains("disabled"));
        // A link with a bad address is left out whole, not half-configured.
        let n = network_from_yaml("version: 2\nethernets:\n  eth0:\n    addresses: [10.0.2.20]\n")
            .unwrap();
        assert!(n.interfaces.is_empty());
        assert!(n.skipped[0].contains("no prefix length"), "{:?}", n.skipped);
    }

    #[test]
    fn meta_data_gives_local_hostname() {
        assert_eq!(
            hostname_from_meta("instance-id: iid-1\nlocal-hostname: seed-host\n").as_deref(),
            Some("seed-host")
        );
        assert_eq!(hostname_from_meta("instance-id: iid-1\n"), None);
        assert_eq!(hostname_from_meta("{"), None);
    }

    #[test]
    fn a_seed_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::default();
        assert_eq!(read_seed(dir.path(), &limits).unwrap(), None);
        std::fs::write(dir.path().join("user-data"), "version = 1\n").unwrap();
        std::fs::write(dir.path().join("meta-data"), "local-hostname: s1\n").unwrap();
        std::fs::write(
            dir.path().join("network-config"),
            "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
        )
        .unwrap();
        let s = read_seed(dir.path(), &limits).unwrap().unwrap();
        assert_eq!(s.hostname.as_deref(), Some("s1"));
        assert!(s.network.unwrap().unwrap().interfaces[0].dhcp);
    }
}
