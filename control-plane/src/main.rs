//! The `keygate` binary: parses the command line, sets up logging and the runtime, and hands over to
//! the control plane's library.

use std::process::ExitCode;

use clap::Parser;
use keygate_control_plane::cli::Cli;
use tracing_subscriber::EnvFilter;

/// Resolves on Ctrl-C or SIGTERM: the server then finishes the requests in flight.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if cli.is_server() { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keygate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut stdout = std::io::stdout();
        let mut stdin = std::io::BufReader::new(std::io::stdin());
        cli.run(&mut stdout, &mut stdin, shutdown_signal()).await
    })
}
