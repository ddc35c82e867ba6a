//! The node's services: containerd, k3s and the machine config's system
//! containers, set up from the config and run by the [`supervisor`].
//!
//! Started once, when the node first has a config (at boot, or at the
//! first apply in maintenance mode). Before containerd starts the agent
//! writes its config and k3s's into the tmpfs `/etc`
//! (`caisson-runtime-config` renders them), loads the kernel modules and
//! sets the sysctls Kubernetes needs. Once containerd answers, the images
//! baked into the root are imported (k3s's air-gap images into `k8s.io`,
//! system containers' archives into `caisson`), once per content; then
//! the `images imported` condition lets k3s and the containers start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use caisson_config::{MachineConfig, RestartPolicy};
use caisson_layout::paths;
use caisson_runtime_config::{self as rc, NodeFacts};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::containerd::{self, ContainerdProbe, Ctr, RunOptions, SYSTEM_NAMESPACE};
use crate::reaper::Reaper;
use crate::supervisor::{
    Backoff, Condition, Conditions, Health, HttpGet, KillMode, Restart, ServiceSpec, Supervisor, LOG_DIR,
};

pub const CONTAINERD_BINARY: &str = "/usr/bin/containerd";
/// The kubelet's health endpoint: what k3s's readiness is judged by, on
/// servers and agents alike.
pub const K3S_HEALTH_URL: &str = "http://127.0.0.1:10248/healthz";
/// CRI's namespace, where k3s looks for its images.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// How long containerd has to answer before imports give up.
const CONTAINERD_UP: Duration = Duration::from_secs(300);

/// What starting the services needs from the agent.
pub struct RuntimeCtx {
    pub reaper: Arc<Reaper>,
    pub conditions: watch::Sender<Conditions>,
    pub cgroup_root: PathBuf,
    pub log_dir: PathBuf,
}

impl RuntimeCtx {
    pub fn node(reaper: Arc<Reaper>) -> RuntimeCtx {
        let (conditions, _) = watch::channel(Conditions::default());
        RuntimeCtx {
            reaper,
            conditions,
            cgroup_root: PathBuf::from(crate::cgroup::CGROUP_ROOT),
            log_dir: PathBuf::from(LOG_DIR),
        }
    }
}

/// The services the config asks for. `k3s_present`: the image has k3s.
pub fn specs(config: &MachineConfig, ctr: &Ctr) -> Result<Vec<ServiceSpec>, String> {
    let mut specs = Vec::new();
    specs.push(ServiceSpec {
        args: vec!["--config".into(), rc::CONTAINERD_CONFIG_PATH.into()],
        conditions: vec![Condition::DataMounted],
        health: Health::probe(Arc::new(ContainerdProbe::new(&ctr.socket))),
        kill_mode: KillMode::Process,
        ..ServiceSpec::new("containerd", CONTAINERD_BINARY)
    });
    if let Some(argv) = rc::k3s_argv(config) {
        let probe = HttpGet::new(K3S_HEALTH_URL)?;
        specs.push(ServiceSpec {
            args: argv,
            deps: vec!["containerd".into()],
            conditions: vec![Condition::DataMounted, Condition::NetworkUp, Condition::ImagesReady],
            health: Health::Probe {
                probe: Arc::new(probe),
                interval: Duration::from_secs(3),
                timeout: Duration::from_secs(3),
            },
            kill_mode: KillMode::Process,
            stop_timeout: Duration::from_secs(30),
            ..ServiceSpec::new("k3s", paths::K3S_BINARY)
        });
    }
    for c in &config.containers {
        let argv = containerd::run_argv(ctr, c, &RunOptions::default()).map_err(|e| e.to_string())?;
        let (program, args) = argv.split_first().ok_or("empty ctr command")?;
        specs.push(ServiceSpec {
            args: args.to_vec(),
            deps: vec!["containerd".into()],
            conditions: vec![Condition::DataMounted, Condition::ImagesReady],
            restart: match c.restart {
                RestartPolicy::Always => Restart::Always,
                RestartPolicy::OnFailure => Restart::OnFailure,
            },
            backoff: Backoff::default(),
            pre_start: containerd::cleanup_argv(ctr, &containerd::container_id(c)),
            ..ServiceSpec::new(c.name.clone(), program)
        });
    }
    Ok(specs)
}

