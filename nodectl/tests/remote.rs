//! nodectl against the real caisson-api server over real TLS on loopback.
//! The node behind the server is a test double that counts what it was asked
//! to do, so the tests also prove that refused calls change nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use caisson_api::audit::AuditLog;
use caisson_api::server::{self, LogLines, NodeOps};
use caisson_api::types::*;
use caisson_api::{ApiError, Mode};
use caisson_config::MachineConfig;
use caisson_pki::{Ca, CertKey, Role};
use tokio::sync::{mpsc, watch};

struct FakeNode {
    maintenance: bool,
    config: Mutex<Option<MachineConfig>>,
    reboots: AtomicU32,
    applies: AtomicU32,
    dry_runs: AtomicU32,
    resets: AtomicU32,
    /// Bytes of the last uploaded bundle.
    uploaded: Mutex<Option<u64>>,
}

impl NodeOps for FakeNode {
    fn version(&self) -> VersionInfo {
        VersionInfo {
            image_version: "0.1.0".into(),
            agent_version: "0.1.0".into(),
            slot: "a".into(),
            kernel: "6.1.0-test".into(),
            hostname: "node-1".into(),
            maintenance: self.maintenance,
            live: false,
            slots: vec![
                SlotInfo { slot: "a".into(), version: Some("0.1.0".into()), state: "running".into(), running: true, tries_left: None, entry: Some("caisson-0.1.0-a.conf".into()), note: None },
                SlotInfo { slot: "b".into(), version: Some("0.2.0".into()), state: "trying".into(), running: false, tries_left: Some(3), entry: Some("caisson-0.2.0-b+3.conf".into()), note: None },
            ],
            last_upgrade: None,
        }
    }
    async fn health(&self) -> Health {
        Health {
            ready: true,
            checks: vec![],
        }
    }
    fn config_redacted(&self) -> Option<String> {
        self.config
            .lock()
            .unwrap()
            .as_ref()
            .map(caisson_config::redact::redacted_toml)
    }
    async fn apply_config(&self, req: ApplyRequest) -> Result<ApplyResponse, ApiError> {
        let new = caisson_config::parse("request", &req.config)
            .map_err(|e| ApiError::InvalidConfig(e.to_string()))?;
        let mut current = self.config.lock().unwrap();
        let changes = match current.as_ref() {
            Some(old) => caisson_config::redact::diff(old, &new)
                .into_iter()
                .map(|c| ConfigChange {
                    path: c.path,
                    old: c.old,
                    new: c.new,
                })
                .collect(),
            None => vec![],
        };
        if req.dry_run {
            self.dry_runs.fetch_add(1, Ordering::SeqCst);
        } else {
            self.applies.fetch_add(1, Ordering::SeqCst);
            *current = Some(new);
        }
        Ok(ApplyResponse {
            changes,
            applied: if req.dry_run {
                vec![]
            } else {
                vec!["hostname".into()]
            },
            needs_reboot: vec![],
            dry_run: req.dry_run,
            confirm_within_secs: None,
        })
    }
    async fn confirm_config(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn services(&self) -> Vec<ServiceStatus> {
        vec![]
    }
    async fn restart_service(&self, name: &str) -> Result<(), ApiError> {
        Err(ApiError::NotFound(format!("service {name:?}")))
    }
    fn logs(&self, source: &str, _tail: usize, follow: bool) -> Result<LogLines, ApiError> {
        if source != "agent" {
            return Err(ApiError::NotFound(format!("log source {source:?}")));
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            for i in 0.. {
                if tx.send(format!("line {i}")).await.is_err() || (!follow && i == 2) {
                    break;
                }
                if follow {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Ok(rx)
    }
    fn reboot(&self) -> Result<(), ApiError> {
        self.reboots.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn reset(&self) -> Result<(), ApiError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn upgrade(&self, source: server::UpgradeSource, options: server::UpgradeOptions, _by: String) -> Result<UpgradeResponse, ApiError> {
        use tokio::io::AsyncReadExt;
        let server::UpgradeSource::Upload(mut body) = source else {
            return Err(ApiError::BadRequest("upgrade URL http://x/: connect: refused".into()));
        };
        let mut n = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            let got = body.read(&mut buf).await.map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if got == 0 {
                break;
            }
            n += got as u64;
        }
        *self.uploaded.lock().unwrap() = Some(n);
        Ok(UpgradeResponse {
            from_version: "0.1.0".into(),
            version: "0.2.0".into(),
            slot: "b".into(),
            entry: "caisson-0.2.0-b+3.conf".into(),
            signed_by: Some("0123456789abcdef".into()),
            bytes: n,
            seconds: 1.5,
            root_write_mb_s: 50.0,
            root_write_busy_mb_s: 0.0,
            disk_write_mb_s: None,
            agent_peak_rss_kib: None,
            staged: options.stage,
            rebooting: !options.stage,
        })
    }
    fn kubeconfig(&self) -> Result<String, ApiError> {
        Ok("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://127.0.0.1:6443\n  name: default\nkind: Config\n".into())
    }
    async fn rollback(&self, req: RollbackRequest, _by: String) -> Result<RollbackResponse, ApiError> {
        Ok(RollbackResponse { from_version: "0.2.0".into(), slot: "a".into(), version: "0.1.0".into(), rebooting: req.reboot })
    }
}

/// A cluster's PKI on disk: the CA, a client per role, and a client from
/// another CA ("stranger").
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_pair: CertKey,
    clients: Vec<(String, CertKey)>,
}

fn pki() -> Pki {
    let ca_pair = caisson_pki::generate_ca("test").unwrap();
    let ca = Ca::from_pem(&ca_pair.cert_pem, &ca_pair.key_pem).unwrap();
    let mut clients: Vec<(String, CertKey)> = Role::ALL
        .iter()
        .map(|r| {
            (
                r.as_str().to_string(),
                ca.issue_client(r.as_str(), *r, 1).unwrap(),
            )
        })
        .collect();
    let other_pair = caisson_pki::generate_ca("other").unwrap();
    let other = Ca::from_pem(&other_pair.cert_pem, &other_pair.key_pem).unwrap();
    clients.push((
        "stranger".into(),
        other.issue_client("mallory", Role::Admin, 1).unwrap(),
    ));
    clients.push(("other-ca".into(), other_pair));
    Pki {
        dir: tempfile::tempdir().unwrap(),
        ca,
        ca_pair,
        clients,
    }
}

impl Pki {
    fn pair(&self, who: &str) -> &CertKey {
        &self.clients.iter().find(|(n, _)| n == who).unwrap().1
    }

    /// A client config whose one context presents `who`'s certificate and
    /// trusts `ca` ("test" or "other-ca").
    fn client_config(&self, who: &str, ca: &str, endpoints: &[String]) -> PathBuf {
        let ca_pem = if ca == "test" {
            &self.ca_pair.cert_pem
        } else {
            &self.pair(ca).cert_pem
        };
        let c = self.pair(who);
        let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let text = format!(
            "context = \"t\"\n[contexts.t]\nendpoints = [{}]\nca = '''\n{ca_pem}'''\ncert = '''\n{}'''\nkey = '''\n{}'''\n",
            eps.join(", "),
            c.cert_pem,
            c.key_pem
        );
        let path = self.dir.path().join(format!("{who}-{ca}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A valid machine config for this cluster.
    fn machine_config(&self, hostname: &str) -> String {
        format!(
            "version = 1\n[machine]\nhostname = \"{hostname}\"\n[api]\nca_cert = '''\n{}'''\nca_key = '''\n{}'''\n",
            self.ca_pair.cert_pem, self.ca_pair.key_pem
        )
    }
}

struct Server {
    port: u16,
    node: Arc<FakeNode>,
    /// For a maintenance server: the fingerprint its console would show.
    fingerprint: String,
    stop: watch::Sender<bool>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn serve(pki: &Pki, mode: Mode) -> Server {
    let audit = Arc::new(AuditLog::new(
        pki.dir
            .path()
            .join(format!("audit-{}.jsonl", rand_suffix())),
    ));
    let (tls, fingerprint, config) = match mode {
        Mode::Normal => {
            let s = pki
                .ca
                .issue_server("localhost", &["127.0.0.1".into()], 1)
                .unwrap();
            let tls = caisson_api::tls::mtls_server_config(
                &pki.ca_pair.cert_pem,
                &s.cert_pem,
                &s.key_pem,
                audit.clone(),
            )
            .unwrap();
            let config = caisson_config::parse("test", &pki.machine_config("node-1")).unwrap();
            (tls, String::new(), Some(config))
        }
        Mode::Maintenance => {
            let m = caisson_pki::self_signed_server("localhost", &["127.0.0.1".into()]).unwrap();
            let fp =
                caisson_pki::fingerprint_sha256(&caisson_pki::pem_to_der(&m.cert_pem).unwrap());
            (
                caisson_api::tls::maintenance_server_config(&m.cert_pem, &m.key_pem).unwrap(),
                fp,
                None,
            )
        }
    };
    let node = Arc::new(FakeNode {
        maintenance: mode == Mode::Maintenance,
        config: Mutex::new(config),
        reboots: AtomicU32::new(0),
        applies: AtomicU32::new(0),
        dry_runs: AtomicU32::new(0),
        resets: AtomicU32::new(0),
        uploaded: Mutex::new(None),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(server::serve(
        listener,
        tls,
        server::router(node.clone(), audit, mode),
        stop_rx,
    ));
    Server {
        port,
        node,
        fingerprint,
        stop,
        _rt: rt,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn nodectl(config: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodectl"));
    cmd.args(args)
        .env_remove("NODECTLCONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    if let Some(c) = config {
        cmd.env("NODECTLCONFIG", c);
    }
    let out = cmd.output().expect("run nodectl");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn an_admin_reads_the_version_as_a_table_and_as_json() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let cfg = pki.client_config("admin", "test", &[s.addr()]);

    let r = nodectl(Some(&cfg), &["version"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(
        lines[0].starts_with("HOSTNAME  IMAGE  AGENT  SLOT  KERNEL"),
        "{}",
        r.stdout
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cells[..6],
        ["node-1", "0.1.0", "0.1.0", "a", "6.1.0-test", "normal"]
    );
    assert!(lines[1].contains("0.1.0 running") && lines[1].contains("0.2.0 trying (3 left)"), "{}", lines[1]);

    let r = nodectl(Some(&cfg), &["version", "-o", "json"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
    assert_eq!(v["node"], s.addr());
    let info: VersionInfo = serde_json::from_value(v["result"].clone()).unwrap();
    assert_eq!(
        (info.hostname.as_str(), info.slot.as_str(), info.maintenance),
        ("node-1", "a", false)
    );
}

#[test]
fn a_reader_is_refused_a_reboot_in_the_nodes_own_words() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let reader = pki.client_config("reader", "test", &[s.addr()]);
    let r = nodectl(Some(&reader), &["reboot"]);
    assert!(!r.ok, "{}", r.stdout);
    assert_eq!(r.stderr.trim(), "error: role reader may not call reboot");
    assert_eq!(s.node.reboots.load(Ordering::SeqCst), 0);

    let operator = pki.client_config("operator", "test", &[s.addr()]);
    let r = nodectl(Some(&operator), &["reboot"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "rebooting");
    assert_eq!(s.node.reboots.load(Ordering::SeqCst), 1);
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_by_the_node() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let cfg = pki.client_config("stranger", "test", &[s.addr()]);
    let r = nodectl(Some(&cfg), &["reboot"]);
    assert!(!r.ok, "{}", r.stdout);
    assert_eq!(
        r.stderr.trim(),
        "error: the node refused our client certificate (is it from this cluster's CA?)"
    );
    assert_eq!(s.node.reboots.load(Ordering::SeqCst), 0);
}

#[test]
fn a_node_whose_certificate_comes_from_another_ca_is_not_trusted() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let cfg = pki.client_config("admin", "other-ca", &[s.addr()]);
    let r = nodectl(Some(&cfg), &["reboot"]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr
            .starts_with("error: certificate signed by an unknown CA"),
        "{}",
        r.stderr
    );
    assert_eq!(s.node.reboots.load(Ordering::SeqCst), 0);
}

#[test]
fn a_node_in_maintenance_mode_is_reached_with_insecure_and_its_fingerprint() {
    let pki = pki();
    let s = serve(&pki, Mode::Maintenance);
    let cfg = pki.client_config("admin", "test", &[s.addr()]);

    // Without --insecure, nodectl recognises the maintenance certificate.
    let r = nodectl(Some(&cfg), &["version"]);
    assert!(!r.ok);
    let hint = format!(
        "error: node is in maintenance mode: use --insecure --fingerprint {}",
        s.fingerprint
    );
    assert!(r.stderr.starts_with(&hint), "{}", r.stderr);

    // The right fingerprint: no client config needed, no warning.
    let addr = s.addr();
    let pinned = [
        "--insecure",
        "--fingerprint",
        s.fingerprint.as_str(),
        "-n",
        addr.as_str(),
    ];
    let r = nodectl(None, &[&pinned[..], &["version"]].concat());
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.lines().nth(1).unwrap().contains(" maintenance "),
        "{}",
        r.stdout
    );
    assert_eq!(r.stderr, "");

    // A config applied through the pinned connection reaches the node.
    let file = pki.dir.path().join("node.toml");
    std::fs::write(&file, pki.machine_config("node-2")).unwrap();
    let r = nodectl(
        None,
        &[&pinned[..], &["apply-config", "-f", file.to_str().unwrap()]].concat(),
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("applied live: hostname"), "{}", r.stdout);
    assert_eq!(s.node.applies.load(Ordering::SeqCst), 1);

    // Anything else is refused by the node.
    let r = nodectl(None, &[&pinned[..], &["reboot"]].concat());
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("node is in maintenance mode: only version, health and apply-config"),
        "{}",
        r.stderr
    );
    assert_eq!(s.node.reboots.load(Ordering::SeqCst), 0);

    // The wrong fingerprint: refused before anything is sent.
    let wrong = format!("SHA256:{}", "0".repeat(64));
    let r = nodectl(
        None,
        &[
            "--insecure",
            "--fingerprint",
            &wrong,
            "-n",
            &addr,
            "apply-config",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert!(!r.ok);
    let want = format!(
        "error: certificate fingerprint mismatch: expected {wrong}, the node presented {}",
        s.fingerprint
    );
    assert!(r.stderr.starts_with(&want), "{}", r.stderr);
    assert_eq!(s.node.applies.load(Ordering::SeqCst), 1);

    // --insecure alone works, with a warning.
    let r = nodectl(None, &["--insecure", "-n", &addr, "version"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("warning: --insecure without --fingerprint"),
        "{}",
        r.stderr
    );
}

#[test]
fn fan_out_shows_each_nodes_result_and_fails_if_one_node_is_down() {
    let pki = pki();
    let up = serve(&pki, Mode::Normal);
    let down = serve(&pki, Mode::Normal);
    down.stop.send(true).unwrap();
    // Wait until the stopped server's port refuses connections.
    for _ in 0..100 {
        if std::net::TcpStream::connect(down.addr()).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = pki.client_config("admin", "test", &[]);
    let nodes = format!("{},{}", up.addr(), down.addr());
    let r = nodectl(Some(&cfg), &["-n", &nodes, "version"]);
    assert!(!r.ok, "one node is down: the exit status must say so");
    let out: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(out.len(), 2, "{}", r.stdout);
    assert!(out[0].starts_with("NODE "), "{}", r.stdout);
    assert!(
        out[1].starts_with(&format!("{}  node-1", up.addr())),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stderr.trim(),
        format!(
            "{}: error: connection refused: is the node up and is port {} reachable?",
            down.addr(),
            down.port
        )
    );
}

#[test]
fn logs_follow_streams_lines_as_the_node_writes_them() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let cfg = pki.client_config("reader", "test", &[s.addr()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodectl"))
        .args(["logs", "agent", "-f"])
        .env("NODECTLCONFIG", &cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    for _ in 0..5 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => got.push(line),
            Err(_) => break,
        }
    }
    // The node never ends a followed log: lines arriving while nodectl still
    // runs prove they are streamed, not buffered to the end.
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(got, ["line 0", "line 1", "line 2", "line 3", "line 4"]);
    assert!(still_running);

    let r = nodectl(Some(&cfg), &["logs", "agent"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        ["line 0", "line 1", "line 2"]
    );
    let r = nodectl(Some(&cfg), &["logs", "nope"]);
    assert_eq!(
        (r.ok, r.stderr.trim()),
        (false, "error: log source \"nope\" not found")
    );
}

#[test]
fn apply_config_dry_run_shows_the_nodes_diff_and_changes_nothing() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let cfg = pki.client_config("admin", "test", &[s.addr()]);
    let file = pki.dir.path().join("node.toml");
    std::fs::write(&file, pki.machine_config("node-2")).unwrap();

    let r = nodectl(
        Some(&cfg),
        &["apply-config", "-f", file.to_str().unwrap(), "--dry-run"],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        [
            "1 change:",
            "  ~ machine.hostname: \"node-1\" -> \"node-2\"",
            "dry run: nothing was changed on the node"
        ]
    );
    assert_eq!(
        (
            s.node.dry_runs.load(Ordering::SeqCst),
            s.node.applies.load(Ordering::SeqCst)
        ),
        (1, 0)
    );

    // An invalid config is refused here, with its key path, and never sent.
    std::fs::write(&file, "version = 1\n[machine]\nhostname = 3\n").unwrap();
    let r = nodectl(
        Some(&cfg),
        &["apply-config", "-f", file.to_str().unwrap(), "--dry-run"],
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(":3:12: machine.hostname: invalid type"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("nothing was sent"), "{}", r.stderr);
    assert_eq!(s.node.dry_runs.load(Ordering::SeqCst), 1);
}

#[test]
fn reset_needs_yes_and_get_config_masks_secrets() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let cfg = pki.client_config("admin", "test", &[s.addr()]);
    let r = nodectl(Some(&cfg), &["reset"]);
    assert!(!r.ok && r.stderr.contains("pass --yes"), "{}", r.stderr);
    assert_eq!(s.node.resets.load(Ordering::SeqCst), 0);
    let r = nodectl(Some(&cfg), &["reset", "--yes"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(s.node.resets.load(Ordering::SeqCst), 1);

    let reader = pki.client_config("reader", "test", &[s.addr()]);
    let r = nodectl(Some(&reader), &["get", "config"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("hostname = \"node-1\""), "{}", r.stdout);
    assert!(r.stdout.contains("ca_key = \"***\""), "{}", r.stdout);
    assert!(!r.stdout.contains("PRIVATE KEY"), "{}", r.stdout);
}

#[test]
fn upgrade_streams_the_bundle_file_whole_and_rollback_reports_the_next_slot() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let admin = pki.client_config("admin", "test", &[s.addr()]);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("caisson-0.2.0.bundle");
    let size = 5 * 1024 * 1024 + 123;
    std::fs::write(&bundle, vec![7u8; size]).unwrap();
    let r = nodectl(Some(&admin), &["upgrade", "--bundle", bundle.to_str().unwrap(), "--stage"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(*s.node.uploaded.lock().unwrap(), Some(size as u64));
    assert!(r.stdout.contains("slot b written") && r.stdout.contains("staged"), "{}", r.stdout);

    let r = nodectl(Some(&admin), &["upgrade", "--bundle", "/nonexistent.bundle"]);
    assert!(!r.ok && r.stderr.contains("no such bundle file"), "{}", r.stderr);
    let r = nodectl(Some(&admin), &["upgrade"]);
    assert!(!r.ok, "a source is required: {}", r.stderr);

    let r = nodectl(Some(&admin), &["rollback", "--no-reboot"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.trim(), "slot a (0.1.0) boots next instead of 0.2.0; at the next reboot");
}

#[test]
fn kubeconfig_comes_back_with_the_nodes_address_and_only_for_admins() {
    let pki = pki();
    let s = serve(&pki, Mode::Normal);
    let admin = pki.client_config("admin", "test", &[s.addr()]);
    let r = nodectl(Some(&admin), &["kubeconfig"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    // No --server-host: the node's endpoint host, here 127.0.0.1 itself.
    assert!(r.stdout.contains("    server: https://127.0.0.1:6443\n"), "{}", r.stdout);
    assert!(r.stdout.contains("certificate-authority-data: QUJD"), "the rest is kept: {}", r.stdout);
    let r = nodectl(Some(&admin), &["kubeconfig", "--server-host", "k8s.site.internal"]);
    assert!(r.stdout.contains("    server: https://k8s.site.internal:6443"), "{}", r.stdout);
    let operator = pki.client_config("operator", "test", &[s.addr()]);
    let r = nodectl(Some(&operator), &["kubeconfig"]);
    assert!(!r.ok && r.stderr.contains("role operator may not call kubeconfig"), "{}", r.stderr);
}
