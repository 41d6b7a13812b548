//! `mixed`: the command-line entry point of a mixed node and its tools.
//!
//! ```text
//! mixed dirauth --config authority.toml    run a directory authority
//! mixed dirauth --example-config           print an example authority configuration
//! ```
//!
//! `mixed node` and `mixed demo` come with the node issue.

// the command line prints its answers
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mixed", version, about = "A mix network node and its tools", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a directory authority: it takes node descriptors, votes with its peers, signs the
    /// consensus of each epoch and serves it over HTTP.
    Dirauth {
        /// The authority's TOML configuration (see --example-config).
        #[arg(long, short, required_unless_present = "example_config")]
        config: Option<PathBuf>,
        /// Print an example configuration and exit.
        #[arg(long)]
        example_config: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Dirauth {
            example_config: true,
            ..
        } => {
            print!("{}", dirauth::config::EXAMPLE);
            Ok(())
        }
        Command::Dirauth {
            config: Some(path), ..
        } => run_dirauth(&path),
        Command::Dirauth { config: None, .. } => {
            anyhow::bail!("--config is required (see --example-config)")
        }
    }
}

fn run_dirauth(path: &std::path::Path) -> Result<()> {
    let config = dirauth::AuthorityConfig::load(path)?;
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let identity = config.identity.public().to_hex();
    let handle = dirauth::spawn(config, listener)?;
    tracing::info!(%identity, addr = %handle.addr(), "directory authority running");
    wait_for_shutdown_signal()?;
    tracing::info!("shutting down");
    handle.stop();
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_shutdown_signal() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}
