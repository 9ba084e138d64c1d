//! Storage of usage: the batches kept once, the rollups, `last_used_at`, pruning, and the key list by
//! use. Implemented for the SQL stores in `sql/usage.rs`; every [`super::Store`] is one.

use keygate_shared::usage::UsageBatch;
use keygate_shared::KeyId;

use super::{KeyRow, StoreError};
use crate::usage::{Granularity, IngestOutcome, KeyListing, Pruned, UsageBucket};

/// Usage reported by the edge.
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync {
    /// Keeps `batch` (already checked) at `now`, in one transaction: its id, its rows' sums at every
    /// granularity, and the keys' `last_used_at`. A batch id already kept changes nothing; rows for
    /// unknown key ids are skipped.
    async fn ingest_usage(&self, batch: &UsageBatch, now: i64) -> Result<IngestOutcome, StoreError>;
    /// A key's buckets starting in `[from, to)`, in time order; buckets without counts are absent.
    async fn usage_series(
        &self,
        key: KeyId,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageBucket>, StoreError>;
    /// A key's admitted requests by operation name over the buckets starting in `[from, to)`, most
    /// first (ties by name), at most `limit`.
    async fn usage_operations(
        &self,
        key: KeyId,
        granularity: Granularity,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64)>, StoreError>;
    /// Removes batch ids and buckets past their retention at `now`.
    async fn prune_usage(&self, now: i64) -> Result<Pruned, StoreError>;
    /// A page of keys, filtered and ordered as `listing` says.
    async fn keys_listed(&self, listing: &KeyListing) -> Result<Vec<KeyRow>, StoreError>;
}
