//! `image-builder build <spec.toml> --out <dir>`: pinned artifacts and an
//! image spec in, `<dir>/<name>-<version>.raw` and the update bundle
//! `<dir>/<name>-<version>.bundle` out. `keygen`, `sign` and
//! `verify-bundle` manage the bundle's Ed25519 signature offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use caisson_bundle::TrustPolicy;
use clap::{Parser, Subcommand};
use image_builder::build::{build, BuildOptions, BuildReport};
use image_builder::bundle;

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
    /// Build the disk images a spec describes (`[outputs] formats`: raw,
    /// qcow2, vmdk, ova, pxe) and its update bundle.
    Build {
        /// The image spec (TOML), e.g. image-builder/specs/qemu.toml.
        spec: PathBuf,
        /// Output directory: <out>/<name>-<version>.raw (and .qcow2, .vmdk,
        /// .ova as `[outputs] formats` lists) and the update bundle
        /// <out>/<name>-<version>.bundle.
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
        /// The image version (overrides [image] version).
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        /// Sign the update bundle with this Ed25519 key (PKCS#8 PEM, from
        /// `keygen`); without it the bundle is unsigned.
        #[arg(long, value_name = "FILE")]
        signing_key: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair for signing bundles: PREFIX.key (0600,
    /// secret) and PREFIX.pub (for the nodes' upgrade.trusted_keys).
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Sign an update bundle (replacing any signatures), e.g. on an offline
    /// machine that holds the key. In place unless --out is given.
    Sign {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        bundle: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Read an update bundle as a node would: signature, every artifact's
    /// size and sha256, trailer. Fails on any problem.
    VerifyBundle {
        bundle: PathBuf,
        /// A trusted public key (SPKI PEM); repeat for several.
        #[arg(long = "key", value_name = "PUB")]
        keys: Vec<PathBuf>,
        /// Accept a bundle that no trusted key signed.
        #[arg(long)]
        allow_unsigned: bool,
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
    match cli.command {
        Command::Build {
            spec,
            out,
            init,
            agent,
            artifacts,
            lock,
            config,
            version,
            signing_key,
        } => run_build(BuildOptions {
            spec,
            out_dir: out,
            init,
            agent,
            artifacts_dir: artifacts,
            lock,
            config,
            source_date_epoch: source_date_epoch()?,
            version,
            signing_key,
        }),
        Command::Keygen { out } => {
            let files = bundle::keygen(&out)?;
            eprintln!(
                "key {}: secret {} (keep it offline), public {}",
                files.key_id,
                files.secret.display(),
                files.public.display()
            );
            println!("{}", files.public.display());
            Ok(())
        }
        Command::Sign { key, bundle, out } => {
            sign(&key, &bundle, out.as_deref().unwrap_or(&bundle))
        }
        Command::VerifyBundle {
            bundle,
            keys,
            allow_unsigned,
        } => verify_bundle(&bundle, &keys, allow_unsigned),
    }
}

fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(v.trim().parse::<u64>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not whole seconds")
        })?)),
        Err(_) => Ok(None),
    }
}

fn run_build(opts: BuildOptions) -> Result<()> {
    let started = Instant::now();
    let report = build(&opts).with_context(|| format!("building {}", opts.spec.display()))?;
    print_report(&report, started.elapsed().as_secs_f64());
    Ok(())
}

fn sign(key: &Path, input: &Path, output: &Path) -> Result<()> {
    let key = bundle::load_signing_key(key)?;
    let manifest = caisson_bundle::sign_bundle(input, &key, output)
        .with_context(|| format!("signing {}", input.display()))?;
    eprintln!(
        "signed {} ({}) with key {}",
        output.display(),
        manifest.identity(),
        key.public().key_id()
    );
    Ok(())
}

fn verify_bundle(path: &Path, keys: &[PathBuf], allow_unsigned: bool) -> Result<()> {
    let trusted = keys
        .iter()
        .map(|k| bundle::load_public_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = TrustPolicy {
        trusted,
        allow_unsigned,
    };
    let check = bundle::check_file(path, &policy)
        .with_context(|| format!("verifying {}", path.display()))?;
    let m = &check.manifest;
    println!("bundle          {} ({})", path.display(), mib(check.size));
    println!("image           {}", m.identity());
    println!("kernel release  {}", m.kernel_release);
    println!("epoch           {}", m.source_date_epoch);
    println!(
        "verity          root hash {} at offset {}",
        m.verity.root_hash, m.verity.hash_offset
    );
    println!("cmdline         {}", m.cmdline.join(" "));
    for a in &m.artifacts {
        println!(
            "{:<15} {} bytes, sha256 {}",
            a.kind.as_str(),
            a.size,
            a.sha256
        );
    }
    match &check.verified.signed_by {
        Some(key_id) => println!("signed by       {key_id} (trusted)"),
        None if check.verified.ignored.is_empty() => {
            println!("signed by       nobody (unsigned, allowed)")
        }
        None => println!(
            "signed by       {} (not trusted; accepted as unsigned)",
            check.verified.ignored.join(", ")
        ),
    }
    println!("OK");
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_report(r: &BuildReport, secs: f64) {
    eprintln!(
        "built {} ({} disk, kernel {}, epoch {}) in {secs:.1}s",
        // `<out>/<name>-<version>`: the raw image is one output among several.
        r.image.with_extension("").display(),
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
    // What each part adds to the root: containerd and runc by package, k3s,
    // each air-gap and image archive, the agent, libraries, modules.
    for (component, size) in &r.root_components {
        eprintln!("  root   {component:<40} {} uncompressed", mib(*size));
    }
    eprintln!(
        "  root   {:<40} {} uncompressed",
        "(all)",
        mib(r.root_components.values().sum())
    );
    eprintln!(
        "  bundle {} ({}, {})",
        r.bundle.display(),
        mib(r.bundle_size),
        match &r.bundle_signed_by {
            Some(key_id) => format!("signed by key {key_id}"),
            None => "unsigned".to_string(),
        }
    );
    for o in &r.outputs {
        eprintln!(
            "  output {:<40} {} ({} allocated)",
            o.path.display(),
            mib(o.size),
            mib(o.allocated)
        );
    }
    // Each output's path on stdout, the raw image (when written) last.
    let (raw, others): (Vec<_>, Vec<_>) = r
        .outputs
        .iter()
        .partition(|o| o.format == image_builder::formats::Format::Raw);
    for o in others.iter().chain(&raw) {
        println!("{}", o.path.display());
    }
}
