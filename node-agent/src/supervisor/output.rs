//! A service's stdout and stderr: one pipe for both (so their lines keep
//! their order), read by a task of the agent and cut into lines.

use std::io;
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Longer lines are cut into pieces of at most this many bytes.
pub const MAX_LINE: usize = 16 << 10;

/// `(read end, write end)`, both close-on-exec (the child's copies become
/// its fds 1 and 2, which exec keeps).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Read `read` until every writer has closed it, handing each line to
/// `line`.
pub async fn forward(read: OwnedFd, mut line: impl FnMut(&str)) -> io::Result<()> {
    let mut pipe = pipe::Receiver::from_owned_fd(read)?;
    let mut lines = LineSplitter::new(MAX_LINE);
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                lines.finish(&mut line);
                return Err(e);
            }
        };
        lines.push(buf.get(..n).unwrap_or_default(), &mut line);
    }
    lines.finish(&mut line);
    Ok(())
}

/// Bytes in, lines out: split at `\n` (a `\r` before it is dropped), and
/// at `max` bytes (on a UTF-8 character boundary when there is one);
/// invalid UTF-8 is replaced.
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            pending: Vec::new(),
            max: max.max(4),
        }
    }

    pub fn push(&mut self, mut bytes: &[u8], line: &mut impl FnMut(&str)) {
        while let Some(&next) = bytes.first() {
            if self.pending.len() >= self.max {
                // Cut only now that the next byte is known: a newline right
                // after a full line must not become an empty line.
                if next == b'\n' {
                    self.end_line(line);
                    bytes = bytes.get(1..).unwrap_or_default();
                } else {
                    self.cut(line);
                }
                continue;
            }
            let room = self.max - self.pending.len();
            let window = bytes.get(..room.min(bytes.len())).unwrap_or_default();
            match window.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    self.pending
                        .extend_from_slice(window.get(..at).unwrap_or_default());
                    self.end_line(line);
                    bytes = bytes.get(at + 1..).unwrap_or_default();
                }
                None => {
                    self.pending.extend_from_slice(window);
                    bytes = bytes.get(window.len()..).unwrap_or_default();
                }
            }
        }
    }

    /// The last line, if it had no newline.
    pub fn finish(&mut self, line: &mut impl FnMut(&str)) {
        if !self.pending.is_empty() {
            emit(&self.pending, line);
            self.pending.clear();
        }
    }

    fn end_line(&mut self, line: &mut impl FnMut(&str)) {
        if self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        emit(&self.pending, line);
        self.pending.clear();
    }

    /// Emit a full buffer, keeping a character cut in half for the next piece.
    fn cut(&mut self, line: &mut impl FnMut(&str)) {
        let len = self.pending.len();
        let mut at = len;
        // The start of the last character: back over continuation bytes.
        let mut start = len.saturating_sub(1);
        while start > 0
            && len - start < 4
            && self.pending.get(start).is_some_and(|b| b & 0xC0 == 0x80)
        {
            start -= 1;
        }
        let width = match self.pending.get(start) {
            Some(b) if b & 0xE0 == 0xC0 => 2,
            Some(b) if b & 0xF0 == 0xE0 => 3,
            Some(b) if b & 0xF8 == 0xF0 => 4,
            _ => 1,
        };
        if start > 0 && start + width > len {
            at = start;
        }
        let rest = self.pending.split_off(at);
        emit(&self.pending, line);
        self.pending = rest;
    }
}

fn emit(bytes: &[u8], line: &mut impl FnMut(&str)) {
    line(&String::from_utf8_lossy(bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max);
        for c in chunks {
            s.push(c, &mut |l: &str| out.push(l.to_string()));
        }
        s.finish(&mut |l: &str| out.push(l.to_string()));
        out
    }

    #[test]
    fn lines_are_joined_across_reads_and_split_at_newlines() {
        assert_eq!(
            split(100, &[b"one\ntw", b"o\r\n\nthree"]),
            ["one", "two", "", "three"]
        );
        assert!(split(100, &[b""]).is_empty());
    }

    #[test]
    fn long_lines_are_cut_without_splitting_a_character() {
        assert_eq!(split(4, &[b"abcdefghij\n"]), ["abcd", "efgh", "ij"]);
        // "é" is 2 bytes: the cut goes before it, not through it.
        assert_eq!(split(4, &["abcé\n".as_bytes()]), ["abc", "é"]);
        assert_eq!(split(4, &["abé".as_bytes(), b"cd\n"]), ["abé", "cd"]);
        assert_eq!(split(4, &[b"abcd", b"\n", b"ef"]), ["abcd", "ef"]);
        // A line of exactly `max` bytes then its newline: no empty piece.
        assert_eq!(split(4, &[b"abcd\nef\n"]), ["abcd", "ef"]);
        assert_eq!(split(4, &[&[0xff, b'a', b'\n']]), ["\u{fffd}a"]);
        let long = "x".repeat(MAX_LINE * 2 + 5);
        let pieces = split(MAX_LINE, &[long.as_bytes(), b"\n"]);
        assert_eq!(
            pieces.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 5]
        );
    }
}
