//! Replication from the outbox to an edge, with faults: the edge down for a while, refusing pushes, or
//! losing its records. The edge here is a stand-in for fault injection: the worker's own `apply_push`
//! over an in-memory map, behind a switch that makes it fail. The end-to-end tests drive the real
//! worker in workerd.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use keygate_control_plane::clock::SystemClock;
use keygate_control_plane::replicator::Replicator;
use keygate_edge::check::{RecordSource, StoreFault};
use keygate_edge::replica::{apply_push, RecordStore};
use keygate_edge::signing_keys::SigningKeyStore;
use keygate_shared::{sync, KeyRecord, SealedSigningKey, SyncSecret};
use serde_json::json;

use crate::support::app::TestApp;

#[derive(Default)]
struct EdgeState {
    records: Mutex<HashMap<String, KeyRecord>>,
    failing: AtomicBool,
    pushes: Mutex<Vec<Vec<u64>>>,
    signing_keys: Mutex<Vec<SealedSigningKey>>,
}

struct Records<'a>(&'a EdgeState);

impl SigningKeyStore for Records<'_> {
    async fn signing_keys(&self) -> Result<Vec<SealedSigningKey>, StoreFault> {
        Ok(self.0.signing_keys.lock().unwrap().clone())
    }

    async fn store_signing_keys(&self, keys: &[SealedSigningKey]) -> Result<(), StoreFault> {
        *self.0.signing_keys.lock().unwrap() = keys.to_vec();
        Ok(())
    }
}

impl RecordSource for Records<'_> {
    async fn record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreFault> {
        Ok(self.0.records.lock().unwrap().get(key_id).cloned())
    }
}

impl RecordStore for Records<'_> {
    async fn store(&self, record: &KeyRecord) -> Result<(), StoreFault> {
        self.0.records.lock().unwrap().insert(record.key_id.to_string(), record.clone());
        Ok(())
    }
}

const SECRET: &str = "replication-test-secret";

