//! The key lifecycle — create, reroll, revoke, reveal, verify — and admin authentication, rewrap and
//! the audit log, over a [`Store`] and a [`Kms`]. Clock and randomness are parameters.
//!
//! KMS is called before anything is written, so a KMS outage leaves no trace; verification and admin
//! authentication never call KMS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{stream, StreamExt, TryStreamExt};
use keygate_shared::{
    AdminScope, ApiKey, FailedAttempts, KeyId, KeyRecord, KeySecret, ParsedKey, PermissionSet, Prefix, Region,
    SecretEntry,
};
use rand_core::CryptoRngCore;
use serde_json::json;

use crate::audit::{verify_chain, AuditDraft, AuditEntry, ChainBreak};
use crate::clock::Clock;
use crate::envelope::{self, EnvelopeError};
use crate::key_update::{self, KeyUpdate};
use crate::kms::{Kms, KmsContext, KmsError};
use crate::leaks::LeakSettings;
use crate::origin_keys::{self, OriginKeyError, OriginKeyPolicy, OriginKeyStatus, OriginKeys};
use crate::rng::SharedRng;
use crate::store::{Change, KeyRow, Op, OriginKeyRow, SecretRow, Store, StoreError};

/// Seconds in a day.
const DAY: i64 = 86_400;
/// Longest lifetime a key may be given.
pub const MAX_EXPIRY_DAYS: i64 = 3_650;
/// Longest wait a rotated origin signing key may be given before it signs.
pub const MAX_ORIGIN_KEY_LEAD_SECS: i64 = 7 * DAY;
/// Longest grace period a reroll may give the old secret.
pub const MAX_GRACE_SECS: i64 = 30 * DAY;
/// Rewrap calls in flight at once.
const REWRAP_CONCURRENCY: usize = 16;

/// Deployment settings the lifecycle needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Prefix of new keys.
    pub prefix: Prefix,
    /// Region of new keys unless a request names another.
    pub region: Region,
    /// Lifetime of a key created without `expires_in_days`.
    pub default_expiry_days: i64,
    /// Grace period of a reroll without `grace_period_secs`.
    pub default_grace_secs: i64,
    /// Secrets a rewrap stores per transaction (work lost to an interruption is at most one batch).
    pub rewrap_batch: i64,
    /// How long key checks (verify, admin authentication) reuse a key's row, in milliseconds; 0 reads
    /// the database every time. This process's own changes take effect at once; another control-plane
    /// process's, within this time.
    pub verify_cache_ms: i64,
    /// Bad keys one client address may send a minute before it is refused outright (0: no limit).
    pub failed_attempts_per_minute: u32,
    /// How the origin's signing keys are published and retired.
    pub origin_keys: OriginKeyPolicy,
    /// The sync secret, from which the key checking the edge's usage reports is derived; without it
    /// `POST /_keygate/usage` answers 404.
    pub sync_secret: Option<keygate_shared::SyncSecret>,
    /// What a leaked key's report does, and whose signatures GitHub's reports carry.
    pub leaks: LeakSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefix: Prefix::default(),
            region: Region::default(),
            default_expiry_days: 90,
            default_grace_secs: DAY,
            rewrap_batch: 256,
            verify_cache_ms: 1_000,
            failed_attempts_per_minute: keygate_shared::attempts::DEFAULT_LIMIT,
            origin_keys: OriginKeyPolicy::default(),
            sync_secret: None,
            leaks: LeakSettings::default(),
        }
    }
}

/// Why a lifecycle call failed. Each variant has a stable code and an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is well-formed JSON but its values are not acceptable.
    #[error("{message}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// What is wrong, for the caller.
        message: String,
    },
    /// No key with this id.
    #[error("no API key with this id")]
    NotFound,
    /// The key was revoked: it cannot be rerolled.
    #[error("the API key is revoked")]
    Revoked,
    /// The key has expired: it cannot be rerolled.
    #[error("the API key has expired")]
    Expired,
    /// Another change to the same key won the race; retry.
    #[error("the API key changed while the request ran; retry")]
    Conflict,
    /// No usable admin key was presented.
    #[error("a valid admin key is required")]
    Unauthorized,
    /// The admin key lacks the scope.
    #[error("the admin key lacks the {0} permission")]
    Forbidden(&'static str),
    /// KMS could not be reached.
    #[error("KMS is unavailable; retry later")]
    KmsUnavailable(#[source] KmsError),
    /// KMS refused (wrong key, context or permissions): a configuration fault, not the caller's.
    #[error("KMS refused the request")]
    KmsRefused(#[source] KmsError),
    /// The database could not be reached.
    #[error("the database is unavailable; retry later")]
    StoreUnavailable(#[source] StoreError),
    /// A stored secret does not decrypt to its key.
    #[error("a stored secret could not be opened")]
    Sealed(#[source] EnvelopeError),
    /// Anything else: a bug.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl ServiceError {
    /// A stable, greppable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { code, .. } => code,
            Self::NotFound => "key_not_found",
            Self::Revoked => "key_revoked",
            Self::Expired => "key_expired",
            Self::Conflict => "conflict",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::KmsUnavailable(_) => "kms_unavailable",
            Self::KmsRefused(_) => "kms_error",
            Self::StoreUnavailable(_) => "database_unavailable",
            Self::Sealed(_) => "secret_unreadable",
            Self::Internal(_) => "internal",
        }
    }

    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { code, message: message.into() }
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::StoreUnavailable(error),
            StoreError::Conflict | StoreError::Duplicate => Self::Conflict,
            other => Self::Internal(other),
        }
    }
}

