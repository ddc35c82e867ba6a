//! The A/B upgrade's and the runtime's figures for `cargo xtask bench`: the
//! bundle's size against the raw image's, the slot's write speed against
//! the virtual disk's own (both measured by the agent in the same VM run),
//! the agent's peak memory during the upgrade, the wall time from
//! `nodectl upgrade` to v2 answering `nodectl version`, and, on the
//! configured v2 boot, the time from kernel start to containerd healthy.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qemu_tests::nodectl::ApiNode;
use qemu_tests::VmOptions;
use serde_json::Value;

use crate::programs::Programs;
use crate::workspace::Workspace;

const TO_API: Duration = Duration::from_secs(300);
const UPGRADE: Duration = Duration::from_secs(900);
pub const BUNDLE_VERSION: &str = "9.9.0";

pub struct UpgradeFigures {
    pub bundle_bytes: u64,
    pub raw_apparent: u64,
    pub raw_allocated: u64,
    /// The agent's answer to the upgrade (UpgradeResponse JSON).
    pub response: Value,
    pub to_v2_answering: Duration,
    /// Console uptime stamp of containerd's first healthy line on the v2
    /// boot: kernel start to containerd answering.
    pub containerd_healthy: Option<f64>,
}

/// The uptime stamp `[  12.345]` at the start of a console line.
fn uptime(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    rest.split(']').next()?.trim().parse().ok()
}

fn build_bundle(ws: &Workspace, builder: &Path, programs: &Programs, dir: &Path) -> Result<(PathBuf, String)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let prefix = dir.join("bench-signing");
    let status = Command::new(builder).arg("keygen").arg("--out").arg(&prefix).status()?;
    if !status.success() {
        bail!("image-builder keygen failed: {status}");
    }
    let out = dir.join("v2");
    let status = Command::new(builder)
        .current_dir(&ws.root)
        .arg("build")
        .arg(ws.default_spec())
        .arg("--out")
        .arg(&out)
        .args(["--version", BUNDLE_VERSION])
        .arg("--signing-key")
        .arg(prefix.with_extension("key"))
        .arg("--init")
        .arg(&programs.init)
        .arg("--agent")
        .arg(&programs.agent)
        .arg("--artifacts")
        .arg(ws.artifacts_dir())
        .arg("--lock")
        .arg(ws.lock_file())
        .status()?;
    if !status.success() {
        bail!("building the v2 bundle failed: {status}");
    }
    let _ = std::fs::remove_file(out.join(format!("caisson-{BUNDLE_VERSION}.raw")));
    let public = std::fs::read_to_string(prefix.with_extension("pub"))?;
    Ok((out.join(format!("caisson-{BUNDLE_VERSION}.bundle")), public))
}

pub fn measure(
    ws: &Workspace,
    builder: &Path,
    programs: &Programs,
    raw: &Path,
    nodectl: &Path,
) -> Result<UpgradeFigures> {
    let (bundle, public) = build_bundle(ws, builder, programs, &ws.target_dir.join("bench").join("upgrade"))?;
    let meta = std::fs::metadata(raw)?;
    let bundle_bytes = std::fs::metadata(&bundle)?.len();

    let mut opts = VmOptions::new("bench-upgrade");
    opts.image = Some(raw.to_path_buf());
    opts.allow_reboot = true;
    let mut node = ApiNode::start_with(opts, nodectl)?;
    let config = node.cluster.config_with(
        &node.ctl.dir().join("bench-upgrade.toml"),
        &format!("[upgrade]\ntrusted_keys = [{public:?}]\n"),
    )?;
    node.apply_first_config(&config, TO_API)?;
    node.vm.wait_for_line("service containerd: healthy", TO_API)?;

    let file = bundle.display().to_string();
    let started = Instant::now();
    let out = node.ctl.run(&["-o", "json", "upgrade", "--bundle", &file, "--measure-disk"], UPGRADE)?;
    let response = qemu_tests::nodectl::json_result(&out.stdout)
        .map_err(|e| anyhow::anyhow!("the upgrade failed: {e}\n{}", out.output()))?;
    node.vm
        .wait_for_line(&format!("node-agent {BUNDLE_VERSION} running as PID 1"), UPGRADE)?;
    let deadline = Instant::now() + TO_API;
    let to_v2_answering = loop {
        if let Ok(v) = node.ctl.json(&["version"], qemu_tests::nodectl::CALL) {
            if v["image_version"] == BUNDLE_VERSION {
                break started.elapsed();
            }
        }
        if Instant::now() > deadline {
            bail!("v2 never answered `nodectl version`\n{}", node.vm.tail());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let healthy = node
        .vm
        .wait_for_line("service containerd: healthy", TO_API)
        .ok()
        .and_then(|l| uptime(&l));
    Ok(UpgradeFigures {
        bundle_bytes,
        raw_apparent: meta.len(),
        raw_allocated: meta.blocks() * 512,
        response,
        to_v2_answering,
        containerd_healthy: healthy,
    })
}

pub fn print(f: &UpgradeFigures) {
    const MIB: f64 = 1024.0 * 1024.0;
    let r = &f.response;
    let num = |k: &str| r[k].as_f64().unwrap_or(0.0);
    println!(
        "  {:<46} {:>10}   (report; raw image {:.0} MiB apparent, {:.0} MiB allocated)",
        "update bundle size",
        format!("{:.1} MiB", f.bundle_bytes as f64 / MIB),
        f.raw_apparent as f64 / MIB,
        f.raw_allocated as f64 / MIB
    );
    let busy = num("root_write_busy_mb_s");
    match r["disk_write_mb_s"].as_f64() {
        Some(disk) => {
            let ratio = busy / disk.max(1e-6);
            println!(
                "  {:<46} {:>10}   (target ≥ 80% of the disk's own {disk:.1} MB/s: {:.0}% {})",
                "slot write throughput (write path)",
                format!("{busy:.1} MB/s"),
                100.0 * ratio,
                if ratio >= 0.8 { "PASS" } else { "MISS" }
            );
        }
        None => println!("  {:<46} {busy:.1} MB/s (the disk's own speed was not measured)", "slot write throughput"),
    }
    println!(
        "  {:<46} {:>10}   (report; the whole upload, network included)",
        "root stream rate",
        format!("{:.1} MB/s", num("root_write_mb_s"))
    );
    match r["agent_peak_rss_kib"].as_u64() {
        Some(kib) => println!(
            "  {:<46} {:>10}   (target ≤ 40 MiB: {})",
            "agent peak RSS (VmHWM) after an upgrade",
            format!("{:.1} MiB", kib as f64 / 1024.0),
            if (kib as f64) / 1024.0 <= 40.0 { "PASS" } else { "MISS" }
        ),
        None => println!("  {:<46} not reported", "agent peak RSS during an upgrade"),
    }
    println!(
        "  {:<46} {:>10}   (report)",
        "`nodectl upgrade` to v2 answering `version`",
        format!("{:.1} s", f.to_v2_answering.as_secs_f64())
    );
    match f.containerd_healthy {
        Some(s) => println!(
            "  {:<46} {:>10}   (report; kernel start, configured node; firmware adds the banner bench's difference)",
            "boot to containerd healthy",
            format!("{s:.1} s")
        ),
        None => println!("  {:<46} not seen", "boot to containerd healthy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_console_uptime_stamp() {
        assert_eq!(uptime("[  12.345] service containerd: healthy: …"), Some(12.345));
        assert_eq!(uptime("no stamp"), None);
    }
}
