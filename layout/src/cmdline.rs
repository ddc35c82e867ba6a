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

/// Where the root comes from, as the command line names it: a partition,
/// or (live boot) an image file inside the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    PartUuid(Uuid),
    PartLabel(String),
    /// `initrd:/caisson/root.img`: an absolute path in the initramfs to a
    /// root image (squashfs + dm-verity hash area) that `init` reads
    /// through a loop device.
    Initrd(String),
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
        } else if let Some(path) = value.strip_prefix(INITRD_ROOT_PREFIX) {
            check_initrd_path(path).map(|()| RootSpec::Initrd(path.to_string()))
        } else {
            Err(format!("expected PARTUUID=<guid>, PARTLABEL=<name> or {INITRD_ROOT_PREFIX}<absolute path>"))
        }
    }

    pub fn render(&self) -> String {
        match self {
            RootSpec::PartUuid(u) => format!("PARTUUID={u}"),
            RootSpec::PartLabel(l) => format!("PARTLABEL={l}"),
            RootSpec::Initrd(path) => format!("{INITRD_ROOT_PREFIX}{path}"),
        }
    }
}

/// `caisson.root=initrd:<path>`: the root is a file in the initramfs.
pub const INITRD_ROOT_PREFIX: &str = "initrd:";

/// An initramfs path: absolute, no `.` or `..` components, no empty ones,
/// not `/` itself.
fn check_initrd_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{INITRD_ROOT_PREFIX} needs an absolute path, got {path:?}"));
    };
    if rest.is_empty() || rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("{INITRD_ROOT_PREFIX}{path}: expected a plain absolute file path (no empty, . or .. components)"));
    }
    Ok(())
}

/// Key names, so the builder renders exactly what `init` parses.
pub const KEY_SLOT: &str = "caisson.slot";
pub const KEY_ROOT: &str = "caisson.root";
pub const KEY_ROOTWAIT: &str = "caisson.rootwait";
pub const KEY_VERITY: &str = "caisson.verity";
pub const KEY_VERITY_SALT: &str = "caisson.verity.salt";
pub const KEY_VERITY_HASH_OFFSET: &str = "caisson.verity.hashoffset";
/// `caisson.live`: a live (diskless) boot. STATE and DATA are tmpfs, no
/// disk is ever looked at for them, and there is no slot to upgrade.
pub const KEY_LIVE: &str = "caisson.live";
/// `caisson.verity=off`: the entry asks for an unverified root.
pub const VERITY_OFF: &str = "off";
/// dm-verity block size; the hash offset is a whole number of blocks.
pub const VERITY_BLOCK_SIZE: u64 = 4096;

/// Default bound on waiting for the root device.
pub const DEFAULT_ROOTWAIT: Duration = Duration::from_secs(30);

/// The parameters Caisson's own programs act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaissonParams {
    pub slot: Slot,
    pub root: RootSpec,
    pub rootwait: Duration,
    /// How the root is verified; `None` when the entry says nothing, which
    /// `init` refuses (an unverified boot must be asked for explicitly).
    pub verity: Option<RootVerity>,
}

/// What a slot's boot entry says about verifying its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootVerity {
    /// `caisson.verity=off`: boot the root unverified.
    Off,
    /// `caisson.verity=<root hash> caisson.verity.salt=<hex>
    /// caisson.verity.hashoffset=<bytes>`.
    Verified(VerityParams),
}

/// dm-verity parameters of a root whose hash area (cryptsetup superblock,
/// then the tree) is appended to the data in the same partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// sha256 root hash: 64 lower-case hex digits.
    pub root_hash: String,
    /// The salt: 2 to 512 lower-case hex digits (at most 256 bytes).
    pub salt: String,
    /// Where the hash area starts in the partition, in bytes: a positive
    /// multiple of 4096. The data is the 4 KiB blocks before it.
    pub hash_offset: u64,
}

impl VerityParams {
    /// Data blocks the hash tree covers.
    pub fn data_blocks(&self) -> u64 {
        self.hash_offset / VERITY_BLOCK_SIZE
    }
}

