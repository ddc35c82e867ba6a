//! `cargo xtask test [--with-k3s]`: build the image and the test fixtures,
//! then run every test of the workspace (unit tests and the QEMU tests)
//! against them; with `--with-k3s`, also the real-k3s tier (`k3s.rs`).

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use qemu_tests::env as test_env;

use crate::deps;
use crate::k3s::{self, Tier};
use crate::workspace::{describe, Workspace};

/// Two VMs at a time: one per core, 1 GiB each.
const TEST_THREADS: &str = "--test-threads=2";

pub fn test(ws: &Workspace, test_args: &[String], with_k3s: bool) -> Result<()> {
    let started = Instant::now();
    deps::ensure(&[deps::FETCH, deps::IMAGE, deps::TEST])?;
    let out = ws.target_dir.join("caisson-test/image");
    let prepared = crate::image::prepare(ws, &out)?;
    let fixtures = crate::programs::build_fixtures(ws)?;
    let nodectl = crate::programs::build_nodectl(ws, false)?;
    let modules = kernel_modules(ws)?;
    pid1_lints(ws)?;
    let tier = if with_k3s {
        Some(k3s::check(ws)?)
    } else {
        None
    };
    if let Some(Tier::Unavailable(why)) = &tier {
        // Now, before the long run, and again at the end.
        println!("{}", k3s::skipped(why));
    }

    let inputs = |cmd: &mut Command| {
        cmd.env(test_env::TEST_IMAGE, &prepared.image.raw)
            .env(test_env::ARTIFACTS_DIR, ws.artifacts_dir())
            .env(test_env::LOCK, ws.lock_file())
            .env(test_env::INIT_BIN, &prepared.programs.init)
            .env(test_env::AGENT_BIN, &prepared.programs.agent)
            .env(test_env::BUILDER_BIN, &prepared.builder)
            .env(test_env::SPEC, &prepared.spec)
            .env(test_env::NODECTL_BIN, &nodectl)
            .env(test_env::FIXTURES_DIR, &fixtures)
            .env(KERNEL_MODULES_DIR, &modules)
            .env(test_env::WORK_DIR, ws.target_dir.join("qemu-tests"));
        // Built once with the image (the spec lists `pxe`); the PXE tests
        // fail and say so when it is missing.
        if let Some(pxe) = &prepared.image.pxe {
            cmd.env(test_env::PXE_DIR, pxe);
        }
    };
    let mut cmd = ws.cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast", "--", TEST_THREADS])
        .args(test_args);
    inputs(&mut cmd);
    let (mut tally, status) = run_tallied(cmd)?;
    let mut failures = Vec::new();
    if !status.success() || tally.failed > 0 {
        failures.push(format!("tests failed (cargo test: {status})"));
    }
    if tally.passed == 0 {
        failures.push("no test ran".to_string());
    }

    let k3s_line = match &tier {
        None => format!(
            "real-k3s tier: not run (the {} QEMU tests are ignored above); \
             `cargo xtask test --with-k3s` runs them when k3s is pinned and in artifacts/",
            k3s::TEST_FILTER
        ),
        Some(Tier::Unavailable(why)) => k3s::skipped(why),
        Some(Tier::Ready { airgap_images }) => {
            let image = k3s::build_image(ws, &prepared.builder, &prepared.programs, airgap_images)?;
            let mut cmd = ws.cargo();
            cmd.args([
                "test",
                "-p",
                "qemu-tests",
                "--no-fail-fast",
                "--",
                "--ignored",
            ])
            .arg(k3s::TEST_FILTER)
            .arg(TEST_THREADS)
            .env(test_env::K3S_TEST_IMAGE, &image);
            inputs(&mut cmd);
            let (k3s_tally, status) = run_tallied(cmd)?;
            if !status.success() || k3s_tally.failed > 0 {
                failures.push(format!("real-k3s tier failed (cargo test: {status})"));
            }
            if k3s_tally.passed == 0 {
                failures.push(format!(
                    "the real-k3s tier ran no test: none is named {}… and #[ignore]d in qemu-tests",
                    k3s::TEST_FILTER
                ));
            }
            let line = format!(
                "real-k3s tier: {} passed, {} failed, on {}",
                k3s_tally.passed,
                k3s_tally.failed,
                image.display()
            );
            tally.merge(&k3s_tally);
            line
        }
    };

    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!();
    println!(
        "xtask test: {} test binaries, {:.1} min in all",
        tally.binaries, minutes
    );
    println!(
        "caisson: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    println!("{k3s_line}");
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Run `cmd`, echoing its stdout and summing libtest's result lines.
fn run_tallied(mut cmd: Command) -> Result<(Tally, ExitStatus)> {
    cmd.stdout(Stdio::piped());
    println!("xtask: {}", describe(&cmd));
    let mut child = cmd.spawn().context("cannot start cargo test")?;
    let mut tally = Tally::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            tally.add(&line);
        }
    }
    Ok((tally, child.wait()?))
}

/// The PID 1 programs deny unwrap/expect/panic/indexing outside tests;
/// clippy is what enforces it.
fn pid1_lints(ws: &Workspace) -> Result<()> {
    let mut cmd = ws.cargo();
    cmd.args([
        "clippy",
        "--quiet",
        "-p",
        "caisson-init",
        "-p",
        "node-agent",
        // The installer's disk writer runs in PID 1 too.
        "-p",
        "caisson-disk",
        "--",
        "-D",
        "warnings",
    ]);
    println!("xtask: {}", describe(&cmd));
    crate::workspace::run(&mut cmd)
        .context("PID 1 lints failed (is clippy installed? `rustup component add clippy`)")
}

/// Where caisson-kmod's real-tree test finds a Debian kernel's modules.
const KERNEL_MODULES_DIR: &str = "CAISSON_KERNEL_MODULES_DIR";

/// Extract the pinned kernel's `lib/modules/<release>` (once per lock pin),
/// so our depmod is tested against the real tree, not only fixtures.
fn kernel_modules(ws: &Workspace) -> Result<std::path::PathBuf> {
    use image_builder::lock::{self, Lock};
    let lock_path = ws.lock_file();
    let pin = Lock::load(&lock_path)?;
    let kernel = pin.get(&lock_path, "kernel")?;
    let deb = lock::verify(&ws.artifacts_dir(), kernel)?;
    let dest = ws
        .target_dir
        .join("caisson-test/kernel")
        .join(&kernel.sha256);
    let modules = dest.join("lib/modules");
    if !modules.is_dir() {
        let partial = dest.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        image_builder::deb::Deb::new(&deb)
            .extract(&partial, |p| p.starts_with("lib/modules/"))
            .with_context(|| format!("cannot extract the kernel modules of {}", deb.display()))?;
        std::fs::rename(&partial, &dest).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), dest.display())
        })?;
    }
    let mut releases: Vec<_> = std::fs::read_dir(&modules)
        .with_context(|| format!("cannot list {}", modules.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    releases.sort();
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!(
            "expected one kernel release in {}, found {}",
            modules.display(),
            other.len()
        ),
    }
}

/// Sums libtest's "test result:" lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    binaries: u32,
    passed: u32,
    failed: u32,
    ignored: u32,
}

impl Tally {
    fn merge(&mut self, other: &Tally) {
        self.binaries += other.binaries;
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_libtest_result_lines() {
        let mut t = Tally::default();
        t.add("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 41.20s");
        t.add("running 5 tests");
        assert_eq!(
            t,
            Tally {
                binaries: 2,
                passed: 15,
                failed: 2,
                ignored: 1
            }
        );
    }
}
