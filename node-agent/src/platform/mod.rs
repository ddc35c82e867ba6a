//! The platform's config sources: where a node that has no config on
//! STATE and none in its image finds one, first match wins:
//!
//! 1. the kernel command line's `caisson.config=http://…` or `tftp://…`
//!    ([`url`], [`http`], [`tftp`]), fetched once the network is up;
//! 2. an OpenStack config drive (label `config-2`, [`openstack`]);
//! 3. the OpenStack/EC2 metadata service at 169.254.169.254, only where
//!    DMI says OpenStack or EC2 ([`dmi`]);
//! 4. VMware guestinfo, only where DMI says VMware ([`vmware`],
//!    [`backdoor`]);
//! 5. a NoCloud seed (label `cidata`, [`nocloud`]);
//! 6. QEMU's fw_cfg `opt/caisson/config` ([`fwcfg`]).
//!
//! A source that is not there (no URL, no medium, a closed gate, no user
//! data) passes to the next. A source that is there but fails (a URL that
//! times out, a medium that does not mount, user data that is not a
//! Caisson config or does not validate) ends the search: the node stays in
//! maintenance mode, and the console names the source and the problem.
//! Nothing is applied until the whole config is read and valid.
//!
//! The config found is saved on STATE, as an API apply from maintenance
//! mode would be, so the next boot reads it from STATE and never looks
//! here again; after that only the API changes it. Network data and a
//! host name from the platform fill what the config leaves out
//! ([`netdata`]).

pub mod backdoor;
pub mod dmi;
pub mod fwcfg;
pub mod http;
pub mod media;
pub mod netdata;
pub mod nocloud;
mod node;
pub mod openstack;
pub mod tftp;
pub mod url;
pub mod userdata;
pub mod vmware;

use std::fmt;
use std::io::Read;
use std::path::Path;

use caisson_config::{ConfigError, ConfigErrors, MachineConfig};

use netdata::NetworkData;

/// Size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// User data (a machine config with certificates and containers).
    pub user_data: usize,
    /// `meta_data.json`, `network_data.json`, `network-config`.
    pub side_file: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            user_data: 1 << 20,
            side_file: 256 << 10,
        }
    }
}

/// A file's bytes, at most `max`; `Ok(None)` when it does not exist.
pub fn read_limited(path: &Path, max: usize) -> Result<Option<Vec<u8>>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut out)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if out.len() > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    Ok(Some(out))
}

/// The sources, in the order they are asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    CmdlineUrl,
    ConfigDrive,
    Metadata,
    Guestinfo,
    NoCloud,
    FwCfg,
}

impl Kind {
    pub const ORDER: [Kind; 6] = [
        Kind::CmdlineUrl,
        Kind::ConfigDrive,
        Kind::Metadata,
        Kind::Guestinfo,
        Kind::NoCloud,
        Kind::FwCfg,
    ];

    /// For console lines and `nodectl health`: `config-drive`, …
    pub fn short(self) -> &'static str {
        match self {
            Kind::CmdlineUrl => "cmdline-url",
            Kind::ConfigDrive => "config-drive",
            Kind::Metadata => "metadata",
            Kind::Guestinfo => "guestinfo",
            Kind::NoCloud => "nocloud",
            Kind::FwCfg => "fw_cfg",
        }
    }

    fn long(self) -> &'static str {
        match self {
            Kind::CmdlineUrl => "the kernel command line's caisson.config URL",
            Kind::ConfigDrive => "the OpenStack config drive",
            Kind::Metadata => "the metadata service",
            Kind::Guestinfo => "VMware guestinfo",
            Kind::NoCloud => "the NoCloud seed",
            Kind::FwCfg => "QEMU fw_cfg",
        }
    }
}

/// One platform source and where exactly it was read (a URL, a device
/// and file, a key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSource {
    pub kind: Kind,
    pub detail: String,
}

impl PlatformSource {
    pub fn new(kind: Kind, detail: impl Into<String>) -> PlatformSource {
        PlatformSource {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for PlatformSource {
    /// `the OpenStack config drive (/dev/sr0: openstack/latest/user_data)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.kind.long())
        } else {
            write!(f, "{} ({})", self.kind.long(), self.detail)
        }
    }
}

/// User data found on a source, with what else the platform said.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub source: PlatformSource,
    pub user_data: Vec<u8>,
    /// Err: the platform's network data could not be read (a console line).
    pub network: Option<Result<NetworkData, String>>,
    /// The file the network data came from, for notes.
    pub network_from: String,
    pub hostname: Option<String>,
    pub hostname_from: String,
    /// Empty `guestinfo.caisson.config` once the config is on STATE.
    pub scrub_guestinfo: bool,
}

