//! A/B upgrades under the real boot chain (OVMF with a per-VM variable
//! store, systemd-boot's boot counting, init's dm-verity, the agent's
//! health gates), driven with nodectl:
//!
//! - v1 → v2 → v3 (slot b, then slot a again), each blessed; a manual
//!   rollback; every slot the agent wrote passes `veritysetup verify`.
//! - Bad bundles (flipped payload byte, bad signature, unsigned, truncated)
//!   are refused and leave the inactive slot without an entry.
//! - Power cuts at three points of an upgrade fetched from a mirror the
//!   test controls: the node boots v1 each time; the retried upgrade works.
//! - A corrupted slot fails verity before PID 1; its tries run out and v1
//!   boots again by itself, reporting the slot bad.
//!
//! The bundles are built by the release image-builder from the test
//! image's own spec and artifacts, with `--version`, signed with a key made
//! here; once per test binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use qemu_tests::nodectl::ApiNode;
use qemu_tests::{disk, env, tools, HarnessError, VmOptions};
use serde_json::Value;

type Outcome<T = ()> = std::result::Result<T, HarnessError>;

const TO_API: Duration = Duration::from_secs(300);
/// An upload of a ~60 MB bundle and its write, under TCG.
const UPGRADE: Duration = Duration::from_secs(600);
/// Reboot, health gates, blessing.
const TO_BLESSED: Duration = Duration::from_secs(420);
const HEALTH_TIMEOUT_SECS: u32 = 90;

struct Bundles {
    dir: PathBuf,
    public_pem: String,
    v2: PathBuf,
    v3: PathBuf,
}

fn build(dir: &Path, version: &str, key: &Path) -> Outcome<PathBuf> {
    let out = dir.join(version);
    let mut cmd = Command::new(env::input(env::BUILDER_BIN)?);
    cmd.arg("build")
        .arg(env::input(env::SPEC)?)
        .arg("--out")
        .arg(&out)
        .args(["--version", version])
        .arg("--signing-key")
        .arg(key)
        .arg("--init")
        .arg(env::input(env::INIT_BIN)?)
        .arg("--agent")
        .arg(env::input(env::AGENT_BIN)?)
        .arg("--artifacts")
        .arg(env::input(env::ARTIFACTS_DIR)?)
        .arg("--lock")
        .arg(env::input(env::LOCK)?);
    tools::run(&mut cmd)?;
    // The raw image is not needed: the bundle is what nodes get.
    let _ = std::fs::remove_file(out.join(format!("caisson-{version}.raw")));
    Ok(out.join(format!("caisson-{version}.bundle")))
}

fn make_bundles() -> Outcome<Bundles> {
    let dir = env::fresh_dir("upgrade.bundles")?;
    let prefix = dir.join("signing");
    tools::run(
        Command::new(env::input(env::BUILDER_BIN)?)
            .arg("keygen")
            .arg("--out")
            .arg(&prefix),
    )?;
    let key = prefix.with_extension("key");
    let public_pem = std::fs::read_to_string(prefix.with_extension("pub"))
        .map_err(HarnessError::io("cannot read", prefix.with_extension("pub")))?;
    let v2 = build(&dir, "0.2.0", &key)?;
    let v3 = build(&dir, "0.3.0", &key)?;
    Ok(Bundles {
        dir,
        public_pem,
        v2,
        v3,
    })
}

fn bundles() -> &'static Bundles {
    static BUNDLES: OnceLock<Result<Bundles, String>> = OnceLock::new();
    match BUNDLES.get_or_init(|| make_bundles().map_err(|e| e.to_string())) {
        Ok(b) => b,
        Err(e) => panic!("building the v2/v3 bundles: {e}"),
    }
}

/// The bundle's manifest (JSON) and where its artifacts start.
fn manifest(bundle: &[u8]) -> (Value, usize) {
    let len = u32::from_le_bytes(bundle[16..20].try_into().unwrap()) as usize;
    let manifest: Value = serde_json::from_slice(&bundle[20..20 + len]).unwrap();
    let sigs = u32::from_le_bytes(bundle[20 + len..24 + len].try_into().unwrap()) as usize;
    (manifest, 24 + len + sigs)
}

