//! [`UsageStore`] for the SQL stores: multi-row upserts that add (`ON CONFLICT ... DO UPDATE SET
//! x = t.x + excluded.x`, the same text on SQLite and PostgreSQL), written in key order in one
//! transaction per batch. Usage writes do not go through the audit writer: they touch no audited row,
//! and a burst of reports must not queue behind key changes.

use std::collections::BTreeSet;

use keygate_shared::usage::{UsageBatch, UsageRow};
use keygate_shared::KeyId;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};

use super::{Dialect, SqlStore, KEY_COLUMNS};
use crate::store::{KeyRow, StoreError, UsageStore};
use crate::usage::rollup::{aggregate, Level};
use crate::usage::{
    Granularity, IngestOutcome, KeyCursor, KeyListing, KeyOrder, Outcomes, Pruned, UsageBucket, BATCH_RETENTION_SECS,
};

/// Rows per multi-row statement: well under both databases' bound-parameter limits.
const CHUNK: usize = 500;
/// Tries of a batch's transaction that PostgreSQL picked as a deadlock victim.
const DEADLOCK_TRIES: usize = 3;

/// `($1, $2, $3), ($4, $5, $6), ...`: `rows` groups of `width` placeholders.
fn placeholders(rows: usize, width: usize) -> String {
    let mut text = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        text.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..width {
            if column > 0 {
                text.push_str(", ");
            }
            text.push('$');
            text.push_str(&(row * width + column + 1).to_string());
        }
        text.push(')');
    }
    text
}

/// A value bound to a statement built at run time.
enum Arg {
    Text(String),
    Int(i64),
}

