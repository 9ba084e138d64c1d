//! The flags every command shares, each with its environment variable (DESIGN.md's table), and how
//! they become a running [`Service`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use keygate_shared::{Prefix, Region, SyncSecret};
use rand_core::OsRng;

use crate::clock::{Clock as _, SystemClock};
use crate::kms::aws::AwsKms;
use crate::kms::cache::{CacheLimits, CachingKms};
use crate::kms::local::LocalKms;
use crate::kms::Kms;
use crate::leak_webhook::{LeakWebhook, WebhookUrl};
use crate::leaks::{GithubKeys, KeyFileError, LeakSettings, OnLeak};
use crate::origin_keys::OriginKeyPolicy;
use crate::service::{Service, Settings};
use crate::store;

/// Which KMS wraps data keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KmsKind {
    /// A master key in a file (development only).
    Local,
    /// AWS KMS or a server speaking its API.
    Aws,
}

/// Configuration shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the admin API listens on.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "127.0.0.1:8080", global = true)]
    pub listen: SocketAddr,
    /// `sqlite://path` (created) or `postgres://...`.
    #[arg(long, env = "KEYGATE_DATABASE_URL", default_value = "sqlite://data/keygate.db", global = true)]
    pub database_url: DatabaseUrl,
    /// KMS provider.
    #[arg(long, env = "KEYGATE_KMS", value_enum, default_value = "local", global = true)]
    pub kms: KmsKind,
    /// Local KMS: the master key file (created 0600 if absent).
    #[arg(long, env = "KEYGATE_KMS_MASTER_KEY_FILE", default_value = "data/master.key", global = true)]
    pub kms_master_key_file: PathBuf,
    /// AWS KMS: key id, ARN or alias new data keys are wrapped under.
    #[arg(long, env = "KEYGATE_KMS_KEY_ID", global = true)]
    pub kms_key_id: Option<String>,
    /// AWS KMS: endpoint URL in place of AWS's (a local KMS API server).
    #[arg(long, env = "KEYGATE_KMS_ENDPOINT", global = true)]
    pub kms_endpoint: Option<String>,
    /// Data-key cache: secrets one KMS data key may seal (0, the default, turns the cache off).
    #[arg(long, env = "KEYGATE_KMS_CACHE_MAX_USES", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=crate::kms::cache::MAX_USES_LIMIT), global = true)]
    pub kms_cache_max_uses: u64,
    /// Data-key cache: seconds a data key may be used for.
    #[arg(long, env = "KEYGATE_KMS_CACHE_MAX_AGE_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(i64).range(1..=86_400), global = true)]
    pub kms_cache_max_age_secs: i64,
    /// Milliseconds key checks (verify, admin authentication) reuse a key's row; 0 reads it every time.
    /// This process's own changes apply at once; another process's (sharing the database) within this.
    #[arg(long, env = "KEYGATE_VERIFY_CACHE_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(i64).range(0..=60_000), global = true)]
    pub verify_cache_ms: i64,
    /// Bad keys (admin 401s, verify `invalid_key`) one client address may send a minute before it gets
    /// 429 for the rest of the minute; 0 for no limit.
    #[arg(long, env = "KEYGATE_FAILED_ATTEMPTS_PER_MINUTE", default_value_t = keygate_shared::attempts::DEFAULT_LIMIT,
          global = true)]
    pub failed_attempts_per_minute: u32,
    /// Seconds a new origin signing key is published in the JWKS before edges sign with it; also the
    /// JWKS's `Cache-Control: max-age`.
    #[arg(long, env = "KEYGATE_ORIGIN_KEY_PUBLISH_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(i64).range(0..=86_400), global = true)]
    pub origin_key_publish_secs: i64,
    /// The edges' token lifetime (the worker's `ORIGIN_JWT_TTL_SECS`): a retired signing key stays in
    /// the JWKS until its last token has expired.
    #[arg(long, env = "KEYGATE_ORIGIN_TOKEN_TTL_SECS", default_value_t = keygate_shared::jwt::DEFAULT_TTL_SECS,
          value_parser = clap::value_parser!(i64).range(1..=86_400), global = true)]
    pub origin_token_ttl_secs: i64,
    /// Prefix of new keys, `[a-z][a-z0-9]{1,15}`.
    #[arg(long, visible_alias = "prefix", env = "KEYGATE_KEY_PREFIX", default_value_t = Prefix::default(), global = true)]
    pub key_prefix: Prefix,
    /// Region of new keys: `[a-z0-9]+` words joined by `_`.
    #[arg(long, env = "KEYGATE_REGION", default_value_t = Region::default(), global = true)]
    pub region: Region,
    /// The edge worker's URL, for replication.
    #[arg(long, env = "KEYGATE_EDGE_URL", global = true)]
    pub edge_url: Option<String>,
    /// Shared secret signing replication pushes (required with --edge-url).
    #[arg(long, env = "KEYGATE_SYNC_SECRET", hide_env_values = true, value_parser = parse_sync_secret, global = true)]
    pub sync_secret: Option<SyncSecret>,
    /// GitHub's secret-scanning public-keys document (JSON), re-read when it changes; without it
    /// `POST /v1/secret-scanning/github` refuses every report.
    #[arg(long, env = "KEYGATE_GITHUB_SCANNING_KEYS", global = true)]
    pub github_scanning_keys: Option<PathBuf>,
    /// What a report of a leaked live key does: revoke it, or only audit it.
    #[arg(long, env = "KEYGATE_ON_LEAK", value_enum, default_value = "revoke", global = true)]
    pub on_leak: OnLeak,
    /// Where a reported key's owner is told what was revoked and where it was found (a signed POST).
    #[arg(long, env = "KEYGATE_LEAK_WEBHOOK_URL", global = true)]
    pub leak_webhook_url: Option<WebhookUrl>,
    /// The secret signing leak webhooks (required with --leak-webhook-url).
    #[arg(long, env = "KEYGATE_LEAK_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_sync_secret, global = true)]
    pub leak_webhook_secret: Option<SyncSecret>,
}

