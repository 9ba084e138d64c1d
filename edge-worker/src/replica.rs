//! The edge's side of replication: a signed push from the control plane, applied record by record,
//! each only if its `seq` is higher than the one held — so a replay or a reordering never undoes a
//! change, and a revocation is never undone. The signing keys a push carries are merged into the held
//! ones by the rule in [`crate::signing_keys`], which never goes back either.

use keygate_shared::{KeyRecord, SyncError, SyncPayload, SyncSecret};

use crate::check::{RecordSource, StoreFault};
use crate::signing_keys::{merge, SigningKeyStore};

/// Where the edge keeps records (Workers KV in the worker).
#[allow(async_fn_in_trait)] // The worker is single-threaded: its futures need not be Send.
pub trait RecordStore: RecordSource {
    /// Stores `record` under its key id, replacing what was there.
    async fn store(&self, record: &KeyRecord) -> Result<(), StoreFault>;
}

/// What a push changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Records stored.
    pub applied: usize,
    /// Records older than (or as old as) what the edge holds.
    pub ignored: usize,
    /// Signing keys the edge holds now and did not before (absent from the answer when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub signing_keys: usize,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

/// Why a push is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRefused {
    /// Missing, stale or forged signature: 401.
    Unauthorized(SyncError),
    /// Signed, but not a sync payload, or carrying a signing key that does not open with this edge's
    /// sync secret: 400, and nothing of it is stored.
    BadPayload,
    /// The record store failed: 503 (the control plane retries).
    Unavailable,
}

/// Verifies and applies one push at `now`.
///
/// Every signing key it carries must open with `secret` before anything is stored: a key the edge could
/// not sign with would otherwise replace a working one. Keys are stored sealed, as received.
pub async fn apply_push<S: RecordStore + SigningKeyStore>(
    store: &S,
    secret: &SyncSecret,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<Applied, PushRefused> {
    let timestamp = timestamp.ok_or(PushRefused::Unauthorized(SyncError::BadTimestamp))?;
    let signature = signature.ok_or(PushRefused::Unauthorized(SyncError::BadSignature))?;
    secret.verify(timestamp, signature, body, now).map_err(PushRefused::Unauthorized)?;
    let payload: SyncPayload = serde_json::from_slice(body).map_err(|_| PushRefused::BadPayload)?;
    if payload.signing_keys.iter().any(|key| key.open_private_jwk(secret).is_err()) {
        return Err(PushRefused::BadPayload);
    }
    let mut outcome = Applied { applied: 0, ignored: 0, signing_keys: 0 };
    for record in &payload.records {
        let held = store.record(&record.key_id.to_string()).await.map_err(|_| PushRefused::Unavailable)?;
        if held.is_some_and(|held| held.seq >= record.seq) {
            outcome.ignored += 1;
            continue;
        }
        store.store(record).await.map_err(|_| PushRefused::Unavailable)?;
        outcome.applied += 1;
    }
    if !payload.signing_keys.is_empty() {
        let held = store.signing_keys().await.map_err(|_| PushRefused::Unavailable)?;
        let merged = merge(&held, &payload.signing_keys, now);
        if merged.changed {
            store.store_signing_keys(&merged.keys).await.map_err(|_| PushRefused::Unavailable)?;
        }
        outcome.signing_keys = merged.accepted;
    }
    Ok(outcome)
}

/// A refusal as the control plane sees it: status and JSON body.
pub fn push_refusal_response(refused: &PushRefused) -> (u16, String) {
    let (status, code) = match refused {
        PushRefused::Unauthorized(error) => (401, error.code()),
        PushRefused::BadPayload => (400, "bad_payload"),
        PushRefused::Unavailable => (503, "unavailable"),
    };
    (status, serde_json::json!({"error": {"code": code}}).to_string())
}
