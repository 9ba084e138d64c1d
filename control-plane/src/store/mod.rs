//! Storage: keys, their secret generations, the audit chain and the replication outbox, behind one trait
//! with one SQL implementation over SQLite (embedded default) and PostgreSQL.
//!
//! Every write is a [`Change`]: an audit entry, conditional row operations and the outbox record they
//! produce, applied in one transaction or not at all. Each write transaction first moves the audit
//! chain's head row, which serializes writers on both databases: outbox sequence numbers therefore
//! follow commit order, and a stale read is caught by the conditions (a [`StoreError::Conflict`]).

mod sql;
mod usage;

use std::fmt;
use std::sync::Arc;

use keygate_shared::{KeyId, SecretHash};

pub use sql::SqlStore;
pub use usage::UsageStore;

use crate::audit::{AuditDraft, AuditEntry};
use crate::kms::WrappedKey;

/// One API key's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// The key id.
    pub id: KeyId,
    /// Display name.
    pub name: String,
    /// Who the key belongs to, if recorded.
    pub owner: Option<String>,
    /// Rate-limit tier.
    pub tier: String,
    /// Permission strings.
    pub permissions: Vec<String>,
    /// Free-form JSON object.
    pub metadata: serde_json::Value,
    /// Prefix of its key text.
    pub prefix: String,
    /// Region of its key text.
    pub region: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, exclusive; `None` for never.
    pub expires_at: Option<i64>,
    /// Last reroll, unix seconds.
    pub rotated_at: Option<i64>,
    /// Revocation time, unix seconds.
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// The current secret generation, from 1.
    pub generation: i64,
    /// When an operator switched the key off, unix seconds; `None` while it is enabled.
    pub disabled_at: Option<i64>,
    /// Bumped by every in-place change ([`Op::Update`]); rerolls and revocations check it, so no
    /// change is made from a read that another one has overtaken.
    pub revision: i64,
    /// The start of the latest minute with an admitted request the edge reported; `None` if never.
    pub last_used_at: Option<i64>,
}

/// One generation of a key's secret: its hash, and the key text sealed under a KMS-wrapped data key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRow {
    /// The key id.
    pub key_id: KeyId,
    /// The generation, from 1.
    pub generation: i64,
    /// SHA-256 of the whole key of this generation.
    pub secret_hash: SecretHash,
    /// Nonce and AES-256-GCM ciphertext of the key text.
    pub ciphertext: Vec<u8>,
    /// The data key, wrapped by KMS.
    pub wrapped_data_key: Vec<u8>,
    /// The KMS key that wrapped it.
    pub kms_key_id: String,
    /// For a data key from the data-key cache: the id its KMS encryption context names.
    pub data_key_id: Option<String>,
    /// Bumped by each rewrap.
    pub data_key_version: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// End of grace (exclusive); `None` for the current generation.
    pub not_after: Option<i64>,
}

impl SecretRow {
    /// The wrapped data key, as KMS takes it back.
    pub fn wrapped(&self) -> WrappedKey {
        WrappedKey {
            blob: self.wrapped_data_key.clone(),
            kms_key_id: self.kms_key_id.clone(),
            shared_id: self.data_key_id.clone(),
        }
    }
}

impl fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRow")
            .field("key_id", &self.key_id)
            .field("generation", &self.generation)
            .field("kms_key_id", &self.kms_key_id)
            .field("data_key_version", &self.data_key_version)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// One ES256 key that signs the origin's JWTs: its public half in the clear, its private scalar sealed
/// under a KMS-wrapped data key.
#[derive(Clone, PartialEq, Eq)]
pub struct OriginKeyRow {
    /// 1, 2, ...: higher is newer.
    pub version: i64,
    /// The key's id (`kid`): 22 base62 digits of a UUIDv7.
    pub kid: KeyId,
    /// The public half as a JWK, JSON.
    pub public_jwk: String,
    /// Nonce and AES-256-GCM ciphertext of the private scalar.
    pub ciphertext: Vec<u8>,
    /// The data key, wrapped by KMS.
    pub wrapped_data_key: Vec<u8>,
    /// The KMS key that wrapped it.
    pub kms_key_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// When edges start signing with it, unix seconds.
    pub activates_at: i64,
}