impl Candidate {
    pub fn new(source: PlatformSource, user_data: Vec<u8>) -> Candidate {
        Candidate {
            source,
            user_data,
            network: None,
            network_from: String::new(),
            hostname: None,
            hostname_from: String::new(),
            scrub_guestinfo: false,
        }
    }
}

/// What asking one source gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Not here; why, for the console.
    Absent(String),
    Found(Box<Candidate>),
    /// Here but unreadable: the search ends.
    Failed {
        source: PlatformSource,
        error: String,
    },
}

/// Which sources are asked, in order, and which are not and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ask: Vec<Kind>,
    pub skip: Vec<(Kind, String)>,
}

/// The plan for this machine: the URL only when given; the metadata
/// service only where DMI says OpenStack or EC2 (elsewhere waiting for
/// 169.254.169.254 would slow every boot); guestinfo only on VMware.
pub fn plan(has_url: bool, dmi: &dmi::Dmi) -> Plan {
    let mut ask = Vec::new();
    let mut skip = Vec::new();
    for kind in Kind::ORDER {
        let closed = match kind {
            Kind::CmdlineUrl if !has_url => Some(format!(
                "no {} on the kernel command line",
                url::KEY_CONFIG_URL
            )),
            Kind::Metadata if dmi.metadata_flavor().is_none() => Some(format!(
                "not asked: DMI says neither OpenStack nor EC2 ({})",
                dmi.describe()
            )),
            Kind::Guestinfo if !dmi.is_vmware() => Some(format!(
                "not asked: DMI does not say VMware ({})",
                dmi.describe()
            )),
            _ => None,
        };
        match closed {
            Some(why) => skip.push((kind, why)),
            None => ask.push(kind),
        }
    }
    Plan { ask, skip }
}

/// Asks one source.
pub trait Prober {
    fn probe(&mut self, kind: Kind) -> impl std::future::Future<Output = Probe>;
}

/// How the search ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Found(Box<Candidate>),
    Failed {
        source: PlatformSource,
        error: String,
    },
    /// No source had a config.
    None,
}

/// Ask the plan's sources in order; `say` gets one line per source.
pub async fn search(prober: &mut impl Prober, plan: &Plan, say: &mut dyn FnMut(String)) -> Outcome {
    for &kind in &plan.ask {
        match prober.probe(kind).await {
            Probe::Absent(why) => say(format!("{}: none ({why})", kind.short())),
            Probe::Found(c) => return Outcome::Found(c),
            Probe::Failed { source, error } => return Outcome::Failed { source, error },
        }
    }
    Outcome::None
}

/// A candidate that is a valid machine config, with the platform's parts
/// filled in.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub config: MachineConfig,
    pub text: String,
    /// Console lines: what was filled in, what was left out.
    pub notes: Vec<String>,
}

/// Why a candidate is refused: console lines naming the source's file
/// and the key paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The user data is empty: as if the source had none.
    Empty,
    Invalid(ConfigErrors),
}

/// Check `c`'s user data is a Caisson config, fill in the platform's host
/// name and network, and check the result again. Pure.
pub fn accept(c: &Candidate, limits: &Limits) -> Result<Accepted, Refused> {
    let origin = c.source.detail.clone();
    let one = |path: &str, message: String| {
        Refused::Invalid(ConfigErrors(vec![ConfigError::new(
            &origin,
            path.to_string(),
            None,
            message,
        )]))
    };
    let text = match userdata::classify(&c.user_data, limits.user_data) {
        userdata::UserData::Empty => return Err(Refused::Empty),
        userdata::UserData::Foreign(what) => {
            return Err(one(
                "",
                format!("this is {what}, not a Caisson machine config (TOML with `version = 1`)"),
            ))
        }
        userdata::UserData::Text(t) => t,
    };
    // The user's own text first, so its errors point at its own lines.
    caisson_config::parse(&origin, &text).map_err(Refused::Invalid)?;
    let mut notes = Vec::new();
    let network = match &c.network {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            notes.push(format!(
                "network: {}: {e}; the config's network section is used as it is",
                c.network_from
            ));
            None
        }
        None => None,
    };
    let hostname_from = if c.hostname_from.is_empty() {
        c.source.kind.long().to_string()
    } else {
        c.hostname_from.clone()
    };
    let named = netdata::merge(&text, None, c.hostname.as_deref(), &hostname_from)
        .map_err(|e| one("", e))?;
    let merged =
        netdata::merge(&named.text, network, None, &c.network_from).map_err(|e| one("", e))?;
    notes.extend(named.notes);
    notes.extend(merged.notes);
    // Errors in what was filled in name the platform's file.
    let origin_merged = format!("{origin} with the platform's settings");
    let config = caisson_config::parse(&origin_merged, &merged.text).map_err(Refused::Invalid)?;
    Ok(Accepted {
        config,
        text: merged.text,
        notes,
    })
}

#[cfg(test)]
mod tests;