/// A node with the test's signing key trusted, booted and configured.
fn node(name: &str, health_timeout_secs: u32) -> Outcome<ApiNode> {
    node_with(name, health_timeout_secs, "")
}

/// Like [`node`], with `extra` TOML in its config.
fn node_with(name: &str, health_timeout_secs: u32, extra: &str) -> Outcome<ApiNode> {
    let b = bundles();
    let mut opts = VmOptions::new(name);
    opts.allow_reboot = true;
    let mut node = ApiNode::start(opts)?;
    let config = node.cluster.config_with(
        &node.ctl.dir().join("node.toml"),
        &format!(
            "[upgrade]\ntrusted_keys = [{:?}]\nhealth_timeout_secs = {health_timeout_secs}\n{extra}",
            b.public_pem
        ),
    )?;
    node.apply_first_config(&config, TO_API)?;
    Ok(node)
}

/// `nodectl version`, retried for a while: the API listener restarts once
/// when DHCP hands out the address after boot, and a call can meet that.
fn version(node: &mut ApiNode) -> Outcome<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match node.json(&["version"]) {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                eprintln!("version: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

fn slot<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot"] == name))
        .unwrap_or(&Value::Null)
}

/// Wait for the node to come back on `slot` at `image_version` and answer.
fn back_on(node: &mut ApiNode, slot_name: &str, image_version: &str) -> Outcome<Value> {
    node.vm.wait_for_line(
        &format!("running as PID 1 (slot {slot_name})"),
        TO_BLESSED,
    )?;
    node.until_ok(&["version"], TO_API)?;
    node.vm.wait_for_line("upgrade: boot entries read", TO_API)?;
    let v = version(node)?;
    assert_eq!(
        (v["slot"].as_str(), v["image_version"].as_str()),
        (Some(slot_name), Some(image_version)),
        "{v}"
    );
    Ok(v)
}

fn assert_refused(node: &mut ApiNode, bundle: &Path, needle: &str) -> Outcome {
    let file = bundle.display().to_string();
    let r = node.run(&["upgrade", "--bundle", &file], UPGRADE)?;
    assert!(
        !r.success() && r.output().contains(needle),
        "{} must be refused with {needle:?}:\n{}",
        bundle.display(),
        r.output()
    );
    let v = version(node)?;
    assert_eq!(slot(&v, "b")["state"], "empty", "after {}: {v}", bundle.display());
    assert!(slot(&v, "b")["entry"].is_null(), "{v}");
    Ok(())
}

fn veritysetup_verify(image: &Path, label: &str, manifest: &Value, dir: &Path) -> Outcome {
    let part = disk::partition(image, label)?;
    let data = disk::extract(image, &part, &dir.join(format!("{label}.img")))?;
    let verity = &manifest["verity"];
    let offset = verity["hash_offset"].as_u64().unwrap_or(0);
    let out = tools::run(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&data)
            .arg(&data)
            .arg(verity["root_hash"].as_str().unwrap_or(""))
            .arg(format!("--hash-offset={offset}"))
            .arg(format!("--salt={}", verity["salt"].as_str().unwrap_or(""))),
    );
    let _ = std::fs::remove_file(&data);
    out.map(drop)
}

mod upgrade {
    use super::*;