impl OriginKeyRow {
    /// The wrapped data key, as KMS takes it back.
    pub fn wrapped(&self) -> WrappedKey {
        WrappedKey { blob: self.wrapped_data_key.clone(), kms_key_id: self.kms_key_id.clone(), shared_id: None }
    }
}

impl fmt::Debug for OriginKeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginKeyRow")
            .field("version", &self.version)
            .field("kid", &self.kid)
            .field("kms_key_id", &self.kms_key_id)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

/// A record waiting in (or sent from) the replication outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Sequence number: the replicated record's `seq`.
    pub seq: i64,
    /// The key id.
    pub key_id: KeyId,
    /// The `KeyRecord` as JSON, with `seq` 0 (the row's seq replaces it when sent).
    pub record: String,
    /// Unix seconds.
    pub created_at: i64,
    /// When the edge accepted it.
    pub delivered_at: Option<i64>,
}

/// A row operation inside a [`Change`]. Conditional ones fail the whole change with
/// [`StoreError::Conflict`] when their condition does not hold.
#[derive(Debug, Clone)]
pub enum Op {
    /// A new key.
    InsertKey(KeyRow),
    /// A new secret generation.
    InsertSecret(SecretRow),
    /// Reroll, if the key is still at `expected_generation` and `expected_revision` and not revoked: the
    /// current secret's grace ends at `previous_not_after`, the generation becomes `expected_generation + 1`.
    Rotate {
        /// The key.
        key_id: KeyId,
        /// The generation the caller read.
        expected_generation: i64,
        /// The revision the caller read.
        expected_revision: i64,
        /// End of the old secret's grace.
        previous_not_after: i64,
        /// Unix seconds.
        rotated_at: i64,
    },
    /// A new origin signing key; fails with [`StoreError::Duplicate`] if its version is taken.
    InsertOriginKey(OriginKeyRow),
    /// An origin signing key's data key, wrapped anew under the current KMS key.
    RewrapOriginKey {
        /// The key's version.
        version: i64,
        /// The data key as KMS rewrapped it.
        wrapped: WrappedKey,
    },
    /// Revoke, if the key is still at `expected_generation` and `expected_revision` and not yet revoked.
    Revoke {
        /// The key.
        key_id: KeyId,
        /// The generation the caller read.
        expected_generation: i64,
        /// The revision the caller read.
        expected_revision: i64,
        /// Unix seconds.
        revoked_at: i64,
        /// Why.
        reason: Option<String>,
    },
    /// An in-place change of a key's settings (`PATCH`), if the row is still at `row.generation` and
    /// `row.revision - 1` and not revoked: its name, owner, tier, permissions, metadata, expiry and
    /// `disabled_at` become `row`'s, its revision `row.revision`.
    Update(KeyRow),
}

/// Everything one write does, applied atomically.
#[derive(Debug, Clone)]
pub struct Change {
    /// The audit entry (every write has one).
    pub audit: AuditDraft,
    /// Row operations, in order.
    pub ops: Vec<Op>,
    /// The replicated record this change produces, as JSON, for the outbox.
    pub outbox: Option<(KeyId, String)>,
}

/// Row counts, for checking that a failed operation wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowCounts {
    /// `api_keys`.
    pub keys: i64,
    /// `api_key_secrets`.
    pub secrets: i64,
    /// `audit_log`.
    pub audit: i64,
    /// `replication_outbox`.
    pub outbox: i64,
}

/// A rewrap of every data key to one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapRun {
    /// The run.
    pub id: i64,
    /// Every secret ends at this `data_key_version`.
    pub target_version: i64,
    /// The KMS key the run wraps under.
    pub kms_key_id: String,
    /// Whether this continues a run that was interrupted.
    pub resumed: bool,
}

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or is busy: a 503.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A conditional operation found the row changed (or missing) since it was read.
    #[error("the key changed while the request ran")]
    Conflict,
    /// A unique value (key id, secret hash) already exists.
    #[error("a row with this identity already exists")]
    Duplicate,
    /// A stored value could not be read back.
    #[error("a stored row is corrupt: {0}")]
    Corrupt(String),
    /// The database URL names no database keygate supports.
    #[error("unsupported database URL: use sqlite:... or postgres://...")]
    UnsupportedUrl,
    /// Any other database error (a bug, not an outage).
    #[error("database error")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Duplicate,
            // SQLITE_BUSY / SQLITE_LOCKED: another writer held the file past the busy timeout.
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("5" | "6")) => Self::Unavailable(error),
            // Connection-level failures and PostgreSQL's "cannot connect now" / shutdown classes.
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) => {
                Self::Unavailable(error)
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => Self::Corrupt(error.to_string()),
            _ => Self::Other(error),
        }
    }
}

