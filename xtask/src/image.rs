//! Building a disk image with the release image-builder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::programs::Programs;
use crate::workspace::{describe, run, Workspace};

/// Compile the release builder; returns its path.
pub fn build_builder(ws: &Workspace) -> Result<PathBuf> {
    println!("xtask: building image-builder (release)");
    run(ws
        .cargo()
        .args(["build", "--release", "-p", "image-builder"]))?;
    Ok(ws.builder_bin())
}

/// One image-builder run and what it produced.
pub struct Built {
    pub raw: PathBuf,
    /// `<out>/<name>-<version>.pxe/`, when the spec lists `pxe`.
    pub pxe: Option<PathBuf>,
    pub took: Duration,
}

/// Run the builder on `spec` into `out`; any older raw image or PXE
/// directory there is removed first so a stale one can never be picked up.
pub fn build_image(
    ws: &Workspace,
    builder: &Path,
    spec: &Path,
    out: &Path,
    programs: &Programs,
) -> Result<Built> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for raw in raw_files(out)? {
        std::fs::remove_file(&raw).with_context(|| format!("cannot delete {}", raw.display()))?;
    }
    for pxe in pxe_dirs(out)? {
        std::fs::remove_dir_all(&pxe)
            .with_context(|| format!("cannot delete {}", pxe.display()))?;
    }
    let mut cmd = Command::new(builder);
    cmd.current_dir(&ws.root)
        .arg("build")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .arg("--init")
        .arg(&programs.init)
        .arg("--agent")
        .arg(&programs.agent)
        .arg("--artifacts")
        .arg(ws.artifacts_dir())
        .arg("--lock")
        .arg(ws.lock_file());
    // The builder reports on stderr and prints the image's path on stdout.
    cmd.stdout(Stdio::piped());
    let started = Instant::now();
    let output = cmd
        .spawn()
        .and_then(|c| c.wait_with_output())
        .with_context(|| format!("cannot run {}", describe(&cmd)))?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!("`{}` failed ({})", describe(&cmd), output.status);
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    let raw = output_image(
        printed.lines().rev().find(|l| !l.trim().is_empty()),
        spec,
        out,
    )?;
    // Beside the raw image, from the same build.
    let pxe = Some(raw.with_extension("pxe")).filter(|p| p.is_dir());
    Ok(Built { raw, pxe, took })
}

/// The path the builder printed; else `<out>/<name>-<version>.raw` as the
/// spec names it; else the only raw image in `out`.
fn output_image(printed: Option<&str>, spec: &Path, out: &Path) -> Result<PathBuf> {
    if let Some(path) = printed.map(|l| PathBuf::from(l.trim())) {
        if path.is_file() && path.extension().is_some_and(|e| e == "raw") {
            return Ok(path);
        }
    }
    if let Some(stem) = spec_identity(spec) {
        let raw = out.join(format!("{stem}.raw"));
        if raw.is_file() {
            return Ok(raw);
        }
    }
    match raw_files(out)?.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("the builder left no .raw image in {}", out.display()),
        many => bail!("several .raw images in {}: {many:?}", out.display()),
    }
}

/// `<name>-<version>` from the spec, at its top level or under `[image]`.
fn spec_identity(spec: &Path) -> Option<String> {
    let value: toml::Value = std::fs::read_to_string(spec).ok()?.parse().ok()?;
    let table = value.get("image").unwrap_or(&value);
    let name = table.get("name")?.as_str()?;
    let version = table.get("version")?.as_str()?;
    Some(format!("{name}-{version}"))
}

/// The `<identity>.pxe/` directories in `dir`.
fn pxe_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pxe") && path.is_dir() {
            found.push(path);
        }
    }
    Ok(found)
}

fn raw_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "raw") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Everything a booted or tested image needs, built in order.
pub struct Prepared {
    pub programs: Programs,
    pub builder: PathBuf,
    pub spec: PathBuf,
    pub image: Built,
}

/// fetch → programs → builder → image into `out`.
pub fn prepare(ws: &Workspace, out: &Path) -> Result<Prepared> {
    crate::fetch::fetch(ws, false)?;
    let programs = crate::programs::build(ws)?;
    let builder = build_builder(ws)?;
    let spec = ws.default_spec();
    println!(
        "xtask: building the image from {} into {}",
        spec.display(),
        out.display()
    );
    let image = build_image(ws, &builder, &spec, out, &programs)?;
    println!(
        "xtask: built {} in {:.1} s",
        image.raw.display(),
        image.took.as_secs_f64()
    );
    Ok(Prepared {
        programs,
        builder,
        spec,
        image,
    })
}
