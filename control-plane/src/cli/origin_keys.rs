//! `keygate origin-keys rotate|list`: the keys that sign the origin's JWTs, managed directly on the
//! database (audited as `cli`). They print the admin API's shapes; no private half is ever printed.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

use super::manage::{open, print_json, report};
use super::Config;
use crate::api::origin_keys::OriginKeyResponse;
use crate::service::Actor;

#[derive(Debug, Subcommand)]
pub enum OriginKeysCommand {
    /// Make a new signing key: published in the JWKS at once, used by the edges after the publish lead.
    Rotate {
        /// Seconds until edges sign with it (0 to 604800); `--origin-key-publish-secs` when absent.
        /// 0 switches at once, for a compromised key.
        #[arg(long)]
        activate_in_secs: Option<i64>,
    },
    /// Every signing key with its status, oldest first.
    List,
}

impl OriginKeysCommand {
    pub(crate) async fn run(self, config: &Config, out: &mut dyn Write) -> ExitCode {
        let service = match open(config).await {
            Ok(service) => service,
            Err(code) => return code,
        };
        match self {
            Self::Rotate { activate_in_secs } => match service.rotate_origin_key(&Actor::Cli, activate_in_secs).await {
                Ok(view) => print_json(out, &OriginKeyResponse::from(view)),
                Err(e) => report(e),
            },
            Self::List => match service.origin_key_views().await {
                Ok(views) => {
                    let keys: Vec<OriginKeyResponse> = views.into_iter().map(OriginKeyResponse::from).collect();
                    print_json(out, &serde_json::json!({ "keys": keys }))
                }
                Err(e) => report(e),
            },
        }
    }
}