    #[test]
    fn v1_to_v2_to_v3_each_blessed_then_rolled_back_and_bad_bundles_are_refused() -> Outcome {
        let b = bundles();
        let mut node = node("upgrade_happy", HEALTH_TIMEOUT_SECS)?;
        let v = version(&mut node)?;
        assert_eq!(
            (slot(&v, "a")["state"].as_str(), slot(&v, "b")["state"].as_str()),
            (Some("running"), Some("empty")),
            "{v}"
        );

        // Bad bundles first: none may leave slot b an entry.
        let good = std::fs::read(&b.v2).map_err(HarnessError::io("cannot read", &b.v2))?;
        let (m2, start) = manifest(&good);
        let write = |name: &str, bytes: &[u8]| -> Outcome<PathBuf> {
            let p = b.dir.join(name);
            std::fs::write(&p, bytes).map_err(HarnessError::io("cannot write", &p))?;
            Ok(p)
        };
        let mut flipped = good.clone();
        flipped[start + 123_457] ^= 0x10;
        let flipped = write("flipped-root.bundle", &flipped)?;
        assert_refused(&mut node, &flipped, "root artifact")?;
        let mut bad_sig = good.clone();
        let sig_at = start - 10;
        bad_sig[sig_at] = if bad_sig[sig_at] == b'0' { b'1' } else { b'0' };
        let bad_sig = write("bad-signature.bundle", &bad_sig)?;
        assert_refused(&mut node, &bad_sig, "signature")?;
        let manifest_len = u32::from_le_bytes(good[16..20].try_into().unwrap()) as usize;
        let empty = br#"{"signatures":[]}"#;
        let mut unsigned = good[..20 + manifest_len].to_vec();
        unsigned.extend_from_slice(&(empty.len() as u32).to_le_bytes());
        unsigned.extend_from_slice(empty);
        let body_and_trailer = &good[start..];
        let body_len = body_and_trailer.len() - 32;
        unsigned.extend_from_slice(&body_and_trailer[..body_len]);
        unsigned.extend_from_slice(&body_and_trailer[body_len..body_len + 24]);
        unsigned.extend_from_slice(&((unsigned.len() - 24) as u64).to_le_bytes());
        let unsigned = write("unsigned.bundle", &unsigned)?;
        assert_refused(&mut node, &unsigned, "allow_unsigned")?;
        let truncated = write("truncated.bundle", &good[..good.len() / 2])?;
        assert_refused(&mut node, &truncated, "truncated")?;

        // v1 -> v2 into slot b.
        let started = Instant::now();
        let file = b.v2.display().to_string();
        // --measure-disk: the agent also times a scratch write on DATA, so
        // the slot's write speed can be set against the disk's own.
        let said = node.json(&["upgrade", "--bundle", &file, "--measure-disk"])?;
        assert_eq!(said["slot"], "b", "{said}");
        assert!(said["disk_write_mb_s"].as_f64().is_some(), "{said}");
        back_on(&mut node, "b", "0.2.0")?;
        let answered = started.elapsed();
        eprintln!(
            "bench: root stream {:.1} MB/s; slot write path {:.1} MB/s vs the disk's own {:.1} MB/s; agent peak RSS {} KiB; {} bytes in {:.1} s",
            said["root_write_mb_s"].as_f64().unwrap_or(0.0),
            said["root_write_busy_mb_s"].as_f64().unwrap_or(0.0),
            said["disk_write_mb_s"].as_f64().unwrap_or(0.0),
            said["agent_peak_rss_kib"].as_u64().unwrap_or(0),
            said["bytes"].as_u64().unwrap_or(0),
            said["seconds"].as_f64().unwrap_or(0.0),
        );
        node.vm.wait_for_line("slot b blessed", TO_BLESSED)?;
        let v = version(&mut node)?;
        assert_eq!(slot(&v, "a")["state"], "known-good", "{v}");
        assert_eq!(slot(&v, "a")["version"], "0.1.0", "{v}");
        assert_eq!(v["last_upgrade"]["outcome"], "blessed", "{v}");
        eprintln!("bench: nodectl upgrade to v2 answering nodectl version: {:.1} s", answered.as_secs_f64());

        // v2 -> v3 reuses slot a.
        let file = b.v3.display().to_string();
        node.ok(&["upgrade", "--bundle", &file])?;
        back_on(&mut node, "a", "0.3.0")?;
        node.vm.wait_for_line("slot a blessed", TO_BLESSED)?;
        let v = version(&mut node)?;
        assert_eq!(
            (slot(&v, "b")["state"].as_str(), slot(&v, "b")["version"].as_str()),
            (Some("known-good"), Some("0.2.0")),
            "{v}"
        );

        // Manual rollback to v2, audited.
        let said = node.ok(&["rollback"])?;
        assert!(said.contains("slot b (0.2.0) boots next"), "{said}");
        let v = back_on(&mut node, "b", "0.2.0")?;
        assert_eq!(slot(&v, "a")["state"], "bad", "{v}");
        assert!(
            slot(&v, "a")["note"].as_str().unwrap_or_default().contains("rolled back from by"),
            "{v}"
        );
        let audit = node.ok(&["audit", "-o", "json"])?;
        assert!(
            audit.contains("\"endpoint\":\"rollback\"") && audit.contains("\"endpoint\":\"upgrade\""),
            "{audit}"
        );

        // Both slots the agent wrote pass the independent check.
        node.vm.power_button()?;
        node.vm.wait_for_exit(Duration::from_secs(120))?;
        let raw = node.vm.dir().join("disk.raw");
        tools::run(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(node.vm.overlay())
                .arg(&raw),
        )?;
        let v3 = std::fs::read(&b.v3).map_err(HarnessError::io("cannot read", &b.v3))?;
        veritysetup_verify(&raw, "ROOT-B", &m2, node.vm.dir())?;
        veritysetup_verify(&raw, "ROOT-A", &manifest(&v3).0, node.vm.dir())?;
        let _ = std::fs::remove_file(&raw);
        Ok(())
    }

