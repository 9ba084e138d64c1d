//! The one SQL implementation of [`Store`], generic over the sqlx database: SQLite and PostgreSQL both
//! take the same `$N` statements; only the migrations differ.

use std::str::FromStr;
use std::time::Duration;

use keygate_shared::{KeyId, SecretHash};
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Postgres, Row, Sqlite, Transaction, Type,
};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};

use super::{Change, KeyRow, Op, OriginKeyRow, OutboxRow, RewrapRun, RowCounts, SecretRow, Store, StoreError};
use crate::audit::AuditEntry;

mod usage;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// A change waiting for the writer, with where to send its outcome.
type Queued = (Change, oneshot::Sender<Result<AuditEntry, StoreError>>);

/// Changes committed in one transaction at most.
const MAX_BATCH: usize = 256;

/// keygate's tables in one SQLite file or PostgreSQL schema.
///
/// Writes go through one writer task that commits whatever changes are queued in one transaction
/// (group commit): the audit chain and outbox stay in commit order, and a burst pays one fsync, not
/// one per change.
#[derive(Debug, Clone)]
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    writer: mpsc::Sender<Queued>,
    committed: Arc<Notify>,
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the SQLite database at `url`, in WAL mode with a busy timeout.
    pub async fn connect_sqlite(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Other)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        }
        let pool =
            PoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(5)).connect_with(options).await?;
        Ok(Self::with_writer(pool))
    }
}

impl SqlStore<Postgres> {
    /// Connects to PostgreSQL.
    pub async fn connect_postgres(options: PgConnectOptions) -> Result<Self, StoreError> {
        let pool = PoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        Ok(Self::with_writer(pool))
    }
}

/// What differs per dialect: the migrations, and the driver's own result type.
#[async_trait::async_trait]
pub trait Dialect: Database {
    /// `sqlite` or `postgres`.
    const DIALECT: &'static str;
    /// Runs this dialect's embedded migrations.
    async fn migrate(pool: &Pool<Self>) -> Result<(), sqlx::migrate::MigrateError>;
    /// Rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

#[async_trait::async_trait]
impl Dialect for Sqlite {
    const DIALECT: &'static str = "sqlite";
    async fn migrate(pool: &Pool<Self>) -> Result<(), sqlx::migrate::MigrateError> {
        SQLITE_MIGRATIONS.run(pool).await
    }
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

#[async_trait::async_trait]
impl Dialect for Postgres {
    const DIALECT: &'static str = "postgres";
    async fn migrate(pool: &Pool<Self>) -> Result<(), sqlx::migrate::MigrateError> {
        POSTGRES_MIGRATIONS.run(pool).await
    }
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

const KEY_COLUMNS: &str = "id, name, owner, tier, permissions, metadata, prefix, region, created_at, expires_at, \
     rotated_at, revoked_at, revoked_reason, generation, disabled_at, revision, last_used_at";
/// The columns a new key is inserted with (`last_used_at` starts NULL).
const KEY_INSERT_COLUMNS: &str = "id, name, owner, tier, permissions, metadata, prefix, region, created_at, \
     expires_at, rotated_at, revoked_at, revoked_reason, generation, disabled_at, revision";
const SECRET_COLUMNS: &str = "key_id, generation, secret_hash, ciphertext, wrapped_data_key, kms_key_id, \
     data_key_version, created_at, not_after, data_key_id";
const OUTBOX_COLUMNS: &str = "seq, key_id, record, created_at, delivered_at";
const AUDIT_COLUMNS: &str = "seq, at, actor, action, key_id, outcome, detail, prev_hash, hash";
const ORIGIN_KEY_COLUMNS: &str =
    "version, kid, public_jwk, ciphertext, wrapped_data_key, kms_key_id, created_at, activates_at";

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn parse_key_id(text: &str) -> Result<KeyId, StoreError> {
    text.parse().map_err(|_| corrupt("key id"))
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    Vec<u8>: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    // sqlx encodes `Option` per driver, not generically.
    Option<i64>: for<'q> Encode<'q, DB>,
    Option<String>: for<'q> Encode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn with_writer(pool: Pool<DB>) -> Self {
        let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
        let committed = Arc::new(Notify::new());
        tokio::spawn(Self::write_loop(pool.clone(), queue, committed.clone()));
        Self { pool, writer, committed }
    }

