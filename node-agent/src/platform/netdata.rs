//! What a platform says about the node besides its user data: static
//! addressing (OpenStack's `network_data.json`, NoCloud's
//! `network-config`) and a host name (`meta_data.json`, `meta-data`,
//! VMware's `guestinfo.caisson.hostname`). It fills the parts the machine
//! config leaves out, never the parts it sets: the user's text is edited
//! with `toml_edit`, so its own lines and comments stay as written.

use std::net::IpAddr;

use caisson_config::Interface;
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

/// Static addressing in the machine config's own terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkData {
    pub interfaces: Vec<Interface>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// What the platform described that the config cannot say, and why.
    pub skipped: Vec<String>,
}

impl NetworkData {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.nameservers.is_empty() && self.search.is_empty()
    }

    /// Add `iface`, or merge it into the entry for the same link.
    pub fn add(&mut self, iface: Interface) {
        let same = |i: &&mut Interface| {
            (iface.mac.is_some()
                && i.mac.as_deref().map(str::to_ascii_lowercase)
                    == iface.mac.as_deref().map(str::to_ascii_lowercase))
                || (iface.name.is_some() && i.name == iface.name)
        };
        match self.interfaces.iter_mut().find(same) {
            Some(existing) => {
                existing.dhcp |= iface.dhcp;
                existing.addresses.extend(iface.addresses);
                for g in iface.gateways {
                    if !existing.gateways.iter().any(|e| e.is_ipv4() == g.is_ipv4()) {
                        existing.gateways.push(g);
                    }
                }
                existing.routes.extend(iface.routes);
                existing.mtu = existing.mtu.or(iface.mtu);
            }
            None => self.interfaces.push(iface),
        }
    }

    pub fn add_nameserver(&mut self, ip: IpAddr) {
        if !self.nameservers.contains(&ip) {
            self.nameservers.push(ip);
        }
    }

    pub fn add_search(&mut self, domain: &str) {
        if !self.search.iter().any(|d| d == domain) {
            self.search.push(domain.to_string());
        }
    }
}

/// `mac 52:54:00:12:34:56: 10.0.2.20/24, gateway 10.0.2.2, mtu 1500`
pub fn describe(i: &Interface) -> String {
    let link = match (&i.name, &i.mac) {
        (Some(n), _) => format!("name {n}"),
        (None, Some(m)) => format!("mac {m}"),
        (None, None) => "?".into(),
    };
    let mut parts = Vec::new();
    if i.dhcp {
        parts.push("DHCP".to_string());
    }
    parts.extend(i.addresses.iter().map(|a| a.to_string()));
    for g in &i.gateways {
        parts.push(format!("gateway {g}"));
    }
    for r in &i.routes {
        parts.push(format!("route {} via {}", r.to, r.via));
    }
    if let Some(mtu) = i.mtu {
        parts.push(format!("mtu {mtu}"));
    }
    format!("{link}: {}", parts.join(", "))
}

/// The config text with the platform's parts filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub text: String,
    /// One line per key filled in or left alone, for the console.
    pub notes: Vec<String>,
}

