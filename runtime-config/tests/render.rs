//! The rendered files read back with real parsers: containerd's keys are
//! where containerd 1.6 looks for them, k3s's YAML means what it says.

use std::collections::BTreeSet;
use std::net::IpAddr;

use caisson_config::MachineConfig;
use caisson_runtime_config::{
    containerd_config, files, k3s_argv, k3s_config_yaml, k3s_registries_yaml, registry_hosts,
    NodeFacts,
};
use serde_norway::Value as Yaml;
use toml::Value as Toml;

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----";
const REGISTRY_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBqjCCAVGgAwIBAgIUVT4/t41x5JnyGpmqX+bidcjdRx0wCgYIKoZIzj0EAwIw
KzEpMCcGA1UEAwwgRXhhbXBsZSByZWdpc3RyeSBDQSAoZG8gbm90IHVzZSkwHhcN
MjYxMTIxMTA0MzExWhcNMzYxMTE4MTA0MzExWjArMSkwJwYDVQQDDCBFeGFtcGxl
IHJlZ2lzdHJ5IENBIChkbyBub3QgdXNlKTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABAGYp2LYcWuHk9iydswvivraouuhb7oblgaI3gAy14OvLwR3Ys65ghzZ13Z3
1ujyRZr2cZRO6UgqldNuoLrlFTqjUzBRMB0GA1UdDgQWBBQf5ievvJ4OhRvczMDh
F0fjwO5RODAfBgNVHSMEGDAWgBQf5ievvJ4OhRvczMDhF0fjwO5RODAPBgNVHRMB
Af8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIAWzVb5IqtuNAc5stwBydxwvPlBQ
ZY8RWqsA+TJjSwp7AiBw1djUdxavU75QNh9Q7EYEEC/ppkMDYMgDYSMKAWeKmw==
-----END CERTIFICATE-----
";

/// Secrets with every character that could break out of a quoted string.
const TOKEN: &str = "K10tok\"en\\#:{}[]'&*!|>%@`ü";
const PASSWORD: &str = "pa\"ss: #{x}\\'ü";

fn config(extra: &str) -> MachineConfig {
    let text = format!("version = 1\n[api]\nca_cert = \"\"\"\n{CA}\n\"\"\"\nca_key = \"\"\"\n{KEY}\n\"\"\"\n{extra}\n");
    caisson_config::parse("test.toml", &text).unwrap_or_else(|e| panic!("{e}"))
}

fn toml_string(s: &str) -> String {
    Toml::String(s.to_string()).to_string()
}

/// A server that joins a cluster, two registries: one with a mirror, CA and
/// credentials, docker.io through a plain-HTTP mirror without verification.
fn server() -> MachineConfig {
    config(&format!(
        r#"
[kubernetes]
role = "server"
server = "https://10.0.0.10:6443"
token = {token}
node_labels = {{ "topology.kubernetes.io/zone" = "a", tier = "" }}
node_taints = ["dedicated=infra:NoSchedule"]
tls_san = ["k8s.example.internal", "10.0.0.10"]
disable = ["traefik", "servicelb"]
flannel_backend = "wireguard-native"
extra_args = ["--kube-apiserver-arg=audit-log-maxage=30"]
kubelet_args = ["max-pods=150"]

[containerd.registries."registry.example.internal:5000"]
endpoints = ["https://mirror.example.internal:5000", "https://mirror2.example.internal"]
ca_cert = """
{REGISTRY_CA}"""
username = "puller"
password = {password}

[containerd.registries."docker.io"]
endpoints = ["http://10.0.0.5:5000"]
insecure_skip_verify = true
"#,
        token = toml_string(TOKEN),
        password = toml_string(PASSWORD),
    ))
}

fn facts() -> NodeFacts {
    NodeFacts {
        hostname: "Node-1".into(),
        addresses: vec!["10.0.0.11".parse::<IpAddr>().unwrap()],
    }
}

