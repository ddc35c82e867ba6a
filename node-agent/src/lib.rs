//! node-agent, PID 1 of a Caisson node, as a library: `main.rs` is the thin
//! entry point, and every concern lives in its own module here so that it
//! can be tested on its own.

// PID 1 must not panic: these are errors outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
pub mod api;
pub mod boot;
pub mod bootentry;
pub mod cgroup;
pub mod coldplug;
pub mod config;
pub mod containerd;
pub mod etc;
pub mod health;
pub mod identity;
pub mod install;
pub mod input;
pub mod logging;
pub mod logs;
pub mod mounts;
pub mod network;
pub mod platform;
pub mod power;
pub mod reaper;
pub mod reset;
pub mod runtime;
pub mod store;
pub mod supervisor;
pub mod upgrade;
