//! Operating a node through its API alone, as an operator would: the built
//! `nodectl` (`$CAISSON_NODECTL_BIN`) and curl against the API port,
//! forwarded from 127.0.0.1 through QEMU's user-mode network. The node boots
//! the shared image under OVMF with no extra kernel arguments and gets its
//! address by DHCP (QEMU's 10.0.2.15).
//!
//! Each test boots one VM and walks a chain of the issue's scenarios on it;
//! the four VMs run two at a time (`--test-threads=2`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qemu_tests::nodectl::{ApiNode, CALL};
use qemu_tests::process::{run_for, Finished};
use qemu_tests::{HarnessError, VmOptions};
use serde_json::{json, Value};

type Outcome<T = ()> = std::result::Result<T, HarnessError>;

/// Boot to a reachable API: OVMF + kernel + agent + DHCP under TCG, with two
/// VMs and whatever else runs sharing two cores.
const TO_API: Duration = Duration::from_secs(240);
const NEXT_STEP: Duration = Duration::from_secs(60);
const HOSTNAME: &str = "qemu-node-1";

/// In a module so that `cargo xtask test node_api` selects these tests.
mod node_api {
    use super::*;

    /// Scenarios 1 and 2: maintenance mode → the first config with
    /// `--insecure --fingerprint` → mutual TLS; then a reboot through the
    /// API comes back with the same config, read from STATE.
    #[test]
    fn maintenance_node_takes_its_first_config_then_keeps_it_across_an_api_reboot() -> Outcome {
        let mut opts = VmOptions::new("node_api_maintenance_and_reboot");
        opts.allow_reboot = true;
        let mut node = ApiNode::start(opts)?;
        let config = hostname_config(&node, "hostname.toml", HOSTNAME)?;
        let config = config.display().to_string();

        node.vm.wait_for_line("config: no machine config", TO_API)?;
        let fp = node.wait_for_maintenance(NEXT_STEP)?;
        let insecure = ["--insecure", "--fingerprint", fp.as_str()];
        node.until_ok(&[&insecure[..], &["version"]].concat(), TO_API)?;

        // Without --insecure, or with the wrong fingerprint, nothing is sent.
        let plain = node.run(&["version"], CALL)?;
        assert!(
            !plain.success() && plain.output().contains("maintenance mode"),
            "a maintenance node must be refused without --insecure:\n{}",
            plain.output()
        );
        let wrong = format!("SHA256:{}", "0".repeat(64));
        let pinned = node.run(
            &[
                "--insecure",
                "--fingerprint",
                &wrong,
                "apply-config",
                "-f",
                &config,
            ],
            CALL,
        )?;
        assert!(
            !pinned.success() && pinned.output().contains("fingerprint mismatch"),
            "a wrong fingerprint must stop the apply:\n{}",
            pinned.output()
        );

        node.ok(&[&insecure[..], &["apply-config", "-f", &config]].concat())?;
        // The host name and the DHCP address follow: the server certificate
        // is minted for both.
        node.vm.wait_for(
            "a server certificate for the host name and 10.0.2.15",
            NEXT_STEP,
            |l| l.contains("api: serving mTLS") && l.contains(HOSTNAME) && l.contains("10.0.2.15"),
        )?;
        node.until_ok(&["version"], NEXT_STEP)?;
        assert_version(&mut node, HOSTNAME)?;
        node.ok(&["health"])?;
        let shown = node.ok(&["get", "config"])?;
        assert!(shown.contains(HOSTNAME), "get config:\n{shown}");

        // Scenario 2.
        node.ok(&["reboot"])?;
        node.vm
            .wait_for_line("shutdown: reboot requested by the API", NEXT_STEP)?;
        node.vm.wait_for_line("shutdown: rebooting", NEXT_STEP)?;
        node.vm
            .wait_for("the agent banner after the reboot", TO_API, is_banner)?;
        node.vm
            .wait_for_line("config: using the machine config from STATE", NEXT_STEP)?;
        node.vm.wait_for_line("api: serving mTLS", NEXT_STEP)?;
        node.until_ok(&["version"], TO_API)?;
        assert_version(&mut node, HOSTNAME)?;
        assert_eq!(count_lines(&mut node, is_banner), 2, "{}", node.vm.tail());
        let console = node.vm.console_text();
        let after_reboot = console
            .rsplit_once("shutdown: rebooting")
            .map_or("", |(_, after)| after);
        assert!(
            !after_reboot.contains("maintenance mode: "),
            "the node went back to maintenance mode after the reboot:\n{}",
            node.vm.tail()
        );
        assert_no_panic(&mut node);
        Ok(())
    }

