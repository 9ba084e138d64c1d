//! Usage counted at the edge, in workerd: the built worker (`wrangler dev`, local KV) counts what
//! became of real requests and posts signed batches to `CONTROL_PLANE_URL`. The receiver here is a
//! STAND-IN for the control plane's ingest (built apart, against the same `keygate_shared::usage`):
//! it checks each batch's signature with `usage::verify` and its limits, keeps what it got, and
//! answers as each test tells it (a 503 for a while, or until the edge gives a batch up).
//!
//! Needs the worker toolchain: `scripts/tools.sh` installs it (make test runs it first).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use keygate_shared::sync::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use keygate_shared::usage::{self, UsageBatch, USAGE_PATH};
use keygate_shared::{ApiKey, KeyId, KeyRecord, KeySecret, PermissionSet, Prefix, Region, SecretEntry, SyncSecret};
use rand_core::OsRng;
use serde_json::json;
use support::edge::{push, through_edge, Edge};
use support::graphql_node::{NodeClient, NodeOrigin};
use support::origin::start_origin;
use support::{now, MUTATION, QUERY, SYNC_SECRET};

/// How the stand-in answers.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 to every batch.
    Up,
    /// 503 to the first `n` posts, then 200.
    DownFor(usize),
    /// 503 to every post of the first batch it sees, 200 to any other: down until the edge gives
    /// that batch up.
    DownForFirstBatch,
}

/// One post the stand-in received.
#[derive(Clone)]
struct Post {
    batch: UsageBatch,
    body: Vec<u8>,
    status: u16,
}

/// The stand-in for the control plane's usage ingest.
struct Receiver {
    answer: Answer,
    posts: Mutex<Vec<Post>>,
    /// Posts refused for their signature, content type or content: none is expected.
    bad: Mutex<Vec<String>>,
}

async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let bad = |why: String| {
        receiver.bad.lock().unwrap().push(why);
        StatusCode::UNAUTHORIZED
    };
    if header("content-type") != "application/json" {
        return bad(format!("content-type {:?}", header("content-type")));
    }
    let secret = SyncSecret::new(SYNC_SECRET);
    if let Err(error) = usage::verify(&secret, &header(TIMESTAMP_HEADER), &header(SIGNATURE_HEADER), &body, now()) {
        return bad(format!("signature: {error:?}"));
    }
    let batch: UsageBatch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(error) => return bad(format!("body: {error}")),
    };
    if let Err(error) = batch.validate() {
        return bad(format!("limits: {error}"));
    }
    let mut posts = receiver.posts.lock().unwrap();
    let down = match receiver.answer {
        Answer::Up => false,
        Answer::DownFor(n) => posts.len() < n,
        Answer::DownForFirstBatch => posts.first().is_none_or(|first| first.batch.batch_id == batch.batch_id),
    };
    let status = if down { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    posts.push(Post { batch, body: body.to_vec(), status: status.as_u16() });
    status
}

