//! The whole path on real parts: the built worker in workerd (`wrangler dev`, local KV), the control
//! plane with its replicator (SQLite + local KMS, and PostgreSQL + the aws provider on the KMS API
//! server), and an HTTP GraphQL origin that checks the identity signature.
//!
//! Needs the worker toolchain: `scripts/tools.sh` installs it (make test runs it first).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../control-plane/tests/it/support/kms_server.rs"]
mod kms_server;

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::any;
use axum::Router;
use keygate_control_plane::clock::SystemClock;
use keygate_control_plane::kms::aws::AwsKms;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::Kms;
use keygate_control_plane::replicator::Replicator;
use keygate_control_plane::service::{Service, Settings};
use keygate_control_plane::store::{SqlStore, Store};
use keygate_shared::{
    ApiKey, KeyId, KeyRecord, OriginSecret, PermissionSet, Prefix, Region, SecretEntry, SyncPayload, SyncSecret,
};
use serde_json::{json, Value};

const SYNC_SECRET: &str = "e2e-sync-secret";
const ORIGIN_SECRET: &str = "e2e-origin-secret";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The worker toolchain's environment, from `scripts/tools.sh`.
fn tools() -> HashMap<String, String> {
    let out = Command::new("bash").arg(root().join("scripts/tools.sh")).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "scripts/tools.sh failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .flat_map(|line| line.split(' '))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let value = v.trim_matches('"').replace("$PATH", &std::env::var("PATH").unwrap_or_default());
            (k.to_owned(), value)
        })
        .collect()
}

/// Builds the worker once per test run.
fn built_worker() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new("bash").arg(root().join("scripts/build-worker.sh")).status().unwrap();
            assert!(status.success(), "the worker did not build");
            root().join("edge-worker/build/index.js")
        })
        .clone()
}