    /// Scenarios 3 and 4: callers the node must refuse and configs it must
    /// reject are audited, and change nothing.
    #[test]
    fn refused_callers_and_rejected_configs_are_audited_and_change_nothing() -> Outcome {
        let mut node = configured_node("node_api_refusals_and_bad_configs")?;
        let config_before = node.ok(&["get", "config"])?;

        refuse_reader_no_certificate_and_foreign_ca(&mut node)?;
        reject_bad_configs(&mut node)?;
        let config_after = node.ok(&["get", "config"])?;
        assert_eq!(config_before, config_after, "the previous config must stay");

        let audit = node.json(&["audit", "--tail", "100"])?;
        let records = audit.as_array().cloned().unwrap_or_default();
        let found = |what: &str, endpoint: &str, cn: Option<&str>, result: &str| {
            let hit = records.iter().any(|r| {
                r["endpoint"] == endpoint
                    && cn.is_none_or(|cn| r["cn"] == cn)
                    && r["result"].as_str().is_some_and(|s| s.starts_with(result))
            });
            assert!(
                hit,
                "no audit record for {what}; the log holds:\n{}",
                serde_json::to_string_pretty(&records).unwrap_or_default()
            );
        };
        found("the reader's reboot", "reboot", Some("reader-1"), "refused");
        found(
            "the reboot without a certificate",
            "reboot",
            Some("-"),
            "refused",
        );
        found("the foreign certificate", "tls", None, "refused");
        found(
            "the rejected config",
            "config.apply",
            None,
            "error: invalid machine config",
        );

        // Nothing rebooted (with -no-reboot a reboot would also end QEMU).
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(node.vm.qmp()?.query_status()?, "running");
        assert_eq!(count_lines(&mut node, is_banner), 1, "{}", node.vm.tail());
        let shutdowns = count_lines(&mut node, |l| l.contains("shutdown: "));
        assert_eq!(shutdowns, 0, "{}", node.vm.tail());
        assert_version(&mut node, HOSTNAME)?;
        assert_no_panic(&mut node);
        Ok(())
    }

    /// Scenario 5: a network change that cuts the node off, applied in `try`
    /// mode, is undone when its timeout runs out; the node answers again.
    #[test]
    fn try_mode_network_change_that_cuts_the_node_off_is_reverted_after_its_timeout() -> Outcome {
        let mut node = configured_node("node_api_try_mode")?;
        let config_before = node.ok(&["get", "config"])?;
        // QEMU forwards the API to 10.0.2.15 only: any other address cuts us off.
        let cut_off = node.cluster.config_with(
            &node.ctl.dir().join("cut-off.toml"),
            &format!(
                "[machine]\nhostname = \"{HOSTNAME}\"\n\n\
                 [[network.interfaces]]\nname = \"eth0\"\naddresses = [\"10.0.3.15/24\"]\n"
            ),
        )?;
        let cut_off = cut_off.display().to_string();
        // The answer may never come (the address it would leave from is gone),
        // so the call runs in the background while we watch the console.
        let apply = node.ctl.stream(&[
            "apply-config",
            "-f",
            &cut_off,
            "--mode",
            "try",
            "--timeout",
            "20s",
        ])?;
        let applied = node
            .vm
            .wait_for_line("config: try mode: applied", NEXT_STEP)?;
        // Cut off: the call fails, or hangs until we give up, within the window.
        let unreachable = node.ctl.run(&["version"], Duration::from_secs(12));
        assert!(
            !matches!(&unreachable, Ok(f) if f.success()),
            "the node still answered on 10.0.2.15 inside the try window:\n{}",
            node.vm.tail()
        );
        drop(apply);

        node.vm.wait_for_line(
            "config: the try-mode apply was not confirmed in time",
            NEXT_STEP,
        )?;
        let restored = node.vm.wait_for_line(
            "config: restored the previous config (try mode timed out)",
            NEXT_STEP,
        )?;
        let window = stamp(&restored).zip(stamp(&applied)).map(|(r, a)| r - a);
        assert!(
            window.is_some_and(|w| (19.0..45.0).contains(&w)),
            "the revert should come 20 s after the apply, came after {window:?} s:\n\
             {applied}\n{restored}"
        );
        node.until_ok(&["version"], TO_API)?;
        let config_after = node.ok(&["get", "config"])?;
        assert_eq!(config_before, config_after, "the previous config is back");
        node.ok(&["health"])?;
        assert_no_panic(&mut node);
        Ok(())
    }

