//! The ES256 keys that sign the origin's JWTs, as the edge holds them: sealed, exactly as the control
//! plane pushed them, in KV under one name ([`SIGNING_KEYS_NAME`]); opened only in an isolate's memory,
//! to be imported into WebCrypto.
//!
//! A push never takes the edge back: a key whose version is already held is ignored, and the held list
//! keeps only the newest key already active plus the newer ones still pending. The key
//! that signs is the newest whose `activates_at` has come: a pending key is published in the JWKS
//! first, so origins know it before they see a token signed with it.

use keygate_shared::SealedSigningKey;

use crate::check::StoreFault;

/// The KV name of the held keys. Key ids are 22 base62 digits, so no record can be stored under it.
pub const SIGNING_KEYS_NAME: &str = "keygate:signing-keys";
/// How long an isolate signs with the keys it read before reading KV again: a rotation is picked up
/// within seconds, without a KV read per request.
pub const REREAD_MS: i64 = 2_000;

/// Where the edge keeps its sealed signing keys (Workers KV in the worker).
#[allow(async_fn_in_trait)] // The worker is single-threaded: its futures need not be Send.
pub trait SigningKeyStore {
    /// The held keys, oldest first; none if nothing was ever stored.
    async fn signing_keys(&self) -> Result<Vec<SealedSigningKey>, StoreFault>;
    /// Replaces the held keys with `keys`.
    async fn store_signing_keys(&self, keys: &[SealedSigningKey]) -> Result<(), StoreFault>;
}

/// The held keys after a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// What to hold now, by version, oldest first.
    pub keys: Vec<SealedSigningKey>,
    /// Received keys that are held now and were not before.
    pub accepted: usize,
    /// Whether `keys` differs from what was held (if not, nothing needs writing).
    pub changed: bool,
}

/// `held` with `received` applied at `now` (unix seconds), by the rule in the module header.
pub fn merge(held: &[SealedSigningKey], received: &[SealedSigningKey], now: i64) -> Merged {
    let mut keys = held.to_vec();
    for key in received {
        // A version names one key for good: a replay or a re-sealed copy of a held one changes nothing.
        // (Matching by kid instead once let a pending key push out the active one under its kid: found by
        // the sync_verify fuzz target.)
        if keys.iter().any(|k| k.version == key.version) {
            continue;
        }
        keys.push(key.clone());
    }
    // Deterministic order, so that an unchanged list compares equal and is not rewritten.
    keys.sort_by(|a, b| (a.version, a.activates_at, &a.kid).cmp(&(b.version, b.activates_at, &b.kid)));
    if let Some(floor) = active(&keys, now).map(|k| k.version) {
        keys.retain(|k| k.version >= floor);
    }
    let accepted = keys.iter().filter(|k| received.contains(k) && !held.contains(k)).count();
    let changed = keys.as_slice() != held;
    Merged { keys, accepted, changed }
}

/// The key that signs at `now`: the newest whose activation time has come.
pub fn active(keys: &[SealedSigningKey], now: i64) -> Option<&SealedSigningKey> {
    keys.iter().filter(|k| k.activates_at <= now).max_by_key(|k| k.version)
}

/// An isolate's signing keys: the sealed list as last read (or pushed to this isolate), so that a
/// request does not read KV. (The worker keeps the active key imported into WebCrypto.)
#[derive(Debug, Default)]
pub struct HeldSigningKeys {
    sealed: Vec<SealedSigningKey>,
    /// When KV is next read; `None` before the first read.
    next_read_ms: Option<i64>,
}

impl HeldSigningKeys {
    /// Whether to read KV before signing at `now_ms`.
    pub fn needs_read(&self, now_ms: i64) -> bool {
        self.next_read_ms.is_none_or(|next| now_ms >= next)
    }

    /// Takes what KV (or a push this isolate applied) holds at `now_ms`.
    pub fn replace(&mut self, keys: Vec<SealedSigningKey>, now_ms: i64) {
        self.sealed = keys;
        self.next_read_ms = Some(now_ms.saturating_add(REREAD_MS));
    }

    /// A KV read starts at `now_ms`. Requests meanwhile keep signing with what is held rather than
    /// reading too; before the first read there is nothing to sign with, so they read as well.
    pub fn reading(&mut self, now_ms: i64) {
        if self.next_read_ms.is_some() {
            self.next_read_ms = Some(now_ms.saturating_add(REREAD_MS));
        }
    }

    /// A KV read failed at `now_ms`: keep signing with what is held, and try again later rather than
    /// on every request.
    pub fn read_failed(&mut self, now_ms: i64) {
        self.next_read_ms = Some(now_ms.saturating_add(REREAD_MS));
    }

    /// The held key that signs at `now`, still sealed.
    pub fn active(&self, now: i64) -> Option<&SealedSigningKey> {
        active(&self.sealed, now)
    }

    /// The sealed keys held, oldest first.
    pub fn sealed(&self) -> &[SealedSigningKey] {
        &self.sealed
    }
}