/// The worker in workerd, through `wrangler dev` with local KV in its own folder.
struct Edge {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Edge {
    fn start(name: &str, origin: &str) -> Self {
        let entry = built_worker();
        let tools = tools();
        let dir = std::env::temp_dir().join(format!("keygate-e2e-edge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The repo's wrangler.toml, without its build step (the worker is built above) and with the tiers
        // the tests use.
        let config = std::fs::read_to_string(root().join("wrangler.toml"))
            .unwrap()
            .replace("main = \"edge-worker/build/index.js\"", &format!("main = \"{}\"", entry.display()))
            .replace("command = \"scripts/build-worker.sh\"", "")
            .replace("[build]", "")
            .replace(r#"TIERS = '{"default": 1000, "premium": 10000}'"#, r#"TIERS = '{"default": 1000, "tiny": 3}'"#);
        std::fs::write(dir.join("wrangler.toml"), config).unwrap();
        let port = free_port();
        let mut command = Command::new(&tools["WRANGLER"]);
        command
            .args(["dev", "--config", "wrangler.toml", "--ip", "127.0.0.1", "--port", &port.to_string()])
            // Two edges at once must not fight over the default inspector port.
            .args(["--inspector-port", &free_port().to_string()])
            .args(["--persist-to", "state", "--var", &format!("ORIGIN_URL:{origin}")])
            .args(["--var", &format!("SYNC_SECRET:{SYNC_SECRET}"), "--var", &format!("ORIGIN_SECRET:{ORIGIN_SECRET}")])
            .current_dir(&dir)
            .envs(tools.iter())
            .env("CI", "true")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("wrangler.log")).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start wrangler dev");
        let edge = Self { child, url: format!("http://127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "wrangler dev did not start: {}", edge.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        edge
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wrangler.log")).unwrap_or_default()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        // wrangler runs workerd as a child: stop the whole group.
        // SIGKILL: wrangler dev does not exit on SIGTERM, and a test edge has nothing to save.
        let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the origin received.
#[derive(Debug, Clone)]
struct Seen {
    headers: HashMap<String, String>,
    path_and_query: String,
    body: String,
}

#[derive(Default)]
struct Origin {
    seen: Mutex<Vec<Seen>>,
}

async fn origin_handler(
    State(origin): State<Arc<Origin>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let headers: HashMap<String, String> =
        headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    origin.seen.lock().unwrap().push(Seen {
        headers,
        path_and_query: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    axum::Json(json!({"data": {"users": [{"id": 1}]}}))
}

async fn start_origin() -> (Arc<Origin>, String) {
    let origin = Arc::new(Origin::default());
    let app = Router::new().fallback(any(origin_handler)).with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (origin, url)
}

/// The control plane: the admin API on a real socket, and the replicator pushing to the edge. Both
/// stop when it is dropped.
struct ControlPlane {
    url: String,
    admin: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    // Ends on `true` or when the sender is dropped.
    let _ = stopped.wait_for(|stop| *stop).await;
}

impl ControlPlane {
    async fn start(store: Arc<dyn Store>, kms: Arc<dyn Kms>, edge: &str) -> Self {
        store.migrate().await.unwrap();
        let service = Arc::new(Service::new(
            store.clone(),
            kms,
            Arc::new(SystemClock),
            Box::new(rand_core::OsRng),
            Settings::default(),
        ));
        let admin = service.bootstrap_admin().await.unwrap().key.expose().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(keygate_control_plane::api::run(listener, service, until_stopped(stopped.clone())));
        let replicator = Replicator::new(store, Arc::new(SystemClock), edge, SyncSecret::new(SYNC_SECRET));
        tokio::spawn(replicator.run(until_stopped(stopped)));
        Self { url, admin, _stop: stop }
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let response =
            http().post(format!("{}{path}", self.url)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap()
    }

    async fn create(&self, body: Value) -> (String, String) {
        let created = self.admin("/admin/api-keys", body).await;
        (created["api_key"].as_str().unwrap().to_owned(), created["api_key_id"].as_str().unwrap().to_owned())
    }
}

/// An HTTP client whose calls fail after 10 s instead of hanging a test.
fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// A request through the edge: status, headers, body.
async fn through_edge(edge: &Edge, key: Option<&str>, body: &str) -> (u16, HashMap<String, String>, String) {
    through_edge_at(edge, "/graphql", key, body).await
}

async fn through_edge_at(
    edge: &Edge,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut request =
        http().post(format!("{}{path}", edge.url)).header("content-type", "application/json").body(body.to_owned());
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}\n{}", edge.log()));
    let status = response.status().as_u16();
    let headers =
        response.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    (status, headers, response.text().await.unwrap())
}

/// Waits until `key` gets `status` at the edge; returns how long that took.
async fn until_status(edge: &Edge, key: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if through_edge(edge, Some(key), QUERY).await.0 == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "the edge did not answer {status} within {within:?}: {}", edge.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A push signed as the control plane would, straight to the edge.
async fn push(edge: &Edge, records: Vec<KeyRecord>, signed_at: i64, secret: &str) -> (u16, String) {
    let body = serde_json::to_vec(&SyncPayload { records }).unwrap();
    let response = http()
        .post(format!("{}{}", edge.url, keygate_shared::sync::SYNC_PATH))
        .header(keygate_shared::sync::TIMESTAMP_HEADER, signed_at.to_string())
        .header(keygate_shared::sync::SIGNATURE_HEADER, SyncSecret::new(secret).sign(signed_at, &body))
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", edge.log()));
    (response.status().as_u16(), response.text().await.unwrap())
}

const QUERY: &str = r#"{"query":"{ users { id } }"}"#;
const MUTATION: &str = r#"{"query":"mutation { addUser(name: \"x\") { id } }"}"#;

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
    // A client cannot forge identity headers: the edge replaces them.
    let forged = http()
        .post(format!("{}/graphql", edge.url))
        .header("X-API-Key", &key)
        .header("X-Keygate-Tier", "premium")
        .header("content-type", "application/json")
        .body(QUERY)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 200);
    assert_eq!(origin.seen.lock().unwrap().last().unwrap().headers["x-keygate-tier"], "default");

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
        secrets: vec![SecretEntry { hash: expired.hash(), not_after: None }],
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
        secrets: vec![SecretEntry { hash: keygate_shared::SecretHash::of_key(&revoked), not_after: None }],
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
