//! The apply flow, end to end in-process: a real [`Node`] on temporary
//! directories (STATE, /etc, /proc/sys), with a fake network and a fake
//! host name, driven through [`NodeOps`] as the API server drives it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caisson_api::types::{ApplyMode, ApplyRequest};
use caisson_api::{ApiError, Mode, NodeOps};
use caisson_config::Network;
use tokio::sync::mpsc;

use super::*;
use tokio::sync::watch;

use crate::network::{
    BoxFuture, Learned, LearnedHostname, NetworkBackend, NetworkError, NetworkReport,
};
use crate::power::{Request, ShutdownAction, ShutdownReason};

/// Fails for an interface named `bad0`, like a link that is not there.
struct FakeNet {
    applied: Mutex<Vec<Option<Network>>>,
    learned: watch::Sender<Learned>,
}

impl Default for FakeNet {
    fn default() -> FakeNet {
        FakeNet {
            applied: Mutex::default(),
            learned: watch::channel(Learned::default()).0,
        }
    }
}

impl FakeNet {
    /// As a DHCP lease that offers (or stops offering) a host name.
    fn offer_hostname(&self, name: Option<&str>) {
        self.learned.send_modify(|l| {
            l.hostname = name.map(|n| LearnedHostname {
                name: n.into(),
                from: "the DHCP lease on eth0".into(),
            });
            l.generation += 1;
        });
    }
}

impl NetworkBackend for FakeNet {
    fn apply<'a>(
        &'a self,
        network: Option<&'a Network>,
    ) -> BoxFuture<'a, Result<NetworkReport, NetworkError>> {
        Box::pin(async move {
            if network.is_some_and(|n| {
                n.interfaces
                    .iter()
                    .any(|i| i.name.as_deref() == Some("bad0"))
            }) {
                return Err(NetworkError::new(
                    "network.interfaces[0]",
                    "no link has name bad0",
                ));
            }
            self.applied.lock().unwrap().push(network.cloned());
            Ok(NetworkReport {
                lines: vec!["eth0: address 10.0.2.15/24".into()],
            })
        })
    }

    fn addresses(&self) -> BoxFuture<'_, Result<Vec<IpAddr>, NetworkError>> {
        Box::pin(async { Ok(vec!["127.0.0.1".parse().unwrap()]) })
    }

    fn learned(&self) -> watch::Receiver<Learned> {
        self.learned.subscribe()
    }
}

struct FakeHost {
    hostname: Arc<Mutex<String>>,
    state_mounted: bool,
    /// The args of each boot entry write.
    entry_args: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Host for FakeHost {
    fn set_hostname(&self, name: &str) -> Result<(), String> {
        *self.hostname.lock().unwrap() = name.to_string();
        Ok(())
    }
    fn is_mounted(&self, _: &Path) -> bool {
        self.state_mounted
    }
    fn write_boot_entry(
        &self,
        args: &[String],
        _: &mut dyn FnMut(&'static str) -> Result<(), String>,
    ) -> Result<crate::bootentry::Outcome, String> {
        self.entry_args.lock().unwrap().push(args.to_vec());
        Ok(crate::bootentry::Outcome::Written(ENTRY.to_string()))
    }
    fn booted_without(&self, _: &[String]) -> bool {
        false
    }
}

const ENTRY: &str = "caisson-0.1.0-a+3.conf";

struct Fixture {
    dir: tempfile::TempDir,
    node: Arc<Node>,
    net: Arc<FakeNet>,
    hostname: Arc<Mutex<String>>,
    entry_args: Arc<Mutex<Vec<Vec<String>>>>,
    power: mpsc::Receiver<Request>,
}

impl Fixture {
    fn new(state_mounted: bool) -> Fixture {
        Fixture::booted(state_mounted, false)
    }

    /// `live`: as on a `caisson.live` boot.
    fn booted(state_mounted: bool, live: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let paths = Paths {
            state: d.join("state"),
            var: d.join("var"),
            etc: d.join("etc"),
            proc_sys: d.join("sys"),
            embedded_config: d.join("embedded.toml"),
        };
        for p in [
            &paths.state,
            &paths.var,
            &paths.etc,
            &paths.proc_sys.join("vm"),
        ] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(paths.proc_sys.join("vm/swappiness"), "60\n").unwrap();
        let facts = Facts {
            image_version: "0.1.0".into(),
            slot: "a".into(),
            live,
            kernel: "6.1.0".into(),
            default_hostname: "caisson-0000abcd".into(),
        };
        let net = Arc::new(FakeNet::default());
        let hostname = Arc::new(Mutex::new(String::new()));
        let entry_args = Arc::new(Mutex::new(Vec::new()));
        let host = FakeHost {
            hostname: hostname.clone(),
            state_mounted,
            entry_args: entry_args.clone(),
        };
        let (tx, power) = mpsc::channel(4);
        let node = Node::new(facts, paths, net.clone(), Box::new(host), None, tx);
        Fixture {
            dir,
            node,
            net,
            hostname,
            entry_args,
            power,
        }
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(rel)).ok()
    }

    fn current(&self) -> Option<String> {
        self.read("state/config/current.toml")
    }

    async fn apply(
        &self,
        config: &str,
        mode: ApplyMode,
    ) -> Result<caisson_api::types::ApplyResponse, ApiError> {
        self.node
            .apply_config(ApplyRequest {
                config: config.into(),
                mode,
                dry_run: false,
                try_timeout_secs: None,
            })
            .await
    }
}

fn ca() -> &'static caisson_pki::CertKey {
    static CA: std::sync::OnceLock<caisson_pki::CertKey> = std::sync::OnceLock::new();
    CA.get_or_init(|| caisson_pki::generate_ca("test").unwrap())
}

