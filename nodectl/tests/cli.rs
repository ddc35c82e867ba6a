//! nodectl as an operator runs it.

use std::path::Path;
use std::process::Command;

fn nodectl(args: &[&str], cwd: &Path, xdg: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodectl"))
        .args(args)
        .current_dir(cwd)
        .env("XDG_CONFIG_HOME", xdg)
        .env_remove("NODECTLCONFIG")
        .output()
        .expect("run nodectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn gen_secrets_then_config_gives_a_valid_node_config_and_a_client_context() {
    let dir = tempfile::tempdir().unwrap();
    let xdg = dir.path().join("xdg");
    let (ok, out) = nodectl(&["gen", "secrets"], dir.path(), &xdg);
    assert!(ok, "{out}");
    for f in ["ca.crt", "ca.key", "admin.crt", "admin.key"] {
        assert!(dir.path().join("secrets").join(f).exists(), "{f} missing");
    }
    let (ok, out) = nodectl(&["gen", "secrets"], dir.path(), &xdg);
    assert!(!ok && out.contains("already exists"), "{out}");

    let (ok, out) = nodectl(
        &["gen", "config", "--endpoints", "10.0.0.5,10.0.0.6"],
        dir.path(),
        &xdg,
    );
    assert!(ok, "{out}");
    let (ok, out) = nodectl(&["validate", "-f", "node.toml"], dir.path(), &xdg);
    assert!(ok && out.contains("node.toml: valid"), "{out}");
    let client = std::fs::read_to_string(xdg.join("nodectl/config.toml")).unwrap();
    assert!(client.contains("context = \"caisson\""), "{client}");
    assert!(client.contains("\"10.0.0.6\""), "{client}");

    let (ok, out) = nodectl(
        &["gen", "client", "--role", "reader", "--cn", "auditor"],
        dir.path(),
        &xdg,
    );
    assert!(ok, "{out}");
    let pem = std::fs::read_to_string(dir.path().join("auditor.crt")).unwrap();
    let der = caisson_pki::pem_to_der(&pem).unwrap();
    let id = caisson_pki::client_identity(&der).unwrap();
    assert_eq!(
        (id.common_name.as_str(), id.role),
        ("auditor", caisson_pki::Role::Reader)
    );
}

#[test]
fn validate_reports_key_path_and_position_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "version = 1\n[machine]\nhostname = 7\n",
    )
    .unwrap();
    let (ok, out) = nodectl(&["validate", "-f", "bad.toml"], dir.path(), dir.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "bad.toml:3:12: machine.hostname: invalid type: integer `7`, expected a string"
        ),
        "{out}"
    );
}

#[test]
fn unknown_role_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = nodectl(
        &["gen", "client", "--role", "root", "--cn", "x"],
        dir.path(),
        dir.path(),
    );
    assert!(!ok && out.contains("\"root\""), "{out}");
}
