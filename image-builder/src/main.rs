//! `image-builder build <spec.toml> --out <dir>`: pinned artifacts and an
//! image spec in, `<dir>/<name>-<version>.raw` out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use image_builder::build::{build, BuildOptions, BuildReport};

#[derive(Parser)]
#[command(
    name = "image-builder",
    version,
    about = "Builds bootable Caisson disk images, bit-reproducibly and offline."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the raw disk image a spec describes.
    Build {
        /// The image spec (TOML), e.g. image-builder/specs/qemu.toml.
        spec: PathBuf,
        /// Output directory; the image is <out>/<name>-<version>.raw.
        #[arg(long)]
        out: PathBuf,
        /// The static `init` program (overrides [programs] init).
        #[arg(long)]
        init: Option<PathBuf>,
        /// The `node-agent` program (overrides [programs] agent).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Directory holding the pinned .deb files (overrides [artifacts] dir).
        #[arg(long)]
        artifacts: Option<PathBuf>,
        /// The lock file (overrides [artifacts] lock).
        #[arg(long)]
        lock: Option<PathBuf>,
        /// A machine config to embed at /usr/lib/caisson/config.toml
        /// (overrides [image] config); validated first.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors already spell out their causes; print the context
            // and the first cause rather than the whole repetitive chain.
            eprintln!("image-builder: error: {e}");
            if let Some(cause) = e.chain().nth(1) {
                eprintln!("  {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let Command::Build {
        spec,
        out,
        init,
        agent,
        artifacts,
        lock,
        config,
    } = cli.command;
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Some(
            v.trim()
                .parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not whole seconds"))?,
        ),
        Err(_) => None,
    };
    let started = Instant::now();
    let opts = BuildOptions {
        spec,
        out_dir: out,
        init,
        agent,
        artifacts_dir: artifacts,
        lock,
        config,
        source_date_epoch,
    };
    let report = build(&opts).with_context(|| format!("building {}", opts.spec.display()))?;
    print_report(&report, started.elapsed().as_secs_f64());
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_report(r: &BuildReport, secs: f64) {
    eprintln!(
        "built {} ({} disk, kernel {}, epoch {}) in {secs:.1}s",
        r.image.display(),
        mib(r.image_size),
        r.kernel_release,
        r.epoch
    );
    for (path, size) in &r.esp_files {
        eprintln!("  ESP    {path:<40} {}", mib(*size));
    }
    eprintln!(
        "  ROOT-A squashfs {} of {} ({:.0}%)",
        mib(r.squashfs_size),
        mib(r.root_partition_size),
        100.0 * r.squashfs_size as f64 / r.root_partition_size.max(1) as f64
    );
    eprintln!(
        "  ROOT-A dm-verity hash area {} at offset {} (root hash {})",
        mib(r.verity.hash_area_size),
        r.verity.params.hash_offset,
        r.verity.params.root_hash
    );
    for (component, size) in &r.root_components {
        eprintln!("  root   {component:<40} {} uncompressed", mib(*size));
    }
    println!("{}", r.image.display());
}