fn config(hostname: &str, extra: &str) -> String {
    let ca = ca();
    format!(
        "version = 1\n[machine]\nhostname = \"{hostname}\"\n{extra}\n[api]\nca_cert = \"\"\"{}\"\"\"\nca_key = \"\"\"{}\"\"\"\n",
        ca.cert_pem, ca.key_pem
    )
}

#[tokio::test(flavor = "current_thread")]
async fn the_first_apply_in_maintenance_mode_persists_applies_live_and_leaves_maintenance() {
    let f = Fixture::new(true);
    assert!(f.node.version().maintenance);
    assert_eq!(f.node.config_redacted(), None);
    let text = config("node-1", "[kernel.sysctls]\n\"vm.swappiness\" = 10");
    let r = f.apply(&text, ApplyMode::Auto).await.unwrap();
    assert!(r.changes.iter().any(|c| c.path == "machine.hostname"));
    assert!(
        r.applied.contains(&"machine.hostname: node-1".to_string()),
        "{:?}",
        r.applied
    );
    assert!(r
        .applied
        .contains(&"kernel.sysctls.\"vm.swappiness\" = 10".to_string()));
    assert!(r
        .applied
        .contains(&"network: eth0: address 10.0.2.15/24".to_string()));
    assert!(r.needs_reboot.is_empty());
    assert_eq!(f.current().as_deref(), Some(text.as_str()));
    assert_eq!(f.read("sys/vm/swappiness").as_deref(), Some("10\n"));
    assert_eq!(f.read("etc/hostname").as_deref(), Some("node-1\n"));
    assert_eq!(*f.hostname.lock().unwrap(), "node-1");
    let v = f.node.version();
    assert!(!v.maintenance);
    assert_eq!(v.hostname, "node-1");
    let redacted = f.node.config_redacted().unwrap();
    assert!(
        redacted.contains("node-1") && !redacted.contains("PRIVATE KEY"),
        "{redacted}"
    );
    assert_eq!(f.node.status().mode, Mode::Normal);
    assert_eq!(f.net.applied.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn dry_runs_and_refusals_change_nothing() {
    let f = Fixture::new(true);
    let first = config("node-1", "");
    f.apply(&first, ApplyMode::Auto).await.unwrap();

    let with_args = config("node-2", "[kernel]\nargs = [\"mitigations=off\"]");
    let dry = f
        .node
        .apply_config(ApplyRequest {
            config: with_args.clone(),
            mode: ApplyMode::NoReboot,
            dry_run: true,
            try_timeout_secs: None,
        })
        .await
        .unwrap();
    assert!(dry.dry_run && dry.applied.is_empty());
    assert_eq!(dry.changes.len(), 2, "{:?}", dry.changes);
    assert!(
        dry.needs_reboot[0].starts_with("kernel.args"),
        "{:?}",
        dry.needs_reboot
    );

    let e = f.apply(&with_args, ApplyMode::NoReboot).await.unwrap_err();
    assert!(
        matches!(&e, ApiError::Conflict(m) if m.contains("kernel.args")),
        "{e}"
    );

    let e = f
        .apply(&config("bad_name", ""), ApplyMode::Auto)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::InvalidConfig(m) if m.contains("machine.hostname")),
        "{e}"
    );
    let e = f
        .apply(
            &config("node-3", "[kernel.sysctls]\n\"vm.nope\" = 1"),
            ApplyMode::Auto,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::InvalidConfig(m) if m.contains("kernel.sysctls.\"vm.nope\": no such sysctl")),
        "{e}"
    );

    assert_eq!(f.current().as_deref(), Some(first.as_str()));
    assert_eq!(f.read("etc/hostname").as_deref(), Some("node-1\n"));
    assert_eq!(f.node.version().hostname, "node-1");
}

