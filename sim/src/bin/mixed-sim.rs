//! `mixed-sim`: the simulator alone (the same as `mixed sim`).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "mixed-sim",
    version,
    about = "The mixed network at scale: scenario + seed -> CSV and plots"
)]
struct Cli {
    #[command(flatten)]
    args: mixed_sim::cli::SimArgs,
}

fn main() -> anyhow::Result<()> {
    mixed_sim::cli::main(&Cli::parse().args)
}