async fn receive(State(edge): State<Arc<EdgeState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if edge.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (timestamp, signature) = (header(sync::TIMESTAMP_HEADER), header(sync::SIGNATURE_HEADER));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let secret = SyncSecret::new(SECRET);
    match apply_push(&Records(&edge), &secret, timestamp.as_deref(), signature.as_deref(), &body, now).await {
        Ok(_) => {
            let payload: keygate_shared::SyncPayload = serde_json::from_slice(&body).unwrap();
            edge.pushes.lock().unwrap().push(payload.records.iter().map(|r| r.seq).collect());
            StatusCode::OK
        }
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

async fn start_edge() -> (Arc<EdgeState>, String) {
    let state = Arc::new(EdgeState::default());
    let app = Router::new().route(sync::SYNC_PATH, post(receive)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, url)
}

fn edge_record(edge: &EdgeState, id: &str) -> Option<KeyRecord> {
    edge.records.lock().unwrap().get(id).cloned()
}

async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "{what} did not happen within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn changes_reach_the_edge_in_order_and_survive_an_outage() {
    let app = TestApp::sqlite_local("replication").await;
    let (edge, url) = start_edge().await;
    let replicator = Replicator::new(app.store.clone(), Arc::new(SystemClock), &url, SyncSecret::new(SECRET));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(replicator.run(async move {
        let _ = stopped.await;
    }));

    let (_, id) = app.create_key(&["query:read"]).await;
    until("the create", Duration::from_secs(5), || edge_record(&edge, &id).is_some()).await;
    let first = edge_record(&edge, &id).unwrap();
    assert!(!first.revoked && first.seq > 0);

    // Revocation reaches the edge fast: the commit wakes the replicator.
    let started = Instant::now();
    app.admin(axum::http::Method::POST, &format!("/admin/api-keys/{id}/revoke"), None).await;
    until("the revocation", Duration::from_secs(1), || edge_record(&edge, &id).is_some_and(|r| r.revoked)).await;
    let propagation = started.elapsed();
    assert!(propagation < Duration::from_secs(1), "{propagation:?}");

    // The edge goes down: changes wait in the outbox and arrive, in order, once it is back.
    edge.failing.store(true, Ordering::SeqCst);
    let mut ids = vec![];
    for _ in 0..5 {
        ids.push(app.create_key(&["query:read"]).await.1);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(ids.iter().all(|id| edge_record(&edge, id).is_none()));
    assert_eq!(app.store.outbox_pending(100).await.unwrap().len(), 5);
    edge.failing.store(false, Ordering::SeqCst);
    until("catching up", Duration::from_secs(15), || ids.iter().all(|id| edge_record(&edge, id).is_some())).await;
    let seqs: Vec<u64> = edge.pushes.lock().unwrap().iter().flatten().copied().collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "pushed out of order: {seqs:?}");
    assert!(edge_record(&edge, &id).unwrap().revoked, "the revocation stayed");

    let _ = stop.send(());
    running.await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn a_wrong_secret_delivers_nothing_and_resync_restores_a_lost_edge() {
    let app = TestApp::sqlite_local("resync").await;
    let (edge, url) = start_edge().await;
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(app.create_key(&["query:read"]).await.1);
    }
    app.admin(axum::http::Method::POST, &format!("/admin/api-keys/{}/rotate", ids[0]), Some(json!({}))).await;

    let forger = Replicator::new(app.store.clone(), Arc::new(SystemClock), &url, SyncSecret::new("wrong"));
    assert!(forger.drain().await.is_err());
    assert!(edge.records.lock().unwrap().is_empty(), "a push signed with the wrong secret was applied");
    assert_eq!(app.store.outbox_pending(100).await.unwrap().len(), 5, "nothing is marked delivered");

    let replicator = Replicator::new(app.store.clone(), Arc::new(SystemClock), &url, SyncSecret::new(SECRET));
    assert_eq!(replicator.drain().await.unwrap(), 5);
    assert_eq!(edge_record(&edge, &ids[0]).unwrap().secrets.len(), 2, "the rotated key's grace secret replicated");

    // The edge loses everything; a resync sends each key's current record once.
    edge.records.lock().unwrap().clear();
    assert_eq!(replicator.resync().await.unwrap(), 4, "three keys and the bootstrap admin key");
    assert_eq!(edge_record(&edge, &ids[0]).unwrap().secrets.len(), 2);
    assert!(ids.iter().all(|id| edge_record(&edge, id).is_some()));
    app.cleanup().await;
}

#[tokio::test]
async fn the_edge_gets_the_signing_keys_sealed_after_start_up_and_each_rotation() {
    let app = TestApp::sqlite_local("replication_signing_keys").await;
    let (edge, url) = start_edge().await;
    let replicator = Replicator::new(app.store.clone(), Arc::new(SystemClock), &url, SyncSecret::new(SECRET))
        .with_origin_keys(app.service.origin_keys().clone());
    assert_eq!(replicator.drain().await.unwrap(), 1, "the bootstrap admin key");
    assert!(edge.signing_keys.lock().unwrap().is_empty(), "no key yet: nothing to send");

    let first = app.service.ensure_origin_key().await.unwrap().unwrap();
    replicator.drain().await.unwrap();
    let held = edge.signing_keys.lock().unwrap().clone();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].kid, first.row.kid.to_string());
    // Sealed: it opens with the sync secret only, to the key the JWKS publishes.
    let opened = held[0].open(&SyncSecret::new(SECRET)).unwrap();
    assert_eq!(serde_json::to_value(opened.public_jwk()).unwrap(), app.service.jwks().await.unwrap()["keys"][0]);
    assert!(held[0].open(&SyncSecret::new("another edge's secret")).is_err());

    // Nothing new: no second push of the same key.
    let pushes = edge.pushes.lock().unwrap().len();
    replicator.drain().await.unwrap();
    assert_eq!(edge.pushes.lock().unwrap().len(), pushes);

    // A rotation sends the active key and the pending one, which the edge uses from its time.
    let (_, second) = app.admin(axum::http::Method::POST, "/admin/origin-keys/rotate", None).await;
    replicator.drain().await.unwrap();
    let held = edge.signing_keys.lock().unwrap().clone();
    let versions: Vec<(u64, i64)> = held.iter().map(|k| (k.version, k.activates_at)).collect();
    assert_eq!(versions, [(1, first.row.activates_at), (2, first.row.activates_at + 60)], "{second}");

    // A lost edge gets them back on resync.
    edge.signing_keys.lock().unwrap().clear();
    replicator.resync().await.unwrap();
    assert_eq!(edge.signing_keys.lock().unwrap().len(), 2);
    app.cleanup().await;
}