    /// Scenarios 6, 7 and 8: `logs -f` streams new agent lines, `dmesg`
    /// shows the kernel's, curl with the cluster's certificates reads the
    /// documented endpoints, and a shutdown through the API powers off.
    #[test]
    fn logs_stream_curl_reads_the_api_and_api_shutdown_powers_the_vm_off() -> Outcome {
        let mut node = configured_node("node_api_logs_curl_shutdown")?;

        let dmesg = node.ok(&["dmesg"])?;
        assert!(dmesg.contains("Linux version"), "dmesg:\n{dmesg}");

        // One line of history shows the follower is attached; then an apply
        // that renames the host prints new lines.
        let mut follow = node.ctl.stream(&["logs", "agent", "-f", "--tail", "1"])?;
        let attached = follow.wait_for("a first line", NEXT_STEP, |_| true);
        node.vm.context(attached)?;
        let renamed = hostname_config(&node, "renamed.toml", "qemu-node-logs")?;
        node.ok(&["apply-config", "-f", &renamed.display().to_string()])?;
        let applied = follow.wait_for_line("config: applied from the API (mode auto)", NEXT_STEP);
        node.vm.context(applied)?;
        let reissued = follow.wait_for_line("qemu-node-logs", NEXT_STEP);
        node.vm.context(reissued)?;
        assert!(follow.is_running(), "logs -f ended:\n{}", follow.output());
        drop(follow);

        curl_reads_the_documented_endpoints(&mut node, "qemu-node-logs")?;

        node.ok(&["shutdown"])?;
        node.vm
            .wait_for_line("shutdown: power-off requested by the API", NEXT_STEP)?;
        node.vm.wait_for_line("shutdown: powering off", NEXT_STEP)?;
        let status = node.vm.wait_for_exit(NEXT_STEP)?;
        assert!(
            status.success(),
            "QEMU exited with {status}:\n{}",
            node.vm.tail()
        );
        assert_no_panic(&mut node);
        Ok(())
    }
}

/// A reader may read but not reboot; a caller with no certificate gets a
/// 401; a certificate from another CA fails the handshake.
fn refuse_reader_no_certificate_and_foreign_ca(node: &mut ApiNode) -> Outcome {
    let dir = node.ctl.dir().to_path_buf();
    node.ok(&[
        "gen",
        "client",
        "--role",
        "reader",
        "--cn",
        "reader-1",
        "--secrets",
        "secrets",
        "--out",
        ".",
    ])?;
    let reader_config = reader_client_config(node, &dir)?;
    let reader = ["--nodectlconfig", reader_config.as_str()];
    let version = node.ok(&[&reader[..], &["version"]].concat())?;
    assert!(
        version.contains(HOSTNAME),
        "a reader may call version:\n{version}"
    );
    let refused = node.run(&[&reader[..], &["reboot"]].concat(), CALL)?;
    assert!(
        !refused.success() && refused.output().contains("role reader may not call reboot"),
        "a reader must be refused reboot:\n{}",
        refused.output()
    );

    let (no_cert, code) = curl(node, &[], "POST", "/v1/reboot")?;
    assert_eq!(code, 401, "no client certificate:\n{}", no_cert.output());

    node.ok(&["gen", "secrets", "--out", "other-ca"])?;
    let cert = dir.join("other-ca/admin.crt").display().to_string();
    let key = dir.join("other-ca/admin.key").display().to_string();
    let (foreign, code) = curl(
        node,
        &["--cert", &cert, "--key", &key],
        "POST",
        "/v1/reboot",
    )?;
    assert!(
        !foreign.success() && code == 0,
        "a certificate from another CA must fail the handshake (HTTP {code}):\n{}",
        foreign.output()
    );
    Ok(())
}

