//! The kernel command line, as the kernel splits it, and the `caisson.*`
//! parameters that `init` and the agent act on.

use std::time::Duration;

use thiserror::Error;
use uuid::Uuid;

use crate::slot::Slot;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("kernel command line: {key} is missing")]
    Missing { key: &'static str },
    #[error("kernel command line: {key}={value:?} is invalid: {reason}")]
    Invalid { key: &'static str, value: String, reason: String },
}

/// A parsed kernel command line: `key=value` and bare `flag` words, in order.
/// Double quotes group words with spaces, as in the kernel's own parser.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelCmdline {
    params: Vec<(String, Option<String>)>,
}

impl KernelCmdline {
    pub fn parse(line: &str) -> KernelCmdline {
        let mut params = Vec::new();
        let mut word = String::new();
        let mut in_quotes = false;
        let mut have_word = false;
        for c in line.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    have_word = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if have_word {
                        params.push(split_param(&word));
                        word.clear();
                        have_word = false;
                    }
                }
                c => {
                    word.push(c);
                    have_word = true;
                }
            }
        }
        if have_word {
            params.push(split_param(&word));
        }
        KernelCmdline { params }
    }

    /// The value of the last occurrence of `key` (later words win, as in the
    /// kernel). `Some(None)` for a bare flag.
    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).flatten()
    }

    pub fn has_flag(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

fn split_param(word: &str) -> (String, Option<String>) {
    match word.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (word.to_string(), None),
    }
}

/// How the root partition is named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    PartUuid(Uuid),
    PartLabel(String),
}

impl RootSpec {
    pub fn parse(value: &str) -> Result<RootSpec, String> {
        if let Some(u) = value.strip_prefix("PARTUUID=") {
            Uuid::parse_str(u).map(RootSpec::PartUuid).map_err(|e| format!("bad PARTUUID: {e}"))
        } else if let Some(l) = value.strip_prefix("PARTLABEL=") {
            if l.is_empty() {
                Err("empty PARTLABEL".into())
            } else {
                Ok(RootSpec::PartLabel(l.to_string()))
            }
        } else {
            Err("expected PARTUUID=<guid> or PARTLABEL=<name>".into())
        }
    }

    pub fn render(&self) -> String {
        match self {
            RootSpec::PartUuid(u) => format!("PARTUUID={u}"),
            RootSpec::PartLabel(l) => format!("PARTLABEL={l}"),
        }
    }
}

/// Key names, so the builder renders exactly what `init` parses.
pub const KEY_SLOT: &str = "caisson.slot";
pub const KEY_ROOT: &str = "caisson.root";
pub const KEY_ROOTWAIT: &str = "caisson.rootwait";
pub const KEY_VERITY: &str = "caisson.verity";

/// Default bound on waiting for the root device.
pub const DEFAULT_ROOTWAIT: Duration = Duration::from_secs(30);

/// The parameters Caisson's own programs act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaissonParams {
    pub slot: Slot,
    pub root: RootSpec,
    pub rootwait: Duration,
    /// dm-verity root hash, hex; absent until verity roots land.
    pub verity_root_hash: Option<String>,
}

impl CaissonParams {
    pub fn from_cmdline(cmdline: &KernelCmdline) -> Result<CaissonParams, CmdlineError> {
        let slot_value = cmdline.value(KEY_SLOT).ok_or(CmdlineError::Missing { key: KEY_SLOT })?;
        let slot = slot_value.parse::<Slot>().map_err(|reason| CmdlineError::Invalid {
            key: KEY_SLOT,
            value: slot_value.to_string(),
            reason,
        })?;
        let root_value = cmdline.value(KEY_ROOT).ok_or(CmdlineError::Missing { key: KEY_ROOT })?;
        let root = RootSpec::parse(root_value).map_err(|reason| CmdlineError::Invalid {
            key: KEY_ROOT,
            value: root_value.to_string(),
            reason,
        })?;
        let rootwait = match cmdline.value(KEY_ROOTWAIT) {
            None => DEFAULT_ROOTWAIT,
            Some(v) => v.parse::<u64>().map(Duration::from_secs).map_err(|e| CmdlineError::Invalid {
                key: KEY_ROOTWAIT,
                value: v.to_string(),
                reason: format!("expected whole seconds: {e}"),
            })?,
        };
        let verity_root_hash = match cmdline.value(KEY_VERITY) {
            None => None,
            Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => Some(v.to_ascii_lowercase()),
            Some(v) => {
                return Err(CmdlineError::Invalid {
                    key: KEY_VERITY,
                    value: v.to_string(),
                    reason: "expected 64 hex digits (sha256)".into(),
                })
            }
        };
        Ok(CaissonParams { slot, root, rootwait, verity_root_hash })
    }

