//! The search on the running node: the real [`Prober`] (block devices,
//! the network, sysfs, the backdoor) and what happens to the config found:
//! checked, preflighted as an API apply is, saved on STATE, then handed to
//! phase `config` like a config read from STATE.

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use caisson_config::{ConfigError, ConfigErrors};
use caisson_layout::KernelCmdline;
use futures_util::FutureExt;
use tracing::{error, info, warn};

use super::dmi::{Dmi, MetadataFlavor};
use super::media::{self, Labelled};
use super::url::{ConfigUrl, Scheme, Values, Var};
use super::{
    accept, fwcfg, nocloud, openstack, plan, search, tftp, userdata, vmware, Candidate, Kind,
    Limits, Outcome, PlatformSource, Probe, Prober, Refused,
};
use crate::api::Node;
use crate::config::source::{BootConfig, Source};
use crate::store::ConfigStore;

/// How long to wait for a DHCP lease before fetching.
const NETWORK_WAIT: Duration = Duration::from_secs(30);
/// After an address appears, how long to wait for its lease's effects.
const LEASE_SETTLE: Duration = Duration::from_secs(3);
/// Each try of the kernel command line URL.
const URL_TIMEOUT: Duration = Duration::from_secs(10);
const URL_TRIES: u32 = 3;
const URL_PAUSE: Duration = Duration::from_secs(2);
/// TFTP: an answer within this, each packet sent at most 1 + this many times.
const TFTP_TIMEOUT: Duration = Duration::from_secs(2);
const TFTP_RETRIES: u32 = 4;

impl Node {
    /// Phase `config`, when neither STATE nor the image has a config: ask
    /// the platform. A config found is saved on STATE before it is returned.
    pub(crate) async fn platform_boot_config(&self, store: Option<&ConfigStore>) -> BootConfig {
        // The sources are the machine's: only the node's PID 1 reads them,
        // never the agent's in-process tests.
        if std::process::id() != 1 {
            return BootConfig::None;
        }
        let cmdline =
            KernelCmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
        let url = cmdline
            .value(super::url::KEY_CONFIG_URL)
            .map(str::to_string);
        let dmi = Dmi::read();
        let plan = plan(url.is_some(), &dmi);
        let Some(store) = store else {
            warn!("config: STATE is not mounted, so a config from the platform could not be saved: its sources are not read");
            return BootConfig::None;
        };
        let asked: Vec<&str> = plan.ask.iter().map(|k| k.short()).collect();
        info!(
            "config: no config on STATE or in the image; asking the platform: {}",
            asked.join(", ")
        );
        for (kind, why) in &plan.skip {
            info!("config: {}: {why}", kind.short());
        }
        let limits = Limits::default();
        let mut prober = RealProber {
            node: self,
            url,
            dmi,
            limits,
            network_ready: false,
            media: None,
        };
        let outcome = search(&mut prober, &plan, &mut |line| info!("config: {line}")).await;
        let candidate = match outcome {
            Outcome::None => return BootConfig::None,
            Outcome::Failed { source, error } => {
                return BootConfig::Unreadable {
                    source: Source::Platform(source),
                    error,
                }
            }
            Outcome::Found(c) => c,
        };
        let source = Source::Platform(candidate.source.clone());
        info!("config: found a machine config in {}", candidate.source);
        let accepted = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            accept(&candidate, &limits)
        })) {
            Ok(Ok(a)) => a,
            Ok(Err(Refused::Invalid(errors))) => return BootConfig::Invalid { source, errors },
            Ok(Err(Refused::Empty)) => return BootConfig::None,
            Err(_) => {
                return BootConfig::Unreadable {
                    source,
                    error: "the agent failed while checking it (a bug: see the PANIC line)".into(),
                }
            }
        };
        for note in &accepted.notes {
            info!("config: {note}");
        }
        let problems = self
            .preflight(&crate::config::plan(None, &accepted.config))
            .err()
            .unwrap_or_default();
        if !problems.is_empty() {
            let origin = candidate.source.detail.clone();
            let errors = problems
                .into_iter()
                .map(|p| {
                    let (path, message) = p.split_once(": ").unwrap_or(("", &p));
                    ConfigError::new(&origin, path.to_string(), None, message.to_string())
                })
                .collect();
            return BootConfig::Invalid {
                source,
                errors: ConfigErrors(errors),
            };
        }
        if let Err(e) = store.commit(&accepted.text, None) {
            return BootConfig::Unreadable {
                source,
                error: format!("saving it on STATE: {e}; nothing of it was applied"),
            };
        }
        info!(
            "config: saved the config from {} on STATE ({}); later boots read it from there",
            candidate.source.kind.short(),
            store.current_path().display()
        );
        if candidate.scrub_guestinfo {
            scrub_guestinfo();
        }
        BootConfig::Found {
            source,
            config: Box::new(accepted.config),
            text: accepted.text,
        }
    }
}

