//! The ES256 keys that sign the origin's JWTs, on the control plane's side. They are made here and
//! nowhere else: edges never mint their own, so every edge verifies against one JWKS. The private half
//! is sealed at rest like an API key's secret (AES-256-GCM under a data key KMS wraps, with a context
//! naming the kid and the purpose), published as `GET /.well-known/jwks.json`, and handed to the
//! replicator sealed again for the edge.
//!
//! A key's life: a rotation makes key N+1, which is published at once and used by the edges from its
//! `activates_at` (now + the publish lead), so an origin that caches the JWKS has fetched it before it
//! meets a token signed with it. Key N is retired when N+1 activates, and stays published until every
//! token it signed has expired.

use std::sync::Arc;

use keygate_shared::{KeyId, OriginSigningKey, SealedSigningKey, SyncSecret};
use serde_json::json;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::envelope::{self, EnvelopeError};
use crate::kms::{Kms, KmsContext, KmsError};
use crate::rng::SharedRng;
use crate::store::{OriginKeyRow, Store, StoreError};

/// How keys are published and retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginKeyPolicy {
    /// How long a new key is published before the edges sign with it; also the JWKS's
    /// `Cache-Control: max-age`, so an origin's cached copy is never older than a key in use.
    pub publish_lead_secs: i64,
    /// The longest lifetime of a token the edges mint (the worker's `ORIGIN_JWT_TTL_SECS`).
    pub token_ttl_secs: i64,
}

impl Default for OriginKeyPolicy {
    fn default() -> Self {
        Self { publish_lead_secs: 60, token_ttl_secs: keygate_shared::jwt::DEFAULT_TTL_SECS }
    }
}

/// Slack for edge clocks and for an edge that picks up a new key a few seconds late.
const CLOCK_SLACK_SECS: i64 = 60;

impl OriginKeyPolicy {
    /// How long a retired key stays published: a token it signed just before retirement, reused by
    /// an isolate for its longest reuse time, must still verify until it expires.
    pub fn retain_secs(&self) -> i64 {
        self.token_ttl_secs + keygate_shared::jwt::MAX_REUSE_SECS + CLOCK_SLACK_SECS
    }
}

/// Where a key is in its life at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginKeyStatus {
    /// Published, not yet used to sign.
    Pending,
    /// What the edges sign with.
    Active,
    /// Superseded; still published while its tokens may be alive.
    Retired,
    /// Superseded long enough ago that no token it signed is alive; no longer published.
    Expired,
}

impl OriginKeyStatus {
    /// The word the API and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Expired => "expired",
        }
    }
}

/// The key edges sign with at `now`: the newest version that has activated.
fn active(rows: &[OriginKeyRow], now: i64) -> Option<&OriginKeyRow> {
    rows.iter().filter(|row| row.activates_at <= now).max_by_key(|row| row.version)
}

/// Each row's status at `now`.
pub fn statuses<'a>(
    rows: &'a [OriginKeyRow],
    now: i64,
    policy: &OriginKeyPolicy,
) -> Vec<(&'a OriginKeyRow, OriginKeyStatus)> {
    let active_version = active(rows, now).map(|row| row.version);
    rows.iter()
        .map(|row| {
            let status = if row.activates_at > now && active_version.is_none_or(|v| row.version > v) {
                OriginKeyStatus::Pending
            } else if Some(row.version) == active_version {
                OriginKeyStatus::Active
            } else {
                // Retired when the first newer key activated (or, for a key superseded before it ever
                // activated, when it was superseded).
                let retired_at = rows
                    .iter()
                    .filter(|newer| newer.version > row.version && newer.activates_at <= now)
                    .map(|newer| newer.activates_at)
                    .min()
                    .unwrap_or(now);
                if now < retired_at + policy.retain_secs() {
                    OriginKeyStatus::Retired
                } else {
                    OriginKeyStatus::Expired
                }
            };
            (row, status)
        })
        .collect()
}

