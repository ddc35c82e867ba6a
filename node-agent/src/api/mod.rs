//! The node API, agent side: [`Node`] holds what the agent knows and
//! implements [`caisson_api::NodeOps`]; [`listener`] runs the HTTPS server
//! and restarts it when the mode, the config's `[api]`, the host name or
//! the addresses change; [`certs`] makes its TLS configuration; [`apply`]
//! is the config apply flow (validate, diff, persist, apply live, report).

pub mod apply;
pub mod certs;
pub mod listener;
pub mod upgrades;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use caisson_api::audit::AuditLog;
use caisson_api::server::{LogLines, UpgradeSource};
use caisson_api::types::{
    ApplyRequest, ApplyResponse, Health, RollbackRequest, RollbackResponse, ServiceStatus, UpgradeResponse, VersionInfo,
};
use caisson_api::{ApiError, Mode, NodeOps};
use caisson_config::MachineConfig;
use caisson_layout::paths::{BASE_CMDLINE, DATA_MOUNT, STATE_MOUNT};
use tokio::sync::{mpsc, Notify};
use tracing::{error, info, warn};

use crate::coldplug::KernelModules;
use crate::config::source::{self, BootConfig, Source};
use crate::config::tryout::TryWindow;
use crate::config::{plan, sysctl, ApplyPlan, LiveStep};
use crate::network::NetworkBackend;
use crate::power::{self, ShutdownAction, ShutdownReason};
use crate::store::ConfigStore;
use crate::{bootentry, etc, health, logs, mounts, reset};

/// Facts about this boot that never change while it runs.
#[derive(Debug, Clone)]
pub struct Facts {
    pub image_version: String,
    pub slot: String,
    /// A live boot (`caisson.live`): STATE and DATA in memory, no slot to
    /// upgrade or roll back to.
    pub live: bool,
    pub kernel: String,
    /// Used when the config names no host name.
    pub default_hostname: String,
}

/// Where the agent reads and writes; tests may point them elsewhere.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
    pub var: PathBuf,
    pub etc: PathBuf,
    pub proc_sys: PathBuf,
    pub embedded_config: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            state: PathBuf::from(STATE_MOUNT),
            var: PathBuf::from(DATA_MOUNT),
            etc: PathBuf::from("/etc"),
            proc_sys: PathBuf::from(sysctl::PROC_SYS),
            embedded_config: PathBuf::from(source::EMBEDDED_CONFIG),
        }
    }
}

/// What the agent does to the machine that a test cannot: set the kernel's
/// host name, ask what is mounted, and rewrite the boot entry on the ESP.
pub trait Host: Send + Sync + 'static {
    fn set_hostname(&self, name: &str) -> Result<(), String>;
    fn is_mounted(&self, path: &Path) -> bool;
    /// Put `args` into the running slot's boot entry; `load` loads a
    /// kernel module that mounting the ESP needs.
    fn write_boot_entry(
        &self,
        args: &[String],
        load: &mut dyn FnMut(&'static str) -> Result<(), String>,
    ) -> Result<bootentry::Outcome, String>;
    /// Whether this boot ran with other arguments than the image's base
    /// command line and `args` (or cannot tell).
    fn booted_without(&self, args: &[String]) -> bool;
}

/// The real machine.
pub struct RealHost;

impl Host for RealHost {
    fn set_hostname(&self, name: &str) -> Result<(), String> {
        nix::unistd::sethostname(name).map_err(|e| format!("sethostname({name}): {e}"))
    }

    fn is_mounted(&self, path: &Path) -> bool {
        mounts::current_mounts()
            .map(|table| mounts::mountinfo::is_mount_point(&table, path))
            .unwrap_or(false)
    }

