//! The serial console as QEMU writes it to a file, read incrementally and
//! split into lines with terminal escape sequences removed.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// How many lines a failure report shows.
pub const TAIL_LINES: usize = 40;

pub struct Console {
    path: PathBuf,
    file: Option<File>,
    /// Complete lines read so far.
    lines: Vec<String>,
    /// Bytes after the last newline.
    partial: Vec<u8>,
    /// Index of the line the next search starts at.
    cursor: usize,
}

impl Console {
    pub fn new(path: &Path) -> Console {
        Console {
            path: path.to_path_buf(),
            file: None,
            lines: Vec::new(),
            partial: Vec::new(),
            cursor: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read whatever QEMU has written since the last call.
    pub fn refresh(&mut self) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut fresh = Vec::new();
        if file.read_to_end(&mut fresh).is_err() {
            return;
        }
        self.partial.extend_from_slice(&fresh);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.lines.push(clean_line(&line));
        }
    }

    /// The first line at or after the previous match that satisfies `matches`;
    /// moves the cursor to it. Starting at the previous match (not after it)
    /// lets two expectations share one line while still checking order.
    pub fn find_next(&mut self, matches: &dyn Fn(&str) -> bool) -> Option<String> {
        self.refresh();
        let found = self.lines[self.cursor..].iter().position(|l| matches(l))?;
        self.cursor += found;
        Some(self.lines[self.cursor].clone())
    }

    /// Like [`Console::find_next`], but also looks at an unterminated last line;
    /// used once QEMU has exited and nothing more will be written.
    pub fn find_next_final(&mut self, matches: &dyn Fn(&str) -> bool) -> Option<String> {
        if let Some(line) = self.find_next(matches) {
            return Some(line);
        }
        let last = clean_line(&self.partial);
        matches(&last).then_some(last)
    }

    /// Every line so far, including an unterminated last one.
    pub fn text(&mut self) -> String {
        self.refresh();
        let mut text = self.lines.join("\n");
        if !self.partial.is_empty() {
            text.push('\n');
            text.push_str(&clean_line(&self.partial));
        }
        text
    }

    /// The last `n` lines, for failure reports.
    pub fn tail(&mut self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Decode lossily, drop the line ending and ANSI/VT100 escape sequences
/// (firmware paints the screen with them).
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters, then one final byte in '@'..='~'.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // Two-byte sequences such as ESC c or ESC ( B.
                Some('(') | Some(')') => {
                    chars.next();
                }
                _ => {}
            },
            '\r' | '\n' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_escapes_and_line_endings() {
        assert_eq!(
            clean_line(b"\x1b[2J\x1b[01;01HBdsDxe: loading\r\n"),
            "BdsDxe: loading"
        );
        assert_eq!(
            clean_line(b"\x1b[1;32mINFO\x1b[0m phase data: ok\n"),
            "INFO phase data: ok"
        );
    }

    #[test]
    fn searches_in_order_from_the_previous_match() {
        let dir = std::env::temp_dir().join(format!("console-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        std::fs::write(&path, "one\ntwo three\nfour\npartial").unwrap();
        let mut c = Console::new(&path);
        assert_eq!(
            c.find_next(&|l| l.contains("three")).as_deref(),
            Some("two three")
        );
        // The matched line itself is still searchable, earlier lines are not.
        assert_eq!(
            c.find_next(&|l| l.contains("two")).as_deref(),
            Some("two three")
        );
        assert_eq!(c.find_next(&|l| l.contains("one")), None);
        // An unterminated line only counts once QEMU is gone.
        assert_eq!(c.find_next(&|l| l.contains("partial")), None);
        assert_eq!(
            c.find_next_final(&|l| l.contains("partial")).as_deref(),
            Some("partial")
        );
        assert!(c.tail(2).ends_with("four\npartial"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