/// Storage for the control plane.
#[async_trait::async_trait]
pub trait Store: UsageStore + Send + Sync + fmt::Debug {
    /// `sqlite` or `postgres`.
    fn dialect(&self) -> &'static str;
    /// Runs the embedded migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Closes every connection: later calls fail as unavailable (shutdown, and outage tests).
    async fn close(&self);
    /// Applies a change atomically; returns its audit entry.
    async fn apply(&self, change: Change) -> Result<AuditEntry, StoreError>;
    /// One key.
    async fn key(&self, id: KeyId) -> Result<Option<KeyRow>, StoreError>;
    /// Keys in id order (creation order, for UUIDv7 ids), after `after`.
    async fn keys(&self, after: Option<KeyId>, limit: i64) -> Result<Vec<KeyRow>, StoreError>;
    /// A key's secret generations, newest first.
    async fn secrets(&self, id: KeyId) -> Result<Vec<SecretRow>, StoreError>;
    /// Audit entries, newest first, optionally for one key and before a sequence number.
    async fn audit(
        &self,
        key_id: Option<KeyId>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// The whole audit log in order, and the recorded head `(seq, hash)`.
    async fn audit_chain(&self) -> Result<(Vec<AuditEntry>, i64, String), StoreError>;
    /// Every origin signing key, oldest first.
    async fn origin_keys(&self) -> Result<Vec<OriginKeyRow>, StoreError>;
    /// Outbox rows after `seq`, in order.
    async fn outbox_after(&self, seq: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError>;
    /// Outbox rows not yet delivered to the edge, in order.
    async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError>;
    /// Marks every row up to `seq` delivered at `now`.
    async fn outbox_delivered(&self, seq: i64, now: i64) -> Result<(), StoreError>;
    /// Each key's latest outbox row (its current record), in key order after `after`.
    async fn outbox_latest(&self, after: Option<KeyId>, limit: i64) -> Result<Vec<OutboxRow>, StoreError>;
    /// Woken each time outbox rows are committed (the replicator waits on it).
    fn outbox_signal(&self) -> Arc<tokio::sync::Notify>;
    /// Row counts.
    async fn counts(&self) -> Result<RowCounts, StoreError>;
    /// Continues the unfinished rewrap run, or starts one to `max(data_key_version) + 1` under `kms_key_id`.
    async fn rewrap_begin(&self, kms_key_id: &str, now: i64) -> Result<RewrapRun, StoreError>;
    /// Secrets still below `target_version`, in key order.
    async fn rewrap_pending(&self, target_version: i64, limit: i64) -> Result<Vec<SecretRow>, StoreError>;
    /// How many secrets are still below `target_version`.
    async fn rewrap_remaining(&self, target_version: i64) -> Result<i64, StoreError>;
    /// Stores rewrapped data keys in one transaction, each only if its secret is still at its
    /// `from_version`; returns how many were stored.
    async fn rewrap_secrets(&self, updates: &[(SecretRow, i64)]) -> Result<u64, StoreError>;
    /// Marks a run finished.
    async fn rewrap_finish(&self, run_id: i64, now: i64) -> Result<(), StoreError>;
}

/// Connects to the database `url` names (`sqlite:`… or `postgres:`…) and runs the migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
        Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(url).await?)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Arc::new(SqlStore::<sqlx::Postgres>::connect_postgres(url.parse().map_err(StoreError::Other)?).await?)
    } else {
        return Err(StoreError::UnsupportedUrl);
    };
    store.migrate().await?;
    Ok(store)
}