fn parse_sync_secret(text: &str) -> Result<SyncSecret, &'static str> {
    if text.is_empty() {
        return Err("the sync secret must not be empty");
    }
    Ok(SyncSecret::new(text.as_bytes()))
}

/// A database URL. Its `Debug` output leaves out the password a PostgreSQL URL may hold.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:password@host/...: the password is between the first ':' of the authority and
        // its last '@'.
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|at| at + 3) else { return f.write_str("<unparsed database url>") };
        let authority_end = url[scheme_end..].find(['/', '?']).map_or(url.len(), |at| scheme_end + at);
        let authority = &url[scheme_end..authority_end];
        match authority.rfind('@').and_then(|at| authority[..at].find(':').map(|colon| (colon, at))) {
            Some((colon, at)) => {
                write!(f, "{}{}:<redacted>{}", &url[..scheme_end], &authority[..colon], &url[scheme_end + at..])
            }
            None => f.write_str(url),
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// --kms aws without --kms-key-id.
    #[error("--kms aws needs --kms-key-id (KEYGATE_KMS_KEY_ID)")]
    MissingKmsKeyId,
    /// The local master key file is unusable.
    #[error(transparent)]
    MasterKey(#[from] crate::kms::local::MasterKeyError),
    /// The database cannot be opened.
    #[error("cannot open the database: {0}")]
    Store(#[from] store::StoreError),
    /// --edge-url without --sync-secret.
    #[error("--edge-url needs --sync-secret (KEYGATE_SYNC_SECRET)")]
    MissingSyncSecret,
    /// --leak-webhook-url without --leak-webhook-secret.
    #[error("--leak-webhook-url needs --leak-webhook-secret (KEYGATE_LEAK_WEBHOOK_SECRET)")]
    MissingLeakWebhookSecret,
    /// The GitHub scanning keys file is unusable.
    #[error(transparent)]
    GithubKeys(#[from] KeyFileError),
}

impl Config {
    /// The KMS provider this configuration names.
    pub async fn kms(&self) -> Result<Arc<dyn Kms>, ConfigError> {
        let provider: Arc<dyn Kms> = match self.kms {
            KmsKind::Local => Arc::new(LocalKms::open_or_create(&self.kms_master_key_file)?),
            KmsKind::Aws => {
                let key_id = self.kms_key_id.clone().ok_or(ConfigError::MissingKmsKeyId)?;
                Arc::new(AwsKms::connect(key_id, self.kms_endpoint.clone()).await)
            }
        };
        if self.kms_cache_max_uses == 0 {
            return Ok(provider);
        }
        let limits = CacheLimits { max_uses: self.kms_cache_max_uses, max_age_secs: self.kms_cache_max_age_secs };
        Ok(Arc::new(CachingKms::new(provider, limits, Arc::new(SystemClock))))
    }

    /// Opens the database (running migrations) and the KMS, and builds the service on the system clock
    /// and the OS CSPRNG.
    pub async fn service(&self) -> Result<Arc<Service>, ConfigError> {
        if self.edge_url.is_some() && self.sync_secret.is_none() {
            return Err(ConfigError::MissingSyncSecret);
        }
        let github_keys = match &self.github_scanning_keys {
            Some(path) => Some(Arc::new(GithubKeys::open(path, SystemClock.now_millis())?)),
            None => None,
        };
        let webhook = match (&self.leak_webhook_url, &self.leak_webhook_secret) {
            (Some(url), Some(secret)) => Some(Arc::new(LeakWebhook::new(url.as_str(), secret.clone()))),
            (Some(_), None) => return Err(ConfigError::MissingLeakWebhookSecret),
            (None, _) => None,
        };
        let kms = self.kms().await?;
        let store = store::connect(self.database_url.as_str()).await?;
        let settings = Settings {
            prefix: self.key_prefix.clone(),
            region: self.region.clone(),
            verify_cache_ms: self.verify_cache_ms,
            failed_attempts_per_minute: self.failed_attempts_per_minute,
            origin_keys: OriginKeyPolicy {
                publish_lead_secs: self.origin_key_publish_secs,
                token_ttl_secs: self.origin_token_ttl_secs,
            },
            sync_secret: self.sync_secret.clone(),
            leaks: LeakSettings { on_leak: self.on_leak, github_keys, webhook },
            ..Settings::default()
        };
        Ok(Arc::new(Service::new(store, kms, Arc::new(SystemClock), Box::new(OsRng), settings)))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn debug_output_holds_no_secret_or_password() {
        let flags = Flags::try_parse_from([
            "keygate",
            "--database-url",
            "postgres://keygate:hunter2-password@db.internal:5432/keygate?sslmode=require",
            "--sync-secret",
            "sync-secret-that-must-not-show",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{flags:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("must-not-show"), "{shown}");
        assert!(shown.contains("postgres://keygate:<redacted>@db.internal:5432/keygate?sslmode=require"), "{shown}");
        assert!(shown.contains("SyncSecret(<redacted>)"), "{shown}");
    }

    #[test]
    fn urls_without_a_password_show_whole() {
        for url in ["sqlite://data/keygate.db", "postgres://keygate@db/x", "postgres://db/x?user=a:b@c", "not a url"] {
            let shown = format!("{:?}", url.parse::<DatabaseUrl>().unwrap_or_else(|e| match e {}));
            let expected = if url.contains("://") { url } else { "<unparsed database url>" };
            assert_eq!(shown, expected);
        }
    }

    #[test]
    fn debug_output_holds_no_leak_webhook_secret_or_path() {
        let flags = Flags::try_parse_from([
            "keygate",
            "--leak-webhook-url",
            "https://hooks.example.com/services/SECRETPATH",
            "--leak-webhook-secret",
            "webhook-secret-that-must-not-show",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{flags:?}");
        assert!(!shown.contains("SECRETPATH") && !shown.contains("must-not-show"), "{shown}");
        assert!(shown.contains("https://hooks.example.com/<redacted>"), "{shown}");
    }

    #[test]
    fn an_empty_sync_secret_is_refused() {
        let refused = Flags::try_parse_from(["keygate", "--sync-secret", ""]);
        assert!(refused.is_err_and(|e| e.to_string().contains("must not be empty")));
    }
}