impl From<OriginKeyError> for ServiceError {
    fn from(error: OriginKeyError) -> Self {
        match error {
            OriginKeyError::Kms(error) => error.into(),
            OriginKeyError::Store(error) => error.into(),
            OriginKeyError::Sealed(error) => Self::Sealed(error),
            OriginKeyError::Corrupt => Self::Internal(StoreError::Corrupt("origin signing key".into())),
        }
    }
}

impl From<KmsError> for ServiceError {
    fn from(error: KmsError) -> Self {
        match error {
            KmsError::Unavailable(_) => Self::KmsUnavailable(error),
            other => Self::KmsRefused(other),
        }
    }
}

/// Who performs an action, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An admin key, by id.
    Admin(KeyId),
    /// The `keygate` command line, run by an operator on the host.
    Cli,
    /// A request without a usable admin key.
    Anonymous,
    /// keygate itself, e.g. the first origin signing key made at start-up.
    System,
    /// Whoever reported a leaked key: `github-secret-scanning` or `leak-report`.
    Reporter(&'static str),
}

impl Actor {
    fn label(&self) -> String {
        match self {
            Self::Admin(id) => format!("admin:{id}"),
            Self::Cli => "cli".into(),
            Self::Anonymous => "anonymous".into(),
            Self::System => "system".into(),
            Self::Reporter(name) => (*name).into(),
        }
    }
}

/// An origin signing key as the API shows it: public facts only.
#[derive(Debug, Clone)]
pub struct OriginKeyView {
    /// The stored row (its private half sealed).
    pub row: OriginKeyRow,
    /// Where it is in its life.
    pub status: OriginKeyStatus,
}

/// A request to create a key.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// Rate-limit tier, `[a-z0-9_-]{1,32}`.
    pub tier: String,
    /// Permission strings.
    pub permissions: Vec<String>,
    /// Lifetime in days, 1 to 3650; the default when `None`.
    pub expires_in_days: Option<i64>,
    /// Region of the key text; the deployment's when `None`.
    pub region: Option<String>,
    /// Owner, up to 200 characters.
    pub owner: Option<String>,
    /// A JSON object of at most 8 KiB.
    pub metadata: Option<serde_json::Value>,
}

/// A key as the admin API shows it: never a secret or a hash of one.
#[derive(Debug, Clone)]
pub struct KeyView {
    /// The stored row.
    pub row: KeyRow,
    /// `active`, `disabled`, `revoked` or `expired` (see [`Service::view`] for which wins).
    pub status: &'static str,
    /// Past 80% of its lifetime.
    pub should_rotate: bool,
}

/// A newly made key, shown once.
#[derive(Debug)]
pub struct Created {
    /// The whole key.
    pub key: ApiKey,
    /// Its metadata.
    pub view: KeyView,
}

/// A rerolled key, shown once.
#[derive(Debug)]
pub struct Rotated {
    /// The new whole key.
    pub key: ApiKey,
    /// The new generation.
    pub generation: i64,
    /// When the previous secret stops working (unix seconds).
    pub previous_valid_until: i64,
}

/// The answer of `POST /v1/keys/verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is good.
    Valid {
        /// Its id.
        key_id: KeyId,
        /// Its tier.
        tier: String,
        /// Its permissions.
        permissions: Vec<String>,
    },
    /// Malformed, unknown, wrong, revoked, disabled or expired: deliberately indistinguishable.
    Invalid,
}

/// The control plane's operations.
pub struct Service {
    store: Arc<dyn Store>,
    kms: Arc<dyn Kms>,
    clock: Arc<dyn Clock>,
    rng: SharedRng,
    settings: Settings,
    origin_keys: OriginKeys,
    recent: RecentKeys,
    failed: Mutex<FailedAttempts>,
}

/// What a key check read of one key: its row (if any) and its secrets' hashes.
#[derive(Debug)]
struct KnownKey {
    row: Option<KeyRow>,
    secrets: Vec<SecretEntry>,
}

/// Key checks' recent reads, each used until `until_ms`. `epoch` moves on every change this process
/// makes, so a read that raced a change is not kept.
#[derive(Debug, Default)]
struct RecentKeys {
    entries: Mutex<HashMap<KeyId, (Arc<KnownKey>, i64)>>,
    epoch: AtomicU64,
    /// When `keep` next drops expired reads.
    next_sweep_ms: AtomicI64,
}

/// Keys whose reads are kept at most; a full map first drops what has expired, then everything.
const RECENT_KEYS: usize = 100_000;
/// How often expired reads are dropped, so that the map holds about the keys checked in the last few
/// seconds instead of filling up to `RECENT_KEYS`.
const SWEEP_EVERY_MS: i64 = 10_000;