/// Empty the guestinfo keys that held the config (as Ignition does).
fn scrub_guestinfo() {
    let result = super::backdoor::Rpc::open().and_then(|mut rpc| {
        for key in vmware::SCRUBBED {
            rpc.info_set(key, "")?;
        }
        Ok(())
    });
    match result {
        Ok(()) => info!("config: emptied {} in guestinfo", vmware::SCRUBBED.join(" and ")),
        Err(e) => error!(
            "config: could not empty {} in guestinfo: {e}; the config (with its CA key) stays readable there",
            vmware::KEY_CONFIG
        ),
    }
}

struct RealProber<'a> {
    node: &'a Node,
    url: Option<String>,
    dmi: Dmi,
    limits: Limits,
    network_ready: bool,
    /// Labelled media, scanned once.
    media: Option<Vec<Labelled>>,
}

impl Prober for RealProber<'_> {
    async fn probe(&mut self, kind: Kind) -> Probe {
        let bare = PlatformSource::new(kind, "");
        match AssertUnwindSafe(self.probe_inner(kind))
            .catch_unwind()
            .await
        {
            Ok(p) => p,
            Err(_) => Probe::Failed {
                source: bare,
                error: "the agent failed while reading it (a bug: see the PANIC line)".into(),
            },
        }
    }
}

/// Found, unless the user data is empty (then the source has none).
fn found(c: Candidate) -> Probe {
    if userdata::classify(&c.user_data, usize::MAX) == userdata::UserData::Empty {
        return Probe::Absent(format!("{} holds empty user data", c.source));
    }
    Probe::Found(Box::new(c))
}