    fn write_boot_entry(
        &self,
        args: &[String],
        load: &mut dyn FnMut(&'static str) -> Result<(), String>,
    ) -> Result<bootentry::Outcome, String> {
        bootentry::update(args, load).map_err(|e| e.to_string())
    }

    fn booted_without(&self, args: &[String]) -> bool {
        let Ok(base) = bootentry::read_base(Path::new(BASE_CMDLINE)) else {
            return true;
        };
        let Ok(running) = std::fs::read_to_string("/proc/cmdline") else {
            return true;
        };
        let wanted: Vec<String> = base.into_iter().chain(args.iter().cloned()).collect();
        bootentry::extra_words(&running) != wanted
    }
}

/// The config the node runs.
#[derive(Debug, Clone)]
pub struct Active {
    pub config: Arc<MachineConfig>,
    pub text: Arc<str>,
    pub source: Source,
}

/// For health and the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigState {
    /// Running a config; `errors` are settings that failed at boot.
    Applied { source: String, errors: Vec<String> },
    /// Waiting for one; `why` is "no machine config" or what was wrong.
    Maintenance { why: String },
}

/// What quick, synchronous reads need (version, health, config get).
#[derive(Debug, Clone)]
pub struct Status {
    pub mode: Mode,
    pub hostname: String,
    pub config: ConfigState,
    pub redacted: Option<String>,
    pub api: Option<caisson_config::Api>,
    /// How the API serves, while it does.
    pub serving: Option<String>,
}

/// Guarded by an async lock: one apply, confirm or revert at a time.
pub(crate) struct Running {
    pub current: Option<Active>,
    pub tryout: TryWindow<Active>,
}

pub struct Node {
    pub facts: Facts,
    pub paths: Paths,
    pub(crate) store: ConfigStore,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) network: Arc<dyn NetworkBackend>,
    host: Box<dyn Host>,
    modules: Mutex<Option<KernelModules>>,
    power: mpsc::Sender<power::Request>,
    pub(crate) running: tokio::sync::Mutex<Running>,
    status: Mutex<Status>,
    /// The services (containerd, k3s), once started.
    supervisor: std::sync::OnceLock<Arc<crate::supervisor::Supervisor>>,
    runtime: Mutex<Option<crate::runtime::RuntimeCtx>>,
    /// Wakes the listener to re-issue its certificate and restart.
    pub(crate) api_restart: Notify,
    resetting: AtomicBool,
    pub(crate) upgrades: crate::upgrade::Upgrades,
    pub(crate) me: Weak<Node>,
}

impl Node {
    pub fn new(
        facts: Facts,
        paths: Paths,
        network: Arc<dyn NetworkBackend>,
        host: Box<dyn Host>,
        modules: Option<KernelModules>,
        power: mpsc::Sender<power::Request>,
    ) -> Arc<Node> {
        let status = Status {
            mode: Mode::Maintenance,
            hostname: facts.default_hostname.clone(),
            config: ConfigState::Maintenance {
                why: "no machine config".into(),
            },
            redacted: None,
            api: None,
            serving: None,
        };
        let upgrades = crate::upgrade::Upgrades::new(
            facts.slot.parse().unwrap_or(caisson_layout::Slot::A),
            &paths.state,
        );
        Arc::new_cyclic(|me| Node {
            store: ConfigStore::new(&paths.state),
            audit: Arc::new(AuditLog::new(paths.state.join(reset::AUDIT_LOG))),
            facts,
            paths,
            network,
            host,
            modules: Mutex::new(modules),
            power,
            running: tokio::sync::Mutex::new(Running {
                current: None,
                tryout: TryWindow::default(),
            }),
            status: Mutex::new(status),
            supervisor: std::sync::OnceLock::new(),
            runtime: Mutex::new(None),
            api_restart: Notify::new(),
            resetting: AtomicBool::new(false),
            upgrades,
            me: me.clone(),
        })
    }

    pub fn status(&self) -> Status {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What starting the services needs; set once at boot.
    pub fn set_runtime(&self, ctx: crate::runtime::RuntimeCtx) {
        *self.runtime.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx);
    }