impl RecentKeys {
    fn get(&self, id: KeyId, now_ms: i64) -> Option<Arc<KnownKey>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(&id).filter(|(_, until)| now_ms < *until).map(|(known, _)| known.clone())
    }

    fn keep(&self, id: KeyId, known: Arc<KnownKey>, read_in_epoch: u64, until_ms: i64, now_ms: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::Acquire) != read_in_epoch {
            return;
        }
        // Under the lock: one sweep at a time.
        if now_ms >= self.next_sweep_ms.load(Ordering::Relaxed) {
            entries.retain(|_, (_, until)| now_ms < *until);
            self.next_sweep_ms.store(now_ms.saturating_add(SWEEP_EVERY_MS), Ordering::Relaxed);
        }
        if entries.len() >= RECENT_KEYS {
            entries.retain(|_, (_, until)| now_ms < *until);
            if entries.len() >= RECENT_KEYS {
                entries.clear();
            }
        }
        entries.insert(id, (known, until_ms));
    }

    /// A change to `id` was committed: later checks read it afresh.
    fn forget(&self, id: KeyId) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(&id);
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("store", &self.store).field("kms", &self.kms).finish_non_exhaustive()
    }
}

fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

impl Service {
    /// A service over the given parts; `rng` is the OS CSPRNG in production.
    pub fn new(
        store: Arc<dyn Store>,
        kms: Arc<dyn Kms>,
        clock: Arc<dyn Clock>,
        rng: Box<dyn CryptoRngCore + Send>,
        settings: Settings,
    ) -> Self {
        let failed =
            FailedAttempts::new(settings.failed_attempts_per_minute, keygate_shared::attempts::DEFAULT_CAPACITY);
        let rng = SharedRng::new(rng);
        let origin_keys = OriginKeys::new(store.clone(), kms.clone(), clock.clone(), rng.clone(), settings.origin_keys);
        Self {
            store,
            kms,
            clock,
            rng,
            settings,
            origin_keys,
            recent: RecentKeys::default(),
            failed: Mutex::new(failed),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The KMS provider.
    pub fn kms(&self) -> &Arc<dyn Kms> {
        &self.kms
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The deployment settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The origin signing keys, for the replicator.
    pub fn origin_keys(&self) -> &OriginKeys {
        &self.origin_keys
    }

    /// Applies a change and logs its audit entry (ids and outcome, never the detail): the operator's
    /// log follows what the audit log records.
    async fn commit(&self, change: Change) -> Result<AuditEntry, ServiceError> {
        let entry = self.store.apply(change).await?;
        tracing::info!(
            seq = entry.seq,
            action = %entry.action,
            key_id = entry.key_id.as_deref(),
            actor = %entry.actor,
            outcome = %entry.outcome,
            "audited"
        );
        Ok(entry)
    }

    /// The key's view now. Its status names what stops it, most lasting first: `revoked` (for good),
    /// then `expired` (until its expiry is moved), then `disabled` (until it is enabled), else `active`.
    pub(crate) fn view(&self, row: KeyRow) -> KeyView {
        let now = self.clock.now();
        let status = if row.revoked_at.is_some() {
            "revoked"
        } else if row.expires_at.is_some_and(|end| now >= end) {
            "expired"
        } else if row.disabled_at.is_some() {
            "disabled"
        } else {
            "active"
        };
        // 80% of the lifetime, in integer arithmetic: now - created >= 0.8 * (expires - created).
        let should_rotate = status == "active"
            && row.expires_at.is_some_and(|end| (now - row.created_at) * 5 >= (end - row.created_at) * 4);
        KeyView { row, status, should_rotate }
    }

    /// The record the edge should hold for `row` with these `secrets`, at `now`: only live generations.
    fn record(row: &KeyRow, secrets: &[SecretEntry], now: i64) -> Result<String, ServiceError> {
        let permissions = PermissionSet::parse(&row.permissions)
            .map_err(|_| ServiceError::Internal(StoreError::Corrupt("permissions".into())))?;
        let record = KeyRecord {
            key_id: row.id,
            seq: 0,
            tier: row.tier.clone(),
            permissions,
            expires_at: row.expires_at,
            revoked: row.revoked_at.is_some(),
            disabled: row.disabled_at.is_some(),
            secrets: secrets.iter().filter(|s| s.is_live(now)).cloned().collect(),
            owner: row.owner.clone(),
        };
        serde_json::to_string(&record).map_err(|_| ServiceError::Internal(StoreError::Corrupt("record".into())))
    }

    /// Makes the sealed secret row for `key` as generation `generation`: one KMS call.
    async fn seal_generation(&self, key: &ApiKey, generation: i64, now: i64) -> Result<SecretRow, ServiceError> {
        let (data_key, wrapped) = self.kms.generate_data_key(&KmsContext::api_key_secret(key.key_id())).await?;
        let generation_tag = u32::try_from(generation).map_err(|_| ServiceError::Conflict)?;
        let ciphertext =
            self.rng.with(|rng| envelope::seal(&data_key, key, generation_tag, rng)).map_err(ServiceError::Sealed)?;
        Ok(SecretRow {
            key_id: key.key_id(),
            generation,
            secret_hash: key.hash(),
            ciphertext,
            wrapped_data_key: wrapped.blob,
            kms_key_id: wrapped.kms_key_id,
            data_key_id: wrapped.shared_id,
            data_key_version: 1,
            created_at: now,
            not_after: None,
        })
    }

    /// Makes a new origin signing key. It is published at once and signs from `activate_in_secs` from
    /// now (the policy's publish lead when absent); the very first key signs at once, since nothing
    /// else can.
    pub async fn rotate_origin_key(
        &self,
        actor: &Actor,
        activate_in_secs: Option<i64>,
    ) -> Result<OriginKeyView, ServiceError> {
        let lead = activate_in_secs.unwrap_or(self.settings.origin_keys.publish_lead_secs);
        if !(0..=MAX_ORIGIN_KEY_LEAD_SECS).contains(&lead) {
            return Err(ServiceError::invalid(
                "invalid_activation",
                format!("activate_in_secs must be between 0 and {MAX_ORIGIN_KEY_LEAD_SECS}"),
            ));
        }
        let rows = self.origin_keys.rows().await?;
        let now = self.clock.now();
        let first = rows.is_empty();
        let version = rows.last().map_or(1, |row| row.version + 1);
        self.insert_origin_key(actor, version, if first { now } else { now + lead }).await
    }

    /// Makes and stores origin signing key `version`, used from `activates_at`. A version that
    /// already exists is a [`ServiceError::Conflict`] and nothing is written.
    async fn insert_origin_key(
        &self,
        actor: &Actor,
        version: i64,
        activates_at: i64,
    ) -> Result<OriginKeyView, ServiceError> {
        let now = self.clock.now();
        let row = self.origin_keys.make(version, activates_at).await?;
        let audit = AuditDraft {
            at: now,
            actor: actor.label(),
            action: "origin_key.rotate".into(),
            key_id: None,
            outcome: "ok".into(),
            detail: json_text(
                &json!({"kid": row.kid.to_string(), "version": version, "activates_at": row.activates_at}),
            ),
        };
        self.commit(Change { audit, ops: vec![Op::InsertOriginKey(row.clone())], outbox: None }).await?;
        let status = if row.activates_at <= now { OriginKeyStatus::Active } else { OriginKeyStatus::Pending };
        Ok(OriginKeyView { row, status })
    }

    /// Makes the first origin signing key if there is none (at start-up): edges have one to sign with
    /// before any operator thinks of it.
    pub async fn ensure_origin_key(&self) -> Result<Option<OriginKeyView>, ServiceError> {
        if !self.origin_keys.rows().await?.is_empty() {
            return Ok(None);
        }
        // Version 1 by name, not "the next one": two start-ups racing here both try version 1, and
        // only one insert can win (a rotation's "next version" would let the loser make version 2).
        match self.insert_origin_key(&Actor::System, 1, self.clock.now()).await {
            Ok(made) => Ok(Some(made)),
            // Another process starting at the same moment made version 1 first: that one serves.
            Err(ServiceError::Conflict) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Every origin signing key with its status now, oldest first.
    pub async fn origin_key_views(&self) -> Result<Vec<OriginKeyView>, ServiceError> {
        let rows = self.origin_keys.rows().await?;
        let now = self.clock.now();
        Ok(origin_keys::statuses(&rows, now, &self.settings.origin_keys)
            .into_iter()
            .map(|(row, status)| OriginKeyView { row: row.clone(), status })
            .collect())
    }

    /// The JWKS document origins verify tokens against.
    pub async fn jwks(&self) -> Result<serde_json::Value, ServiceError> {
        let rows = self.origin_keys.rows().await?;
        Ok(origin_keys::jwks(&rows, self.clock.now(), &self.settings.origin_keys))
    }

    /// Creates a key; the returned [`ApiKey`] is the only time its text is available without reveal.
    pub async fn create(&self, actor: &Actor, request: NewKey) -> Result<Created, ServiceError> {
        let checked = validate_new_key(request, &self.settings)?;
        let now = self.clock.now();
        let millis = u64::try_from(self.clock.now_millis()).unwrap_or(0);
        let key = self.rng.with(|rng| ApiKey::generate(&self.settings.prefix, &checked.region, millis, rng));
        let secret = self.seal_generation(&key, 1, now).await?;
        let row = KeyRow {
            id: key.key_id(),
            name: checked.name,
            owner: checked.owner,
            tier: checked.tier,
            permissions: checked.permissions,
            metadata: checked.metadata,
            prefix: self.settings.prefix.as_str().to_owned(),
            region: checked.region.as_str().to_owned(),
            created_at: now,
            expires_at: Some(now + checked.expires_in_days * DAY),
            rotated_at: None,
            revoked_at: None,
            revoked_reason: None,
            generation: 1,
            disabled_at: None,
            revision: 0,
            last_used_at: None,
        };
        let record = Self::record(&row, &[SecretEntry { hash: secret.secret_hash, not_after: None }], now)?;
        let audit = AuditDraft {
            at: now,
            actor: actor.label(),
            action: "key.create".into(),
            key_id: Some(row.id),
            outcome: "ok".into(),
            detail: json_text(&json!({"name": row.name, "tier": row.tier, "permissions": row.permissions})),
        };
        self.commit(Change {
            audit,
            ops: vec![Op::InsertKey(row.clone()), Op::InsertSecret(secret)],
            outbox: Some((row.id, record)),
        })
        .await?;
        metrics::counter!("keygate_keys_created_total").increment(1);
        Ok(Created { key, view: self.view(row) })
    }

    async fn existing(&self, id: KeyId) -> Result<KeyRow, ServiceError> {
        self.store.key(id).await?.ok_or(ServiceError::NotFound)
    }

    /// One key's metadata and its secret generations (without hashes).
    pub async fn show(&self, id: KeyId) -> Result<(KeyView, Vec<SecretRow>), ServiceError> {
        let row = self.existing(id).await?;
        let secrets = self.store.secrets(id).await?;
        Ok((self.view(row), secrets))
    }

    /// A page of keys in creation order, after `after`.
    pub async fn list(&self, after: Option<KeyId>, limit: i64) -> Result<Vec<KeyView>, ServiceError> {
        let rows = self.store.keys(after, limit.clamp(1, 1_000)).await?;
        Ok(rows.into_iter().map(|row| self.view(row)).collect())
    }

    /// Rerolls a key: a new secret for the same id; the old one keeps working for the grace period
    /// (capped at the key's expiry), then stops.
    pub async fn rotate(&self, actor: &Actor, id: KeyId, grace_secs: Option<i64>) -> Result<Rotated, ServiceError> {
        let grace = grace_secs.unwrap_or(self.settings.default_grace_secs);
        if !(0..=MAX_GRACE_SECS).contains(&grace) {
            return Err(ServiceError::invalid(
                "invalid_grace_period",
                format!("grace_period_secs must be between 0 and {MAX_GRACE_SECS}"),
            ));
        }
        let row = self.existing(id).await?;
        let now = self.clock.now();
        if row.revoked_at.is_some() {
            return Err(ServiceError::Revoked);
        }
        if row.expires_at.is_some_and(|end| now >= end) {
            return Err(ServiceError::Expired);
        }
        let previous_not_after = row.expires_at.map_or(now + grace, |end| end.min(now + grace));
        let prefix =
            Prefix::new(&row.prefix).map_err(|_| ServiceError::Internal(StoreError::Corrupt("prefix".into())))?;
        let region =
            Region::new(&row.region).map_err(|_| ServiceError::Internal(StoreError::Corrupt("region".into())))?;
        let key = self.rng.with(|rng| ApiKey::assemble(&prefix, &region, id, &KeySecret::generate(rng)));
        let generation = row.generation + 1;
        let secret = self.seal_generation(&key, generation, now).await?;

        let mut live: Vec<SecretEntry> = vec![SecretEntry { hash: secret.secret_hash, not_after: None }];
        for old in self.store.secrets(id).await? {
            let not_after = if old.generation == row.generation { Some(previous_not_after) } else { old.not_after };
            live.push(SecretEntry { hash: old.secret_hash, not_after });
        }
        let mut rotated_row = row.clone();
        rotated_row.generation = generation;
        rotated_row.rotated_at = Some(now);
        let record = Self::record(&rotated_row, &live, now)?;
        let audit = AuditDraft {
            at: now,
            actor: actor.label(),
            action: "key.rotate".into(),
            key_id: Some(id),
            outcome: "ok".into(),
            detail: json_text(&json!({"generation": generation, "previous_valid_until": previous_not_after})),
        };
        let ops = vec![
            Op::Rotate {
                key_id: id,
                expected_generation: row.generation,
                expected_revision: row.revision,
                previous_not_after,
                rotated_at: now,
            },
            Op::InsertSecret(secret),
        ];
        self.commit(Change { audit, ops, outbox: Some((id, record)) }).await?;
        self.recent.forget(id);
        metrics::counter!("keygate_keys_rotated_total").increment(1);
        Ok(Rotated { key, generation, previous_valid_until: previous_not_after })
    }

    /// Revokes a key at once. Revoking a revoked key changes nothing and answers with its metadata.
    pub async fn revoke(&self, actor: &Actor, id: KeyId, reason: Option<String>) -> Result<KeyView, ServiceError> {
        self.revoke_noting(actor, id, reason, serde_json::Map::new()).await
    }

    /// [`Service::revoke`], with `note`'s fields added to the audit entry's detail (where a leak was found).
    pub async fn revoke_noting(
        &self,
        actor: &Actor,
        id: KeyId,
        reason: Option<String>,
        note: serde_json::Map<String, serde_json::Value>,
    ) -> Result<KeyView, ServiceError> {
        if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
            return Err(ServiceError::invalid("invalid_reason", "reason must be at most 500 characters"));
        }
        let row = self.existing(id).await?;
        let now = self.clock.now();
        let mut audit = AuditDraft {
            at: now,
            actor: actor.label(),
            action: "key.revoke".into(),
            key_id: Some(id),
            outcome: "ok".into(),
            detail: json_text(&{
                let mut detail = note;
                detail.insert("reason".into(), json!(reason));
                serde_json::Value::Object(detail)
            }),
        };
        if row.revoked_at.is_some() {
            audit.outcome = "already_revoked".into();
            self.commit(Change { audit, ops: vec![], outbox: None }).await?;
            return Ok(self.view(row));
        }
        let live: Vec<SecretEntry> = self
            .store
            .secrets(id)
            .await?
            .into_iter()
            .map(|s| SecretEntry { hash: s.secret_hash, not_after: s.not_after })
            .collect();
        let mut revoked = row.clone();
        revoked.revoked_at = Some(now);
        revoked.revoked_reason.clone_from(&reason);
        let record = Self::record(&revoked, &live, now)?;
        let ops = vec![Op::Revoke {
            key_id: id,
            expected_generation: row.generation,
            expected_revision: row.revision,
            revoked_at: now,
            reason,
        }];
        self.commit(Change { audit, ops, outbox: Some((id, record)) }).await?;
        self.recent.forget(id);
        metrics::counter!("keygate_keys_revoked_total").increment(1);
        Ok(self.view(revoked))
    }

    /// Changes a key's settings in place (see [`key_update`]): the row, its audit entry (what changed,
    /// old and new) and the edge's new record in one transaction. A revoked key cannot be changed; an
    /// update that changes nothing is audited as `unchanged` and replicates nothing.
    pub async fn update(&self, actor: &Actor, id: KeyId, update: KeyUpdate) -> Result<KeyView, ServiceError> {
        let checked = update.check()?;
        let row = self.existing(id).await?;
        if row.revoked_at.is_some() {
            return Err(ServiceError::Revoked);
        }
        let now = self.clock.now();
        let updated = checked.apply(&row, now)?;
        let changes = key_update::changes(&row, &updated);
        let mut audit = AuditDraft {
            at: now,
            actor: actor.label(),
            action: "key.update".into(),
            key_id: Some(id),
            outcome: "ok".into(),
            detail: String::new(),
        };
        if changes.is_empty() {
            audit.outcome = "unchanged".into();
            audit.detail = json_text(&json!({"changes": {}}));
            self.commit(Change { audit, ops: vec![], outbox: None }).await?;
            return Ok(self.view(row));
        }
        audit.detail = json_text(&json!({"changes": changes}));
        let live: Vec<SecretEntry> = self
            .store
            .secrets(id)
            .await?
            .into_iter()
            .map(|s| SecretEntry { hash: s.secret_hash, not_after: s.not_after })
            .collect();
        let record = Self::record(&updated, &live, now)?;
        self.commit(Change { audit, ops: vec![Op::Update(updated.clone())], outbox: Some((id, record)) }).await?;
        self.recent.forget(id);
        metrics::counter!("keygate_keys_updated_total").increment(1);
        Ok(self.view(updated))
    }

    /// The current key text, decrypted through KMS; audited before it is returned. A revoked key can
    /// still be revealed (to find where it was used); it no longer opens anything.
    pub async fn reveal(&self, actor: &Actor, id: KeyId) -> Result<ApiKey, ServiceError> {
        let row = self.existing(id).await?;
        let secrets = self.store.secrets(id).await?;
        let current = secrets
            .iter()
            .find(|s| s.generation == row.generation)
            .ok_or_else(|| ServiceError::Internal(StoreError::Corrupt("no current secret".into())))?;
        let wrapped = current.wrapped();
        let data_key = self.kms.decrypt(&wrapped, &KmsContext::for_wrapped(id, &wrapped)).await?;
        let generation = u32::try_from(current.generation).map_err(|_| ServiceError::Conflict)?;
        let key = envelope::open(&data_key, &current.ciphertext, id, generation).map_err(ServiceError::Sealed)?;
        drop(data_key);
        let audit = AuditDraft {
            at: self.clock.now(),
            actor: actor.label(),
            action: "key.reveal".into(),
            key_id: Some(id),
            outcome: "ok".into(),
            detail: json_text(&json!({"generation": current.generation})),
        };
        self.commit(Change { audit, ops: vec![], outbox: None }).await?;
        Ok(key)
    }

    /// Checks a presented key against the stored record, as the edge would. Never calls KMS.
    pub async fn verify(&self, presented: &str) -> Result<Verdict, ServiceError> {
        Ok(match self.check_key(presented).await? {
            Some(row) => Verdict::Valid { key_id: row.id, tier: row.tier, permissions: row.permissions },
            None => Verdict::Invalid,
        })
    }

    /// The key's row if `presented` is a good key now, `None` for any bad key.
    async fn check_key(&self, presented: &str) -> Result<Option<KeyRow>, ServiceError> {
        let Ok(parsed) = ParsedKey::parse(presented) else {
            return Ok(None);
        };
        let known = self.known_key(parsed.key_id()).await?;
        let Some(row) = &known.row else {
            return Ok(None);
        };
        let record = KeyRecord {
            key_id: row.id,
            seq: 0,
            tier: String::new(),
            permissions: PermissionSet::default(),
            expires_at: row.expires_at,
            revoked: row.revoked_at.is_some(),
            disabled: row.disabled_at.is_some(),
            secrets: known.secrets.clone(),
            owner: None,
        };
        Ok(record.check(&parsed, self.clock.now()).is_ok().then(|| row.clone()))
    }

    /// A key's row and secret hashes: a recent read (see [`Settings::verify_cache_ms`]) or the store's.
    async fn known_key(&self, id: KeyId) -> Result<Arc<KnownKey>, ServiceError> {
        let ttl = self.settings.verify_cache_ms;
        let now_ms = self.clock.now_millis();
        if ttl > 0 {
            if let Some(known) = self.recent.get(id, now_ms) {
                return Ok(known);
            }
        }
        let epoch = self.recent.epoch.load(Ordering::Acquire);
        let row = self.store.key(id).await?;
        let secrets = match &row {
            Some(_) => self.store.secrets(id).await?,
            None => Vec::new(),
        };
        let secrets =
            secrets.into_iter().map(|s| SecretEntry { hash: s.secret_hash, not_after: s.not_after }).collect();
        let known = Arc::new(KnownKey { row, secrets });
        if ttl > 0 {
            self.recent.keep(id, known.clone(), epoch, now_ms.saturating_add(ttl), now_ms);
        }
        Ok(known)
    }

    /// Seconds until `client` may present keys again, if it has sent too many bad ones.
    pub fn client_blocked(&self, client: &str) -> Option<i64> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).blocked(client, self.clock.now())
    }

    /// Counts a bad key from `client`.
    pub fn client_failed(&self, client: &str) {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).failed(client, self.clock.now());
    }

    /// Authenticates an admin request: a good key holding `scope`. Refusals are audited.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        scope: AdminScope,
        action: &str,
    ) -> Result<Actor, ServiceError> {
        let row = match bearer {
            Some(text) => self.check_key(text).await?,
            None => None,
        };
        let refusal = match &row {
            None => ServiceError::Unauthorized,
            Some(row) => match PermissionSet::parse(&row.permissions) {
                Ok(permissions) if permissions.allows_admin(scope) => return Ok(Actor::Admin(row.id)),
                _ => ServiceError::Forbidden(scope.as_str()),
            },
        };
        let actor = row.as_ref().map_or(Actor::Anonymous, |row| Actor::Admin(row.id));
        self.audit_event(&actor, action, refusal.code(), json!({"scope": scope.as_str()})).await?;
        metrics::counter!("keygate_admin_refusals_total").increment(1);
        Err(refusal)
    }

