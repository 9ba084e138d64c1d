//! The `keygate` command line: shared flags (with their environment variables) and the subcommands.

pub mod config;
pub mod key;
pub mod manage;
pub mod origin_keys;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use config::Config;

/// keygate: API-key management for GraphQL APIs.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about)]
pub struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the admin API (migrating the database first).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// The first admin key.
    Admin {
        #[command(subcommand)]
        command: manage::AdminCommand,
    },
    /// Manage API keys directly on the database (audited as `cli`).
    Keys {
        #[command(subcommand)]
        command: manage::KeysCommand,
    },
    /// KMS maintenance.
    Kms {
        #[command(subcommand)]
        command: manage::KmsCommand,
    },
    /// Replication to the edge.
    Edge {
        #[command(subcommand)]
        command: manage::EdgeCommand,
    },
    /// The keys that sign the origin's JWTs.
    OriginKeys {
        #[command(subcommand)]
        command: origin_keys::OriginKeysCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: manage::AuditCommand,
    },
    /// Offline key tools: make a well-formed key, or check one. Nothing is stored or sent.
    Key {
        #[command(subcommand)]
        command: key::KeyCommand,
    },
}

impl Cli {
    /// Whether the command runs the server (it logs at `info`; the others only warnings).
    pub fn is_server(&self) -> bool {
        matches!(self.command, Command::Serve)
    }

    /// Runs the chosen subcommand, writing its output to `out`; `shutdown` ends `serve`.
    pub async fn run(
        self,
        out: &mut (dyn std::io::Write + Send),
        input: &mut (dyn std::io::BufRead + Send),
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> ExitCode {
        let config = self.config;
        match self.command {
            Command::Key { command } => command.run(&config, out, input),
            Command::Serve => manage::serve(&config, shutdown).await,
            Command::Migrate => manage::migrate(&config, out).await,
            Command::Admin { command } => command.run(&config, out).await,
            Command::Keys { command } => command.run(&config, out).await,
            Command::Kms { command } => command.run(&config, out).await,
            Command::Edge { command } => command.run(&config, out).await,
            Command::Audit { command } => command.run(&config, out).await,
            Command::OriginKeys { command } => command.run(&config, out).await,
        }
    }
}
