//! `cargo xtask …`: project automation for Caisson.

mod bench;
mod bench_api;
mod bench_formats;
mod bench_upgrade;
mod demo;
mod deps;
mod fetch;
mod image;
mod k3s;
mod programs;
mod test;
mod workspace;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::workspace::Workspace;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Caisson project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the host tools every command needs; install missing ones on Debian.
    Deps,
    /// Download the artifacts pinned in artifacts.lock into artifacts/ and verify them;
    /// plain files (k3s) are verified, and how to obtain a missing one is printed.
    Fetch {
        /// Re-pin every artifact to the archive's current candidate version.
        #[arg(long)]
        update: bool,
    },
    /// Build the node programs and a disk image.
    Image {
        /// Output directory; default target/image/.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build an image and boot it in QEMU with its serial console on this terminal.
    Demo {
        /// Press the power button after this many seconds (then force quit).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Build everything, then run every test of the workspace, QEMU ones included.
    Test {
        /// Also run the real-k3s QEMU tier (tests named k3s_real…) when
        /// artifacts.lock pins k3s and artifacts/ has it; SKIPPED, loudly, otherwise.
        #[arg(long)]
        with_k3s: bool,
        /// Passed to the test binaries, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        test_args: Vec<String>,
    },
    /// Measure image build time, image size, each output format, boot time, the agent's memory and the node API.
    Bench {
        /// How many boots to take the median of.
        #[arg(long, default_value_t = 3)]
        boots: usize,
        /// How many image builds to take the median of.
        #[arg(long, default_value_t = 2)]
        builds: usize,
        /// Only the builds, sizes and output formats: boot no VM.
        #[arg(long)]
        no_vm: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The causes without a backtrace: these errors are for people.
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    workspace::extend_path();
    let ws = Workspace::locate()?;
    match cli.command {
        Cmd::Deps => deps::ensure(&[deps::FETCH, deps::IMAGE, deps::TEST, deps::BENCH]),
        Cmd::Fetch { update } => fetch::fetch_all(&ws, update),
        Cmd::Image { out } => {
            deps::ensure(&[deps::FETCH, deps::IMAGE])?;
            let out = out.unwrap_or_else(|| ws.target_dir.join("image"));
            image::prepare(&ws, &out).map(drop)
        }
        Cmd::Demo { timeout } => demo::demo(&ws, timeout),
        Cmd::Test {
            with_k3s,
            test_args,
        } => test::test(&ws, &test_args, with_k3s),
        Cmd::Bench {
            boots,
            builds,
            no_vm,
        } => bench::bench(&ws, boots.max(1), builds.max(1), no_vm),
    }
}