    /// Writes an audit entry for an event that changes no key (a console sign-in, sign-out or refused
    /// action), as `actor`. An error means nothing was written: the caller refuses what it audits.
    pub async fn audit_event(
        &self,
        actor: &Actor,
        action: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) -> Result<(), ServiceError> {
        let audit = AuditDraft {
            at: self.clock.now(),
            actor: actor.label(),
            action: action.to_owned(),
            key_id: None,
            outcome: outcome.to_owned(),
            detail: json_text(&detail),
        };
        self.commit(Change { audit, ops: vec![], outbox: None }).await.map(drop)
    }

    /// Creates an admin key with `admin:*` (the first one comes from `keygate admin bootstrap`).
    pub async fn bootstrap_admin(&self) -> Result<Created, ServiceError> {
        self.create(
            &Actor::Cli,
            NewKey {
                name: "bootstrap admin".into(),
                tier: "admin".into(),
                permissions: vec!["admin:*".into()],
                ..NewKey::default()
            },
        )
        .await
    }

    /// Audit entries, newest first.
    pub async fn audit_log(&self, key_id: Option<KeyId>, limit: i64) -> Result<Vec<AuditEntry>, ServiceError> {
        Ok(self.store.audit(key_id, None, limit.clamp(1, 1_000)).await?)
    }

