//! The worker's logic, natively: the request check in DESIGN.md's order and the application of sync
//! pushes, over an in-memory record map that counts its reads (the worker uses Workers KV; the
//! end-to-end tests run that in workerd).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use keygate_edge::check::{
    check, check_key, refusal_response, Admitted, DocumentSource, Incoming, RecordSource, Refused, StoreFault,
};
use keygate_edge::graphql::ClassifyError;
use keygate_edge::ratelimit::{RateLimiter, Tiers};
use keygate_edge::replica::{apply_push, Applied, PushRefused, RecordStore};
use keygate_edge::signing_keys::SigningKeyStore;
use keygate_edge::usage::{self, NotingRecords, Outcome};
use keygate_shared::{
    sha256_hex, ApiKey, Denial, KeyId, KeyRecord, KeySecret, OperationKind, PermissionSet, Prefix, Region,
    SealedSigningKey, SecretEntry, SyncError, SyncPayload, SyncSecret,
};

const NOW: i64 = 1_800_000_000;

/// Runs a future that never waits (the in-memory store answers at once).
fn run<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the in-memory store never waits"),
    }
}

#[derive(Default)]
struct MemoryRecords {
    records: RefCell<HashMap<String, KeyRecord>>,
    signing_keys: RefCell<Vec<SealedSigningKey>>,
    /// Persisted queries' documents by hash.
    documents: RefCell<HashMap<String, String>>,
    reads: Cell<usize>,
    down: Cell<bool>,
}

impl RecordSource for MemoryRecords {
    async fn record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreFault> {
        self.reads.set(self.reads.get() + 1);
        if self.down.get() {
            return Err(StoreFault("down".into()));
        }
        Ok(self.records.borrow().get(key_id).cloned())
    }
}

/// Borrowed, as usage's noting wrapper holds it.
impl RecordSource for &MemoryRecords {
    async fn record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreFault> {
        (*self).record(key_id).await
    }
}

impl DocumentSource for MemoryRecords {
    async fn document(&self, hash: &str) -> Result<Option<String>, StoreFault> {
        if self.down.get() {
            return Err(StoreFault("down".into()));
        }
        Ok(self.documents.borrow().get(hash).cloned())
    }
}

impl RecordStore for MemoryRecords {
    async fn store(&self, record: &KeyRecord) -> Result<(), StoreFault> {
        self.records.borrow_mut().insert(record.key_id.to_string(), record.clone());
        Ok(())
    }
}

impl SigningKeyStore for MemoryRecords {
    async fn signing_keys(&self) -> Result<Vec<SealedSigningKey>, StoreFault> {
        Ok(self.signing_keys.borrow().clone())
    }

    async fn store_signing_keys(&self, keys: &[SealedSigningKey]) -> Result<(), StoreFault> {
        *self.signing_keys.borrow_mut() = keys.to_vec();
        Ok(())
    }
}

fn key(id: u128, secret: u8) -> ApiKey {
    ApiKey::assemble(&Prefix::default(), &Region::default(), KeyId::from_u128(id), &KeySecret::from_bytes([secret; 32]))
}

fn record(key: &ApiKey, permissions: &[&str], tier: &str) -> KeyRecord {
    KeyRecord {
        key_id: key.key_id(),
        seq: 1,
        tier: tier.into(),
        permissions: PermissionSet::parse(permissions).unwrap(),
        expires_at: Some(NOW + 1_000),
        revoked: false,
        disabled: false,
        secrets: vec![SecretEntry { hash: key.hash(), not_after: None }],
        owner: None,
    }
}

struct Edge {
    records: MemoryRecords,
    limiter: RefCell<RateLimiter>,
    tiers: Tiers,
}

