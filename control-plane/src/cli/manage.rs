//! Commands that open the database and KMS: `serve`, `migrate`, `admin bootstrap`, `keys ...`,
//! `kms rewrap`, `audit verify`. They print JSON in the admin API's shapes; errors go to stderr.

use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use keygate_shared::KeyId;
use serde::Serialize;

use super::Config;
use crate::api::admin::{CreatedResponse, KeyResponse};
use crate::key_update::KeyUpdate;
use crate::replicator::Replicator;
use crate::service::{Actor, NewKey, Service, ServiceError};
use crate::usage::{KeyCursor, KeyListing, KeyOrder};

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("keygate: {message}");
    ExitCode::FAILURE
}

pub(super) fn print_json(out: &mut dyn Write, value: &impl Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value).map(|json| writeln!(out, "{json}")) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        _ => ExitCode::from(2),
    }
}

pub(super) async fn open(config: &Config) -> Result<Arc<Service>, ExitCode> {
    config.service().await.map_err(fail)
}

/// The configured service, or return the failure's exit code from the calling command.
macro_rules! open_or_return {
    ($config:expr) => {
        match open($config).await {
            Ok(service) => service,
            Err(code) => return code,
        }
    };
}

fn key_id(text: &str) -> Result<KeyId, ExitCode> {
    text.parse().map_err(|_| fail(format!("{text:?} is not an api_key_id (22 base62 characters)")))
}

pub(super) fn report(error: ServiceError) -> ExitCode {
    fail(format!("{error} ({})", error.code()))
}

/// The replicator to `--edge-url`, if one is configured.
fn replicator(config: &Config, service: &Service) -> Option<Replicator> {
    let edge_url = config.edge_url.as_deref()?;
    let secret = config.sync_secret.clone()?;
    let replicator = Replicator::new(service.store().clone(), service.clock().clone(), edge_url, secret);
    Some(replicator.with_origin_keys(service.origin_keys().clone()))
}

/// `keygate serve`: the admin API, and replication to the edge when `--edge-url` is set.
pub async fn serve(config: &Config, shutdown: impl Future<Output = ()> + Send + 'static) -> ExitCode {
    let service = open_or_return!(config);
    // Edges need a key to sign the origin's tokens with; the first is made here, not by an operator.
    match service.ensure_origin_key().await {
        Ok(Some(made)) => tracing::info!(kid = %made.row.kid, "made the first origin signing key"),
        Ok(None) => {}
        Err(e) => return report(e),
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => return fail(format!("cannot listen on {}: {e}", config.listen)),
    };
    // One shutdown signal, heard by the server and the replicator alike.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let replication =
        replicator(config, &service).map(|replicator| tokio::spawn(replicator.run(until_stopped(stopped.clone()))));
    let pruning = tokio::spawn(
        crate::usage::pruner::Pruner::new(service.store().clone(), service.clock().clone())
            .run(until_stopped(stopped.clone())),
    );
    tracing::info!(
        listen = %config.listen,
        database = service.store().dialect(),
        kms = service.kms().provider(),
        edge = config.edge_url.as_deref().unwrap_or("none"),
        "keygate control plane serving"
    );
    let served = crate::api::run(listener, service, until_stopped(stopped)).await;
    if let Some(replication) = replication {
        let _ = replication.await;
    }
    let _ = pruning.await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("server error: {e}")),
    }
}