    /// Checks the whole audit chain; the number of entries checked, or where it breaks.
    pub async fn audit_verify(&self) -> Result<Result<i64, ChainBreak>, ServiceError> {
        let (entries, head_seq, head_hash) = self.store.audit_chain().await?;
        Ok(verify_chain(&entries, head_seq, &head_hash))
    }

    /// Re-wraps every stored data key under the current KMS key (KMS ReEncrypt); API keys are
    /// untouched. Resumes an interrupted run. `progress(done, total)` is called as it goes.
    pub async fn rewrap(&self, actor: &Actor, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<u64, ServiceError> {
        let now = self.clock.now();
        let run = self.store.rewrap_begin(self.kms.current_key_id(), now).await?;
        let total = u64::try_from(self.store.rewrap_remaining(run.target_version).await?).unwrap_or(0);
        let detail =
            json!({"run": run.id, "target_version": run.target_version, "resumed": run.resumed, "pending": total});
        self.commit(Change {
            audit: AuditDraft {
                at: now,
                actor: actor.label(),
                action: "kms.rewrap.start".into(),
                key_id: None,
                outcome: "ok".into(),
                detail: json_text(&detail),
            },
            ops: vec![],
            outbox: None,
        })
        .await?;
        let mut done = 0u64;
        progress(0, total);
        loop {
            let batch = self.store.rewrap_pending(run.target_version, self.settings.rewrap_batch.max(1)).await?;
            if batch.is_empty() {
                break;
            }
            // Rows that share a data key (the data-key cache) share its wrapped blob: one KMS call each.
            let mut groups: Vec<Vec<SecretRow>> = Vec::new();
            let mut by_blob: HashMap<Vec<u8>, usize> = HashMap::new();
            for secret in batch {
                match by_blob.get(&secret.wrapped_data_key) {
                    Some(&group) => groups[group].push(secret),
                    None => {
                        by_blob.insert(secret.wrapped_data_key.clone(), groups.len());
                        groups.push(vec![secret]);
                    }
                }
            }
            let rewrapped: Vec<Vec<(SecretRow, i64)>> = stream::iter(groups)
                .map(|group| self.rewrap_group(group, run.target_version))
                .buffer_unordered(REWRAP_CONCURRENCY)
                .try_collect()
                .await?;
            // The batch's rows in one transaction: one commit per batch, not one per row.
            let updates: Vec<(SecretRow, i64)> = rewrapped.into_iter().flatten().collect();
            done += self.store.rewrap_secrets(&updates).await?;
            progress(done, total.max(done));
        }
        // The origin signing keys are few: all of them move in the finishing transaction.
        let mut origin_keys = Vec::new();
        for row in self.origin_keys.rows().await? {
            let wrapped = self.kms.rewrap(&row.wrapped(), &KmsContext::origin_signing_key(row.kid)).await?;
            origin_keys.push(Op::RewrapOriginKey { version: row.version, wrapped });
        }
        let finished = self.clock.now();
        self.store.rewrap_finish(run.id, finished).await?;
        let detail =
            json!({"run": run.id, "rewrapped": done, "origin_keys": origin_keys.len(), "kms_key_id": run.kms_key_id});
        self.commit(Change {
            audit: AuditDraft {
                at: finished,
                actor: actor.label(),
                action: "kms.rewrap.finish".into(),
                key_id: None,
                outcome: "ok".into(),
                detail: json_text(&detail),
            },
            ops: origin_keys,
            outbox: None,
        })
        .await?;
        Ok(done)
    }

    /// Rewraps one data key (KMS ReEncrypt) for every row that holds it; returns each row as it will be
    /// stored, with the version it must still be at.
    async fn rewrap_group(
        &self,
        group: Vec<SecretRow>,
        target_version: i64,
    ) -> Result<Vec<(SecretRow, i64)>, ServiceError> {
        let Some(first) = group.first() else {
            return Ok(Vec::new());
        };
        let wrapped = first.wrapped();
        let rewrapped = self.kms.rewrap(&wrapped, &KmsContext::for_wrapped(first.key_id, &wrapped)).await?;
        Ok(group
            .into_iter()
            .map(|mut secret| {
                let from_version = secret.data_key_version;
                secret.wrapped_data_key.clone_from(&rewrapped.blob);
                secret.kms_key_id.clone_from(&rewrapped.kms_key_id);
                secret.data_key_version = target_version;
                (secret, from_version)
            })
            .collect())
    }
}

/// A create request whose values have been checked.
struct CheckedNewKey {
    name: String,
    tier: String,
    permissions: Vec<String>,
    expires_in_days: i64,
    region: Region,
    owner: Option<String>,
    metadata: serde_json::Value,
}

/// A key's name: trimmed, 1 to 200 characters.
pub(crate) fn check_name(name: &str) -> Result<String, ServiceError> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ServiceError::invalid("invalid_name", "name must be 1 to 200 characters"));
    }
    Ok(name)
}