impl Edge {
    fn with(records: Vec<KeyRecord>) -> Self {
        let memory = MemoryRecords::default();
        for r in records {
            memory.records.borrow_mut().insert(r.key_id.to_string(), r);
        }
        Self {
            records: memory,
            limiter: RefCell::default(),
            tiers: Tiers::from_json(r#"{"default": 3, "premium": 100}"#).unwrap(),
        }
    }

    fn post(&self, api_key: Option<&str>, body: &str, now: i64) -> Result<Admitted, Refused> {
        self.request("POST", api_key, &[], body, now)
    }

    fn request(
        &self,
        method: &str,
        api_key: Option<&str>,
        query: &[(String, String)],
        body: &str,
        now: i64,
    ) -> Result<Admitted, Refused> {
        let incoming = Incoming { method, api_key, query, body: body.as_bytes() };
        run(check(
            &incoming,
            &self.records,
            &self.records,
            |key, limit, at| self.limiter.borrow_mut().admit(key, limit, at),
            &self.tiers,
            now,
        ))
    }
}

const QUERY: &str = r#"{"query":"{ users { id } }"}"#;
const MUTATION: &str = r#"{"query":"mutation { addUser(name: \"a\") { id } }"}"#;

#[test]
fn a_good_key_is_admitted_with_its_identity() {
    let good = key(1, 1);
    let edge = Edge::with(vec![record(&good, &["query:read"], "premium")]);
    let admitted = edge.post(Some(good.expose()), QUERY, NOW).unwrap();
    let expected = record(&good, &["query:read"], "premium");
    assert_eq!(
        admitted,
        Admitted { record: expected, limit: 100, remaining: 99, registrations: vec![], operation_names: vec![None] }
    );
}

#[test]
fn every_bad_key_gets_the_same_401_and_a_bad_checksum_reads_nothing() {
    let good = key(1, 1);
    let mut revoked_record = record(&key(2, 2), &["*"], "default");
    revoked_record.revoked = true;
    let mut expired_record = record(&key(3, 3), &["*"], "default");
    expired_record.expires_at = Some(NOW);
    let edge = Edge::with(vec![record(&good, &["*"], "default"), revoked_record, expired_record]);

    let mut bad_checksum = good.expose().to_owned();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    edge.records.reads.set(0);
    for garbage in [bad_checksum.as_str(), "", "fraiseql_us_east_1_nope", &"x".repeat(300)] {
        assert_eq!(edge.post(Some(garbage), QUERY, NOW), Err(Refused::BadKey));
    }
    assert_eq!(edge.records.reads.get(), 0, "a malformed key must cost no record read");

    let wrong_secret = key(1, 9);
    let unknown = key(4, 4);
    let bodies: Vec<_> =
        [wrong_secret.expose(), unknown.expose(), key(2, 2).expose(), key(3, 3).expose(), &bad_checksum]
            .into_iter()
            .map(|presented| {
                let refused = edge.post(Some(presented), QUERY, NOW).unwrap_err();
                assert_eq!(refused, Refused::BadKey);
                refusal_response(&refused)
            })
            .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "bad keys must be indistinguishable");
    assert_eq!(bodies[0].0, 401);
    assert!(bodies[0].2.contains("UNAUTHENTICATED"));

    let missing = refusal_response(&edge.post(None, QUERY, NOW).unwrap_err());
    assert_eq!(missing.0, 401);
    assert!(missing.2.contains("missing API key"));
}

#[test]
fn grace_secrets_work_until_their_end() {
    let (old, new) = (key(1, 1), key(1, 2));
    let mut rotated = record(&new, &["query:read"], "default");
    rotated.secrets.push(SecretEntry { hash: old.hash(), not_after: Some(NOW + 10) });
    let edge = Edge::with(vec![rotated]);
    assert!(edge.post(Some(old.expose()), QUERY, NOW + 9).is_ok());
    assert_eq!(edge.post(Some(old.expose()), QUERY, NOW + 10), Err(Refused::BadKey));
    assert!(edge.post(Some(new.expose()), QUERY, NOW + 10).is_ok());
}

#[test]
fn permissions_follow_the_operation_and_the_batch() {
    let reader = key(1, 1);
    let edge = Edge::with(vec![record(&reader, &["query:read", "batch:2"], "premium")]);
    assert_eq!(
        edge.post(Some(reader.expose()), MUTATION, NOW),
        Err(Refused::Forbidden(Denial::Operation(OperationKind::Mutation)))
    );
    let two = format!("[{QUERY},{QUERY}]");
    assert!(edge.post(Some(reader.expose()), &two, NOW).is_ok());
    let three = format!("[{QUERY},{QUERY},{QUERY}]");
    assert_eq!(
        edge.post(Some(reader.expose()), &three, NOW),
        Err(Refused::Forbidden(Denial::BatchTooLarge { size: 3, allowed: 2 }))
    );
    let mixed = format!("[{QUERY},{MUTATION}]");
    assert_eq!(
        edge.post(Some(reader.expose()), &mixed, NOW),
        Err(Refused::Forbidden(Denial::Operation(OperationKind::Mutation)))
    );
    let chosen = r#"{"query":"query A { a } mutation B { b }","operationName":"B"}"#;
    assert_eq!(
        edge.post(Some(reader.expose()), chosen, NOW),
        Err(Refused::Forbidden(Denial::Operation(OperationKind::Mutation)))
    );
    assert_eq!(edge.post(Some(reader.expose()), "{", NOW), Err(Refused::BadRequest(ClassifyError::NotGraphqlJson)));
    let get = [("query".to_owned(), "{ users { id } }".to_owned())];
    assert!(edge.request("GET", Some(reader.expose()), &get, "", NOW).is_ok());
    let (status, _, body) = refusal_response(&edge.post(Some(reader.expose()), MUTATION, NOW).unwrap_err());
    assert_eq!(status, 403);
    assert!(body.contains("FORBIDDEN"));
}

