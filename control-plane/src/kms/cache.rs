//! The opt-in data-key cache: one data key from KMS seals several secrets, bounded by uses and age as
//! the AWS Encryption SDK bounds the entries of its caching materials manager. Off unless configured.
//!
//! A shared data key's encryption context cannot name one API key, so it names the data key's own
//! random id (`keygate:data_key_id`), which each secret row records; the per-secret AES-GCM AAD still
//! binds key id and generation. The trade: one KMS call per `max_uses` keys, KMS audit logs that name
//! the data key rather than the API key, and a plaintext data key held in memory up to `max_age`.

use std::sync::Arc;

use async_trait::async_trait;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use super::{DataKey, Kms, KmsContext, KmsError, WrappedKey, DATA_KEY_LEN};
use crate::clock::Clock;

/// The most secrets one cached data key may seal: far below the 2^32 random 96-bit nonces AES-GCM allows.
pub const MAX_USES_LIMIT: u64 = 1 << 20;

/// How long and how often a cached data key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Secrets one data key may seal (1 to [`MAX_USES_LIMIT`]).
    pub max_uses: u64,
    /// Seconds a data key stays in the cache.
    pub max_age_secs: i64,
}

struct Entry {
    key: Zeroizing<[u8; DATA_KEY_LEN]>,
    wrapped: WrappedKey,
    born_millis: i64,
    uses: u64,
}

/// A [`Kms`] that reuses generated data keys within [`CacheLimits`]; decrypt and rewrap pass through.
pub struct CachingKms {
    inner: Arc<dyn Kms>,
    limits: CacheLimits,
    clock: Arc<dyn Clock>,
    // A tokio lock, held across the KMS call on a miss, so a burst makes one call rather than many.
    entry: tokio::sync::Mutex<Option<Entry>>,
}

impl std::fmt::Debug for CachingKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingKms").field("inner", &self.inner).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl CachingKms {
    /// Caches `inner`'s data keys within `limits` (`max_uses` is clamped to 1..=[`MAX_USES_LIMIT`]).
    pub fn new(inner: Arc<dyn Kms>, limits: CacheLimits, clock: Arc<dyn Clock>) -> Self {
        let limits = CacheLimits { max_uses: limits.max_uses.clamp(1, MAX_USES_LIMIT), ..limits };
        Self { inner, limits, clock, entry: tokio::sync::Mutex::new(None) }
    }
}

#[async_trait]
impl Kms for CachingKms {
    fn provider(&self) -> &'static str {
        self.inner.provider()
    }

    fn current_key_id(&self) -> &str {
        self.inner.current_key_id()
    }

    async fn generate_data_key(&self, context: &KmsContext) -> Result<(DataKey, WrappedKey), KmsError> {
        let mut entry = self.entry.lock().await;
        let now = self.clock.now_millis();
        if let Some(cached) = entry.as_mut() {
            let fresh = now - cached.born_millis < self.limits.max_age_secs * 1000;
            if fresh && cached.uses < self.limits.max_uses && cached.wrapped.kms_key_id == self.inner.current_key_id() {
                cached.uses += 1;
                let key = DataKey::from_slice(cached.key.as_ref()).ok_or(KmsError::Malformed)?;
                return Ok((key, cached.wrapped.clone()));
            }
        }
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let shared = KmsContext { shared_id: Some(hex::encode(id)), ..context.clone() };
        let (key, wrapped) = self.inner.generate_data_key(&shared).await?;
        let mut copy = Zeroizing::new([0u8; DATA_KEY_LEN]);
        copy.copy_from_slice(key.expose());
        *entry = Some(Entry { key: copy, wrapped: wrapped.clone(), born_millis: now, uses: 1 });
        Ok((key, wrapped))
    }

    async fn decrypt(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<DataKey, KmsError> {
        self.inner.decrypt(wrapped, context).await
    }

    async fn rewrap(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<WrappedKey, KmsError> {
        self.inner.rewrap(wrapped, context).await
    }
}

#[cfg(test)]
mod tests {
    use keygate_shared::KeyId;

    use super::*;
    use crate::clock::ManualClock;
    use crate::kms::local::LocalKms;

    #[tokio::test]
    async fn data_keys_are_reused_within_their_uses_and_age() {
        let clock = Arc::new(ManualClock::at(1_000));
        let inner: Arc<dyn Kms> = Arc::new(LocalKms::from_master_key(&[3; 32], OsRng));
        let kms = CachingKms::new(inner.clone(), CacheLimits { max_uses: 3, max_age_secs: 10 }, clock.clone());
        let mut ids = vec![];
        for n in 0..7u128 {
            let (key, wrapped) = kms.generate_data_key(&KmsContext::api_key_secret(KeyId::from_u128(n))).await.unwrap();
            // Whoever the key was made for, it opens under its shared context, and only under it.
            let opened =
                inner.decrypt(&wrapped, &KmsContext::for_wrapped(KeyId::from_u128(99), &wrapped)).await.unwrap();
            assert_eq!(opened.expose(), key.expose());
            assert!(inner.decrypt(&wrapped, &KmsContext::api_key_secret(KeyId::from_u128(n))).await.is_err());
            ids.push(wrapped.shared_id.unwrap());
        }
        assert_eq!(ids[0], ids[2]);
        assert_ne!(ids[2], ids[3], "a fourth use takes a new data key");
        assert_eq!(ids[3], ids[5]);
        assert_ne!(ids[5], ids[6]);
        clock.advance(10);
        let (_, wrapped) = kms.generate_data_key(&KmsContext::api_key_secret(KeyId::from_u128(7))).await.unwrap();
        assert_ne!(wrapped.shared_id.unwrap(), ids[6], "an entry older than max_age is not used");
        assert!(!format!("{kms:?}").contains("key:"));
    }
}
