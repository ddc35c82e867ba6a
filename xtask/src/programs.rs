//! The node's own programs, built static for the node; the test fixtures,
//! built the same way; and nodectl, the operator's CLI the API tests and
//! benchmarks drive.

use std::path::PathBuf;

use anyhow::Result;

use crate::workspace::{run, Workspace, NODE_TARGET};

pub struct Programs {
    pub init: PathBuf,
    pub agent: PathBuf,
}

/// `caisson-init` and `node-agent`, release, statically linked. The flags go
/// through the environment of this one cargo run; `--target` keeps them away
/// from build scripts and proc macros.
pub fn build(ws: &Workspace) -> Result<Programs> {
    println!("xtask: building caisson-init and node-agent (release, static)");
    let mut cmd = ws.cargo();
    cmd.args([
        "build",
        "--release",
        "--target",
        NODE_TARGET,
        "-p",
        "caisson-init",
        "-p",
        "node-agent",
    ])
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env("RUSTFLAGS", "-C target-feature=+crt-static");
    run(&mut cmd)?;
    Ok(Programs {
        init: ws.node_bin("caisson-init"),
        agent: ws.node_bin("node-agent"),
    })
}

/// The TEST FIXTURES `ticker`, `k3s-stand-in` and `tcp-relay`, release, static like the
/// node's programs (same flags, same target); returns the directory that
/// holds them. A cargo run of its own: building them together with the
/// agent could unify features of shared dependencies into the agent.
pub fn build_fixtures(ws: &Workspace) -> Result<PathBuf> {
    println!(
        "xtask: building the test fixtures ticker, k3s-stand-in and tcp-relay (release, static)"
    );
    let mut cmd = ws.cargo();
    cmd.args([
        "build",
        "--release",
        "--target",
        NODE_TARGET,
        "-p",
        "caisson-test-fixtures",
    ])
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env("RUSTFLAGS", "-C target-feature=+crt-static");
    run(&mut cmd)?;
    let dir = ws.target_dir.join(NODE_TARGET).join("release");
    for name in FIXTURES {
        let bin = dir.join(name);
        if !bin.is_file() {
            anyhow::bail!(
                "cargo built the fixtures but {} is not there",
                bin.display()
            );
        }
    }
    Ok(dir)
}

/// The binaries of `caisson-test-fixtures`.
pub const FIXTURES: [&str; 3] = ["ticker", "k3s-stand-in", "tcp-relay"];

/// `nodectl` for this host. Debug for the tests: `cargo test` builds the same
/// binary anyway, so this costs nothing extra there. Release for the bench,
/// whose timings include nodectl's own TLS handshakes.
pub fn build_nodectl(ws: &Workspace, release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    println!("xtask: building nodectl ({profile})");
    let mut cmd = ws.cargo();
    cmd.args(["build", "-p", "nodectl"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(ws.target_dir.join(profile).join("nodectl"))
}
