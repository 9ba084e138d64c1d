//! The control plane, in-process: the admin API served on a real loopback socket, and the replicator
//! pushing to an edge (records and the origin signing keys, the first of which it makes at start, as
//! `keygate serve` does). Both stop when it is dropped.

use std::path::Path;
use std::sync::Arc;

use keygate_control_plane::clock::SystemClock;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::Kms;
use keygate_control_plane::replicator::Replicator;
use keygate_control_plane::service::{Service, Settings};
use keygate_control_plane::store::{SqlStore, Store};
use keygate_shared::SyncSecret;
use serde_json::Value;

use super::{http, SYNC_SECRET};

pub struct ControlPlane {
    pub url: String,
    /// The lifecycle behind the API, for what a test needs beyond it (e.g. opening a signing key).
    pub service: Arc<Service>,
    /// The bootstrap admin key (`admin:*`).
    pub admin: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    // Ends on `true` or when the sender is dropped.
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// A SQLite store and the local KMS, both in `dir` (made if missing): the embedded defaults.
pub async fn sqlite_parts(dir: &Path) -> (Arc<dyn Store>, Arc<dyn Kms>) {
    std::fs::create_dir_all(dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keygate.db").display());
    let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&url).await.unwrap());
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open_or_create(&dir.join("master.key")).unwrap());
    (store, kms)
}

impl ControlPlane {
    /// A control plane on [`sqlite_parts`] in `dir`, replicating to `edge`.
    pub async fn on_sqlite(dir: &Path, edge: &str) -> Self {
        let (store, kms) = sqlite_parts(dir).await;
        Self::start(store, kms, edge).await
    }

    pub async fn start(store: Arc<dyn Store>, kms: Arc<dyn Kms>, edge: &str) -> Self {
        Self::start_with(store, kms, edge, Settings::default()).await
    }

    pub async fn start_with(store: Arc<dyn Store>, kms: Arc<dyn Kms>, edge: &str, settings: Settings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, store, kms, edge, settings).await
    }

    /// The same, serving on `listener` (a test that stops a control plane and starts another on the
    /// same address, or whose edge must know the address first). A store that already has an admin
    /// key keeps it, and `admin` is then a new one.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        store: Arc<dyn Store>,
        kms: Arc<dyn Kms>,
        edge: &str,
        settings: Settings,
    ) -> Self {
        store.migrate().await.unwrap();
        // As `keygate serve --sync-secret` does: the same secret also checks the edge's usage reports.
        let settings =
            Settings { sync_secret: settings.sync_secret.or(Some(SyncSecret::new(SYNC_SECRET))), ..settings };
        let service =
            Arc::new(Service::new(store.clone(), kms, Arc::new(SystemClock), Box::new(rand_core::OsRng), settings));
        let admin = service.bootstrap_admin().await.unwrap().key.expose().to_owned();
        service.ensure_origin_key().await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(keygate_control_plane::api::run(listener, service.clone(), until_stopped(stopped.clone())));
        let replicator = Replicator::new(store, Arc::new(SystemClock), edge, SyncSecret::new(SYNC_SECRET))
            .with_origin_keys(service.origin_keys().clone());
        tokio::spawn(replicator.run(until_stopped(stopped)));
        Self { url, service, admin, _stop: stop }
    }

    /// An admin POST that must succeed; its JSON answer.
    pub async fn admin(&self, path: &str, body: Value) -> Value {
        let response =
            http().post(format!("{}{path}", self.url)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap()
    }

    /// The JWKS document origins verify tokens against.
    pub async fn jwks(&self) -> Value {
        http().get(format!("{}/.well-known/jwks.json", self.url)).send().await.unwrap().json().await.unwrap()
    }

    /// Creates a key; returns the key and its id.
    pub async fn create(&self, body: Value) -> (String, String) {
        let created = self.admin("/admin/api-keys", body).await;
        (created["api_key"].as_str().unwrap().to_owned(), created["api_key_id"].as_str().unwrap().to_owned())
    }
}
