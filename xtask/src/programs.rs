//! The node's own programs, built static for the node.

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
