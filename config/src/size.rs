//! Disk sizes as people write them in a disk selector: `"4GiB"` (exactly),
//! `">= 100GB"`, `"<= 2TiB"`, `"> 1TB"`, `"< 64GiB"`. Units: `B`, decimal
//! `KB`/`MB`/`GB`/`TB`/`PB` (powers of 1000) and binary
//! `KiB`/`MiB`/`GiB`/`TiB`/`PiB` (powers of 1024), case-insensitive;
//! a bare number is bytes.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeOp {
    Exactly,
    AtLeast,
    AtMost,
    MoreThan,
    LessThan,
}

/// A parsed size condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeMatch {
    pub op: SizeOp,
    pub bytes: u64,
}

const UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("pb", 1000 * 1000 * 1000 * 1000 * 1000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("pib", 1 << 50),
];

impl SizeMatch {
    /// Parse `"[op] number [unit]"`; the error says what was expected.
    pub fn parse(text: &str) -> Result<SizeMatch, String> {
        let t = text.trim();
        let (op, rest) = [
            (">=", SizeOp::AtLeast),
            ("<=", SizeOp::AtMost),
            ("==", SizeOp::Exactly),
            (">", SizeOp::MoreThan),
            ("<", SizeOp::LessThan),
            ("=", SizeOp::Exactly),
        ]
        .into_iter()
        .find_map(|(p, op)| t.strip_prefix(p).map(|r| (op, r.trim_start())))
        .unwrap_or((SizeOp::Exactly, t));
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, unit) = rest.split_at(digits_end);
        let expected = "expected a size like \"4GiB\", \">= 100GB\" or \"<= 2TiB\"";
        if number.is_empty() {
            return Err(format!("{text:?}: {expected}"));
        }
        let unit = unit.trim().to_ascii_lowercase();
        let scale = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    format!("{text:?}: unknown unit {unit:?}: use B, KB, MB, GB, TB, PB or KiB, MiB, GiB, TiB, PiB")
                })?
        };
        let bytes = scaled(number, scale).ok_or_else(|| {
            format!(
                "{text:?}: {number:?} is not a whole number of bytes in that unit, or is too large"
            )
        })?;
        if bytes == 0 {
            return Err(format!("{text:?}: a disk size must be more than 0"));
        }
        Ok(SizeMatch { op, bytes })
    }

    pub fn matches(&self, size: u64) -> bool {
        match self.op {
            SizeOp::Exactly => size == self.bytes,
            SizeOp::AtLeast => size >= self.bytes,
            SizeOp::AtMost => size <= self.bytes,
            SizeOp::MoreThan => size > self.bytes,
            SizeOp::LessThan => size < self.bytes,
        }
    }
}

/// `number` (digits, at most one '.') times `scale`, exact: "1.5" GiB is
/// fine, "0.3" B is not.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) if !(f.contains('.') || i.is_empty() && f.is_empty()) => (i, f),
        Some(_) => return None,
        None => (number, ""),
    };
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int.checked_mul(scale)?;
    if !frac.is_empty() {
        let denom = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
        let f: u64 = frac.parse().ok()?;
        let part = f.checked_mul(scale)?;
        if part % denom != 0 {
            return None;
        }
        total = total.checked_add(part / denom)?;
    }
    Some(total)
}

impl fmt::Display for SizeMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            SizeOp::Exactly => "",
            SizeOp::AtLeast => ">= ",
            SizeOp::AtMost => "<= ",
            SizeOp::MoreThan => "> ",
            SizeOp::LessThan => "< ",
        };
        write!(f, "{op}{} bytes", self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_operators_and_both_kinds_of_units() {
        let m = |t: &str| SizeMatch::parse(t).unwrap();
        assert_eq!(
            m("4GiB"),
            SizeMatch {
                op: SizeOp::Exactly,
                bytes: 4 << 30
            }
        );
        assert_eq!(
            m(">= 1TB"),
            SizeMatch {
                op: SizeOp::AtLeast,
                bytes: 1_000_000_000_000
            }
        );
        assert_eq!(
            m("<=8GiB"),
            SizeMatch {
                op: SizeOp::AtMost,
                bytes: 8 << 30
            }
        );
        assert_eq!(m("> 512 mb").bytes, 512_000_000);
        assert_eq!(
            m("< 1.5GiB"),
            SizeMatch {
                op: SizeOp::LessThan,
                bytes: 3 << 29
            }
        );
        assert_eq!(
            m("== 4096"),
            SizeMatch {
                op: SizeOp::Exactly,
                bytes: 4096
            }
        );
        assert_eq!(m("1.5KB").bytes, 1500);
    }

    #[test]
    fn bad_sizes_say_what_was_expected() {
        for (bad, says) in [
            ("", "expected a size"),
            ("GiB", "expected a size"),
            (">=", "expected a size"),
            ("4 GB extra", "unknown unit"),
            ("4XB", "unknown unit"),
            ("0.3B", "whole number"),
            ("1.2.3GB", "whole number"),
            ("99999999999PiB", "too large"),
            ("0", "more than 0"),
        ] {
            let e = SizeMatch::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn matching_follows_the_operator() {
        let four = 4u64 << 30;
        assert!(SizeMatch::parse("4GiB").unwrap().matches(four));
        assert!(!SizeMatch::parse("4GiB").unwrap().matches(four + 512));
        assert!(SizeMatch::parse(">= 4GiB").unwrap().matches(four));
        assert!(!SizeMatch::parse("> 4GiB").unwrap().matches(four));
        assert!(SizeMatch::parse("<= 4GiB").unwrap().matches(four));
        assert!(!SizeMatch::parse("< 4GiB").unwrap().matches(four));
        assert!(SizeMatch::parse("< 4GiB").unwrap().matches(four - 1));
    }
}