fn is_deadlock(error: &StoreError) -> bool {
    matches!(error, StoreError::Other(sqlx::Error::Database(db)) if db.code().as_deref() == Some("40P01"))
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    Vec<u8>: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    Option<i64>: for<'q> Encode<'q, DB>,
    Option<String>: for<'q> Encode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn ingest_once(&self, batch: &UsageBatch, now: i64) -> Result<IngestOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A write first: on SQLite it takes the write lock (waiting out the busy timeout) before any read.
        let kept = sqlx::query(
            "INSERT INTO usage_batches (batch_id, received_at) VALUES ($1, $2) ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(batch.batch_id.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&kept) == 0 {
            tx.rollback().await?;
            return Ok(IngestOutcome::Duplicate);
        }
        let ids: BTreeSet<String> = batch.rows.iter().map(|row| row.key_id.to_string()).collect();
        let known = Self::known_ids(&mut tx, &ids).await?;
        let rows: Vec<&UsageRow> = batch.rows.iter().filter(|row| known.contains(&row.key_id.to_string())).collect();
        let skipped = (batch.rows.len() - rows.len()) as u64;
        let rollups = aggregate(rows.iter().copied(), now);
        for level in &rollups.levels {
            Self::add_counts(&mut tx, level).await?;
            Self::add_operations(&mut tx, level).await?;
        }
        let last_used: Vec<(&String, &i64)> = rollups.last_used.iter().collect();
        for chunk in last_used.chunks(CHUNK) {
            let sql = format!(
                "UPDATE api_keys SET last_used_at = v.column2 FROM (VALUES {}) AS v \
                 WHERE api_keys.id = v.column1 AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < v.column2)",
                placeholders(chunk.len(), 2)
            );
            let args = chunk.iter().flat_map(|(id, minute)| [Arg::Text((*id).clone()), Arg::Int(**minute)]);
            Self::execute(&mut tx, &sql, args).await?;
        }
        tx.commit().await?;
        Ok(IngestOutcome::Applied { rows: rows.len() as u64, skipped })
    }

    async fn execute(
        tx: &mut Transaction<'static, DB>,
        sql: &str,
        args: impl IntoIterator<Item = Arg>,
    ) -> Result<(), StoreError> {
        let mut query = sqlx::query(sql);
        for arg in args {
            query = match arg {
                Arg::Text(text) => query.bind(text),
                Arg::Int(value) => query.bind(value),
            };
        }
        query.execute(&mut **tx).await?;
        Ok(())
    }

    async fn known_ids(
        tx: &mut Transaction<'static, DB>,
        ids: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, StoreError> {
        let ids: Vec<&String> = ids.iter().collect();
        let mut known = BTreeSet::new();
        for chunk in ids.chunks(CHUNK) {
            let list = (1..=chunk.len()).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT id FROM api_keys WHERE id IN ({list})");
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind((*id).clone());
            }
            for row in query.fetch_all(&mut **tx).await? {
                known.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(known)
    }

    async fn add_counts(tx: &mut Transaction<'static, DB>, level: &Level) -> Result<(), StoreError> {
        let table = format!("usage_{}", level.granularity.as_str());
        let rows: Vec<(&(String, i64), &Outcomes)> = level.counts.iter().collect();
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO {table} (key_id, start, admitted, forbidden, rate_limited, refused) VALUES {} \
                 ON CONFLICT (key_id, start) DO UPDATE SET admitted = {table}.admitted + excluded.admitted, \
                 forbidden = {table}.forbidden + excluded.forbidden, \
                 rate_limited = {table}.rate_limited + excluded.rate_limited, \
                 refused = {table}.refused + excluded.refused",
                placeholders(chunk.len(), 6)
            );
            let args = chunk.iter().flat_map(|((key, start), counts)| {
                [
                    Arg::Text(key.clone()),
                    Arg::Int(*start),
                    Arg::Int(counts.admitted),
                    Arg::Int(counts.forbidden),
                    Arg::Int(counts.rate_limited),
                    Arg::Int(counts.refused),
                ]
            });
            Self::execute(tx, &sql, args).await?;
        }
        Ok(())
    }

    async fn add_operations(tx: &mut Transaction<'static, DB>, level: &Level) -> Result<(), StoreError> {
        let table = format!("usage_{}_operations", level.granularity.as_str());
        let rows: Vec<(&(String, i64, String), &i64)> = level.operations.iter().collect();
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO {table} (key_id, start, name, count) VALUES {} \
                 ON CONFLICT (key_id, start, name) DO UPDATE SET count = {table}.count + excluded.count",
                placeholders(chunk.len(), 4)
            );
            let args = chunk.iter().flat_map(|((key, start, name), count)| {
                [Arg::Text(key.clone()), Arg::Int(*start), Arg::Text(name.clone()), Arg::Int(**count)]
            });
            Self::execute(tx, &sql, args).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<DB> UsageStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    i64: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    Vec<u8>: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    Option<i64>: for<'q> Encode<'q, DB>,
    Option<String>: for<'q> Encode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn ingest_usage(&self, batch: &UsageBatch, now: i64) -> Result<IngestOutcome, StoreError> {
        let mut tries = 1;
        loop {
            match self.ingest_once(batch, now).await {
                Err(error) if is_deadlock(&error) && tries < DEADLOCK_TRIES => tries += 1,
                outcome => return outcome,
            }
        }
    }

    async fn usage_series(
        &self,
        key: KeyId,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        let sql = format!(
            "SELECT start, admitted, forbidden, rate_limited, refused FROM usage_{} \
             WHERE key_id = $1 AND start >= $2 AND start < $3 ORDER BY start",
            granularity.as_str()
        );
        let rows = sqlx::query(&sql).bind(key.to_string()).bind(from).bind(to).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(UsageBucket {
                    start: row.try_get(0)?,
                    counts: Outcomes {
                        admitted: row.try_get(1)?,
                        forbidden: row.try_get(2)?,
                        rate_limited: row.try_get(3)?,
                        refused: row.try_get(4)?,
                    },
                })
            })
            .collect()
    }

    async fn usage_operations(
        &self,
        key: KeyId,
        granularity: Granularity,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        // PostgreSQL sums a BIGINT column as NUMERIC: cast back.
        let sql = format!(
            "SELECT name, CAST(SUM(count) AS BIGINT) AS total FROM usage_{}_operations \
             WHERE key_id = $1 AND start >= $2 AND start < $3 GROUP BY name ORDER BY total DESC, name LIMIT $4",
            granularity.as_str()
        );
        let rows =
            sqlx::query(&sql).bind(key.to_string()).bind(from).bind(to).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    }

    async fn prune_usage(&self, now: i64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let batches = sqlx::query("DELETE FROM usage_batches WHERE received_at < $1")
            .bind(now - BATCH_RETENTION_SECS)
            .execute(&self.pool)
            .await?;
        pruned.batches = DB::rows_affected(&batches);
        for granularity in Granularity::ALL {
            for table in ["", "_operations"] {
                let sql = format!("DELETE FROM usage_{}{table} WHERE start < $1", granularity.as_str());
                let done = sqlx::query(&sql).bind(granularity.keep_from(now)).execute(&self.pool).await?;
                pruned.rollups += DB::rows_affected(&done);
            }
        }
        Ok(pruned)
    }

    async fn keys_listed(&self, listing: &KeyListing) -> Result<Vec<KeyRow>, StoreError> {
        let mut conditions = Vec::new();
        let mut args = Vec::new();
        let next = |arg: Arg, args: &mut Vec<Arg>| {
            args.push(arg);
            format!("${}", args.len())
        };
        // Never used sorts as -1: after every used key in descending order.
        const LAST_USE: &str = "COALESCE(last_used_at, -1)";
        match listing.after {
            None => {}
            Some(KeyCursor::Created(id)) => {
                conditions.push(format!("id > {}", next(Arg::Text(id.to_string()), &mut args)));
            }
            Some(KeyCursor::LastUsed(at, id)) => {
                let at_lt = next(Arg::Int(at), &mut args);
                let at_eq = next(Arg::Int(at), &mut args);
                let id = next(Arg::Text(id.to_string()), &mut args);
                conditions.push(format!("({LAST_USE} < {at_lt} OR ({LAST_USE} = {at_eq} AND id > {id}))"));
            }
        }
        if let Some(before) = listing.unused_since {
            conditions.push(format!("COALESCE(last_used_at, created_at) < {}", next(Arg::Int(before), &mut args)));
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let order = match listing.order {
            KeyOrder::Created => "id".to_owned(),
            KeyOrder::LastUsed => format!("{LAST_USE} DESC, id"),
        };
        let limit = next(Arg::Int(listing.limit), &mut args);
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys {filter} ORDER BY {order} LIMIT {limit}");
        let mut query = sqlx::query(&sql);
        for arg in args {
            query = match arg {
                Arg::Text(text) => query.bind(text),
                Arg::Int(value) => query.bind(value),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(Self::key_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_every_value() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 1), "($1)");
    }
}
