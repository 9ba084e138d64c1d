//! The edge worker's GraphQL classifier on arbitrary input, alone and inside the full request check.
//!
//! - As a POST body: `GraphqlBody::decode` never panics; what it accepts holds at least one entry, one
//!   exactly when it is not a batch, and `operations()` names one kind per entry.
//! - As GET parameters (lossy UTF-8, split at the first 0 byte into `query` and `operationName`; no
//!   `operationName` without a 0 byte): `from_query_params(..).operations()` never panics and names
//!   exactly one kind.
//! - Through `check::check` with a good key whose record the source returns (permissions picked by the
//!   input's length): the only refusals are a 400 or a 403, and they agree with the classifier: an
//!   admitted request runs only operations the key may run, in a batch no larger than it may send.
//!   Persisted queries (Apollo APQ) are looked up in a source that knows two documents, a query and a
//!   mutation: a hash it does not know is answered `PERSISTED_QUERY_NOT_FOUND` only when the request
//!   names one, and a known hash is classified as its document.

#![no_main]

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use keygate_edge::check::{check, Admitted, DocumentSource, Incoming, RecordSource, Refused, StoreFault};
use keygate_edge::graphql::{ClassifyError, GraphqlBody};
use keygate_edge::ratelimit::{RateLimiter, Tiers};
use keygate_shared::{
    sha256_hex, ApiKey, Denial, KeyId, KeyRecord, KeySecret, ParsedKey, PermissionSet, Prefix, Region, SecretEntry,
};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

/// Permission sets the record may carry, from one kind of operation to `*`: some documents are refused.
const PERMISSIONS: [&[&str]; 4] =
    [&["query:read"], &["query:read", "batch:2"], &["mutation:write", "subscription:read", "batch:5"], &["*"]];

/// A record source that knows one key, and answers at once.
struct OneRecord(KeyRecord);

impl RecordSource for OneRecord {
    async fn record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreFault> {
        Ok((self.0.key_id.to_string() == key_id).then(|| self.0.clone()))
    }
}

/// The documents the persisted-query source knows.
const KNOWN_DOCUMENTS: [&str; 2] = ["{ a }", "mutation { b }"];

/// A document source that knows [`KNOWN_DOCUMENTS`] by their hashes, and answers at once.
struct KnownDocuments;

impl DocumentSource for KnownDocuments {
    async fn document(&self, hash: &str) -> Result<Option<String>, StoreFault> {
        Ok(KNOWN_DOCUMENTS.iter().find(|d| sha256_hex(d) == hash).map(|d| (*d).to_owned()))
    }
}

/// What the classifier makes of a decoded body once its persisted queries are looked up: the body,
/// with the documents filled in, and whether a hash was unknown.
fn resolved(body: Result<GraphqlBody, ClassifyError>) -> (Result<GraphqlBody, ClassifyError>, bool) {
    let mut body = match body {
        Ok(body) => body,
        Err(error) => return (Err(error), false),
    };
    let hashes = match body.unresolved() {
        Ok(hashes) => hashes,
        Err(error) => return (Err(error), false),
    };
    let mut unknown = false;
    for hash in hashes {
        match KNOWN_DOCUMENTS.iter().find(|d| sha256_hex(d) == hash) {
            Some(document) => body.resolve(&hash, document),
            None => unknown = true,
        }
    }
    (Ok(body), unknown)
}

/// The key the requests present, and one record per permission set.
struct Fixture {
    key: ApiKey,
    records: Vec<OneRecord>,
    tiers: Tiers,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = ApiKey::assemble(
            &Prefix::default(),
            &Region::default(),
            KeyId::from_u128(0x0123_4567_89ab_cdef),
            &KeySecret::from_bytes([7; 32]),
        );
        let records = PERMISSIONS
            .iter()
            .map(|permissions| {
                let Ok(permissions) = PermissionSet::parse(permissions.iter().copied()) else {
                    unreachable!("the fixture's permission strings are valid");
                };
                OneRecord(KeyRecord {
                    key_id: key.key_id(),
                    seq: 1,
                    tier: "default".into(),
                    permissions,
                    expires_at: Some(NOW + 1_000),
                    revoked: false,
                    disabled: false,
                    secrets: vec![SecretEntry { hash: key.hash(), not_after: None }],
                    owner: None,
                })
            })
            .collect();
        Fixture { key, records, tiers: Tiers::default() }
    })
}

/// Runs a future that never waits (the record source answers at once) with a no-op waker.
fn run<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("the in-memory record source never waits"),
    }
}