/// The JWKS document: every key that is pending, active or retired.
pub fn jwks(rows: &[OriginKeyRow], now: i64, policy: &OriginKeyPolicy) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = statuses(rows, now, policy)
        .into_iter()
        .filter(|(_, status)| *status != OriginKeyStatus::Expired)
        .filter_map(|(row, _)| serde_json::from_str(&row.public_jwk).ok())
        .collect();
    json!({ "keys": keys })
}

/// The keys an edge should hold at `now`: the active one and every newer, pending one.
pub fn for_edge(rows: &[OriginKeyRow], now: i64) -> Vec<&OriginKeyRow> {
    let floor = active(rows, now).map_or(i64::MIN, |row| row.version);
    rows.iter().filter(|row| row.version >= floor).collect()
}

/// Why a signing key could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum OriginKeyError {
    /// KMS failed.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key did not open, or could not be sealed.
    #[error("an origin signing key could not be sealed or opened")]
    Sealed(#[from] EnvelopeError),
    /// A stored key opened but is not a P-256 key.
    #[error("a stored origin signing key is corrupt")]
    Corrupt,
}

/// Makes, opens and seals origin signing keys. Holds no key: each is read, used and dropped.
#[derive(Clone)]
pub struct OriginKeys {
    store: Arc<dyn Store>,
    kms: Arc<dyn Kms>,
    clock: Arc<dyn Clock>,
    rng: SharedRng,
    policy: OriginKeyPolicy,
}

impl std::fmt::Debug for OriginKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginKeys").field("policy", &self.policy).finish_non_exhaustive()
    }
}

fn aad(kid: KeyId) -> Vec<u8> {
    let mut aad = b"keygate:origin-signing-key:v1:".to_vec();
    aad.extend_from_slice(kid.to_string().as_bytes());
    aad
}

impl OriginKeys {
    /// Over the service's parts; `rng` is shared with it.
    pub fn new(
        store: Arc<dyn Store>,
        kms: Arc<dyn Kms>,
        clock: Arc<dyn Clock>,
        rng: SharedRng,
        policy: OriginKeyPolicy,
    ) -> Self {
        Self { store, kms, clock, rng, policy }
    }

    /// The publishing policy.
    pub fn policy(&self) -> &OriginKeyPolicy {
        &self.policy
    }

    /// Every stored key, oldest first.
    pub async fn rows(&self) -> Result<Vec<OriginKeyRow>, OriginKeyError> {
        Ok(self.store.origin_keys().await?)
    }

    /// A new key as version `version`, used from `activates_at`, sealed for storage (one KMS call). The
    /// caller stores it.
    pub async fn make(&self, version: i64, activates_at: i64) -> Result<OriginKeyRow, OriginKeyError> {
        let now_ms = self.clock.now_millis();
        let kid = self.rng.with(|rng| KeyId::new_v7(u64::try_from(now_ms).unwrap_or(0), rng));
        let key = self.rng.with(|rng| OriginSigningKey::generate(kid.to_string(), &mut &mut *rng));
        let (data_key, wrapped) = self.kms.generate_data_key(&KmsContext::origin_signing_key(kid)).await?;
        let scalar = key.to_scalar();
        let ciphertext = self.rng.with(|rng| envelope::seal_bytes(&data_key, scalar.as_slice(), &aad(kid), rng))?;
        let public_jwk = serde_json::to_string(&key.public_jwk()).map_err(|_| OriginKeyError::Corrupt)?;
        Ok(OriginKeyRow {
            version,
            kid,
            public_jwk,
            ciphertext,
            wrapped_data_key: wrapped.blob,
            kms_key_id: wrapped.kms_key_id,
            created_at: now_ms.div_euclid(1000),
            activates_at,
        })
    }