/// A rate-limit tier: 1 to 32 characters of `[a-z0-9_-]`.
pub(crate) fn check_tier(tier: String) -> Result<String, ServiceError> {
    let tier_ok = (1..=32).contains(&tier.len())
        && tier.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !tier_ok {
        return Err(ServiceError::invalid("invalid_tier", "tier must be 1 to 32 characters of [a-z0-9_-]"));
    }
    Ok(tier)
}

/// At most 64 permission strings that parse; returned in their normal form.
pub(crate) fn check_permissions(permissions: &[String]) -> Result<Vec<String>, ServiceError> {
    if permissions.len() > 64 {
        return Err(ServiceError::invalid("invalid_permission", "at most 64 permissions"));
    }
    Ok(PermissionSet::parse(permissions)
        .map_err(|e| ServiceError::Invalid { code: e.code(), message: e.to_string() })?
        .to_strings())
}

/// An owner of at most 200 characters, or none.
pub(crate) fn check_owner(owner: Option<String>) -> Result<Option<String>, ServiceError> {
    if owner.as_ref().is_some_and(|o| o.chars().count() > 200) {
        return Err(ServiceError::invalid("invalid_owner", "owner must be at most 200 characters"));
    }
    Ok(owner)
}

/// Metadata: a JSON object of at most 8 KiB; `{}` when none.
pub(crate) fn check_metadata(metadata: Option<serde_json::Value>) -> Result<serde_json::Value, ServiceError> {
    let metadata = metadata.unwrap_or_else(|| json!({}));
    if !metadata.is_object() || metadata.to_string().len() > 8 * 1024 {
        return Err(ServiceError::invalid("invalid_metadata", "metadata must be a JSON object of at most 8 KiB"));
    }
    Ok(metadata)
}

