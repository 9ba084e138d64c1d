//! A stand-in edge that is slow to answer, for fault injection: it verifies and applies each push with
//! the worker's own `apply_push` over an in-memory map, then waits before it answers — so a push can be
//! stored at the edge while the control plane never hears back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use keygate_edge::check::{RecordSource, StoreFault};
use keygate_edge::replica::{apply_push, push_refusal_response, RecordStore};
use keygate_edge::signing_keys::SigningKeyStore;
use keygate_shared::{sync, KeyRecord, SealedSigningKey, SyncPayload, SyncSecret};
use tokio::task::JoinHandle;

pub struct EdgeState {
    /// What the edge holds, by key id.
    pub records: Mutex<HashMap<String, KeyRecord>>,
    /// The `seq`s of every accepted push of records, in arrival order.
    pub pushes: Mutex<Vec<Vec<u64>>>,
    signing_keys: Mutex<Vec<SealedSigningKey>>,
    secret: SyncSecret,
    delay: Duration,
}

impl EdgeState {
    pub fn record(&self, key_id: &str) -> Option<KeyRecord> {
        self.records.lock().unwrap().get(key_id).cloned()
    }

    pub fn pushes(&self) -> Vec<Vec<u64>> {
        self.pushes.lock().unwrap().clone()
    }
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
        Ok(self.0.record(key_id))
    }
}

impl RecordStore for Records<'_> {
    async fn store(&self, record: &KeyRecord) -> Result<(), StoreFault> {
        self.0.records.lock().unwrap().insert(record.key_id.to_string(), record.clone());
        Ok(())
    }
}

async fn receive(State(edge): State<Arc<EdgeState>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (timestamp, signature) = (header(sync::TIMESTAMP_HEADER), header(sync::SIGNATURE_HEADER));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    match apply_push(&Records(&edge), &edge.secret, timestamp.as_deref(), signature.as_deref(), &body, now).await {
        Ok(applied) => {
            let payload: SyncPayload = serde_json::from_slice(&body).unwrap();
            // `keygate serve` also pushes its signing keys, in a push of no records: not one of the
            // record pushes the tests count.
            if !payload.records.is_empty() {
                edge.pushes.lock().unwrap().push(payload.records.iter().map(|r| r.seq).collect());
            }
            // Stored first, answered late: a sender killed meanwhile never learns the push arrived.
            tokio::time::sleep(edge.delay).await;
            (StatusCode::OK, serde_json::to_string(&applied).unwrap())
        }
        Err(refused) => {
            let (status, body) = push_refusal_response(&refused);
            (StatusCode::from_u16(status).unwrap(), body)
        }
    }
}

pub struct SlowEdge {
    pub url: String,
    pub state: Arc<EdgeState>,
    task: JoinHandle<()>,
}

impl SlowEdge {
    /// An edge on a free loopback port that checks pushes against `secret` and answers each after `delay`.
    pub async fn start(secret: &str, delay: Duration) -> Self {
        let state = Arc::new(EdgeState {
            records: Mutex::default(),
            pushes: Mutex::default(),
            signing_keys: Mutex::default(),
            secret: SyncSecret::new(secret),
            delay,
        });
        let app = Router::new().route(sync::SYNC_PATH, post(receive)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }
}

impl Drop for SlowEdge {
    fn drop(&mut self) {
        self.task.abort();
    }
}
