//! The API side of A/B upgrades: take a bundle (uploaded, or fetched from
//! a mirror), install it under the one-upgrade lock, reboot unless staged;
//! roll back; and, on a boot into a slot on trial, run the health gates and
//! bless the slot or reboot without blessing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caisson_api::server::{BundleStream, UpgradeSource};
use caisson_api::types::{RollbackRequest, RollbackResponse, UpgradeRecord, UpgradeResponse};
use caisson_api::{ApiError, Mode};
use caisson_bundle::{PublicKey, TrustPolicy};
use caisson_config::MachineConfig;
use caisson_layout::cmdline::KEY_VERITY;
use caisson_layout::KernelCmdline;
use futures_util::TryStreamExt;
use http_body_util::BodyExt;
use tracing::{error, info, warn};

use super::{ConfigState, Node};
use crate::bootentry;
use crate::power::{self, ShutdownAction};
use crate::upgrade::history::{now_ms, OUTCOME_IN_PROGRESS};
use crate::upgrade::install::{self, InstallError, Step};
use crate::upgrade::{self as upgrade_mod, BootVerdict};

/// Below /var: the scratch file of `measure_disk`.
const DISK_SPEED_FILE: &str = "lib/caisson/disk-speed.scratch";
const DISK_SPEED_BYTES: usize = 64 << 20;

