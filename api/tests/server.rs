//! The API server over real TLS on loopback, driven by curl: a client nobody
//! here wrote. The node behind it is a test double that counts calls, so the
//! tests can prove that refused calls change nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use caisson_api::audit::AuditLog;
use caisson_api::server::{self, LogLines, NodeOps, UpgradeSource};
use caisson_api::types::*;
use caisson_api::{ApiError, Mode};
use caisson_pki::{Ca, CertKey, Role};
use tokio::sync::{mpsc, watch};

#[derive(Default)]
struct FakeNode {
    reboots: AtomicU32,
    resets: AtomicU32,
    /// Bytes and sha256 of the last uploaded bundle, as the node read it.
    uploaded: std::sync::Mutex<Option<(u64, String)>>,
}

impl NodeOps for FakeNode {
    fn version(&self) -> VersionInfo {
        VersionInfo {
            image_version: "0.1.0".into(),
            agent_version: "0.1.0".into(),
            slot: "a".into(),
            kernel: "6.1".into(),
            hostname: "node-1".into(),
            maintenance: false,
            live: false,
            slots: vec![],
            last_upgrade: None,
        }
    }
    async fn health(&self) -> Health {
        Health { ready: true, checks: vec![] }
    }
    fn config_redacted(&self) -> Option<String> {
        Some("version = 1\n".into())
    }
    async fn apply_config(&self, req: ApplyRequest) -> Result<ApplyResponse, ApiError> {
        caisson_config::parse("request", &req.config).map_err(|e| ApiError::InvalidConfig(e.to_string()))?;
        Ok(ApplyResponse { changes: vec![], applied: vec![], needs_reboot: vec![], dry_run: req.dry_run, confirm_within_secs: None })
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
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
    async fn upgrade(&self, source: UpgradeSource, options: server::UpgradeOptions, by: String) -> Result<UpgradeResponse, ApiError> {
        use sha2::Digest;
        use tokio::io::AsyncReadExt;
        let UpgradeSource::Upload(mut body) = source else {
            return Err(ApiError::BadRequest("no fetching here".into()));
        };
        let (mut n, mut hash, mut buf) = (0u64, sha2::Sha256::new(), vec![0u8; 8192]);
        loop {
            let got = body.read(&mut buf).await.map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if got == 0 {
                break;
            }
            n += got as u64;
            hash.update(&buf[..got]);
        }
        *self.uploaded.lock().unwrap() = Some((n, hex::encode(hash.finalize())));
        Ok(UpgradeResponse {
            from_version: "0.1.0".into(),
            version: "0.2.0".into(),
            slot: "b".into(),
            entry: "caisson-0.2.0-b+3.conf".into(),
            signed_by: Some(by),
            bytes: n,
            seconds: 0.0,
            root_write_mb_s: 0.0,
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

struct Fixture {
    dir: tempfile::TempDir,
    port: u16,
    node: Arc<FakeNode>,
    audit: Arc<AuditLog>,
    _stop: watch::Sender<bool>,
    _rt: tokio::runtime::Runtime,
}

fn write_pair(dir: &Path, name: &str, pair: &CertKey) {
    std::fs::write(dir.join(format!("{name}.crt")), &pair.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &pair.key_pem).unwrap();
}

fn start(mode: Mode) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca_pair = caisson_pki::generate_ca("test").unwrap();
    let ca = Ca::from_pem(&ca_pair.cert_pem, &ca_pair.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca_pair.cert_pem).unwrap();
    for role in Role::ALL {
        write_pair(dir.path(), role.as_str(), &ca.issue_client(role.as_str(), role, 1).unwrap());
    }
    let other_pair = caisson_pki::generate_ca("other").unwrap();
    let other = Ca::from_pem(&other_pair.cert_pem, &other_pair.key_pem).unwrap();
    write_pair(dir.path(), "stranger", &other.issue_client("mallory", Role::Admin, 1).unwrap());
    // Issued by our CA but already past its notAfter.
    write_pair(dir.path(), "expired", &ca.issue_client("old-admin", Role::Admin, -1).unwrap());

    let audit = Arc::new(AuditLog::new(dir.path().join("audit.jsonl")));
    let server_pair = ca.issue_server("localhost", &["127.0.0.1".into()], 1).unwrap();
    let tls = match mode {
        Mode::Normal => caisson_api::tls::mtls_server_config(
            &ca_pair.cert_pem,
            &server_pair.cert_pem,
            &server_pair.key_pem,
            audit.clone(),
        )
        .unwrap(),
        Mode::Maintenance => {
            let m = caisson_pki::self_signed_server("localhost", &["127.0.0.1".into()]).unwrap();
            caisson_api::tls::maintenance_server_config(&m.cert_pem, &m.key_pem).unwrap()
        }
    };
    let node = Arc::new(FakeNode::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = server::router(node.clone(), audit.clone(), mode);
    rt.spawn(server::serve(listener, tls, router, stop_rx));
    Fixture { dir, port, node, audit, _stop: stop_tx, _rt: rt }
}

struct Reply {
    curl_exit: i32,
    status: u16,
    body: String,
}

impl Fixture {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// curl as `who` ("admin", "reader", "stranger", or "" for no certificate).
    fn curl(&self, who: &str, method: &str, url_path: &str, body: Option<&str>) -> Reply {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"]);
        if who.is_empty() || who == "insecure" {
            cmd.arg("--insecure");
        } else {
            cmd.arg("--cacert").arg(self.path("ca.crt"));
        }
        if !who.is_empty() && who != "insecure" {
            cmd.arg("--cert").arg(self.path(&format!("{who}.crt")));
            cmd.arg("--key").arg(self.path(&format!("{who}.key")));
        }
        if let Some(b) = body {
            match b.strip_prefix('@') {
                Some(file) => cmd.args(["-H", "content-type: application/octet-stream", "--data-binary"]).arg(format!("@{file}")),
                None => cmd.args(["-H", "content-type: application/json", "--data", b]),
            };
        }
        cmd.arg(format!("https://127.0.0.1:{}{url_path}", self.port));
        let out = cmd.output().expect("curl is installed (cargo xtask test installs it)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        Reply { curl_exit: out.status.code().unwrap_or(-1), status: code.trim().parse().unwrap_or(0), body: body.to_string() }
    }
}

#[test]
fn admin_reads_version_over_mutual_tls() {
    let f = start(Mode::Normal);
    let r = f.curl("admin", "GET", "/v1/version", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: VersionInfo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v.slot, "a");
}

#[test]
fn reader_may_not_reboot_and_the_refusal_is_audited() {
    let f = start(Mode::Normal);
    let r = f.curl("reader", "POST", "/v1/reboot", None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("role reader may not call reboot"), "{}", r.body);
    assert_eq!(f.node.reboots.load(Ordering::SeqCst), 0);
    let log = f.audit.tail(10).unwrap();
    let last = log.last().expect("an audit line");
    assert_eq!((last.cn.as_str(), last.role.as_str(), last.endpoint.as_str()), ("reader", "reader", "reboot"));
    assert!(last.result.starts_with("refused: role reader"), "{last:?}");

    let r = f.curl("operator", "POST", "/v1/reboot", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.node.reboots.load(Ordering::SeqCst), 1);
    assert_eq!(f.audit.tail(1).unwrap()[0].result, "ok");
}

#[test]
fn a_client_without_a_certificate_is_refused_and_audited() {
    let f = start(Mode::Normal);
    let r = f.curl("", "POST", "/v1/reboot", None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("client certificate"), "{}", r.body);
    assert_eq!(f.node.reboots.load(Ordering::SeqCst), 0);
    assert!(f.audit.tail(1).unwrap()[0].result.starts_with("refused: a client certificate"));
}

#[test]
fn a_certificate_from_another_ca_fails_the_handshake_and_is_audited() {
    let f = start(Mode::Normal);
    let r = f.curl("stranger", "POST", "/v1/reboot", None);
    assert_ne!(r.curl_exit, 0, "handshake should fail: {}", r.body);
    assert_eq!(r.status, 0);
    assert_eq!(f.node.reboots.load(Ordering::SeqCst), 0);
    let last = f.audit.tail(1).unwrap();
    let last = last.first().expect("an audit line for the TLS refusal");
    assert_eq!(last.endpoint, "tls");
    assert!(last.cn.starts_with("mallory"), "{last:?}");
    assert!(last.result.contains("refused"), "{last:?}");
}

#[test]
fn an_expired_certificate_fails_the_handshake_and_is_audited() {
    let f = start(Mode::Normal);
    let r = f.curl("expired", "POST", "/v1/reboot", None);
    assert_ne!(r.curl_exit, 0, "handshake should fail: {}", r.body);
    assert_eq!(f.node.reboots.load(Ordering::SeqCst), 0);
    let last = f.audit.tail(1).unwrap();
    let last = last.first().expect("an audit line for the TLS refusal");
    assert_eq!(last.endpoint, "tls");
    assert!(last.cn.starts_with("old-admin"), "{last:?}");
    assert!(last.result.to_lowercase().contains("expired"), "{last:?}");
}

#[test]
fn reset_needs_explicit_confirmation() {
    let f = start(Mode::Normal);
    let r = f.curl("admin", "POST", "/v1/reset", Some("{}"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(f.node.resets.load(Ordering::SeqCst), 0);
    let r = f.curl("admin", "POST", "/v1/reset", Some("{\"confirm\":true}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.node.resets.load(Ordering::SeqCst), 1);
}

#[test]
fn an_invalid_config_is_rejected_with_its_key_path() {
    let f = start(Mode::Normal);
    let body = serde_json::json!({ "config": "version = 1\n[machine]\nhostname = 3\n" }).to_string();
    let r = f.curl("admin", "POST", "/v1/config", Some(&body));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("machine.hostname"), "{}", r.body);
    let last = &f.audit.tail(1).unwrap()[0];
    assert_eq!(last.endpoint, "config.apply");
    assert!(last.result.starts_with("error: invalid machine config"), "{last:?}");
    assert!(!last.args.to_string().contains("hostname"), "the config text must not be audited");
}

#[test]
fn logs_stream_history_and_follow() {
    let f = start(Mode::Normal);
    let r = f.curl("reader", "GET", "/v1/logs/agent", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.lines().collect::<Vec<_>>(), ["line 0", "line 1", "line 2"]);
    // Follow never ends by itself: curl's --max-time cuts it; lines arrive meanwhile.
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "1", "--cacert"]).arg(f.path("ca.crt"));
    cmd.arg("--cert").arg(f.path("reader.crt")).arg("--key").arg(f.path("reader.key"));
    cmd.arg(format!("https://127.0.0.1:{}/v1/logs/agent?follow=true", f.port));
    let out = cmd.output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(lines >= 5, "expected a stream, got {lines} lines");
    let r = f.curl("reader", "GET", "/v1/logs/nope", None);
    assert_eq!(r.status, 404);
}

#[test]
fn maintenance_mode_serves_only_version_health_and_apply() {
    let f = start(Mode::Maintenance);
    assert_eq!(f.curl("insecure", "GET", "/v1/version", None).status, 200);
    assert_eq!(f.curl("insecure", "GET", "/v1/health", None).status, 200);
    let r = f.curl("insecure", "POST", "/v1/reboot", None);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("maintenance mode"), "{}", r.body);
    assert_eq!(f.node.reboots.load(Ordering::SeqCst), 0);
}

#[test]
fn an_uploaded_bundle_streams_through_whole_and_the_upgrade_is_audited_with_its_version() {
    use sha2::Digest;
    let f = start(Mode::Normal);
    // 20 MiB of varied bytes: more than any single buffer on the way.
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let file = f.path("upload.bundle");
    std::fs::write(&file, &data).unwrap();
    let arg = format!("@{}", file.display());

    let r = f.curl("reader", "POST", "/v1/upgrade?stage=true", Some(&arg));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(f.node.uploaded.lock().unwrap().is_none(), "a refused upload must not reach the node");

    let r = f.curl("operator", "POST", "/v1/upgrade?stage=true", Some(&arg));
    assert_eq!(r.status, 200, "{}", r.body);
    let done: UpgradeResponse = serde_json::from_str(&r.body).unwrap();
    assert!(done.staged && !done.rebooting, "{done:?}");
    let (n, digest) = f.node.uploaded.lock().unwrap().clone().unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(digest, hex::encode(sha2::Sha256::digest(&data)));
    let last = f.audit.tail(1).unwrap().pop().unwrap();
    assert_eq!((last.endpoint.as_str(), last.result.as_str()), ("upgrade", "ok"));
    assert_eq!(last.args["version"], "0.2.0");
    assert_eq!(last.args["stage"], true);
}

#[test]
fn rollback_defaults_to_rebooting_and_readers_may_not_roll_back() {
    let f = start(Mode::Normal);
    let r = f.curl("reader", "POST", "/v1/rollback", None);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = f.curl("admin", "POST", "/v1/rollback", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let done: RollbackResponse = serde_json::from_str(&r.body).unwrap();
    assert!(done.rebooting);
    let r = f.curl("admin", "POST", "/v1/rollback", Some(r#"{"reboot": false}"#));
    let done: RollbackResponse = serde_json::from_str(&r.body).unwrap();
    assert!(!done.rebooting, "{}", r.body);
    assert_eq!(f.audit.tail(1).unwrap()[0].endpoint, "rollback");
}
