//! The whole path on real parts: the built worker in workerd (`wrangler dev`, local KV), the control
//! plane with its replicator (SQLite + local KMS, and PostgreSQL + the aws provider on the KMS API
//! server), and an HTTP GraphQL origin that checks the identity signature.
//!
//! Needs the worker toolchain: `scripts/tools.sh` installs it (make test runs it first).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../control-plane/tests/it/support/kms_server.rs"]
mod kms_server;
mod support;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_control_plane::kms::aws::AwsKms;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::Kms;
use keygate_control_plane::store::{SqlStore, Store};
use keygate_shared::{ApiKey, KeyId, KeyRecord, OriginSecret, PermissionSet, Prefix, Region, SecretEntry};
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::edge::{push, through_edge, through_edge_at, until_status, Edge};
use support::origin::start_origin;
use support::{http, now, MUTATION, ORIGIN_SECRET, QUERY, SYNC_SECRET};

async fn the_whole_path(name: &str, store: Arc<dyn Store>, kms: Arc<dyn Kms>) {
    let (origin, origin_url) = start_origin().await;
    let edge = Edge::start(name, &origin_url);
    let plane = ControlPlane::start(store, kms, &edge.url).await;

    // A good key reaches the origin with the verified identity, signed, and without X-API-Key.
    let (key, id) =
        plane.create(json!({"name": "reader", "tier": "default", "permissions": ["query:read", "batch:2"]})).await;
    until_status(&edge, &key, 200, Duration::from_secs(5)).await;
    let (status, headers, body) = through_edge_at(&edge, "/graphql?trace=1", Some(&key), QUERY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"data": {"users": [{"id": 1}]}}));
    assert_eq!(headers["x-ratelimit-limit"], "1000");
    let seen = origin.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!((seen.path_and_query.as_str(), seen.body.as_str()), ("/graphql?trace=1", QUERY));
    assert!(!seen.headers.contains_key("x-api-key"), "the key reached the origin");
    assert_eq!(
        (seen.headers["x-keygate-key-id"].as_str(), seen.headers["x-keygate-tier"].as_str()),
        (id.as_str(), "default")
    );
    let verified = OriginSecret::new(ORIGIN_SECRET).verify(
        &seen.headers["x-keygate-timestamp"],
        &id,
        "default",
        &seen.headers["x-keygate-signature"],
        now(),
    );
    assert_eq!(verified, Ok(()));
    // A URL near the push path's is left to the wasm's routing, which serves it as any GraphQL request.
    let (status, headers, body) = through_edge_at(&edge, "/graphql?next=/_keygate/sync", Some(&key), QUERY).await;
    assert_eq!((status, headers["x-ratelimit-limit"].as_str()), (200, "1000"), "{body}");
    let routed = origin.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(routed.path_and_query, "/graphql?next=/_keygate/sync");
    assert_eq!(routed.headers["x-keygate-key-id"], id);
    // A client cannot forge identity headers: the edge replaces them.
    let forged = http()
        .post(format!("{}/graphql", edge.url))
        .header("X-API-Key", &key)
        .header("X-Keygate-Tier", "premium")
        .header("X-Keygate-Scope", "admin")
        .header("Authorization", "Bearer forged")
        .header("X-Request-Id", "kept")
        .header("content-type", "application/json")
        .body(QUERY)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 200);
    let seen = origin.seen.lock().unwrap().last().unwrap().headers.clone();
    assert_eq!(seen["x-keygate-tier"], "default");
    assert!(!seen.contains_key("x-keygate-scope"), "a client's identity header reached the origin");
    assert!(!seen.contains_key("x-api-key"), "the key reached the origin");
    assert_ne!(seen.get("authorization").map(String::as_str), Some("Bearer forged"));
    assert_eq!(seen["x-request-id"], "kept", "a client's own header was dropped");

    // Permissions: a read-only key's mutation, and a batch over its limit, are 403 and never reach the origin.
    let reached = origin.seen.lock().unwrap().len();
    let (status, _, body) = through_edge(&edge, Some(&key), MUTATION).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("FORBIDDEN"));
    let (status, _, _) = through_edge(&edge, Some(&key), &format!("[{QUERY},{QUERY},{QUERY}]")).await;
    assert_eq!(status, 403);
    assert!(through_edge(&edge, Some(&key), &format!("[{QUERY},{QUERY}]")).await.0 == 200);
    let (status, _, _) = through_edge_at(&edge, &format!("/graphql?api_key={key}"), Some(&key), QUERY).await;
    assert_eq!(status, 400, "a key in the URL");
    assert_eq!(origin.seen.lock().unwrap().len(), reached + 1, "a refused request reached the origin");

    // Unknown, wrong, revoked and expired keys: one and the same 401.
    eprintln!("{name}: unknown, wrong, revoked and expired keys");
    let unknown = ApiKey::generate(&Prefix::default(), &Region::default(), 1, &mut rand_core::OsRng);
    let mut wrong = key.clone();
    wrong.replace_range(wrong.len() - 49.., &unknown.expose()[unknown.expose().len() - 49..]);
    let (revoked, revoked_id) = plane.create(json!({"name": "to revoke", "permissions": ["*"]})).await;
    until_status(&edge, &revoked, 200, Duration::from_secs(5)).await;
    let started = Instant::now();
    plane.admin(&format!("/admin/api-keys/{revoked_id}/revoke"), json!({})).await;
    let propagation = until_status(&edge, &revoked, 401, Duration::from_secs(1)).await;
    eprintln!(
        "{name}: revocation visible at the edge after {:?} (admin call included: {:?})",
        propagation,
        started.elapsed()
    );
    let expired = ApiKey::generate(&Prefix::default(), &Region::default(), 1, &mut rand_core::OsRng);
    let expired_record = KeyRecord {
        key_id: expired.key_id(),
        seq: 1,
        tier: "default".into(),
        permissions: PermissionSet::parse(["*"]).unwrap(),
        expires_at: Some(now() - 1),
        revoked: false,
        disabled: false,
        secrets: vec![SecretEntry { hash: expired.hash(), not_after: None }],
        owner: None,
    };
    assert_eq!(push(&edge, vec![expired_record], now(), SYNC_SECRET).await.0, 200);
    let answers: Vec<(u16, String)> =
        futures_answers(&edge, &[unknown.expose(), &wrong, &revoked, expired.expose(), "garbage"]).await;
    assert!(answers.iter().all(|a| a == &answers[0]), "bad keys are distinguishable: {answers:?}");
    assert_eq!(answers[0].0, 401);

    // Rotation: the old secret works through its grace period at the edge, then stops.
    eprintln!("{name}: rotation");
    let (old, rotating) = plane.create(json!({"name": "rotating", "permissions": ["query:read"]})).await;
    until_status(&edge, &old, 200, Duration::from_secs(5)).await;
    let rotated = plane.admin(&format!("/admin/api-keys/{rotating}/rotate"), json!({"grace_period_secs": 3})).await;
    let new = rotated["api_key"].as_str().unwrap().to_owned();
    until_status(&edge, &new, 200, Duration::from_secs(2)).await;
    assert_eq!(through_edge(&edge, Some(&old), QUERY).await.0, 200, "the old secret in its grace period");
    until_status(&edge, &old, 401, Duration::from_secs(6)).await;
    assert_eq!(through_edge(&edge, Some(&new), QUERY).await.0, 200);

    // The rate limit: a tier of 3 a minute answers the fourth request 429 with Retry-After.
    eprintln!("{name}: the rate limit");
    let (tiny, _) = plane.create(json!({"name": "tiny", "tier": "tiny", "permissions": ["*"]})).await;
    until_status(&edge, &tiny, 200, Duration::from_secs(5)).await;
    let mut last = (0, HashMap::new(), String::new());
    for _ in 0..3 {
        last = through_edge(&edge, Some(&tiny), QUERY).await;
    }
    assert_eq!(last.0, 429, "{}", last.2);
    assert!(last.1["retry-after"].parse::<i64>().unwrap() <= 60);
    assert_eq!(last.1["x-ratelimit-limit"], "3");

    // Forged, stale and replayed pushes are refused or ignored; the revocation stays.
    eprintln!("{name}: forged, stale and replayed pushes are refused or ignored; the revocation stays.");
    let mut resurrected = KeyRecord {
        key_id: KeyId::from_str(&revoked_id).unwrap(),
        seq: 1,
        tier: "default".into(),
        permissions: PermissionSet::parse(["*"]).unwrap(),
        expires_at: None,
        revoked: false,
        disabled: false,
        secrets: vec![SecretEntry { hash: keygate_shared::SecretHash::of_key(&revoked), not_after: None }],
        owner: None,
    };
    assert_eq!(push(&edge, vec![resurrected.clone()], now(), "guessed-secret").await.0, 401);
    assert_eq!(push(&edge, vec![resurrected.clone()], now() - 301, SYNC_SECRET).await.0, 401);
    let (status, body) = push(&edge, vec![resurrected.clone()], now(), SYNC_SECRET).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"applied": 0, "ignored": 1})));
    resurrected.seq = 0;
    assert_eq!(push(&edge, vec![resurrected], now(), SYNC_SECRET).await.0, 200);
    assert_eq!(through_edge(&edge, Some(&revoked), QUERY).await.0, 401, "a revocation was undone");
    // The control plane stops before the edge it pushes to.
    drop(plane);
    drop(edge);
}

async fn futures_answers(edge: &Edge, keys: &[&str]) -> Vec<(u16, String)> {
    let mut answers = Vec::new();
    for key in keys {
        let (status, _, body) = through_edge(edge, Some(key), QUERY).await;
        answers.push((status, body));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_on_sqlite_with_the_local_kms() {
    let dir = std::env::temp_dir().join(format!("keygate-e2e-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keygate.db").display());
    let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&url).await.unwrap());
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open_or_create(&dir.join("master.key")).unwrap());
    the_whole_path("sqlite", store, kms).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_on_postgres_with_the_aws_kms() {
    let pg =
        std::env::var("KEYGATE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("kg_e2e_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&pg).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    let options = sqlx::postgres::PgConnectOptions::from_str(&pg).unwrap().options([("search_path", schema.as_str())]);
    let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Postgres>::connect_postgres(options).await.unwrap());
    let server = kms_server::KmsServer::start();
    let kms: Arc<dyn Kms> = Arc::new(AwsKms::from_client(server.client(), server.create_key().await));
    the_whole_path("postgres", store, kms).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
}