/// Configs that do not parse, or parse but cannot apply, are rejected with
/// the key path: by nodectl before sending, and by the node for clients
/// that do not check.
fn reject_bad_configs(node: &mut ApiNode) -> Outcome {
    let dir = node.ctl.dir().to_path_buf();
    let write = |name: &str, extra: &str| node.cluster.config_with(&dir.join(name), extra);
    let syntax = write(
        "syntax.toml",
        "[kernel]\nsysctls = { \"vm.swappiness\" = }\n",
    )?;
    let shape = write(
        "shape.toml",
        "[kernel]\nsysctls = { \"vm.swappiness\" = [1, 2] }\n",
    )?;
    let address = write(
        "address.toml",
        "[[network.interfaces]]\nname = \"eth0\"\naddresses = [\"10.0.2.300/24\"]\n",
    )?;
    let sysctl = write(
        "sysctl.toml",
        &format!(
            "[machine]\nhostname = \"{HOSTNAME}\"\n\n\
             [kernel]\nsysctls = {{ \"net.ipv4.caisson_no_such_knob\" = 1 }}\n"
        ),
    )?;

    // nodectl: a syntax error with its position, the others with key paths;
    // the unknown sysctl only the node can know about.
    let rejected = node.run(&["apply-config", "-f", &syntax.display().to_string()], CALL)?;
    assert!(
        !rejected.success() && has_position(&rejected.output(), "syntax.toml"),
        "apply-config of a TOML syntax error must fail with file:line:col:\n{}",
        rejected.output()
    );
    for (file, expected) in [
        (&shape, "kernel.sysctls.vm.swappiness"),
        (&address, "network.interfaces[0].addresses[0]"),
        (
            &sysctl,
            "kernel.sysctls.\"net.ipv4.caisson_no_such_knob\": no such sysctl",
        ),
    ] {
        let rejected = node.run(&["apply-config", "-f", &file.display().to_string()], CALL)?;
        assert!(
            !rejected.success() && rejected.output().contains(expected),
            "apply-config of {} must fail naming {expected:?}:\n{}",
            file.display(),
            rejected.output()
        );
    }

    // The node itself, without nodectl's check in front of it.
    for (file, expected) in [
        (&shape, "kernel.sysctls"),
        (&address, "network.interfaces[0].addresses[0]"),
    ] {
        let text = std::fs::read_to_string(file).map_err(HarnessError::io("cannot read", file))?;
        let body = dir.join("request.json");
        std::fs::write(&body, json!({ "config": text }).to_string())
            .map_err(HarnessError::io("cannot write", &body))?;
        let (answer, code) = admin_curl(node, "POST", "/v1/config", Some(&body))?;
        let error = body_json(&answer)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            code == 422 && error.contains(expected),
            "POST /v1/config of {} must get 422 naming {expected:?}, got HTTP {code}:\n{}",
            file.display(),
            answer.output()
        );
    }
    Ok(())
}