    #[test]
    fn power_cuts_during_an_upgrade_leave_v1_booting_and_the_retry_succeeds() -> Outcome {
        let b = bundles();
        let bundle = Arc::new(std::fs::read(&b.v2).map_err(HarnessError::io("cannot read", &b.v2))?);
        let (m, start) = manifest(&bundle);
        let root = m["artifacts"][0]["size"].as_u64().unwrap_or(0) as usize;
        let mirror = Mirror::start(bundle.clone())?;
        let mut node = node("upgrade_power_cut", HEALTH_TIMEOUT_SECS)?;
        let url = format!("http://10.0.2.2:{}/caisson-0.2.0.bundle", mirror.port);
        // (bytes served before the mirror stalls, the console line to cut at)
        let cuts = [
            (start + (4 << 20), "bundle 0.2.0 verified"),
            (start + root + 4096, "root written and synced"),
            (bundle.len() - 32, "kernel and initrd written and synced"),
        ];
        for (stall_at, line) in cuts {
            mirror.stall_at(Some(stall_at));
            // nodectl runs in the background (the node never answers: its
            // power is cut). A call that meets the API's one restart after
            // DHCP fails at once; then it is started again.
            let mut attempts = 0;
            let waited = loop {
                attempts += 1;
                let mut child = node
                    .ctl
                    .command(&["upgrade", "--url", &url])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|source| HarnessError::Spawn { program: "nodectl".into(), source })?;
                let deadline = Instant::now() + UPGRADE;
                let seen = loop {
                    match node.vm.wait_for_line(line, Duration::from_secs(2)) {
                        Ok(l) => break Ok(Some(l)),
                        Err(HarnessError::Timeout { .. }) if Instant::now() < deadline => {
                            if let Ok(Some(status)) = child.try_wait() {
                                if !status.success() && attempts < 5 {
                                    break Ok(None);
                                }
                            }
                        }
                        Err(e) => break Err(e),
                    }
                };
                match seen {
                    Ok(None) => continue,
                    Ok(Some(l)) => {
                        node.vm.power_cut()?;
                        let _ = child.kill();
                        let _ = child.wait();
                        break Ok(l);
                    }
                    Err(e) => {
                        node.vm.power_cut()?;
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(e);
                    }
                }
            };
            waited?;
            node.vm.power_on()?;
            let v = back_on(&mut node, "a", "0.1.0")?;
            assert_eq!(slot(&v, "b")["state"], "empty", "after a cut at {line:?}: {v}");
            assert!(
                v["last_upgrade"]["outcome"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("failed: the node restarted"),
                "after a cut at {line:?}: {v}"
            );
        }
        mirror.stall_at(None);
        let said = node.ok(&["upgrade", "--url", &url])?;
        assert!(said.contains("slot b written"), "{said}");
        back_on(&mut node, "b", "0.2.0")?;
        node.vm.wait_for_line("slot b blessed", TO_BLESSED)?;
        Ok(())
    }