fn validate_new_key(request: NewKey, settings: &Settings) -> Result<CheckedNewKey, ServiceError> {
    let name = check_name(&request.name)?;
    let tier = check_tier(request.tier)?;
    let permissions = check_permissions(&request.permissions)?;
    let expires_in_days = request.expires_in_days.unwrap_or(settings.default_expiry_days);
    if !(1..=MAX_EXPIRY_DAYS).contains(&expires_in_days) {
        return Err(ServiceError::invalid(
            "invalid_expiry",
            format!("expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}"),
        ));
    }
    let region = match request.region {
        Some(region) => {
            Region::new(&region).map_err(|e| ServiceError::Invalid { code: e.code(), message: e.to_string() })?
        }
        None => settings.region.clone(),
    };
    let owner = check_owner(request.owner)?;
    let metadata = check_metadata(request.metadata)?;
    Ok(CheckedNewKey { name, tier, permissions, expires_in_days, region, owner, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Arc<KnownKey> {
        Arc::new(KnownKey { row: None, secrets: vec![] })
    }

    fn held(recent: &RecentKeys) -> usize {
        recent.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    #[test]
    fn recent_reads_are_swept_once_expired() {
        let recent = RecentKeys::default();
        for id in 0..50u128 {
            recent.keep(KeyId::from(id), known(), 0, 1_000, 0);
        }
        assert_eq!(held(&recent), 50);
        recent.keep(KeyId::from(100), known(), 0, SWEEP_EVERY_MS + 1_000, SWEEP_EVERY_MS - 1);
        assert_eq!(held(&recent), 51, "no sweep before its time");
        assert!(recent.get(KeyId::from(1), 999).is_some() && recent.get(KeyId::from(1), 1_000).is_none());
        recent.keep(KeyId::from(101), known(), 0, SWEEP_EVERY_MS + 1_000, SWEEP_EVERY_MS);
        assert_eq!(held(&recent), 2, "the sweep kept only what has not expired");
    }
}