/// MB/s of a 64 MiB write + fsync to `path` (then removed), in 1 MiB
/// writes like the slot's: the virtual disk's own sequential write speed.
fn disk_write_speed(path: &std::path::Path) -> std::io::Result<f64> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Not zeros: some disks (and qcow2) treat zero writes specially.
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let started = Instant::now();
    let written = (|| {
        let mut f = std::fs::File::create(path)?;
        for _ in 0..DISK_SPEED_BYTES / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(path);
    written?;
    Ok(DISK_SPEED_BYTES as f64 / 1e6 / elapsed.as_secs_f64().max(1e-6))
}

/// How long every gate must hold, with no service restarting, before a
/// slot on trial is blessed (at most half the timeout).
const GATE_SETTLE: Duration = Duration::from_secs(10);

/// How often the gates are evaluated while a slot is on trial.
const GATE_POLL: Duration = Duration::from_secs(2);

fn trust_policy(config: &MachineConfig) -> Result<TrustPolicy, ApiError> {
    let section = config.upgrade.clone().unwrap_or_default();
    let mut trusted = Vec::new();
    for (i, pem) in section.trusted_keys.iter().enumerate() {
        trusted.push(PublicKey::from_pem(pem).map_err(|e| {
            ApiError::InvalidConfig(format!("upgrade.trusted_keys[{i}]: {e}"))
        })?);
    }
    Ok(TrustPolicy {
        trusted,
        allow_unsigned: section.allow_unsigned,
    })
}

fn install_error(e: InstallError) -> ApiError {
    match e {
        InstallError::Bundle(b) => ApiError::BadRequest(format!("bundle refused: {b}")),
        InstallError::Refused(why) => ApiError::Conflict(format!("upgrade refused: {why}")),
        e @ InstallError::Io { .. } => ApiError::Internal(e.to_string()),
    }
}

/// A live boot has no disk slot to write or to go back to.
fn refuse_if_live(live: bool, what: &str) -> Result<(), ApiError> {
    if live {
        return Err(ApiError::Conflict(format!(
            "{what} refused: this node booted live (caisson.live: root and STATE in memory) and has no A/B slot \
             to write or roll back to; boot the new image over PXE, or install the node to a disk first"
        )));
    }
    Ok(())
}

/// GET an `http://` URL; the body as a stream.
async fn fetch(url: &str) -> Result<BundleStream, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("upgrade URL {url}: {why}"));
    let uri: hyper::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "only http:// is fetched (the bundle's signature, not the transport, is what is trusted)".into(),
        ));
    }
    let host = uri.host().ok_or_else(|| bad("no host".into()))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| bad(format!("connect to {host}:{port}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| bad(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            warn!("upgrade: fetching the bundle: {e}");
        }
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| bad(format!("{e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| bad(format!("GET: {e}")))?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(bad(format!("the server answered {}", resp.status())));
    }
    let stream = resp
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
}

impl Node {
    pub(crate) fn current_config(&self) -> Option<Arc<MachineConfig>> {
        self.running
            .try_lock()
            .ok()
            .and_then(|r| r.current.as_ref().map(|a| a.config.clone()))
    }

    pub(crate) async fn upgrade_now(
        &self,
        source: UpgradeSource,
        options: caisson_api::server::UpgradeOptions,
        by: String,
    ) -> Result<UpgradeResponse, ApiError> {
        refuse_if_live(self.facts.live, "upgrade")?;
        let stage = options.stage;
        let config = {
            let running = self.running.lock().await;
            running.current.as_ref().map(|a| a.config.clone())
        }
        .ok_or_else(|| {
            ApiError::Conflict(
                "the node runs no machine config (maintenance mode); apply one (with upgrade.trusted_keys) first".into(),
            )
        })?;
        let policy = trust_policy(&config)?;
        let _busy = self.upgrades.begin(&by).map_err(|b| {
            ApiError::Conflict(format!(
                "an upgrade is already running (started by {} {} s ago); only one runs at a time",
                b.by,
                now_ms().saturating_sub(b.since_ms) / 1000
            ))
        })?;
        let (reader, uploaded) = match source {
            UpgradeSource::Upload(r) => (r, true),
            UpgradeSource::Url(url) => (fetch(&url).await?, false),
        };
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| ApiError::Internal("the node is shutting down".into()))?;
        let kernel_args = config.kernel.args.clone();
        let from_version = self.facts.image_version.clone();
        let started_ms = now_ms();
        let mut bridge = tokio_util::io::SyncIoBridge::new(reader);
        let who = by.clone();
        let from = from_version.clone();
        let scratch = me.paths.var.join(DISK_SPEED_FILE);
        let installed = tokio::task::spawn_blocking(move || {
            let disk = options.measure_disk.then(|| disk_write_speed(&scratch));
            let load = |name: &'static str| me.load_module(name);
            let upgrades = &me.upgrades;
            let result = bootentry::with_esp(load, |esp, _device| {
                let target = upgrade_mod::locate_target(upgrades.running, esp, kernel_args)?;
                let mut progress = |step: &Step| match step {
                    Step::Verified { version, signed_by } => {
                        upgrades.history.update(|h| {
                            h.last = Some(UpgradeRecord {
                                kind: "upgrade".into(),
                                from_version: from.clone(),
                                to_version: version.clone(),
                                slot: target.slot().to_string(),
                                started_ms,
                                finished_ms: None,
                                outcome: OUTCOME_IN_PROGRESS.into(),
                                by: who.clone(),
                            })
                        });
                        info!(
                            "upgrade: bundle {version} verified ({}); writing slot {}",
                            signed_by.as_deref().map(|k| format!("signed by {k}")).unwrap_or("unsigned, allowed by upgrade.allow_unsigned".into()),
                            target.slot()
                        );
                    }
                    Step::OldEntryRemoved(name) => info!("upgrade: removed the old entry {name}"),
                    Step::RootWritten { bytes } => info!("upgrade: root written and synced ({bytes} bytes)"),
                    Step::BootFilesWritten => info!("upgrade: kernel and initrd written and synced"),
                    Step::EntryWritten(name) => info!("upgrade: boot entry {name} written"),
                };
                let done = install::install(&mut bridge, &policy, &target, &mut progress);
                if let Ok(entries) = install::list_entries(esp) {
                    upgrades.remember_entries(entries);
                }
                done
            });
            let result = result.map(|i| (i, disk));
            if result.is_err() && uploaded {
                // Read the rest of a refused upload, so the client gets the
                // answer instead of a reset connection mid-send.
                let _ = std::io::copy(&mut bridge, &mut std::io::sink());
            }
            result
        })
        .await
        .map_err(|e| ApiError::Internal(format!("upgrade task: {e}")))?;
        let (installed, disk) = match installed {
            Ok(i) => i,
            Err(e) => {
                error!("upgrade failed: {e}; the node stays on slot {}", self.upgrades.running);
                let why = e.to_string();
                self.upgrades.history.update(|h| {
                    if let Some(last) = h.last.as_mut().filter(|l| l.started_ms == started_ms) {
                        last.outcome = format!("failed: {why}");
                        last.finished_ms = Some(now_ms());
                    }
                });
                return Err(install_error(e));
            }
        };
        let secs = installed.elapsed.as_secs_f64();
        let root_mb_s = installed.root_bytes as f64 / 1e6 / installed.root_elapsed.as_secs_f64().max(1e-6);
        info!(
            "upgrade: {} written to slot {} in {secs:.1} s (root {:.1} MB/s){}",
            installed.manifest.version,
            installed.slot,
            root_mb_s,
            if stage { "; staged: it boots at the next reboot" } else { "; rebooting" }
        );
        self.upgrades.history.update(|h| {
            if let Some(last) = h.last.as_mut().filter(|l| l.started_ms == started_ms) {
                last.outcome = if stage { "staged".into() } else { "written: rebooting into it".into() };
            }
        });
        if !stage {
            power::request_from_api(&self.power, ShutdownAction::Reboot);
        }
        Ok(UpgradeResponse {
            from_version,
            version: installed.manifest.version.clone(),
            slot: installed.slot.to_string(),
            entry: installed.entry,
            signed_by: installed.signed_by,
            bytes: installed.bytes,
            seconds: secs,
            root_write_mb_s: root_mb_s,
            root_write_busy_mb_s: installed.root_bytes as f64
                / 1e6
                / installed.root_busy.as_secs_f64().max(1e-6),
            disk_write_mb_s: match disk {
                Some(Ok(rate)) => Some(rate),
                Some(Err(e)) => {
                    warn!("upgrade: the scratch write on DATA failed: {e}");
                    None
                }
                None => None,
            },
            agent_peak_rss_kib: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| crate::boot::vm_hwm_kb(&s)),
            staged: stage,
            rebooting: !stage,
        })
    }

    pub(crate) async fn rollback_now(&self, req: RollbackRequest, by: String) -> Result<RollbackResponse, ApiError> {
        refuse_if_live(self.facts.live, "rollback")?;
        let _busy = self.upgrades.begin(&by).map_err(|b| {
            ApiError::Conflict(format!("an upgrade started by {} is running; roll back after it", b.by))
        })?;
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| ApiError::Internal("the node is shutting down".into()))?;
        let version = self.facts.image_version.clone();
        let target = tokio::task::spawn_blocking(move || {
            let load = |name: &'static str| me.load_module(name);
            bootentry::with_esp(load, |esp, _| me.upgrades.rollback(esp, &version, &by))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("rollback task: {e}")))?
        .map_err(install_error)?;
        info!(
            "rollback: slot {} ({}) boots next{}",
            target.slot,
            target.version,
            if req.reboot { "; rebooting" } else { "" }
        );
        if req.reboot {
            power::request_from_api(&self.power, ShutdownAction::Reboot);
        }
        Ok(RollbackResponse {
            from_version: self.facts.image_version.clone(),
            slot: target.slot.to_string(),
            version: target.version,
            rebooting: req.reboot,
        })
    }

    /// At boot: read the ESP, record and clean up, and if this slot is on
    /// trial, run the health gates; bless it, or reboot without blessing.
    pub async fn watch_trial(self: Arc<Self>) {
        if self.facts.live {
            info!("upgrade: live boot: no boot entries to read, no slot on trial");
            return;
        }
        let me = self.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let load = |name: &'static str| me.load_module(name);
            bootentry::with_esp(load, |esp, _| me.upgrades.on_boot(esp))
        })
        .await;
        let running = self.upgrades.running;
        let entry = match verdict {
            Ok(Ok(BootVerdict::OnTrial { entry })) => {
                info!("upgrade: boot entries read: slot {running} is on trial");
                entry
            }
            Ok(Ok(BootVerdict::KnownGood)) => {
                info!("upgrade: boot entries read: slot {running} is known good");
                return;
            }
            Ok(Ok(BootVerdict::Unknown(why))) => {
                warn!("upgrade: {why}");
                return;
            }
            Ok(Err(e)) => {
                warn!("upgrade: reading the boot entries: {e}");
                return;
            }
            Err(e) => {
                warn!("upgrade: reading the boot entries: {e}");
                return;
            }
        };
        let timeout = Duration::from_secs(
            self.current_config()
                .and_then(|c| c.upgrade.clone())
                .unwrap_or_default()
                .health_timeout_secs
                .into(),
        );
        let left = entry.counter.map(|c| c.left).unwrap_or(0);
        info!(
            "upgrade: slot {} ({}) is on trial ({left} boots left after this one); health gates have {} s",
            entry.slot,
            entry.version,
            timeout.as_secs()
        );
        let started = Instant::now();
        // The gates must hold without a break for the settle window, and no
        // service may restart meanwhile: one that dies at once looks
        // healthy for the instant it runs.
        let settle = GATE_SETTLE.min(timeout / 2);
        let mut passing: Option<(Instant, Vec<(String, u32)>)> = None;
        let failing = loop {
            let mut failing = self.failing_gates().await;
            let restarts = self.restart_counts();
            if failing.is_empty() {
                match &passing {
                    Some((since, before)) if *before == restarts => {
                        if since.elapsed() >= settle {
                            break None;
                        }
                    }
                    Some((_, before)) => {
                        let restarted: Vec<String> = restarts
                            .iter()
                            .filter(|now| !before.contains(now))
                            .map(|(name, _)| format!("service {name} restarted while the gates were settling"))
                            .collect();
                        failing.extend(restarted);
                        passing = Some((Instant::now(), restarts));
                    }
                    None => passing = Some((Instant::now(), restarts)),
                }
            } else {
                passing = None;
            }
            if started.elapsed() >= timeout {
                if failing.is_empty() {
                    failing.push(format!("the gates did not hold for {} s in a row", settle.as_secs()));
                }
                break Some(failing);
            }
            tokio::time::sleep(GATE_POLL).await;
        };
        match failing {
            None => {
                let me = self.clone();
                let version = self.facts.image_version.clone();
                let blessed = tokio::task::spawn_blocking(move || {
                    let load = |name: &'static str| me.load_module(name);
                    bootentry::with_esp(load, |esp, _| me.upgrades.bless(esp, &version))
                })
                .await;
                match blessed {
                    Ok(Ok(name)) => info!(
                        "upgrade: health gates passed in {:.0} s; slot {} blessed ({name})",
                        started.elapsed().as_secs_f64(),
                        entry.slot
                    ),
                    Ok(Err(e)) => error!("upgrade: health gates passed, but blessing failed: {e}"),
                    Err(e) => error!("upgrade: blessing: {e}"),
                }
            }
            Some(failing) => {
                error!(
                    "upgrade: health gates failed after {} s: {}; rebooting without blessing slot {} ({left} boots left)",
                    timeout.as_secs(),
                    failing.join("; "),
                    entry.slot
                );
                let why = failing.join("; ");
                self.upgrades.history.update(|h| {
                    if let Some(last) = h.last.as_mut().filter(|l| l.finished_ms.is_none()) {
                        last.outcome = format!("trying: health gates failed on a boot ({why})");
                    }
                });
                power::request_from_api(&self.power, ShutdownAction::Reboot);
            }
        }
    }

    /// Each supervised service's restart count.
    fn restart_counts(&self) -> Vec<(String, u32)> {
        use caisson_api::NodeOps;
        self.services().into_iter().map(|s| (s.name, s.restarts)).collect()
    }

    /// The gates that do not pass yet, each with why.
    async fn failing_gates(&self) -> Vec<String> {
        let mut failing = Vec::new();
        let cmdline = std::fs::read_to_string("/proc/cmdline")
            .map(|t| KernelCmdline::parse(&t))
            .unwrap_or_else(|_| KernelCmdline::parse(""));
        let wanted = cmdline.value(KEY_VERITY).map(str::to_string);
        match (upgrade_mod::root_verity_hint(), wanted) {
            (Some(got), Some(want)) if got == want && got != caisson_layout::cmdline::VERITY_OFF => {}
            (got, want) => failing.push(format!(
                "root verified: init verified {} and the entry asks for {}",
                got.unwrap_or_else(|| "nothing".into()),
                want.unwrap_or_else(|| "nothing".into())
            )),
        }
        let status = self.status();
        match (&status.mode, &status.config) {
            (Mode::Normal, ConfigState::Applied { errors, .. }) if errors.is_empty() => {}
            (_, ConfigState::Applied { errors, .. }) => {
                failing.push(format!("config applied: {}", errors.join("; ")))
            }
            (_, ConfigState::Maintenance { why }) => failing.push(format!("config applied: maintenance mode ({why})")),
        }
        let port = status.api.as_ref().map(|a| a.port);
        match (status.serving.as_ref(), port) {
            (Some(_), Some(port)) => {
                let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
                match tokio::time::timeout(Duration::from_secs(2), connect).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failing.push(format!("API serving: connect to port {port}: {e}")),
                    Err(_) => failing.push(format!("API serving: port {port} does not answer")),
                }
            }
            _ => failing.push("API serving: the API is not up".into()),
        }
        use caisson_api::NodeOps;
        if self.supervisor().is_none() && std::path::Path::new(crate::runtime::CONTAINERD_BINARY).exists() {
            failing.push("services: not started".into());
        }
        for s in self.services() {
            if !s.healthy {
                failing.push(format!("service {}: {}", s.name, s.state));
            }
        }
        failing
    }
}