    /// The supervisor, once services run.
    pub fn supervisor(&self) -> Option<Arc<crate::supervisor::Supervisor>> {
        self.supervisor.get().cloned()
    }

    /// Start the services `config` asks for, once per boot; the names of
    /// those started (empty: the image has no containerd).
    pub(crate) fn start_services(&self, config: &MachineConfig) -> Result<Vec<String>, String> {
        if let Some(s) = self.supervisor.get() {
            return Ok(s.names().iter().map(|n| n.to_string()).collect());
        }
        let guard = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        // Without a runtime (the agent's own tests) there is nothing to run.
        let Some(ctx) = guard.as_ref() else {
            return Ok(Vec::new());
        };
        let data = self.host.is_mounted(&self.paths.var);
        ctx.conditions.send_modify(|c| {
            c.data_mounted = data;
            c.network_up = true;
            c.time_sane = true;
        });
        let facts = caisson_runtime_config::NodeFacts {
            hostname: self.hostname_for(config),
            addresses: Vec::new(),
        };
        match crate::runtime::start(ctx, config, &facts, |name| self.load_module(name))? {
            None => Ok(Vec::new()),
            Some(supervisor) => {
                let names = supervisor.names().iter().map(|n| n.to_string()).collect();
                self.set_supervisor(supervisor);
                Ok(names)
            }
        }
    }

    /// Phase `services`: with a config, start them.
    pub async fn start_boot_services(&self) -> Result<String, String> {
        let config = self.running.lock().await.current.as_ref().map(|a| a.config.clone());
        match config {
            None => Ok("none: no machine config yet".into()),
            Some(c) => self.start_services(&c).map(|names| {
                if names.is_empty() {
                    "none: this image has no containerd".to_string()
                } else {
                    names.join(", ")
                }
            }),
        }
    }

    /// Serve the supervisor's services: `services`, `restart` and their logs.
    pub fn set_supervisor(&self, supervisor: Arc<crate::supervisor::Supervisor>) {
        if self.supervisor.set(supervisor).is_err() {
            warn!("api: a supervisor is already set; keeping the first");
        }
    }

    pub(crate) fn set_serving(&self, serving: Option<String>) {
        self.lock_status().serving = serving;
    }

    /// The config's host name, else the one the network offers (DHCP,
    /// `ip=`), else the default derived from the machine-id.
    pub(crate) fn hostname_for(&self, config: &MachineConfig) -> String {
        config
            .machine
            .hostname
            .clone()
            .unwrap_or_else(|| self.unconfigured_hostname().0)
    }

    /// The host name when the config names none, and where it comes from.
    fn unconfigured_hostname(&self) -> (String, String) {
        match self.network.learned().borrow().hostname.clone() {
            Some(learned) => (learned.name, learned.from),
            None => (
                self.facts.default_hostname.clone(),
                "derived from the machine-id".into(),
            ),
        }
    }

    /// Follow what the network learns on its own: the offered host name
    /// (used when the config names none) and address changes (the API
    /// looks at its certificate at once instead of at its next poll).
    pub async fn follow_network(self: Arc<Self>) {
        let mut learned = self.network.learned();
        let mut hostname = learned.borrow_and_update().hostname.clone();
        while learned.changed().await.is_ok() {
            let now = learned.borrow_and_update().hostname.clone();
            if now != hostname {
                hostname = now;
                self.adopt_offered_hostname().await;
            }
            self.api_restart.notify_one();
        }
    }

    async fn adopt_offered_hostname(&self) {
        // Under the config lock, so an apply cannot interleave.
        let running = self.running.lock().await;
        let config = running.current.as_ref().map(|a| a.config.clone());
        if config
            .as_ref()
            .is_some_and(|c| c.machine.hostname.is_some())
        {
            return;
        }
        let (name, from) = self.unconfigured_hostname();
        if name == self.status().hostname {
            return;
        }
        let extra = config.as_deref().map(extra_hosts).unwrap_or_default();
        match self.set_hostname_to(&name, &extra) {
            Ok(()) => info!("hostname: {name} ({from})"),
            Err(e) => warn!("hostname: {e}"),
        }
    }

