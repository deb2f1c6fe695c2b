//! The `kvlab` command: one subcommand per component or tool.
//!
//! Kept deliberately thin: each subcommand's flags are an `Args` struct in its
//! own library module, and its `run` does the work. This file only parses the
//! command line, sets up logging and hands over.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kvlab",
    version,
    about = "A replicated key-value store built as a distributed-systems lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load-generate against a gateway, a coordinator, or etcd, and report.
    Bench(kvlab::bench::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Bench(args) => kvlab::bench::run(args).await,
    }
}
