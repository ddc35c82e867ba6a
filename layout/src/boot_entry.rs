//! Boot Loader Specification Type #1 entries, named
//! `caisson-<version>-<slot>[+LEFT[-DONE]].conf`, and systemd-boot's
//! boot-counting suffix.

use std::fmt::Write as _;

use thiserror::Error;

use crate::slot::Slot;

pub const ENTRY_PREFIX: &str = "caisson-";
pub const ENTRIES_DIR: &str = "loader/entries";
/// The title every Caisson entry starts with.
pub const ENTRY_TITLE: &str = "Caisson";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BootEntryError {
    #[error("boot entry file name {name:?} is not ours: {reason}")]
    BadName { name: String, reason: &'static str },
}

/// Boot counting state, as systemd-boot keeps it in the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// One slot's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub version: String,
    pub slot: Slot,
    /// None: blessed (known good). Some: still being tried.
    pub counter: Option<Counter>,
}

impl BootEntry {
    /// `caisson-<version>-<slot>` without counter or extension.
    pub fn id(&self) -> String {
        format!("{ENTRY_PREFIX}{}-{}", self.version, self.slot)
    }

    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}.conf", self.id()),
            Some(Counter { left, done: 0 }) => format!("{}+{left}.conf", self.id()),
            Some(Counter { left, done }) => format!("{}+{left}-{done}.conf", self.id()),
        }
    }

    /// An entry whose tries have run out: systemd-boot sorts it last.
    pub fn is_bad(&self) -> bool {
        matches!(self.counter, Some(Counter { left: 0, .. }))
    }

    pub fn parse_file_name(name: &str) -> Result<BootEntry, BootEntryError> {
        let bad = |reason| BootEntryError::BadName { name: name.to_string(), reason };
        let stem = name.strip_suffix(".conf").ok_or_else(|| bad("no .conf extension"))?;
        let body = stem.strip_prefix(ENTRY_PREFIX).ok_or_else(|| bad("no caisson- prefix"))?;
        let (id, counter) = match body.rsplit_once('+') {
            None => (body, None),
            Some((id, count)) => {
                let (left, done) = match count.split_once('-') {
                    Some((l, d)) => (l, d),
                    None => (count, "0"),
                };
                let left = left.parse().map_err(|_| bad("counter is not a number"))?;
                let done = done.parse().map_err(|_| bad("counter is not a number"))?;
                (id, Some(Counter { left, done }))
            }
        };
        let (version, slot) = id.rsplit_once('-').ok_or_else(|| bad("no -<slot> suffix"))?;
        if version.is_empty() {
            return Err(bad("empty version"));
        }
        let slot = slot.parse::<Slot>().map_err(|_| bad("slot is not a or b"))?;
        Ok(BootEntry { version: version.to_string(), slot, counter })
    }

    /// The entry's text. Kernel and initrd live in the slot's ESP directory.
    pub fn render(&self, title: &str, options: &[String]) -> String {
        let dir = self.slot.esp_dir();
        let mut s = String::new();
        let _ = writeln!(s, "title {title} {} (slot {})", self.version, self.slot);
        let _ = writeln!(s, "version {}", self.version);
        let _ = writeln!(s, "linux /{dir}/vmlinuz");
        let _ = writeln!(s, "initrd /{dir}/initrd");
        let _ = writeln!(s, "options {}", options.join(" "));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_with_and_without_counters() {
        for (name, counter) in [
            ("caisson-1.0.0-a.conf", None),
            ("caisson-2.0.0-rc1-b+3.conf", Some(Counter { left: 3, done: 0 })),
            ("caisson-2.0.0-b+0-3.conf", Some(Counter { left: 0, done: 3 })),
            ("caisson-2.0.0-b+1-2.conf", Some(Counter { left: 1, done: 2 })),
        ] {
            let e = BootEntry::parse_file_name(name).unwrap();
            assert_eq!(e.counter, counter, "{name}");
            assert_eq!(e.file_name(), name);
        }
        let e = BootEntry::parse_file_name("caisson-2.0.0-rc1-b+3.conf").unwrap();
        assert_eq!(e.version, "2.0.0-rc1");
        assert_eq!(e.slot, Slot::B);
        assert!(BootEntry::parse_file_name("caisson-2.0.0-b+0-3.conf").unwrap().is_bad());
    }

    #[test]
    fn foreign_names_are_rejected() {
        for name in ["debian.conf", "caisson-1.0.0-c.conf", "caisson-1.0.0-a+x.conf", "caisson--a.conf", "caisson-1-a"] {
            assert!(BootEntry::parse_file_name(name).is_err(), "{name}");
        }
    }

    #[test]
    fn render_points_at_the_slot_directory() {
        let e = BootEntry { version: "0.1.0".into(), slot: Slot::A, counter: None };
        let text = e.render("Caisson", &["caisson.slot=a".into(), "console=ttyS0".into()]);
        assert!(text.contains("linux /a/vmlinuz\n"));
        assert!(text.contains("initrd /a/initrd\n"));
        assert!(text.contains("version 0.1.0\n"));
        assert!(text.contains("options caisson.slot=a console=ttyS0\n"));
    }
}