    /// Opens a stored key (one KMS call).
    pub async fn open(&self, row: &OriginKeyRow) -> Result<OriginSigningKey, OriginKeyError> {
        let data_key = self.kms.decrypt(&row.wrapped(), &KmsContext::origin_signing_key(row.kid)).await?;
        let scalar: Zeroizing<Vec<u8>> = envelope::open_bytes(&data_key, &row.ciphertext, &aad(row.kid))?;
        OriginSigningKey::from_scalar(row.kid.to_string(), &scalar).map_err(|_| OriginKeyError::Corrupt)
    }

    /// The keys an edge should hold now, each opened and sealed again under the edge's sync secret,
    /// and the newest version among them (what the replicator remembers as delivered).
    pub async fn sealed_for_edge(&self, secret: &SyncSecret) -> Result<(Vec<SealedSigningKey>, i64), OriginKeyError> {
        let rows = self.rows().await?;
        let now = self.clock.now();
        let mut sealed = Vec::new();
        for row in for_edge(&rows, now) {
            let key = self.open(row).await?;
            let version = u64::try_from(row.version).map_err(|_| OriginKeyError::Corrupt)?;
            let for_edge = self
                .rng
                .with(|rng| key.seal_for_edge(secret, version, row.activates_at, rng))
                .map_err(|_| OriginKeyError::Corrupt)?;
            sealed.push(for_edge);
        }
        let newest = rows.last().map_or(0, |row| row.version);
        Ok((sealed, newest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i64, activates_at: i64) -> OriginKeyRow {
        OriginKeyRow {
            version,
            kid: KeyId::from(u128::try_from(version).unwrap()),
            public_jwk: format!(r#"{{"kid":"{version}"}}"#),
            ciphertext: vec![],
            wrapped_data_key: vec![],
            kms_key_id: String::new(),
            created_at: 0,
            activates_at,
        }
    }

    fn status_words(rows: &[OriginKeyRow], now: i64) -> Vec<&'static str> {
        statuses(rows, now, &OriginKeyPolicy::default()).into_iter().map(|(_, s)| s.as_str()).collect()
    }

    #[test]
    fn a_rotation_publishes_first_activates_later_and_retires_after_the_last_token() {
        let policy = OriginKeyPolicy::default();
        let retain = policy.retain_secs();
        let rows = [row(1, 0), row(2, 1_000)];
        assert_eq!(status_words(&rows, 999), ["active", "pending"]);
        assert_eq!(for_edge(&rows, 999).iter().map(|r| r.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(status_words(&rows, 1_000), ["retired", "active"]);
        assert_eq!(for_edge(&rows, 1_000).iter().map(|r| r.version).collect::<Vec<_>>(), [2]);
        assert_eq!(status_words(&rows, 1_000 + retain - 1), ["retired", "active"]);
        assert_eq!(status_words(&rows, 1_000 + retain), ["expired", "active"]);
        assert_eq!(jwks(&rows, 999, &policy)["keys"].as_array().unwrap().len(), 2);
        assert_eq!(jwks(&rows, 1_000 + retain, &policy), json!({"keys": [{"kid": "2"}]}));
    }

    #[test]
    fn an_immediate_rotation_overtakes_a_pending_key() {
        // Version 2 waits for t=1000; version 3 is made at t=500 to take over at once.
        let rows = [row(1, 0), row(2, 1_000), row(3, 500)];
        assert_eq!(status_words(&rows, 500), ["retired", "retired", "active"]);
        assert_eq!(for_edge(&rows, 500).iter().map(|r| r.version).collect::<Vec<_>>(), [3]);
        assert_eq!(status_words(&rows, 2_000), ["expired", "expired", "active"]);
    }

    #[test]
    fn the_retention_covers_a_token_minted_at_retirement_and_reused() {
        let policy = OriginKeyPolicy { publish_lead_secs: 60, token_ttl_secs: 300 };
        assert!(policy.retain_secs() >= 300 + keygate_shared::jwt::MAX_REUSE_SECS);
    }
}
