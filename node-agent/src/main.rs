//! node-agent: PID 1 of a Caisson node.
//!
//! It boots the node in named phases ([`boot`]), then reaps zombies
//! ([`reaper`]) and waits for the power button ([`input`]) or a shutdown
//! signal, and finally powers off or reboots in order ([`power`]).
//!
//! PID 1 exiting panics the kernel, so nothing here may end the process:
//! errors are logged and boot goes on, a panic is logged by the hook and
//! caught, and if the async runtime itself is lost the agent falls back to
//! reaping zombies forever.
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

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caisson_layout::KernelCmdline;
use nix::errno::Errno;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use node_agent::reaper::Reaper;
use node_agent::{boot, input, logging, mounts, power};

fn main() {
    let started = Instant::now();
    let pid = std::process::id();
    if pid != 1 {
        eprintln!(
            "node-agent: refusing to run as PID {pid}: this program is PID 1 of a Caisson node and would \
             mount filesystems and power the machine off. Nothing was changed."
        );
        std::process::exit(1);
    }

    // /proc comes from init; mount it if init did not, since the command
    // line (log level, slot) is read from it before anything is logged.
    let proc_mounted = mounts::ensure_proc();
    let cmdline =
        KernelCmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    logging::init(logging::level_from_cmdline(cmdline.value("caisson.log")));
    std::panic::set_hook(Box::new(|panic| {
        error!("node-agent: PANIC (caught; the agent keeps running): {panic}")
    }));
    let banner = boot::banner(&boot::image_version(), boot::slot(&cmdline));
    info!("{banner}");
    match proc_mounted {
        Ok(false) => {}
        Ok(true) => warn!("/proc was not mounted by init; mounted it"),
        Err(e) => error!("/proc is not mounted and mounting it failed: {e}"),
    }

    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| run(started, &cmdline))) {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or(panic.downcast_ref::<String>().map(String::as_str));
        error!(
            "node-agent: main task panicked ({}); from now on only reaping zombies",
            what.unwrap_or("?")
        );
    } else {
        error!("node-agent: main task ended; from now on only reaping zombies");
    }
    reap_forever()
}

fn run(started: Instant, cmdline: &KernelCmdline) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(agent(started, cmdline)),
        Err(e) => error!("node-agent: cannot start the async runtime: {e}"),
    }
}

async fn agent(started: Instant, cmdline: &KernelCmdline) {
    let reaper = Arc::new(Reaper::new());
    match signal(SignalKind::child()) {
        Ok(sigchld) => {
            let reaper = reaper.clone();
            tokio::spawn(async move { reaper.run(sigchld).await });
        }
        Err(e) => {
            error!("reaper: cannot listen for SIGCHLD: {e}; zombies are reaped only at shutdown")
        }
    }
    // Shutdown requests from signals, the power button and the API.
    let (requests, mut incoming) = mpsc::channel(8);
    if let Err(e) = power::forward_signals(requests.clone()) {
        error!("cannot listen for SIGTERM/SIGPWR/SIGINT: {e}");
    }
    power::disable_ctrl_alt_del();

    let booted = boot::boot(mounts::Storage::from_cmdline(cmdline));
    // Armed once coldplug has loaded `button` and `evdev`, and before
    // `boot: ready`: a press from then on is queued and acted on after boot.
    input::arm_power_buttons(requests.clone());
    // Kept for the agent's lifetime: the API serves it.
    let node = boot::configure(booted, cmdline, requests.clone(), reaper.clone()).await;
    boot::log_ready(started);

    // `requests` lives on in this scope, so the channel never closes.
    let Some(request) = incoming.recv().await else {
        error!("shutdown request channel closed; the agent stays up without a way to shut down");
        return std::future::pending().await;
    };
    // Services first, in reverse dependency order, each given its timeout;
    // then whatever is left gets the blanket SIGTERM/SIGKILL.
    if let Some(supervisor) = node.supervisor() {
        info!("shutdown: stopping services");
        for stopped in supervisor.stop_all().await {
            info!("shutdown: {}: {} after {} ms", stopped.name, stopped.outcome, stopped.took.as_millis());
        }
    }
    power::shutdown(request, &reaper).await
}

/// Last resort when the runtime is gone: PID 1 must still reap.
fn reap_forever() -> ! {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Err(Errno::ECHILD) | Err(_) => std::thread::sleep(Duration::from_secs(1)),
            Ok(_) => {}
        }
    }
}