/// Fill `machine.hostname`, `network.interfaces`, `network.nameservers`
/// and `network.search` from the platform where `text` does not set them.
/// `from` names the platform's file for the notes. `text` must already be
/// a valid machine config; it is returned unchanged when nothing is added.
pub fn merge(
    text: &str,
    network: Option<&NetworkData>,
    hostname: Option<&str>,
    from: &str,
) -> Result<Merged, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("re-reading the config to add {from}'s settings: {e}"))?;
    let mut notes = Vec::new();
    let mut changed = false;
    let root = doc.as_table_mut();

    if let Some(name) = hostname {
        let has = root
            .get("machine")
            .and_then(Item::as_table_like)
            .is_some_and(|m| m.contains_key("hostname"));
        if has {
            notes.push(format!(
                "machine.hostname: the config's own is kept ({from} offers {name:?})"
            ));
        } else if let Err(why) = check_hostname(name) {
            notes.push(format!("machine.hostname: {from} offers {name:?}, which is not a valid host name ({why}); not used"));
        } else {
            let machine = table_like(root, "machine")?;
            machine.insert("hostname", Item::Value(Value::from(name)));
            notes.push(format!("machine.hostname = {name:?} (from {from})"));
            changed = true;
        }
    }

    if let Some(net) = network {
        for s in &net.skipped {
            notes.push(format!("network: {from}: {s}"));
        }
        let existing = root.get("network").and_then(Item::as_table_like);
        let has = |key: &str| {
            existing.and_then(|n| n.get(key)).is_some_and(|v| match v {
                Item::ArrayOfTables(a) => !a.is_empty(),
                Item::Value(Value::Array(a)) => !a.is_empty(),
                Item::None => false,
                _ => true,
            })
        };
        let (has_ifaces, has_ns, has_search) =
            (has("interfaces"), has("nameservers"), has("search"));
        if !net.interfaces.is_empty() && has_ifaces {
            notes.push(format!("network.interfaces: the config's own are kept; {from}'s static addressing is not used"));
        }
        let add_ifaces = !net.interfaces.is_empty() && !has_ifaces;
        let add_ns = !net.nameservers.is_empty() && !has_ns;
        let add_search = !net.search.is_empty() && !has_search;
        if add_ifaces || add_ns || add_search {
            let network = table_like(root, "network")?;
            if add_ifaces {
                let mut aot = ArrayOfTables::new();
                for iface in &net.interfaces {
                    aot.push(interface_table(iface));
                    notes.push(format!(
                        "network.interfaces: {} (from {from})",
                        describe(iface)
                    ));
                }
                network.insert("interfaces", Item::ArrayOfTables(aot));
            }
            if add_ns {
                let list: Array = net.nameservers.iter().map(|ip| ip.to_string()).collect();
                network.insert("nameservers", Item::Value(Value::Array(list)));
                notes.push(format!(
                    "network.nameservers = [{}] (from {from})",
                    net.nameservers
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if add_search {
                let list: Array = net.search.iter().map(String::as_str).collect();
                network.insert("search", Item::Value(Value::Array(list)));
                notes.push(format!(
                    "network.search = [{}] (from {from})",
                    net.search.join(", ")
                ));
            }
            changed = true;
        }
    }
    let text = if changed {
        doc.to_string()
    } else {
        text.to_string()
    };
    Ok(Merged { text, notes })
}

/// The table `key` of `root`, made if absent (implicit, so an empty
/// `[network]` header is not written before `[[network.interfaces]]`).
fn table_like<'a>(
    root: &'a mut Table,
    key: &str,
) -> Result<&'a mut dyn toml_edit::TableLike, String> {
    if !root.contains_key(key) {
        let mut t = Table::new();
        t.set_implicit(true);
        root.insert(key, Item::Table(t));
    }
    root.get_mut(key)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| format!("the config's `{key}` is not a table"))
}

fn interface_table(i: &Interface) -> Table {
    let mut t = Table::new();
    if let Some(n) = &i.name {
        t.insert("name", Item::Value(Value::from(n.as_str())));
    }
    if let Some(m) = &i.mac {
        t.insert("mac", Item::Value(Value::from(m.as_str())));
    }
    if i.dhcp {
        t.insert("dhcp", Item::Value(Value::from(true)));
    }
    if !i.addresses.is_empty() {
        let a: Array = i.addresses.iter().map(|a| a.to_string()).collect();
        t.insert("addresses", Item::Value(Value::Array(a)));
    }
    if !i.gateways.is_empty() {
        let g: Array = i.gateways.iter().map(|g| g.to_string()).collect();
        t.insert("gateways", Item::Value(Value::Array(g)));
    }
    if !i.routes.is_empty() {
        let mut routes = Array::new();
        for r in &i.routes {
            let mut it = InlineTable::new();
            it.insert("to", Value::from(r.to.to_string()));
            it.insert("via", Value::from(r.via.to_string()));
            if let Some(m) = r.metric {
                it.insert("metric", Value::from(i64::from(m)));
            }
            routes.push(Value::InlineTable(it));
        }
        t.insert("routes", Item::Value(Value::Array(routes)));
    }
    if let Some(mtu) = i.mtu {
        t.insert("mtu", Item::Value(Value::from(i64::from(mtu))));
    }
    t
}

/// RFC 1123, as the config's `machine.hostname` wants it.
pub fn check_hostname(h: &str) -> Result<(), &'static str> {
    if h.is_empty() || h.len() > 253 {
        return Err("1 to 253 characters");
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with '-'");
        }
    }
    Ok(())
}

