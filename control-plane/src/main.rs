//! The `keygate` binary: parses the command line and hands over to the control plane's library.

use std::process::ExitCode;

use clap::Parser;
use keygate_control_plane::cli::Cli;

fn main() -> ExitCode {
    let stdin = std::io::stdin();
    Cli::parse().run(&mut std::io::stdout().lock(), &mut stdin.lock())
}
