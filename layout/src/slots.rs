//! What systemd-boot will boot, decided the way systemd-boot 252 decides it,
//! and what each A/B slot's entry says about the slot.
//!
//! systemd-boot orders Type #1 entries without a `sort-key` by their file
//! name (lower-cased), newest first by `strverscmp_improved`, with entries
//! whose tries have run out (`+0-N`) moved to the end; with no `default` in
//! loader.conf and no EFI variable naming one, it boots the first. Caisson
//! writes no sort-key and no default, so this module can predict the next
//! boot from the ESP's file names alone: the upgrade path uses it to refuse
//! a bundle whose entry would not be tried first.

use std::cmp::Ordering;

use crate::boot_entry::BootEntry;
use crate::slot::Slot;

fn is_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// systemd's `strverscmp_improved`: `~` pre-releases are older, `-`
/// separates version and release, `^` marks patched releases, numeric
/// segments compare by value and are newer than alphabetic ones, more
/// segments are newer. Other characters separate segments.
pub fn strverscmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    let (mut i, mut j) = (0usize, 0usize);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while i < a.len() && !is_version_char(at(a, i)) {
            i += 1;
        }
        while j < b.len() && !is_version_char(at(b, j)) {
            j += 1;
        }
        if at(a, i) == b'~' || at(b, j) == b'~' {
            let r = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
            if r != Ordering::Equal {
                return r;
            }
            i += 1;
            j += 1;
        }
        if i >= a.len() || j >= b.len() {
            return a.get(i..).unwrap_or_default().cmp(b.get(j..).unwrap_or_default());
        }
        for sep in [b'-', b'^', b'.'] {
            if at(a, i) == sep || at(b, j) == sep {
                let r = (at(a, i) != sep).cmp(&(at(b, j) != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        let digit = |s: &[u8], k: usize| at(s, k).is_ascii_digit();
        let (mut ii, mut jj);
        if digit(a, i) || digit(b, j) {
            ii = i;
            while digit(a, ii) {
                ii += 1;
            }
            jj = j;
            while digit(b, jj) {
                jj += 1;
            }
            let r = (i != ii).cmp(&(j != jj));
            if r != Ordering::Equal {
                return r;
            }
            while at(a, i) == b'0' && i < ii {
                i += 1;
            }
            while at(b, j) == b'0' && j < jj {
                j += 1;
            }
            let r = (ii - i).cmp(&(jj - j));
            if r != Ordering::Equal {
                return r;
            }
            let r = a.get(i..ii).cmp(&b.get(j..jj));
            if r != Ordering::Equal {
                return r;
            }
        } else {
            let alpha = |s: &[u8], k: usize| at(s, k).is_ascii_alphabetic();
            ii = i;
            while alpha(a, ii) {
                ii += 1;
            }
            jj = j;
            while alpha(b, jj) {
                jj += 1;
            }
            let n = (ii - i).min(jj - j);
            let r = a.get(i..i + n).cmp(&b.get(j..j + n));
            if r != Ordering::Equal {
                return r;
            }
            let r = (ii - i).cmp(&(jj - j));
            if r != Ordering::Equal {
                return r;
            }
        }
        i = ii;
        j = jj;
    }
}

fn tries_left(e: &BootEntry) -> Option<u32> {
    e.counter.map(|c| c.left)
}

/// systemd-boot 252's `config_entry_compare` for entries without a
/// sort-key: `Less` means `a` is shown (and booted) before `b`.
pub fn boot_order(a: &BootEntry, b: &BootEntry) -> Ordering {
    let r = a.is_bad().cmp(&b.is_bad());
    if r != Ordering::Equal {
        return r;
    }
    let r = strverscmp(&a.file_name().to_lowercase(), &b.file_name().to_lowercase()).reverse();
    if r != Ordering::Equal {
        return r;
    }
    match (a.counter, b.counter) {
        (Some(x), Some(y)) => x.left.cmp(&y.left).reverse().then(x.done.cmp(&y.done)),
        _ => Ordering::Equal,
    }
}

/// The entry systemd-boot boots next, absent a one-shot or default choice.
pub fn next_boot(entries: &[BootEntry]) -> Option<&BootEntry> {
    entries.iter().min_by(|a, b| boot_order(a, b))
}

/// What one slot's entry says about the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// No entry: nothing boots from this slot.
    Empty,
    /// Blessed: no counter.
    KnownGood,
    /// Written by an upgrade and not yet blessed; `left` boots remain.
    Trying { left: u32 },
    /// Its tries ran out.
    Bad,
}

impl EntryState {
    pub fn of(entry: Option<&BootEntry>) -> EntryState {
        match entry {
            None => EntryState::Empty,
            Some(e) => match tries_left(e) {
                None => EntryState::KnownGood,
                Some(0) => EntryState::Bad,
                Some(left) => EntryState::Trying { left },
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EntryState::Empty => "empty",
            EntryState::KnownGood => "known-good",
            EntryState::Trying { .. } => "trying",
            EntryState::Bad => "bad",
        }
    }
}

/// The entry of `slot` among `entries`: of several (which only a crash
/// between two renames could leave), the one systemd-boot would pick.
pub fn entry_of(entries: &[BootEntry], slot: Slot) -> Option<&BootEntry> {
    entries
        .iter()
        .filter(|e| e.slot == slot)
        .min_by(|a, b| boot_order(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_entry::Counter;

    fn e(name: &str) -> BootEntry {
        BootEntry::parse_file_name(name).unwrap()
    }

    #[test]
    fn versions_compare_like_systemd() {
        use Ordering::*;
        // Cases from systemd's test-string-util.c (test_strverscmp_improved).
        let newer_first = [
            ("123.45-1.fc33", "123.45-1.fc32"),
            ("124", "123.45-1.fc33"),
            ("0.10.0", "0.9.0"),
            ("1.0", "1.0~rc1"),
            ("1.0.1", "1.0"),
            ("1.0a", "1.0"),
            ("1.0.a", "1.0-a"),
            ("1.0^1", "1.0-1"),
            ("1.0^1", "1.0"),
            ("1.0-1", "1.0"),
            ("1.10", "1.9"),
            ("1.0b", "1.0a"),
            ("1.0abc", "1.0ab"),
        ];
        for (new, old) in newer_first {
            assert_eq!(strverscmp(new, old), Greater, "{new} > {old}");
            assert_eq!(strverscmp(old, new), Less, "{old} < {new}");
        }
        assert_eq!(strverscmp("1.0", "1.0"), Equal);
        assert_eq!(strverscmp("001.0", "1.0"), Equal);
        assert_eq!(strverscmp("1_0", "1.0"), Greater, "_ is dropped, and a segment without a prefix is newer than a .-prefixed one");
    }

    #[test]
    fn the_upgrade_entry_boots_first_and_a_bad_one_last() {
        let v1 = e("caisson-0.1.0-a.conf");
        let v2 = e("caisson-0.2.0-b+3.conf");
        assert_eq!(next_boot(&[v1.clone(), v2.clone()]), Some(&v2));
        let v2_tried = e("caisson-0.2.0-b+2-1.conf");
        assert_eq!(next_boot(&[v1.clone(), v2_tried.clone()]), Some(&v2_tried));
        let v2_bad = e("caisson-0.2.0-b+0-3.conf");
        assert_eq!(next_boot(&[v2_bad.clone(), v1.clone()]), Some(&v1));
        // 0.10.0 is newer than 0.9.0, not older as a plain string compare says.
        let a = e("caisson-0.9.0-a.conf");
        let b = e("caisson-0.10.0-b+3.conf");
        assert_eq!(next_boot(&[a, b.clone()]), Some(&b));
        // The same version in the other slot: b's name sorts after a's.
        let a = e("caisson-0.2.0-a+3.conf");
        let b = e("caisson-0.2.0-b.conf");
        assert_eq!(next_boot(&[a, b.clone()]), Some(&b));
    }

    #[test]
    fn slot_states_follow_the_counter() {
        assert_eq!(EntryState::of(None), EntryState::Empty);
        assert_eq!(EntryState::of(Some(&e("caisson-1-a.conf"))), EntryState::KnownGood);
        assert_eq!(EntryState::of(Some(&e("caisson-1-a+2-1.conf"))), EntryState::Trying { left: 2 });
        assert_eq!(EntryState::of(Some(&e("caisson-1-a+0-3.conf"))), EntryState::Bad);
        let entries = [e("caisson-0.1.0-a.conf"), e("caisson-0.2.0-b+1-2.conf")];
        assert_eq!(entry_of(&entries, Slot::B).and_then(|e| e.counter), Some(Counter { left: 1, done: 2 }));
    }
}