/// `keygate migrate`.
pub async fn migrate(config: &Config, out: &mut dyn Write) -> ExitCode {
    match crate::store::connect(config.database_url.as_str()).await {
        Ok(store) => {
            let _ = writeln!(out, "{} schema is up to date", store.dialect());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot migrate: {e}")),
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an admin key with `admin:*` and print only the key on stdout.
    Bootstrap,
}

impl AdminCommand {
    pub(crate) async fn run(self, config: &Config, out: &mut dyn Write) -> ExitCode {
        let service = open_or_return!(config);
        match service.bootstrap_admin().await {
            Ok(created) => match writeln!(out, "{}", created.key.expose()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(2),
            },
            Err(e) => report(e),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints it (the only time) with its metadata.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Rate-limit tier.
        #[arg(long, default_value = "default")]
        tier: String,
        /// A permission; repeat for several (e.g. `--permission query:read --permission batch:10`).
        #[arg(long = "permission", short = 'p')]
        permissions: Vec<String>,
        /// Lifetime in days (default 90).
        #[arg(long)]
        expires_in_days: Option<i64>,
        /// Owner.
        #[arg(long)]
        owner: Option<String>,
        /// Metadata, a JSON object.
        #[arg(long, value_parser = parse_json_object)]
        metadata: Option<serde_json::Value>,
    },
    /// List keys in creation order (or by last use).
    List {
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Continue after this api_key_id (the previous page's last, in either order).
        #[arg(long)]
        after: Option<String>,
        /// `created` (default) or `last-used` (most recently used first, never-used keys last).
        #[arg(long, value_enum)]
        sort: Option<ListSort>,
        /// Only keys unused for more than this many days (never used and older, or last used before).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=3650))]
        unused_days: Option<i64>,
    },
    /// Show one key.
    Show {
        /// The api_key_id.
        id: String,
    },
    /// Reroll: a new secret; the old one works for the grace period.
    Rotate {
        /// The api_key_id.
        id: String,
        /// Grace period of the old secret, seconds (default 86400).
        #[arg(long)]
        grace_period_secs: Option<i64>,
    },
    /// Change a key in place: only the settings given change (`--permission` replaces the whole set).
    Update {
        /// The api_key_id.
        id: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// New rate-limit tier.
        #[arg(long)]
        tier: Option<String>,
        /// A permission of the new set; repeat for several.
        #[arg(long = "permission", short = 'p')]
        permissions: Vec<String>,
        /// New metadata, a JSON object (replaces the old one).
        #[arg(long, value_parser = parse_json_object)]
        metadata: Option<serde_json::Value>,
        /// New owner.
        #[arg(long, conflicts_with = "clear_owner")]
        owner: Option<String>,
        /// Remove the owner.
        #[arg(long)]
        clear_owner: bool,
        /// New expiry, RFC 3339 (e.g. 2027-01-31T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
        /// Switch the key off: it is refused like a revoked key until `--enable`.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Switch a disabled key on again.
        #[arg(long)]
        enable: bool,
    },
    /// Revoke at once.
    Revoke {
        /// The api_key_id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print the current key (decrypted through KMS; audited).
    Reveal {
        /// The api_key_id.
        id: String,
    },
}

/// The order of `keys list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListSort {
    /// Creation order.
    Created,
    /// Most recently used first.
    LastUsed,
}

/// The listing `keys list --sort/--unused-days` asks for. `--after` names the previous page's last
/// key in either order: its current last use is where a last-use page continues.
async fn listing(
    service: &Service,
    limit: i64,
    after: Option<&str>,
    sort: Option<ListSort>,
    unused_days: Option<i64>,
) -> Result<KeyListing, ExitCode> {
    let order = match sort {
        Some(ListSort::LastUsed) => KeyOrder::LastUsed,
        Some(ListSort::Created) | None => KeyOrder::Created,
    };
    let after = match after.map(key_id).transpose()? {
        None => None,
        Some(id) if order == KeyOrder::Created => Some(KeyCursor::Created(id)),
        Some(id) => {
            let (view, _) = service.show(id).await.map_err(report)?;
            Some(KeyCursor::LastUsed(view.row.last_used_at.unwrap_or(-1), id))
        }
    };
    let unused_since = unused_days.map(|days| service.clock().now() - days * 86_400);
    Ok(KeyListing { order, unused_since, after, limit })
}

fn parse_json_object(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err("expected a JSON object".into()),
    }
}

#[derive(Serialize)]
struct Rotated {
    api_key: String,
    api_key_id: String,
    generation: i64,
    previous_valid_until: String,
}

impl KeysCommand {
    pub(crate) async fn run(self, config: &Config, out: &mut dyn Write) -> ExitCode {
        let service = open_or_return!(config);
        let actor = Actor::Cli;
        let result = match self {
            Self::Create { name, tier, permissions, expires_in_days, owner, metadata } => {
                let request = NewKey { name, tier, permissions, expires_in_days, region: None, owner, metadata };
                service.create(&actor, request).await.map(|created| print_json(out, &CreatedResponse::from(created)))
            }
            Self::List { limit, after, sort, unused_days } if sort.is_some() || unused_days.is_some() => {
                let listing = match listing(&service, limit, after.as_deref(), sort, unused_days).await {
                    Ok(listing) => listing,
                    Err(code) => return code,
                };
                service
                    .list_keys(listing)
                    .await
                    .map(|views| print_json(out, &views.into_iter().map(KeyResponse::from).collect::<Vec<_>>()))
            }
            Self::List { limit, after, .. } => {
                let after = match after.as_deref().map(key_id).transpose() {
                    Ok(after) => after,
                    Err(code) => return code,
                };
                service
                    .list(after, limit)
                    .await
                    .map(|views| print_json(out, &views.into_iter().map(KeyResponse::from).collect::<Vec<_>>()))
            }
            Self::Show { id } => match key_id(&id) {
                Ok(id) => service.show(id).await.map(|(view, _)| print_json(out, &KeyResponse::from(view))),
                Err(code) => return code,
            },
            Self::Rotate { id, grace_period_secs } => match key_id(&id) {
                Ok(id) => service.rotate(&actor, id, grace_period_secs).await.map(|rotated| {
                    print_json(
                        out,
                        &Rotated {
                            api_key: rotated.key.expose().to_owned(),
                            api_key_id: id.to_string(),
                            generation: rotated.generation,
                            previous_valid_until: crate::api::admin::rfc3339(rotated.previous_valid_until),
                        },
                    )
                }),
                Err(code) => return code,
            },
            Self::Update { id, name, tier, permissions, metadata, owner, clear_owner, expires_at, disable, enable } => {
                match key_id(&id) {
                    Ok(id) => {
                        let update = KeyUpdate {
                            name: name.map(Some),
                            tier: tier.map(Some),
                            permissions: (!permissions.is_empty()).then_some(Some(permissions)),
                            metadata: metadata.map(Some),
                            owner: if clear_owner { Some(None) } else { owner.map(Some) },
                            expires_at: expires_at.map(Some),
                            enabled: (disable || enable).then_some(Some(enable)),
                        };
                        service.update(&actor, id, update).await.map(|view| print_json(out, &KeyResponse::from(view)))
                    }
                    Err(code) => return code,
                }
            }
            Self::Revoke { id, reason } => match key_id(&id) {
                Ok(id) => {
                    service.revoke(&actor, id, reason).await.map(|view| print_json(out, &KeyResponse::from(view)))
                }
                Err(code) => return code,
            },
            Self::Reveal { id } => match key_id(&id) {
                Ok(id) => service.reveal(&actor, id).await.map(|key| match writeln!(out, "{}", key.expose()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(_) => ExitCode::from(2),
                }),
                Err(code) => return code,
            },
        };
        result.unwrap_or_else(report)
    }
}

#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Re-encrypt every stored data key under the current KMS key (resumes an interrupted run).
    Rewrap,
}

impl KmsCommand {
    pub(crate) async fn run(self, config: &Config, out: &mut dyn Write) -> ExitCode {
        let service = open_or_return!(config);
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template("rewrap {bar:40} {pos}/{len} data keys ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let progress = |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
        };
        let result = service.rewrap(&Actor::Cli, &progress).await;
        bar.finish_and_clear();
        match result {
            Ok(count) => {
                let kms_key_id = service.kms().current_key_id().to_owned();
                print_json(out, &serde_json::json!({"rewrapped": count, "kms_key_id": kms_key_id}))
            }
            Err(e) => report(e),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EdgeCommand {
    /// Send every key's current record to the edge (after its storage was lost or replaced).
    Resync,
}

impl EdgeCommand {
    pub(crate) async fn run(self, config: &Config, out: &mut dyn Write) -> ExitCode {
        if config.edge_url.is_none() {
            return fail("edge resync needs --edge-url (KEYGATE_EDGE_URL)");
        }
        let service = open_or_return!(config);
        let Some(replicator) = replicator(config, &service) else {
            return fail("edge resync needs --sync-secret (KEYGATE_SYNC_SECRET)");
        };
        match replicator.resync().await {
            Ok(sent) => print_json(out, &serde_json::json!({"sent": sent})),
            Err(e) => fail(format!("resync failed: {e}")),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain; exit 1 if an entry was edited, inserted or deleted.
    Verify,
}

impl AuditCommand {
    pub(crate) async fn run(self, config: &Config, out: &mut dyn Write) -> ExitCode {
        let service = open_or_return!(config);
        match service.audit_verify().await {
            Ok(Ok(count)) => match writeln!(out, "audit log intact: {count} entries") {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(2),
            },
            Ok(Err(broken)) => fail(format!("audit log broken: {broken}")),
            Err(e) => report(e),
        }
    }
}
