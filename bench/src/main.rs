//! `keygate-bench`: the pieces `scripts/bench.sh` (`make bench`) puts together.
//!
//! - `load`: a closed-loop HTTP/1.1 load generator (fixed connections, fixed duration, HDR histogram);
//! - `origin`: a GraphQL origin that answers at once, so the origin is never what is measured;
//! - `propagation`: creates, then revokes keys through the admin API and times until the edge says 401;
//! - `fixture`: a fresh API key, its record and a sealed origin signing key, for pushing to a worker;
//! - `garbage`: counts the record reads the edge check makes for keys with a bad checksum;
//! - `usage`: signed usage batches at the rate a busy edge flushes them, or as fast as they are taken (P11);
//! - `report`: medians of the runs in `results.jsonl`, as the Markdown table BENCHMARKS.md shows.
//!
//! Every command prints one JSON line per measurement; `bench.sh` tags and collects them.

mod fixture;
mod garbage;
mod load;
mod origin;
mod propagation;
mod report;
mod usage_ingest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(name = "keygate-bench", about = "keygate's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Closed-loop load on one URL; prints throughput and the latency distribution.
    Load(load::Args),
    /// A GraphQL origin answering `{"data":...}` at once.
    Origin(origin::Args),
    /// Revocation propagation: admin call → first 401 at the edge, over many keys.
    Propagation(propagation::Args),
    /// Record reads made by the edge check for keys with a bad checksum.
    Garbage(garbage::Args),
    /// The Markdown table of medians from a results file.
    Report(report::Args),
    /// A fresh API key, its record and a sealed ES256 origin signing key, as JSON, to push to a worker.
    Fixture(fixture::Args),
    /// Signed usage batches to the control plane, paced like a busy edge's flushes or back to back.
    Usage(usage_ingest::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Report(args) => report::run(&args),
        Command::Garbage(args) => garbage::run(&args),
        Command::Fixture(args) => fixture::run(&args),
        command => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Error::from).and_then(|runtime| {
                runtime.block_on(async move {
                    match command {
                        Command::Load(args) => load::run(args).await,
                        Command::Origin(args) => origin::run(args).await,
                        Command::Propagation(args) => propagation::run(args).await,
                        Command::Usage(args) => usage_ingest::run(args).await,
                        Command::Report(_) | Command::Garbage(_) | Command::Fixture(_) => Ok(()),
                    }
                })
            })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keygate-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
