//! Usage the edge reports: what is kept, at which granularities and for how long, the report's checks
//! beyond its wire limits, the ingest outcome and the task that prunes what is past its retention.
//!
//! The SQL lives in `store::sql::usage`; the HTTP side in `api::usage`.

pub mod pruner;
pub mod rollup;
pub mod service;

use std::sync::Arc;

use keygate_shared::usage::UsageBatch;
use keygate_shared::KeyId;
use serde::Deserialize;

use crate::clock::Clock;
use crate::store::{Store, StoreError};

/// Seconds in an hour.
const HOUR: i64 = 3_600;
/// Seconds in a day.
const DAY: i64 = 86_400;
/// How long a batch id is kept, so a retried flush is recognised: longer than any edge retries.
pub const BATCH_RETENTION_SECS: i64 = 2 * DAY;
/// The most buckets one usage query answers.
pub const MAX_BUCKETS: i64 = 1_500;
/// How far past the receiver's clock a row's minute may start (the sync clock window).
pub const MAX_FUTURE_SECS: i64 = keygate_shared::sync::MAX_CLOCK_SKEW_SECS;

/// The size of a usage bucket; each has its own tables and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One minute, kept 48 hours.
    Minute,
    /// One hour, kept 90 days.
    Hour,
    /// One UTC day, kept 2 years.
    Day,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Self; 3] = [Self::Minute, Self::Hour, Self::Day];

    /// The bucket's length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => HOUR,
            Self::Day => DAY,
        }
    }

    /// How long a bucket is kept after its start, in seconds.
    pub fn retention_secs(self) -> i64 {
        match self {
            Self::Minute => 2 * DAY,
            Self::Hour => 90 * DAY,
            Self::Day => 730 * DAY,
        }
    }

    /// The oldest bucket start still kept at `now`: a bucket that started more than the retention ago
    /// is pruned.
    pub fn keep_from(self, now: i64) -> i64 {
        now - self.retention_secs()
    }

    /// The start of the bucket holding `at`.
    pub fn bucket(self, at: i64) -> i64 {
        at - at.rem_euclid(self.seconds())
    }

    /// The range a query without `from` covers, ending at `to`.
    pub fn default_span_secs(self) -> i64 {
        match self {
            Self::Minute => HOUR,
            Self::Hour => DAY,
            Self::Day => 30 * DAY,
        }
    }

    /// The name in table names and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

/// The four outcomes the edge counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Let through to the origin.
    pub admitted: i64,
    /// 403.
    pub forbidden: i64,
    /// 429.
    pub rate_limited: i64,
    /// 401 for a known key id.
    pub refused: i64,
}

impl Outcomes {
    fn add(&mut self, other: Self) {
        self.admitted += other.admitted;
        self.forbidden += other.forbidden;
        self.rate_limited += other.rate_limited;
        self.refused += other.refused;
    }
}

/// One bucket of a key's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageBucket {
    /// The bucket's start, unix seconds.
    pub start: i64,
    /// Its counts.
    pub counts: Outcomes,
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored now.
    Applied {
        /// Rows counted.
        rows: u64,
        /// Rows for key ids this control plane does not know, not counted.
        skipped: u64,
    },
    /// This batch id was already kept: nothing changed.
    Duplicate,
}

/// Rows removed by one pruning pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Batch ids past [`BATCH_RETENTION_SECS`].
    pub batches: u64,
    /// Count and operation rows past their granularity's retention.
    pub rollups: u64,
}

/// How the key list is ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrder {
    /// Creation order (key id): the default.
    #[default]
    Created,
    /// Most recently used first, never-used keys last, ties in creation order.
    LastUsed,
}

/// Where a page of the key list continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCursor {
    /// After this key id (creation order).
    Created(KeyId),
    /// After this (last use or -1 for never, key id) (last-use order).
    LastUsed(i64, KeyId),
}

/// A filtered, ordered page of the key list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyListing {
    /// The order.
    pub order: KeyOrder,
    /// Only keys that were last used before this time (unix seconds), or never used and created before it.
    pub unused_since: Option<i64>,
    /// Continue after this position.
    pub after: Option<KeyCursor>,
    /// Page size.
    pub limit: i64,
}

/// Why a batch's content is refused past its wire limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The wire limits ([`UsageBatch::validate`]).
    #[error("{0}")]
    Limits(keygate_shared::usage::UsageError),
    /// A row's minute starts after the receiver's clock allows.
    #[error("a row's minute is in the future")]
    FutureMinute,
}

impl BatchError {
    /// A stable, greppable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Limits(error) => error.code(),
            Self::FutureMinute => "future_minute",
        }
    }
}

/// Checks a batch's content at `now`: the wire limits, and no minute later than the clock window.
pub fn check_batch(batch: &UsageBatch, now: i64) -> Result<(), BatchError> {
    batch.validate().map_err(BatchError::Limits)?;
    if batch.rows.iter().any(|row| row.minute > now + MAX_FUTURE_SECS) {
        return Err(BatchError::FutureMinute);
    }
    Ok(())
}

/// Prunes every usage table at the clock's now.
pub async fn prune(store: &Arc<dyn Store>, clock: &Arc<dyn Clock>) -> Result<Pruned, StoreError> {
    let pruned = store.prune_usage(clock.now()).await?;
    metrics::counter!("keygate_usage_pruned_rows_total").increment(pruned.batches + pruned.rollups);
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_retention() {
        assert_eq!(Granularity::Hour.bucket(7_199), 3_600);
        assert_eq!(Granularity::Day.bucket(DAY + 5), DAY);
        assert_eq!(Granularity::Minute.bucket(-1), -60);
        assert_eq!(Granularity::Minute.keep_from(10 * DAY + 30), 8 * DAY + 30);
    }
}