    /// The words the builder puts on a boot entry's `options` line.
    pub fn render(&self) -> Vec<String> {
        let mut words = vec![
            format!("{KEY_SLOT}={}", self.slot),
            format!("{KEY_ROOT}={}", self.root.render()),
        ];
        if self.rootwait != DEFAULT_ROOTWAIT {
            words.push(format!("{KEY_ROOTWAIT}={}", self.rootwait.as_secs()));
        }
        if let Some(h) = &self.verity_root_hash {
            words.push(format!("{KEY_VERITY}={h}"));
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "6f1c9a52-8a3e-4d1b-9f4e-2f0a4b5c6d7e";

    #[test]
    fn splits_words_flags_and_quoted_values() {
        let c = KernelCmdline::parse("  console=ttyS0,115200 quiet  foo=\"a b\" \"x=1 2\" last=\n");
        let v: Vec<_> = c.iter().collect();
        assert_eq!(
            v,
            vec![
                ("console", Some("ttyS0,115200")),
                ("quiet", None),
                ("foo", Some("a b")),
                ("x", Some("1 2")),
                ("last", Some("")),
            ]
        );
        assert!(c.has_flag("quiet"));
        assert_eq!(c.value("quiet"), None);
    }

    #[test]
    fn later_occurrence_wins() {
        let c = KernelCmdline::parse("caisson.slot=a caisson.slot=b");
        assert_eq!(c.value("caisson.slot"), Some("b"));
    }

    #[test]
    fn caisson_params_parse_and_render_round_trip() {
        let line = format!("console=ttyS0 caisson.slot=b caisson.root=PARTUUID={U} caisson.rootwait=5");
        let p = CaissonParams::from_cmdline(&KernelCmdline::parse(&line)).unwrap();
        assert_eq!(p.slot, Slot::B);
        assert_eq!(p.root, RootSpec::PartUuid(Uuid::parse_str(U).unwrap()));
        assert_eq!(p.rootwait, Duration::from_secs(5));
        let again = CaissonParams::from_cmdline(&KernelCmdline::parse(&p.render().join(" "))).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn missing_and_invalid_params_name_the_key() {
        let e = CaissonParams::from_cmdline(&KernelCmdline::parse("caisson.slot=a")).unwrap_err();
        assert_eq!(e, CmdlineError::Missing { key: KEY_ROOT });
        let e = CaissonParams::from_cmdline(&KernelCmdline::parse("caisson.slot=c caisson.root=PARTLABEL=ROOT-A"))
            .unwrap_err();
        assert!(e.to_string().contains("caisson.slot=\"c\""), "{e}");
        let e = CaissonParams::from_cmdline(&KernelCmdline::parse("caisson.slot=a caisson.root=/dev/vda2")).unwrap_err();
        assert!(e.to_string().contains("PARTUUID="), "{e}");
        let e = CaissonParams::from_cmdline(&KernelCmdline::parse(&format!(
            "caisson.slot=a caisson.root=PARTUUID={U} caisson.rootwait=soon"
        )))
        .unwrap_err();
        assert!(e.to_string().contains("caisson.rootwait"), "{e}");
    }
}
