//! `billing-load`: drives the billing service like call control does, and
//! reports what it measured.
//!
//! - `run`: N workers, each looping `Reserve` then `Commit` (PSTN or VN, a
//!   random real duration), mixed with SMS `Debit`s, against K accounts or one
//!   hot account. Latency per RPC (HDR histograms), errors by status code,
//!   calls and changes per second, the CPU the generator, each named process
//!   (API, read side, broker) and PostgreSQL used, and the projector's and
//!   publisher's lag, written as JSON. `--target health` drives the gRPC
//!   health check alone: the ceiling gRPC allows on the machine.
//! - `webhooks`: one webhook dispatcher's deliveries per second to a fast
//!   local endpoint, with and without a slow one beside it.
//! - `report`: one table from a directory of run and baseline JSON files.

mod measure;
mod report;
mod run;
mod webhooks;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "billing-load",
    about = "Call-control load generator for the billing service"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive the service and write the measurements as JSON.
    Run(Box<run::RunArgs>),
    /// How fast one webhook dispatcher delivers (see `webhooks.rs`).
    Webhooks(Box<webhooks::WebhookArgs>),
    /// Print one table from the JSON files in a directory.
    Report {
        /// The directory of run and baseline JSON files.
        dir: std::path::PathBuf,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => run::run(*args).await,
        Cmd::Webhooks(args) => webhooks::run(*args).await,
        Cmd::Report { dir } => report::report(&dir),
    }
}
