//! Usage end to end: requests through the built worker in workerd are counted there and flushed to the
//! real control plane (SQLite, local KMS), whose usage API shows them within 30 s, exactly, by outcome
//! and operation name. Between the edge and the control plane sits a tap that forwards every flush as
//! it is and keeps a copy (so one can be replayed); it changes nothing, and answers 503 only while the
//! control plane behind it is really down. A replayed flush changes nothing, and a control plane that
//! is down while the edge flushes loses no admitted count once it is back within the edge's bound.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use keygate_control_plane::service::Settings;
use keygate_shared::sync::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use keygate_shared::{ApiKey, KeySecret, Prefix, Region};
use serde_json::{json, Value};
use support::control_plane::{sqlite_parts, ControlPlane};
use support::edge::{through_edge, until_status, Edge};
use support::origin::start_origin;
use support::{http, MUTATION, QUERY};

const NAMED_QUERY: &str = r#"{"query":"query Hello { users { id } }"}"#;

/// One flush as the tap saw it: its two headers, its body, and what the control plane answered
/// (`None` while it was down).
#[derive(Clone, Debug)]
struct Flush {
    timestamp: String,
    signature: String,
    body: Bytes,
    answered: Option<u16>,
}

impl Flush {
    fn batch_id(&self) -> String {
        serde_json::from_slice::<Value>(&self.body).unwrap()["batch_id"].as_str().unwrap().to_owned()
    }
}

#[derive(Clone)]
struct Tap {
    control_plane: SocketAddr,
    flushes: Arc<Mutex<Vec<Flush>>>,
}

async fn forward(State(tap): State<Tap>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
    let sent = http()
        .post(format!("http://{}/_keygate/usage", tap.control_plane))
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, &timestamp)
        .header(SIGNATURE_HEADER, &signature)
        .body(body.clone())
        .send()
        .await;
    let (answered, answer) = match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            (Some(status), (StatusCode::from_u16(status).unwrap(), response.text().await.unwrap_or_default()))
        }
        Err(_) => (None, (StatusCode::SERVICE_UNAVAILABLE, "the control plane is down".to_owned())),
    };
    tap.flushes.lock().unwrap().push(Flush { timestamp, signature, body, answered });
    answer
}

