//! `cargo xtask bench`: each output format against the raw image. The
//! release builder runs once more with `[outputs] formats = ["raw",
//! "qcow2", "vmdk", "ova"]`; each conversion's time comes from the
//! builder's own step log ("qcow2 image: 2.95s"), each file's apparent and
//! allocated size from the file system.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::programs::Programs;
use crate::workspace::{describe, Workspace};

const FORMATS: [&str; 4] = ["raw", "qcow2", "vmdk", "ova"];
const MIB: f64 = 1024.0 * 1024.0;

pub struct FormatFigures {
    /// The whole build with every format listed.
    pub build: Duration,
    pub rows: Vec<Row>,
}

pub struct Row {
    pub format: &'static str,
    /// The conversion step; None for raw (it is the build itself).
    pub step: Option<Duration>,
    pub size: u64,
    pub allocated: u64,
}

pub fn measure(
    ws: &Workspace,
    builder: &Path,
    programs: &Programs,
    spec: &Path,
) -> Result<FormatFigures> {
    let out = ws.target_dir.join("bench").join("formats");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let derived = out.join("spec.toml");
    let (text, identity) = derive_spec(spec)?;
    std::fs::write(&derived, text)
        .with_context(|| format!("cannot write {}", derived.display()))?;
    let images = out.join("out");
    let mut cmd = Command::new(builder);
    cmd.current_dir(&ws.root)
        .arg("build")
        .arg(&derived)
        .arg("--out")
        .arg(&images)
        .arg("--init")
        .arg(&programs.init)
        .arg("--agent")
        .arg(&programs.agent)
        .arg("--artifacts")
        .arg(ws.artifacts_dir())
        .arg("--lock")
        .arg(ws.lock_file())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    println!("xtask: {}", describe(&cmd));
    let started = Instant::now();
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {}", describe(&cmd)))?;
    let build = started.elapsed();
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("`{}` failed ({}):\n{log}", describe(&cmd), output.status);
    }
    let mut rows = Vec::new();
    for format in FORMATS {
        let file = images.join(format!("{identity}.{format}"));
        let meta = std::fs::metadata(&file).with_context(|| format!("no {}", file.display()))?;
        let step = match format {
            "raw" => None,
            _ => Some(
                step_time(&log, &format!("{format} image")).with_context(|| {
                    format!("the builder's log has no `{format} image` step:\n{log}")
                })?,
            ),
        };
        rows.push(Row {
            format,
            step,
            size: meta.len(),
            allocated: meta.blocks() * 512,
        });
    }
    Ok(FormatFigures { build, rows })
}

/// The spec with its paths absolute, the pvscsi driver an OVA needs, and
/// every disk format listed; and its `<name>-<version>`.
fn derive_spec(spec: &Path) -> Result<(String, String)> {
    let text =
        std::fs::read_to_string(spec).with_context(|| format!("cannot read {}", spec.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("cannot parse {}", spec.display()))?;
    let base: PathBuf = spec.parent().map(Path::to_path_buf).unwrap_or_default();
    for (section, key) in [
        ("artifacts", "lock"),
        ("artifacts", "dir"),
        ("image", "config"),
    ] {
        let value = table
            .get_mut(section)
            .and_then(|t| t.as_table_mut())
            .and_then(|t| t.get_mut(key));
        if let Some(value) = value {
            if let Some(p) = value.as_str().filter(|p| !Path::new(p).is_absolute()) {
                *value = toml::Value::String(base.join(p).display().to_string());
            }
        }
    }
    if let Some(modules) = table
        .get_mut("initrd")
        .and_then(|t| t.get_mut("modules"))
        .and_then(|m| m.as_array_mut())
    {
        if !modules.iter().any(|m| m.as_str() == Some("vmw_pvscsi")) {
            modules.push("vmw_pvscsi".into());
        }
    }
    let mut outputs = toml::Table::new();
    outputs.insert(
        "formats".into(),
        toml::Value::Array(FORMATS.iter().map(|f| (*f).into()).collect()),
    );
    table.insert("outputs".into(), toml::Value::Table(outputs));
    let image = table.get("image").and_then(|i| i.as_table());
    let field = |k: &str| image.and_then(|i| i.get(k)).and_then(|v| v.as_str());
    let identity = match (field("name"), field("version")) {
        (Some(n), Some(v)) => format!("{n}-{v}"),
        _ => bail!("{} has no [image] name and version", spec.display()),
    };
    Ok((toml::to_string(&table)?, identity))
}

/// Seconds from the builder's step line `<step>: 1.23s` (tracing may
/// colour the level before it).
fn step_time(log: &str, step: &str) -> Option<Duration> {
    let needle = format!("{step}: ");
    log.lines().find_map(|line| {
        let at = line.find(&needle)?;
        let rest = &line[at + needle.len()..];
        let secs: f64 = rest.trim().strip_suffix('s')?.parse().ok()?;
        Some(Duration::from_secs_f64(secs))
    })
}

pub fn print(f: &FormatFigures, raw_build: Duration) {
    println!(
        "  output formats: one build listing {} took {:.1} s (the spec's own: {:.1} s)",
        FORMATS.join(", "),
        f.build.as_secs_f64(),
        raw_build.as_secs_f64()
    );
    println!(
        "    {:<7} {:>10} {:>12} {:>12} {:>14}",
        "format", "time", "size", "allocated", "vs raw (alloc)"
    );
    let raw_alloc = f
        .rows
        .iter()
        .find(|r| r.format == "raw")
        .map(|r| r.allocated)
        .unwrap_or(0)
        .max(1);
    for r in &f.rows {
        let time = match r.step {
            Some(d) => format!("+{:.1} s", d.as_secs_f64()),
            None => "(build)".to_string(),
        };
        println!(
            "    {:<7} {:>10} {:>12} {:>12} {:>14}",
            r.format,
            time,
            size(r.size),
            size(r.allocated),
            format!("{:.2}", r.allocated as f64 / raw_alloc as f64)
        );
    }
}

fn size(bytes: u64) -> String {
    if bytes as f64 >= 1024.0 * MIB {
        format!("{:.2} GiB", bytes as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_step_times_from_the_builders_log() {
        let log = " \x1b[32mINFO\x1b[0m squashfs: 1.30s\n \x1b[32mINFO\x1b[0m qcow2 image: 2.95s\n\
                   INFO vmdk image: 0.81s\n";
        assert_eq!(
            step_time(log, "qcow2 image"),
            Some(Duration::from_secs_f64(2.95))
        );
        assert_eq!(
            step_time(log, "vmdk image"),
            Some(Duration::from_secs_f64(0.81))
        );
        assert_eq!(step_time(log, "ova image"), None);
    }
}