#[test]
fn the_rate_limit_answers_429_with_retry_after() {
    let client = key(1, 1);
    let edge = Edge::with(vec![record(&client, &["*"], "default")]);
    let start = NOW - NOW % 60;
    for remaining in [2, 1, 0] {
        assert_eq!(edge.post(Some(client.expose()), QUERY, start + 5).unwrap().remaining, remaining);
    }
    let refused = edge.post(Some(client.expose()), QUERY, start + 5).unwrap_err();
    assert_eq!(refused, Refused::RateLimited { limit: 3, retry_after: 55 });
    let (status, headers, _) = refusal_response(&refused);
    assert_eq!(status, 429);
    assert!(headers.contains(&("retry-after", "55".into())));
    assert!(headers.contains(&("x-ratelimit-limit", "3".into())));
    assert!(edge.post(Some(client.expose()), QUERY, start + 60).is_ok(), "the next window admits again");
}

#[test]
fn a_key_in_the_url_is_refused_even_with_a_good_header() {
    let good = key(1, 1);
    let edge = Edge::with(vec![record(&good, &["*"], "default")]);
    for (name, value) in [("api_key", "x"), ("APIKEY", "x"), ("q", good.expose())] {
        let query = [(name.to_owned(), value.to_owned())];
        assert_eq!(edge.request("POST", Some(good.expose()), &query, QUERY, NOW), Err(Refused::KeyInUrl));
    }
    assert_eq!(refusal_response(&Refused::KeyInUrl).0, 400);
}

#[test]
fn a_record_store_outage_is_a_503_not_a_401() {
    let good = key(1, 1);
    let edge = Edge::with(vec![record(&good, &["*"], "default")]);
    edge.records.down.set(true);
    assert_eq!(edge.post(Some(good.expose()), QUERY, NOW), Err(Refused::Unavailable));
    assert_eq!(refusal_response(&Refused::Unavailable).0, 503);
}

/// A persisted query's body: the hash, and the document too when `document` is given.
fn persisted(document: &str, send_document: bool) -> String {
    let mut body =
        serde_json::json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256_hex(document)}}});
    if send_document {
        body["query"] = document.into();
    }
    body.to_string()
}