/// An IPv4 netmask (`255.255.255.0`) or IPv6 one (`ffff:ffff::`) as a
/// prefix length; `None` if its ones are not contiguous.
pub fn mask_to_prefix(mask: &str) -> Option<u8> {
    let bits: u128 = match mask.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----";

    fn base(extra: &str) -> String {
        format!("# mine\nversion = 1\n{extra}\n[api]\nca_cert = \"\"\"{CA}\"\"\"\nca_key = \"\"\"{KEY}\"\"\"\n")
    }

    fn static_net() -> NetworkData {
        NetworkData {
            interfaces: vec![Interface {
                mac: Some("52:54:00:12:34:56".into()),
                addresses: vec!["10.0.2.20/24".parse().unwrap()],
                gateways: vec!["10.0.2.2".parse().unwrap()],
                routes: vec![caisson_config::Route {
                    to: "192.168.0.0/16".parse().unwrap(),
                    via: "10.0.2.1".parse().unwrap(),
                    metric: Some(5),
                }],
                mtu: Some(1400),
                ..Interface::default()
            }],
            nameservers: vec!["10.0.2.3".parse().unwrap()],
            search: vec!["example.org".into()],
            skipped: vec!["bond0: bonds are not supported".into()],
        }
    }

    #[test]
    fn fills_what_the_config_leaves_out_and_keeps_its_own_lines() {
        let text = base("");
        let m = merge(
            &text,
            Some(&static_net()),
            Some("seed-host"),
            "network-config",
        )
        .unwrap();
        assert!(m.text.starts_with("# mine\nversion = 1\n"), "{}", m.text);
        let c = caisson_config::parse("merged", &m.text).unwrap();
        assert_eq!(c.machine.hostname.as_deref(), Some("seed-host"));
        assert_eq!(c.network.interfaces, static_net().interfaces);
        assert_eq!(c.network.nameservers, static_net().nameservers);
        assert_eq!(c.network.search, vec!["example.org".to_string()]);
        assert!(
            !m.text.contains("[network]\n\n"),
            "no empty header:\n{}",
            m.text
        );
        let only_ifaces = NetworkData {
            nameservers: Vec::new(),
            search: Vec::new(),
            ..static_net()
        };
        let m2 = merge(&text, Some(&only_ifaces), None, "x").unwrap();
        assert!(
            !m2.text.contains("[network]"),
            "an implicit table:\n{}",
            m2.text
        );
        let notes = m.notes.join("\n");
        assert!(
            notes.contains("network: network-config: bond0: bonds are not supported"),
            "{notes}"
        );
        assert!(
            notes.contains("network.interfaces: mac 52:54:00:12:34:56: 10.0.2.20/24, gateway 10.0.2.2, route 192.168.0.0/16 via 10.0.2.1, mtu 1400 (from network-config)"),
            "{notes}"
        );
        assert!(
            notes.contains("machine.hostname = \"seed-host\" (from network-config)"),
            "{notes}"
        );
    }

    #[test]
    fn the_configs_own_settings_win() {
        let text = base("[machine]\nhostname = \"mine\"\n[network]\nnameservers = [\"1.1.1.1\"]\n[[network.interfaces]]\nname = \"eth0\"\ndhcp = true\n");
        let m = merge(&text, Some(&static_net()), Some("other"), "meta").unwrap();
        let c = caisson_config::parse("merged", &m.text).unwrap();
        assert_eq!(c.machine.hostname.as_deref(), Some("mine"));
        assert_eq!(c.network.interfaces.len(), 1);
        assert_eq!(c.network.interfaces[0].name.as_deref(), Some("eth0"));
        assert_eq!(
            c.network.nameservers,
            vec!["1.1.1.1".parse::<IpAddr>().unwrap()]
        );
        // Only search was missing.
        assert_eq!(c.network.search, vec!["example.org".to_string()]);
        let notes = m.notes.join("\n");
        assert!(
            notes.contains("machine.hostname: the config's own is kept"),
            "{notes}"
        );
        assert!(
            notes.contains("network.interfaces: the config's own are kept"),
            "{notes}"
        );
    }

    #[test]
    fn nothing_to_add_keeps_the_text_byte_for_byte() {
        let text = base("[machine]\nhostname = \"mine\"");
        let m = merge(&text, Some(&NetworkData::default()), None, "x").unwrap();
        assert_eq!(m.text, text);
        let m = merge(&text, None, Some("bad_name!"), "meta").unwrap();
        assert_eq!(m.text, text);
        let plain = base("");
        let m = merge(&plain, None, Some("bad_name!"), "meta-data").unwrap();
        assert_eq!(m.text, plain);
        assert!(
            m.notes[0].contains("not a valid host name"),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn links_described_twice_are_merged() {
        let mut n = NetworkData::default();
        let v4 = Interface {
            mac: Some("FA:16:3E:00:00:01".into()),
            addresses: vec!["10.0.0.5/24".parse().unwrap()],
            gateways: vec!["10.0.0.1".parse().unwrap()],
            ..Interface::default()
        };
        let v6 = Interface {
            mac: Some("fa:16:3e:00:00:01".into()),
            addresses: vec!["fd00::5/64".parse().unwrap()],
            gateways: vec!["fd00::1".parse().unwrap(), "10.0.0.9".parse().unwrap()],
            mtu: Some(1450),
            ..Interface::default()
        };
        n.add(v4);
        n.add(v6);
        assert_eq!(n.interfaces.len(), 1);
        let i = &n.interfaces[0];
        assert_eq!(i.addresses.len(), 2);
        assert_eq!(i.gateways.len(), 2, "one per family: {:?}", i.gateways);
        assert_eq!(i.mtu, Some(1450));
    }

    #[test]
    fn netmasks_become_prefixes() {
        assert_eq!(mask_to_prefix("255.255.255.0"), Some(24));
        assert_eq!(mask_to_prefix("255.255.255.255"), Some(32));
        assert_eq!(mask_to_prefix("0.0.0.0"), Some(0));
        assert_eq!(mask_to_prefix("ffff:ffff:ffff:ffff::"), Some(64));
        assert_eq!(mask_to_prefix("255.0.255.0"), None);
        assert_eq!(mask_to_prefix("24"), None);
    }
}
