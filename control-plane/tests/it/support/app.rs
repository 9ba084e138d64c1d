//! A control plane over real parts for one test: SQLite with the local KMS, or PostgreSQL (a fresh
//! schema) with the aws provider on the KMS API server. Time is a [`ManualClock`]; requests go through
//! the real router.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use keygate_control_plane::clock::ManualClock;
use keygate_control_plane::kms::aws::AwsKms;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::Kms;
use keygate_control_plane::service::{Service, Settings};
use keygate_control_plane::store::{RowCounts, SqlStore, Store};
use rand_core::OsRng;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use tower::ServiceExt;

use super::kms_server::KmsServer;

/// Where the test PostgreSQL is (trust auth on this machine).
pub fn postgres_url() -> String {
    std::env::var("KEYGATE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The sync secret of every test control plane (it also keys the edge's usage reports).
pub const SYNC_SECRET: &str = "test sync secret";

/// The settings of a test control plane: the defaults, with [`SYNC_SECRET`].
pub fn test_settings() -> Settings {
    Settings { sync_secret: Some(keygate_shared::SyncSecret::new(SYNC_SECRET)), ..Settings::default() }
}

/// A unix time well inside the key lifetimes the tests use.
pub const T0: i64 = 1_800_000_000;

pub struct TestApp {
    pub service: Arc<Service>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<ManualClock>,
    pub router: Router,
    pub admin_key: String,
    pub kms_server: Option<KmsServer>,
    pub sqlite_path: Option<PathBuf>,
    pub pg_schema: Option<String>,
    pub dir: PathBuf,
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{name}_{}_{nanos}", std::process::id())
}

impl TestApp {
    async fn assemble(store: Arc<dyn Store>, kms: Arc<dyn Kms>, dir: PathBuf) -> Self {
        let clock = Arc::new(ManualClock::at(T0));
        let service = Arc::new(Service::new(store.clone(), kms, clock.clone(), Box::new(OsRng), test_settings()));
        let admin_key = service.bootstrap_admin().await.unwrap().key.expose().to_owned();
        let router = keygate_control_plane::api::router(service.clone());
        Self { service, store, clock, router, admin_key, kms_server: None, sqlite_path: None, pg_schema: None, dir }
    }

    /// A control plane over a store and KMS made elsewhere (a PostgreSQL schema to drop, if named).
    pub async fn over(store: Arc<dyn Store>, kms: Arc<dyn Kms>, pg_schema: Option<String>) -> Self {
        let mut app = Self::assemble(store, kms, std::env::temp_dir()).await;
        app.pg_schema = pg_schema;
        app
    }

    /// SQLite in a fresh file, the local KMS with a fresh master key.
    pub async fn sqlite_local(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keygate-{}", unique(name)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keygate.db");
        let store: Arc<dyn Store> =
            Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&format!("sqlite://{}", path.display())).await.unwrap());
        store.migrate().await.unwrap();
        let kms = Arc::new(LocalKms::open_or_create(&dir.join("master.key")).unwrap());
        let mut app = Self::assemble(store, kms, dir).await;
        app.sqlite_path = Some(path);
        app
    }

    /// A fresh PostgreSQL schema, store only (for building several services over one database).
    pub async fn postgres_store(name: &str) -> (Arc<dyn Store>, String) {
        let schema = unique(&format!("kg_{name}")).to_lowercase();
        let admin = sqlx::PgPool::connect(&postgres_url()).await.expect("PostgreSQL on 127.0.0.1:5432 (database test)");
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
        admin.close().await;
        let options = PgConnectOptions::from_str(&postgres_url()).unwrap().options([("search_path", schema.as_str())]);
        let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Postgres>::connect_postgres(options).await.unwrap());
        store.migrate().await.unwrap();
        (store, schema)
    }

    /// PostgreSQL in a fresh schema, the local KMS (for tests about the database, not KMS).
    pub async fn postgres_local(name: &str, master_key: [u8; 32]) -> Self {
        let (store, schema) = Self::postgres_store(name).await;
        Self::over(store, Arc::new(LocalKms::from_master_key(&master_key, OsRng)), Some(schema)).await
    }

    /// PostgreSQL in a fresh schema, the aws provider on a fresh KMS API server.
    pub async fn postgres_aws(name: &str) -> Self {
        let (store, schema) = Self::postgres_store(name).await;
        let server = KmsServer::start();
        let kms = Arc::new(AwsKms::from_client(server.client(), server.create_key().await));
        let mut app = Self::assemble(store, kms, std::env::temp_dir()).await;
        app.kms_server = Some(server);
        app.pg_schema = Some(schema);
        app
    }

    /// As [`TestApp::postgres_aws`], with the data-key cache in front of the aws provider.
    pub async fn postgres_aws_cached(name: &str, limits: keygate_control_plane::kms::cache::CacheLimits) -> Self {
        let (store, schema) = Self::postgres_store(name).await;
        let server = KmsServer::start();
        let aws: Arc<dyn Kms> = Arc::new(AwsKms::from_client(server.client(), server.create_key().await));
        let clock = Arc::new(ManualClock::at(T0));
        let kms = Arc::new(keygate_control_plane::kms::cache::CachingKms::new(aws, limits, clock.clone()));
        let service = Arc::new(Service::new(store.clone(), kms, clock.clone(), Box::new(OsRng), Settings::default()));
        let admin_key = service.bootstrap_admin().await.unwrap().key.expose().to_owned();
        let router = keygate_control_plane::api::router(service.clone());
        Self {
            service,
            store,
            clock,
            router,
            admin_key,
            kms_server: Some(server),
            sqlite_path: None,
            pg_schema: Some(schema),
            dir: std::env::temp_dir(),
        }
    }

    /// Another control plane over this one's store, clock and admin key, with `kms` in place of its KMS
    /// (a failing one, say). It owns nothing: cleanup stays with `self`.
    pub fn with_kms(&self, kms: Arc<dyn Kms>) -> Self {
        let service =
            Arc::new(Service::new(self.store.clone(), kms, self.clock.clone(), Box::new(OsRng), Settings::default()));
        let router = keygate_control_plane::api::router(service.clone());
        Self {
            service,
            store: self.store.clone(),
            clock: self.clock.clone(),
            router,
            admin_key: self.admin_key.clone(),
            kms_server: None,
            sqlite_path: None,
            pg_schema: None,
            dir: self.dir.clone(),
        }
    }

    /// Another control plane over this one's store, clock and admin key, with `settings`. It owns
    /// nothing: cleanup stays with `self`.
    pub fn with_settings(&self, settings: Settings) -> Self {
        let service = Arc::new(Service::new(
            self.store.clone(),
            self.service.kms().clone(),
            self.clock.clone(),
            Box::new(OsRng),
            settings,
        ));
        let router = keygate_control_plane::api::router(service.clone());
        Self {
            service,
            store: self.store.clone(),
            clock: self.clock.clone(),
            router,
            admin_key: self.admin_key.clone(),
            kms_server: None,
            sqlite_path: None,
            pg_schema: None,
            dir: self.dir.clone(),
        }
    }

    /// Drops the PostgreSQL schema or the SQLite folder.
    pub async fn cleanup(self) {
        if let Some(schema) = &self.pg_schema {
            if let Ok(admin) = sqlx::PgPool::connect(&postgres_url()).await {
                let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await;
            }
        }
        if self.sqlite_path.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// One request through the router: status, headers and body bytes.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
    }

    /// A JSON request; the answer as status and JSON (`Value::Null` for an empty or non-JSON body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let (status, _, bytes) = self.send(request).await;
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// As [`TestApp::call`], with the bootstrap admin key.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.admin_key.clone()), body).await
    }

    /// `POST /v1/keys/verify`.
    pub async fn verify(&self, key: &str) -> Value {
        let (status, body) =
            self.call(Method::POST, "/v1/keys/verify", None, Some(serde_json::json!({"api_key": key}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Creates a key with these permissions; returns (key text, api_key_id).
    pub async fn create_key(&self, permissions: &[&str]) -> (String, String) {
        let (status, body) = self
            .admin(
                Method::POST,
                "/admin/api-keys",
                Some(serde_json::json!({"name": "test key", "permissions": permissions})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (body["api_key"].as_str().unwrap().to_owned(), body["api_key_id"].as_str().unwrap().to_owned())
    }

    pub async fn counts(&self) -> RowCounts {
        self.store.counts().await.unwrap()
    }
}