async fn start_tap(control_plane: SocketAddr) -> (Tap, String) {
    let tap = Tap { control_plane, flushes: Arc::default() };
    let router = axum::Router::new().route("/_keygate/usage", axum::routing::post(forward)).with_state(tap.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (tap, url)
}

/// The counts the usage API gives for key `id` over the last hour, by minute: the four outcomes
/// summed, and the operations.
async fn usage(plane: &ControlPlane, id: &str) -> (Value, Value) {
    let response = http()
        .get(format!("{}/admin/api-keys/{id}/usage?granularity=minute", plane.url))
        .bearer_auth(&plane.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    let sum = |field: &str| body["series"].as_array().unwrap().iter().map(|b| b[field].as_u64().unwrap()).sum::<u64>();
    let totals = json!({"admitted": sum("admitted"), "forbidden": sum("forbidden"),
        "rate_limited": sum("rate_limited"), "refused": sum("refused")});
    (totals, body["operations"].clone())
}

/// Waits until the usage API shows `expected` for key `id`, for at most `within`; how long it took.
async fn until_usage(plane: &ControlPlane, id: &str, expected: &Value, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (totals, _) = usage(plane, id).await;
        if &totals == expected {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "after {within:?} the usage API shows {totals}, not {expected}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_counts_reach_the_usage_api_exactly_and_survive_replays_and_an_outage() {
    let (_origin, origin_url) = start_origin().await;
    let dir = std::env::temp_dir().join(format!("keygate-e2e-usage-{}", std::process::id()));
    let (store, kms) = sqlite_parts(&dir).await;
    // The control plane's address is known before it starts, so the edge can be told it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plane_addr = listener.local_addr().unwrap();
    let (tap, tap_url) = start_tap(plane_addr).await;
    let vars = [("FAILED_ATTEMPTS_PER_MINUTE", "0"), ("TIERS", r#"{"default": 100000, "small": 5}"#)];
    let edge = Edge::start_reporting_usage("usage", &origin_url, &tap_url, &vars);
    let plane = ControlPlane::start_on(listener, store.clone(), kms.clone(), &edge.url, Settings::default()).await;

    // A read-only key with a limit of 5 a minute: every outcome can happen to it.
    let (key, id) = plane.create(json!({"name": "counted", "tier": "small", "permissions": ["query:read"]})).await;
    until_status(&edge, &key, 200, Duration::from_secs(5)).await;
    let wrong_secret = ApiKey::assemble(
        &Prefix::default(),
        &Region::default(),
        ApiKey::parse(key.clone()).unwrap().key_id(),
        &KeySecret::from_bytes([7; 32]),
    );
    let unknown = ApiKey::generate(&Prefix::default(), &Region::default(), 0, &mut rand_core::OsRng);

    // What the edge answered is what it must have counted: the probe's 200 is one admitted anonymous query.
    let (mut admitted, mut forbidden, mut rate_limited, mut refused, mut hello, mut anonymous) = (1, 0, 0, 0, 0, 1);
    for (presented, body) in [
        (key.as_str(), NAMED_QUERY),
        (key.as_str(), NAMED_QUERY),
        (key.as_str(), QUERY),
        (key.as_str(), MUTATION),
        (key.as_str(), NAMED_QUERY),
        (key.as_str(), QUERY),
        (key.as_str(), QUERY),
        (wrong_secret.expose(), QUERY),
        (wrong_secret.expose(), QUERY),
        // Neither a malformed key nor an unknown key id is any key's usage.
        ("fraiseql_us_east_1_garbage", QUERY),
        (unknown.expose(), QUERY),
    ] {
        match (through_edge(&edge, Some(presented), body).await.0, presented == key) {
            (200, _) => {
                admitted += 1;
                if body == NAMED_QUERY {
                    hello += 1
                } else {
                    anonymous += 1
                }
            }
            (403, _) => forbidden += 1,
            (429, _) => rate_limited += 1,
            (401, false) if presented == wrong_secret.expose() => refused += 1,
            (401, false) => {}
            (status, _) => panic!("unexpected {status} for {body}"),
        }
    }
    assert!(forbidden == 1 && refused == 2 && rate_limited >= 1, "the run did not exercise every outcome");
    let expected =
        json!({"admitted": admitted, "forbidden": forbidden, "rate_limited": rate_limited, "refused": refused});
    let took = until_usage(&plane, &id, &expected, Duration::from_secs(30)).await;
    eprintln!("usage reached the API {took:?} after the last request");
    let (_, operations) = usage(&plane, &id).await;
    let mut expected_operations =
        vec![json!({"name": "Hello", "count": hello}), json!({"name": "(anonymous)", "count": anonymous})];
    expected_operations.sort_by_key(|op| std::cmp::Reverse(op["count"].as_u64()));
    if hello == anonymous {
        expected_operations.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    }
    assert_eq!(operations, Value::Array(expected_operations));
    let view: Value = http()
        .get(format!("{}/admin/api-keys/{id}", plane.url))
        .bearer_auth(&plane.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(view["last_used_at"].as_str().is_some_and(|t| t.ends_with(":00Z")), "{view}");

    // A flush sent again, exactly as the edge signed it, changes nothing.
    let delivered = tap.flushes.lock().unwrap().iter().find(|f| f.answered == Some(200)).cloned().unwrap();
    let replayed = http()
        .post(format!("{}/_keygate/usage", plane.url))
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, &delivered.timestamp)
        .header(SIGNATURE_HEADER, &delivered.signature)
        .body(delivered.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status().as_u16(), 200);
    assert_eq!(replayed.json::<Value>().await.unwrap()["applied"], false);
    assert_eq!(usage(&plane, &id).await.0, expected);

    // The control plane goes down while the edge keeps serving and flushing, then comes back on the
    // same address and store: every admitted request is counted once.
    let (busy, busy_id) = plane.create(json!({"name": "busy", "permissions": ["query:read"]})).await;
    until_status(&edge, &busy, 200, Duration::from_secs(5)).await;
    until_usage(
        &plane,
        &busy_id,
        &json!({"admitted": 1, "forbidden": 0, "rate_limited": 0, "refused": 0}),
        Duration::from_secs(30),
    )
    .await;
    drop(plane);
    let flushed_before = tap.flushes.lock().unwrap().len();
    for _ in 0..40 {
        assert_eq!(
            through_edge(&edge, Some(&busy), QUERY).await.0,
            200,
            "a request failed while the control plane was down"
        );
    }
    let down_since = Instant::now();
    while !tap.flushes.lock().unwrap()[flushed_before..].iter().any(|f| f.answered.is_none()) {
        assert!(
            down_since.elapsed() < Duration::from_secs(30),
            "the edge did not try to flush while the control plane was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listener = tokio::net::TcpListener::bind(plane_addr).await.unwrap();
    let plane = ControlPlane::start_on(listener, store, kms, &edge.url, Settings::default()).await;
    until_usage(
        &plane,
        &busy_id,
        &json!({"admitted": 41, "forbidden": 0, "rate_limited": 0, "refused": 0}),
        Duration::from_secs(60),
    )
    .await;
    let flushes = tap.flushes.lock().unwrap().clone();
    let failed: Vec<String> =
        flushes[flushed_before..].iter().filter(|f| f.answered.is_none()).map(Flush::batch_id).collect();
    assert!(
        flushes[flushed_before..].iter().any(|f| f.answered == Some(200) && failed.contains(&f.batch_id())),
        "no batch that failed was delivered later under the same id"
    );
    // And the first key's counts did not move through all of it.
    assert_eq!(usage(&plane, &id).await.0, expected);
    let _ = std::fs::remove_dir_all(&dir);
}
