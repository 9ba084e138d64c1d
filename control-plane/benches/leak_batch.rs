//! P12: how long a signed GitHub secret-scanning report of 1,000 tokens takes, through the real router
//! over SQLite (local KMS) and, when it answers, PostgreSQL: signature check, 1,000 parses, a lookup
//! for each well-formed token and 10 revocations. GitHub gives a partner 30 s.
//!
//! `cargo bench -p keygate-control-plane --bench leak_batch` (BENCH_RUNS, default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use keygate_control_plane::clock::{Clock as _, SystemClock};
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::leaks::{GithubKeys, LeakSettings, OnLeak};
use keygate_control_plane::service::{Actor, NewKey, Service, Settings};
use keygate_control_plane::store::{SqlStore, Store};
use keygate_shared::{ApiKey, Prefix, Region};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use rand_core::OsRng;
use serde_json::json;
use tower::ServiceExt;

const TOKENS: usize = 1_000;
const REAL: usize = 10;

async fn one_batch(service: &Arc<Service>, router: &axum::Router, signing: &SigningKey) -> Duration {
    let mut tokens: Vec<String> = (0..TOKENS - REAL)
        .map(|_| ApiKey::generate(&Prefix::default(), &Region::default(), 1, &mut OsRng).expose().to_owned())
        .collect();
    for at in 0..REAL {
        let request = NewKey {
            name: "bench".into(),
            tier: "default".into(),
            permissions: vec!["query:read".into()],
            ..NewKey::default()
        };
        let created = service.create(&Actor::Cli, request).await.unwrap();
        tokens.insert(at * (TOKENS / REAL), created.key.expose().to_owned());
    }
    let body: Vec<_> = tokens
        .iter()
        .map(|token| json!({"token": token, "type": "keygate_api_key", "url": "https://github.com/o/r/blob/main/.env", "source": "content"}))
        .collect();
    let body = serde_json::to_vec(&body).unwrap();
    let signature: Signature = signing.sign(&body);
    let signature = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/secret-scanning/github")
        .header("content-type", "application/json")
        .header("Github-Public-Key-Identifier", "bench")
        .header("Github-Public-Key-Signature", signature)
        .body(Body::from(body))
        .unwrap();
    let started = Instant::now();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let positives = answer.as_array().unwrap().iter().filter(|f| f["label"] == "true_positive").count();
    assert_eq!(positives, REAL);
    took
}

async fn measure(name: &str, store: Arc<dyn Store>, dir: &std::path::Path, runs: usize) {
    store.migrate().await.unwrap();
    let signing = SigningKey::random(&mut OsRng);
    let keys_file = dir.join(format!("{name}-github-keys.json"));
    let pem = signing.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
    std::fs::write(&keys_file, json!({"public_keys": [{"key_identifier": "bench", "key": pem}]}).to_string()).unwrap();
    let github_keys = Arc::new(GithubKeys::open(&keys_file, SystemClock.now_millis()).unwrap());
    let settings = Settings {
        leaks: LeakSettings { on_leak: OnLeak::Revoke, github_keys: Some(github_keys), webhook: None },
        ..Settings::default()
    };
    let kms = Arc::new(LocalKms::open_or_create(&dir.join(format!("{name}-master.key"))).unwrap());
    let service = Arc::new(Service::new(store, kms, Arc::new(SystemClock), Box::new(OsRng), settings));
    let router = keygate_control_plane::api::router(service.clone());
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(one_batch(&service, &router, &signing).await);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    println!(
        "P12 {name}: {TOKENS}-token signed batch ({REAL} live keys revoked): median {:.1} ms, min {:.1}, max {:.1} ({runs} runs)",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
}

fn main() {
    let runs = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5usize).max(1);
    let dir = std::env::temp_dir().join(format!("keygate-bench-leaks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}", dir.join("keygate.db").display());
        let sqlite: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&url).await.unwrap());
        measure("sqlite", sqlite, &dir, runs).await;

        let pg_url = std::env::var("KEYGATE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let Ok(admin) = sqlx::PgPool::connect(&pg_url).await else {
            println!("P12 postgres: skipped (no PostgreSQL at {pg_url})");
            return;
        };
        let schema = format!("kg_bench_leaks_{}", std::process::id());
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
        let options = sqlx::postgres::PgConnectOptions::from_str(&pg_url).unwrap().options([("search_path", &schema)]);
        let pg: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Postgres>::connect_postgres(options).await.unwrap());
        measure("postgres", pg, &dir, runs).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