/// Every leaf key path of a TOML document, tables joined with '.'.
fn toml_leaves(v: &Toml, path: String, out: &mut BTreeSet<String>) {
    match v {
        Toml::Table(t) => {
            for (k, v) in t {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                toml_leaves(v, child, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

fn at<'a>(v: &'a Toml, path: &[&str]) -> &'a Toml {
    path.iter().fold(v, |v, k| {
        v.get(k).unwrap_or_else(|| panic!("no {path:?} in {v}"))
    })
}

#[test]
fn containerd_config_uses_exactly_the_key_paths_containerd_1_6_reads() {
    let c = server();
    let doc: Toml = toml::from_str(&containerd_config(&c)).unwrap();
    let cri = "plugins.io.containerd.grpc.v1.cri";
    let mut leaves = BTreeSet::new();
    toml_leaves(&doc, String::new(), &mut leaves);
    let want: BTreeSet<String> = [
        "version".to_string(),
        "root".into(),
        "state".into(),
        "grpc.address".into(),
        format!("{cri}.sandbox_image"),
        format!("{cri}.containerd.snapshotter"),
        format!("{cri}.containerd.default_runtime_name"),
        format!("{cri}.containerd.runtimes.runc.runtime_type"),
        format!("{cri}.containerd.runtimes.runc.options.BinaryName"),
        format!("{cri}.containerd.runtimes.runc.options.SystemdCgroup"),
        format!("{cri}.cni.bin_dir"),
        format!("{cri}.cni.conf_dir"),
        format!("{cri}.registry.config_path"),
    ]
    .into_iter()
    .chain(
        [
            "registry.example.internal:5000",
            "mirror.example.internal:5000",
            "mirror2.example.internal",
        ]
        .into_iter()
        .flat_map(|h| {
            ["username", "password"].map(|k| format!("{cri}.registry.configs.{h}.auth.{k}"))
        }),
    )
    .collect();
    assert_eq!(leaves, want);

    assert_eq!(doc["version"].as_integer(), Some(2));
    assert_eq!(doc["root"].as_str(), Some("/var/lib/containerd"));
    assert_eq!(doc["state"].as_str(), Some("/run/containerd"));
    assert_eq!(
        at(&doc, &["grpc", "address"]).as_str(),
        Some("/run/containerd/containerd.sock")
    );
    let cri = at(&doc, &["plugins", "io.containerd.grpc.v1.cri"]);
    assert_eq!(
        cri["sandbox_image"].as_str(),
        Some("rancher/mirrored-pause:3.6")
    );
    assert_eq!(
        at(cri, &["containerd", "snapshotter"]).as_str(),
        Some("overlayfs")
    );
    let runc = at(cri, &["containerd", "runtimes", "runc"]);
    assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    assert_eq!(
        at(runc, &["options", "SystemdCgroup"]).as_bool(),
        Some(false)
    );
    assert_eq!(
        at(runc, &["options", "BinaryName"]).as_str(),
        Some("/usr/sbin/runc")
    );
    assert_eq!(
        at(cri, &["cni", "bin_dir"]).as_str(),
        Some("/var/lib/rancher/k3s/data/current/bin")
    );
    assert_eq!(
        at(cri, &["cni", "conf_dir"]).as_str(),
        Some("/var/lib/rancher/k3s/agent/etc/cni/net.d")
    );
    assert_eq!(
        at(cri, &["registry", "config_path"]).as_str(),
        Some("/etc/containerd/certs.d")
    );
    let auth = at(
        cri,
        &[
            "registry",
            "configs",
            "mirror.example.internal:5000",
            "auth",
        ],
    );
    assert_eq!(auth["username"].as_str(), Some("puller"));
    assert_eq!(auth["password"].as_str(), Some(PASSWORD));
}

#[test]
fn docker_io_credentials_are_also_keyed_by_the_host_containerd_contacts() {
    let c = config("[containerd.registries.\"docker.io\"]\nusername = \"u\"\npassword = \"p\"\n");
    let doc: Toml = toml::from_str(&containerd_config(&c)).unwrap();
    let configs = at(
        &doc,
        &[
            "plugins",
            "io.containerd.grpc.v1.cri",
            "registry",
            "configs",
        ],
    );
    let hosts: Vec<&String> = configs.as_table().unwrap().keys().collect();
    assert_eq!(hosts, ["docker.io", "registry-1.docker.io"]);
}

#[test]
fn a_config_without_registries_has_no_registry_configs_or_hosts_files() {
    let c = config("");
    let doc: Toml = toml::from_str(&containerd_config(&c)).unwrap();
    assert!(
        at(&doc, &["plugins", "io.containerd.grpc.v1.cri", "registry"])
            .get("configs")
            .is_none()
    );
    assert!(registry_hosts(&c).is_empty());
    assert!(k3s_config_yaml(&c, &facts()).is_none() && k3s_argv(&c).is_none());
    let paths: Vec<String> = files(&c, &facts()).into_iter().map(|f| f.path).collect();
    assert_eq!(paths, ["/etc/containerd/config.toml"]);
}

#[test]
fn hosts_files_list_mirrors_in_order_before_the_upstream() {
    let files = registry_hosts(&server());
    let paths: Vec<(&str, u32)> = files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
    assert_eq!(
        paths,
        [
            ("/etc/containerd/certs.d/docker.io/hosts.toml", 0o644),
            (
                "/etc/containerd/certs.d/registry.example.internal:5000/hosts.toml",
                0o644
            ),
            (
                "/etc/containerd/certs.d/registry.example.internal:5000/ca.crt",
                0o644
            ),
        ]
    );
    let docker: Toml = toml::from_str(&files[0].contents).unwrap();
    assert_eq!(
        docker["server"].as_str(),
        Some("https://registry-1.docker.io")
    );
    assert_eq!(docker["skip_verify"].as_bool(), Some(true));
    let mirror = at(&docker, &["host", "http://10.0.0.5:5000"]);
    assert_eq!(
        mirror["capabilities"],
        Toml::Array(vec!["pull".into(), "resolve".into()])
    );
    assert_eq!(mirror["skip_verify"].as_bool(), Some(true));
    assert!(docker.get("ca").is_none() && mirror.get("ca").is_none());

    let private: Toml = toml::from_str(&files[1].contents).unwrap();
    let mut leaves = BTreeSet::new();
    toml_leaves(&private, String::new(), &mut leaves);
    let m1 = "host.https://mirror.example.internal:5000";
    let m2 = "host.https://mirror2.example.internal";
    let want = [
        "server",
        "ca",
        &format!("{m1}.capabilities"),
        &format!("{m1}.ca"),
        &format!("{m2}.capabilities"),
        &format!("{m2}.ca"),
    ];
    assert_eq!(leaves, want.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        private["server"].as_str(),
        Some("https://registry.example.internal:5000")
    );
    let ca = "/etc/containerd/certs.d/registry.example.internal:5000/ca.crt";
    assert_eq!(private["ca"].as_str(), Some(ca));
    // TOML tables keep no order, so check the text: mirrors are tried as listed.
    let text = &files[1].contents;
    assert!(
        text.find("mirror.example.internal:5000").unwrap()
            < text.find("mirror2.example.internal").unwrap()
    );
    assert_eq!(files[2].contents, REGISTRY_CA);
}

fn yaml(text: &str) -> serde_norway::Mapping {
    match serde_norway::from_str(text) {
        Ok(Yaml::Mapping(m)) => m,
        other => panic!("not a YAML mapping: {other:?}\n{text}"),
    }
}

fn strings(v: &Yaml) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn k3s_config_for_a_joining_server_carries_every_setting_with_secrets_intact() {
    let c = server();
    let text = k3s_config_yaml(&c, &facts()).unwrap();
    let m = yaml(&text);
    let keys: Vec<&str> = m.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "data-dir",
            "container-runtime-endpoint",
            "write-kubeconfig-mode",
            "token",
            "server",
            "node-name",
            "node-ip",
            "node-label",
            "node-taint",
            "tls-san",
            "disable",
            "flannel-backend",
            "kubelet-arg",
        ]
    );
    let s = |k: &str| {
        m[k].as_str()
            .unwrap_or_else(|| panic!("{k} is not a string"))
    };
    assert_eq!(s("token"), TOKEN);
    assert_eq!(s("server"), "https://10.0.0.10:6443");
    assert_eq!(s("data-dir"), "/var/lib/rancher/k3s");
    assert_eq!(
        s("container-runtime-endpoint"),
        "unix:///run/containerd/containerd.sock"
    );
    assert_eq!(s("write-kubeconfig-mode"), "0600");
    assert_eq!(s("node-name"), "node-1", "the host name, lowercased");
    assert_eq!(s("flannel-backend"), "wireguard-native");
    assert_eq!(strings(&m["node-ip"]), ["10.0.0.11"]);
    assert_eq!(
        strings(&m["node-label"]),
        ["tier=", "topology.kubernetes.io/zone=a"]
    );
    assert_eq!(strings(&m["node-taint"]), ["dedicated=infra:NoSchedule"]);
    assert_eq!(
        strings(&m["tls-san"]),
        ["k8s.example.internal", "10.0.0.10"]
    );
    assert_eq!(strings(&m["disable"]), ["traefik", "servicelb"]);
    assert_eq!(strings(&m["kubelet-arg"]), ["max-pods=150"]);
    assert_eq!(
        k3s_argv(&c).unwrap(),
        [
            "server",
            "--config",
            "/etc/rancher/k3s/config.yaml",
            "--kube-apiserver-arg=audit-log-maxage=30"
        ]
    );
}

#[test]
fn k3s_config_for_a_cluster_starting_server_and_for_an_agent() {
    let c = config("[kubernetes]\nrole = \"server\"\ncluster_init = true\nnode_name = \"cp-1\"\n");
    let m = yaml(
        &k3s_config_yaml(
            &c,
            &NodeFacts {
                hostname: "x".into(),
                addresses: vec![],
            },
        )
        .unwrap(),
    );
    assert_eq!(m["cluster-init"].as_bool(), Some(true));
    assert_eq!(m["node-name"].as_str(), Some("cp-1"));
    for absent in [
        "token",
        "server",
        "node-ip",
        "node-label",
        "tls-san",
        "disable",
        "flannel-backend",
    ] {
        assert!(!m.contains_key(absent), "{absent}");
    }

    let c = config(
        "[kubernetes]\nrole = \"agent\"\nserver = \"https://[2001:db8::10]:6443\"\ntoken = \"t\"\n",
    );
    let text = k3s_config_yaml(&c, &facts()).unwrap();
    let m = yaml(&text);
    let keys: Vec<&str> = m.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "data-dir",
            "container-runtime-endpoint",
            "token",
            "server",
            "node-name",
            "node-ip"
        ]
    );
    assert_eq!(m["server"].as_str(), Some("https://[2001:db8::10]:6443"));
    assert_eq!(
        k3s_argv(&c).unwrap(),
        ["agent", "--config", "/etc/rancher/k3s/config.yaml"]
    );
}

