//! The origin's identity, natively: signing keys arriving in pushes (stored sealed, merged without ever
//! going back), the key chosen by its activation time, token reuse, and the tokens themselves, verified
//! independently (the ES256 signature against the published JWK, the claims against DESIGN.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_edge::check::{RecordSource, StoreFault};
use keygate_edge::identity::{
    forwards_client_header, Alg, IdentityConfig, Mint, NoToken, OriginIdentity, RecentTokens, BEARER,
    DROPPED_CLIENT_HEADERS, IDENTITY_HEADER_PREFIX, TOKEN_CAPACITY,
};
use keygate_edge::replica::{apply_push, push_refusal_response, Applied, PushRefused, RecordStore};
use keygate_edge::signing_keys::{active, merge, HeldSigningKeys, SigningKeyStore, REREAD_MS, SIGNING_KEYS_NAME};
use keygate_shared::jwt::{TokenSettings, TokenSigner, JTI_LEN};
use keygate_shared::{
    KeyId, KeyRecord, OriginSecret, OriginSigningKey, PermissionSet, SealedSigningKey, SyncPayload, SyncSecret,
};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use rand_core::OsRng;
use serde_json::{json, Value};

const NOW: i64 = 1_800_000_000;
const NOW_MS: i64 = NOW * 1000;
const SYNC: &str = "sync-secret";

/// Runs a future that never waits (the in-memory store answers at once).
fn run<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the in-memory store never waits"),
    }
}

/// KV in memory: records by key id and the signing keys, as the worker stores them (JSON text).
#[derive(Default)]
struct MemoryKv {
    values: RefCell<HashMap<String, String>>,
    key_writes: Cell<usize>,
}

impl RecordSource for MemoryKv {
    async fn record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreFault> {
        Ok(self.values.borrow().get(key_id).map(|text| serde_json::from_str(text).unwrap()))
    }
}

impl RecordStore for MemoryKv {
    async fn store(&self, record: &KeyRecord) -> Result<(), StoreFault> {
        self.values.borrow_mut().insert(record.key_id.to_string(), serde_json::to_string(record).unwrap());
        Ok(())
    }
}

impl SigningKeyStore for MemoryKv {
    async fn signing_keys(&self) -> Result<Vec<SealedSigningKey>, StoreFault> {
        Ok(self
            .values
            .borrow()
            .get(SIGNING_KEYS_NAME)
            .map(|text| serde_json::from_str(text).unwrap())
            .unwrap_or_default())
    }

    async fn store_signing_keys(&self, keys: &[SealedSigningKey]) -> Result<(), StoreFault> {
        self.key_writes.set(self.key_writes.get() + 1);
        self.values.borrow_mut().insert(SIGNING_KEYS_NAME.into(), serde_json::to_string(keys).unwrap());
        Ok(())
    }
}

impl MemoryKv {
    fn held(&self) -> Vec<SealedSigningKey> {
        run(self.signing_keys()).unwrap()
    }
}

fn signing_key(kid: &str) -> OriginSigningKey {
    OriginSigningKey::generate(kid.into(), &mut OsRng)
}

fn sealed(key: &OriginSigningKey, version: u64, activates_at: i64) -> SealedSigningKey {
    key.seal_for_edge(&SyncSecret::new(SYNC), version, activates_at, &mut OsRng).unwrap()
}

fn key_record(id: u128, seq: u64, owner: Option<&str>) -> KeyRecord {
    KeyRecord {
        key_id: KeyId::from_u128(id),
        seq,
        tier: "premium".into(),
        permissions: PermissionSet::parse(["query:read", "mutation:write", "batch:5"]).unwrap(),
        expires_at: None,
        revoked: false,
        disabled: false,
        secrets: vec![],
        owner: owner.map(Into::into),
    }
}