impl RootVerity {
    fn from_cmdline(cmdline: &KernelCmdline) -> Result<Option<RootVerity>, CmdlineError> {
        let salt = cmdline.value(KEY_VERITY_SALT);
        let offset = cmdline.value(KEY_VERITY_HASH_OFFSET);
        let hash = match cmdline.value(KEY_VERITY) {
            Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => v.to_ascii_lowercase(),
            other => {
                let verity = match other {
                    None => None,
                    Some(VERITY_OFF) => Some(RootVerity::Off),
                    Some(v) => {
                        return Err(CmdlineError::Invalid {
                            key: KEY_VERITY,
                            value: v.to_string(),
                            reason: format!("expected 64 hex digits (a sha256 root hash) or {VERITY_OFF}"),
                        })
                    }
                };
                // A salt or offset without a root hash is a half-written entry.
                for (key, value) in [(KEY_VERITY_SALT, salt), (KEY_VERITY_HASH_OFFSET, offset)] {
                    if let Some(value) = value {
                        return Err(CmdlineError::Invalid {
                            key,
                            value: value.to_string(),
                            reason: format!("only valid with {KEY_VERITY}=<root hash>"),
                        });
                    }
                }
                return Ok(verity);
            }
        };
        let salt = salt.ok_or(CmdlineError::Missing { key: KEY_VERITY_SALT })?;
        if salt.is_empty() || salt.len() > 512 || salt.len() % 2 != 0 || !salt.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CmdlineError::Invalid {
                key: KEY_VERITY_SALT,
                value: salt.to_string(),
                reason: "expected an even number of hex digits, 2 to 512".into(),
            });
        }
        let offset_value = offset.ok_or(CmdlineError::Missing { key: KEY_VERITY_HASH_OFFSET })?;
        let hash_offset = match offset_value.parse::<u64>() {
            Ok(n) if n > 0 && n % VERITY_BLOCK_SIZE == 0 => n,
            _ => {
                return Err(CmdlineError::Invalid {
                    key: KEY_VERITY_HASH_OFFSET,
                    value: offset_value.to_string(),
                    reason: format!("expected bytes: a positive multiple of {VERITY_BLOCK_SIZE}"),
                })
            }
        };
        Ok(Some(RootVerity::Verified(VerityParams {
            root_hash: hash,
            salt: salt.to_ascii_lowercase(),
            hash_offset,
        })))
    }

    fn render(&self) -> Vec<String> {
        match self {
            RootVerity::Off => vec![format!("{KEY_VERITY}={VERITY_OFF}")],
            RootVerity::Verified(p) => vec![
                format!("{KEY_VERITY}={}", p.root_hash),
                format!("{KEY_VERITY_SALT}={}", p.salt),
                format!("{KEY_VERITY_HASH_OFFSET}={}", p.hash_offset),
            ],
        }
    }
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
        let verity = RootVerity::from_cmdline(cmdline)?;
        Ok(CaissonParams { slot, root, rootwait, verity })
    }

    /// The words the builder puts on a boot entry's `options` line.
    pub fn render(&self) -> Vec<String> {
        let mut words = vec![
            format!("{KEY_SLOT}={}", self.slot),
            format!("{KEY_ROOT}={}", quote_if_spaced(&self.root.render())),
        ];
        if self.rootwait != DEFAULT_ROOTWAIT {
            words.push(format!("{KEY_ROOTWAIT}={}", self.rootwait.as_secs()));
        }
        if let Some(verity) = &self.verity {
            words.extend(verity.render());
        }
        words
    }
}

/// Whether the command line asks for a live boot ([`KEY_LIVE`], a bare flag).
pub fn is_live(cmdline: &KernelCmdline) -> bool {
    cmdline.has_flag(KEY_LIVE)
}

