//! Shared fixtures: the real pinned artifacts, a tiny static program for
//! `init` and the agent, and specs written into a temporary directory.

#![allow(dead_code, clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::process::Command;

use image_builder::build::{build, BuildError, BuildOptions, BuildReport};
use image_builder::lock::Lock;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn lock_path() -> PathBuf {
    workspace().join("artifacts.lock")
}

/// `CAISSON_ARTIFACTS_DIR`, else `<workspace>/artifacts`. Every pinned
/// package must be there: these tests exercise the real packages and must
/// not pass by skipping. (Pinned plain files such as k3s are not used here:
/// the k3s tests pin their own.)
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("CAISSON_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("artifacts"));
    let lock = Lock::load(&lock_path()).expect("artifacts.lock");
    let missing: Vec<String> = lock
        .artifacts
        .iter()
        .filter(|a| a.deb().is_some())
        .map(|a| a.file_name())
        .filter(|f| !dir.join(f).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "artifacts missing from {}: {missing:?}; run `cargo xtask fetch` (or set CAISSON_ARTIFACTS_DIR)",
        dir.display()
    );
    dir
}

/// A 129-byte static x86-64 ELF executable that calls exit(0). The builder
/// must not care what `init` and the agent do, only that they are programs.
pub fn tiny_static_elf() -> Vec<u8> {
    let code = [0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]; // mov eax,60; xor edi,edi; syscall
    let base = 0x40_0000u64;
    let total = 64 + 56 + code.len() as u64;
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(base + 64 + 56).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes());
    e.extend_from_slice(&64u16.to_le_bytes());
    e.extend_from_slice(&56u16.to_le_bytes());
    e.extend_from_slice(&1u16.to_le_bytes());
    e.extend_from_slice(&[0; 6]);
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&0u64.to_le_bytes());
    e.extend_from_slice(&base.to_le_bytes());
    e.extend_from_slice(&base.to_le_bytes());
    e.extend_from_slice(&total.to_le_bytes());
    e.extend_from_slice(&total.to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(&code);
    e
}

/// A scratch directory with programs, a spec and an (empty) output dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub init: PathBuf,
    pub agent: PathBuf,
    pub artifacts: PathBuf,
    pub out: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let tiny = dir.path().join("tiny-static");
        std::fs::write(&tiny, tiny_static_elf()).expect("write tiny ELF");
        let from_env = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| tiny.clone())
        };
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("out dir");
        Fixture {
            init: from_env("CAISSON_INIT_BIN"),
            agent: from_env("CAISSON_AGENT_BIN"),
            artifacts: artifacts_dir(),
            out,
            dir,
        }
    }

    /// The QEMU spec's content with small partitions, pointing at this
    /// fixture's programs and artifacts; `edit` may change the text.
    pub fn spec(&self, edit: impl FnOnce(String) -> String) -> PathBuf {
        let text = format!(
            r#"[image]
name = "test"
version = "1.2.3"
source_date_epoch = 1700000000

[artifacts]
lock = "{lock}"
dir = "{artifacts}"

[programs]
init = "{init}"
agent = "{agent}"

[kernel]
artifact = "kernel"
cmdline = ["console=ttyS0,115200"]

[initrd]
modules = ["virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "nvme", "squashfs"]

[bootloader]
artifact = "systemd-boot-efi"

[[payload]]
artifact = "containerd"
files = ["usr/bin/containerd", "usr/bin/containerd-shim-runc-v2", "usr/bin/ctr"]

[[payload]]
artifact = "runc"
files = ["usr/sbin/runc"]

[libraries]
artifacts = ["libc6", "libseccomp2"]

[disk]
esp_mib = 64
root_mib = 96
state_mib = 16
data_mib = 16
"#,
            lock = lock_path().display(),
            artifacts = self.artifacts.display(),
            init = self.init.display(),
            agent = self.agent.display(),
        );
        let path = self.dir.path().join("spec.toml");
        std::fs::write(&path, edit(text)).expect("write spec");
        path
    }

    pub fn options(&self, spec: PathBuf) -> BuildOptions {
        BuildOptions {
            spec,
            out_dir: self.out.clone(),
            ..BuildOptions::default()
        }
    }

    pub fn build(&self, spec: PathBuf) -> Result<BuildReport, BuildError> {
        build(&self.options(spec))
    }

    /// An artifacts directory of symlinks to the real files, for tests
    /// that remove or corrupt one.
    pub fn artifacts_copy(&self) -> PathBuf {
        let copy = self.dir.path().join("artifacts");
        std::fs::create_dir(&copy).expect("artifacts copy");
        for entry in std::fs::read_dir(&self.artifacts).expect("read artifacts") {
            let entry = entry.expect("artifact entry");
            std::os::unix::fs::symlink(entry.path(), copy.join(entry.file_name()))
                .expect("symlink artifact");
        }
        copy
    }

    /// The output directory holds nothing: no image, no temporary, no staging.
    pub fn assert_no_output(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.out)
            .expect("read out")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(
            left.is_empty(),
            "output directory should be empty after a failed build, has {left:?}"
        );
    }
}

/// A host tool, or a failure that says which package provides it.
pub fn tool(name: &str, package: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(name).is_file())
        })
        .unwrap_or(false);
    assert!(found, "{name} is needed to validate images: install the Debian package {package} (cargo xtask installs it)");
    let mut c = Command::new(name);
    c.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    .env("TZ", "UTC")
    .env("LC_ALL", "C");
    c
}

/// Run and return stdout; panic with the output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