impl RealProber<'_> {
    async fn probe_inner(&mut self, kind: Kind) -> Probe {
        match kind {
            Kind::CmdlineUrl => self.cmdline_url().await,
            Kind::ConfigDrive => self.medium(kind, &openstack::LABELS),
            Kind::Metadata => self.metadata().await,
            Kind::Guestinfo => guestinfo(&self.limits),
            Kind::NoCloud => self.medium(kind, &nocloud::LABELS),
            Kind::FwCfg => self.fw_cfg(),
        }
    }

    fn load(&self) -> impl FnMut(&str) -> Result<(), String> + '_ {
        |m| self.node.load_module(m)
    }

    /// DHCP (or `ip=`) as in maintenance mode, and an address to fetch from.
    async fn network(&mut self) -> Result<(), String> {
        if self.network_ready {
            return Ok(());
        }
        let mut learned = self.node.network.learned();
        let report = self
            .node
            .network
            .apply(None)
            .await
            .map_err(|e| e.to_string())?;
        for line in report.lines {
            info!("network: {line}");
        }
        let applied = learned.borrow_and_update().generation;
        let started = Instant::now();
        loop {
            let addrs = self.node.network.addresses().await.unwrap_or_default();
            let usable: Vec<String> = addrs
                .iter()
                .filter(|a| usable(a))
                .map(|a| a.to_string())
                .collect();
            if !usable.is_empty() {
                // A lease's address comes a moment before its effects
                // (resolv.conf, the offered host name for ${hostname}).
                if learned.borrow().generation == applied {
                    let _ = tokio::time::timeout(LEASE_SETTLE, learned.changed()).await;
                }
                info!(
                    "config: network up after {} ms ({}) for the platform's sources",
                    started.elapsed().as_millis(),
                    usable.join(", ")
                );
                self.network_ready = true;
                return Ok(());
            }
            if started.elapsed() >= NETWORK_WAIT {
                return Err(format!(
                    "no network address after {} s of DHCP",
                    NETWORK_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn values(&self, used: &[Var]) -> Values {
        let learned = self.node.network.learned().borrow().hostname.clone();
        let values = Values {
            uuid: self.dmi.product_uuid.clone(),
            serial: self.dmi.product_serial.clone(),
            mac: first_mac(Path::new("/sys/class/net")).unwrap_or_default(),
            hostname: learned.map_or_else(|| self.node.facts.default_hostname.clone(), |l| l.name),
        };
        for var in used {
            if values.get(*var).is_empty() {
                warn!(
                    "config: ${{{}}} has no value on this machine; it is replaced by nothing",
                    var.name()
                );
            }
        }
        values
    }

    async fn cmdline_url(&mut self) -> Probe {
        let raw = self.url.clone().unwrap_or_default();
        let failed = |detail: String, error: String| Probe::Failed {
            source: PlatformSource::new(Kind::CmdlineUrl, detail),
            error,
        };
        let url = match ConfigUrl::parse(&raw) {
            Ok(u) => u,
            Err(e) => {
                let error = format!("{}={raw}: {e}", super::url::KEY_CONFIG_URL);
                return failed(raw, error);
            }
        };
        if let Err(e) = self.network().await {
            return failed(raw, format!("{e}: cannot fetch it"));
        }
        let url = url.substitute(&self.values(&url.variables()));
        let shown = url.to_string();
        if shown != raw {
            info!("config: {} = {raw} → {shown}", super::url::KEY_CONFIG_URL);
        }
        let fetched = match url.scheme {
            Scheme::Http => self.http_get(&url).await,
            Scheme::Tftp => self.tftp_get(&url).await,
        };
        match fetched {
            Ok(body) => found(Candidate::new(
                PlatformSource::new(Kind::CmdlineUrl, shown),
                body,
            )),
            Err(e) => failed(shown, e),
        }
    }

    async fn http_get(&self, url: &ConfigUrl) -> Result<Vec<u8>, String> {
        let path = url.path_and_query();
        let mut last = String::new();
        for attempt in 1..=URL_TRIES {
            let request = super::http::Request {
                method: "GET",
                host: &url.host,
                port: url.port,
                path_and_query: &path,
                headers: &[],
                timeout: URL_TIMEOUT,
                max_body: self.limits.user_data,
            };
            match request.send().await {
                Ok(r) if r.status == 200 => return Ok(r.body),
                // The server is there and says no: asking again will not help.
                Ok(r) if (400..500).contains(&r.status) => {
                    return Err(format!(
                        "the server answered {}",
                        super::http::status_text(r.status)
                    ))
                }
                Ok(r) => {
                    last = format!("the server answered {}", super::http::status_text(r.status))
                }
                Err(e) => last = e,
            }
            warn!("config: {url}: try {attempt} of {URL_TRIES}: {last}");
            if attempt < URL_TRIES {
                tokio::time::sleep(URL_PAUSE).await;
            }
        }
        Err(format!(
            "{last}; gave up after {URL_TRIES} tries of {} s each",
            URL_TIMEOUT.as_secs()
        ))
    }

    async fn tftp_get(&self, url: &ConfigUrl) -> Result<Vec<u8>, String> {
        let server = resolve(&url.host, url.port).await?;
        let limits = tftp::Limits {
            timeout: TFTP_TIMEOUT,
            retries: TFTP_RETRIES,
            max_bytes: self.limits.user_data,
        };
        tftp::fetch(server, url.tftp_file(), limits)
            .await
            .map_err(|e| e.to_string())
    }

    /// A medium by label (config drive or NoCloud seed).
    fn medium(&mut self, kind: Kind, labels: &[&str]) -> Probe {
        let all = match self.scan_media() {
            Ok(all) => all,
            Err(e) => return Probe::Absent(e),
        };
        let mut matching = all
            .iter()
            .filter(|m| labels.iter().any(|l| l.eq_ignore_ascii_case(&m.label)));
        let Some(medium) = matching.next().cloned() else {
            return Probe::Absent(format!("no filesystem labelled {}", labels.join(" or ")));
        };
        for other in matching {
            warn!(
                "config: {} also carries the label {:?}; using {}",
                other.device.display(),
                other.label,
                medium.device.display()
            );
        }
        let device = medium.device.display().to_string();
        let at = |file: &str| PlatformSource::new(kind, format!("{device}: {file}"));
        let limits = self.limits;
        let read = media::with_mounted(&medium, &mut self.load(), |root| match kind {
            Kind::ConfigDrive => openstack::read_config_drive(root, &limits).map(|d| {
                d.map(|d| {
                    let mut c = Candidate::new(at(openstack::USER_DATA), d.user_data);
                    c.network = d.network;
                    c.network_from = openstack::NETWORK_DATA.into();
                    c.hostname = d.hostname;
                    c.hostname_from = openstack::META_DATA.into();
                    c
                })
            }),
            _ => nocloud::read_seed(root, &limits).map(|d| {
                d.map(|d| {
                    let mut c = Candidate::new(at(nocloud::USER_DATA), d.user_data);
                    c.network = d.network;
                    c.network_from = nocloud::NETWORK_CONFIG.into();
                    c.hostname = d.hostname;
                    c.hostname_from = nocloud::META_DATA.into();
                    c
                })
            }),
        });
        let described = format!(
            "{device}, {} labelled {:?}",
            medium.fs.kernel_name(),
            medium.label
        );
        match read {
            Err(e) => Probe::Failed {
                source: PlatformSource::new(kind, described),
                error: format!("the medium cannot be mounted, so it is unreadable or corrupt: {e}"),
            },
            Ok(Err(e)) => Probe::Failed {
                source: PlatformSource::new(kind, described),
                error: format!("reading it failed, so the medium is damaged: {e}"),
            },
            Ok(Ok(None)) => Probe::Absent(format!("{described} has no user data")),
            Ok(Ok(Some(c))) => found(c),
        }
    }

    fn scan_media(&mut self) -> Result<Vec<Labelled>, String> {
        if let Some(m) = &self.media {
            return Ok(m.clone());
        }
        if let Some(problem) = media::prepare_cdroms(&mut self.load()) {
            warn!("config: {problem}");
        }
        let labels: Vec<&str> = openstack::LABELS
            .iter()
            .chain(nocloud::LABELS.iter())
            .copied()
            .collect();
        let found = media::find(&labels)?;
        self.media = Some(found.clone());
        Ok(found)
    }

    async fn metadata(&mut self) -> Probe {
        let Some(flavor) = self.dmi.metadata_flavor() else {
            return Probe::Absent("DMI says neither OpenStack nor EC2".into());
        };
        if let Err(e) = self.network().await {
            return Probe::Absent(format!("{e}: the metadata service cannot be reached"));
        }
        let service = openstack::Service {
            host: openstack::METADATA_HOST.into(),
            port: 80,
            timeout: Duration::from_secs(5),
            tries: 3,
            pause: Duration::from_secs(1),
        };
        let answer = match flavor {
            MetadataFlavor::OpenStack => service.openstack(&self.limits).await,
            MetadataFlavor::Ec2 => service.ec2(&self.limits).await,
        };
        match answer {
            openstack::Metadata::Found(d) => {
                let mut c = Candidate::new(
                    PlatformSource::new(Kind::Metadata, d.user_data_path),
                    d.user_data,
                );
                c.network = d.network;
                c.network_from = "network_data.json".into();
                c.hostname = d.hostname;
                c.hostname_from = "the metadata service's meta data".into();
                found(c)
            }
            openstack::Metadata::NoUserData(why) => {
                Probe::Absent(format!("no user data for this instance ({why})"))
            }
            openstack::Metadata::Unreachable(why) => {
                warn!("config: the metadata service does not answer although DMI says {flavor:?}: {why}");
                Probe::Absent(format!("no answer: {why}"))
            }
        }
    }

    fn fw_cfg(&mut self) -> Probe {
        let paths = fwcfg::Paths::default();
        let source = PlatformSource::new(Kind::FwCfg, fwcfg::NAME);
        match fwcfg::read(&paths, &mut self.load(), self.limits.user_data) {
            Ok(None) if !paths.present() => Probe::Absent("this machine has no fw_cfg".into()),
            Ok(None) => Probe::Absent(format!("no {} entry", fwcfg::NAME)),
            Ok(Some(bytes)) => found(Candidate::new(source, bytes)),
            Err(error) => Probe::Failed { source, error },
        }
    }
}

/// VMware guestinfo over the backdoor (the DMI gate has said VMware).
fn guestinfo(limits: &Limits) -> Probe {
    let mut rpc = match super::backdoor::Rpc::open() {
        Ok(rpc) => rpc,
        Err(e) => return Probe::Absent(format!("the backdoor: {e}")),
    };
    let read = vmware::read(&mut |key| rpc.info_get(key), limits.user_data);
    drop(rpc);
    match read {
        Ok(None) => Probe::Absent(format!("{} is not set", vmware::KEY_CONFIG)),
        Ok(Some(f)) => {
            let key = match f.from {
                vmware::From::Guestinfo => vmware::KEY_CONFIG.to_string(),
                vmware::From::OvfEnv => {
                    format!("{} property {}", vmware::KEY_OVF_ENV, vmware::KEY_CONFIG)
                }
            };
            let mut c = Candidate::new(PlatformSource::new(Kind::Guestinfo, key), f.config);
            c.hostname = f.hostname;
            c.hostname_from = vmware::KEY_HOSTNAME.into();
            c.scrub_guestinfo = f.from == vmware::From::Guestinfo;
            found(c)
        }
        Err(error) => Probe::Failed {
            source: PlatformSource::new(Kind::Guestinfo, vmware::KEY_CONFIG),
            error,
        },
    }
}

/// An address the node can fetch from: not loopback, not IPv6 link-local.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && (v6.segments().first().copied().unwrap_or(0) & 0xffc0) != 0xfe80
        }
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// The MAC of the first physical link (lowest interface index), as Talos's
/// `${mac}`: lower-case, colon-separated.
pub fn first_mac(class_net: &Path) -> Option<String> {
    let mut links: Vec<(u32, String)> = std::fs::read_dir(class_net)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("device").exists())
        .filter_map(|e| {
            let index = std::fs::read_to_string(e.path().join("ifindex"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let mac = std::fs::read_to_string(e.path().join("address"))
                .ok()?
                .trim()
                .to_ascii_lowercase();
            (mac != "00:00:00:00:00:00" && !mac.is_empty()).then_some((index, mac))
        })
        .collect();
    links.sort();
    links.into_iter().next().map(|(_, mac)| mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_physical_links_mac() {
        let dir = tempfile::tempdir().unwrap();
        let link = |name: &str, index: u32, mac: &str, physical: bool| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("ifindex"), format!("{index}\n")).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            if physical {
                std::fs::create_dir(d.join("device")).unwrap();
            }
        };
        assert_eq!(first_mac(dir.path()), None);
        link("lo", 1, "00:00:00:00:00:00", false);
        link("eth1", 3, "52:54:00:AA:BB:CC", true);
        link("cni0", 2, "aa:aa:aa:aa:aa:aa", false);
        assert_eq!(first_mac(dir.path()).as_deref(), Some("52:54:00:aa:bb:cc"));
        link("eth0", 2, "52:54:00:12:34:56", true);
        assert_eq!(first_mac(dir.path()).as_deref(), Some("52:54:00:12:34:56"));
    }

    #[test]
    fn addresses_to_fetch_from() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(usable(&ip("10.0.2.15")));
        assert!(
            usable(&ip("169.254.0.15")),
            "the metadata network may be link-local"
        );
        assert!(usable(&ip("fd00::5")));
        assert!(!usable(&ip("127.0.0.1")));
        assert!(!usable(&ip("fe80::1")));
        assert!(!usable(&ip("::1")));
    }
}
