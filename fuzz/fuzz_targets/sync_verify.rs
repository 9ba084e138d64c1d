//! The edge's side of replication on arbitrary input: the push signature check, then the application of
//! correctly signed pushes to an in-memory record store.
//!
//! - `SyncSecret::verify` on the input split at its first two newlines into timestamp, signature and
//!   body never panics, and accepts only a decimal timestamp within the allowed skew whose signature
//!   is the one `sign` makes.
//! - `apply_push` of the whole input as a correctly signed body, and of a payload built from the input
//!   over the store's key ids, never refuses the signature; a body that does not decode changes
//!   nothing; and no held record is replaced by one with a lower or equal `seq`: in particular a
//!   revoked record is never undone by a replay or a reordering.
//! - Signing keys in the built payloads (from a fixed pool, one sealed under another secret): a push
//!   carrying a key that does not open is refused whole and changes nothing; otherwise the edge never
//!   goes back to an older active key, and holds only keys that open.

#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use keygate_edge::check::{RecordSource, StoreFault};
use keygate_edge::replica::{apply_push, Applied, PushRefused, RecordStore};
use keygate_edge::signing_keys::SigningKeyStore;
use keygate_shared::sync::MAX_CLOCK_SKEW_SECS;
use keygate_edge::signing_keys::active;
use keygate_shared::{
    ApiKey, KeyId, KeyRecord, KeySecret, OriginSigningKey, PermissionSet, Prefix, Region, SealedSigningKey, SecretEntry,
    SyncPayload, SyncSecret,
};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_764_400_000;
const SECRET: &str = "fuzz-sync-secret";

/// Signing keys a built payload may carry: three kids, versions 1 to 4, active or pending, sealed under
/// the edge's secret; and, last, one sealed under another secret. Made once: key generation is slow.
fn signing_key_pool() -> &'static Vec<SealedSigningKey> {
    static POOL: OnceLock<Vec<SealedSigningKey>> = OnceLock::new();
    POOL.get_or_init(|| {
        let secret = SyncSecret::new(SECRET);
        let mut pool = Vec::new();
        for kid in ["a", "b", "c"] {
            let key = OriginSigningKey::generate(kid.into(), &mut rand_core::OsRng);
            for version in 1..=4u64 {
                for activates_at in [NOW - 100, NOW + 100] {
                    let Ok(sealed) = key.seal_for_edge(&secret, version, activates_at, &mut rand_core::OsRng) else {
                        unreachable!("sealing a key cannot fail");
                    };
                    pool.push(sealed);
                }
            }
        }
        let foreign = OriginSigningKey::generate("f".into(), &mut rand_core::OsRng);
        let Ok(sealed) = foreign.seal_for_edge(&SyncSecret::new("another"), 9, NOW - 1, &mut rand_core::OsRng) else {
            unreachable!("sealing a key cannot fail");
        };
        pool.push(sealed);
        pool
    })
}

/// What the edge holds before each push: kid "b" at version 2, active.
fn held_keys() -> Vec<SealedSigningKey> {
    signing_key_pool().iter().filter(|k| k.kid == "b" && k.version == 2 && k.activates_at < NOW).cloned().collect()
}

/// Key ids the payloads built from the input speak of: the store holds all but the last.
const KEY_IDS: [u128; 5] = [1, 2, 3, 4, 5];

/// The edge's records, in memory; answers at once.
#[derive(Default)]
struct MemoryRecords(RefCell<HashMap<String, KeyRecord>>, RefCell<Vec<SealedSigningKey>>);

impl RecordSource for MemoryRecords {
    async fn record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreFault> {
        Ok(self.0.borrow().get(key_id).cloned())
    }
}

impl SigningKeyStore for MemoryRecords {
    async fn signing_keys(&self) -> Result<Vec<SealedSigningKey>, StoreFault> {
        Ok(self.1.borrow().clone())
    }

    async fn store_signing_keys(&self, keys: &[SealedSigningKey]) -> Result<(), StoreFault> {
        *self.1.borrow_mut() = keys.to_vec();
        Ok(())
    }
}

impl RecordStore for MemoryRecords {
    async fn store(&self, record: &KeyRecord) -> Result<(), StoreFault> {
        self.0.borrow_mut().insert(record.key_id.to_string(), record.clone());
        Ok(())
    }
}

/// Runs a future that never waits (the in-memory store answers at once) with a no-op waker.
fn run<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("the in-memory store never waits"),
    }
}

fn record(id: u128, seq: u64, revoked: bool) -> KeyRecord {
    let key =
        ApiKey::assemble(&Prefix::default(), &Region::default(), KeyId::from_u128(id), &KeySecret::from_bytes([7; 32]));
    KeyRecord {
        key_id: key.key_id(),
        seq,
        tier: "default".into(),
        permissions: PermissionSet::default(),
        expires_at: Some(NOW + 1_000),
        revoked,
        disabled: false,
        secrets: vec![SecretEntry { hash: key.hash(), not_after: None }],
        owner: None,
    }
}