#[test]
fn k3s_registries_yaml_lists_mirrors_and_per_host_auth_and_tls() {
    let m = yaml(&k3s_registries_yaml(&server()));
    let mirrors = m["mirrors"].as_mapping().unwrap();
    assert_eq!(
        strings(&mirrors["docker.io"]["endpoint"]),
        ["http://10.0.0.5:5000"]
    );
    assert_eq!(
        strings(&mirrors["registry.example.internal:5000"]["endpoint"]),
        [
            "https://mirror.example.internal:5000",
            "https://mirror2.example.internal"
        ]
    );
    let configs = m["configs"].as_mapping().unwrap();
    let hosts: BTreeSet<&str> = configs.keys().map(|k| k.as_str().unwrap()).collect();
    let want = [
        "docker.io",
        "10.0.0.5:5000",
        "registry.example.internal:5000",
        "mirror.example.internal:5000",
        "mirror2.example.internal",
    ];
    assert_eq!(hosts, want.into_iter().collect());
    let private = &configs["mirror2.example.internal"];
    assert_eq!(private["auth"]["username"].as_str(), Some("puller"));
    assert_eq!(private["auth"]["password"].as_str(), Some(PASSWORD));
    let ca = "/etc/containerd/certs.d/registry.example.internal:5000/ca.crt";
    assert_eq!(private["tls"]["ca_file"].as_str(), Some(ca));
    assert!(private["tls"].get("insecure_skip_verify").is_none());
    let docker = &configs["10.0.0.5:5000"];
    assert_eq!(docker["tls"]["insecure_skip_verify"].as_bool(), Some(true));
    assert!(docker.get("auth").is_none());

    let empty = yaml(&k3s_registries_yaml(&config("")));
    assert!(
        empty["mirrors"].as_mapping().unwrap().is_empty()
            && empty["configs"].as_mapping().unwrap().is_empty()
    );
}

#[test]
fn secrets_are_in_the_files_but_never_in_debug_output() {
    let c = server();
    let all = files(&c, &facts());
    let paths: Vec<(&str, u32)> = all.iter().map(|f| (f.path.as_str(), f.mode)).collect();
    assert_eq!(paths[0], ("/etc/containerd/config.toml", 0o600));
    assert_eq!(
        paths[paths.len() - 2..],
        [
            ("/etc/rancher/k3s/config.yaml", 0o600),
            ("/etc/rancher/k3s/registries.yaml", 0o600)
        ]
    );
    let contents: String = all.iter().map(|f| f.contents.as_str()).collect();
    assert!(contents.contains("pa\\\"ss"), "the password is written");
    let shown = format!("{all:?} {:?} {c:?}", facts());
    for secret in [TOKEN, PASSWORD, "pa\\\"ss", "K10tok"] {
        assert!(!shown.contains(secret), "{secret:?} in {shown}");
    }
}
