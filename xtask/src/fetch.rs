//! `cargo xtask fetch [--update]`: fill artifacts/ from artifacts.lock with
//! `apt-get download`, verifying every sha256; or re-pin to the archive.
//! Plain-file artifacts (`kind = "file"`: k3s, its air-gap images) cannot be
//! downloaded here: they are verified when present, and when missing the
//! way to obtain them is printed, never skipped in silence.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use image_builder::lock::{self, Artifact, DebPin, Lock, LockError, Origin};

use crate::deps::{self, apt_get, is_root};
use crate::workspace::{describe, Workspace};

const APT_LISTS: &str = "/var/lib/apt/lists";
/// Package lists older than this are refreshed before looking anything up.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What to do about a pinned plain file that is not in artifacts/.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFiles {
    /// `cargo xtask fetch`: report it and fail, artifacts/ is incomplete.
    Fail,
    /// Before building the default image, which names no file artifact:
    /// report it loudly and go on.
    Warn,
}

/// `cargo xtask fetch`: every pinned artifact must end up in artifacts/.
pub fn fetch_all(ws: &Workspace, update: bool) -> Result<()> {
    fetch_with(ws, update, MissingFiles::Fail)
}

/// Before building, testing or benchmarking the default image, which names
/// no plain-file artifact: a missing one is reported loudly, not fatal.
pub fn fetch(ws: &Workspace, update: bool) -> Result<()> {
    fetch_with(ws, update, MissingFiles::Warn)
}