/// What the edge holds before each push: revoked and live records, one at the highest `seq`.
fn held() -> &'static HashMap<String, KeyRecord> {
    static HELD: OnceLock<HashMap<String, KeyRecord>> = OnceLock::new();
    HELD.get_or_init(|| {
        [
            record(KEY_IDS[0], 5, true),
            record(KEY_IDS[1], 5, false),
            record(KEY_IDS[2], u64::MAX, true),
            record(KEY_IDS[3], 0, true),
        ]
        .into_iter()
        .map(|record| (record.key_id.to_string(), record))
        .collect()
    })
}

/// A payload built from the input, three bytes a record: which key id, its `seq` (around the held
/// ones'), whether it is revoked; and where the third byte says so, a signing key from the pool.
fn structured_payload(data: &[u8]) -> SyncPayload {
    let pool = signing_key_pool();
    let signing_keys = data
        .chunks_exact(3)
        .filter(|chunk| chunk[2] & 2 == 2)
        .map(|chunk| pool[usize::from(chunk[1]) % pool.len()].clone())
        .collect();
    let records = data
        .chunks_exact(3)
        .map(|chunk| {
            let seq = match chunk[1] {
                0xff => u64::MAX,
                0xfe => u64::MAX - 1,
                small => u64::from(small % 16),
            };
            record(KEY_IDS[usize::from(chunk[0]) % KEY_IDS.len()], seq, chunk[2] & 1 == 1)
        })
        .collect();
    SyncPayload { records, signing_keys }
}

/// Signs `body` correctly, applies it to a store holding [`held`], and checks what changed.
fn push_and_check(secret: &SyncSecret, body: &[u8]) {
    let store = MemoryRecords(RefCell::new(held().clone()), RefCell::new(held_keys()));
    let signature = secret.sign(NOW, body);
    let outcome = run(apply_push(&store, secret, Some(&NOW.to_string()), Some(&signature), body, NOW));
    let after = store.0.into_inner();
    let keys_after = store.1.into_inner();
    let active_version = |keys: &[SealedSigningKey]| active(keys, NOW).map_or(0, |k| k.version);
    assert!(active_version(&keys_after) >= active_version(&held_keys()), "the edge went back to an older key");
    assert!(keys_after.iter().all(|k| k.open_private_jwk(secret).is_ok()), "the edge holds a key that does not open");
    match outcome {
        Ok(Applied { applied, ignored, .. }) => {
            let Ok(payload) = serde_json::from_slice::<SyncPayload>(body) else {
                panic!("applied a push whose body does not decode");
            };
            assert_eq!(applied + ignored, payload.records.len());
        }
        Err(PushRefused::BadPayload) => {
            if let Ok(payload) = serde_json::from_slice::<SyncPayload>(body) {
                assert!(
                    payload.signing_keys.iter().any(|k| k.open_private_jwk(secret).is_err()),
                    "refused a payload that decodes and whose keys all open"
                );
            }
            assert_eq!(&after, held(), "a refused push changed the store");
            assert_eq!(keys_after, held_keys(), "a refused push changed the signing keys");
        }
        Err(other) => panic!("a correctly signed push was refused: {other:?}"),
    }
    for (key_id, before) in held() {
        let Some(now_held) = after.get(key_id) else {
            panic!("a push removed the record of {key_id}");
        };
        if now_held != before {
            assert!(
                now_held.seq > before.seq,
                "the record of {key_id} (seq {}, revoked {}) was replaced by seq {} (revoked {})",
                before.seq,
                before.revoked,
                now_held.seq,
                now_held.revoked,
            );
        }
        if before.revoked && now_held.seq <= before.seq {
            assert_eq!(now_held, before, "a revoked record was undone");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let secret = SyncSecret::new(SECRET);

    // The signature check on fuzzed headers and body.
    let mut parts = data.splitn(3, |b| *b == b'\n');
    if let (Some(stamp), Some(signature), Some(body)) = (parts.next(), parts.next(), parts.next()) {
        if let (Ok(stamp), Ok(signature)) = (std::str::from_utf8(stamp), std::str::from_utf8(signature)) {
            if let Ok(signed_at) = secret.verify(stamp, signature, body, NOW) {
                assert!(!stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()), "accepted timestamp {stamp:?}");
                assert_eq!(stamp.parse::<i64>().ok(), Some(signed_at));
                assert!(signed_at.abs_diff(NOW) <= MAX_CLOCK_SKEW_SECS.unsigned_abs());
                if stamp == signed_at.to_string() {
                    assert!(
                        secret.sign(signed_at, body).eq_ignore_ascii_case(signature),
                        "accepted a forged signature"
                    );
                }
            }
        }
    }

    // The whole input as a signed push body: the payload decoder runs past the signature.
    push_and_check(&secret, data);

    // A well-formed payload from the input, so records reach the store's ordering rule.
    let Ok(body) = serde_json::to_vec(&structured_payload(data)) else {
        return;
    };
    push_and_check(&secret, &body);
});