fn push(kv: &MemoryKv, records: Vec<KeyRecord>, keys: Vec<SealedSigningKey>, now: i64) -> Result<Applied, PushRefused> {
    let secret = SyncSecret::new(SYNC);
    let body = serde_json::to_vec(&SyncPayload { records, signing_keys: keys }).unwrap();
    let signature = secret.sign(now, &body);
    run(apply_push(kv, &secret, Some(&now.to_string()), Some(&signature), &body, now))
}

/// Counts the randomness drawn, and gives a different `jti` each time.
#[derive(Default)]
struct Randomness(Cell<u8>);

impl Randomness {
    fn draw(&self) -> impl FnOnce() -> Option<[u8; JTI_LEN]> + '_ {
        || {
            self.0.set(self.0.get() + 1);
            Some([self.0.get(); JTI_LEN])
        }
    }

    fn drawn(&self) -> u8 {
        self.0.get()
    }
}

fn config(alg: Alg, reuse_secs: i64) -> IdentityConfig {
    IdentityConfig { alg, settings: TokenSettings::default(), reuse_secs }
}

/// What the worker does around WebCrypto, with p256 in its place: begin, sign the input with the
/// active key's private JWK (as WebCrypto imports it), finish.
trait Mints {
    fn token(
        &mut self,
        record: &KeyRecord,
        now_ms: i64,
        random: impl FnOnce() -> Option<[u8; JTI_LEN]>,
    ) -> Result<Rc<str>, NoToken>;
}

impl Mints for OriginIdentity {
    fn token(
        &mut self,
        record: &KeyRecord,
        now_ms: i64,
        random: impl FnOnce() -> Option<[u8; JTI_LEN]>,
    ) -> Result<Rc<str>, NoToken> {
        match self.begin(record, now_ms, random)? {
            Mint::Ready(authorization) => Ok(jwt_of(&authorization)),
            Mint::Es256 { kid, input, .. } => {
                let jwk: Value = serde_json::from_str(&self.private_jwk(now_ms.div_euclid(1000))?).unwrap();
                assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("EC"), Some("P-256")));
                let d = URL_SAFE_NO_PAD.decode(jwk["d"].as_str().unwrap()).unwrap();
                let signature = OriginSigningKey::from_scalar(kid.clone(), &d).unwrap().sign(input.as_bytes());
                Ok(jwt_of(&self.finish(record, &kid, input, &signature, now_ms)))
            }
        }
    }
}

/// The JWT in an `Authorization` header's value, which must be `Bearer <JWT>`.
fn jwt_of(authorization: &str) -> Rc<str> {
    authorization.strip_prefix(BEARER).expect("an Authorization value that is not `Bearer <JWT>`").into()
}

/// An ES256 identity holding `keys`, as read from KV at `NOW_MS`.
fn es256(keys: Vec<SealedSigningKey>, reuse_secs: i64) -> OriginIdentity {
    let mut identity = OriginIdentity::new(config(Alg::Es256, reuse_secs), None, Some(SyncSecret::new(SYNC)));
    identity.keys_mut().replace(keys, NOW_MS);
    identity
}

fn part(token: &str, index: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(index).unwrap()).unwrap()).unwrap()
}

/// Verifies `token`'s ES256 signature with the key built from `key`'s public JWK, as an origin would.
fn verifies(token: &str, key: &OriginSigningKey) -> bool {
    let jwk = key.public_jwk();
    let x = URL_SAFE_NO_PAD.decode(&jwk.x).unwrap();
    let y = URL_SAFE_NO_PAD.decode(&jwk.y).unwrap();
    let point = p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
    let verifying = VerifyingKey::from_encoded_point(&point).unwrap();
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    verifying.verify(input.as_bytes(), &signature).is_ok()
}