/// `<file>:<line>:<col>:` somewhere in `text`.
fn has_position(text: &str, file: &str) -> bool {
    text.split(&format!("{file}:")).skip(1).any(|rest| {
        let mut parts = rest.splitn(3, ':');
        let mut number = || {
            parts
                .next()
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        number() && number() && parts.next().is_some()
    })
}

/// GET /v1/version, /v1/health, /v1/services and /v1/config with curl.
fn curl_reads_the_documented_endpoints(node: &mut ApiNode, hostname: &str) -> Outcome {
    let (answer, code) = admin_curl(node, "GET", "/v1/version", None)?;
    let version = body_json(&answer);
    assert_eq!(code, 200, "{}", answer.output());
    assert_eq!(version["hostname"], hostname, "{version}");
    assert_eq!(version["slot"], "a", "{version}");
    assert!(
        version["kernel"].as_str().is_some_and(|k| !k.is_empty()),
        "{version}"
    );

    let (answer, code) = admin_curl(node, "GET", "/v1/health", None)?;
    let health = body_json(&answer);
    assert_eq!(code, 200, "{}", answer.output());
    assert_eq!(health["ready"], true, "{health}");

    let (answer, code) = admin_curl(node, "GET", "/v1/services", None)?;
    assert_eq!(code, 200, "{}", answer.output());
    assert!(body_json(&answer).is_array(), "{}", answer.output());

    // Config reads are redacted: the CA key never leaves the node.
    let key_file = node.cluster.secrets.join("ca.key");
    let ca_key =
        std::fs::read_to_string(&key_file).map_err(HarnessError::io("cannot read", &key_file))?;
    let key_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let (answer, code) = admin_curl(node, "GET", "/v1/config", None)?;
    assert_eq!(code, 200, "{}", answer.output());
    assert!(
        answer.stdout.contains(hostname)
            && !answer.stdout.contains(&key_body[..key_body.len().min(32)]),
        "GET /v1/config must show the config with the CA key masked:\n{}",
        answer.stdout
    );
    Ok(())
}

/// A node booted with no config and configured through the maintenance
/// path with a config that names it [`HOSTNAME`].
fn configured_node(name: &str) -> Outcome<ApiNode> {
    let mut node = ApiNode::start(VmOptions::new(name))?;
    let config = hostname_config(&node, "hostname.toml", HOSTNAME)?;
    node.apply_first_config(&config, TO_API)?;
    Ok(node)
}

/// The generated machine config with `[machine] hostname`, as `file`.
fn hostname_config(node: &ApiNode, file: &str, hostname: &str) -> Outcome<PathBuf> {
    node.cluster.config_with(
        &node.ctl.dir().join(file),
        &format!("[machine]\nhostname = \"{hostname}\"\n"),
    )
}

fn assert_version(node: &mut ApiNode, hostname: &str) -> Outcome {
    let version = node.json(&["version"])?;
    assert_eq!(version["hostname"], hostname, "{version}");
    assert_eq!(version["maintenance"], false, "{version}");
    Ok(())
}

fn is_banner(line: &str) -> bool {
    line.contains("node-agent ") && line.contains(" running as PID 1")
}

fn count_lines(node: &mut ApiNode, pred: impl Fn(&str) -> bool) -> usize {
    node.vm.console_text().lines().filter(|l| pred(l)).count()
}

/// The `[ 12.345]` stamp (seconds since boot) of an agent line.
fn stamp(line: &str) -> Option<f64> {
    let inner = line.split_once('[')?.1.split_once(']')?.0;
    inner.trim().parse().ok()
}

fn assert_no_panic(node: &mut ApiNode) {
    let console = node.vm.console_text();
    assert!(
        !console.contains("Kernel panic"),
        "the console shows a kernel panic:\n{}",
        node.vm.tail()
    );
}

/// curl against the node's API trusting the cluster CA, plus `extra`.
/// Returns the run and the HTTP status (0: no HTTP answer).
fn curl(node: &mut ApiNode, extra: &[&str], method: &str, path: &str) -> Outcome<(Finished, u16)> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "60",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .arg("--cacert")
    .arg(node.cluster.ca_cert())
    .args(extra)
    .arg(node.url(path));
    let finished = run_for(&mut cmd, CALL + Duration::from_secs(10));
    let finished = node.vm.context(finished)?;
    let code = finished
        .stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    Ok((finished, code))
}

/// curl with the cluster's admin certificate; `body` is sent as JSON.
fn admin_curl(
    node: &mut ApiNode,
    method: &str,
    path: &str,
    body: Option<&Path>,
) -> Outcome<(Finished, u16)> {
    let cert = node.cluster.admin_cert().display().to_string();
    let key = node.cluster.admin_key().display().to_string();
    let mut extra = vec!["--cert".to_string(), cert, "--key".to_string(), key];
    if let Some(body) = body {
        extra.extend([
            "-H".to_string(),
            "Content-Type: application/json".to_string(),
            "--data-binary".to_string(),
            format!("@{}", body.display()),
        ]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    curl(node, &extra, method, path)
}

/// The JSON body curl printed before the status line.
fn body_json(finished: &Finished) -> Value {
    let body = finished
        .stdout
        .rsplit_once('\n')
        .map_or("", |(body, _)| body);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A client config whose one context holds the reader's certificate.
fn reader_client_config(node: &ApiNode, dir: &Path) -> Outcome<String> {
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).map_err(HarnessError::io("cannot read", &p));
    let text = format!(
        r#"context = "reader"

[contexts.reader]
endpoints = ["{endpoint}"]
nodes = []
ca = """
{ca}"""
cert = """
{cert}"""
key = """
{key}"""
"#,
        endpoint = node.ctl.endpoint(),
        ca = read(node.cluster.ca_cert())?,
        cert = read(dir.join("reader-1.crt"))?,
        key = read(dir.join("reader-1.key"))?,
    );
    let path = dir.join("reader.toml");
    std::fs::write(&path, text).map_err(HarnessError::io("cannot write", &path))?;
    Ok(path.display().to_string())
}