pub fn fetch_with(ws: &Workspace, update: bool, missing_files: MissingFiles) -> Result<()> {
    deps::ensure(&[deps::FETCH])?;
    let lock_path = ws.lock_file();
    let lock = Lock::load(&lock_path)?;
    let dir = ws.artifacts_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    warn_on_other_suite(&lock.suite);
    if update {
        return update_lock(ws, &lock_path, lock, &dir);
    }
    let mut apt = Apt::default();
    let mut missing = Vec::new();
    for a in &lock.artifacts {
        match &a.origin {
            Origin::Deb(d) => {
                fetch_one(&mut apt, &dir, a, d)?;
            }
            Origin::File(_) => {
                if let FileState::Missing = check_file(&dir, a)? {
                    missing.push(a.name.clone());
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let what = format!(
        "{} pinned in artifacts.lock but not in {}: {}",
        if missing.len() == 1 {
            "a file is"
        } else {
            "files are"
        },
        dir.display(),
        missing.join(", ")
    );
    match missing_files {
        MissingFiles::Fail => bail!("{what}; see above for how to obtain each"),
        MissingFiles::Warn => {
            eprintln!("fetch: WARNING: {what}; images that name them cannot be built");
            Ok(())
        }
    }
}

/// A pinned plain file in artifacts/.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Present(PathBuf),
    Missing,
}

/// Present with the pinned sha256 → ok; missing → say how to obtain it;
/// a different sha256 → error (a file the user copied is never deleted).
pub fn check_file(dir: &Path, a: &Artifact) -> Result<FileState> {
    match lock::verify(dir, a) {
        Ok(file) => {
            println!("fetch: ok        {} ({})", a.name, a.describe());
            Ok(FileState::Present(file))
        }
        Err(LockError::Missing { .. }) => {
            eprintln!("{}", missing_file_report(dir, a));
            Ok(FileState::Missing)
        }
        Err(LockError::Mismatch { file, actual, .. }) => bail!(
            "{} has sha256 {actual}, but artifacts.lock pins {} for {}: it is not the pinned file. \
             Replace it: {}",
            file.display(),
            a.sha256,
            a.name,
            lock::obtain_hint(a, dir)
        ),
        Err(e) => Err(e.into()),
    }
}

/// `fetch: MISSING k3s: not present in artifacts/; download <url> on a
/// connected machine, check sha256 <…>, copy it to artifacts/` — plus why.
pub fn missing_file_report(dir: &Path, a: &Artifact) -> String {
    let (file, source) = match &a.origin {
        Origin::File(f) => (f.file.as_str(), f.source.as_str()),
        Origin::Deb(_) => ("", ""),
    };
    format!(
        "fetch: MISSING   {name}: not present in {dir}/; download {source} on a connected machine, \
         check sha256 {sha256}, copy it to {dir}/{file}\n\
         fetch:           ({name} is a plain file pinned in artifacts.lock; `cargo xtask fetch` only \
         downloads Debian packages and never this one)",
        name = a.name,
        dir = dir.display(),
        sha256 = a.sha256,
    )
}

/// Present and verified → nothing to do; otherwise download and verify.
fn fetch_one(apt: &mut Apt, dir: &Path, a: &Artifact, d: &DebPin) -> Result<PathBuf> {
    match lock::verify(dir, a) {
        Ok(file) => {
            println!("fetch: ok        {} ({} {})", a.name, d.package, d.version);
            return Ok(file);
        }
        Err(LockError::Missing { .. }) => {}
        Err(LockError::Mismatch { file, actual, .. }) => {
            eprintln!(
                "fetch: {} has sha256 {actual}, not the pinned one; downloading it again",
                file.display()
            );
            remove(&file)?;
        }
        Err(e) => return Err(e.into()),
    }
    println!("fetch: download  {} ({} {})", a.name, d.package, d.version);
    apt.download(dir, &d.package, &d.version, &d.arch)?;
    match lock::verify(dir, a) {
        Ok(file) => Ok(file),
        Err(e) => {
            let _ = std::fs::remove_file(dir.join(a.file_name()));
            Err(anyhow!(e).context(format!(
                "downloaded {} does not match artifacts.lock; deleted it",
                a.file_name()
            )))
        }
    }
}

/// Re-pin every Debian artifact to the candidate version of the archive.
/// Plain files are re-pinned by hand (README: "Pinning k3s"); they are only
/// checked here.
fn update_lock(ws: &Workspace, lock_path: &Path, mut lock: Lock, dir: &Path) -> Result<()> {
    let mut apt = Apt::default();
    apt.refresh()?;
    let mut changes = Vec::new();
    for a in lock.artifacts.iter_mut() {
        let Some(d) = a.deb().cloned() else {
            println!(
                "fetch --update: {} is a plain file; re-pin it by hand (see README.md, \"Pinning k3s\")",
                a.name
            );
            check_file(dir, a)?;
            continue;
        };
        let package = match &d.follows {
            Some(meta) => apt.first_dependency(meta)?,
            None => d.package.clone(),
        };
        let version = apt.candidate(&package, &d.arch)?;
        if package == d.package && version == d.version {
            fetch_one(&mut apt, dir, a, &d)?;
            continue;
        }
        let pin = DebPin {
            package,
            version,
            ..d.clone()
        };
        let next = Artifact {
            name: a.name.clone(),
            sha256: String::new(),
            origin: Origin::Deb(pin.clone()),
        };
        let file = dir.join(next.file_name());
        if file.exists() {
            // Whatever is there was not verified by apt in this run.
            remove(&file)?;
        }
        println!(
            "fetch: download  {} ({} {})",
            next.name, pin.package, pin.version
        );
        apt.download(dir, &pin.package, &pin.version, &pin.arch)?;
        let sha256 =
            lock::sha256_file(&file).with_context(|| format!("cannot read {}", file.display()))?;
        changes.push(format!(
            "  {}: {} {} ({}…) → {} {} ({}…)",
            a.name,
            d.package,
            d.version,
            a.sha256.get(..12).unwrap_or(&a.sha256),
            pin.package,
            pin.version,
            sha256.get(..12).unwrap_or(&sha256)
        ));
        *a = Artifact { sha256, ..next };
    }
    if changes.is_empty() {
        println!("fetch --update: artifacts.lock is current; nothing changed");
        return Ok(());
    }
    let original = std::fs::read_to_string(lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    write_atomically(lock_path, &lock.render(&header_of(&original)))?;
    println!(
        "fetch --update: re-pinned in {}:\n{}",
        lock_path
            .strip_prefix(&ws.root)
            .unwrap_or(lock_path)
            .display(),
        changes.join("\n")
    );
    Ok(())
}

/// apt-get/apt-cache, refreshing the package lists once when they are
/// missing or stale.
#[derive(Default)]
struct Apt {
    refreshed: bool,
}

impl Apt {
    fn refresh(&mut self) -> Result<()> {
        if !self.refreshed {
            apt_get(&["update"])?;
            self.refreshed = true;
        }
        Ok(())
    }

    fn refresh_if_stale(&mut self) -> Result<()> {
        if !self.refreshed && lists_are_stale(Path::new(APT_LISTS)) {
            self.refresh()?;
        }
        Ok(())
    }

    fn download(&mut self, dir: &Path, package: &str, version: &str, arch: &str) -> Result<()> {
        self.refresh_if_stale()?;
        let mut cmd = Command::new("apt-get");
        if is_root() {
            // apt would drop to the _apt user, who cannot write to artifacts/.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd.arg("download")
            .arg(format!("{package}:{arch}={version}"))
            .current_dir(dir);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run `{}`", describe(&cmd)))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if left_the_archive(&stderr) {
            bail!(
                "{package} {version} pinned in artifacts.lock is no longer in the archive; \
                 run `cargo xtask fetch --update` to re-pin the current candidate\n(apt-get said: {})",
                stderr.trim()
            );
        }
        bail!(
            "`{}` in {} failed ({}):\n{}",
            describe(&cmd),
            dir.display(),
            out.status,
            stderr.trim()
        )
    }

    fn first_dependency(&mut self, meta: &str) -> Result<String> {
        let out = self.apt_cache(&["depends", meta])?;
        parse_first_depends(&out)
            .ok_or_else(|| anyhow!("`apt-cache depends {meta}` lists no Depends:\n{out}"))
    }

    fn candidate(&mut self, package: &str, arch: &str) -> Result<String> {
        let out = self.apt_cache(&["policy", &format!("{package}:{arch}")])?;
        parse_candidate(&out).ok_or_else(|| {
            anyhow!("the archive has no candidate version of {package}:{arch}:\n{out}")
        })
    }

    fn apt_cache(&mut self, args: &[&str]) -> Result<String> {
        self.refresh_if_stale()?;
        let out = Command::new("apt-cache")
            .args(args)
            .output()
            .context("cannot run apt-cache")?;
        if !out.status.success() {
            bail!(
                "`apt-cache {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// No package index at all, or none refreshed recently.
fn lists_are_stale(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    let newest = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    match newest {
        None => true,
        Some(t) => SystemTime::now()
            .duration_since(t)
            .map(|age| age > STALE_AFTER)
            .unwrap_or(false),
    }
}

fn warn_on_other_suite(suite: &str) {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"'));
    if let Some(codename) = codename {
        if codename != suite {
            eprintln!("fetch: warning: artifacts.lock pins {suite}, but this host's apt follows {codename}");
        }
    }
}

/// The first `Depends:` of `apt-cache depends` output (a real package, not
/// a `<virtual>` one).
pub fn parse_first_depends(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let dep = line
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        (!dep.starts_with('<') && !dep.is_empty()).then(|| dep.to_string())
    })
}

/// The `Candidate:` of `apt-cache policy` output; `(none)` means there is none.
pub fn parse_candidate(output: &str) -> Option<String> {
    let value = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))?
        .trim();
    (value != "(none)" && !value.is_empty()).then(|| value.to_string())
}

/// apt-get's ways of saying that a pinned package version is gone.
pub fn left_the_archive(stderr: &str) -> bool {
    stderr.contains("was not found")
        || stderr.contains("Unable to locate package")
        || stderr.contains("has no installation candidate")
}

/// The leading comment block of the lock file, kept on rewrite.
pub fn header_of(text: &str) -> String {
    let mut header = String::new();
    for line in text.lines() {
        if !(line.starts_with('#') || line.trim().is_empty()) {
            break;
        }
        header.push_str(line);
        header.push('\n');
    }
    header
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("lock.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

fn remove(file: &Path) -> Result<()> {
    std::fs::remove_file(file).with_context(|| format!("cannot delete {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from bookworm.
    const DEPENDS_META: &str =
        "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
    const DEPENDS_MANY: &str = "containerd\n  Depends: runc\n  Depends: libc6\n  Breaks: docker.io\n  Suggests: containernetworking-plugins\n";
    const DEPENDS_ALTERNATIVES: &str = "foo\n |Depends: <virtual-thing>\n  Depends: real-thing\n";
    const POLICY: &str = "runc:\n  Installed: (none)\n  Candidate: 1.1.5+ds1-1+deb12u1\n  Version table:\n     1.1.5+ds1-1+deb12u1 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n";
    const POLICY_NONE: &str =
        "ghost:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n";

    #[test]
    fn follows_the_meta_package_to_its_first_dependency() {
        assert_eq!(
            parse_first_depends(DEPENDS_META).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_first_depends(DEPENDS_MANY).as_deref(), Some("runc"));
        assert_eq!(
            parse_first_depends(DEPENDS_ALTERNATIVES).as_deref(),
            Some("real-thing")
        );
        assert_eq!(parse_first_depends("foo\n  Suggests: bar\n"), None);
    }

    #[test]
    fn reads_the_candidate_version() {
        assert_eq!(
            parse_candidate(POLICY).as_deref(),
            Some("1.1.5+ds1-1+deb12u1")
        );
        assert_eq!(parse_candidate(POLICY_NONE), None);
        // apt-cache policy prints nothing at all for an unknown package.
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn recognises_a_version_that_left_the_archive() {
        assert!(left_the_archive(
            "E: Version '1.0.0' for 'runc' was not found\n"
        ));
        assert!(left_the_archive("E: Unable to locate package nosuchpkg\n"));
        assert!(!left_the_archive(
            "E: Failed to fetch http://deb.debian.org/… 503 Service Unavailable\n"
        ));
    }

    const K3S_LOCK: &str = r#"
version = 1
suite = "bookworm"
[[artifact]]
name = "k3s"
kind = "file"
file = "k3s"
sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
source = "https://github.com/k3s-io/k3s/releases/download/v1.30.3%2Bk3s1/k3s"
"#;

    #[test]
    fn a_missing_file_artifact_is_explained_and_a_wrong_one_refused() {
        let lock = Lock::parse(Path::new("a.lock"), K3S_LOCK).unwrap();
        let k3s = &lock.artifacts[0];
        let dir = tempfile_dir();
        assert_eq!(check_file(&dir, k3s).unwrap(), FileState::Missing);
        let report = missing_file_report(&dir, k3s);
        let first = report.lines().next().unwrap();
        assert_eq!(
            first,
            format!(
                "fetch: MISSING   k3s: not present in {d}/; download \
                 https://github.com/k3s-io/k3s/releases/download/v1.30.3%2Bk3s1/k3s on a connected machine, \
                 check sha256 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824, copy it to {d}/k3s",
                d = dir.display()
            )
        );
        std::fs::write(dir.join("k3s"), b"hellO").unwrap();
        let e = check_file(&dir, k3s).unwrap_err().to_string();
        assert!(
            e.contains("it is not the pinned file") && e.contains("download https://"),
            "{e}"
        );
        assert!(
            dir.join("k3s").exists(),
            "a file the user copied is never deleted"
        );
        std::fs::write(dir.join("k3s"), b"hello").unwrap();
        assert_eq!(
            check_file(&dir, k3s).unwrap(),
            FileState::Present(dir.join("k3s"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh directory under the system temp dir (xtask has no tempfile).
    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-fetch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keeps_the_header_comment() {
        let text = "# Pinned inputs.\n#\n# more\nversion = 1\n# not header\n";
        assert_eq!(header_of(text), "# Pinned inputs.\n#\n# more\n");
    }
}
