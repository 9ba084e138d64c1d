//! The benchmark's GraphQL origin: any path, any method, one small JSON answer, no work. Both the
//! keygate worker and the pass-through worker forward to it, so its cost is the same on both sides.

use axum::routing::any;
use axum::Router;

use crate::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9300")]
    listen: String,
}

pub async fn run(args: Args) -> Result<(), Error> {
    let answer = || async { ([("content-type", "application/json")], r#"{"data":{"hello":"world"}}"#) };
    let app = Router::new().fallback(any(answer));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