    /// Make `active` the running config in memory (None: maintenance mode
    /// because `why`). A change of mode restarts the listener.
    pub(crate) fn make_current(&self, running: &mut Running, active: Option<Active>, why: &str) {
        let mut status = self.lock_status();
        let mode = if active.is_some() {
            Mode::Normal
        } else {
            Mode::Maintenance
        };
        let restart = status.mode != mode;
        status.mode = mode;
        match &active {
            Some(a) => {
                status.redacted = Some(caisson_config::redact::redacted_toml(&a.config));
                status.api = Some(a.config.api.clone());
                status.config = ConfigState::Applied {
                    source: a.source.short().to_string(),
                    errors: Vec::new(),
                };
            }
            None => {
                status.redacted = None;
                status.api = None;
                status.config = ConfigState::Maintenance {
                    why: why.to_string(),
                };
            }
        }
        drop(status);
        running.current = active;
        if restart {
            self.api_restart.notify_one();
        }
    }

    fn record_boot_errors(&self, errors: Vec<String>) {
        if let ConfigState::Applied { errors: e, .. } = &mut self.lock_status().config {
            *e = errors;
        }
    }

    /// Phase `config`: find the boot config, apply what is not network or
    /// API (those have their own phases). Err: the phase failed.
    pub async fn load_boot_config(&self, state_mounted: bool) -> Result<String, String> {
        if state_mounted {
            match self.store.clean_temp_files() {
                Ok(removed) if !removed.is_empty() => {
                    warn!(
                        "config: removed temporary files an interrupted write left: {}",
                        removed.join(", ")
                    )
                }
                Ok(_) => {}
                Err(e) => warn!("config: {e}"),
            }
        } else {
            warn!("config: STATE is not mounted; looking only at the image's config");
        }
        let store = state_mounted.then_some(&self.store);
        let mut running = self.running.lock().await;
        // Neither STATE nor the image: the platform's sources (saved on STATE when found).
        let found = match source::find(store, &self.paths.embedded_config) {
            BootConfig::None => self.platform_boot_config(store).await,
            other => other,
        };
        match found {
            BootConfig::Found {
                source,
                config,
                text,
            } => {
                info!("config: using the machine config from {source}");
                let config: Arc<MachineConfig> = Arc::from(config);
                let active = Active {
                    config: config.clone(),
                    text: Arc::from(text),
                    source: source.clone(),
                };
                self.make_current(&mut running, Some(active), "");
                drop(running);
                let p = plan(None, &config);
                // The arguments are for this boot's entry, handled below.
                for r in p
                    .needs_reboot
                    .iter()
                    .filter(|r| !apply::is_args_sentence(r))
                {
                    warn!("config: {r}");
                }
                if self.host.booted_without(&config.kernel.args) {
                    let said = self.write_kernel_args(&config.kernel.args);
                    info!("config: {said}");
                }
                for n in &p.notes {
                    info!("config: {n}");
                }
                let mut errors = Vec::new();
                for step in p
                    .live
                    .iter()
                    .filter(|s| !matches!(s, LiveStep::Network | LiveStep::Api | LiveStep::Services))
                {
                    match self.run_step(step, &config).await {
                        Ok(lines) => lines.iter().for_each(|l| info!("config: {l}")),
                        Err(e) => {
                            error!("config: {e}");
                            errors.push(e);
                        }
                    }
                }
                let failed = errors.len();
                self.record_boot_errors(errors);
                match failed {
                    0 => Ok(format!("applied from {}", source.short())),
                    n => Err(format!(
                        "{n} setting(s) of the config from {} failed (see above)",
                        source.short()
                    )),
                }
            }
            BootConfig::Invalid { source, errors } => {
                error!("config: invalid machine config from {source}; the node stays in maintenance mode:");
                for e in errors.iter() {
                    error!("config:   {e}");
                }
                let why = format!("invalid machine config from {}", source.short());
                self.make_current(&mut running, None, &why);
                Err(why)
            }
            BootConfig::Unreadable { source, error } => {
                error!("config: cannot read the machine config from {source}: {error}; the node stays in maintenance mode");
                let why = format!("unreadable machine config from {}", source.short());
                self.make_current(&mut running, None, &why);
                Err(why)
            }
            BootConfig::None => {
                info!(
                    "config: no machine config on STATE, in the image ({}) or from the platform: maintenance mode",
                    self.paths.embedded_config.display()
                );
                self.make_current(&mut running, None, "no machine config");
                Ok("none: maintenance mode".into())
            }
        }
    }

