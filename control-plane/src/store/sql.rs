//! The one SQL implementation of [`Store`], generic over the sqlx database: SQLite and PostgreSQL both
//! take the same `$N` statements; only the migrations differ.

use std::str::FromStr;
use std::time::Duration;

use keygate_shared::{KeyId, SecretHash};
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Postgres, Row, Sqlite, Type};

use super::{Change, KeyRow, Op, OutboxRow, RewrapRun, RowCounts, SecretRow, Store, StoreError};
use crate::audit::AuditEntry;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// keygate's tables in one SQLite file or PostgreSQL schema.
#[derive(Debug, Clone)]
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
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
        Ok(Self { pool })
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
        Ok(Self { pool })
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
     rotated_at, revoked_at, revoked_reason, generation";
const SECRET_COLUMNS: &str = "key_id, generation, secret_hash, ciphertext, wrapped_data_key, kms_key_id, \
     data_key_version, created_at, not_after";
const AUDIT_COLUMNS: &str = "seq, at, actor, action, key_id, outcome, detail, prev_hash, hash";

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn parse_key_id(text: &str) -> Result<KeyId, StoreError> {
    text.parse().map_err(|_| corrupt("key id"))
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
        let mut tx = self.pool.begin().await?;
        // First statement of every write: take the chain head. It serializes writers (a row lock on
        // PostgreSQL, the write lock on SQLite), so nothing read below can change before commit.
        let head = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut *tx)
            .await?;
        let (seq, prev_hash): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
        for op in &change.ops {
            let affected = match op {
                Op::InsertKey(key) => {
                    let permissions = serde_json::to_string(&key.permissions).map_err(|_| corrupt("permissions"))?;
                    sqlx::query(&format!(
                        "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
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
                    .execute(&mut *tx)
                    .await?
                }
                Op::InsertSecret(secret) => {
                    sqlx::query(&format!(
                        "INSERT INTO api_key_secrets ({SECRET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
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
                    .execute(&mut *tx)
                    .await?
                }
                Op::Rotate { key_id, expected_generation, previous_not_after, rotated_at } => {
                    let id = key_id.to_string();
                    let moved = sqlx::query(
                        "UPDATE api_keys SET generation = generation + 1, rotated_at = $1 \
                         WHERE id = $2 AND generation = $3 AND revoked_at IS NULL",
                    )
                    .bind(*rotated_at)
                    .bind(id.clone())
                    .bind(*expected_generation)
                    .execute(&mut *tx)
                    .await?;
                    if DB::rows_affected(&moved) != 1 {
                        return Err(StoreError::Conflict);
                    }
                    sqlx::query("UPDATE api_key_secrets SET not_after = $1 WHERE key_id = $2 AND generation = $3")
                        .bind(*previous_not_after)
                        .bind(id)
                        .bind(*expected_generation)
                        .execute(&mut *tx)
                        .await?
                }
                Op::Revoke { key_id, expected_generation, revoked_at, reason } => {
                    sqlx::query(
                        "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2 \
                         WHERE id = $3 AND generation = $4 AND revoked_at IS NULL",
                    )
                    .bind(*revoked_at)
                    .bind(reason.clone())
                    .bind(key_id.to_string())
                    .bind(*expected_generation)
                    .execute(&mut *tx)
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
                .execute(&mut *tx)
                .await?;
        }
        let entry = AuditEntry::seal(&change.audit, seq, &prev_hash);
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
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1").bind(entry.hash.clone()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(entry)
    }

    async fn key(&self, id: KeyId) -> Result<Option<KeyRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_row::<DB>).transpose()
    }

    async fn keys(&self, after: Option<KeyId>, limit: i64) -> Result<Vec<KeyRow>, StoreError> {
        // Fixed-width base62 sorts as its number: id order is creation order for UUIDv7 ids.
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2"))
            .bind(after.map_or_else(String::new, |id| id.to_string()))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_row::<DB>).collect()
    }

    async fn secrets(&self, id: KeyId) -> Result<Vec<SecretRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SECRET_COLUMNS} FROM api_key_secrets WHERE key_id = $1 ORDER BY generation DESC"
        ))
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(secret_row::<DB>).collect()
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
        rows.iter().map(audit_row::<DB>).collect()
    }

    async fn audit_chain(&self) -> Result<(Vec<AuditEntry>, i64, String), StoreError> {
        // One transaction: the head and the entries are read at the same point.
        let mut tx = self.pool.begin().await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let rows =
            sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq")).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let entries = rows.iter().map(audit_row::<DB>).collect::<Result<_, _>>()?;
        Ok((entries, head.try_get(0)?, head.try_get(1)?))
    }

    async fn outbox_after(&self, seq: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, key_id, record, created_at, delivered_at FROM replication_outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxRow {
                    seq: row.try_get(0)?,
                    key_id: parse_key_id(&row.try_get::<String, _>(1)?)?,
                    record: row.try_get(2)?,
                    created_at: row.try_get(3)?,
                    delivered_at: row.try_get(4)?,
                })
            })
            .collect()
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
        rows.iter().map(secret_row::<DB>).collect()
    }

    async fn rewrap_remaining(&self, target_version: i64) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM api_key_secrets WHERE data_key_version < $1")
            .bind(target_version)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn rewrap_secret(&self, secret: &SecretRow, from_version: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_key_secrets SET wrapped_data_key = $1, kms_key_id = $2, data_key_version = $3 \
             WHERE key_id = $4 AND generation = $5 AND data_key_version = $6",
        )
        .bind(secret.wrapped_data_key.clone())
        .bind(secret.kms_key_id.clone())
        .bind(secret.data_key_version)
        .bind(secret.key_id.to_string())
        .bind(secret.generation)
        .bind(from_version)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) == 1)
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

fn key_row<DB>(row: &DB::Row) -> Result<KeyRow, StoreError>
where
    DB: Database,
    i64: Type<DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'r> Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
{
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
    })
}

fn secret_row<DB>(row: &DB::Row) -> Result<SecretRow, StoreError>
where
    DB: Database,
    i64: Type<DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'r> Decode<'r, DB>,
    Vec<u8>: Type<DB> + for<'r> Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
{
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
    })
}

fn audit_row<DB>(row: &DB::Row) -> Result<AuditEntry, StoreError>
where
    DB: Database,
    i64: Type<DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'r> Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
{
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
