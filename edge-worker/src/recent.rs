//! The isolate's recent records. One worker isolate serves many requests; reading Workers KV for each
//! is most of what a check costs, so records read from KV are kept in memory for a short time (`ttl_ms`,
//! the `RECORD_CACHE_MS` var, 1 s by default), and a push this isolate receives replaces them at once.
//!
//! The time bound is what keeps revocation prompt: an isolate that did not receive the push learns of
//! it at most `ttl_ms` after its KV read does. Only the request path reads through this; a push compares
//! sequence numbers against KV itself, never against a copy that may be older.

use std::collections::HashMap;

use keygate_shared::KeyRecord;

/// How long a record read from KV is used, unless the var says otherwise.
pub const DEFAULT_TTL_MS: i64 = 1_000;
/// Records held at most; a full map first drops what has expired, then everything.
pub const CAPACITY: usize = 10_000;
/// How often what has expired is dropped, so that a long-lived isolate holds only the records of the
/// last few seconds rather than filling up to `CAPACITY`.
pub const SWEEP_EVERY_MS: i64 = 10_000;

/// A record (or the absence of one) and when it stops being used.
#[derive(Debug, Clone)]
struct Held {
    record: Option<KeyRecord>,
    until_ms: i64,
}

/// Recent records by key id (the 22-digit form), each until its time is up.
#[derive(Debug, Clone)]
pub struct RecentRecords {
    entries: HashMap<String, Held>,
    ttl_ms: i64,
    capacity: usize,
    /// When `keep` next drops expired entries.
    next_sweep_ms: i64,
}

impl Default for RecentRecords {
    fn default() -> Self {
        Self::new(DEFAULT_TTL_MS, CAPACITY)
    }
}

impl RecentRecords {
    /// Keeps records for `ttl_ms` (0 keeps none), at most `capacity` of them.
    pub fn new(ttl_ms: i64, capacity: usize) -> Self {
        Self { entries: HashMap::new(), ttl_ms: ttl_ms.max(0), capacity, next_sweep_ms: 0 }
    }

    /// Changes the time records are kept; what is held now keeps its own end.
    pub fn set_ttl_ms(&mut self, ttl_ms: i64) {
        self.ttl_ms = ttl_ms.max(0);
    }

    /// What is known of `key_id` at `now_ms`: `Some(None)` is a recent "no such record", `None` means
    /// read KV.
    pub fn get(&self, key_id: &str, now_ms: i64) -> Option<Option<KeyRecord>> {
        self.entries.get(key_id).filter(|held| now_ms < held.until_ms).map(|held| held.record.clone())
    }

    /// Keeps what a KV read returned at `now_ms`.
    pub fn keep(&mut self, key_id: &str, record: Option<KeyRecord>, now_ms: i64) {
        if self.ttl_ms == 0 {
            return;
        }
        if now_ms >= self.next_sweep_ms {
            self.entries.retain(|_, held| now_ms < held.until_ms);
            self.next_sweep_ms = now_ms.saturating_add(SWEEP_EVERY_MS);
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(key_id) {
            self.entries.retain(|_, held| now_ms < held.until_ms);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(key_id.to_owned(), Held { record, until_ms: now_ms + self.ttl_ms });
    }

    /// A push stored `record` in KV: what this isolate holds for its key changes now, unless it already
    /// holds a newer one.
    pub fn stored(&mut self, record: &KeyRecord, now_ms: i64) {
        let key_id = record.key_id.to_string();
        let newer_held =
            self.entries.get(&key_id).and_then(|held| held.record.as_ref()).is_some_and(|held| held.seq >= record.seq);
        if !newer_held {
            self.keep(&key_id, Some(record.clone()), now_ms);
        }
    }

    /// Records held, expired or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use keygate_shared::{KeyId, PermissionSet};

    use super::*;

    fn record(id: u128, seq: u64, revoked: bool) -> KeyRecord {
        KeyRecord {
            key_id: KeyId::from(id),
            seq,
            tier: "default".into(),
            permissions: PermissionSet::default(),
            expires_at: None,
            revoked,
            disabled: false,
            secrets: vec![],
            owner: None,
        }
    }

    #[test]
    fn a_record_is_used_until_its_time_is_up() {
        let mut recent = RecentRecords::new(1_000, 10);
        let id = KeyId::from(1).to_string();
        assert!(recent.get(&id, 0).is_none());
        recent.keep(&id, Some(record(1, 1, false)), 0);
        assert_eq!(recent.get(&id, 999).and_then(|r| r).map(|r| r.seq), Some(1));
        assert!(recent.get(&id, 1_000).is_none(), "expired: read KV again");
        recent.keep(&id, None, 2_000);
        assert!(matches!(recent.get(&id, 2_001), Some(None)), "a recent miss is remembered too");
    }

    #[test]
    fn a_push_replaces_at_once_but_never_with_an_older_record() {
        let mut recent = RecentRecords::new(60_000, 10);
        let id = KeyId::from(1).to_string();
        recent.keep(&id, Some(record(1, 5, false)), 0);
        recent.stored(&record(1, 6, true), 10);
        assert_eq!(recent.get(&id, 11).and_then(|r| r).map(|r| r.revoked), Some(true), "revoked at once");
        recent.stored(&record(1, 4, false), 12);
        assert_eq!(recent.get(&id, 13).and_then(|r| r).map(|r| (r.seq, r.revoked)), Some((6, true)));
        recent.stored(&record(2, 1, false), 14);
        assert!(recent.get(&KeyId::from(2).to_string(), 15).is_some(), "a new key is known at once");
    }

    #[test]
    fn it_stays_within_its_capacity_and_zero_ttl_keeps_nothing() {
        let mut recent = RecentRecords::new(1_000, 3);
        for id in 0..10u128 {
            recent.keep(&KeyId::from(id).to_string(), None, i64::try_from(id).unwrap_or(0));
            assert!(recent.len() <= 3);
        }
        let mut off = RecentRecords::new(0, 3);
        off.keep("x", None, 0);
        assert!(off.is_empty());
    }

    #[test]
    fn expired_records_are_swept_without_waiting_for_the_capacity() {
        let mut recent = RecentRecords::new(1_000, CAPACITY);
        for id in 0..100u128 {
            recent.keep(&KeyId::from(id).to_string(), None, 0);
        }
        assert_eq!(recent.len(), 100);
        recent.keep(&KeyId::from(500).to_string(), None, SWEEP_EVERY_MS - 1);
        assert_eq!(recent.len(), 101, "no sweep before its time");
        recent.keep(&KeyId::from(501).to_string(), None, SWEEP_EVERY_MS);
        assert_eq!(recent.len(), 2, "the sweep kept only what has not expired");
    }
}
