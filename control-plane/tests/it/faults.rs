//! Faults in the middle of work: KMS hanging, KMS gone and back, and the `keygate` binary killed with
//! SIGKILL in the middle of a rewrap and of replication. After each, nothing is lost or half-written,
//! interrupted work resumes, and every key still decrypts to the text it was issued with.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use futures_util::future::join_all;
use futures_util::{stream, StreamExt};
use keygate_control_plane::clock::SystemClock;
use keygate_control_plane::envelope;
use keygate_control_plane::kms::aws::AwsKms;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::{Kms, KmsContext};
use keygate_control_plane::service::{Actor, NewKey, Service, Settings};
use keygate_control_plane::store::{OutboxRow, SecretRow, Store};
use keygate_shared::{KeyId, KeyRecord};
use rand_core::OsRng;
use serde_json::{json, Value};

use crate::support::app::{postgres_url, TestApp};
use crate::support::fault_net::{kms_client, BlackHole, FaultProxy, Mode};
use crate::support::free_port;
use crate::support::kms_server::KmsServer;
use crate::support::slow_edge::SlowEdge;

const SECOND: Duration = Duration::from_secs(1);

/// A KMS client that gives up fast: 1 s to connect, 1 s an attempt, 2 s a call.
fn impatient_kms(endpoint: &str, key_id: &str) -> Arc<AwsKms> {
    Arc::new(AwsKms::from_client(kms_client(endpoint, SECOND, SECOND, 2 * SECOND), key_id.to_owned()))
}

/// `n` `query:read` keys made through the API: key text by key id.
async fn issue_keys(app: &TestApp, n: usize) -> HashMap<String, String> {
    let mut issued = HashMap::new();
    for _ in 0..n {
        let (key, id) = app.create_key(&["query:read"]).await;
        issued.insert(id, key);
    }
    issued
}

/// Every secret row, in key and generation order.
async fn every_secret(store: &Arc<dyn Store>) -> Vec<SecretRow> {
    store.rewrap_pending(i64::MAX, 1_000_000).await.unwrap()
}

/// Unwraps every secret row's data key through `kms` and opens its sealed text, which must be the key
/// text issued for that (key, generation).
async fn assert_every_secret_opens(store: &Arc<dyn Store>, kms: &dyn Kms, issued: &HashMap<(KeyId, i64), String>) {
    let rows = every_secret(store).await;
    assert_eq!(rows.len(), issued.len(), "a secret row appeared or vanished");
    for row in rows {
        let wrapped = row.wrapped();
        let data_key = kms
            .decrypt(&wrapped, &KmsContext::for_wrapped(row.key_id, &wrapped))
            .await
            .unwrap_or_else(|e| panic!("{row:?}: the data key does not unwrap: {e}"));
        let generation = u32::try_from(row.generation).unwrap();
        let key = envelope::open(&data_key, &row.ciphertext, row.key_id, generation)
            .unwrap_or_else(|e| panic!("{row:?}: the sealed key does not open: {e}"));
        assert_eq!(key.expose(), issued[&(row.key_id, row.generation)], "{row:?} holds another key");
    }
}

/// A JSON admin call through the router, with how long it took.
async fn timed(
    app: &TestApp,
    method: Method,
    path: String,
    body: Option<Value>,
) -> (String, StatusCode, Value, Duration) {
    let started = Instant::now();
    let (status, answer) = app.admin(method, &path, body).await;
    (path, status, answer, started.elapsed())
}

/// The writes that need KMS, on key `id`: create, rotate and reveal.
fn kms_writes(id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::POST, "/admin/api-keys".into(), Some(json!({"name": "during the fault", "permissions": []}))),
        (Method::POST, format!("/admin/api-keys/{id}/rotate"), None),
        (Method::POST, format!("/admin/api-keys/{id}/reveal"), None),
    ]
}