/// A value with whitespace (a PARTLABEL may have some) is quoted, so the
/// kernel and [`KernelCmdline::parse`] keep it one word.
fn quote_if_spaced(value: &str) -> String {
    if value.contains(char::is_whitespace) {
        format!("\"{value}\"")
    } else {
        value.to_string()
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

    const HASH: &str = "4F2a000000000000000000000000000000000000000000000000000000000001";

    fn params(extra: &str) -> Result<CaissonParams, CmdlineError> {
        CaissonParams::from_cmdline(&KernelCmdline::parse(&format!(
            "caisson.slot=a caisson.root=PARTUUID={U} {extra}"
        )))
    }

    #[test]
    fn verity_parameters_parse_and_render_round_trip() {
        let p = params(&format!(
            "caisson.verity={HASH} caisson.verity.salt=AB01 caisson.verity.hashoffset=58724352"
        ))
        .unwrap();
        let expected = VerityParams { root_hash: HASH.to_ascii_lowercase(), salt: "ab01".into(), hash_offset: 58724352 };
        assert_eq!(p.verity, Some(RootVerity::Verified(expected.clone())));
        assert_eq!(expected.data_blocks(), 14337);
        let words = p.render();
        assert_eq!(
            words[2..],
            [
                format!("caisson.verity={}", HASH.to_ascii_lowercase()),
                "caisson.verity.salt=ab01".to_string(),
                "caisson.verity.hashoffset=58724352".to_string(),
            ]
        );
        assert_eq!(params(&words[2..].join(" ")).unwrap(), p);

        let off = params("caisson.verity=off").unwrap();
        assert_eq!(off.verity, Some(RootVerity::Off));
        assert_eq!(off.render().last().map(String::as_str), Some("caisson.verity=off"));
        assert_eq!(params(&off.render().join(" ")).unwrap(), off);

        let absent = params("").unwrap();
        assert_eq!(absent.verity, None);
        assert!(!absent.render().iter().any(|w| w.starts_with("caisson.verity")));
    }

    #[test]
    fn incomplete_or_malformed_verity_parameters_name_the_key() {
        let e = params(&format!("caisson.verity={HASH} caisson.verity.hashoffset=4096")).unwrap_err();
        assert_eq!(e, CmdlineError::Missing { key: KEY_VERITY_SALT });
        let e = params(&format!("caisson.verity={HASH} caisson.verity.salt=ab")).unwrap_err();
        assert_eq!(e, CmdlineError::Missing { key: KEY_VERITY_HASH_OFFSET });
        for (extra, key) in [
            ("caisson.verity=on".to_string(), KEY_VERITY),
            ("caisson.verity=abc".to_string(), KEY_VERITY),
            (format!("caisson.verity={HASH} caisson.verity.salt=abc caisson.verity.hashoffset=4096"), KEY_VERITY_SALT),
            (format!("caisson.verity={HASH} caisson.verity.salt=zz caisson.verity.hashoffset=4096"), KEY_VERITY_SALT),
            (format!("caisson.verity={HASH} caisson.verity.salt={} caisson.verity.hashoffset=4096", "ab".repeat(257)), KEY_VERITY_SALT),
            (format!("caisson.verity={HASH} caisson.verity.salt=ab caisson.verity.hashoffset=4097"), KEY_VERITY_HASH_OFFSET),
            (format!("caisson.verity={HASH} caisson.verity.salt=ab caisson.verity.hashoffset=0"), KEY_VERITY_HASH_OFFSET),
            ("caisson.verity=off caisson.verity.salt=ab".to_string(), KEY_VERITY_SALT),
            ("caisson.verity.hashoffset=4096".to_string(), KEY_VERITY_HASH_OFFSET),
        ] {
            match params(&extra) {
                Err(CmdlineError::Invalid { key: k, .. }) => assert_eq!(k, key, "{extra}"),
                other => panic!("{extra}: expected an error for {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_initrd_root_parses_renders_and_round_trips_with_live() {
        let hash = "ab".repeat(32);
        let line = format!(
            "console=ttyS0 caisson.slot=a caisson.root=initrd:/caisson/root.img caisson.live \
             caisson.verity={hash} caisson.verity.salt=01 caisson.verity.hashoffset=8192"
        );
        let cmdline = KernelCmdline::parse(&line);
        let p = CaissonParams::from_cmdline(&cmdline).unwrap();
        assert_eq!(p.root, RootSpec::Initrd("/caisson/root.img".into()));
        assert!(is_live(&cmdline));
        assert!(!is_live(&KernelCmdline::parse("caisson.slot=a")));
        assert_eq!(p.render()[1], "caisson.root=initrd:/caisson/root.img");
        let again = CaissonParams::from_cmdline(&KernelCmdline::parse(&p.render().join(" "))).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn initrd_roots_must_be_plain_absolute_paths() {
        for bad in ["initrd:", "initrd:/", "initrd:root.img", "initrd:/a/../b", "initrd:/a//b", "initrd:/./a", "initrd:/a/"] {
            let e = CaissonParams::from_cmdline(&KernelCmdline::parse(&format!("caisson.slot=a caisson.root={bad}")))
                .unwrap_err();
            assert!(matches!(e, CmdlineError::Invalid { key: KEY_ROOT, .. }), "{bad}: {e}");
        }
        assert!(RootSpec::parse("initrd:/caisson/root.img").is_ok());
    }

    #[test]
    fn a_partlabel_with_spaces_renders_as_one_word() {
        let line = "caisson.slot=a \"caisson.root=PARTLABEL=ROOT A\" caisson.verity=off";
        let p = CaissonParams::from_cmdline(&KernelCmdline::parse(line)).unwrap();
        assert_eq!(p.root, RootSpec::PartLabel("ROOT A".into()));
        assert!(p.render().contains(&"caisson.root=\"PARTLABEL=ROOT A\"".to_string()));
        let again = CaissonParams::from_cmdline(&KernelCmdline::parse(&p.render().join(" "))).unwrap();
        assert_eq!(again, p);
    }
}
