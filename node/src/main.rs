//! `mixed`: the command-line entry point of a mixed node and its tools.
//!
//! ```text
//! mixed demo                               a local network on loopback, messages end to end
//! mixed node --config node.toml            run a node
//! mixed node --example-config              print an example node configuration
//! mixed node --self-test                   measure this machine: the B one core can honour
//! mixed dirauth --config authority.toml    run a directory authority
//! mixed dirauth --example-config           print an example authority configuration
//! mixed dirauth --print-key --config F     print the authority's public key (for [[authorities]])
//! mixed node --print-key --config F        print the node's identity key and node ID
//! mixed chat --socket S | --node-config F   the messenger (a terminal UI; subcommands too)
//! mixed sim --scenario F --seed S          simulate a network at scale (docs/sim.md)
//! ```

// the command line prints its answers
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use node::IoChoice;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "mixed", version, about = "A mix network node and its tools", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start three directory authorities and a few nodes on loopback, send messages end to
    /// end between two of them, print what every node did, and exit (0 if every message
    /// arrived).
    Demo {
        /// Nodes in the network.
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// Whole messages from the first node to the last (the first is 64 KiB).
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Epoch length in seconds (the first consensus is for the second epoch).
        #[arg(long, default_value_t = 6)]
        epoch_seconds: u64,
        /// B of every node, packets a second.
        #[arg(long, default_value_t = 100.0)]
        bandwidth: f64,
        /// I/O backend of the nodes.
        #[arg(long, value_enum, default_value = "auto")]
        io: IoChoice,
        /// Send nothing: keep the network up for applications, writing one line per node
        /// ("<node id hex> <API socket path>") to this file once it is ready.
        #[arg(long, value_name = "FILE")]
        serve: Option<PathBuf>,
        /// With --serve: stop after this many seconds (default: at SIGINT or SIGTERM).
        #[arg(long, requires = "serve")]
        seconds: Option<u64>,
        /// Skip the offline delivery (a storage provider keeps a message for a stopped
        /// recipient, which collects it when it starts again; about a minute).
        #[arg(long)]
        no_offline: bool,
        /// Show the messenger instead: two users, three devices (one linked from
        /// another), an online message and one to a device that is off (about a minute).
        #[arg(long, conflicts_with_all = ["serve", "no_offline"])]
        chat: bool,
    },
    /// Run a node: it registers with the authorities (unless --passive), emits at its
    /// constant rate B, forwards for others, and serves metrics.
    Node {
        /// The node's TOML configuration (see --example-config).
        #[arg(long, short, required_unless_present_any = ["example_config", "self_test"])]
        config: Option<PathBuf>,
        /// Send and receive without registering or forwarding.
        #[arg(long)]
        passive: bool,
        /// Override the configured I/O backend.
        #[arg(long, value_enum)]
        io: Option<IoChoice>,
        /// Print an example configuration and exit.
        #[arg(long)]
        example_config: bool,
        /// Measure this machine instead of running a node: the unwrap rate, the loopback
        /// round trip, and the capacity of one core (the highest B whose departures stay
        /// on time at 95% of the forward budget, in a bench network on loopback, about two
        /// minutes); prints the `bandwidth` line to put in the configuration.
        #[arg(long, conflicts_with_all = ["config", "passive", "print_key", "example_config"])]
        self_test: bool,
        /// With --self-test: values of B the search tries (each once, or twice when the first
        /// trial is behind).
        #[arg(long, default_value_t = 6, requires = "self_test")]
        self_test_steps: usize,
        /// Print this node's identity key and node ID (creating its keys if absent) and exit.
        #[arg(long, requires = "config")]
        print_key: bool,
        /// On SIGTERM or SIGINT, how long to keep forwarding while the node leaves the
        /// consensus (it withdraws at once; the others route through it until the next
        /// consensus). A second signal stops at once.
        #[arg(long, default_value_t = 2400)]
        leave_seconds: u64,
    },
    /// The messenger: one identity across your devices, contacts by code, online and
    /// offline delivery. No subcommand: the terminal UI. It runs on a node: a running one
    /// (--socket, its api_socket) or one it starts (--node-config, passive unless --bind).
    Chat(chat::cli::ChatArgs),
    /// Run a directory authority: it takes node descriptors, votes with its peers, signs the
    /// consensus of each epoch and serves it over HTTP.
    Dirauth {
        /// The authority's TOML configuration (see --example-config).
        #[arg(long, short, required_unless_present = "example_config")]
        config: Option<PathBuf>,
        /// Print an example configuration and exit.
        #[arg(long)]
        example_config: bool,
        /// Print this authority's public key, for every [[authorities]] list (creating the
        /// key file if absent), and exit.
        #[arg(long, requires = "config")]
        print_key: bool,
    },
    /// Simulate a network from a scenario file and a seed: 10,000 nodes and more (fast
    /// mode) or hundreds on the real engine; CSV of every series and PNG plots (docs/sim.md).
    Sim(mixed_sim::cli::SimArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // the self-test starts and stops its node a few times: only errors are news
    let quiet = matches!(
        cli.command,
        Command::Node {
            self_test: true,
            ..
        }
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // the bench network's node warns, as any node does, while the first
                // consensus is being made: not news for the one measuring
                tracing_subscriber::EnvFilter::new(if quiet { "error" } else { "info" })
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Sim(args) => mixed_sim::cli::main(&args),
        Command::Node {
            self_test: true,
            self_test_steps,
            io,
            ..
        } => {
            let io = io.unwrap_or(IoChoice::Auto);
            eprintln!(
                "self-test: measuring this machine ({self_test_steps} values of B, trials of 2 s, one to two minutes)..."
            );
            let found = node::capacity::selftest::run(io, self_test_steps, 2.0, |t| {
                eprintln!(
                    "  trial at B = {:.0}: {}",
                    t.bandwidth,
                    if t.on_time() { "on time" } else { "behind" }
                )
            })?;
            print!("{}", found.report());
            Ok(())
        }
        Command::Demo {
            nodes,
            messages,
            epoch_seconds,
            bandwidth,
            io,
            serve,
            seconds,
            no_offline,
            chat,
        } => run_demo(
            nodes,
            messages,
            epoch_seconds,
            bandwidth,
            io,
            serve,
            seconds,
            !no_offline,
            chat,
        ),
        Command::Chat(args) => chat::cli::run(args, &embedded_chat_node),
        Command::Node {
            example_config: true,
            ..
        } => {
            print!("{}", node::config::EXAMPLE);
            Ok(())
        }
        Command::Node {
            config: Some(path),
            print_key: true,
            ..
        } => {
            let config = node::NodeConfig::load(&path)?;
            let identity = node::keys::KeyDir::open(&config.key_dir)?
                .identity()?
                .public();
            println!("identity {}", identity.to_hex());
            println!(
                "node_id  {}",
                pki_client::descriptor::hex(&identity.node_id())
            );
            Ok(())
        }
        Command::Node {
            config: Some(path),
            passive,
            io,
            leave_seconds,
            ..
        } => run_node(&path, passive, io, Duration::from_secs(leave_seconds)),
        Command::Node { config: None, .. } => {
            anyhow::bail!("--config is required (see --example-config)")
        }
        Command::Dirauth {
            example_config: true,
            ..
        } => {
            print!("{}", dirauth::config::EXAMPLE);
            Ok(())
        }
        Command::Dirauth {
            config: Some(path),
            print_key: true,
            ..
        } => {
            let identity = dirauth::AuthorityConfig::load_identity(&path)?;
            println!("{}", identity.public().to_hex());
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

#[allow(clippy::too_many_arguments)]
fn run_demo(
    nodes: usize,
    messages: usize,
    epoch_seconds: u64,
    bandwidth: f64,
    io: IoChoice,
    serve: Option<PathBuf>,
    seconds: Option<u64>,
    offline: bool,
    chat: bool,
) -> Result<()> {
    anyhow::ensure!(
        nodes >= 4,
        "--nodes must be at least 4 (3 hops need 3 other nodes)"
    );
    anyhow::ensure!(epoch_seconds >= 3, "--epoch-seconds must be at least 3");
    anyhow::ensure!(
        (10.0..=100_000.0).contains(&bandwidth),
        "--bandwidth must be 10 to 100,000 packets a second"
    );
    let options = node::demo::LocalOptions {
        nodes,
        epoch_seconds,
        bandwidth,
        io,
        ..Default::default()
    };
    eprintln!(
        "starting 3 authorities and {nodes} nodes on loopback; the first consensus takes one to two epochs ({epoch_seconds} s each)..."
    );
    if let Some(file) = serve {
        let net = node::demo::LocalNetwork::start(&options)?;
        let mut lines = String::new();
        for n in &net.nodes {
            let path = n
                .api_socket()
                .context("a demo node without an API socket")?;
            lines.push_str(&format!(
                "{} {}\n",
                pki_client::descriptor::hex(&n.node_id()),
                path.display()
            ));
        }
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, lines).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &file)?;
        eprintln!(
            "serving: {} nodes listed in {}",
            net.nodes.len(),
            file.display()
        );
        match seconds {
            Some(s) => std::thread::sleep(std::time::Duration::from_secs(s)),
            None => wait_for_shutdown_signal()?,
        }
        let _ = std::fs::remove_file(&file);
        return Ok(());
    }
    if chat {
        let net = node::demo::LocalNetwork::start(&options)?;
        eprintln!("the network is up; the messenger's story follows...");
        for line in node::demo_chat::run(&net, bandwidth)? {
            println!("{line}");
        }
        return Ok(());
    }
    let report = node::demo::run(&options, messages, offline)?;
    println!("{}", report.summary);
    anyhow::ensure!(
        report.delivered == messages,
        "{} of {messages} messages arrived",
        report.delivered
    );
    anyhow::ensure!(
        report.offline.as_ref().is_none_or(|o| o.intact),
        "the offline delivery did not arrive intact"
    );
    Ok(())
}

/// `mixed chat --node-config`: a node in this process for the messenger.
fn embedded_chat_node(config: &std::path::Path, bind: bool) -> Result<Box<dyn chat::Transport>> {
    let config = node::NodeConfig::load(config)?;
    eprintln!("starting the node; its first consensus can take an epoch...");
    Ok(Box::new(node::chat::Embedded::start(config, bind)?))
}

fn run_node(
    path: &std::path::Path,
    passive: bool,
    io: Option<IoChoice>,
    leave: Duration,
) -> Result<()> {
    let mut config = node::NodeConfig::load(path)?;
    config.passive |= passive;
    if let Some(io) = io {
        config.io = io;
    }
    let metrics = config.metrics;
    let n = node::Node::start(config)?;
    tracing::info!(
        node_id = %pki_client::descriptor::hex(&n.node_id()[..4]),
        addr = %n.addr(),
        io = ?n.io_backends(),
        metrics = ?metrics,
        "node running"
    );
    wait_for_shutdown_signal()?;
    if n.is_listed() && !leave.is_zero() {
        tracing::info!(
            seconds = leave.as_secs(),
            "leaving: withdrawn from the next consensus, forwarding until it is out (a second signal stops now)"
        );
        std::thread::spawn(|| {
            if wait_for_shutdown_signal().is_ok() {
                stop_now();
            }
        });
        if !n.leave(leave) {
            tracing::warn!("still in the consensus after the leave time: stopping anyway");
        }
    }
    n.stop();
    tracing::info!("stopped");
    Ok(())
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

/// A second signal while leaving: the operator wants the process gone, now.
#[allow(clippy::exit)]
fn stop_now() {
    tracing::info!("second signal: stopping now");
    std::process::exit(0);
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
