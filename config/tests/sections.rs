//! The `upgrade`, `kubernetes`, `containerd` and `containers` sections, as an
//! operator meets them.

use caisson_config::{
    parse, redact, FlannelBackend, K3sComponent, KubernetesRole, RestartPolicy, Secret,
};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----";

/// A real Ed25519 public key (`openssl genpkey -algorithm ed25519 | openssl pkey -pubout`).
const ED25519_PUB: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEATEYMQxUXbpC9KOk2B+AN+zLfe5ThyuhbXY1GiE7gs0w=
-----END PUBLIC KEY-----
";

/// A real self-signed certificate, for registry CAs.
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

fn base(extra: &str) -> String {
    format!("version = 1\n[api]\nca_cert = \"\"\"\n{CA}\n\"\"\"\nca_key = \"\"\"\n{KEY}\n\"\"\"\n{extra}\n")
}

/// Every error message, for `find`.
fn errors(text: &str) -> Vec<String> {
    match parse("n.toml", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn find<'a>(all: &'a [String], needle: &str) -> &'a str {
    all.iter()
        .find(|m| m.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {all:#?}"))
}

#[test]
fn a_full_config_with_every_new_section_parses_into_typed_values() {
    let text = base(&format!(
        r#"
[upgrade]
trusted_keys = ["""
{ED25519_PUB}"""]
health_timeout_secs = 600

[kubernetes]
role = "server"
server = "https://10.0.0.10:6443"
token = "K10abc::server:secret"
node_name = "node-1"
node_labels = {{ "topology.kubernetes.io/zone" = "a", tier = "" }}
node_taints = ["dedicated=infra:NoSchedule", "gpu:NoExecute"]
tls_san = ["k8s.example.internal", "10.0.0.10", "2001:db8::10"]
disable = ["traefik", "servicelb"]
flannel_backend = "host-gw"
extra_args = ["--kube-apiserver-arg=audit-log-maxage=30"]
kubelet_args = ["max-pods=150"]

[containerd.registries."registry.example.internal:5000"]
endpoints = ["https://mirror.example.internal:5000", "http://10.0.0.5:5000/v2/proxy"]
ca_cert = """
{REGISTRY_CA}"""
username = "puller"
password = "hunter2"

[containerd.registries."docker.io"]
endpoints = ["https://mirror.example.internal:5000"]

[[containers]]
name = "node-exporter"
image = "docker.io/prom/node-exporter:v1.8.2"
archive = "node-exporter.tar"
args = ["--path.rootfs=/host"]
env = {{ FOO = "bar" }}
restart = "on-failure"
memory_max_mib = 256
[[containers.mounts]]
source = "/var/lib/node-exporter"
destination = "/data"
[[containers.mounts]]
source = "/proc"
destination = "/host/proc"
readonly = true
"#
    ));
    let c = parse("n.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let u = c.upgrade.as_ref().unwrap();
    assert_eq!(
        (
            u.trusted_keys.len(),
            u.allow_unsigned,
            u.health_timeout_secs
        ),
        (1, false, 600)
    );
    let k = c.kubernetes.as_ref().unwrap();
    assert_eq!(k.role, KubernetesRole::Server);
    assert_eq!(
        k.token.as_ref().map(Secret::expose),
        Some("K10abc::server:secret")
    );
    assert_eq!(k.disable, [K3sComponent::Traefik, K3sComponent::Servicelb]);
    assert_eq!(k.flannel_backend, Some(FlannelBackend::HostGw));
    assert_eq!(k.node_labels["topology.kubernetes.io/zone"], "a");
    let r = &c.containerd.registries["registry.example.internal:5000"];
    assert_eq!(r.endpoints.len(), 2);
    assert!(!r.insecure_skip_verify);
    assert_eq!(r.password.as_ref().map(Secret::expose), Some("hunter2"));
    let ct = &c.containers[0];
    assert_eq!(
        (ct.restart, ct.memory_max_mib, ct.mounts.len()),
        (RestartPolicy::OnFailure, Some(256), 2)
    );
    assert!(ct.mounts[1].readonly && !ct.mounts[0].readonly);

    // What readers see parses back into the same config, secrets masked.
    let reread: caisson_config::MachineConfig = toml::from_str(&redact::redacted_toml(&c)).unwrap();
    let mut masked = c.clone();
    for s in redact::secrets_mut(&mut masked) {
        *s = Secret::new("***");
    }
    assert_eq!(reread, masked);
}

#[test]
fn sections_have_defaults_and_stay_absent_when_not_written() {
    let c = parse(
        "n.toml",
        &base("[upgrade]\n[[containers]]\nname = \"a\"\nimage = \"busybox\"\n"),
    )
    .unwrap();
    let u = c.upgrade.as_ref().unwrap();
    assert_eq!(
        (u.allow_unsigned, u.health_timeout_secs),
        (false, caisson_config::DEFAULT_HEALTH_TIMEOUT_SECS)
    );
    assert_eq!(c.containers[0].restart, RestartPolicy::Always);
    let plain = parse("n.toml", &base("")).unwrap();
    assert!(plain.upgrade.is_none() && plain.kubernetes.is_none() && plain.containerd.is_empty());
    let shown = redact::redacted_toml(&plain);
    for section in ["upgrade", "kubernetes", "containerd", "containers"] {
        assert!(!shown.contains(section), "{shown}");
    }
}

#[test]
fn an_agent_needs_a_server_and_a_token() {
    let all = errors(&base("[kubernetes]\nrole = \"agent\"\n"));
    assert!(find(&all, "kubernetes.server").contains("an agent needs `server`"));
    assert_eq!(all.len(), 1, "{all:#?}");
    let all = errors(&base(
        "[kubernetes]\nrole = \"agent\"\nserver = \"https://10.0.0.10:6443\"\n",
    ));
    assert!(find(&all, "kubernetes.token").contains("n.toml:"));
    let all = errors(&base(
        "[kubernetes]\nrole = \"server\"\nserver = \"https://10.0.0.10:6443\"\n",
    ));
    assert!(find(&all, "kubernetes.token").contains("joins"));
}

#[test]
fn server_only_settings_and_cluster_init_are_checked_against_the_role() {
    let text = base(
        "[kubernetes]\nrole = \"agent\"\nserver = \"http://10.0.0.10\"\ntoken = \"t\"\ncluster_init = true\ntls_san = [\"a\"]\ndisable = [\"coredns\"]\nflannel_backend = \"none\"\n",
    );
    let all = errors(&text);
    assert!(find(&all, "kubernetes.server").contains("expected https://host:port"));
    assert!(find(&all, "kubernetes.cluster_init").contains("only a server"));
    for key in ["tls_san", "disable", "flannel_backend"] {
        assert!(find(&all, &format!("kubernetes.{key}")).contains("server\" only"));
    }
    assert_eq!(all.len(), 5, "{all:#?}");
    let all = errors(&base(
        "[kubernetes]\nrole = \"server\"\nserver = \"https://cp-1:6443\"\ntoken = \"t\"\ncluster_init = true\n",
    ));
    assert!(find(&all, "kubernetes.cluster_init").contains("joins one"));
}

#[test]
fn an_unknown_disable_item_names_its_index_and_the_allowed_ones() {
    let text = base("[kubernetes]\nrole = \"server\"\ndisable = [\"traefik\", \"ingress\"]\n");
    let msg = parse("n.toml", &text).unwrap_err().to_string();
    assert!(msg.contains("kubernetes.disable[1]"), "{msg}");
    let line = text.lines().position(|l| l.starts_with("disable")).unwrap() + 1;
    assert!(msg.starts_with(&format!("n.toml:{line}:")), "{msg}");
    for allowed in K3sComponent::ALL {
        assert!(msg.contains(allowed.as_str()), "{msg}");
    }
}

#[test]
fn labels_taints_sans_and_arguments_follow_kubernetes_syntax() {
    let text = base(
        r#"[kubernetes]
role = "server"
node_name = "Node_1"
node_labels = { "bad key" = "x", "example.com/ok" = "-bad-value-", "Example.com/x" = "y" }
node_taints = ["ok=yes:NoSchedule", "dedicated=infra", "k=v:Sometimes"]
tls_san = ["k8s.example", "not a host"]
extra_args = ["--ok", "-x", "--data-dir=/tmp", "--token=abc"]
kubelet_args = ["max-pods=150", "--max-pods=150", "nosuchvalue"]
"#,
    );
    let all = errors(&text);
    assert!(find(&all, "kubernetes.node_name").contains("lowercase"));
    assert!(find(&all, "kubernetes.node_labels.\"bad key\"").contains("is not a label key"));
    assert!(
        find(&all, "kubernetes.node_labels.\"example.com/ok\"").contains("is not a label value")
    );
    assert!(
        find(&all, "kubernetes.node_labels.\"Example.com/x\"").contains("lowercase DNS subdomain")
    );
    assert!(find(&all, "kubernetes.node_taints[1]").contains("no ':Effect'"));
    assert!(find(&all, "kubernetes.node_taints[2]")
        .contains("NoSchedule, PreferNoSchedule or NoExecute"));
    assert!(find(&all, "kubernetes.tls_san[1]").contains("neither a host name nor an IP"));
    assert!(find(&all, "kubernetes.extra_args[1]").contains("starting with --"));
    assert!(find(&all, "kubernetes.extra_args[2]").contains("set by Caisson"));
    assert!(find(&all, "kubernetes.extra_args[3]").contains("its own key, `token`"));
    assert!(find(&all, "kubernetes.kubelet_args[1]").contains("name=value"));
    assert!(find(&all, "kubernetes.kubelet_args[2]").contains("name=value"));
    assert_eq!(all.len(), 12, "{all:#?}");
    // Map keys with dots are located at their line.
    let label_line = text
        .lines()
        .position(|l| l.starts_with("node_labels"))
        .unwrap()
        + 1;
    assert!(
        find(&all, "\"bad key\"").starts_with(&format!("n.toml:{label_line}:")),
        "{all:#?}"
    );
}

#[test]
fn registries_are_checked_key_by_key() {
    let text = base(
        r#"[containerd.registries."bad host!"]
[containerd.registries."registry.example:5000"]
endpoints = ["https://ok.example", "ftp://mirror", "https://user@mirror.example"]
ca_cert = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----"
username = "me"
[containerd.registries."quay.io"]
password = "p"
ca_cert = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----"
"#,
    );
    let all = errors(&text);
    assert!(
        find(&all, "containerd.registries.\"bad host!\"").contains("not a registry host[:port]")
    );
    let at = "containerd.registries.\"registry.example:5000\"";
    assert!(find(&all, &format!("{at}.endpoints[1]")).contains("http or https"));
    assert!(find(&all, &format!("{at}.endpoints[2]")).contains("user part"));
    assert!(find(&all, &format!("{at}.ca_cert")).contains("expected PEM certificates"));
    assert!(find(&all, &format!("{at}.password")).contains("`username` is set"));
    assert!(find(&all, "containerd.registries.\"quay.io\".username").contains("`password` is set"));
    assert!(find(&all, "containerd.registries.\"quay.io\".ca_cert").contains("not a CERTIFICATE"));
    assert_eq!(all.len(), 7, "{all:#?}");
    let endpoint_line = text
        .lines()
        .position(|l| l.starts_with("endpoints"))
        .unwrap()
        + 1;
    assert!(
        find(&all, "endpoints[1]").starts_with(&format!("n.toml:{endpoint_line}:")),
        "{all:#?}"
    );
}

#[test]
fn registries_sharing_a_mirror_must_agree_on_credentials() {
    let text = base(
        r#"[containerd.registries."docker.io"]
endpoints = ["https://mirror.example"]
username = "a"
password = "1"
[containerd.registries."quay.io"]
endpoints = ["https://mirror.example"]
username = "b"
password = "2"
"#,
    );
    let all = errors(&text);
    assert!(find(&all, "containerd.registries.\"quay.io\"")
        .contains("\"mirror.example\" is also contacted for registry \"docker.io\""));
    assert_eq!(all.len(), 1, "{all:#?}");
}

#[test]
fn upgrade_keys_must_be_ed25519_and_the_health_timeout_bounded() {
    let text = base(&format!(
        "[upgrade]\ntrusted_keys = [\"\"\"\n{ED25519_PUB}\"\"\", \"\"\"\n{KEY}\"\"\"]\nhealth_timeout_secs = 5\n"
    ));
    let all = errors(&text);
    assert!(find(&all, "upgrade.trusted_keys[1]").contains("Ed25519 public key"));
    assert!(find(&all, "upgrade.health_timeout_secs").contains("expected 10 to 3600"));
    assert_eq!(all.len(), 2, "{all:#?}");
}

#[test]
fn containers_need_unique_names_and_safe_mounts() {
    let text = base(
        r#"[[containers]]
name = "exporter"
image = "docker.io/prom/node-exporter:v1.8.2"
archive = "../etc/shadow"
env = { "1BAD" = "x" }
memory_max_mib = 0
mounts = [
  { source = "/var/lib/exporter", destination = "/data" },
  { source = "/var/lib/containerd", destination = "/c" },
  { source = "/etc", destination = "/host/etc" },
  { source = "/run/caisson/state", destination = "/s", readonly = true },
  { source = "/var/../etc", destination = "relative" },
  { source = "/var/lib", destination = "/data" },
]
[[containers]]
name = "exporter"
image = "has space"
[[containers]]
name = "Bad_Name"
image = "busybox"
"#,
    );
    let all = errors(&text);
    let c0 = "containers[0]";
    assert!(find(&all, &format!("{c0}.archive")).contains("without '/'"));
    assert!(find(&all, &format!("{c0}.env.\"1BAD\"")).contains("variable name"));
    assert!(find(&all, &format!("{c0}.memory_max_mib")).contains("at least 1"));
    assert!(find(&all, &format!("{c0}.mounts[1].source")).contains("may not be mounted"));
    assert!(find(&all, &format!("{c0}.mounts[2].source")).contains("readonly = true"));
    assert!(find(&all, &format!("{c0}.mounts[3].source")).contains("may not be mounted"));
    assert!(find(&all, &format!("{c0}.mounts[4].source")).contains("normalized"));
    assert!(find(&all, &format!("{c0}.mounts[4].destination")).contains("absolute"));
    assert!(find(&all, &format!("{c0}.mounts[5].source")).contains("may not be mounted"));
    assert!(find(&all, &format!("{c0}.mounts[5].destination")).contains("mounted twice"));
    assert!(find(&all, "containers[1].name").contains("defined twice"));
    assert!(find(&all, "containers[1].image").contains("image reference"));
    assert!(find(&all, "containers[2].name").contains("lowercase"));
    assert_eq!(all.len(), 13, "{all:#?}");
}

#[test]
fn unknown_keys_in_new_sections_are_rejected() {
    for (section, key) in [
        ("[upgrade]", "keys"),
        ("[kubernetes]\nrole = \"server\"", "tokn"),
        ("[containerd.registries.\"docker.io\"]", "mirrors"),
        ("[[containers]]\nname = \"a\"\nimage = \"b\"", "command"),
    ] {
        let msg = parse("n.toml", &base(&format!("{section}\n{key} = 1\n")))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&format!("unknown field `{key}`")), "{msg}");
    }
    let msg = parse("n.toml", &base("[kubernetes]\nrole = \"master\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("kubernetes.role") && msg.contains("expected `server` or `agent`"),
        "{msg}"
    );
}

/// Every secret, set to a recognisable value.
fn with_every_secret() -> caisson_config::MachineConfig {
    parse(
        "n.toml",
        &base(
            r#"[kubernetes]
role = "agent"
server = "https://10.0.0.10:6443"
token = "TOKEN-SECRET"
[containerd.registries."registry.example:5000"]
username = "u"
password = "PASSWORD-SECRET"
[containerd.registries."localhost:5000"]
username = "u"
password = "OTHER-SECRET"
"#,
        ),
    )
    .unwrap()
}

#[test]
fn readers_never_see_tokens_or_registry_passwords() {
    let c = with_every_secret();
    let secrets: Vec<String> = redact::secrets(&c)
        .iter()
        .map(|s| s.expose().to_string())
        .collect();
    assert_eq!(secrets.len(), 4, "{secrets:?}");
    let shown = redact::redacted_toml(&c);
    let debug = format!("{c:?}");
    for s in &secrets {
        assert!(!shown.contains(s.as_str()), "{shown}");
        assert!(!debug.contains(s.as_str()), "{debug}");
    }
    assert!(shown.contains("token = \"***\""), "{shown}");
    assert_eq!(shown.matches("password = \"***\"").count(), 2, "{shown}");
    // What readers see is still a config of the same shape.
    let reread: caisson_config::MachineConfig = toml::from_str(&shown).unwrap();
    let mut masked = c.clone();
    for s in redact::secrets_mut(&mut masked) {
        *s = Secret::new("***");
    }
    assert_eq!(reread, masked);
}

#[test]
fn diff_masks_changed_tokens_and_passwords_under_quoted_keys() {
    let old = with_every_secret();
    let mut new = old.clone();
    for s in redact::secrets_mut(&mut new) {
        *s = Secret::new("changed");
    }
    new.containerd
        .registries
        .get_mut("localhost:5000")
        .unwrap()
        .username = Some("v".into());
    let changes = redact::diff(&old, &new);
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "api.ca_key",
            "containerd.registries.\"localhost:5000\".password",
            "containerd.registries.\"localhost:5000\".username",
            "containerd.registries.\"registry.example:5000\".password",
            "kubernetes.token",
        ],
        "{changes:#?}"
    );
    for c in &changes {
        let secret = redact::is_secret_path(&c.path);
        assert_eq!(secret, !c.path.ends_with("username"), "{}", c.path);
        if secret {
            assert_eq!(
                (c.old.as_deref(), c.new.as_deref()),
                (Some("***"), Some("***"))
            );
        }
    }
}