    #[test]
    fn a_corrupted_slot_fails_verity_before_pid_1_and_the_counter_brings_v1_back() -> Outcome {
        let b = bundles();
        let mut node = node("upgrade_corrupt", HEALTH_TIMEOUT_SECS)?;
        let file = b.v2.display().to_string();
        let said = node.ok(&["upgrade", "--bundle", &file, "--stage"])?;
        assert!(said.contains("staged"), "{said}");
        node.vm.power_button()?;
        node.vm.wait_for_exit(Duration::from_secs(120))?;
        // Overwrite ROOT-B's first blocks in the VM's disk: the squashfs
        // superblock, which mounting reads first.
        let root_b = disk::partition(&env::test_image()?, "ROOT-B")?;
        tools::run(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c"])
                .arg(format!("write -P 0x5a {} 65536", root_b.offset()))
                .arg(node.vm.overlay()),
        )?;
        node.vm.power_on()?;
        let v = back_on(&mut node, "a", "0.1.0")?;
        // systemd-boot tried slot b three times (+3), init refused each.
        let fatal = node
            .vm
            .console_text()
            .lines()
            .filter(|l| l.contains("caisson-init: FATAL"))
            .count();
        assert_eq!(fatal, 3, "init's FATAL lines for slot b:\n{}", node.vm.tail());
        assert_eq!(slot(&v, "b")["state"], "bad", "{v}");
        assert!(
            v["last_upgrade"]["outcome"].as_str().unwrap_or_default().starts_with("rolled-back"),
            "{v}"
        );
        assert_eq!(node.vm.console_text().matches("running as PID 1 (slot b)").count(), 0);
        Ok(())
    }
}

mod upgrade_gates {
    use super::*;

    /// A configured system container whose image does not exist fails at
    /// once, so "every service healthy" never holds: a slot on trial is
    /// never blessed. v1 is already known good and runs on regardless.
    #[test]
    fn a_v2_that_cannot_pass_its_health_gates_rolls_back_by_itself() -> Outcome {
        let b = bundles();
        let broken = "[[containers]]\nname = \"broken\"\nimage = \"localhost/caisson-test/missing:1\"\n";
        let mut node = node_with("upgrade_gate", 20, broken)?;
        let file = b.v2.display().to_string();
        let started = Instant::now();
        node.ok(&["upgrade", "--bundle", &file])?;
        for try_number in 1..=3 {
            node.vm.wait_for_line("running as PID 1 (slot b)", TO_BLESSED)?;
            let failed = node.vm.wait_for_line("health gates failed", TO_BLESSED)?;
            assert!(failed.contains("service broken"), "try {try_number}: {failed}");
        }
        let v = back_on(&mut node, "a", "0.1.0")?;
        eprintln!("bench: gate failure to v1 answering again: {:.0} s", started.elapsed().as_secs_f64());
        assert_eq!(slot(&v, "b")["state"], "bad", "{v}");
        assert!(
            v["last_upgrade"]["outcome"].as_str().unwrap_or_default().starts_with("rolled-back"),
            "{v}"
        );
        assert!(!node.vm.console_text().contains("slot b blessed"));
        Ok(())
    }
}

/// An HTTP mirror on the host (the guest reaches it at 10.0.2.2) serving
/// one bundle, which can be told to stop sending after N bytes and hold the
/// connection open: a download cut off at a point the test chooses.
struct Mirror {
    port: u16,
    stall: Arc<Mutex<Option<usize>>>,
}

impl Mirror {
    fn start(bundle: Arc<Vec<u8>>) -> Outcome<Mirror> {
        let listener = TcpListener::bind("0.0.0.0:0").map_err(HarnessError::io("cannot bind", "0.0.0.0:0"))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let stall: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));
        let stall2 = stall.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let bundle = bundle.clone();
                let stall = *stall2.lock().unwrap();
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                        line.clear();
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
                        bundle.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let end = stall.unwrap_or(bundle.len()).min(bundle.len());
                    if conn.write_all(&bundle[..end]).is_err() {
                        return;
                    }
                    if stall.is_some() {
                        // Hold the connection until the other side goes away.
                        let mut sink = [0u8; 64];
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(900)));
                        let _ = conn.read(&mut sink);
                    }
                });
            }
        });
        Ok(Mirror { port, stall })
    }

    fn stall_at(&self, at: Option<usize>) {
        *self.stall.lock().unwrap() = at;
    }
}