    fn key_row(row: &DB::Row) -> Result<KeyRow, StoreError> {
        let permissions: String = row.try_get(4)?;
        let metadata: String = row.try_get(5)?;
        Ok(KeyRow {
            id: parse_key_id(&row.try_get::<String, _>(0)?)?,
            name: row.try_get(1)?,
            owner: row.try_get(2)?,
            tier: row.try_get(3)?,
            permissions: serde_json::from_str(&permissions).map_err(|_| corrupt("permissions"))?,
            metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata"))?,
            prefix: row.try_get(6)?,
            region: row.try_get(7)?,
            created_at: row.try_get(8)?,
            expires_at: row.try_get(9)?,
            rotated_at: row.try_get(10)?,
            revoked_at: row.try_get(11)?,
            revoked_reason: row.try_get(12)?,
            generation: row.try_get(13)?,
            disabled_at: row.try_get(14)?,
            revision: row.try_get(15)?,
            last_used_at: row.try_get(16)?,
        })
    }

    fn secret_row(row: &DB::Row) -> Result<SecretRow, StoreError> {
        Ok(SecretRow {
            key_id: parse_key_id(&row.try_get::<String, _>(0)?)?,
            generation: row.try_get(1)?,
            secret_hash: SecretHash::from_hex(&row.try_get::<String, _>(2)?).map_err(|_| corrupt("secret hash"))?,
            ciphertext: row.try_get(3)?,
            wrapped_data_key: row.try_get(4)?,
            kms_key_id: row.try_get(5)?,
            data_key_version: row.try_get(6)?,
            created_at: row.try_get(7)?,
            not_after: row.try_get(8)?,
            data_key_id: row.try_get(9)?,
        })
    }

    fn audit_row(row: &DB::Row) -> Result<AuditEntry, StoreError> {
        Ok(AuditEntry {
            seq: row.try_get(0)?,
            at: row.try_get(1)?,
            actor: row.try_get(2)?,
            action: row.try_get(3)?,
            key_id: row.try_get(4)?,
            outcome: row.try_get(5)?,
            detail: row.try_get(6)?,
            prev_hash: row.try_get(7)?,
            hash: row.try_get(8)?,
        })
    }

    fn outbox_row(row: &DB::Row) -> Result<OutboxRow, StoreError> {
        Ok(OutboxRow {
            seq: row.try_get(0)?,
            key_id: parse_key_id(&row.try_get::<String, _>(1)?)?,
            record: row.try_get(2)?,
            created_at: row.try_get(3)?,
            delivered_at: row.try_get(4)?,
        })
    }

    /// The writer: takes the first queued change and everything queued behind it, commits them together.
    async fn write_loop(pool: Pool<DB>, mut queue: mpsc::Receiver<Queued>, committed: Arc<Notify>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            metrics::histogram!("keygate_store_commit_batch_size").record(batch.len() as f64);
            if batch.len() > 1 {
                match Self::commit_batch(&pool, &batch).await {
                    Ok(outcomes) => {
                        committed.notify_waiters();
                        for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                            let _ = reply.send(outcome);
                        }
                        continue;
                    }
                    // Something beyond a conflict went wrong: nothing was committed. Each change is
                    // tried alone below, so each caller gets its own outcome.
                    Err(error) => {
                        tracing::warn!(error = %error, size = batch.len(), "group commit failed; retrying singly")
                    }
                }
            }
            for (change, reply) in batch.drain(..) {
                let outcome = Self::commit_one(&pool, &change).await;
                if outcome.is_ok() {
                    committed.notify_waiters();
                }
                let _ = reply.send(outcome);
            }
        }
    }

