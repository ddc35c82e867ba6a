//! Inputs that `cargo xtask test` passes to the tests, and where tests work.

use std::path::{Path, PathBuf};

use crate::{HarnessError, Result};

/// The built raw disk image every VM boots from (through an overlay).
pub const TEST_IMAGE: &str = "CAISSON_TEST_IMAGE";
/// The `pxe` output built with `TEST_IMAGE` from the same inputs:
/// `vmlinuz`, `initramfs` (with the root image), `cmdline`, `boot.ipxe`.
pub const PXE_DIR: &str = "CAISSON_TEST_PXE_DIR";
/// `artifacts/`: the fetched, verified .debs.
pub const ARTIFACTS_DIR: &str = "CAISSON_ARTIFACTS_DIR";
/// `artifacts.lock`.
pub const LOCK: &str = "CAISSON_LOCK";
/// The static stage-1 binary.
pub const INIT_BIN: &str = "CAISSON_INIT_BIN";
/// The static agent binary.
pub const AGENT_BIN: &str = "CAISSON_AGENT_BIN";
/// The release image-builder binary.
pub const BUILDER_BIN: &str = "CAISSON_BUILDER_BIN";
/// The image spec the test image was built from.
pub const SPEC: &str = "CAISSON_SPEC";
/// The `nodectl` binary the API tests drive (built by `cargo xtask test`).
pub const NODECTL_BIN: &str = "CAISSON_NODECTL_BIN";
/// The directory holding the static TEST FIXTURES `ticker` and
/// `k3s-stand-in` (crate `caisson-test-fixtures`), for test images only.
pub const FIXTURES_DIR: &str = "CAISSON_FIXTURES_DIR";
/// An image like `TEST_IMAGE` with the pinned, official k3s and its air-gap
/// images baked in; set only by `cargo xtask test --with-k3s`, for the
/// `#[ignore]`d real-k3s tier (tests named `k3s_real…`, run with
/// `--ignored k3s_real`).
pub const K3S_TEST_IMAGE: &str = "CAISSON_K3S_TEST_IMAGE";
/// Parent of the per-test directories; default `target/qemu-tests`.
pub const WORK_DIR: &str = "CAISSON_TEST_WORK_DIR";

/// An input path from the environment; it must exist.
pub fn input(var: &'static str) -> Result<PathBuf> {
    let value = std::env::var_os(var).ok_or(HarnessError::NotConfigured { var })?;
    let path = PathBuf::from(value);
    if !path.exists() {
        return Err(HarnessError::MissingInput { var, path });
    }
    absolute(&path)
}

/// The image under test, as an absolute path (qcow2 overlays need one).
pub fn test_image() -> Result<PathBuf> {
    input(TEST_IMAGE)
}

pub fn work_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(WORK_DIR) {
        return PathBuf::from(dir);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target"),
    };
    target.join("qemu-tests")
}

/// `work_root()/<name>`, emptied.
pub fn fresh_dir(name: &str) -> Result<PathBuf> {
    let dir = work_root().join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(HarnessError::io("cannot clear", &dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(HarnessError::io("cannot create", &dir))?;
    absolute(&dir)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(HarnessError::io("cannot resolve", path))
}

/// Write `spec_text` to `<dir>/spec.toml` and build it with the test's
/// builder, init and agent (from the environment) into `<dir>/out`, which
/// is returned. `what` names the image on the `bench:` line.
pub fn build_derived_image(dir: &Path, spec_text: &str, what: &str) -> Result<PathBuf> {
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, spec_text).map_err(HarnessError::io("cannot write", &spec))?;
    let out = dir.join("out");
    let mut cmd = std::process::Command::new(input(BUILDER_BIN)?);
    cmd.arg("build")
        .arg(&spec)
        .arg("--out")
        .arg(&out)
        .arg("--init")
        .arg(input(INIT_BIN)?)
        .arg("--agent")
        .arg(input(AGENT_BIN)?)
        .arg("--artifacts")
        .arg(input(ARTIFACTS_DIR)?)
        .arg("--lock")
        .arg(input(LOCK)?);
    let started = std::time::Instant::now();
    crate::tools::run(&mut cmd)?;
    eprintln!(
        "bench: {what} built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}