/// `key` passes verification on `app` (which never needs KMS), answering within `within`.
async fn assert_verifies(app: &TestApp, key: &str, within: Duration) {
    let started = Instant::now();
    assert_eq!(app.verify(key).await["valid"], true);
    assert!(started.elapsed() < within, "verify took {:?} while KMS was failing", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_kms_gets_503_in_bounded_time_writes_nothing_and_rewrap_resumes() {
    let app = TestApp::postgres_aws("kms_hang").await;
    let (key, id) = app.create_key(&["query:read"]).await;
    let (_, other) = app.create_key(&["query:read"]).await;
    let (status, rotated) = app.admin(Method::POST, &format!("/admin/api-keys/{other}/rotate"), None).await;
    assert_eq!(status, StatusCode::OK);
    let mut issued =
        HashMap::from([(id.clone(), key.clone()), (other.clone(), rotated["api_key"].as_str().unwrap().into())]);
    let kms_key_id = app.service.kms().current_key_id().to_owned();
    let hole = BlackHole::start().await;
    let stalled = app.with_kms(impatient_kms(&hole.endpoint, &kms_key_id));
    let before = app.counts().await;
    let secrets_before = every_secret(&app.store).await;

    // Every call that needs KMS at once, with verification going on beside them.
    let mut calls: Vec<_> = kms_writes(&id).into_iter().map(|(m, p, b)| timed(&stalled, m, p, b)).collect();
    calls.push(timed(&stalled, Method::POST, "/admin/kms/rewrap".into(), None));
    let verifying = async {
        for _ in 0..10 {
            assert_verifies(&stalled, &key, SECOND).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (answers, ()) = tokio::join!(join_all(calls), verifying);
    for (path, status, answer, took) in answers {
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("kms_unavailable")),
            "{path}: {answer}"
        );
        // At least one attempt's timeout: the call did wait on the hung KMS; well under the API's 15 s.
        assert!(took >= SECOND && took < 5 * SECOND, "{path} answered after {took:?}");
    }
    let after = app.counts().await;
    assert_eq!((after.keys, after.secrets, after.outbox), (before.keys, before.secrets, before.outbox));
    assert_eq!(after.audit, before.audit + 1, "only the rewrap's start is audited");
    assert_eq!(every_secret(&app.store).await, secrets_before, "a secret row changed");

    // The binary, with the product's own KMS timeouts: `kms rewrap` has no request timeout above it.
    let started = Instant::now();
    let rewrap = keygate(app.pg_schema.as_ref().unwrap())
        .args(["--kms", "aws", "--kms-key-id", &kms_key_id, "--kms-endpoint", &hole.endpoint, "kms", "rewrap"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .output();
    // Without a KMS timeout this would wait forever: fail instead (the child is killed on drop).
    let out = tokio::time::timeout(30 * SECOND, rewrap).await.expect("keygate kms rewrap hung").unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("kms_unavailable"), "{stderr}");
    assert!(took >= 2 * SECOND && took < 20 * SECOND, "keygate kms rewrap gave up after {took:?}");
    assert_eq!(every_secret(&app.store).await, secrets_before, "a secret row changed");

    // KMS answers again: the interrupted run resumes and moves every data key; every key decrypts.
    let (status, finished) = app.admin(Method::POST, "/admin/kms/rewrap", None).await;
    assert_eq!(status, StatusCode::OK, "{finished}");
    assert_eq!(finished["rewrapped"].as_i64(), Some(before.secrets));
    let log = app.service.audit_log(None, 5).await.unwrap();
    let start = log.iter().find(|e| e.action == "kms.rewrap.start").unwrap();
    assert!(start.detail.contains("\"resumed\":true"), "{}", start.detail);
    assert!(every_secret(&app.store).await.iter().all(|s| s.data_key_version == 2));
    issued
        .insert(keygate_shared::ParsedKey::parse(&app.admin_key).unwrap().key_id().to_string(), app.admin_key.clone());
    for (id, key) in &issued {
        let (status, revealed) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/reveal"), None).await;
        assert_eq!((status, revealed["api_key"].as_str()), (StatusCode::OK, Some(key.as_str())));
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_gone_then_back_loses_nothing_and_every_key_still_reveals() {
    let (store, schema) = TestApp::postgres_store("kms_gone").await;
    let server = KmsServer::start();
    let kms_key_id = server.create_key().await;
    let proxy = FaultProxy::start(&server.endpoint).await;
    let mut app = TestApp::over(store, impatient_kms(&proxy.endpoint, &kms_key_id), Some(schema)).await;
    app.kms_server = Some(server);
    let mut issued = issue_keys(&app, 4).await;
    let id = issued.keys().next().unwrap().clone();
    let before = app.counts().await;
    let secrets_before = every_secret(&app.store).await;

    for mode in [Mode::Refuse, Mode::Hang] {
        proxy.set(mode).await;
        let calls = kms_writes(&id).into_iter().map(|(m, p, b)| timed(&app, m, p, b));
        for (path, status, answer, took) in join_all(calls).await {
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("kms_unavailable")),
                "{mode:?} {path}: {answer}"
            );
            assert!(took < 5 * SECOND, "{mode:?} {path} answered after {took:?}");
        }
        assert_verifies(&app, &issued[&id], SECOND).await;
        assert_eq!(app.counts().await, before, "{mode:?}: a failed write left rows behind");
        assert_eq!(every_secret(&app.store).await, secrets_before, "{mode:?}: a secret row changed");
    }
    proxy.set(Mode::Refuse).await;
    let (status, answer) = app.admin(Method::POST, "/admin/kms/rewrap", None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("kms_unavailable")));
    assert_eq!(every_secret(&app.store).await, secrets_before, "the failed rewrap changed a secret row");

    // The same server comes back with its keys: the same calls succeed and nothing was lost.
    proxy.set(Mode::Forward).await;
    let (status, created) =
        app.admin(Method::POST, "/admin/api-keys", Some(json!({"name": "after", "permissions": []}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    issued.insert(created["api_key_id"].as_str().unwrap().into(), created["api_key"].as_str().unwrap().into());
    let (status, rotated) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/rotate"), None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["generation"], 2);
    issued.insert(id.clone(), rotated["api_key"].as_str().unwrap().into());
    let (status, rewrapped) = app.admin(Method::POST, "/admin/kms/rewrap", None).await;
    assert_eq!(status, StatusCode::OK, "{rewrapped}");
    assert_eq!(rewrapped["rewrapped"].as_i64(), Some(app.counts().await.secrets), "every data key, once");
    for (id, key) in &issued {
        let (status, revealed) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/reveal"), None).await;
        assert_eq!((status, revealed["api_key"].as_str()), (StatusCode::OK, Some(key.as_str())), "{id}");
    }
    app.cleanup().await;
}

/// A PostgreSQL URL whose connections use `schema`.
fn schema_url(schema: &str) -> String {
    let base = postgres_url();
    let join = if base.contains('?') { '&' } else { '?' };
    format!("{base}{join}options=-csearch_path%3D{schema}")
}

/// The `keygate` binary on `schema`, inheriting no KEYGATE_* setting; killed if the test fails.
fn keygate(schema: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYGATE_") {
            command.env_remove(name);
        }
    }
    command.args(["--database-url", &schema_url(schema)]).kill_on_drop(true);
    command
}

/// A PostgreSQL schema, a local master key in a folder, and a service over both on the system clock
/// (the binary's clock), for tests that run the binary beside it.
struct Shared {
    service: Service,
    store: Arc<dyn Store>,
    kms: Arc<dyn Kms>,
    schema: String,
    dir: PathBuf,
}

impl Shared {
    async fn new(name: &str) -> Self {
        let (store, schema) = TestApp::postgres_store(name).await;
        let dir = std::env::temp_dir().join(format!("keygate-{schema}"));
        std::fs::create_dir_all(&dir).unwrap();
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::open_or_create(&dir.join("master.key")).unwrap());
        let service =
            Service::new(store.clone(), kms.clone(), Arc::new(SystemClock), Box::new(OsRng), Settings::default());
        Self { service, store, kms, schema, dir }
    }

    /// `keygate` with the local KMS on this schema and master key.
    fn keygate(&self) -> tokio::process::Command {
        let mut command = keygate(&self.schema);
        command.args(["--kms", "local", "--kms-master-key-file"]).arg(self.dir.join("master.key"));
        command
    }

    /// `n` keys, made concurrently; each key's text by (id, generation 1).
    async fn create_keys(&self, n: usize) -> HashMap<(KeyId, i64), String> {
        stream::iter(0..n)
            .map(|i| async move {
                let request = NewKey {
                    name: format!("bulk {i}"),
                    tier: "default".into(),
                    permissions: vec!["query:read".into()],
                    ..NewKey::default()
                };
                let created = self.service.create(&Actor::Cli, request).await.unwrap();
                ((created.key.key_id(), 1), created.key.expose().to_owned())
            })
            .buffer_unordered(64)
            .collect()
            .await
    }

    async fn cleanup(self) {
        self.store.close().await;
        if let Ok(admin) = sqlx::PgPool::connect(&postgres_url()).await {
            let _ = sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema)).execute(&admin).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Data keys the binary's rewrap stores per transaction (its default).
const REWRAP_BATCH: i64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrap_killed_mid_way_keeps_whole_batches_and_the_next_run_finishes_it() {
    let shared = Shared::new("rewrap_kill").await;
    // Enough for 9 batches of 256: the rewrap runs for seconds, and is killed after its first commit.
    let mut issued = shared.create_keys(2_000).await;
    // Some keys in their grace period: their older generation is rewrapped too.
    let ids: Vec<KeyId> = issued.keys().map(|(id, _)| *id).step_by(10).collect();
    let service = &shared.service;
    let rotations: Vec<_> = stream::iter(ids)
        .map(|id| async move { (id, service.rotate(&Actor::Cli, id, None).await.unwrap()) })
        .buffer_unordered(32)
        .collect()
        .await;
    for (id, rotated) in rotations {
        issued.insert((id, rotated.generation), rotated.key.expose().to_owned());
    }
    let before = every_secret(&shared.store).await;
    let total = before.len() as i64;
    let pool = sqlx::PgPool::connect(&schema_url(&shared.schema)).await.unwrap();
    let pool = &pool;
    let moved = move || async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM api_key_secrets s JOIN kms_rewrap_runs r \
             ON r.finished_at IS NULL AND s.data_key_version >= r.target_version",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };

    let mut child =
        shared.keygate().args(["kms", "rewrap"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + 30 * SECOND;
    while moved().await == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the rewrap ended ({status}) before it could be killed: give it more keys");
        }
        assert!(Instant::now() < deadline, "the rewrap made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.start_kill().unwrap();
    assert_eq!(child.wait().await.unwrap().signal(), Some(9), "killed with SIGKILL");

    // Whole batches committed, the rest untouched; each row all old or all new.
    let done = moved().await;
    assert!(done > 0 && done < total, "killed mid-way: {done} of {total} moved");
    assert_eq!(done % REWRAP_BATCH, 0, "a partly committed batch: {done} rows moved");
    let after = every_secret(&shared.store).await;
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        match new.data_key_version {
            1 => assert_eq!(new, old, "an untouched row changed"),
            2 => {
                assert_ne!(new.wrapped_data_key, old.wrapped_data_key, "{new:?} moved without a new wrapping");
                let unchanged =
                    SecretRow { wrapped_data_key: old.wrapped_data_key.clone(), data_key_version: 1, ..new.clone() };
                assert_eq!(&unchanged, old, "a rewrap changed more than the wrapped data key");
            }
            v => panic!("{new:?} at version {v}"),
        }
    }
    let runs: Vec<(i64, Option<i64>)> =
        sqlx::query_as("SELECT target_version, finished_at FROM kms_rewrap_runs").fetch_all(pool).await.unwrap();
    assert_eq!(runs, vec![(2, None)], "one run, unfinished");
    assert_every_secret_opens(&shared.store, shared.kms.as_ref(), &issued).await;

    // The next run resumes the same one and does only what is left.
    let out = shared.keygate().args(["kms", "rewrap"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["rewrapped"].as_i64(), Some(total - done), "{answer}");
    let runs: Vec<(i64, Option<i64>)> =
        sqlx::query_as("SELECT target_version, finished_at FROM kms_rewrap_runs").fetch_all(pool).await.unwrap();
    assert!(matches!(runs.as_slice(), [(2, Some(_))]), "{runs:?}");
    let log = shared.service.audit_log(None, 2).await.unwrap();
    assert_eq!(log[1].action, "kms.rewrap.start");
    assert!(log[1].detail.contains("\"resumed\":true"), "{}", log[1].detail);
    assert!(every_secret(&shared.store).await.iter().all(|s| s.data_key_version == 2));
    assert_every_secret_opens(&shared.store, shared.kms.as_ref(), &issued).await;

    // Every key reveals (through the service, audited) to its current text.
    let mut current: HashMap<KeyId, (i64, &str)> = HashMap::new();
    for ((id, generation), text) in &issued {
        let newest = current.entry(*id).or_insert((*generation, text));
        if *generation > newest.0 {
            *newest = (*generation, text);
        }
    }
    let reveals: Vec<_> = stream::iter(current)
        .map(|(id, (_, text))| async move { (service.reveal(&Actor::Cli, id).await.unwrap(), text) })
        .buffer_unordered(64)
        .collect()
        .await;
    for (revealed, text) in reveals {
        assert_eq!(revealed.expose(), text);
    }
    let out = shared.keygate().args(["audit", "verify"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pool.close().await;
    shared.cleanup().await;
}

const SYNC_SECRET: &str = "faults-sync-secret";

/// Each outbox row as the record the edge should hold for it.
fn as_record(row: &OutboxRow) -> KeyRecord {
    let mut record: KeyRecord = serde_json::from_str(&row.record).unwrap();
    record.seq = u64::try_from(row.seq).unwrap();
    record
}

/// Each key's newest record among `rows`.
fn newest(rows: &[&OutboxRow]) -> HashMap<String, KeyRecord> {
    let mut held = HashMap::new();
    for row in rows {
        held.insert(row.key_id.to_string(), as_record(row)); // rows are in seq order
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_killed_mid_way_leaves_the_edge_a_prefix_and_catches_up_after_restart() {
    let shared = Shared::new("repl_kill").await;
    let issued = shared.create_keys(2_000).await;
    let revoked: HashSet<KeyId> = issued.keys().map(|(id, _)| *id).step_by(10).collect();
    for outcome in join_all(revoked.iter().map(|id| shared.service.revoke(&Actor::Cli, *id, Some("test".into())))).await
    {
        outcome.unwrap();
    }
    let outbox = shared.store.outbox_after(0, 1_000_000).await.unwrap();
    assert_eq!(outbox.len(), issued.len() + revoked.len());

    // 11 pushes of 200, each answered 200 ms after the edge stored it.
    let edge = SlowEdge::start(SYNC_SECRET, Duration::from_millis(200)).await;
    let log = shared.dir.join("serve.log");
    let serve = || {
        let listen = format!("127.0.0.1:{}", free_port());
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        shared
            .keygate()
            .args(["serve", "--listen", &listen, "--edge-url", &edge.url, "--sync-secret", SYNC_SECRET])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut first = serve();
    let deadline = Instant::now() + 30 * SECOND;
    while edge.state.pushes().len() < 3 {
        if let Some(status) = first.try_wait().unwrap() {
            panic!("keygate serve exited ({status}):\n{}", log_text());
        }
        assert!(Instant::now() < deadline, "replication did not start:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.start_kill().unwrap();
    assert_eq!(first.wait().await.unwrap().signal(), Some(9));
    // A request the dead process had already written could still be read: let the edge finish it.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pushes = edge.state.pushes();
    let received: Vec<u64> = pushes.iter().flatten().copied().collect();
    assert!(pushes.iter().all(|p| !p.is_empty() && p.len() <= 200), "push sizes");
    let rows = shared.store.outbox_after(0, 1_000_000).await.unwrap();
    let received_max = *received.last().unwrap();
    let sent: Vec<u64> = rows.iter().map(|r| r.seq as u64).take_while(|s| *s <= received_max).collect();
    assert_eq!(received, sent, "the edge got the outbox in order, none skipped or repeated");
    assert!(received.len() < rows.len(), "killed mid-way, yet everything arrived");

    // Marked delivered: a prefix, all of it received, including every push answered before the kill.
    let delivered_max = rows.iter().filter(|r| r.delivered_at.is_some()).map(|r| r.seq as u64).max().unwrap_or(0);
    assert!(rows.iter().all(|r| r.delivered_at.is_some() == (r.seq as u64 <= delivered_max)), "not a prefix");
    assert!(delivered_max <= received_max, "marked delivered but never received");
    let answered_max = *pushes[pushes.len() - 2].last().unwrap();
    assert!(delivered_max >= answered_max, "an answered push is not marked delivered");

    // The edge holds exactly each key's newest record among what it received: nothing newer, nothing older.
    let prefix: Vec<&OutboxRow> = rows.iter().filter(|r| r.seq as u64 <= received_max).collect();
    let held = edge.state.records.lock().unwrap().clone();
    assert_eq!(held, newest(&prefix), "the edge is not a prefix of the outbox");
    assert!(!held.is_empty() && held.len() < issued.len());

    // Restarted, serve carries on from the first undelivered row; the edge ignores what it holds.
    let mut second = serve();
    let all: Vec<&OutboxRow> = rows.iter().collect();
    let latest = newest(&all);
    let deadline = Instant::now() + 30 * SECOND;
    loop {
        let caught_up = {
            let held = edge.state.records.lock().unwrap();
            latest.iter().all(|(id, record)| held.get(id).is_some_and(|h| h.seq == record.seq))
        };
        if caught_up && shared.store.outbox_pending(1).await.unwrap().is_empty() {
            break;
        }
        if let Some(status) = second.try_wait().unwrap() {
            panic!("keygate serve exited ({status}):\n{}", log_text());
        }
        assert!(Instant::now() < deadline, "the edge did not catch up:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.start_kill().unwrap();
    let _ = second.wait().await;
    let resumed: Vec<u64> = edge.state.pushes()[pushes.len()..].iter().flatten().copied().collect();
    let first_undelivered = rows.iter().map(|r| r.seq as u64).find(|s| *s > delivered_max).unwrap();
    assert_eq!(resumed.first(), Some(&first_undelivered), "resumed somewhere else");
    assert!(resumed.windows(2).all(|w| w[0] < w[1]), "pushed out of order after the restart");
    assert_eq!(*edge.state.records.lock().unwrap(), latest, "the edge does not hold every key's newest record");
    for id in &revoked {
        assert!(edge.state.record(&id.to_string()).unwrap().revoked, "a revocation was undone");
    }
    shared.cleanup().await;
}

/// The database gone (connections refused) and then hung (connections accepted, never answered), in
/// front of real PostgreSQL through the fault proxy: create, rotate, reveal and rewrap answer 503
/// `database_unavailable` within the pool's acquire timeout and write nothing; once the database is
/// back, the same calls succeed and every key reveals to the text it was issued with.
#[tokio::test]
async fn the_database_gone_or_hung_mid_work_answers_503_and_loses_nothing() {
    let schema = format!("kg_db_fault_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    let upstream = url_authority(&postgres_url());
    let proxy = FaultProxy::start(&format!("http://{upstream}")).await;
    let port: u16 = proxy.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&postgres_url())
        .unwrap()
        .host("127.0.0.1")
        .port(port)
        .options([("search_path", schema.as_str())]);
    let store: Arc<dyn Store> =
        Arc::new(keygate_control_plane::store::SqlStore::<sqlx::Postgres>::connect_postgres(options).await.unwrap());
    store.migrate().await.unwrap();
    let app = TestApp::over(store, Arc::new(LocalKms::from_master_key(&[3; 32], OsRng)), Some(schema)).await;

    let issued = issue_keys(&app, 3).await;
    let some_id = issued.keys().next().unwrap().clone();
    let before = app.counts().await;
    for mode in [Mode::Refuse, Mode::Hang] {
        proxy.set(mode).await;
        let calls = [
            (Method::POST, "/admin/api-keys".to_owned(), Some(json!({"name": "during", "permissions": []}))),
            (Method::POST, format!("/admin/api-keys/{some_id}/rotate"), None),
            (Method::POST, format!("/admin/api-keys/{some_id}/reveal"), None),
            (Method::POST, "/admin/kms/rewrap".to_owned(), None),
        ];
        for (method, path, body) in calls {
            let started = Instant::now();
            let (status, answer) = app.admin(method, &path, body).await;
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("database_unavailable")),
                "{mode:?} {path}: {answer}"
            );
            assert!(started.elapsed() < Duration::from_secs(15), "{mode:?} {path} took {:?}", started.elapsed());
        }
        proxy.set(Mode::Forward).await;
        assert_eq!(app.counts().await, before, "after {mode:?}: nothing written, not even an audit entry");
    }

    // Back: the writer and the pool recovered, and nothing was lost.
    for (id, key) in &issued {
        let (status, answer) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/reveal"), None).await;
        assert_eq!((status, answer["api_key"].as_str()), (StatusCode::OK, Some(key.as_str())));
    }
    let (status, _) = app.admin(Method::POST, &format!("/admin/api-keys/{some_id}/rotate"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        app.admin(Method::POST, "/admin/api-keys", Some(json!({"name": "after", "permissions": []}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, answer) = app.admin(Method::POST, "/admin/kms/rewrap", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(app.service.audit_verify().await.unwrap(), Ok(app.counts().await.audit));
    app.cleanup().await;
}

/// `host:port` of a `postgres://user@host:port/db` URL.
fn url_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.split_once('@').map_or(rest, |(_, hp)| hp);
    host_port.split('/').next().unwrap().to_owned()
}
