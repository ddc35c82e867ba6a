//! `fnmatch(3)` with flags 0, as kmod uses it to match a device's modalias
//! against `alias` globs: `*`, `?`, `[...]` classes with ranges and `!`/`^`
//! negation, and backslash escapes. `/` and leading dots are not special.

/// Does `text` match the glob `pattern`?
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    matches(&p, &t)
}

/// Iterative matcher: on a mismatch, retry from the last `*` with one more
/// character consumed. Linear in practice, no recursion, no allocation.
fn matches(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(_) => single(p, pi, t.get(ti).copied()),
            None => None,
        };
        match step {
            Some(next_pi) => {
                pi = next_pi;
                ti += 1;
            }
            None => match star {
                Some((star_pi, star_ti)) => {
                    pi = star_pi;
                    ti = star_ti + 1;
                    star = Some((star_pi, star_ti + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// Match one pattern element at `pi` (not `*`) against `c`. Returns the
/// index after the element on a match.
fn single(p: &[char], pi: usize, c: Option<char>) -> Option<usize> {
    let c = c?;
    match p.get(pi)? {
        '?' => Some(pi + 1),
        '[' => match class(p, pi + 1, c) {
            Some((true, next)) => Some(next),
            Some((false, _)) => None,
            // An unterminated `[` is a literal, as in glibc.
            None => (c == '[').then_some(pi + 1),
        },
        '\\' => match p.get(pi + 1) {
            Some(&lit) => (lit == c).then_some(pi + 2),
            None => (c == '\\').then_some(pi + 1),
        },
        &lit => (lit == c).then_some(pi + 1),
    }
}

/// Parse the class starting after `[` and test `c` against it. Returns
/// (matched, index after `]`), or None if there is no closing `]`.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        let mut lo = *p.get(i)?;
        // `]` right after `[` or `[!` is a member, not the end.
        if lo == ']' && !first {
            return Some((found != negate, i + 1));
        }
        first = false;
        if lo == '\\' {
            i += 1;
            lo = *p.get(i)?;
        }
        i += 1;
        let is_range = p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&h| h != ']');
        if is_range {
            let mut hi = *p.get(i + 1)?;
            i += 2;
            if hi == '\\' {
                hi = *p.get(i)?;
                i += 1;
            }
            found |= lo <= c && c <= hi;
        } else {
            found |= lo == c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fnmatch;

    #[test]
    fn stars_and_question_marks() {
        assert!(fnmatch(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(!fnmatch(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00008086d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(fnmatch("virtio:d00000002v*", "virtio:d00000002v00001AF4"));
        assert!(!fnmatch("virtio:d00000002v*", "virtio:d00000012v00001AF4"));
        assert!(fnmatch("a?c", "abc"));
        assert!(!fnmatch("a?c", "ac"));
        assert!(fnmatch("*", ""));
        assert!(fnmatch("**x", "x"));
        assert!(!fnmatch("", "x"));
        assert!(fnmatch("a*b*c", "aXXbYYbc"));
        assert!(!fnmatch("a*b*c", "aXXbYYbcd"));
    }

    #[test]
    fn character_classes_ranges_and_negation() {
        assert!(fnmatch("usb:v0403p6001d0[0-5]*", "usb:v0403p6001d0400dc00"));
        assert!(!fnmatch(
            "usb:v0403p6001d0[0-3]*",
            "usb:v0403p6001d0400dc00"
        ));
        assert!(fnmatch("x[!0-9]y", "xay"));
        assert!(!fnmatch("x[!0-9]y", "x5y"));
        assert!(fnmatch("x[^ab]y", "xcy"));
        assert!(fnmatch("x[]]y", "x]y"));
        assert!(fnmatch("x[a-]y", "x-y"));
        assert!(fnmatch("acpi*:LNXPWRBN:*", "acpi:LNXPWRBN:"));
        assert!(fnmatch("acpi*:PNP0C0[CDE]:*", "acpi:PNP0C0C:"));
        assert!(!fnmatch("acpi*:PNP0C0[CDE]:*", "acpi:PNP0C0F:"));
    }

    #[test]
    fn escapes_and_unterminated_classes_are_literals() {
        assert!(fnmatch(r"a\*b", "a*b"));
        assert!(!fnmatch(r"a\*b", "axb"));
        assert!(fnmatch("a[b", "a[b"));
        assert!(!fnmatch("a[b", "ab"));
    }

    #[test]
    fn power_button_input_alias_matches_evdev() {
        assert!(fnmatch(
            "input:b*v*p*e*-e*k*r*a*m*l*s*f*w*",
            "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw"
        ));
        assert!(!fnmatch(
            "input:b*v*p*e*-e*1,*k*",
            "input:b0019v0000p0001e0000-e0,k74,"
        ));
    }
}