    /// One change in its own transaction.
    async fn commit_one(pool: &Pool<DB>, change: &Change) -> Result<AuditEntry, StoreError> {
        let mut tx = pool.begin().await?;
        let (seq, prev_hash) = Self::lock_head(&mut tx).await?;
        let entry = Self::apply_in(&mut tx, change, seq + 1, &prev_hash).await?;
        Self::set_head(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(entry)
    }

    /// Several changes in one transaction, each under a savepoint so a conflict undoes only itself.
    async fn commit_batch(
        pool: &Pool<DB>,
        batch: &[Queued],
    ) -> Result<Vec<Result<AuditEntry, StoreError>>, StoreError> {
        let mut tx = pool.begin().await?;
        let (mut seq, mut prev_hash) = Self::lock_head(&mut tx).await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut last = None;
        for (change, _) in batch {
            sqlx::query("SAVEPOINT keygate_change").execute(&mut *tx).await?;
            match Self::apply_in(&mut tx, change, seq + 1, &prev_hash).await {
                Ok(entry) => {
                    sqlx::query("RELEASE SAVEPOINT keygate_change").execute(&mut *tx).await?;
                    seq = entry.seq;
                    prev_hash.clone_from(&entry.hash);
                    last = Some(entry.clone());
                    outcomes.push(Ok(entry));
                }
                Err(refused @ (StoreError::Conflict | StoreError::Duplicate)) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT keygate_change").execute(&mut *tx).await?;
                    sqlx::query("RELEASE SAVEPOINT keygate_change").execute(&mut *tx).await?;
                    outcomes.push(Err(refused));
                }
                Err(other) => return Err(other),
            }
        }
        if let Some(entry) = &last {
            Self::set_head(&mut tx, entry).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Locks the chain head (the first statement of every write: it serializes writers, a row lock on
    /// PostgreSQL and the write lock on SQLite) and reads it.
    async fn lock_head(tx: &mut Transaction<'static, DB>) -> Result<(i64, String), StoreError> {
        let head = sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut **tx)
            .await?;
        Ok((head.try_get(0)?, head.try_get(1)?))
    }

    async fn set_head(tx: &mut Transaction<'static, DB>, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(entry.seq)
            .bind(entry.hash.clone())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A change's row operations, outbox record and audit entry (at `seq`, after `prev_hash`).
    async fn apply_in(
        tx: &mut Transaction<'static, DB>,
        change: &Change,
        seq: i64,
        prev_hash: &str,
    ) -> Result<AuditEntry, StoreError> {
        for op in &change.ops {
            let affected = match op {
                Op::InsertKey(key) => {
                    let permissions = serde_json::to_string(&key.permissions).map_err(|_| corrupt("permissions"))?;
                    sqlx::query(&format!(
                        "INSERT INTO api_keys ({KEY_INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                    ))
                    .bind(key.id.to_string())
                    .bind(key.name.clone())
                    .bind(key.owner.clone())
                    .bind(key.tier.clone())
                    .bind(permissions)
                    .bind(key.metadata.to_string())
                    .bind(key.prefix.clone())
                    .bind(key.region.clone())
                    .bind(key.created_at)
                    .bind(key.expires_at)
                    .bind(key.rotated_at)
                    .bind(key.revoked_at)
                    .bind(key.revoked_reason.clone())
                    .bind(key.generation)
                    .bind(key.disabled_at)
                    .bind(key.revision)
                    .execute(&mut **tx)
                    .await?
                }
                Op::InsertSecret(secret) => {
                    sqlx::query(&format!(
                    "INSERT INTO api_key_secrets ({SECRET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ))
                    .bind(secret.key_id.to_string())
                    .bind(secret.generation)
                    .bind(secret.secret_hash.to_hex())
                    .bind(secret.ciphertext.clone())
                    .bind(secret.wrapped_data_key.clone())
                    .bind(secret.kms_key_id.clone())
                    .bind(secret.data_key_version)
                    .bind(secret.created_at)
                    .bind(secret.not_after)
                    .bind(secret.data_key_id.clone())
                    .execute(&mut **tx)
                    .await?
                }
                Op::Rotate { key_id, expected_generation, expected_revision, previous_not_after, rotated_at } => {
                    let id = key_id.to_string();
                    let moved = sqlx::query(
                        "UPDATE api_keys SET generation = generation + 1, rotated_at = $1 \
                         WHERE id = $2 AND generation = $3 AND revision = $4 AND revoked_at IS NULL",
                    )
                    .bind(*rotated_at)
                    .bind(id.clone())
                    .bind(*expected_generation)
                    .bind(*expected_revision)
                    .execute(&mut **tx)
                    .await?;
                    if DB::rows_affected(&moved) != 1 {
                        return Err(StoreError::Conflict);
                    }
                    sqlx::query("UPDATE api_key_secrets SET not_after = $1 WHERE key_id = $2 AND generation = $3")
                        .bind(*previous_not_after)
                        .bind(id)
                        .bind(*expected_generation)
                        .execute(&mut **tx)
                        .await?
                }
                Op::InsertOriginKey(key) => {
                    sqlx::query(&format!(
                        "INSERT INTO origin_signing_keys ({ORIGIN_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    ))
                    .bind(key.version)
                    .bind(key.kid.to_string())
                    .bind(key.public_jwk.clone())
                    .bind(key.ciphertext.clone())
                    .bind(key.wrapped_data_key.clone())
                    .bind(key.kms_key_id.clone())
                    .bind(key.created_at)
                    .bind(key.activates_at)
                    .execute(&mut **tx)
                    .await?
                }
                Op::RewrapOriginKey { version, wrapped } => {
                    sqlx::query(
                        "UPDATE origin_signing_keys SET wrapped_data_key = $1, kms_key_id = $2 WHERE version = $3",
                    )
                    .bind(wrapped.blob.clone())
                    .bind(wrapped.kms_key_id.clone())
                    .bind(*version)
                    .execute(&mut **tx)
                    .await?
                }
                Op::Revoke { key_id, expected_generation, expected_revision, revoked_at, reason } => {
                    sqlx::query(
                        "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2 \
                         WHERE id = $3 AND generation = $4 AND revision = $5 AND revoked_at IS NULL",
                    )
                    .bind(*revoked_at)
                    .bind(reason.clone())
                    .bind(key_id.to_string())
                    .bind(*expected_generation)
                    .bind(*expected_revision)
                    .execute(&mut **tx)
                    .await?
                }
                Op::Update(key) => {
                    let permissions = serde_json::to_string(&key.permissions).map_err(|_| corrupt("permissions"))?;
                    sqlx::query(
                        "UPDATE api_keys SET name = $1, owner = $2, tier = $3, permissions = $4, metadata = $5, \
                         expires_at = $6, disabled_at = $7, revision = $8 \
                         WHERE id = $9 AND generation = $10 AND revision = $11 AND revoked_at IS NULL",
                    )
                    .bind(key.name.clone())
                    .bind(key.owner.clone())
                    .bind(key.tier.clone())
                    .bind(permissions)
                    .bind(key.metadata.to_string())
                    .bind(key.expires_at)
                    .bind(key.disabled_at)
                    .bind(key.revision)
                    .bind(key.id.to_string())
                    .bind(key.generation)
                    .bind(key.revision - 1)
                    .execute(&mut **tx)
                    .await?
                }
            };
            if DB::rows_affected(&affected) != 1 {
                return Err(StoreError::Conflict);
            }
        }
        if let Some((key_id, record)) = &change.outbox {
            sqlx::query("INSERT INTO replication_outbox (key_id, record, created_at) VALUES ($1, $2, $3)")
                .bind(key_id.to_string())
                .bind(record.clone())
                .bind(change.audit.at)
                .execute(&mut **tx)
                .await?;
        }
        let entry = AuditEntry::seal(&change.audit, seq, prev_hash);
        sqlx::query(&format!("INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(entry.seq)
            .bind(entry.at)
            .bind(entry.actor.clone())
            .bind(entry.action.clone())
            .bind(entry.key_id.clone())
            .bind(entry.outcome.clone())
            .bind(entry.detail.clone())
            .bind(entry.prev_hash.clone())
            .bind(entry.hash.clone())
            .execute(&mut **tx)
            .await?;
        Ok(entry)
    }
}

#[async_trait::async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    Vec<u8>: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    // sqlx encodes `Option` per driver, not generically.
    Option<i64>: for<'q> Encode<'q, DB>,
    Option<String>: for<'q> Encode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn dialect(&self) -> &'static str {
        DB::DIALECT
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        DB::migrate(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => StoreError::from(e),
            other => StoreError::Corrupt(format!("migrations: {other}")),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn apply(&self, change: Change) -> Result<AuditEntry, StoreError> {
        let (reply, outcome) = oneshot::channel();
        if self.writer.send((change, reply)).await.is_err() {
            return Err(StoreError::Unavailable(sqlx::Error::PoolClosed));
        }
        outcome.await.unwrap_or(Err(StoreError::Unavailable(sqlx::Error::PoolClosed)))
    }

    async fn key(&self, id: KeyId) -> Result<Option<KeyRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::key_row).transpose()
    }

    async fn keys(&self, after: Option<KeyId>, limit: i64) -> Result<Vec<KeyRow>, StoreError> {
        // Fixed-width base62 sorts as its number: id order is creation order for UUIDv7 ids.
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2"))
            .bind(after.map_or_else(String::new, |id| id.to_string()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::key_row).collect()
    }

    async fn secrets(&self, id: KeyId) -> Result<Vec<SecretRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SECRET_COLUMNS} FROM api_key_secrets WHERE key_id = $1 ORDER BY generation DESC"
        ))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::secret_row).collect()
    }

    async fn audit(
        &self,
        key_id: Option<KeyId>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE ($1 = '' OR key_id = $1) AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(key_id.map_or_else(String::new, |id| id.to_string()))
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::audit_row).collect()
    }

    async fn origin_keys(&self) -> Result<Vec<OriginKeyRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ORIGIN_KEY_COLUMNS} FROM origin_signing_keys ORDER BY version"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(OriginKeyRow {
                    version: row.try_get(0)?,
                    kid: parse_key_id(&row.try_get::<String, _>(1)?)?,
                    public_jwk: row.try_get(2)?,
                    ciphertext: row.try_get(3)?,
                    wrapped_data_key: row.try_get(4)?,
                    kms_key_id: row.try_get(5)?,
                    created_at: row.try_get(6)?,
                    activates_at: row.try_get(7)?,
                })
            })
            .collect()
    }

    async fn audit_chain(&self) -> Result<(Vec<AuditEntry>, i64, String), StoreError> {
        // One transaction: the head and the entries are read at the same point.
        let mut tx = self.pool.begin().await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let rows =
            sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq")).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let entries = rows.iter().map(Self::audit_row).collect::<Result<_, _>>()?;
        Ok((entries, head.try_get(0)?, head.try_get(1)?))
    }

    async fn outbox_after(&self, seq: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM replication_outbox WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::outbox_row).collect()
    }

    async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM replication_outbox WHERE delivered_at IS NULL ORDER BY seq LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::outbox_row).collect()
    }

    async fn outbox_delivered(&self, seq: i64, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE replication_outbox SET delivered_at = $1 WHERE seq <= $2 AND delivered_at IS NULL")
            .bind(now)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_latest(&self, after: Option<KeyId>, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM replication_outbox WHERE seq IN \
             (SELECT MAX(seq) FROM replication_outbox WHERE key_id > $1 GROUP BY key_id) ORDER BY key_id LIMIT $2"
        ))
        .bind(after.map_or_else(String::new, |id| id.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::outbox_row).collect()
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    async fn counts(&self) -> Result<RowCounts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM api_keys), (SELECT COUNT(*) FROM api_key_secrets), \
             (SELECT COUNT(*) FROM audit_log), (SELECT COUNT(*) FROM replication_outbox)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(RowCounts {
            keys: row.try_get(0)?,
            secrets: row.try_get(1)?,
            audit: row.try_get(2)?,
            outbox: row.try_get(3)?,
        })
    }

    async fn rewrap_begin(&self, kms_key_id: &str, now: i64) -> Result<RewrapRun, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Serialize with other writers before reading (see `apply`).
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(&mut *tx).await?;
        let open = sqlx::query(
            "SELECT id, target_version, kms_key_id FROM kms_rewrap_runs WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let run = match open {
            Some(row) if row.try_get::<String, _>(2)? == kms_key_id => RewrapRun {
                id: row.try_get(0)?,
                target_version: row.try_get(1)?,
                kms_key_id: kms_key_id.to_owned(),
                resumed: true,
            },
            open => {
                if let Some(row) = open {
                    // An interrupted run toward another KMS key: superseded by this one.
                    sqlx::query("UPDATE kms_rewrap_runs SET finished_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(row.try_get::<i64, _>(0)?)
                        .execute(&mut *tx)
                        .await?;
                }
                let top = sqlx::query("SELECT COALESCE(MAX(data_key_version), 0) FROM api_key_secrets")
                    .fetch_one(&mut *tx)
                    .await?;
                let target_version = top.try_get::<i64, _>(0)? + 1;
                let row = sqlx::query(
                    "INSERT INTO kms_rewrap_runs (target_version, kms_key_id, started_at) VALUES ($1, $2, $3) RETURNING id",
                )
                .bind(target_version)
                .bind(kms_key_id.to_owned())
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                RewrapRun { id: row.try_get(0)?, target_version, kms_key_id: kms_key_id.to_owned(), resumed: false }
            }
        };
        tx.commit().await?;
        Ok(run)
    }

    async fn rewrap_pending(&self, target_version: i64, limit: i64) -> Result<Vec<SecretRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SECRET_COLUMNS} FROM api_key_secrets WHERE data_key_version < $1 ORDER BY key_id, generation LIMIT $2"
        ))
        .bind(target_version)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::secret_row).collect()
    }

    async fn rewrap_remaining(&self, target_version: i64) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM api_key_secrets WHERE data_key_version < $1")
            .bind(target_version)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn rewrap_secrets(&self, updates: &[(SecretRow, i64)]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut stored = 0;
        for (secret, from_version) in updates {
            let done = sqlx::query(
                "UPDATE api_key_secrets SET wrapped_data_key = $1, kms_key_id = $2, data_key_version = $3 \
                 WHERE key_id = $4 AND generation = $5 AND data_key_version = $6",
            )
            .bind(secret.wrapped_data_key.clone())
            .bind(secret.kms_key_id.clone())
            .bind(secret.data_key_version)
            .bind(secret.key_id.to_string())
            .bind(secret.generation)
            .bind(*from_version)
            .execute(&mut *tx)
            .await?;
            stored += DB::rows_affected(&done);
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn rewrap_finish(&self, run_id: i64, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE kms_rewrap_runs SET finished_at = $1 WHERE id = $2")
            .bind(now)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
