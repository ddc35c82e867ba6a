//! The node API's figures for `cargo xtask bench`: boot to the API
//! answering `nodectl version`, the agent's memory once configured and with
//! 100 `logs -f` clients, and a live `apply-config --mode no-reboot`.
//! Everything goes through the real nodectl over QEMU's port forward, as an
//! operator's calls would.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qemu_tests::nodectl::{ApiNode, CALL};
use qemu_tests::process::{retry, Stream};

/// How many `logs agent -f` clients to hold open at once.
pub const FOLLOWERS: usize = 100;
const APPLY_ROUNDS: usize = 5;
const ATTACH_TIMEOUT: Duration = Duration::from_secs(300);

/// QEMU start → agent banner → first answer to `nodectl version`
/// (maintenance mode, `--insecure --fingerprint`).
pub struct BootToApi {
    pub banner: Duration,
    pub api: Duration,
    pub fingerprint: String,
}

pub fn boot_to_api(node: &mut ApiNode, timeout: Duration) -> Result<BootToApi> {
    node.vm.wait_for("the agent banner", timeout, |l| {
        l.contains("node-agent ") && l.contains(" running as PID 1")
    })?;
    let banner = node.vm.elapsed();
    let fingerprint = node.wait_for_maintenance(timeout)?;
    let ctl = node.ctl.clone();
    let args = [
        "--insecure",
        "--fingerprint",
        fingerprint.as_str(),
        "version",
    ];
    retry(timeout, Duration::from_millis(100), || ctl.ok(&args, CALL))
        .context("the node's API never answered `nodectl version`")?;
    let api = node.vm.elapsed();
    Ok(BootToApi {
        banner,
        api,
        fingerprint,
    })
}

pub struct ApiFigures {
    /// Configured, serving mTLS, idle (GET /v1/health's `agent` check).
    pub rss_configured_kib: u64,
    /// With every follower attached.
    pub rss_followers_kib: u64,
    pub followers_attached: usize,
    /// `apply-config --mode no-reboot` of a host name + sysctl change: from
    /// starting nodectl to its answer, which the agent sends once both are
    /// in effect (checked after each round).
    pub applies: Vec<Duration>,
}

/// Configure the node through the maintenance path, then measure.
pub fn measure(node: &mut ApiNode, fingerprint: &str) -> Result<ApiFigures> {
    let first = node.cluster.config_with(
        &node.ctl.dir().join("bench-0.toml"),
        "[machine]\nhostname = \"bench-0\"\n",
    )?;
    let first = first.display().to_string();
    node.ok(&[
        "--insecure",
        "--fingerprint",
        fingerprint,
        "apply-config",
        "-f",
        &first,
    ])?;
    node.vm
        .wait_for_line("api: serving mTLS", Duration::from_secs(120))?;
    node.until_ok(&["version"], Duration::from_secs(120))?;
    // Let the listener's first address check and any late boot work pass.
    std::thread::sleep(Duration::from_secs(6));
    let rss_configured_kib = agent_rss(node)?;

    let (followers_attached, rss_followers_kib) = with_followers(node)?;
    let applies = apply_rounds(node)?;
    Ok(ApiFigures {
        rss_configured_kib,
        rss_followers_kib,
        followers_attached,
        applies,
    })
}

/// The agent's VmRSS from GET /v1/health.
fn agent_rss(node: &mut ApiNode) -> Result<u64> {
    let health = node.json(&["health"]).or_else(|_| {
        // `health` exits non-zero when a check fails; the figure is still there.
        let out = node.ctl.run(&["-o", "json", "health"], CALL)?;
        qemu_tests::nodectl::json_result(&out.stdout).map_err(|message| {
            qemu_tests::HarnessError::Output {
                command: out.command,
                message,
            }
        })
    })?;
    let checks = health["checks"].as_array().cloned().unwrap_or_default();
    let detail = checks
        .iter()
        .find(|c| c["name"] == "agent")
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    vm_rss_kib(&detail).with_context(|| format!("no VmRSS in the health's agent check: {health}"))
}

/// "VmRSS 5120 kB" anywhere in `text`.
pub fn vm_rss_kib(text: &str) -> Option<u64> {
    let (_, rest) = text.split_once("VmRSS")?;
    let mut words = rest.split_whitespace();
    let n = words.next()?.trim_start_matches(['=', ':']).parse().ok()?;
    matches!(words.next()?.trim_end_matches([')', ',']), "kB" | "KiB").then_some(n)
}

/// Open FOLLOWERS `logs agent -f` clients, wait until each has its first
/// line, and read the agent's memory while they are all attached.
fn with_followers(node: &mut ApiNode) -> Result<(usize, u64)> {
    let mut followers: Vec<Stream> = Vec::with_capacity(FOLLOWERS);
    for _ in 0..FOLLOWERS {
        followers.push(node.ctl.stream(&["logs", "agent", "-f", "--tail", "1"])?);
    }
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    while followers.iter().any(|f| f.line_count() == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let attached = followers
        .iter_mut()
        .filter(|f| f.line_count() > 0)
        .filter_map(|f| f.is_running().then_some(()))
        .count();
    let rss = agent_rss(node)?;
    if attached < FOLLOWERS {
        let sample = followers
            .iter()
            .find(|f| f.line_count() == 0)
            .map(|f| f.output())
            .unwrap_or_default();
        println!("bench: only {attached} of {FOLLOWERS} followers attached; one that did not said:\n{sample}");
    }
    drop(followers);
    Ok((attached, rss))
}

/// Alternate the host name and vm.swappiness, each round a live apply.
fn apply_rounds(node: &mut ApiNode) -> Result<Vec<Duration>> {
    let mut took = Vec::new();
    for round in 1..=APPLY_ROUNDS {
        let hostname = format!("bench-{round}");
        let swappiness = 10 + round;
        let file = node.cluster.config_with(
            &node.ctl.dir().join(format!("bench-{round}.toml")),
            &format!(
                "[machine]\nhostname = \"{hostname}\"\n\n[kernel]\nsysctls = {{ \"vm.swappiness\" = {swappiness} }}\n"
            ),
        )?;
        let file = file.display().to_string();
        let args = [
            "-o",
            "json",
            "apply-config",
            "--mode",
            "no-reboot",
            "-f",
            &file,
        ];
        let run = node.run(&args, CALL)?;
        let elapsed = run.took;
        let applied = qemu_tests::nodectl::json_result(&run.clone().ok()?)
            .map_err(|m| anyhow::anyhow!("apply-config: {m}"))?;
        let text = applied.to_string();
        if !text.contains(&hostname) || !text.contains(&format!("= {swappiness}")) {
            bail!("apply-config did not report both changes live: {text}");
        }
        // The answer comes once the change is in effect; check it is.
        let version = node.until_ok(&["-o", "json", "version"], Duration::from_secs(60))?;
        if !version.contains(&format!("\"hostname\":\"{hostname}\"")) {
            bail!("after the apply the node reports {version}");
        }
        println!(
            "bench: apply-config --mode no-reboot (host name + sysctl) round {round}: {:.2} s",
            elapsed.as_secs_f64()
        );
        took.push(elapsed);
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(vm_rss_kib("VmRSS 5120 kB"), Some(5120));
        assert_eq!(
            vm_rss_kib("boot: ready in 812 ms (kernel uptime 9.1 s, VmRSS 4904 kB)"),
            Some(4904)
        );
        assert_eq!(vm_rss_kib("VmRSS unknown"), None);
    }
}
