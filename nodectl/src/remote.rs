//! The commands that talk to nodes: which nodes, how we trust them, and the
//! fan-out that calls them all at once and shows each node's result.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use caisson_api::types::{ApplyMode, ApplyRequest, ResetRequest, RollbackRequest, UpgradeFetchRequest};
use caisson_api::Endpoint;
use clap::{Args, Subcommand, ValueEnum};
use futures_util::future::join_all;
use serde_json::json;

use crate::clientconfig::{self, ClientConfig};
use crate::failure::Failure;
use crate::http::{Call, Node};
use crate::render::{self, Format, Outcome, Results};
use crate::target::{self, Target};
use crate::tls::{Fingerprint, Trust};
use crate::views;

/// Flags of every command that talks to nodes.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// Client config [default: $NODECTLCONFIG, else $XDG_CONFIG_HOME/nodectl/config.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub nodectlconfig: Option<PathBuf>,
    /// Context of the client config to use [default: its current context].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Node API addresses to dial, host or host:port, comma-separated.
    #[arg(
        short = 'e',
        long,
        global = true,
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub endpoints: Vec<String>,
    /// Nodes to act on, host or host:port, comma-separated; called in parallel.
    #[arg(
        short = 'n',
        long,
        global = true,
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub nodes: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Maintenance mode: do not check the node's certificate against the
    /// cluster CA, and present no client certificate.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// With --insecure: accept only the certificate with this fingerprint, as
    /// the node's console shows it.
    #[arg(long, global = true, requires = "insecure", value_name = "SHA256:HEX")]
    pub fingerprint: Option<Fingerprint>,
}

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Show each node's image version, slot and kernel.
    Version,
    /// Show each node's health checks; exits non-zero if a node is not ready.
    Health,
    /// Read a resource from nodes.
    #[command(subcommand)]
    Get(GetCommand),
    /// Validate a machine config here, then apply it to nodes.
    ApplyConfig(ApplyArgs),
    /// List the services each node runs.
    Services,
    /// Restart a service.
    Restart {
        /// The service, as `nodectl services` names it.
        service: String,
    },
    /// Show a log: the agent's ("agent") or a service's.
    Logs {
        /// "agent" or a service name.
        source: String,
        /// Keep streaming new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines of history to show first [node's default: 100].
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Show the kernel log.
    Dmesg {
        /// Keep streaming new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines of history to show first [default: all].
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Reboot nodes.
    Reboot,
    /// Power nodes off.
    Shutdown,
    /// Wipe STATE and DATA and return nodes to maintenance mode.
    Reset {
        /// Confirm: the machine config, audit log and all data are lost.
        #[arg(long, visible_alias = "confirm")]
        yes: bool,
    },
    /// Install an update bundle into each node's inactive slot, then
    /// reboot into it (the node rolls back by itself if it fails its
    /// health gates).
    #[command(group(clap::ArgGroup::new("source").required(true).args(["bundle", "url"])))]
    Upgrade {
        /// The bundle file, streamed to the node.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// An http:// URL the node fetches the bundle from (a mirror on site).
        #[arg(long)]
        url: Option<String>,
        /// Write the slot but do not reboot; it boots at the next reboot.
        #[arg(long)]
        stage: bool,
        /// Also time a scratch write on the node's DATA, to compare with the
        /// slot's write speed (`cargo xtask bench`).
        #[arg(long, hide = true)]
        measure_disk: bool,
    },
    /// Make the other, known-good slot boot next, and reboot into it.
    Rollback {
        /// Do not reboot now; the other slot boots at the next reboot.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Print k3s's admin kubeconfig from a server node (admin role), its
    /// server address rewritten to the node's address as nodectl reaches it.
    Kubeconfig {
        /// The host (name or IP) to put in the kubeconfig's server URL
        /// [default: the node's endpoint host].
        #[arg(long, value_name = "HOST")]
        server_host: Option<String>,
    },
    /// Show the audit log: every mutating call and every refusal.
    Audit {
        /// Most recent records to show.
        #[arg(long, value_name = "N", default_value_t = 100)]
        tail: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum GetCommand {
    /// The machine config in force, secrets masked.
    Config,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The machine config (TOML).
    #[arg(short = 'f', long = "file", required_unless_present = "confirm")]
    file: Option<PathBuf>,
    /// How to apply; `auto` never reboots by itself.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// With --mode try: restore the previous config unless confirmed within
    /// this time, e.g. 90s, 1m, 2m30s [node's default].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Validate and show the diff; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep the config applied with --mode try.
    #[arg(long, conflicts_with_all = ["file", "dry_run", "timeout", "mode"])]
    confirm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Auto,
    NoReboot,
    Reboot,
    Staged,
    Try,
}

impl From<ModeArg> for ApplyMode {
    fn from(m: ModeArg) -> ApplyMode {
        match m {
            ModeArg::Auto => ApplyMode::Auto,
            ModeArg::NoReboot => ApplyMode::NoReboot,
            ModeArg::Reboot => ApplyMode::Reboot,
            ModeArg::Staged => ApplyMode::Staged,
            ModeArg::Try => ApplyMode::Try,
        }
    }
}

/// `90`, `90s`, `1m`, `2m30s`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: expected a duration like 90s, 1m or 2m30s");
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let (mut total, mut digits) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// The nodes to call, each with how we trust it.
fn nodes(conn: &Connection) -> Result<Vec<Node>> {
    let explicit = !conn.nodes.is_empty() || !conn.endpoints.is_empty();
    let (trust, context) = if conn.insecure {
        if conn.fingerprint.is_none() {
            eprintln!(
                "warning: --insecure without --fingerprint: the node's identity is not checked, so an impostor \
                 could read what you send (a machine config holds the cluster CA key); pass --fingerprint with \
                 the value on the node's console"
            );
        }
        let trust = Trust::Insecure {
            fingerprint: conn.fingerprint.clone(),
        };
        // A node in maintenance mode is usually not in any context yet.
        let context = if explicit {
            None
        } else {
            Some(load_context(conn)?.1)
        };
        (trust, context)
    } else {
        let (name, ctx) = load_context(conn)?;
        let trust = Trust::Cluster {
            context: name,
            ca_pem: ctx.ca.clone(),
            cert_pem: ctx.cert.clone(),
            key_pem: ctx.key.clone(),
        };
        (trust, Some(ctx))
    };
    let targets =
        target::select(&conn.nodes, &conn.endpoints, context.as_ref()).map_err(|e| anyhow!(e))?;
    let trust = Arc::new(trust);
    Ok(targets
        .into_iter()
        .map(|target| Node {
            target,
            trust: trust.clone(),
        })
        .collect())
}

fn load_context(conn: &Connection) -> Result<(String, clientconfig::Context)> {
    let path = clientconfig::default_path(conn.nodectlconfig.as_deref());
    if !path.exists() {
        bail!(
            "no client config at {}: run `nodectl gen config`, or pass --nodectlconfig \
             (a node in maintenance mode needs none: --insecure --fingerprint SHA256:… -n ADDRESS)",
            path.display()
        );
    }
    let cc = ClientConfig::load(&path)?;
    let name = conn.context.clone().unwrap_or_else(|| cc.context.clone());
    let ctx = cc.contexts.get(&name).cloned().with_context(|| {
        let known: Vec<&str> = cc.contexts.keys().map(String::as_str).collect();
        format!(
            "context {name:?} is not in {} (it has: {})",
            path.display(),
            known.join(", ")
        )
    })?;
    Ok((name, ctx))
}

/// Run a command on every node; true when all succeeded.
pub fn run(cmd: RemoteCommand, conn: &Connection) -> Result<bool> {
    // Checks that need no node come first: a bad config or a missing
    // confirmation never reaches the network.
    let plan = plan(cmd)?;
    let nodes = nodes(conn)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    Ok(rt.block_on(async {
        match plan {
            Plan::Once(call, view) => {
                render::print(conn.output, &fan_out(&nodes, &call, view).await)
            }
            Plan::Stream(call) => stream_all(&nodes, &call, conn.output).await,
            Plan::Kubeconfig(host) => {
                let call = Call::new(Endpoint::Kubeconfig);
                let results = join_all(nodes.iter().map(|n| {
                    let call = call.clone();
                    let host = host.clone().unwrap_or_else(|| n.target.host.clone());
                    async move {
                        let r = n.call(&call).await.and_then(|body| views::kubeconfig(&body, &host));
                        (n.target.clone(), r)
                    }
                }))
                .await;
                render::print(conn.output, &results)
            }
        }
    }))
}

type ViewFn = fn(&[u8]) -> Result<Outcome, Failure>;

enum Plan {
    Once(Call, ViewFn),
    Stream(Call),
    /// The kubeconfig, rewritten per node to its address.
    Kubeconfig(Option<String>),
}

fn plan(cmd: RemoteCommand) -> Result<Plan> {
    Ok(match cmd {
        RemoteCommand::Version => Plan::Once(Call::new(Endpoint::Version), views::version),
        RemoteCommand::Health => Plan::Once(Call::new(Endpoint::Health), views::health),
        RemoteCommand::Get(GetCommand::Config) => Plan::Once(Call::new(Endpoint::ConfigGet), views::config),
        RemoteCommand::ApplyConfig(a) => apply_plan(a)?,
        RemoteCommand::Services => Plan::Once(Call::new(Endpoint::ServicesList), views::services),
        RemoteCommand::Restart { service } => {
            Plan::Once(Call::new(Endpoint::ServiceRestart).arg("name", &service), |b| views::ack("restarted", b))
        }
        RemoteCommand::Logs { source, follow, tail } => {
            Plan::Stream(Call::new(Endpoint::Logs).arg("source", &source).query(&log_query(follow, tail)))
        }
        RemoteCommand::Dmesg { follow, tail } => Plan::Stream(Call::new(Endpoint::Dmesg).query(&log_query(follow, tail))),
        RemoteCommand::Reboot => Plan::Once(Call::new(Endpoint::Reboot), |b| views::ack("rebooting", b)),
        RemoteCommand::Shutdown => Plan::Once(Call::new(Endpoint::Shutdown), |b| views::ack("shutting down", b)),
        RemoteCommand::Reset { yes: false } => bail!(
            "reset wipes STATE and DATA (the machine config, the audit log, every volume) and returns the node \
             to maintenance mode: pass --yes to confirm"
        ),
        RemoteCommand::Reset { yes: true } => Plan::Once(Call::new(Endpoint::Reset).json(&ResetRequest { confirm: true }), |b| {
            views::ack("resetting: STATE and DATA are being wiped; the node comes back in maintenance mode", b)
        }),
        RemoteCommand::Upgrade { bundle: Some(file), stage, measure_disk, .. } => {
            if !file.is_file() {
                bail!("{}: no such bundle file; nothing was sent", file.display());
            }
            Plan::Once(
                Call::new(Endpoint::Upgrade)
                    .query(&[("stage", stage.to_string()), ("measure_disk", measure_disk.to_string())])
                    .upload(&file),
                views::upgraded,
            )
        }
        RemoteCommand::Upgrade { url: Some(url), stage, measure_disk, .. } => Plan::Once(
            Call::new(Endpoint::UpgradeFetch).json(&UpgradeFetchRequest { url, stage, measure_disk }),
            views::upgraded,
        ),
        RemoteCommand::Upgrade { .. } => bail!("pass --bundle FILE or --url URL"),
        RemoteCommand::Rollback { no_reboot } => Plan::Once(
            Call::new(Endpoint::Rollback).json(&RollbackRequest { reboot: !no_reboot }),
            views::rolled_back,
        ),
        RemoteCommand::Kubeconfig { server_host } => Plan::Kubeconfig(server_host),
        RemoteCommand::Audit { tail } => {
            Plan::Once(Call::new(Endpoint::Audit).query(&[("tail", tail.to_string())]), views::audit)
        }
    })
}

fn log_query(follow: bool, tail: Option<usize>) -> Vec<(&'static str, String)> {
    let mut q = vec![("follow", follow.to_string())];
    if let Some(n) = tail {
        q.push(("tail", n.to_string()));
    }
    q
}

fn apply_plan(a: ApplyArgs) -> Result<Plan> {
    if a.confirm {
        return Ok(Plan::Once(Call::new(Endpoint::ConfigConfirm), |b| {
            views::ack("confirmed: the new config stays", b)
        }));
    }
    let file = a.file.context("--file is required")?;
    if a.timeout.is_some() && a.mode != ModeArg::Try {
        bail!("--timeout applies only to --mode try");
    }
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if let Err(errors) = caisson_config::parse(&file.display().to_string(), &text) {
        let n = errors.0.len();
        bail!(
            "{errors}\n{n} problem{} found; nothing was sent",
            if n == 1 { "" } else { "s" }
        );
    }
    let req = ApplyRequest {
        config: text,
        mode: a.mode.into(),
        dry_run: a.dry_run,
        try_timeout_secs: a.timeout.map(|d| d.as_secs()),
    };
    Ok(Plan::Once(
        Call::new(Endpoint::ConfigApply).json(&req),
        views::applied,
    ))
}

async fn fan_out(nodes: &[Node], call: &Call, view: ViewFn) -> Results {
    join_all(nodes.iter().map(|n| async move {
        let r = n.call(call).await.and_then(|body| view(&body));
        (n.target.clone(), r)
    }))
    .await
}

/// Stream every node's lines as they arrive, each prefixed with its node
/// when there are several. Failures are reported once all streams end.
async fn stream_all(nodes: &[Node], call: &Call, format: Format) -> bool {
    let many = nodes.len() > 1;
    let results: Vec<(Target, Result<(), Failure>)> = join_all(nodes.iter().map(|n| async move {
        let label = n.target.label.clone();
        let r = n
            .stream(call, |line| print_line(format, many, &label, line))
            .await;
        (n.target.clone(), r)
    }))
    .await;
    let mut ok = true;
    for (t, r) in results {
        if let Err(f) = r {
            ok = false;
            match format {
                Format::Json => println!("{}", json!({ "node": t.label, "error": f })),
                Format::Table if many => eprintln!("{}: error: {f}", t.label),
                Format::Table => eprintln!("error: {f}"),
            }
        }
    }
    ok
}

/// False when stdout is gone (e.g. piped into `head`): stop streaming.
fn print_line(format: Format, many: bool, node: &str, line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    let written = match format {
        Format::Json => writeln!(out, "{}", json!({ "node": node, "line": line })),
        Format::Table if many => writeln!(out, "{node}: {line}"),
        Format::Table => writeln!(out, "{line}"),
    };
    written.and_then(|()| out.flush()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go_ones() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m30s").unwrap(), Duration::from_secs(150));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "m", "1x", "1m30", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reset_without_confirmation_never_reaches_a_node() {
        let e = plan(RemoteCommand::Reset { yes: false }).err().unwrap();
        assert!(e.to_string().contains("pass --yes"), "{e}");
    }

    #[test]
    fn a_timeout_needs_try_mode() {
        let a = ApplyArgs {
            file: Some("x.toml".into()),
            mode: ModeArg::Auto,
            timeout: Some(Duration::from_secs(60)),
            dry_run: false,
            confirm: false,
        };
        assert!(apply_plan(a)
            .err()
            .unwrap()
            .to_string()
            .contains("--mode try"));
    }
}
