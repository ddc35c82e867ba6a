//! `cargo xtask demo`: build an image and boot it with the console attached.

use std::io::IsTerminal;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qemu_tests::qemu::{copy_ovmf_vars, create_overlay, QemuArgs};
use qemu_tests::qmp::Qmp;

use crate::deps;
use crate::workspace::Workspace;

/// After the timeout's power-button press, how long the node gets to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

pub fn demo(ws: &Workspace, timeout: Option<u64>) -> Result<()> {
    deps::ensure(&[deps::FETCH, deps::IMAGE, deps::BOOT])?;
    let out = ws.target_dir.join("demo");
    let prepared = crate::image::prepare(ws, &out)?;

    // The VM writes to an overlay and its own firmware variables; the built
    // image stays pristine.
    let run_dir = out.join("run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("cannot clear {}", run_dir.display()))?;
    }
    std::fs::create_dir_all(&run_dir)?;
    let overlay = create_overlay(&prepared.image.raw, &run_dir.join("overlay.qcow2"))?;
    let vars = copy_ovmf_vars(&run_dir)?;
    let qmp_socket = run_dir.join("qmp.sock");
    let args = QemuArgs::new(1024)
        .uefi(&vars)
        .virtio_disk(&overlay)
        .user_net(&[])
        .interactive()
        .extra([
            "-qmp".to_string(),
            format!("unix:{},server=on,wait=off", qmp_socket.display()),
        ]);

    let interactive = std::io::stdin().is_terminal();
    println!();
    println!(
        "==> Booting {} under QEMU (TCG + OVMF; about 10-20 s to the agent).",
        prepared.image.raw.display()
    );
    println!("==> Press Ctrl-A then X to quit QEMU.");
    println!("==> Power button: Ctrl-A then C opens the QEMU monitor; type `system_powerdown` there (Ctrl-A C goes back).");
    if let Some(secs) = timeout {
        println!("==> The power button is pressed after {secs} s.");
    }
    println!();

    let mut cmd = args.command();
    if !interactive {
        // No terminal (CI smoke run): nothing to read from.
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd.spawn().context("cannot start qemu-system-x86_64")?;
    let status = match timeout {
        None => child.wait()?,
        Some(secs) => wait_or_power_off(&mut child, Duration::from_secs(secs), &qmp_socket)?,
    };
    println!("\n==> QEMU exited ({status}).");
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}

/// Let the node run for `limit`, then press the power button; if it has not
/// powered off after a grace period, quit QEMU through QMP (which restores
/// the terminal, unlike a kill), and kill it as the last resort.
fn wait_or_power_off(
    child: &mut Child,
    limit: Duration,
    qmp_socket: &std::path::Path,
) -> Result<std::process::ExitStatus> {
    if let Some(status) = wait_until(child, Instant::now() + limit)? {
        return Ok(status);
    }
    println!(
        "\n==> {} s are up: pressing the power button.",
        limit.as_secs()
    );
    let mut qmp = Qmp::connect(qmp_socket, Duration::from_secs(5)).ok();
    if let Some(q) = qmp.as_mut() {
        let _ = q.system_powerdown();
    }
    if let Some(status) = wait_until(child, Instant::now() + POWEROFF_GRACE)? {
        return Ok(status);
    }
    println!(
        "\n==> The node did not power off within {} s: quitting QEMU.",
        POWEROFF_GRACE.as_secs()
    );
    if let Some(q) = qmp.as_mut() {
        let _ = q.quit();
    }
    if let Some(status) = wait_until(child, Instant::now() + Duration::from_secs(5))? {
        bail!("the node did not power off after the power button (QEMU quit: {status})");
    }
    child.kill()?;
    let status = child.wait()?;
    bail!("the node did not power off after the power button (QEMU killed: {status})")
}

fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