#[test]
fn a_persisted_query_is_found_registered_and_classified_from_its_document() {
    let reader = key(1, 1);
    let edge = Edge::with(vec![record(&reader, &["query:read", "batch:3"], "premium")]);
    let document = "query Hello { users { id } }";

    // Unknown: Apollo's answer (a 200), counted against the limit, with no registration.
    let unknown = edge.post(Some(reader.expose()), &persisted(document, false), NOW).unwrap_err();
    assert_eq!(unknown, Refused::PersistedQueryNotFound { batch: None });
    let (status, _, body) = refusal_response(&unknown);
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND");
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");

    // Sent with its hash: admitted, and the document is handed back to be remembered.
    let registered = edge.post(Some(reader.expose()), &persisted(document, true), NOW).unwrap();
    assert_eq!(registered.registrations, vec![(sha256_hex(document), document.to_owned())]);
    assert_eq!(registered.remaining, 98, "the not-found answer and the registration both counted");

    // Remembered: the hash alone is classified from it, over POST and GET.
    edge.records.documents.borrow_mut().insert(sha256_hex(document), document.to_owned());
    let by_hash = edge.post(Some(reader.expose()), &persisted(document, false), NOW).unwrap();
    assert!(by_hash.registrations.is_empty());
    let extensions = format!(r#"{{"persistedQuery":{{"version":1,"sha256Hash":"{}"}}}}"#, sha256_hex(document));
    let get = [("extensions".to_owned(), extensions)];
    assert!(edge.request("GET", Some(reader.expose()), &get, "", NOW).is_ok());

    // A batch with one unknown hash: one not-found answer per entry.
    let batch = format!("[{},{}]", persisted(document, false), persisted("{ other }", false));
    let refused = edge.post(Some(reader.expose()), &batch, NOW).unwrap_err();
    assert_eq!(refused, Refused::PersistedQueryNotFound { batch: Some(2) });
    let answer: serde_json::Value = serde_json::from_str(&refusal_response(&refused).2).unwrap();
    assert_eq!(answer.as_array().map(Vec::len), Some(2));
}

#[test]
fn a_remembered_mutation_stays_a_mutation() {
    let reader = key(1, 1);
    let writer = key(2, 2);
    let edge = Edge::with(vec![record(&reader, &["query:read"], "premium"), record(&writer, &["*"], "premium")]);
    let document = "mutation Bump { bump }";
    edge.records.documents.borrow_mut().insert(sha256_hex(document), document.to_owned());
    assert_eq!(
        edge.post(Some(reader.expose()), &persisted(document, false), NOW),
        Err(Refused::Forbidden(Denial::Operation(OperationKind::Mutation)))
    );
    assert!(edge.post(Some(writer.expose()), &persisted(document, false), NOW).is_ok());
    // A mutation sent under the hash of a query it is not: 400, nothing admitted or registered.
    let query_hash = sha256_hex("{ users { id } }");
    let lie = serde_json::json!({"query": document,
        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": query_hash}}});
    assert_eq!(
        edge.post(Some(writer.expose()), &lie.to_string(), NOW),
        Err(Refused::BadRequest(ClassifyError::HashMismatch))
    );
}

#[test]
fn an_unknown_hash_with_a_bad_key_is_a_401_and_a_lookup_outage_a_503() {
    let reader = key(1, 1);
    let edge = Edge::with(vec![record(&reader, &["query:read"], "premium")]);
    let body = persisted("{ users { id } }", false);
    assert_eq!(edge.post(Some(key(1, 9).expose()), &body, NOW), Err(Refused::BadKey));
    edge.records.down.set(true);
    assert_eq!(edge.post(Some(reader.expose()), &body, NOW), Err(Refused::Unavailable));
}

#[test]
fn an_upgrade_checks_the_key_and_counts_against_the_limit() {
    let client = key(1, 1);
    let edge = Edge::with(vec![record(&client, &["subscription:read"], "default")]);
    let upgrade = |api_key: Option<&str>, query: &[(String, String)]| {
        run(check_key(
            api_key,
            query,
            &edge.records,
            |key, limit, at| edge.limiter.borrow_mut().admit(key, limit, at),
            &edge.tiers,
            NOW,
        ))
    };
    assert_eq!(upgrade(Some(client.expose()), &[]).unwrap().remaining, 2);
    assert_eq!(upgrade(None, &[]), Err(Refused::MissingKey));
    assert_eq!(upgrade(Some(key(1, 2).expose()), &[]), Err(Refused::BadKey));
    assert_eq!(upgrade(Some(client.expose()), &[("key".into(), "x".into())]), Err(Refused::KeyInUrl));
    assert_eq!(upgrade(Some(client.expose()), &[]).unwrap().remaining, 1);
}

fn push(
    store: &MemoryRecords,
    secret: &SyncSecret,
    records: Vec<KeyRecord>,
    signed_at: i64,
    now: i64,
) -> Result<Applied, PushRefused> {
    let body = serde_json::to_vec(&SyncPayload { records, signing_keys: vec![] }).unwrap();
    let signature = secret.sign(signed_at, &body);
    run(apply_push(store, secret, Some(&signed_at.to_string()), Some(&signature), &body, now))
}

#[test]
fn pushes_apply_only_newer_records_so_a_revocation_is_never_undone() {
    let secret = SyncSecret::new("sync-secret");
    let store = MemoryRecords::default();
    let client = key(1, 1);
    let mut live = record(&client, &["*"], "default");
    live.seq = 5;
    let mut revoked = live.clone();
    revoked.seq = 7;
    revoked.revoked = true;
    assert_eq!(
        push(&store, &secret, vec![live.clone()], NOW, NOW),
        Ok(Applied { applied: 1, ignored: 0, signing_keys: 0 })
    );
    assert_eq!(
        push(&store, &secret, vec![revoked.clone()], NOW, NOW),
        Ok(Applied { applied: 1, ignored: 0, signing_keys: 0 })
    );
    // A replay of the older push, and a reordered batch, change nothing.
    assert_eq!(
        push(&store, &secret, vec![live.clone()], NOW, NOW),
        Ok(Applied { applied: 0, ignored: 1, signing_keys: 0 })
    );
    assert_eq!(
        push(&store, &secret, vec![revoked.clone(), live], NOW + 1, NOW + 1),
        Ok(Applied { applied: 0, ignored: 2, signing_keys: 0 })
    );
    assert!(store.records.borrow()[&client.key_id().to_string()].revoked);
}

#[test]
fn forged_stale_or_unsigned_pushes_are_refused() {
    let secret = SyncSecret::new("sync-secret");
    let forged = record(&key(1, 1), &["*"], "default");
    let body = serde_json::to_vec(&SyncPayload { records: vec![forged.clone()], signing_keys: vec![] }).unwrap();
    let guessed = SyncSecret::new("guess").sign(NOW, &body);
    let stamp = NOW.to_string();
    let fresh = MemoryRecords::default();
    assert_eq!(
        run(apply_push(&fresh, &secret, Some(&stamp), Some(&guessed), &body, NOW)),
        Err(PushRefused::Unauthorized(SyncError::BadSignature))
    );
    assert_eq!(
        run(apply_push(&fresh, &secret, Some(&stamp), Some(&secret.sign(NOW, &body)), &body, NOW + 301)),
        Err(PushRefused::Unauthorized(SyncError::StaleTimestamp))
    );
    assert_eq!(
        run(apply_push(&fresh, &secret, None, None, &body, NOW)),
        Err(PushRefused::Unauthorized(SyncError::BadTimestamp))
    );
    let junk = b"{\"records\": 5}";
    assert_eq!(
        run(apply_push(&fresh, &secret, Some(&stamp), Some(&secret.sign(NOW, junk)), junk, NOW)),
        Err(PushRefused::BadPayload)
    );
    assert!(fresh.records.borrow().is_empty(), "nothing refused was stored");
}

/// What usage makes of a request: the key and outcome it counts, if any, as the worker derives them
/// from the check (through a record source that notes whether it found a record).
fn counted(edge: &Edge, api_key: Option<&str>, body: &str) -> Option<(KeyId, Outcome)> {
    let noting = NotingRecords::new(&edge.records);
    let incoming = Incoming { method: "POST", api_key, query: &[], body: body.as_bytes() };
    let admit = |key, limit, at| edge.limiter.borrow_mut().admit(key, limit, at);
    let checked = run(check(&incoming, &noting, &edge.records, admit, &edge.tiers, NOW));
    usage::outcome(api_key, noting.found(), &checked)
}

#[test]
fn usage_counts_the_four_outcomes_and_a_401_only_for_a_known_key_id() {
    let reader = key(1, 1);
    let mut revoked = record(&key(2, 2), &["*"], "default");
    revoked.revoked = true;
    let edge = Edge::with(vec![record(&reader, &["query:read"], "default"), revoked]);
    let id = reader.key_id();
    assert_eq!(counted(&edge, Some(reader.expose()), QUERY), Some((id, Outcome::Admitted)));
    assert_eq!(counted(&edge, Some(reader.expose()), MUTATION), Some((id, Outcome::Forbidden)));
    assert_eq!(counted(&edge, Some(reader.expose()), QUERY), Some((id, Outcome::Admitted)));
    assert_eq!(counted(&edge, Some(reader.expose()), QUERY), Some((id, Outcome::Admitted)));
    assert_eq!(counted(&edge, Some(reader.expose()), QUERY), Some((id, Outcome::RateLimited)), "the tier's 3 a minute");
    // Wrong secret and revoked: a record was found, so the 401 counts for its key.
    assert_eq!(counted(&edge, Some(key(1, 9).expose()), QUERY), Some((id, Outcome::Refused)));
    assert_eq!(counted(&edge, Some(key(2, 2).expose()), QUERY), Some((key(2, 2).key_id(), Outcome::Refused)));
    // Unknown ids, garbage, a missing key, a bad request: nothing to count.
    assert_eq!(counted(&edge, Some(key(7, 7).expose()), QUERY), None);
    assert_eq!(counted(&edge, Some("garbage"), QUERY), None);
    assert_eq!(counted(&edge, None, QUERY), None);
    assert_eq!(counted(&edge, Some(reader.expose()), "{"), None, "a 400 counts nowhere");
}

#[test]
fn an_admitted_request_names_each_of_its_operations() {
    let client = key(1, 1);
    let edge = Edge::with(vec![record(&client, &["*", "batch:3"], "premium")]);
    let names = |body: &str| edge.post(Some(client.expose()), body, NOW).unwrap().operation_names;
    assert_eq!(names(r#"{"query":"query GetUser { users { id } }"}"#), [Some("GetUser".to_owned())]);
    assert_eq!(names(QUERY), [None]);
    assert_eq!(
        names(r#"[{"query":"query A { a } mutation B { b }","operationName":"B"},{"query":"{ a }"}]"#),
        [Some("B".to_owned()), None]
    );
}