    /// Phase `network`.
    pub async fn bring_up_network(&self) -> Result<(), String> {
        let config = self
            .running
            .lock()
            .await
            .current
            .as_ref()
            .map(|a| a.config.clone());
        let report = self
            .network
            .apply(config.as_ref().map(|c| &c.network))
            .await
            .map_err(|e| e.to_string())?;
        for line in report.lines {
            info!("network: {line}");
        }
        Ok(())
    }

    /// Refuse a config the kernel cannot take, before anything changes.
    pub(crate) fn preflight(&self, plan: &ApplyPlan) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for step in &plan.live {
            match step {
                LiveStep::Sysctls(keys) => {
                    for k in keys {
                        if let Err(e) = sysctl::check_exists(&self.paths.proc_sys, k) {
                            problems.push(e.to_string());
                        }
                    }
                }
                LiveStep::Modules(names) => {
                    let modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(m) = modules.as_ref() {
                        for n in names.iter().filter(|n| !m.loader.index().contains(n)) {
                            problems.push(format!(
                                "kernel.modules: no module named {n:?} in this image"
                            ));
                        }
                    }
                }
                LiveStep::Hostname | LiveStep::Network | LiveStep::Api | LiveStep::Services => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Carry out one live step; its lines, or an error naming the key.
    pub(crate) async fn run_step(
        &self,
        step: &LiveStep,
        new: &MachineConfig,
    ) -> Result<Vec<String>, String> {
        let hostname = self.hostname_for(new);
        let said = || ApplyPlan::describe(step, new, &hostname);
        match step {
            LiveStep::Hostname => {
                self.set_hostname(&hostname, new)?;
                Ok(said())
            }
            LiveStep::Sysctls(keys) => {
                for k in keys {
                    let value = new
                        .kernel
                        .sysctls
                        .get(k)
                        .map(|v| v.render())
                        .unwrap_or_default();
                    sysctl::write(&self.paths.proc_sys, k, &value).map_err(|e| e.to_string())?;
                }
                Ok(said())
            }
            LiveStep::Modules(names) => {
                self.load_modules(names)?;
                Ok(said())
            }
            LiveStep::Network => {
                let report = self
                    .network
                    .apply(Some(&new.network))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(report
                    .lines
                    .into_iter()
                    .map(|l| format!("network: {l}"))
                    .collect())
            }
            LiveStep::Api => {
                self.api_restart.notify_one();
                Ok(said())
            }
            LiveStep::Services => self.start_services(new).map(|names| {
                vec![if names.is_empty() {
                    "services: none (no containerd on this node)".to_string()
                } else {
                    format!("services: started {}", names.join(", "))
                }]
            }),
        }
    }

    fn set_hostname(&self, name: &str, config: &MachineConfig) -> Result<(), String> {
        self.set_hostname_to(name, &extra_hosts(config))
            .map_err(|e| format!("machine.hostname: {e}"))
    }

    fn set_hostname_to(&self, name: &str, extra: &[(IpAddr, Vec<String>)]) -> Result<(), String> {
        self.host.set_hostname(name)?;
        etc::write_hostname(&self.paths.etc, name, extra).map_err(|e| e.to_string())?;
        self.lock_status().hostname = name.to_string();
        Ok(())
    }

    fn load_modules(&self, names: &[String]) -> Result<(), String> {
        for n in names {
            self.load_module(n)
                .map_err(|e| format!("kernel.modules: {n}: {e}"))?;
        }
        Ok(())
    }

    /// Load `name` and what it depends on, through the module index read
    /// at boot (the ESP's FAT modules, Kubernetes' modules, the config's).
    pub(crate) fn load_module(&self, name: &str) -> Result<(), String> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let m = modules
            .as_mut()
            .ok_or("the module index could not be read at boot (see phase coldplug)")?;
        m.loader
            .load_with_deps(name)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Where shutdown requests go (the installer's reboot).
    pub(crate) fn power_requests(&self) -> mpsc::Sender<power::Request> {
        self.power.clone()
    }

    pub(crate) fn state_mounted(&self) -> bool {
        self.host.is_mounted(&self.paths.state)
    }

    pub async fn health_now(&self) -> Health {
        let status = self.status();
        health::checks(
            &status,
            self.host.is_mounted(&self.paths.state),
            self.host.is_mounted(&self.paths.var),
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| crate::boot::vm_rss_kb(&s)),
        )
    }

    fn reset_now(&self) -> Result<(), ApiError> {
        // Not while an apply holds the config.
        let running = self.running.try_lock().map_err(|_| {
            ApiError::Conflict("a config apply is in progress; reset afterwards".into())
        })?;
        if self.resetting.swap(true, Ordering::SeqCst) {
            return Err(ApiError::Conflict("a reset is already under way".into()));
        }
        warn!(
            "reset: wiping STATE (all but the audit log) and {}, then rebooting into maintenance mode",
            self.paths.var.display()
        );
        let removed = reset::empty_dir(&self.paths.state, reset::KEEP_ON_STATE).map_err(|e| {
            self.resetting.store(false, Ordering::SeqCst);
            ApiError::Internal(e.to_string())
        })?;
        nix::unistd::sync();
        drop(running);
        info!("reset: removed {removed} entries from STATE");
        let var = self.paths.var.clone();
        let requests = self.power.clone();
        tokio::spawn(async move {
            tokio::time::sleep(power::API_GRACE).await;
            match tokio::task::spawn_blocking(move || reset::empty_dir(&var, reset::KEEP_ON_DATA))
                .await
            {
                Ok(Ok(n)) => info!("reset: removed {n} entries from /var"),
                Ok(Err(e)) => error!("{e}; rebooting anyway"),
                Err(e) => error!("reset: wiping /var: {e}; rebooting anyway"),
            }
            let request = power::Request {
                action: ShutdownAction::Reboot,
                reason: ShutdownReason::Api,
            };
            if requests.send(request).await.is_err() {
                error!("reset: the shutdown path is gone; reboot the node by hand");
            }
        });
        Ok(())
    }

    pub(crate) fn is_resetting(&self) -> bool {
        self.resetting.load(Ordering::SeqCst)
    }
}

/// The config's `network.hosts`, for /etc/hosts.
fn extra_hosts(config: &MachineConfig) -> Vec<(IpAddr, Vec<String>)> {
    config
        .network
        .hosts
        .iter()
        .map(|h| (h.ip, h.names.clone()))
        .collect()
}

#[cfg(test)]
mod tests;

impl NodeOps for Node {
    fn version(&self) -> VersionInfo {
        let status = self.status();
        let (slots, last_upgrade) = if self.facts.live {
            // No disk: no slots, no upgrade history.
            (Vec::new(), None)
        } else {
            self.upgrades.slots_view(&self.facts.image_version)
        };
        VersionInfo {
            image_version: self.facts.image_version.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            slot: self.facts.slot.clone(),
            live: self.facts.live,
            kernel: self.facts.kernel.clone(),
            hostname: status.hostname,
            maintenance: status.mode == Mode::Maintenance,
            slots,
            last_upgrade,
        }
    }

    async fn health(&self) -> Health {
        self.health_now().await
    }

    fn config_redacted(&self) -> Option<String> {
        self.status().redacted
    }

    async fn apply_config(&self, req: ApplyRequest) -> Result<ApplyResponse, ApiError> {
        self.apply(req).await
    }

    async fn confirm_config(&self) -> Result<(), ApiError> {
        self.confirm().await
    }

    fn services(&self) -> Vec<ServiceStatus> {
        self.supervisor
            .get()
            .map(|s| s.status())
            .unwrap_or_default()
    }

    async fn restart_service(&self, name: &str) -> Result<(), ApiError> {
        match self.supervisor.get() {
            Some(supervisor) => supervisor.restart(name).await.map_err(ApiError::from),
            None => Err(ApiError::NotFound(format!(
                "service {name:?} (this node runs no services yet)"
            ))),
        }
    }

    fn logs(&self, source: &str, tail: usize, follow: bool) -> Result<LogLines, ApiError> {
        match source {
            "agent" if follow => Ok(logs::agent_log().follow(tail)),
            "agent" => Ok(logs::agent_log().history(tail)),
            "kernel" => logs::kmsg::stream(tail, follow)
                .map_err(|e| ApiError::Internal(format!("reading {}: {e}", logs::kmsg::DEV_KMSG))),
            other => match self.supervisor.get().and_then(|s| s.logs(other)) {
                Some(ring) if follow => Ok(ring.follow(tail)),
                Some(ring) => Ok(ring.history(tail)),
                None => {
                    let services = self.supervisor.get().map(|s| s.names()).unwrap_or_default();
                    let sources: Vec<&str> =
                        ["agent", "kernel"].into_iter().chain(services).collect();
                    Err(ApiError::NotFound(format!(
                        "log source {other:?} (sources: {})",
                        sources.join(", ")
                    )))
                }
            },
        }
    }
    fn reboot(&self) -> Result<(), ApiError> {
        power::request_from_api(&self.power, ShutdownAction::Reboot);
        Ok(())
    }

    fn shutdown(&self) -> Result<(), ApiError> {
        power::request_from_api(&self.power, ShutdownAction::PowerOff);
        Ok(())
    }

    fn reset(&self) -> Result<(), ApiError> {
        self.reset_now()
    }

    async fn upgrade(
        &self,
        source: UpgradeSource,
        options: caisson_api::server::UpgradeOptions,
        by: String,
    ) -> Result<UpgradeResponse, ApiError> {
        self.upgrade_now(source, options, by).await
    }

    fn kubeconfig(&self) -> Result<String, ApiError> {
        // While an apply holds the config the role cannot be checked; the
        // file's presence still answers.
        let kubernetes = match self.running.try_lock() {
            Ok(r) => Some(r.current.as_ref().and_then(|a| a.config.kubernetes.clone()).ok_or_else(|| {
                ApiError::NotFound("kubeconfig: this node's config has no [kubernetes] section".into())
            })?),
            Err(_) => None,
        };
        if kubernetes.is_some_and(|k| k.role == caisson_config::KubernetesRole::Agent) {
            return Err(ApiError::Conflict(
                "kubeconfig: this node is a k3s agent, which holds no admin kubeconfig; ask a server node".into(),
            ));
        }
        let path = caisson_runtime_config::K3S_KUBECONFIG_PATH;
        std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::Conflict(format!(
                "kubeconfig: k3s has not written {path} yet (see `nodectl services` and `nodectl logs k3s`)"
            )),
            _ => ApiError::Internal(format!("kubeconfig: reading {path}: {e}")),
        })
    }

    async fn rollback(&self, req: RollbackRequest, by: String) -> Result<RollbackResponse, ApiError> {
        self.rollback_now(req, by).await
    }
}