#[test]
fn pushed_signing_keys_are_stored_sealed_as_received() {
    let kv = MemoryKv::default();
    let key = signing_key("k1");
    let current = sealed(&key, 1, NOW - 60);
    let applied = push(&kv, vec![key_record(1, 1, None)], vec![current.clone()], NOW).unwrap();
    assert_eq!(applied, Applied { applied: 1, ignored: 0, signing_keys: 1 });
    assert_eq!(serde_json::to_value(applied).unwrap(), json!({"applied": 1, "ignored": 0, "signing_keys": 1}));
    assert_eq!(kv.held(), vec![current.clone()], "stored exactly as received");
    let stored = kv.values.borrow()[SIGNING_KEYS_NAME].clone();
    let scalar = key.to_scalar();
    assert!(
        !stored.contains(&URL_SAFE_NO_PAD.encode(*scalar)) && !stored.contains(&hex(&*scalar)),
        "never in the clear"
    );
    assert_eq!(SIGNING_KEYS_NAME.len(), "keygate:signing-keys".len());
    assert!(SIGNING_KEYS_NAME.bytes().any(|b| !b.is_ascii_alphanumeric()), "no key id (base62) can collide with it");

    // The same push again changes nothing and writes nothing; a push without keys leaves them, and
    // its answer keeps the old shape.
    let writes = kv.key_writes.get();
    assert_eq!(push(&kv, vec![], vec![current.clone()], NOW).unwrap().signing_keys, 0);
    let applied = push(&kv, vec![key_record(1, 2, None)], vec![], NOW).unwrap();
    assert_eq!(serde_json::to_value(applied).unwrap(), json!({"applied": 1, "ignored": 0}));
    assert_eq!(kv.key_writes.get(), writes);
    assert_eq!(kv.held(), vec![current]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_replayed_or_older_key_never_wins() {
    let kv = MemoryKv::default();
    let (a, b) = (signing_key("a"), signing_key("b"));
    let a1 = sealed(&a, 1, NOW - 600);
    let b2 = sealed(&b, 2, NOW - 10);
    assert_eq!(push(&kv, vec![], vec![a1.clone(), b2.clone()], NOW).unwrap().signing_keys, 1, "a1 is older than b2");
    assert_eq!(kv.held(), vec![b2.clone()], "only the newest active key is kept");

    // A replay of the older key, and a re-sealed copy of the held version, are ignored.
    assert_eq!(push(&kv, vec![], vec![a1], NOW + 1).unwrap().signing_keys, 0);
    assert_eq!(push(&kv, vec![], vec![sealed(&b, 2, NOW - 10)], NOW + 1).unwrap().signing_keys, 0);
    assert_eq!(kv.held(), vec![b2.clone()]);
    // Under the same kid, a lower version is ignored and a higher one replaces.
    let b_replaced = sealed(&b, 3, NOW - 5);
    assert_eq!(push(&kv, vec![], vec![b_replaced.clone()], NOW + 2).unwrap().signing_keys, 1);
    assert_eq!(push(&kv, vec![], vec![b2], NOW + 3).unwrap().signing_keys, 0);
    assert_eq!(kv.held(), vec![b_replaced.clone()]);
    // A pending key under the same kid waits beside the active one; it does not push it out (the
    // sync_verify fuzz target found that it once did, leaving the edge with nothing to sign with).
    let b_pending = sealed(&b, 4, NOW + 60);
    assert_eq!(push(&kv, vec![], vec![b_pending.clone()], NOW + 4).unwrap().signing_keys, 1);
    assert_eq!(kv.held(), vec![b_replaced.clone(), b_pending]);
    assert_eq!(active(&kv.held(), NOW + 4).map(|k| k.version), Some(3));
}

#[test]
fn a_key_sealed_under_another_secret_is_refused_and_nothing_is_stored() {
    let kv = MemoryKv::default();
    let good = sealed(&signing_key("good"), 1, NOW);
    let foreign = signing_key("foreign").seal_for_edge(&SyncSecret::new("another"), 2, NOW, &mut OsRng).unwrap();
    let refused = push(&kv, vec![key_record(1, 1, None)], vec![good.clone(), foreign], NOW).unwrap_err();
    assert_eq!(refused, PushRefused::BadPayload);
    assert_eq!(push_refusal_response(&refused), (400, r#"{"error":{"code":"bad_payload"}}"#.into()));
    let mut altered = good.clone();
    altered.activates_at -= 1;
    assert_eq!(push(&kv, vec![], vec![altered], NOW), Err(PushRefused::BadPayload));
    assert!(kv.values.borrow().is_empty(), "neither the record nor a key was stored");
}

#[test]
fn the_held_list_keeps_the_newest_active_key_and_every_newer_pending_one() {
    let keys: Vec<_> = (1..=4).map(|v| (signing_key(&format!("k{v}")), v)).collect();
    let k = |v: u64, at: i64| sealed(&keys[usize::try_from(v).unwrap() - 1].0, v, at);
    let (k1, k2, k3, k4) = (k(1, NOW - 100), k(2, NOW - 50), k(3, NOW + 50), k(4, NOW + 100));

    let merged = merge(&[], &[k3.clone(), k1.clone(), k2.clone()], NOW);
    assert_eq!(merged.keys, vec![k2.clone(), k3.clone()], "k1 is dropped, k3 waits for its time");
    assert_eq!((merged.accepted, merged.changed), (2, true));
    // Once k3's time has come, a push drops k2 and keeps the pending k4.
    let merged = merge(&merged.keys, std::slice::from_ref(&k4), NOW + 60);
    assert_eq!(merged.keys, vec![k3.clone(), k4.clone()]);
    // Nothing active yet: every pending key is kept.
    assert_eq!(merge(&[], &[k4.clone(), k3.clone()], NOW).keys, vec![k3, k4]);
}

#[test]
fn the_signing_key_is_the_newest_whose_time_has_come() {
    let (old, new) = (signing_key("old"), signing_key("new"));
    let keys = vec![sealed(&old, 1, NOW - 100), sealed(&new, 2, NOW + 30)];
    assert_eq!(active(&keys, NOW).map(|k| k.kid.as_str()), Some("old"));
    assert_eq!(active(&keys, NOW + 30).map(|k| k.kid.as_str()), Some("new"));
    assert_eq!(active(&keys[1..], NOW), None, "a pending key is not used before its time");

    let mut identity = es256(keys, 10);
    let record = key_record(1, 1, None);
    let random = Randomness::default();
    let before = identity.token(&record, NOW_MS + 29_999, random.draw()).unwrap();
    assert_eq!(part(&before, 0), json!({"alg": "ES256", "kid": "old", "typ": "JWT"}));
    assert!(verifies(&before, &old) && !verifies(&before, &new));
    let after = identity.token(&record, NOW_MS + 30_000, random.draw()).unwrap();
    assert_eq!(part(&after, 0)["kid"], "new", "the new key signs from its time on, even within the reuse time");
    assert!(verifies(&after, &new));
}

#[test]
fn the_isolate_rereads_its_keys_every_few_seconds() {
    let mut held = HeldSigningKeys::default();
    assert!(held.needs_read(NOW_MS), "nothing read yet");
    held.reading(NOW_MS);
    assert!(held.needs_read(NOW_MS), "before the first read, concurrent requests read too");
    held.replace(vec![sealed(&signing_key("k"), 1, NOW)], NOW_MS);
    assert!(!held.needs_read(NOW_MS + REREAD_MS - 1));
    assert!(held.needs_read(NOW_MS + REREAD_MS));
    held.reading(NOW_MS + REREAD_MS);
    assert!(!held.needs_read(NOW_MS + REREAD_MS + 1), "one read at a time once keys are held");
    held.read_failed(NOW_MS + 3 * REREAD_MS);
    assert!(!held.needs_read(NOW_MS + 4 * REREAD_MS - 1), "a failed read is not retried on every request");
    let active = held.active(NOW).expect("what was held still signs");
    assert!(active.open_private_jwk(&SyncSecret::new(SYNC)).is_ok());
    assert!(active.open_private_jwk(&SyncSecret::new("another")).is_err(), "opens only with its sync secret");
    assert!(!es256(vec![], 10).needs_keys(NOW_MS + 1));
    assert!(!OriginIdentity::new(config(Alg::Hs256, 10), None, None).needs_keys(NOW_MS), "HS256 needs no keys");
}

#[test]
fn a_token_is_reused_only_while_young_and_for_the_same_record_and_key() {
    let (a, b) = (signing_key("a"), signing_key("b"));
    let mut identity = es256(vec![sealed(&a, 1, NOW - 1)], 10);
    let random = Randomness::default();
    let record = key_record(1, 1, None);
    let first = identity.token(&record, NOW_MS, random.draw()).unwrap();
    assert_eq!(identity.token(&record, NOW_MS + 9_999, random.draw()).unwrap(), first, "reused within 10 s");
    assert_eq!(random.drawn(), 1);
    let later = identity.token(&record, NOW_MS + 10_000, random.draw()).unwrap();
    assert_ne!(later, first, "re-minted after the reuse time");
    assert_eq!(part(&later, 1)["iat"], NOW + 10);

    let edited = key_record(1, 2, Some("acme"));
    let fresh = identity.token(&edited, NOW_MS + 10_001, random.draw()).unwrap();
    assert_eq!((part(&fresh, 1)["tenant_id"].clone(), random.drawn()), (json!("acme"), 3), "a changed record");
    let other = key_record(2, 2, None);
    assert_ne!(identity.token(&other, NOW_MS + 10_001, random.draw()).unwrap(), fresh, "per key id");

    // A rotation pushed to this isolate: the next request signs with the new key.
    identity.keys_mut().replace(vec![sealed(&a, 1, NOW - 1), sealed(&b, 2, NOW + 10)], NOW_MS + 10_002);
    let rotated = identity.token(&edited, NOW_MS + 10_002, random.draw()).unwrap();
    assert_eq!(part(&rotated, 0)["kid"], "b");
    assert!(verifies(&rotated, &b));
    assert_eq!(random.drawn(), 5);
}

#[test]
fn reuse_zero_signs_every_request_and_every_jti_is_unique() {
    let key = signing_key("k");
    let mut identity = es256(vec![sealed(&key, 1, NOW)], 0);
    let record = key_record(1, 1, None);
    let mut jtis = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut jti = [0u8; JTI_LEN];
        getrandom_like(&mut jti);
        let token = identity.token(&record, NOW_MS, || Some(jti)).unwrap();
        assert!(jtis.insert(part(&token, 1)["jti"].as_str().unwrap().to_owned()));
    }
    assert_eq!(jtis.len(), 20);
    let mut tokens = RecentTokens::new(0, TOKEN_CAPACITY);
    tokens.keep(&record, key.kid(), "a token".into(), NOW);
    assert!(tokens.is_empty(), "nothing is held when nothing is reused");
    assert!(tokens.reusable(&record, key.kid(), NOW).is_none());
}

/// 16 bytes from the OS CSPRNG, as the worker gets them from crypto.getRandomValues.
fn getrandom_like(bytes: &mut [u8; JTI_LEN]) {
    rand_core::RngCore::fill_bytes(&mut OsRng, bytes);
}

#[test]
fn an_es256_token_verifies_against_the_public_jwk_and_carries_the_contract_claims() {
    let key = signing_key("kid-2026");
    let config = IdentityConfig {
        alg: Alg::Es256,
        settings: TokenSettings {
            issuer: "https://keygate.example".into(),
            audience: "fraiseql".into(),
            ttl_secs: 120,
        },
        reuse_secs: 10,
    };
    let mut identity = OriginIdentity::new(config, None, Some(SyncSecret::new(SYNC)));
    identity.keys_mut().replace(vec![sealed(&key, 1, NOW)], NOW_MS);
    let record = key_record(7, 1, Some("acme"));
    let token = identity.token(&record, NOW_MS + 500, || Some([0xab; JTI_LEN])).unwrap();

    assert_eq!(token.split('.').count(), 3, "JWS compact form");
    assert!(verifies(&token, &key));
    let mut forged = token.to_string();
    forged.insert(forged.find('.').unwrap() + 1, 'e');
    assert!(!verifies(&forged, &key), "the signature covers the claims");
    assert_eq!(part(&token, 0), json!({"alg": "ES256", "kid": "kid-2026", "typ": "JWT"}));
    assert_eq!(
        part(&token, 1),
        json!({
            "iss": "https://keygate.example", "aud": "fraiseql", "sub": KeyId::from_u128(7).to_string(),
            "iat": NOW, "exp": NOW + 120, "jti": URL_SAFE_NO_PAD.encode([0xab; JTI_LEN]),
            "scope": "query:read mutation:write batch:5", "tier": "premium", "tenant_id": "acme"
        })
    );
    let ownerless = identity.token(&key_record(8, 1, None), NOW_MS, || Some([1; JTI_LEN])).unwrap();
    assert!(part(&ownerless, 1).get("tenant_id").is_none(), "no owner, no tenant_id");
}

#[test]
fn an_hs256_token_is_signed_with_the_origin_secret() {
    let mut identity =
        OriginIdentity::new(config(Alg::Hs256, 10), Some(OriginSecret::new("origin")), Some(SyncSecret::new(SYNC)));
    assert!(!identity.needs_keys(NOW_MS));
    let record = key_record(1, 1, None);
    let token = identity.token(&record, NOW_MS, || Some([3; JTI_LEN])).unwrap();
    assert_eq!(part(&token, 0), json!({"alg": "HS256", "kid": "keygate-origin-secret", "typ": "JWT"}));
    // The same claims signed by the origin secret independently of the isolate's state.
    let settings = TokenSettings::default();
    let claims = keygate_shared::jwt::Claims::for_record(&record, &settings, NOW, &[3; JTI_LEN]);
    assert_eq!(&*token, TokenSigner::Hs256(OriginSecret::new("origin")).sign(&claims));
    assert_ne!(&*token, TokenSigner::Hs256(OriginSecret::new("other")).sign(&claims));
}

#[test]
fn the_identity_headers_are_signed_with_the_origin_secret_whatever_signs_the_token() {
    for alg in [Alg::Es256, Alg::Hs256] {
        let mut identity = OriginIdentity::new(config(alg, 10), Some(OriginSecret::new("origin")), None);
        let signature = identity.header_signature(NOW, "0123456789abcdefghijkl", "premium").unwrap();
        let origin = OriginSecret::new("origin");
        assert_eq!(origin.verify(&NOW.to_string(), "0123456789abcdefghijkl", "premium", &signature, NOW), Ok(()));
        assert!(OriginSecret::new("other")
            .verify(&NOW.to_string(), "0123456789abcdefghijkl", "premium", &signature, NOW)
            .is_err());
        assert!(origin.verify(&NOW.to_string(), "0123456789abcdefghijkl", "default", &signature, NOW).is_err());
    }
    let mut unsigned = OriginIdentity::new(config(Alg::Es256, 10), None, Some(SyncSecret::new(SYNC)));
    assert_eq!(unsigned.header_signature(NOW, "0123456789abcdefghijkl", "premium"), None);
}

#[test]
fn an_identity_signature_made_once_a_second_is_the_one_that_second_tier_and_key_need() {
    let origin = OriginSecret::new("origin");
    let mut identity = OriginIdentity::new(config(Alg::Es256, 10), Some(OriginSecret::new("origin")), None);
    let (a, b) = ("0123456789abcdefghijkl", "mnopqrstuvwxyz01234567");
    // Interleaved keys, a tier changed by a push within the second, then the next second: each answer
    // is what signing afresh gives.
    for (at, key_id, tier) in
        [(NOW, a, "premium"), (NOW, b, "default"), (NOW, a, "premium"), (NOW, a, "default"), (NOW + 1, a, "default")]
    {
        let signature = identity.header_signature(at, key_id, tier).unwrap();
        assert_eq!(&*signature, origin.sign(at, key_id, tier), "{at} {key_id} {tier}");
    }
}

#[test]
fn without_a_way_to_sign_there_is_no_token_and_the_cause_is_reported_once() {
    let record = key_record(1, 1, None);
    let mut none_pushed = es256(vec![], 10);
    assert_eq!(none_pushed.token(&record, NOW_MS, || Some([0; JTI_LEN])), Err(NoToken::NoSigningKey));
    assert!(none_pushed.first_report(NoToken::NoSigningKey));
    assert!(!none_pushed.first_report(NoToken::NoSigningKey), "once per isolate");
    assert!(none_pushed.first_report(NoToken::NoRandomness), "each cause once");

    let mut only_pending = es256(vec![sealed(&signing_key("later"), 1, NOW + 1)], 10);
    assert_eq!(only_pending.token(&record, NOW_MS, || Some([0; JTI_LEN])), Err(NoToken::NoSigningKey));
    let mut wrong_secret = OriginIdentity::new(config(Alg::Es256, 10), None, Some(SyncSecret::new("another")));
    wrong_secret.keys_mut().replace(vec![sealed(&signing_key("k"), 1, NOW)], NOW_MS);
    assert_eq!(wrong_secret.token(&record, NOW_MS, || Some([0; JTI_LEN])), Err(NoToken::SigningKeyUnopenable));
    let mut no_origin_secret = OriginIdentity::new(config(Alg::Hs256, 10), None, Some(SyncSecret::new(SYNC)));
    assert_eq!(no_origin_secret.token(&record, NOW_MS, || Some([0; JTI_LEN])), Err(NoToken::NoOriginSecret));
    let mut no_randomness = es256(vec![sealed(&signing_key("k"), 1, NOW)], 10);
    assert_eq!(no_randomness.token(&record, NOW_MS, || None), Err(NoToken::NoRandomness));

    for cause in [
        NoToken::NoSigningKey,
        NoToken::SigningKeyUnopenable,
        NoToken::NoOriginSecret,
        NoToken::NoRandomness,
        NoToken::SigningFailed,
    ] {
        assert!(cause.message().starts_with("keygate: ") && cause.message().contains("without Authorization"));
    }
}

#[test]
fn the_identitys_debug_shows_no_key_material_and_no_token() {
    let key = signing_key("k");
    let mut identity = es256(vec![sealed(&key, 1, NOW)], 10);
    let token = identity.token(&key_record(1, 1, None), NOW_MS, || Some([9; JTI_LEN])).unwrap();
    let printed = format!("{identity:?}");
    let scalar = key.to_scalar();
    assert!(!printed.contains(&hex(&*scalar)) && !printed.contains(&URL_SAFE_NO_PAD.encode(*scalar)));
    assert!(!printed.contains(&*token) && !printed.contains(token.rsplit('.').next().unwrap()));
    assert!(printed.contains("Minted { seq: 1, kid: \"k\", iat: 1800000000, .. }"), "{printed}");
    // A ready token, as the check hands it on, prints without it.
    let ready = identity.begin(&key_record(1, 1, None), NOW_MS, || None).unwrap();
    assert!(matches!(&ready, Mint::Ready(value) if value.as_ref() == format!("{BEARER}{token}")));
    assert_eq!(format!("{ready:?}"), "Ready(..)");
}

#[test]
fn the_token_cache_stays_within_its_capacity_and_sweeps_old_tokens() {
    let mut tokens = RecentTokens::new(10, 3);
    for id in 0..10 {
        tokens.keep(&key_record(id, 1, None), "k", "a token".into(), NOW);
        assert!(tokens.len() <= 3);
    }
    let mut tokens = RecentTokens::new(10, TOKEN_CAPACITY);
    for id in 0..50 {
        tokens.keep(&key_record(id, 1, None), "k", "a token".into(), NOW);
    }
    assert_eq!(tokens.len(), 50);
    assert!(tokens.reusable(&key_record(7, 1, None), "k", NOW + 9).is_some());
    assert!(tokens.reusable(&key_record(7, 1, None), "another kid", NOW + 9).is_none());
    assert!(tokens.reusable(&key_record(7, 2, None), "k", NOW + 9).is_none(), "another seq");
    tokens.keep(&key_record(100, 1, None), "k", "a token".into(), NOW + 10);
    assert_eq!(tokens.len(), 1, "tokens that may no longer be reused were swept");
}

#[test]
fn the_vars_set_the_token_and_bad_values_fall_back_to_the_defaults() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    };
    assert_eq!(IdentityConfig::from_vars(vars(&[])), (IdentityConfig::default(), vec![]));
    assert_eq!(IdentityConfig::default(), config(Alg::Es256, 10));
    let (set, invalid) = IdentityConfig::from_vars(vars(&[
        ("ORIGIN_JWT_ALG", "hs256"),
        ("ORIGIN_JWT_ISSUER", "https://keygate.example"),
        ("ORIGIN_JWT_AUDIENCE", "fraiseql"),
        ("ORIGIN_JWT_TTL_SECS", " 300 "),
        ("ORIGIN_JWT_REUSE_SECS", "0"),
    ]));
    assert!(invalid.is_empty());
    let settings =
        TokenSettings { issuer: "https://keygate.example".into(), audience: "fraiseql".into(), ttl_secs: 300 };
    assert_eq!(set, IdentityConfig { alg: Alg::Hs256, settings, reuse_secs: 0 });
    let (bad, invalid) = IdentityConfig::from_vars(vars(&[
        ("ORIGIN_JWT_ALG", "RS256"),
        ("ORIGIN_JWT_TTL_SECS", "0"),
        ("ORIGIN_JWT_REUSE_SECS", "11"),
        ("ORIGIN_JWT_ISSUER", " "),
    ]));
    assert_eq!(bad, IdentityConfig::default());
    assert_eq!(invalid, vec!["ORIGIN_JWT_ALG", "ORIGIN_JWT_TTL_SECS", "ORIGIN_JWT_REUSE_SECS"]);
}

#[test]
fn a_short_lived_token_is_reused_for_at_most_half_its_life() {
    let key = signing_key("k");
    let config = IdentityConfig {
        alg: Alg::Es256,
        settings: TokenSettings { ttl_secs: 4, ..TokenSettings::default() },
        reuse_secs: 10,
    };
    let mut identity = OriginIdentity::new(config, None, Some(SyncSecret::new(SYNC)));
    identity.keys_mut().replace(vec![sealed(&key, 1, NOW)], NOW_MS);
    let record = key_record(1, 1, None);
    let random = Randomness::default();
    let first = identity.token(&record, NOW_MS, random.draw()).unwrap();
    assert_eq!(identity.token(&record, NOW_MS + 1_999, random.draw()).unwrap(), first);
    assert_ne!(identity.token(&record, NOW_MS + 2_000, random.draw()).unwrap(), first);
}

#[test]
fn the_clients_authorization_and_identity_headers_never_reach_the_origin() {
    for dropped in
        ["authorization", "Authorization", "AUTHORIZATION", "x-api-key", "host", "x-keygate-key-id", "X-Keygate-Tier"]
    {
        assert!(!forwards_client_header(dropped), "{dropped}");
    }
    for kept in ["content-type", "accept", "x-request-id", "authorization-extra", "x-keygate", "cookie"] {
        assert!(forwards_client_header(kept), "{kept}");
    }
}

#[test]
fn the_dropped_names_are_lower_case_as_the_runtime_gives_names() {
    // js/http.js compares the runtime's (lower-case) names with these exactly.
    for name in DROPPED_CLIENT_HEADERS.iter().chain([&IDENTITY_HEADER_PREFIX]) {
        assert_eq!(*name, name.to_ascii_lowercase(), "{name}");
        assert!(!forwards_client_header(name), "{name}");
    }
}
