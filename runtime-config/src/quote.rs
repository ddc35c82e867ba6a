//! Double-quoted strings that are valid both as TOML basic strings and as
//! YAML double-quoted scalars, whatever they contain.

use std::fmt::Write;

/// `s` in double quotes. Only the escapes TOML and YAML share are used:
/// `\"`, `\\`, `\t`, `\n`, `\r` and `\uXXXX` for every other control
/// character (C0, DEL, C1) and for the characters YAML treats as line breaks.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_escape_what_toml_and_yaml_need() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("l1\nl2\t\r"), "\"l1\\nl2\\t\\r\"");
        assert_eq!(
            quote("\u{0}\u{7f}\u{85}\u{2028}"),
            "\"\\u0000\\u007F\\u0085\\u2028\""
        );
        assert_eq!(quote("zone/ü"), "\"zone/ü\"");
    }
}
