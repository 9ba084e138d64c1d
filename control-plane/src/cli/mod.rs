//! The `keygate` command line: flags, their environment variables, and the subcommands.

pub mod key;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// keygate: API-key management for GraphQL APIs.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Offline key tools: make a well-formed key, or check one. Nothing is stored or sent.
    Key {
        #[command(subcommand)]
        command: key::KeyCommand,
    },
}

impl Cli {
    /// Runs the chosen subcommand, writing its output to `out`.
    pub fn run(self, out: &mut dyn std::io::Write, input: &mut dyn std::io::BufRead) -> ExitCode {
        match self.command {
            Command::Key { command } => command.run(out, input),
        }
    }
}
