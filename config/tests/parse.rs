//! The machine config parser, as an operator meets it.

use caisson_config::{parse, redact, SysctlValue};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----";

fn base(extra: &str) -> String {
    format!(
        "version = 1\n{extra}\n[api]\nca_cert = \"\"\"\n{CA}\n\"\"\"\nca_key = \"\"\"\n{KEY}\n\"\"\"\n"
    )
}

#[test]
fn a_full_config_parses_into_typed_values() {
    let text = base(
        r#"
[machine]
hostname = "node-1.example"

[network]
nameservers = ["10.0.0.53", "2001:db8::53"]
search = ["example"]
hosts = [{ ip = "10.0.0.10", names = ["registry.example"] }]

[[network.interfaces]]
mac = "52:54:00:12:34:56"
addresses = ["10.0.0.5/24", "2001:db8::5/64"]
gateways = ["10.0.0.1"]
mtu = 9000
routes = [{ to = "192.168.0.0/16", via = "10.0.0.254", metric = 100 }]

[[network.interfaces]]
name = "eth1"
dhcp = true

[time]
ntp_servers = ["ntp.example"]

[kernel]
modules = ["br_netfilter"]
sysctls = { "net.ipv4.ip_forward" = 1, "vm.overcommit_memory" = "1" }
args = ["mitigations=auto"]
"#,
    );
    let c = parse("node.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.machine.hostname.as_deref(), Some("node-1.example"));
    assert_eq!(c.network.interfaces.len(), 2);
    assert_eq!(c.network.interfaces[0].mtu, Some(9000));
    assert_eq!(c.network.interfaces[0].addresses[1].to_string(), "2001:db8::5/64");
    assert!(c.network.interfaces[1].dhcp);
    assert_eq!(c.kernel.sysctls["net.ipv4.ip_forward"], SysctlValue::Int(1));
    assert_eq!(c.kernel.sysctls["vm.overcommit_memory"].render(), "1");
    assert_eq!(c.api.port, caisson_config::DEFAULT_API_PORT);
    assert_eq!(c.api.ca_key.as_ref().map(|k| k.expose().trim()), Some(KEY));
}

#[test]
fn unknown_key_is_rejected_with_its_path_and_position() {
    let text = base("[network]\nnameservers = []\ncolour = \"blue\"\n");
    let e = parse("node.toml", &text).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("node.toml:4:"), "{msg}");
    assert!(msg.contains("network"), "{msg}");
    assert!(msg.contains("unknown field `colour`"), "{msg}");
}

#[test]
fn ill_typed_value_names_key_path_and_expectation() {
    let text = base("[[network.interfaces]]\nname = \"eth0\"\nmtu = \"big\"\n");
    let msg = parse("node.toml", &text).unwrap_err().to_string();
    assert!(msg.contains("network.interfaces[0].mtu"), "{msg}");
    assert!(msg.contains("node.toml:4:"), "{msg}");
    assert!(msg.contains("expected u32") || msg.contains("invalid type"), "{msg}");
}

#[test]
fn bad_address_is_reported_at_its_line() {
    let text = base("[[network.interfaces]]\nname = \"eth0\"\naddresses = [\"10.0.0.5/33\"]\n");
    let msg = parse("node.toml", &text).unwrap_err().to_string();
    assert!(msg.contains("network.interfaces[0].addresses[0]"), "{msg}");
    assert!(msg.contains("node.toml:4:14"), "{msg}");
}

#[test]
fn semantic_errors_are_all_reported_with_paths_and_positions() {
    let text = base(
        "[machine]\nhostname = \"-bad-\"\n[[network.interfaces]]\nname = \"eth0\"\nmac = \"52:54:00:00:00:01\"\n[[network.interfaces]]\nmac = \"zz\"\nmtu = 20\n[kernel]\nargs = [\"caisson.slot=b\"]\n",
    );
    let errors = parse("n.toml", &text).unwrap_err();
    let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let find = |needle: &str| {
        all.iter().find(|m| m.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in {all:#?}")).clone()
    };
    assert!(find("machine.hostname").starts_with("n.toml:3:"));
    assert!(find("network.interfaces[0]:").contains("not both"));
    assert!(find("network.interfaces[1].mac").contains("n.toml:8:"));
    assert!(find("network.interfaces[1].mtu").contains("68 to 65535"));
    assert!(find("kernel.args[0]").contains("may not be overridden"));
    assert_eq!(all.len(), 5, "{all:#?}");
}

#[test]
fn version_and_api_are_required() {
    let msg = parse("n.toml", "[machine]\n").unwrap_err().to_string();
    assert!(msg.contains("missing field `version`"), "{msg}");
    let msg = parse("n.toml", "version = 2\n[api]\nca_cert = \"x\"\n").unwrap_err().to_string();
    assert!(msg.contains("version: unsupported version 2"), "{msg}");
    assert!(msg.contains("api.ca_cert"), "{msg}");
    assert!(msg.contains("api: expected `ca_key`"), "{msg}");
}

#[test]
fn readers_never_see_secrets() {
    let c = parse("n.toml", &base("")).unwrap();
    let shown = redact::redacted_toml(&c);
    assert!(!shown.contains("MIGH"), "{shown}");
    assert!(shown.contains("ca_key = \"***\""), "{shown}");
    assert!(shown.contains("BEGIN CERTIFICATE"), "{shown}");
    assert!(!format!("{c:?}").contains("MIGH"));
}

#[test]
fn diff_lists_changed_keys_and_masks_secrets() {
    let old = parse("n.toml", &base("[machine]\nhostname = \"a\"\n")).unwrap();
    let new_text = base("[machine]\nhostname = \"b\"\n[kernel]\nsysctls = { \"vm.swappiness\" = 10 }\n")
        .replace("MIGH", "OTHER");
    let new = parse("n.toml", &new_text).unwrap();
    let changes = redact::diff(&old, &new);
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, vec!["api.ca_key", "kernel.sysctls.\"vm.swappiness\"", "machine.hostname"], "{changes:#?}");
    let key = &changes[0];
    assert_eq!((key.old.as_deref(), key.new.as_deref()), (Some("***"), Some("***")));
    assert_eq!(changes[2].new.as_deref(), Some("\"b\""));
    assert!(redact::diff(&old, &old).is_empty());
}

#[test]
fn syntax_errors_also_name_the_key_path() {
    let text = base("[[network.interfaces]]\nname = \"eth0\"\n[[network.interfaces]]\nname = \"eth1\nmtu = 9000\n");
    let msg = parse("node.toml", &text).unwrap_err().to_string();
    assert!(msg.starts_with("node.toml:5:"), "{msg}");
    assert!(msg.contains(": network.interfaces[1].name: "), "{msg}");
}