impl Receiver {
    /// Starts on a free loopback port; returns it and the base URL the edge is given.
    async fn start(answer: Answer) -> (Arc<Self>, String) {
        let receiver = Arc::new(Self { answer, posts: Mutex::default(), bad: Mutex::default() });
        let app = Router::new().route(USAGE_PATH, post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    /// What came, for a failure's message: each post's batch and answer, without its bytes.
    fn summary(&self) -> Vec<(UsageBatch, u16)> {
        self.posts().into_iter().map(|post| (post.batch, post.status)).collect()
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The batches the stand-in took (answered 200), once each.
    fn delivered(&self) -> Vec<UsageBatch> {
        let mut seen = std::collections::BTreeSet::new();
        self.posts()
            .into_iter()
            .filter(|post| post.status == 200 && seen.insert(post.batch.batch_id.clone()))
            .map(|post| post.batch)
            .collect()
    }

    /// Waits until the delivered batches hold `events` events (counted and dropped), then a little
    /// longer for any that should not come; returns them.
    async fn until_delivered(&self, events: u64, edge: &Edge) -> Vec<UsageBatch> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while total_events(&self.delivered()) < events {
            assert!(Instant::now() < deadline, "only {:?} of {events} events came: {}", self.summary(), edge.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(self.bad.lock().unwrap().is_empty(), "refused posts: {:?}", self.bad.lock().unwrap());
        self.delivered()
    }
}

/// Every event the batches account for: counted in a row, or reported as dropped.
fn total_events(batches: &[UsageBatch]) -> u64 {
    batches
        .iter()
        .flat_map(|batch| batch.rows.iter())
        .map(|row| row.admitted + row.forbidden + row.rate_limited + row.refused)
        .sum::<u64>()
        + batches.iter().map(|batch| batch.dropped).sum::<u64>()
}

/// A key's counts summed over minutes and batches: admitted, forbidden, rate limited, refused, and
/// the operations by name.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    counts: [u64; 4],
    operations: BTreeMap<String, u64>,
}

fn totals(batches: &[UsageBatch], key: KeyId) -> Totals {
    let mut totals = Totals::default();
    for row in batches.iter().flat_map(|batch| batch.rows.iter()).filter(|row| row.key_id == key) {
        for (total, count) in totals.counts.iter_mut().zip([row.admitted, row.forbidden, row.rate_limited, row.refused])
        {
            *total += count;
        }
        for op in &row.operations {
            *totals.operations.entry(op.name.clone()).or_default() += op.count;
        }
    }
    totals
}

fn new_key() -> ApiKey {
    ApiKey::generate(&Prefix::default(), &Region::default(), now() as u64 * 1000, &mut OsRng)
}

fn record(key: &ApiKey, tier: &str, permissions: &[&str], revoked: bool) -> KeyRecord {
    KeyRecord {
        key_id: key.key_id(),
        seq: 1,
        tier: tier.into(),
        permissions: PermissionSet::parse(permissions).unwrap(),
        expires_at: None,
        revoked,
        secrets: vec![SecretEntry { hash: key.hash(), not_after: None }],
        owner: None,
        disabled: false,
    }
}

/// An origin, a stand-in answering as told, and an edge reporting to it, with `records` pushed. The
/// edge retries a failed batch for `retry_secs` (300 by default) and does not block bad keys by
/// client address (all local clients share one).
async fn setup(name: &str, answer: Answer, retry_secs: &str, records: Vec<KeyRecord>) -> (Arc<Receiver>, Edge) {
    let (_origin, origin_url) = start_origin().await;
    let (receiver, receiver_url) = Receiver::start(answer).await;
    let vars = [("FAILED_ATTEMPTS_PER_MINUTE", "0"), ("USAGE_RETRY_SECS", retry_secs)];
    let edge = Edge::start_reporting_usage(name, &origin_url, &receiver_url, &vars);
    assert_eq!(push(&edge, records, now(), SYNC_SECRET).await.0, 200, "{}", edge.log());
    (receiver, edge)
}

/// Sleeps into the next minute if this one has less than `needed` seconds left, so a per-minute rate
/// limit does not reset in the middle of what a test sends.
async fn with_time_left_in_minute(needed: i64) {
    let left = 60 - now() % 60;
    if left < needed {
        tokio::time::sleep(Duration::from_secs(left as u64 + 1)).await;
    }
}

const NAMED: &str = r#"{"query":"query GetUser { users { id } }"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_outcome_is_counted_exactly_and_garbage_not_at_all() {
    let (reader, tiny, revoked, unknown) = (new_key(), new_key(), new_key(), new_key());
    let records = vec![
        record(&reader, "default", &["query:read", "batch:3"], false),
        record(&tiny, "tiny", &["query:read"], false),
        record(&revoked, "default", &["*"], true),
    ];
    let (receiver, edge) = setup("usage-counts", Answer::Up, "300", records).await;
    with_time_left_in_minute(20).await;

    // The reader's key id with another secret: well formed, so its record is read, and refused.
    let wrong =
        ApiKey::assemble(&Prefix::default(), &Region::default(), reader.key_id(), &KeySecret::generate(&mut OsRng));
    let wrong = wrong.expose();
    let batch = format!("[{NAMED},{QUERY}]");
    let sent: Vec<(Option<&str>, &str, u16)> = vec![
        (Some(reader.expose()), NAMED, 200),
        (Some(reader.expose()), NAMED, 200),
        (Some(reader.expose()), NAMED, 200),
        (Some(reader.expose()), QUERY, 200),
        (Some(reader.expose()), QUERY, 200),
        (Some(reader.expose()), &batch, 200),
        (Some(reader.expose()), MUTATION, 403),
        (Some(reader.expose()), MUTATION, 403),
        (Some(wrong), QUERY, 401),
        (Some(tiny.expose()), QUERY, 200),
        (Some(tiny.expose()), QUERY, 200),
        (Some(tiny.expose()), QUERY, 200),
        (Some(tiny.expose()), QUERY, 429),
        (Some(tiny.expose()), QUERY, 429),
        (Some(revoked.expose()), QUERY, 401),
        (Some(revoked.expose()), QUERY, 401),
        // None of these names a key the edge has: they count nowhere.
        (Some(unknown.expose()), QUERY, 401),
        (Some(unknown.expose()), QUERY, 401),
        (Some("garbage"), QUERY, 401),
        (Some("fraiseql_us_east_1_nope"), QUERY, 401),
        (None, QUERY, 401),
        (Some(reader.expose()), "{", 400),
    ];
    for (key, body, status) in &sent {
        let (got, _, answer) = through_edge(&edge, *key, body).await;
        assert_eq!(got, *status, "{body}: {answer}");
    }

    let delivered = receiver.until_delivered(16, &edge).await;
    assert_eq!(total_events(&delivered), 16, "{delivered:?}");
    let operations = |pairs: &[(&str, u64)]| pairs.iter().map(|(name, n)| (name.to_string(), *n)).collect();
    assert_eq!(
        totals(&delivered, reader.key_id()),
        Totals { counts: [6, 2, 0, 1], operations: operations(&[("GetUser", 4), (usage::ANONYMOUS_OPERATION, 3)]) },
        "a batch request is one request and two operations; the wrong secret is a refusal of a known key"
    );
    assert_eq!(
        totals(&delivered, tiny.key_id()),
        Totals { counts: [3, 0, 2, 0], operations: operations(&[(usage::ANONYMOUS_OPERATION, 3)]) }
    );
    assert_eq!(totals(&delivered, revoked.key_id()), Totals { counts: [0, 0, 0, 2], operations: BTreeMap::new() });
    assert_eq!(totals(&delivered, unknown.key_id()), Totals::default());
    assert!(delivered.iter().all(|batch| batch.dropped == 0));
    assert!(
        delivered.iter().flat_map(|b| b.rows.iter()).all(|row| row.minute % 60 == 0 && (now() - row.minute) < 120),
        "rows are this minute's or the last"
    );
}

/// Sends `QUERY` with `key` every 100 ms until `done` says so (or 60 s pass); every answer must be
/// a 200. Returns how many were sent.
async fn keep_sending(edge: &Edge, key: &ApiKey, mut done: impl FnMut() -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {}", edge.log());
        let (status, _, body) = through_edge(edge, Some(key.expose()), QUERY).await;
        assert_eq!(status, 200, "a request failed while usage could not be delivered: {body}");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sent
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_for_a_while_is_retried_with_its_id_and_nothing_is_lost() {
    let reader = new_key();
    let records = vec![record(&reader, "default", &["query:read"], false)];
    let (receiver, edge) = setup("usage-retry", Answer::DownFor(2), "10", records).await;

    // Requests keep coming while the stand-in answers 503 to the first two posts: tries at about 0,
    // 1 and 3 s, within the bound.
    let sent = keep_sending(&edge, &reader, || !receiver.delivered().is_empty()).await;
    let delivered = receiver.until_delivered(sent, &edge).await;

    let posts = receiver.posts();
    let first = &posts[0];
    let summary = receiver.summary();
    assert_eq!(posts.iter().map(|p| p.status).take(3).collect::<Vec<_>>(), [503, 503, 200], "{summary:?}");
    for retry in &posts[1..3] {
        assert_eq!(retry.batch.batch_id, first.batch.batch_id, "a retry keeps its batch id: {summary:?}");
        assert_eq!(retry.body, first.body, "and its content");
    }
    assert_eq!(delivered[0].batch_id, first.batch.batch_id);
    assert_eq!(totals(&delivered, reader.key_id()).counts, [sent, 0, 0, 0], "every admitted request is counted once");
    assert!(delivered.iter().all(|batch| batch.dropped == 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_past_the_bound_is_dropped_and_the_next_batch_says_so() {
    let reader = new_key();
    let records = vec![record(&reader, "default", &["query:read"], false)];
    // Tried at about 0 and 1 s; the next try would start past 3 s: dropped.
    let (receiver, edge) = setup("usage-drop", Answer::DownForFirstBatch, "3", records).await;

    let sent = keep_sending(&edge, &reader, || !receiver.delivered().is_empty()).await;
    let delivered = receiver.until_delivered(sent, &edge).await;

    let posts = receiver.posts();
    let given_up = &posts[0].batch;
    let tries: Vec<&Post> = posts.iter().filter(|p| p.batch.batch_id == given_up.batch_id).collect();
    assert!(tries.len() >= 2, "it was retried first: {:?}", receiver.summary());
    assert!(tries.iter().all(|p| p.status == 503 && p.body == posts[0].body));
    let lost = total_events(std::slice::from_ref(given_up));
    assert!(lost > 0);
    assert_eq!(delivered[0].dropped, lost, "the next batch reports the dropped events");
    let counted = totals(&delivered, reader.key_id()).counts;
    assert_eq!(counted[0] + lost, sent, "every request is either counted or reported dropped");
    assert_eq!(&counted[1..], [0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_counts_its_upgrade_and_each_operation() {
    let subscriber = new_key();
    let origin = NodeOrigin::start();
    let (receiver, receiver_url) = Receiver::start(Answer::Up).await;
    let vars = [("FAILED_ATTEMPTS_PER_MINUTE", "0")];
    let edge = Edge::start_reporting_usage("usage-ws", &origin.url, &receiver_url, &vars);
    let records = vec![record(&subscriber, "default", &["subscription:read"], false)];
    assert_eq!(push(&edge, records, now(), SYNC_SECRET).await.0, 200, "{}", edge.log());
    let url = format!("{}/graphql", edge.url.replacen("http", "ws", 1));
    let ticks = json!({"id": "s", "query": "subscription Ticks { ticks(intervalMs: 20) }", "take": 1});

    // The key in the upgrade's header: a mutation it may not send, then a subscription.
    let mutation = json!({"id": "m", "query": "mutation Bump { bump }"});
    let events = NodeClient::run(&json!({"url": url, "protocol": "graphql-transport-ws", "timeoutMs": 10_000,
        "headers": {"X-API-Key": subscriber.expose()}, "operations": [mutation, ticks]}));
    let kinds: Vec<&str> =
        events.iter().filter_map(|e| e["event"].as_str()).filter(|k| *k == "next" || *k == "error").collect();
    assert_eq!(kinds, ["error", "next"], "{events:?}");
    // The key in connection_init (legacy protocol), a subscription.
    let events = NodeClient::run(&json!({"url": url, "protocol": "graphql-ws", "timeoutMs": 10_000,
        "connectionParams": {"X-API-Key": subscriber.expose()}, "operations": [ticks]}));
    assert_eq!(events.iter().filter(|e| e["event"] == "next").count(), 1, "{events:?}");

    // Each socket's key check is a request without an operation; each subscribe one with its name.
    let delivered = receiver.until_delivered(5, &edge).await;
    assert_eq!(
        totals(&delivered, subscriber.key_id()),
        Totals { counts: [4, 1, 0, 0], operations: [("Ticks".to_owned(), 2)].into() },
        "{delivered:?}"
    );
}