#[tokio::test(flavor = "current_thread")]
async fn a_live_failure_restores_the_previous_config_on_state_and_live() {
    let f = Fixture::new(true);
    let first = config("node-1", "");
    f.apply(&first, ApplyMode::Auto).await.unwrap();
    let broken = config(
        "node-2",
        "[[network.interfaces]]\nname = \"bad0\"\naddresses = [\"10.9.9.9/24\"]",
    );
    let e = f.apply(&broken, ApplyMode::Auto).await.unwrap_err();
    assert!(
        matches!(&e, ApiError::InvalidConfig(m) if m.contains("bad0") && m.contains("previous config was restored")),
        "{e}"
    );
    assert_eq!(f.current().as_deref(), Some(first.as_str()));
    assert_eq!(
        f.read("state/config/previous.toml"),
        None,
        "previous is what ran before `first`: nothing"
    );
    assert_eq!(f.read("etc/hostname").as_deref(), Some("node-1\n"));
    assert!(f.node.config_redacted().unwrap().contains("node-1"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_first_config_failing_live_leaves_the_node_in_maintenance_mode() {
    let f = Fixture::new(true);
    let broken = config("node-2", "[[network.interfaces]]\nname = \"bad0\"");
    f.apply(&broken, ApplyMode::Auto).await.unwrap_err();
    assert_eq!(f.current(), None);
    assert!(f.node.version().maintenance);
}

#[tokio::test(flavor = "current_thread")]
async fn try_mode_reverts_when_not_confirmed_in_time() {
    let f = Fixture::new(true);
    let first = config("node-1", "");
    f.apply(&first, ApplyMode::Auto).await.unwrap();
    let tried = config("node-try", "");
    let r = f
        .node
        .apply_config(ApplyRequest {
            config: tried,
            mode: ApplyMode::Try,
            dry_run: false,
            try_timeout_secs: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(r.confirm_within_secs, Some(1));
    assert_eq!(f.node.version().hostname, "node-try");
    assert_eq!(
        f.current().as_deref(),
        Some(first.as_str()),
        "try does not persist"
    );
    let e = f
        .apply(&config("node-x", ""), ApplyMode::Auto)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Conflict(m) if m.contains("waiting for confirmation")),
        "{e}"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.node.version().hostname, "node-1");
    assert_eq!(f.read("etc/hostname").as_deref(), Some("node-1\n"));
    assert!(f.node.config_redacted().unwrap().contains("node-1"));
    let e = f.node.confirm_config().await.unwrap_err();
    assert!(matches!(e, ApiError::Conflict(_)), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_confirmed_try_is_saved_and_keeps_running() {
    let f = Fixture::new(true);
    let first = config("node-1", "");
    f.apply(&first, ApplyMode::Auto).await.unwrap();
    let tried = config("node-try", "");
    f.node
        .apply_config(ApplyRequest {
            config: tried.clone(),
            mode: ApplyMode::Try,
            dry_run: false,
            try_timeout_secs: Some(1),
        })
        .await
        .unwrap();
    f.node.confirm_config().await.unwrap();
    assert_eq!(f.current().as_deref(), Some(tried.as_str()));
    assert_eq!(
        f.read("state/config/previous.toml").as_deref(),
        Some(first.as_str())
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        f.node.version().hostname,
        "node-try",
        "the late timer does nothing"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn try_needs_a_running_config_and_staged_only_persists() {
    let f = Fixture::new(true);
    let e = f
        .apply(&config("node-1", ""), ApplyMode::Try)
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::BadRequest(_)), "{e}");
    let staged = config("node-1", "");
    let r = f.apply(&staged, ApplyMode::Staged).await.unwrap();
    assert!(r.applied.is_empty());
    assert!(
        r.needs_reboot
            .iter()
            .any(|n| n.starts_with("machine.hostname: node-1 (staged")),
        "{:?}",
        r.needs_reboot
    );
    assert_eq!(f.current().as_deref(), Some(staged.as_str()));
    assert!(
        f.node.version().maintenance,
        "staged takes effect at the next boot"
    );
    assert_eq!(f.read("etc/hostname"), None);
}

#[tokio::test(flavor = "current_thread")]
async fn reboot_mode_persists_then_asks_for_a_reboot_after_the_response() {
    let mut f = Fixture::new(true);
    f.apply(&config("node-1", ""), ApplyMode::Reboot)
        .await
        .unwrap();
    assert!(f.current().is_some());
    assert!(
        f.power.try_recv().is_err(),
        "not before the response is out"
    );
    let req = tokio::time::timeout(Duration::from_secs(2), f.power.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        req,
        Request {
            action: ShutdownAction::Reboot,
            reason: ShutdownReason::Api
        }
    );
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_is_applied_when_state_is_not_mounted() {
    let f = Fixture::new(false);
    let e = f
        .apply(&config("node-1", ""), ApplyMode::Auto)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Internal(m) if m.contains("STATE is not mounted")),
        "{e}"
    );
    assert!(f.node.version().maintenance);
}

#[tokio::test(flavor = "current_thread")]
async fn the_boot_config_comes_from_state_and_a_bad_one_means_maintenance() {
    let f = Fixture::new(true);
    let good = config("node-1", "[kernel.sysctls]\n\"vm.swappiness\" = 5");
    f.node.store.commit(&good, None).unwrap();
    f.node.load_boot_config(true).await.unwrap();
    assert_eq!(f.node.version().hostname, "node-1");
    assert_eq!(f.read("sys/vm/swappiness").as_deref(), Some("5\n"));
    assert!(!f.node.version().maintenance);

    let g = Fixture::new(true);
    g.node.store.commit(&config("bad_name", ""), None).unwrap();
    let e = g.node.load_boot_config(true).await.unwrap_err();
    assert_eq!(e, "invalid machine config from STATE");
    assert!(g.node.version().maintenance);
    let h = g.node.health_now().await;
    assert!(!h.ready);
    assert_eq!(
        h.checks[0].detail,
        "maintenance mode: invalid machine config from STATE"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn logs_services_and_reset() {
    let mut f = Fixture::new(true);
    assert!(f.node.services().is_empty());
    assert!(matches!(
        f.node.restart_service("k3s").await,
        Err(ApiError::NotFound(_))
    ));
    assert!(
        matches!(f.node.logs("nginx", 10, false), Err(ApiError::NotFound(m)) if m.contains("agent, kernel"))
    );
    crate::logs::agent_log().push("[   1.000] hello from the test\n");
    let mut rx = f.node.logs("agent", 1000, false).unwrap();
    let mut seen = false;
    while let Some(line) = rx.recv().await {
        seen |= line.contains("hello from the test");
    }
    assert!(seen);

    f.apply(&config("node-1", ""), ApplyMode::Auto)
        .await
        .unwrap();
    std::fs::write(f.dir.path().join("state/audit.jsonl"), "{}\n").unwrap();
    std::fs::create_dir_all(f.dir.path().join("var/lib/containerd")).unwrap();
    f.node.reset().unwrap();
    assert!(matches!(f.node.reset(), Err(ApiError::Conflict(_))));
    assert_eq!(f.current(), None);
    assert_eq!(f.read("state/audit.jsonl").as_deref(), Some("{}\n"));
    let req = tokio::time::timeout(Duration::from_secs(2), f.power.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.action, ShutdownAction::Reboot);
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("var")).unwrap().count(),
        0
    );
    let e = f
        .apply(&config("node-2", ""), ApplyMode::Auto)
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Conflict(_)));
}

/// Lets the spawned follower run until `hostname` reads `want`.
async fn hostname_becomes(f: &Fixture, want: &str) {
    for _ in 0..100 {
        if f.node.status().hostname == want {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "host name {:?}, expected {want:?}",
        f.node.status().hostname
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_offered_host_name_is_used_only_while_the_config_names_none() {
    let f = Fixture::new(true);
    tokio::spawn(f.node.clone().follow_network());
    tokio::task::yield_now().await;

    f.net.offer_hostname(Some("from-dhcp"));
    hostname_becomes(&f, "from-dhcp").await;
    assert_eq!(*f.hostname.lock().unwrap(), "from-dhcp");
    assert_eq!(f.read("etc/hostname").as_deref(), Some("from-dhcp\n"));

    f.apply(&config("node-1", ""), ApplyMode::Auto)
        .await
        .unwrap();
    assert_eq!(f.node.status().hostname, "node-1");
    f.net.offer_hostname(Some("other"));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(f.node.status().hostname, "node-1", "the config's name wins");

    let unnamed = config("x", "").replace("hostname = \"x\"\n", "");
    let r = f.apply(&unnamed, ApplyMode::Auto).await.unwrap();
    assert!(
        r.applied.contains(&"machine.hostname: other".to_string()),
        "{:?}",
        r.applied
    );
    assert_eq!(f.node.status().hostname, "other");

    f.net.offer_hostname(None);
    hostname_becomes(&f, "caisson-0000abcd").await;
}

#[tokio::test(flavor = "current_thread")]
async fn kernel_args_are_written_to_the_boot_entry_when_they_change_and_are_saved() {
    let f = Fixture::new(true);
    let with_args = config("node-1", "[kernel]\nargs = [\"nowatchdog\"]");
    let r = f.apply(&with_args, ApplyMode::Auto).await.unwrap();
    assert_eq!(
        r.needs_reboot,
        [format!(
            "kernel.args: written to the boot entry {ENTRY}; effective after a reboot"
        )]
    );
    assert_eq!(
        *f.entry_args.lock().unwrap(),
        [vec!["nowatchdog".to_string()]]
    );

    // The same args again: no write.
    let r = f
        .apply(
            &config("node-2", "[kernel]\nargs = [\"nowatchdog\"]"),
            ApplyMode::Auto,
        )
        .await
        .unwrap();
    assert!(r.needs_reboot.is_empty(), "{:?}", r.needs_reboot);
    assert_eq!(f.entry_args.lock().unwrap().len(), 1);

    // Staged writes them too, in place of the plan's sentence.
    let r = f
        .apply(&config("node-2", ""), ApplyMode::Staged)
        .await
        .unwrap();
    let args: Vec<_> = r
        .needs_reboot
        .iter()
        .filter(|n| n.starts_with("kernel.args"))
        .collect();
    assert_eq!(args.len(), 1, "{:?}", r.needs_reboot);
    assert!(args[0].contains("written to the boot entry"), "{args:?}");
    assert_eq!(f.entry_args.lock().unwrap().last(), Some(&Vec::new()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_try_writes_the_boot_entry_only_once_confirmed() {
    let f = Fixture::new(true);
    f.apply(&config("node-1", ""), ApplyMode::Auto)
        .await
        .unwrap();
    let r = f
        .node
        .apply_config(ApplyRequest {
            config: config("node-1", "[kernel]\nargs = [\"nowatchdog\"]"),
            mode: ApplyMode::Try,
            dry_run: false,
            try_timeout_secs: Some(30),
        })
        .await
        .unwrap();
    assert!(
        r.needs_reboot[0].starts_with("kernel.args: [] -> [nowatchdog]"),
        "{:?}",
        r.needs_reboot
    );
    assert!(f.entry_args.lock().unwrap().is_empty());
    f.node.confirm_config().await.unwrap();
    assert_eq!(
        *f.entry_args.lock().unwrap(),
        [vec!["nowatchdog".to_string()]]
    );
}

/// A live node has no slot: `version` says live with no slots, and
/// upgrades, rollbacks and the trial watcher never touch a disk.
#[tokio::test(flavor = "current_thread")]
async fn a_live_node_says_so_and_refuses_upgrades_and_rollback() {
    let f = Fixture::booted(true, true);
    let v = f.node.version();
    assert!(v.live);
    assert!(v.slots.is_empty() && v.last_upgrade.is_none());
    let refused = |e: ApiError| match e {
        ApiError::Conflict(why) => assert!(why.contains("booted live") && why.contains("no A/B slot"), "{why}"),
        other => panic!("expected a conflict, got {other:?}"),
    };
    refused(
        f.node
            .rollback_now(RollbackRequest { reboot: true }, "admin".into())
            .await
            .unwrap_err(),
    );
    let options = caisson_api::server::UpgradeOptions { stage: true, measure_disk: false };
    refused(
        f.node
            .upgrade_now(UpgradeSource::Url("http://127.0.0.1:9/b.bundle".into()), options, "admin".into())
            .await
            .unwrap_err(),
    );
    f.node.clone().watch_trial().await;
    assert!(!Fixture::new(true).node.version().live);

    // kernel.args are kept in the config; there is no entry to write.
    let r = f
        .apply(&config("node-1", "[kernel]\nargs = [\"nowatchdog\"]"), ApplyMode::Auto)
        .await
        .unwrap();
    assert_eq!(r.needs_reboot.len(), 1, "{:?}", r.needs_reboot);
    assert!(r.needs_reboot[0].contains("live boot has no boot entry"), "{:?}", r.needs_reboot);
    assert!(f.entry_args.lock().unwrap().is_empty());
}
