//! The usage operations of [`Service`]: keeping a report, answering a key's usage, and the key list
//! filtered and ordered by use. Kept apart from the key lifecycle in `service.rs`.

use keygate_shared::usage::UsageBatch;
use keygate_shared::KeyId;

use super::{Granularity, IngestOutcome, KeyListing, Outcomes, UsageBucket, MAX_BUCKETS};
use crate::service::{KeyView, Service, ServiceError};

/// Operations a usage answer lists when the query names no `limit`.
pub const DEFAULT_OPERATIONS: i64 = 20;
/// The most operations a usage answer lists.
pub const MAX_OPERATIONS: i64 = 100;

/// What a usage query asks; absent fields take their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    /// The bucket size (default hour).
    pub granularity: Option<Granularity>,
    /// Start, unix seconds (default: `to` minus the granularity's default span), rounded down to a bucket.
    pub from: Option<i64>,
    /// End, exclusive, unix seconds (default now).
    pub to: Option<i64>,
    /// Most operations listed (default 20, at most 100).
    pub limit: Option<i64>,
}

/// A key's usage over a range: every bucket (zero-filled) and the top operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The bucket size.
    pub granularity: Granularity,
    /// The first bucket's start.
    pub from: i64,
    /// The end asked for (exclusive).
    pub to: i64,
    /// One entry per bucket starting in `[from, to)`, in time order.
    pub series: Vec<UsageBucket>,
    /// Admitted requests by operation name, most first.
    pub operations: Vec<(String, i64)>,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid { code, message: message.into() }
}

/// `rows` with a zero bucket for every start in `[from, to)` they lack.
fn zero_filled(rows: Vec<UsageBucket>, granularity: Granularity, from: i64, to: i64) -> Vec<UsageBucket> {
    let mut rows = rows.into_iter().peekable();
    let mut series = Vec::new();
    let mut start = from;
    while start < to {
        match rows.next_if(|row| row.start == start) {
            Some(row) => series.push(row),
            None => series.push(UsageBucket { start, counts: Outcomes::default() }),
        }
        start += granularity.seconds();
    }
    series
}

impl Service {
    /// Keeps a usage batch whose signature and content were checked.
    pub async fn ingest_usage(&self, batch: &UsageBatch) -> Result<IngestOutcome, ServiceError> {
        let now = self.clock().now();
        let outcome = self.store().ingest_usage(batch, now).await?;
        match outcome {
            IngestOutcome::Duplicate => {
                metrics::counter!("keygate_usage_batches_total", "result" => "duplicate").increment(1);
            }
            IngestOutcome::Applied { rows, skipped } => {
                metrics::counter!("keygate_usage_batches_total", "result" => "applied").increment(1);
                metrics::counter!("keygate_usage_rows_total").increment(rows);
                metrics::counter!("keygate_usage_skipped_rows_total", "reason" => "unknown_key").increment(skipped);
                metrics::counter!("keygate_usage_dropped_events_total").increment(batch.dropped);
                let lag = metrics::histogram!("keygate_usage_lag_seconds");
                for row in &batch.rows {
                    lag.record((now - (row.minute + 60)).max(0) as f64);
                }
            }
        }
        Ok(outcome)
    }

    /// A key's usage: 422 for a bad range, granularity or limit, 404 for an unknown key.
    pub async fn key_usage(&self, id: KeyId, query: UsageQuery) -> Result<KeyUsage, ServiceError> {
        let granularity = query.granularity.unwrap_or(Granularity::Hour);
        let to = query.to.unwrap_or_else(|| self.clock().now());
        let from = query.from.unwrap_or(to - granularity.default_span_secs());
        // Clamps, not refusals (a query whose times are each valid is answered): a range that ends
        // before it starts is empty, and a longer one than MAX_BUCKETS keeps its last MAX_BUCKETS
        // buckets. The answer's `from` and `to` say what was counted.
        let last_bucket = granularity.bucket(to - 1);
        let earliest = last_bucket - (MAX_BUCKETS - 1) * granularity.seconds();
        let from = if from >= to { to } else { granularity.bucket(from).max(earliest) };
        let limit = query.limit.unwrap_or(DEFAULT_OPERATIONS);
        if !(1..=MAX_OPERATIONS).contains(&limit) {
            return Err(invalid("invalid_limit", format!("limit must be between 1 and {MAX_OPERATIONS}")));
        }
        self.store().key(id).await?.ok_or(ServiceError::NotFound)?;
        let rows = self.store().usage_series(id, granularity, from, to).await?;
        let operations = self.store().usage_operations(id, granularity, from, to, limit).await?;
        Ok(KeyUsage { granularity, from, to, series: zero_filled(rows, granularity, from, to), operations })
    }

    /// A page of keys filtered and ordered by use.
    pub async fn list_keys(&self, listing: KeyListing) -> Result<Vec<KeyView>, ServiceError> {
        let listing = KeyListing { limit: listing.limit.clamp(1, 1_000), ..listing };
        let rows = self.store().keys_listed(&listing).await?;
        Ok(rows.into_iter().map(|row| self.view(row)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_buckets_are_zeros() {
        let counts = Outcomes { admitted: 1, ..Outcomes::default() };
        let rows = vec![UsageBucket { start: 120, counts }];
        let series = zero_filled(rows, Granularity::Minute, 60, 200);
        assert_eq!(series.iter().map(|b| b.start).collect::<Vec<_>>(), [60, 120, 180]);
        assert_eq!(series[1].counts, counts);
        assert_eq!(series[0].counts, Outcomes::default());
    }
}
