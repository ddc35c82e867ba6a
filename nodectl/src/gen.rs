//! `nodectl gen`: the cluster PKI, further client certificates, and configs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use caisson_pki::{Ca, Role, CLIENT_DAYS};
use clap::Subcommand;

use crate::clientconfig::{self, ClientConfig, Context};
use crate::files::write_new;
use crate::remote::Connection;

#[derive(Subcommand)]
pub enum GenCommand {
    /// Create the cluster CA (10 years) and an admin client certificate (1 year).
    Secrets {
        /// Directory for ca.crt, ca.key, admin.crt, admin.key.
        #[arg(long, default_value = "secrets")]
        out: PathBuf,
        /// Common name of the CA.
        #[arg(long, default_value = "caisson")]
        cluster: String,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate for a person or program.
    Client {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Common name, e.g. the person's login; recorded in the audit log.
        #[arg(long)]
        cn: String,
        /// Directory holding ca.crt and ca.key.
        #[arg(long, default_value = "secrets")]
        secrets: PathBuf,
        /// Directory for <cn>.crt and <cn>.key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Write a machine config and the client config for a set of nodes.
    ///
    /// The nodes' addresses come from -e/--endpoints (host or host:port,
    /// comma-separated); the context is named by --context (default
    /// "caisson") and merged into the client config (--nodectlconfig,
    /// $NODECTLCONFIG or $XDG_CONFIG_HOME/nodectl/config.toml).
    Config {
        /// Directory holding ca.crt, ca.key, admin.crt, admin.key.
        #[arg(long, default_value = "secrets")]
        secrets: PathBuf,
        /// Directory for node.toml.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse::<Role>().map_err(|e| e.to_string())
}

/// The context `gen config` writes when --context is not given.
const DEFAULT_CONTEXT: &str = "caisson";

pub fn run(cmd: GenCommand, conn: &Connection) -> Result<()> {
    match cmd {
        GenCommand::Secrets {
            out,
            cluster,
            force,
        } => secrets(&out, &cluster, force),
        GenCommand::Client {
            role,
            cn,
            secrets,
            out,
            force,
        } => client(&secrets, &out, &cn, role, force),
        GenCommand::Config {
            secrets,
            out,
            force,
        } => {
            if conn.endpoints.is_empty() {
                anyhow::bail!(
                    "gen config needs the nodes' addresses: -e/--endpoints host[:port],…"
                );
            }
            let context = conn.context.as_deref().unwrap_or(DEFAULT_CONTEXT);
            config(
                &secrets,
                &conn.endpoints,
                context,
                &out,
                conn.nodectlconfig.as_deref(),
                force,
            )
        }
    }
}

fn read(dir: &Path, name: &str) -> Result<String> {
    let p = dir.join(name);
    std::fs::read_to_string(&p).with_context(|| {
        format!(
            "cannot read {} (run `nodectl gen secrets` first)",
            p.display()
        )
    })
}

fn load_ca(dir: &Path) -> Result<Ca> {
    let ca = Ca::from_pem(&read(dir, "ca.crt")?, &read(dir, "ca.key")?)
        .with_context(|| format!("the CA in {} is not usable", dir.display()))?;
    Ok(ca)
}

/// `<name>.crt` (0644) and `<name>.key` (0600) in `out`.
fn write_pair(out: &Path, name: &str, pair: &caisson_pki::CertKey, force: bool) -> Result<()> {
    write_new(
        &out.join(format!("{name}.crt")),
        pair.cert_pem.as_bytes(),
        0o644,
        force,
    )?;
    write_new(
        &out.join(format!("{name}.key")),
        pair.key_pem.as_bytes(),
        0o600,
        force,
    )
}

fn secrets(out: &Path, cluster: &str, force: bool) -> Result<()> {
    let ca_pair = caisson_pki::generate_ca(cluster)?;
    let ca = Ca::from_pem(&ca_pair.cert_pem, &ca_pair.key_pem)?;
    let admin = ca.issue_client("admin", Role::Admin, CLIENT_DAYS)?;
    write_pair(out, "ca", &ca_pair, force)?;
    write_pair(out, "admin", &admin, force)?;
    println!(
        "wrote the cluster CA and an admin certificate to {}",
        out.display()
    );
    println!("keep ca.key offline: whoever holds it can issue admin certificates");
    Ok(())
}

fn client(secrets: &Path, out: &Path, cn: &str, role: Role, force: bool) -> Result<()> {
    if cn.is_empty() || cn.contains(['/', '\0']) {
        anyhow::bail!("--cn {cn:?}: expected a name without '/'");
    }
    let ca = load_ca(secrets)?;
    let c = ca.issue_client(cn, role, CLIENT_DAYS)?;
    write_pair(out, cn, &c, force)?;
    println!(
        "issued a {role} certificate for {cn:?} in {}",
        out.display()
    );
    Ok(())
}

/// A machine config for every node of the set: DHCP, the cluster CA and its
/// key so each node mints its own server certificate.
pub fn machine_config(ca_cert: &str, ca_key: &str) -> String {
    format!(
        "# Caisson machine config generated by `nodectl gen config`.\n\
         # Contains the cluster CA key: treat this file as a secret.\n\
         version = 1\n\n\
         [api]\n\
         port = {port}\n\
         ca_cert = \"\"\"\n{cert}\n\"\"\"\n\
         ca_key = \"\"\"\n{key}\n\"\"\"\n",
        port = caisson_config::DEFAULT_API_PORT,
        cert = ca_cert.trim(),
        key = ca_key.trim(),
    )
}

fn config(
    secrets: &Path,
    endpoints: &[String],
    context: &str,
    out: &Path,
    nodectlconfig: Option<&Path>,
    force: bool,
) -> Result<()> {
    let ca_cert = read(secrets, "ca.crt")?;
    let ca_key = read(secrets, "ca.key")?;
    let node = machine_config(&ca_cert, &ca_key);
    // Never write a config the node would refuse.
    caisson_config::parse("generated node.toml", &node).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_new(&out.join("node.toml"), node.as_bytes(), 0o600, force)?;

    let path = clientconfig::default_path(nodectlconfig);
    let mut cc = if path.exists() {
        ClientConfig::load(&path)?
    } else {
        ClientConfig {
            context: context.to_string(),
            contexts: Default::default(),
        }
    };
    cc.merge(
        context,
        Context {
            endpoints: endpoints.to_vec(),
            nodes: Vec::new(),
            ca: ca_cert,
            cert: read(secrets, "admin.crt")?,
            key: read(secrets, "admin.key")?,
        },
    );
    write_new(&path, cc.render().as_bytes(), 0o600, true)?;
    println!(
        "wrote {} and context {context:?} in {}",
        out.join("node.toml").display(),
        path.display()
    );
    Ok(())
}
