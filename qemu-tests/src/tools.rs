//! Running host tools (qemu-img, sgdisk, unsquashfs, mtools, …) with errors
//! that show the command and its stderr.

use std::path::Path;
use std::process::{Command, Output};

use crate::{HarnessError, Result};

/// Run to completion; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let output = run_unchecked(cmd)?;
    if !output.status.success() {
        return Err(HarnessError::Command {
            command: describe(cmd),
            status: output.status,
            stderr: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(output)
}

/// Run to completion, whatever the exit status.
pub fn run_unchecked(cmd: &mut Command) -> Result<Output> {
    cmd.output().map_err(|source| HarnessError::Spawn {
        program: describe(cmd),
        source,
    })
}

/// Run and return stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).into_owned())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// mtools addresses a FAT file system inside a disk image as `image@@offset`.
pub fn mtools_image(image: &Path, offset: u64) -> String {
    format!("{}@@{}", image.display(), offset)
}

/// Copy one file out of the FAT file system at `offset` in `image`.
pub fn mcopy_out(image: &Path, offset: u64, fat_path: &str, dest: &Path) -> Result<()> {
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-o")
        .arg("-i")
        .arg(mtools_image(image, offset))
        .arg(format!("::{fat_path}"))
        .arg(dest))?;
    Ok(())
}

/// Free bytes of the FAT file system at `offset`, from `mdir`.
pub fn fat_free_bytes(image: &Path, offset: u64) -> Result<u64> {
    let out = stdout(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(mtools_image(image, offset))
            .arg("::"),
    )?;
    parse_bytes_free(&out).ok_or_else(|| crate::HarnessError::Disk {
        image: image.to_path_buf(),
        message: format!("no \"bytes free\" in `mdir` output:\n{out}"),
    })
}

/// mdir groups digits with spaces: "51 871 232 bytes free".
pub fn parse_bytes_free(out: &str) -> Option<u64> {
    let line = out.lines().find(|l| l.trim_end().ends_with("bytes free"))?;
    let digits: String = line
        .trim_end()
        .trim_end_matches("bytes free")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    digits.parse().ok()
}

/// One entry of `unsquashfs -lls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashEntry {
    /// Relative to the root, e.g. "usr/bin/node-agent"; "" for the root.
    pub path: String,
    /// 'd', '-', 'l', 'c', 'b', …
    pub kind: char,
    /// File size (uncompressed); 0 for devices.
    pub size: u64,
}

/// List the squashfs at byte `offset` of `image` with sizes.
pub fn squashfs_listing(image: &Path, offset: u64) -> Result<Vec<SquashEntry>> {
    let out = stdout(
        Command::new("unsquashfs")
            .arg("-lls")
            .arg("-o")
            .arg(offset.to_string())
            .arg(image),
    )?;
    Ok(parse_lls(&out))
}

/// Parse `unsquashfs -lls` output.
pub fn parse_lls(out: &str) -> Vec<SquashEntry> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let perms = words.next()?;
            let _owner = words.next()?;
            let size = words.next()?;
            let (_date, _time) = (words.next()?, words.next()?);
            let rest: Vec<&str> = words.collect();
            let path = rest.join(" ");
            let path = path.split(" -> ").next()?;
            let path = path.strip_prefix("squashfs-root")?.trim_start_matches('/');
            Some(SquashEntry {
                path: path.to_string(),
                kind: perms.chars().next()?,
                size: size.parse().unwrap_or(0),
            })
        })
        .collect()
}

/// The compressed size of the squashfs at `offset`, from `unsquashfs -s`.
pub fn squashfs_bytes(image: &Path, offset: u64) -> Result<u64> {
    let out = stdout(
        Command::new("unsquashfs")
            .arg("-s")
            .arg("-o")
            .arg(offset.to_string())
            .arg(image),
    )?;
    parse_filesystem_size(&out).ok_or_else(|| crate::HarnessError::Disk {
        image: image.to_path_buf(),
        message: format!("no \"Filesystem size\" in `unsquashfs -s` output:\n{out}"),
    })
}

pub fn parse_filesystem_size(out: &str) -> Option<u64> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem size "))?;
    let mut words = line.split_whitespace();
    let number: f64 = words.next()?.parse().ok()?;
    let scale = match words.next()? {
        "bytes" => 1.0,
        "Kbytes" => 1024.0,
        "Mbytes" => 1024.0 * 1024.0,
        _ => return None,
    };
    Some((number * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unsquashfs_long_listing() {
        let out = "Parallel unsquashfs: Using 2 processors\n\
            drwxr-xr-x root/root                37 2026-11-21 07:46 squashfs-root\n\
            lrwxrwxrwx root/root                 7 2026-11-21 07:46 squashfs-root/bin -> usr/bin\n\
            -rwxr-xr-x root/root            151344 2026-11-21 07:46 squashfs-root/usr/bin/ls\n\
            crw-r--r-- root/root             5,  1 2026-11-21 07:46 squashfs-root/dev/console\n";
        let entries = parse_lls(out);
        assert_eq!(
            entries[0],
            SquashEntry {
                path: "".into(),
                kind: 'd',
                size: 37
            }
        );
        assert_eq!(
            entries[1],
            SquashEntry {
                path: "bin".into(),
                kind: 'l',
                size: 7
            }
        );
        assert_eq!(
            entries[2],
            SquashEntry {
                path: "usr/bin/ls".into(),
                kind: '-',
                size: 151344
            }
        );
        assert_eq!(
            entries.len(),
            3,
            "a device line has no single size word: {entries:?}"
        );
    }

    #[test]
    fn parses_mdir_free_space() {
        let out = "Directory for ::/\n\na            <DIR>     2026-11-21   7:46\n        1 file                    0 bytes\n                         51 871 232 bytes free\n\n";
        assert_eq!(parse_bytes_free(out), Some(51_871_232));
    }

    #[test]
    fn parses_filesystem_size() {
        let out = "Found a valid SQUASHFS 4:0 superblock on x.\nFilesystem size 64578 bytes (63.06 Kbytes / 0.06 Mbytes)\n";
        assert_eq!(parse_filesystem_size(out), Some(64578));
        assert_eq!(
            parse_filesystem_size("Filesystem size 63.06 Kbytes (0.06 Mbytes)"),
            Some(64573)
        );
    }
}