/// The full check of one request with the fixture's key against `source`.
fn check_request(
    fixture: &Fixture,
    source: &OneRecord,
    method: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Result<Admitted, Refused> {
    let limiter = RefCell::new(RateLimiter::default());
    let incoming = Incoming { method, api_key: Some(fixture.key.expose()), query, body };
    let admit = |key, limit, at| limiter.borrow_mut().admit(key, limit, at);
    run(check(&incoming, source, &KnownDocuments, admit, &fixture.tiers, NOW))
}

/// The check's answer must agree with what the classifier says of `body` and what `permissions` allow.
fn assert_consistent(
    outcome: &Result<Admitted, Refused>,
    body: Result<GraphqlBody, ClassifyError>,
    permissions: &PermissionSet,
) {
    let decoded_batch = body.as_ref().ok().map(|b| (b.is_batch(), b.len()));
    let batch_allowed = decoded_batch
        .is_none_or(|(batch, len)| !batch || u32::try_from(len).is_ok_and(|size| size <= permissions.max_batch()));
    let (body, unknown) = resolved(body);
    if unknown && batch_allowed {
        let expected = decoded_batch.and_then(|(batch, len)| batch.then_some(len));
        assert_eq!(outcome, &Err(Refused::PersistedQueryNotFound { batch: expected }), "an unknown hash");
        return;
    }
    match outcome {
        Ok(admitted) => {
            let Ok(body) = body else {
                panic!("admitted a request the classifier refuses: {body:?}");
            };
            let Ok(operations) = body.operations() else {
                panic!("admitted a request whose documents do not classify");
            };
            assert_eq!(permissions.check_request(&operations, body.is_batch()), Ok(()), "admitted a forbidden request");
            assert!(operations.iter().all(|kind| permissions.allows(*kind)));
            if body.is_batch() {
                assert!(u32::try_from(body.len()).is_ok_and(|size| size <= permissions.max_batch()));
            }
            assert_eq!(admitted.record.tier, "default");
        }
        Err(Refused::BadRequest(error)) => {
            let agrees = match &body {
                Err(decode_error) => decode_error == error,
                Ok(body) => body.operations().err().as_ref() == Some(error),
            };
            assert!(agrees, "400 {error:?} that the classifier does not give: {body:?}");
        }
        Err(Refused::Forbidden(Denial::Operation(kind))) => {
            assert!(!permissions.allows(*kind), "refused a {kind:?} the key may run");
            let Ok(Ok(operations)) = body.map(|body| body.operations()) else {
                panic!("refused an operation of a request that does not classify");
            };
            assert!(operations.contains(kind), "refused a {kind:?} the request does not run");
        }
        Err(Refused::Forbidden(Denial::BatchTooLarge { size, allowed })) => {
            assert_eq!(*allowed, permissions.max_batch());
            assert!(u32::try_from(*size).map_or(true, |size| size > *allowed), "batch of {size} within {allowed}");
            // The size is checked on the decoded body, before any persisted query is looked up.
            assert_eq!(decoded_batch, Some((true, *size)), "refused the batch size of a body that is not that batch");
        }
        Err(other) => panic!("a good key with a live record was refused: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // The POST body on its own.
    if let Ok(body) = GraphqlBody::decode(data) {
        assert!(!body.is_empty());
        assert!(body.is_batch() || body.len() == 1);
        if let Ok(operations) = body.operations() {
            assert_eq!(operations.len(), body.len());
        }
    }

    // The GET parameters on their own.
    let (query, name) = match data.iter().position(|b| *b == 0) {
        Some(zero) => (&data[..zero], Some(&data[zero + 1..])),
        None => (data, None),
    };
    let query = String::from_utf8_lossy(query).into_owned();
    let name = name.map(|name| String::from_utf8_lossy(name).into_owned());
    let Ok(get) = GraphqlBody::from_query_params(Some(query.clone()), name.clone(), None) else {
        unreachable!("without extensions the GET parameters always make a body");
    };
    assert!(!get.is_batch() && get.len() == 1);
    if let Ok(operations) = get.operations() {
        assert_eq!(operations.len(), 1);
    }

    // The whole check, with the input as the POST body and as the GET parameters.
    let fixture = fixture();
    let source = &fixture.records[data.len() % fixture.records.len()];
    let permissions = &source.0.permissions;
    let post = check_request(fixture, source, "POST", &[], data);
    assert_consistent(&post, GraphqlBody::decode(data), permissions);

    let mut params = vec![("query".to_owned(), query.clone())];
    params.extend(name.clone().map(|name| ("operationName".to_owned(), name)));
    let get_outcome = check_request(fixture, source, "GET", &params, b"");
    if get_outcome == Err(Refused::KeyInUrl) {
        // A parameter value that parses as a key is refused before anything else.
        assert!(params.iter().any(|(_, value)| ParsedKey::parse(value).is_ok()), "no key in {params:?}");
    } else {
        assert_consistent(&get_outcome, GraphqlBody::from_query_params(Some(query), name, None), permissions);
    }
});
