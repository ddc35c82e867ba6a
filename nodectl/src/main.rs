//! nodectl: the operator's CLI. Everything an operator does to a node goes
//! through it (or through any HTTPS client holding a certificate).

mod clientconfig;
mod failure;
mod files;
mod gen;
mod http;
mod remote;
mod render;
mod target;
mod tls;
mod views;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nodectl",
    version,
    about = "Operate Caisson nodes",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    connection: remote::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the PKI, client certificates and configs.
    #[command(subcommand)]
    Gen(gen::GenCommand),
    /// Check a machine config without a node.
    Validate {
        /// The machine config (TOML).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages into a directory.
    Manpages {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    #[command(flatten)]
    Remote(remote::RemoteCommand),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        // Every failing node has already been reported.
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ok(false): the command ran but some node failed.
fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Gen(g) => gen::run(g, &cli.connection).map(|()| true),
        Command::Validate { file } => validate(&file).map(|()| true),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "nodectl",
                &mut std::io::stdout(),
            );
            Ok(true)
        }
        Command::Manpages { out } => manpages(&out).map(|()| true),
        Command::Remote(r) => remote::run(r, &cli.connection),
    }
}

fn validate(file: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    match caisson_config::parse(&file.display().to_string(), &text) {
        Ok(_) => {
            println!("{}: valid", file.display());
            Ok(())
        }
        Err(errors) => {
            let n = errors.0.len();
            Err(anyhow::anyhow!(
                "{errors}\n{n} problem{} found",
                if n == 1 { "" } else { "s" }
            ))
        }
    }
}

fn manpages(out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![(String::from("nodectl"), cmd.clone())];
    for sub in cmd.get_subcommands() {
        pages.push((format!("nodectl-{}", sub.get_name()), sub.clone()));
    }
    for (name, page) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        let path = out.join(format!("{name}.1"));
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
