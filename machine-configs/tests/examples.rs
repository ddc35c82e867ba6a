//! Every example machine config in this directory parses and validates.

use std::path::{Path, PathBuf};

use caisson_config::{Kubernetes, KubernetesRole};

fn examples(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.ends_with("src") && !path.ends_with("tests") {
            examples(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("Cargo.toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_config_is_valid() {
    let mut files = Vec::new();
    examples(Path::new(env!("CARGO_MANIFEST_DIR")), &mut files);
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "airgap-mirror.toml",
            "bare-metal-install.toml",
            "single-node-dhcp.toml",
            "static-two-nics.toml",
            "three-node/node-1.toml",
            "three-node/node-2.toml",
            "three-node/node-3.toml",
        ]
    );
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if let Err(e) = caisson_config::parse(&f.display().to_string(), &text) {
            panic!("{e}");
        }
    }
}

#[test]
fn bare_metal_example_installs_to_one_nvme_disk_by_selector_without_wiping() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bare-metal-install.toml");
    let c = caisson_config::parse("install", &std::fs::read_to_string(path).unwrap()).unwrap();
    let install = c.install.unwrap();
    assert!(install.disk.is_none() && !install.wipe);
    let selector = install.disk_selector.unwrap();
    assert_eq!(selector.disk_type, Some(caisson_config::DiskType::Nvme));
    let size = caisson_config::SizeMatch::parse(selector.size.as_deref().unwrap()).unwrap();
    assert!(size.matches(256_060_514_304) && !size.matches(128_035_676_160));
}

#[test]
fn static_example_selects_links_by_name_and_by_mac() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("static-two-nics.toml");
    let c = caisson_config::parse("static", &std::fs::read_to_string(path).unwrap()).unwrap();
    let ifs = &c.network.interfaces;
    assert_eq!(ifs[0].name.as_deref(), Some("eth0"));
    assert_eq!(ifs[1].mac.as_deref(), Some("52:54:00:aa:bb:02"));
    assert_eq!(ifs[1].mtu, Some(9000));
    assert_eq!(c.kernel.args, ["mitigations=auto"]);
}

#[test]
fn three_node_set_shares_one_ca_and_has_distinct_names_and_addresses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("three-node");
    let configs: Vec<_> = (1..=3)
        .map(|i| {
            let text = std::fs::read_to_string(dir.join(format!("node-{i}.toml"))).unwrap();
            caisson_config::parse("three-node", &text).unwrap()
        })
        .collect();
    assert!(configs
        .windows(2)
        .all(|w| w[0].api.ca_cert == w[1].api.ca_cert));
    let mut names: Vec<_> = configs.iter().map(|c| c.machine.hostname.clone()).collect();
    names.dedup();
    assert_eq!(names.len(), 3);
    let mut addrs: Vec<_> = configs
        .iter()
        .map(|c| c.network.interfaces[0].addresses[0])
        .collect();
    addrs.dedup();
    assert_eq!(addrs.len(), 3);
}

#[test]
fn three_node_set_is_one_k3s_cluster_started_by_node_1() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("three-node");
    let k: Vec<Kubernetes> = (1..=3)
        .map(|i| {
            let text = std::fs::read_to_string(dir.join(format!("node-{i}.toml"))).unwrap();
            caisson_config::parse("three-node", &text)
                .unwrap()
                .kubernetes
                .expect("a [kubernetes] section")
        })
        .collect();
    assert!(k.iter().all(|k| k.role == KubernetesRole::Server));
    assert!(k[0].cluster_init && k[0].server.is_none());
    let node_1 = "https://10.40.0.11:6443";
    assert!(k[1..]
        .iter()
        .all(|k| !k.cluster_init && k.server.as_deref() == Some(node_1)));
    assert!(k
        .windows(2)
        .all(|w| w[0].token == w[1].token && w[0].token.is_some()));
}

#[test]
fn airgap_example_mirrors_docker_io_runs_a_system_container_and_trusts_one_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("airgap-mirror.toml");
    let c = caisson_config::parse("airgap", &std::fs::read_to_string(path).unwrap()).unwrap();
    let upgrade = c.upgrade.as_ref().unwrap();
    assert_eq!(
        (upgrade.trusted_keys.len(), upgrade.allow_unsigned),
        (1, false)
    );
    assert_eq!(
        c.kubernetes.as_ref().map(|k| k.role),
        Some(KubernetesRole::Agent)
    );
    let registries: Vec<&str> = c.containerd.registries.keys().map(String::as_str).collect();
    assert_eq!(registries, ["docker.io", "registry.example.internal:5000"]);
    assert!(c
        .containerd
        .registries
        .values()
        .all(|r| r.ca_cert.is_some() && r.password.is_some()));
    assert_eq!(c.containers.len(), 1);
    assert_eq!(
        c.containers[0].archive.as_deref(),
        Some("node-exporter.tar")
    );
    let shown = caisson_config::redact::redacted_toml(&c);
    assert!(
        !shown.contains("example-password") && !shown.contains("example-token"),
        "{shown}"
    );
}