/// Write the rendered files below `root` (`/` on the node).
pub fn write_files(root: &Path, config: &MachineConfig, facts: &NodeFacts) -> Result<Vec<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut written = Vec::new();
    for f in rc::files(config, facts) {
        let path = root.join(f.path.trim_start_matches('/'));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        std::fs::write(&path, f.contents.as_bytes()).map_err(|e| format!("write {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        written.push(f.path);
    }
    Ok(written)
}

/// The sysctls Kubernetes needs, written under `proc_sys`; failures named.
pub fn set_sysctls(proc_sys: &Path) -> Vec<String> {
    let mut failed = Vec::new();
    for (key, value) in rc::REQUIRED_SYSCTLS {
        let path = proc_sys.join(key.replace('.', "/"));
        if let Err(e) = std::fs::write(&path, value) {
            failed.push(format!("{key} = {value}: {e}"));
        }
    }
    failed
}

/// The archives to import: (archive, namespace).
pub fn archives(config: &MachineConfig, images_dir: &Path, k3s_images_dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    if config.kubernetes.is_some() {
        if let Ok(items) = std::fs::read_dir(k3s_images_dir) {
            let mut files: Vec<PathBuf> = items.flatten().map(|i| i.path()).filter(|p| p.is_file()).collect();
            files.sort();
            out.extend(files.into_iter().map(|p| (p, K8S_NAMESPACE)));
        }
    }
    for c in &config.containers {
        if let Some(archive) = &c.archive {
            out.push((images_dir.join(archive), SYSTEM_NAMESPACE));
        }
    }
    out
}

/// Import the baked images once containerd answers, then let the services
/// that need them start. A failed import is logged and the services start
/// anyway: their own failure is what `nodectl services` then shows.
pub async fn import_images(
    supervisor: Arc<Supervisor>,
    reaper: Arc<Reaper>,
    conditions: watch::Sender<Conditions>,
    archives: Vec<(PathBuf, &'static str)>,
) {
    let ctr = Ctr::node();
    match supervisor.wait_healthy("containerd", CONTAINERD_UP).await {
        Err(e) => error!("images: containerd is not up ({e}); nothing imported"),
        Ok(()) => {
            log_cri_view(&ctr.socket).await;
            let state = Path::new(containerd::IMPORT_STATE_DIR);
            for (archive, namespace) in &archives {
                match containerd::import_archive(&reaper, &ctr, namespace, archive, state).await {
                    Ok(r) => info!("images: {} into {namespace}: {:?}", archive.display(), r.outcome),
                    Err(e) => error!("images: {}: {e}", archive.display()),
                }
            }
        }
    }
    conditions.send_modify(|c| c.images_ready = true);
}

/// containerd's own view of the config it loaded (CRI status), in one line:
/// what an operator (and the tests) check the rendered files against.
async fn log_cri_view(socket: &Path) {
    match containerd::cri_status_config(socket).await {
        Ok(cri) => {
            // `pointer`, not indexing: PID 1's lints allow no indexing at all.
            let text = |at: &str| match cri.pointer(at) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "null".to_string(),
            };
            info!(
                "containerd: CRI config as loaded: registry.configPath={} cni.binDir={} cni.confDir={} snapshotter={} sandboxImage={}",
                text("/registry/configPath"),
                text("/cni/binDir"),
                text("/cni/confDir"),
                text("/containerd/snapshotter"),
                text("/sandboxImage"),
            );
        }
        Err(e) => warn!("containerd: reading its CRI config: {e}"),
    }
}

/// A system container's writable volume under /var or /run that does not
/// exist yet is created (0700), as runc refuses a missing bind source.
fn prepare_mount_sources(config: &MachineConfig) {
    use std::os::unix::fs::DirBuilderExt;
    for c in &config.containers {
        for m in c.mounts.iter().filter(|m| !m.readonly) {
            let source = Path::new(&m.source);
            let ours = m.source.starts_with("/var/") || m.source.starts_with("/run/");
            if ours && !source.exists() {
                match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(source) {
                    Ok(()) => info!("runtime: {}: created {}", c.name, m.source),
                    Err(e) => warn!("runtime: {}: creating {}: {e}", c.name, m.source),
                }
            }
        }
    }
}

/// Everything before the supervisor starts, then the supervisor.
pub fn start(
    ctx: &RuntimeCtx,
    config: &MachineConfig,
    facts: &NodeFacts,
    mut load: impl FnMut(&str) -> Result<(), String>,
) -> Result<Option<Arc<Supervisor>>, String> {
    if !Path::new(CONTAINERD_BINARY).exists() {
        warn!("runtime: this image has no {CONTAINERD_BINARY}; no services run");
        return Ok(None);
    }
    let written = write_files(Path::new("/"), config, facts)?;
    info!("runtime: wrote {}", written.join(", "));
    let mut missing = Vec::new();
    for module in rc::REQUIRED_MODULES {
        if let Err(e) = load(module) {
            missing.push(format!("{module} ({e})"));
        }
    }
    if !missing.is_empty() {
        warn!("runtime: modules not loaded: {}", missing.join(", "));
    }
    let failed = set_sysctls(Path::new(crate::config::sysctl::PROC_SYS));
    if !failed.is_empty() {
        warn!("runtime: sysctls not set: {}", failed.join("; "));
    }
    if config.kubernetes.is_some() && !Path::new(paths::K3S_BINARY).exists() {
        error!(
            "runtime: the config has a [kubernetes] section but this image has no {}; k3s cannot start",
            paths::K3S_BINARY
        );
    }
    prepare_mount_sources(config);
    let ctr = Ctr::node();
    let specs = specs(config, &ctr)?;
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let supervisor = Supervisor::new(
        ctx.reaper.clone(),
        ctx.cgroup_root.clone(),
        ctx.log_dir.clone(),
        ctx.conditions.subscribe(),
    )
    .start(specs)
    .map_err(|e| e.to_string())?;
    info!("runtime: supervising {}", names.join(", "));
    let archives = archives(config, Path::new(paths::IMAGES_DIR), Path::new(paths::K3S_IMAGES_DIR));
    tokio::spawn(import_images(
        supervisor.clone(),
        ctx.reaper.clone(),
        ctx.conditions.clone(),
        archives,
    ));
    Ok(Some(supervisor))
}
