//! Replication to the edge: drains the outbox in sequence order and pushes signed batches to
//! `POST {edge}/_keygate/sync`, retrying with backoff while the edge is down; `resync` sends every
//! key's current record. Each record carries its outbox row's sequence number, so the edge keeps only
//! the newest and a replay never undoes a change.
//!
//! With [`Replicator::with_origin_keys`] it also hands the edge the origin-token signing keys, sealed
//! under a key derived from the sync secret: after start-up, after each rotation, and on every resync.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keygate_shared::{sync, KeyRecord, SyncPayload, SyncSecret};

use crate::clock::Clock;
use crate::origin_keys::{OriginKeyError, OriginKeys};
use crate::store::{OutboxRow, Store, StoreError};

/// Records per push.
pub const BATCH: i64 = 200;
/// How often the outbox is looked at when nothing signals a commit (a safety net for missed signals).
const POLL: Duration = Duration::from_millis(250);
/// First retry delay after a failed push; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The edge could not be reached.
    #[error("the edge is unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The edge answered with an error status.
    #[error("the edge refused the push with status {0}")]
    Refused(u16),
    /// The outbox could not be read.
    #[error("the outbox could not be read")]
    Store(#[from] StoreError),
    /// An outbox row does not hold a record.
    #[error("outbox row {0} does not hold a key record")]
    Corrupt(i64),
    /// The signing keys could not be read or opened.
    #[error("the origin signing keys could not be prepared: {0}")]
    OriginKeys(#[from] OriginKeyError),
}

/// Pushes outbox records to one edge.
#[derive(Debug, Clone)]
pub struct Replicator {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    sync_url: String,
    secret: Arc<SyncSecret>,
    origin_keys: Option<OriginKeys>,
    /// The newest signing-key version the edge has accepted (0: none yet).
    delivered_key_version: Arc<AtomicI64>,
}

impl Replicator {
    /// A replicator from `store` to the edge at `edge_url`, signing with `secret`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, edge_url: &str, secret: SyncSecret) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let sync_url = format!("{}{}", edge_url.trim_end_matches('/'), sync::SYNC_PATH);
        Self {
            store,
            clock,
            http,
            sync_url,
            secret: Arc::new(secret),
            origin_keys: None,
            delivered_key_version: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Also keeps the edge supplied with the origin-token signing keys.
    pub fn with_origin_keys(self, origin_keys: OriginKeys) -> Self {
        Self { origin_keys: Some(origin_keys), ..self }
    }

    /// Pushes the signing keys the edge should hold, if it has not accepted the newest yet (or always,
    /// with `force`).
    async fn push_signing_keys(&self, force: bool) -> Result<(), PushError> {
        let Some(origin_keys) = &self.origin_keys else {
            return Ok(());
        };
        let delivered = self.delivered_key_version.load(Ordering::Acquire);
        let newest = self.store.origin_keys().await?.last().map_or(0, |row| row.version);
        if newest == 0 || (newest <= delivered && !force) {
            return Ok(());
        }
        let (signing_keys, newest) = origin_keys.sealed_for_edge(&self.secret).await?;
        self.send(&SyncPayload { records: Vec::new(), signing_keys }).await?;
        self.delivered_key_version.fetch_max(newest, Ordering::AcqRel);
        metrics::counter!("keygate_replication_signing_key_pushes_total").increment(1);
        Ok(())
    }

    /// Sends `rows` as one signed push.
    async fn push(&self, rows: &[OutboxRow]) -> Result<(), PushError> {
        let records = rows
            .iter()
            .map(|row| {
                let mut record: KeyRecord =
                    serde_json::from_str(&row.record).map_err(|_| PushError::Corrupt(row.seq))?;
                record.seq = u64::try_from(row.seq).map_err(|_| PushError::Corrupt(row.seq))?;
                Ok(record)
            })
            .collect::<Result<Vec<_>, PushError>>()?;
        self.send(&SyncPayload { records, signing_keys: Vec::new() }).await
    }

    /// Signs and sends one payload.
    async fn send(&self, payload: &SyncPayload) -> Result<(), PushError> {
        let body = serde_json::to_vec(payload).map_err(|_| PushError::Corrupt(0))?;
        let now = self.clock.now();
        let response = self
            .http
            .post(&self.sync_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sync::TIMESTAMP_HEADER, now.to_string())
            .header(sync::SIGNATURE_HEADER, self.secret.sign(now, &body))
            .body(body)
            .send()
            .await
            .map_err(PushError::Unreachable)?;
        if !response.status().is_success() {
            return Err(PushError::Refused(response.status().as_u16()));
        }
        Ok(())
    }

    /// Pushes everything undelivered, oldest first; returns how many records went.
    pub async fn drain(&self) -> Result<u64, PushError> {
        self.push_signing_keys(false).await?;
        let mut sent = 0;
        loop {
            let rows = self.store.outbox_pending(BATCH).await?;
            let Some(last) = rows.last() else {
                return Ok(sent);
            };
            self.push(&rows).await?;
            self.store.outbox_delivered(last.seq, self.clock.now()).await?;
            metrics::counter!("keygate_replication_records_total").increment(rows.len() as u64);
            sent += rows.len() as u64;
        }
    }

    /// Sends every key's current record (the edge ignores what it already holds); returns how many.
    pub async fn resync(&self) -> Result<u64, PushError> {
        self.push_signing_keys(true).await?;
        let mut after = None;
        let mut sent = 0;
        loop {
            let rows = self.store.outbox_latest(after, BATCH).await?;
            let Some(last) = rows.last() else {
                return Ok(sent);
            };
            self.push(&rows).await?;
            after = Some(last.key_id);
            sent += rows.len() as u64;
        }
    }

    async fn record_lag(&self) {
        if let Ok(pending) = self.store.outbox_pending(1).await {
            let lag = pending.first().map_or(0, |row| (self.clock.now() - row.created_at).max(0));
            metrics::gauge!("keygate_replication_lag_seconds").set(lag as f64);
        }
    }

    /// Runs until `shutdown` completes: drains on every commit (or every 250 ms), and after a failure
    /// retries with exponential backoff up to 10 s. The edge being down loses nothing: the records
    /// wait in the outbox.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let signal = self.store.outbox_signal();
        let mut backoff = FIRST_BACKOFF;
        tokio::pin!(shutdown);
        loop {
            // Registered before draining, so a commit during the drain is not missed.
            let committed = signal.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            let wait = match self.drain().await {
                Ok(_) => {
                    backoff = FIRST_BACKOFF;
                    metrics::counter!("keygate_replication_pushes_total", "outcome" => "ok").increment(1);
                    None
                }
                Err(error) => {
                    tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "replication push failed");
                    metrics::counter!("keygate_replication_pushes_total", "outcome" => "failed").increment(1);
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Some(wait)
                }
            };
            self.record_lag().await;
            match wait {
                Some(delay) => tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(delay) => {}
                },
                None => tokio::select! {
                    () = &mut shutdown => return,
                    () = &mut committed => {}
                    () = tokio::time::sleep(POLL) => {}
                },
            }
        }
    }
}
