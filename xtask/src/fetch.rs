//! `cargo xtask fetch [--update]`: fill artifacts/ from artifacts.lock with
//! `apt-get download`, verifying every sha256; or re-pin to the archive.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use image_builder::lock::{self, Artifact, Lock, LockError};

use crate::deps::{self, apt_get, is_root};
use crate::workspace::{describe, Workspace};

const APT_LISTS: &str = "/var/lib/apt/lists";
/// Package lists older than this are refreshed before looking anything up.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

pub fn fetch(ws: &Workspace, update: bool) -> Result<()> {
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
    for a in &lock.artifacts {
        fetch_one(&mut apt, &dir, a)?;
    }
    Ok(())
}

/// Present and verified → nothing to do; otherwise download and verify.
fn fetch_one(apt: &mut Apt, dir: &Path, a: &Artifact) -> Result<PathBuf> {
    match lock::verify(dir, a) {
        Ok(file) => {
            println!("fetch: ok        {} ({} {})", a.name, a.package, a.version);
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
    println!("fetch: download  {} ({} {})", a.name, a.package, a.version);
    apt.download(dir, &a.package, &a.version, &a.arch)?;
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

/// Re-pin every artifact to the candidate version of the archive.
fn update_lock(ws: &Workspace, lock_path: &Path, mut lock: Lock, dir: &Path) -> Result<()> {
    let mut apt = Apt::default();
    apt.refresh()?;
    let mut changes = Vec::new();
    for a in lock.artifacts.iter_mut() {
        let package = match &a.follows {
            Some(meta) => apt.first_dependency(meta)?,
            None => a.package.clone(),
        };
        let version = apt.candidate(&package, &a.arch)?;
        if package == a.package && version == a.version {
            fetch_one(&mut apt, dir, a)?;
            continue;
        }
        let next = Artifact {
            package,
            version,
            sha256: String::new(),
            ..a.clone()
        };
        let file = dir.join(next.file_name());
        if file.exists() {
            // Whatever is there was not verified by apt in this run.
            remove(&file)?;
        }
        println!(
            "fetch: download  {} ({} {})",
            next.name, next.package, next.version
        );
        apt.download(dir, &next.package, &next.version, &next.arch)?;
        let sha256 =
            lock::sha256_file(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let next = Artifact { sha256, ..next };
        changes.push(format!(
            "  {}: {} {} ({}…) → {} {} ({}…)",
            a.name,
            a.package,
            a.version,
            &a.sha256[..12],
            next.package,
            next.version,
            &next.sha256[..12]
        ));
        *a = next;
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

    #[test]
    fn keeps_the_header_comment() {
        let text = "# Pinned inputs.\n#\n# more\nversion = 1\n# not header\n";
        assert_eq!(header_of(text), "# Pinned inputs.\n#\n# more\n");
    }
}
