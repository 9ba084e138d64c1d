//! What must not happen: plaintext keys in the database, half-written keys when KMS is down, admin
//! routes opening to a bad key, a 500 for a client's mistake, an edited audit log going unnoticed, a
//! rewrap that cannot resume.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use keygate_control_plane::kms::{DataKey, Kms, KmsContext, KmsError, WrappedKey};
use keygate_control_plane::service::{Actor, NewKey, Service, Settings};
use keygate_shared::{ApiKey, Prefix, Region};
use serde_json::{json, Value};

use crate::support::app::{postgres_url, TestApp};

/// Every form a key's secret could be stored in by mistake.
fn forms_of(key: &str) -> Vec<Vec<u8>> {
    let secret = &key[key.len() - 49..key.len() - 6];
    vec![
        key.as_bytes().to_vec(),
        secret.as_bytes().to_vec(),
        hex::encode(key).into_bytes(),
        hex::encode(secret).into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn issue_some_keys(app: &TestApp) -> Vec<String> {
    let (key, id) = app.create_key(&["query:read"]).await;
    let (_, rotated) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/rotate"), None).await;
    let (other, _) = app.create_key(&["*"]).await;
    vec![key, rotated["api_key"].as_str().unwrap().to_owned(), other, app.admin_key.clone()]
}

#[tokio::test]
async fn the_sqlite_file_holds_no_plaintext_key() {
    let app = TestApp::sqlite_local("plaintext").await;
    let keys = issue_some_keys(&app).await;
    let path = app.sqlite_path.clone().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(std::fs::read(path.with_extension("db-wal")).unwrap_or_default());
    assert!(bytes.len() > 10_000);
    for key in &keys {
        let key_id = &key[key.len() - 72..key.len() - 50];
        assert!(contains(&bytes, key_id.as_bytes()), "the scan would see the stored key id");
        for form in forms_of(key) {
            assert!(!contains(&bytes, &form), "plaintext key material in the SQLite file");
        }
    }
    app.cleanup().await;
}

#[tokio::test]
async fn postgres_rows_hold_no_plaintext_key() {
    let app = TestApp::postgres_aws("plaintext").await;
    let keys = issue_some_keys(&app).await;
    let schema = app.pg_schema.clone().unwrap();
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let mut dump = String::new();
    for table in ["api_keys", "api_key_secrets", "audit_log", "audit_head", "replication_outbox", "kms_rewrap_runs"] {
        let text: Option<String> =
            sqlx::query_scalar(&format!("SELECT string_agg(t::text, ' ') FROM {schema}.{table} t"))
                .fetch_one(&pool)
                .await
                .unwrap();
        dump.push_str(&text.unwrap_or_default());
    }
    assert!(dump.contains("\\x"), "bytea columns were dumped");
    for key in &keys {
        for form in forms_of(key) {
            assert!(!contains(dump.as_bytes(), &form), "plaintext key material in PostgreSQL");
        }
    }
    app.cleanup().await;
}

#[tokio::test]
async fn with_kms_down_writes_answer_503_and_leave_nothing_behind() {
    let mut app = TestApp::postgres_aws("kms_down").await;
    let (key, id) = app.create_key(&["query:read"]).await;
    let before = app.counts().await;
    app.kms_server.as_mut().unwrap().stop();

    let create = json!({"name": "x", "permissions": ["query:read"]});
    for (method, path, body) in [
        (Method::POST, "/admin/api-keys".to_owned(), Some(create)),
        (Method::POST, format!("/admin/api-keys/{id}/rotate"), None),
        (Method::POST, format!("/admin/api-keys/{id}/reveal"), None),
    ] {
        let (status, answer) = app.admin(method, &path, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "kms_unavailable");
        assert!(!answer.to_string().contains("127.0.0.1"), "backend details leaked: {answer}");
    }
    assert_eq!(app.counts().await, before, "a failed write left rows behind");

    // Verification never needs KMS; reads and revocation neither.
    assert_eq!(app.verify(&key).await["valid"], true);
    let (status, _) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.verify(&key).await["valid"], false);
    app.cleanup().await;
}

#[tokio::test]
async fn with_the_database_down_requests_answer_503() {
    let app = TestApp::sqlite_local("db_down").await;
    let (key, _) = app.create_key(&["query:read"]).await;
    app.store.close().await;
    let (status, answer) = app.call(Method::POST, "/v1/keys/verify", None, Some(json!({"api_key": key}))).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("database_unavailable"))
    );
    let (status, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    app.cleanup().await;
}

/// Every admin route, the scope it needs, and a body it accepts.
fn admin_routes(id: &str) -> Vec<(Method, String, &'static str, Option<Value>)> {
    vec![
        (Method::POST, "/admin/api-keys".into(), "admin:keys:write", Some(json!({"name": "n", "permissions": []}))),
        (Method::GET, "/admin/api-keys".into(), "admin:keys:read", None),
        (Method::GET, format!("/admin/api-keys/{id}"), "admin:keys:read", None),
        (Method::POST, format!("/admin/api-keys/{id}/rotate"), "admin:keys:write", None),
        (Method::POST, format!("/admin/api-keys/{id}/revoke"), "admin:keys:write", None),
        (Method::POST, format!("/admin/api-keys/{id}/reveal"), "admin:reveal", None),
        (Method::GET, "/admin/audit-log".into(), "admin:audit:read", None),
        (Method::POST, "/admin/kms/rewrap".into(), "admin:kms", None),
    ]
}

#[tokio::test]
async fn every_admin_route_refuses_a_bad_admin_key() {
    let app = TestApp::sqlite_local("auth").await;
    let (_, target) = app.create_key(&["query:read"]).await;
    let (data_key, _) = app.create_key(&["*", "query:read"]).await;
    let (revoked_admin, revoked_id) = app.create_key(&["admin:*"]).await;
    app.admin(Method::POST, &format!("/admin/api-keys/{revoked_id}/revoke"), None).await;
    let unknown = ApiKey::generate(&Prefix::default(), &Region::default(), 1, &mut rand_core::OsRng);
    let mut wrong_secret = app.admin_key.clone();
    wrong_secret.replace_range(wrong_secret.len() - 49.., &unknown.expose()[unknown.expose().len() - 49..]);

    let routes = admin_routes(&target);
    let mut scoped = Vec::new();
    for scope in ["admin:keys:write", "admin:keys:read", "admin:reveal", "admin:audit:read", "admin:kms"] {
        scoped.push((scope, app.create_key(&[scope]).await.0));
    }
    let before = app.counts().await;
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("not bearer", Some(format!("Basic {}", app.admin_key))),
        ("malformed", Some("Bearer not-a-key".into())),
        ("unknown", Some(format!("Bearer {}", unknown.expose()))),
        ("wrong secret", Some(format!("Bearer {wrong_secret}"))),
        ("revoked admin", Some(format!("Bearer {revoked_admin}"))),
    ];
    for (method, path, scope, body) in &routes {
        for (what, authorization) in &bad {
            let mut request = Request::builder().method(method.clone()).uri(path.as_str());
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value.as_str());
            }
            let request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.as_ref().map_or_else(String::new, Value::to_string)))
                .unwrap();
            let (status, headers, bytes) = app.send(request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {what}");
            assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(answer["error"]["code"], "unauthorized");
        }
        // A data-plane key (even with `*`) and every other admin scope are forbidden.
        for (what, key) in std::iter::once(("data key", &data_key))
            .chain(scoped.iter().filter(|(s, _)| s != scope).map(|(s, k)| (*s, k)))
        {
            let (status, answer) = app.call(method.clone(), path, Some(key), body.clone()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} with {what}: {answer}");
            assert_eq!(answer["error"]["code"], "forbidden");
        }
    }
    let after = app.counts().await;
    assert_eq!((after.keys, after.secrets, after.outbox), (before.keys, before.secrets, before.outbox));
    assert_eq!(after.audit - before.audit, (routes.len() * (bad.len() + 5)) as i64, "every refusal is audited");

    // The right scope opens each route (the key revoked last, so the others still find it).
    for (method, path, scope, body) in admin_routes(&target).into_iter().filter(|r| !r.1.ends_with("/revoke")) {
        let key = &scoped.iter().find(|(s, _)| *s == scope).unwrap().1;
        let (status, answer) = app.call(method.clone(), &path, Some(key), body).await;
        assert!(status.is_success(), "{method} {path} with {scope}: {status} {answer}");
    }
    let key = &scoped.iter().find(|(s, _)| *s == "admin:keys:write").unwrap().1;
    let (status, _) = app.call(Method::POST, &format!("/admin/api-keys/{target}/revoke"), Some(key), None).await;
    assert_eq!(status, StatusCode::OK);
    app.cleanup().await;
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_write_nothing() {
    let app = TestApp::sqlite_local("bad_input").await;
    let (_, id) = app.create_key(&["query:read"]).await;
    let before = app.counts().await;
    let admin = format!("Bearer {}", app.admin_key);
    // (method, path, content type, body, expected status, expected code)
    type Case<'a> = (Method, String, Option<&'a str>, String, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            "{\"name\":".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("text/plain"),
            "{}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            None,
            "{}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"permissions":[]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            // serde would read a struct from an array of its fields; the API takes objects only.
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"["n",[]]"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Method::POST,
            format!("/admin/api-keys/{id}/revoke"),
            Some("application/json"),
            "[null]".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":[],"colour":"red"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":"query:read"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":["Query:Read"]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_permission",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":["batch:0"]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch_size",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"  ","permissions":[]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","tier":"Gold!","permissions":[]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_tier",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":[],"expires_in_days":0}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_expiry",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":[],"expires_in_days":-5}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_expiry",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":[],"expires_in_days":99999999999999}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_expiry",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":[],"expires_in_days":1e400}"#.into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":[],"region":"EU"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_region",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            r#"{"name":"n","permissions":[],"metadata":[1]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_metadata",
        ),
        (
            Method::POST,
            "/admin/api-keys".into(),
            Some("application/json"),
            format!(r#"{{"name":"{}","permissions":[]}}"#, "n".repeat(100_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            Method::POST,
            format!("/admin/api-keys/{id}/rotate"),
            Some("application/json"),
            r#"{"grace_period_secs":-1}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_grace_period",
        ),
        (
            Method::POST,
            format!("/admin/api-keys/{id}/rotate"),
            Some("application/json"),
            r#"{"grace_period_secs":9999999999}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_grace_period",
        ),
        (
            Method::POST,
            format!("/admin/api-keys/{id}/rotate"),
            Some("application/json"),
            r#"{"grace":5}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Method::POST,
            format!("/admin/api-keys/{id}/revoke"),
            Some("application/json"),
            format!(r#"{{"reason":"{}"}}"#, "r".repeat(501)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_reason",
        ),
        (
            Method::GET,
            "/admin/api-keys/not-a-key-id".into(),
            None,
            String::new(),
            StatusCode::NOT_FOUND,
            "key_not_found",
        ),
        (
            Method::GET,
            "/admin/api-keys/0000000000000000000000".into(),
            None,
            String::new(),
            StatusCode::NOT_FOUND,
            "key_not_found",
        ),
        (
            Method::POST,
            "/admin/api-keys/0000000000000000000000/rotate".into(),
            None,
            String::new(),
            StatusCode::NOT_FOUND,
            "key_not_found",
        ),
        (
            Method::GET,
            "/admin/api-keys?limit=0".into(),
            None,
            String::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
        ),
        (
            Method::GET,
            "/admin/api-keys?limit=abc".into(),
            None,
            String::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
        ),
        (
            Method::GET,
            "/admin/api-keys?after=zz".into(),
            None,
            String::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
        ),
        (
            Method::GET,
            "/admin/audit-log?key_id=bad".into(),
            None,
            String::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
        ),
        (
            Method::DELETE,
            "/admin/api-keys".into(),
            None,
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (Method::GET, "/admin/nothing-here".into(), None, String::new(), StatusCode::NOT_FOUND, "not_found"),
        (
            Method::POST,
            "/v1/keys/verify".into(),
            Some("application/json"),
            r#"{"key":"x"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/keys/verify".into(),
            Some("application/json"),
            "[]".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (method, path, content_type, body, status, code) in &cases {
        let mut request =
            Request::builder().method(method.clone()).uri(path.as_str()).header(header::AUTHORIZATION, admin.as_str());
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, *content_type);
        }
        let (got, _, bytes) = app.send(request.body(Body::from(body.clone())).unwrap()).await;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!((got, answer["error"]["code"].as_str()), (*status, Some(*code)), "{method} {path} {:.80}", body);
    }
    let after = app.counts().await;
    assert_eq!((after.keys, after.secrets, after.outbox), (before.keys, before.secrets, before.outbox));
    // A bad key at verify is an answer, not an error.
    for junk in ["", "x", &"a".repeat(10_000), "fraiseql_us_east_1_\u{0}"] {
        assert_eq!(app.verify(junk).await, json!({"valid": false, "code": "invalid_key"}));
    }
    app.cleanup().await;
}

#[tokio::test]
async fn audit_verify_finds_an_edited_or_deleted_entry() {
    let app = TestApp::sqlite_local("audit").await;
    issue_some_keys(&app).await;
    let db = format!("sqlite://{}", app.sqlite_path.as_ref().unwrap().display());
    let keygate = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--database-url", &db, "--kms-master-key-file", &app.dir.join("master.key").display().to_string()])
            .args(args)
            .output()
            .unwrap()
    };
    let intact = keygate(&["audit", "verify"]);
    assert!(intact.status.success(), "{}", String::from_utf8_lossy(&intact.stderr));
    assert!(String::from_utf8_lossy(&intact.stdout).contains("intact: 4 entries"));

    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 'ok ' WHERE seq = 3").execute(&pool).await.unwrap();
    let edited = keygate(&["audit", "verify"]);
    assert_eq!(edited.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&edited.stderr).contains("entry 3 was altered"),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    sqlx::query("UPDATE audit_log SET outcome = 'ok' WHERE seq = 3").execute(&pool).await.unwrap();
    assert!(app.service.audit_verify().await.unwrap().is_ok());

    sqlx::query("DELETE FROM audit_log WHERE seq = 2").execute(&pool).await.unwrap();
    assert_eq!(keygate(&["audit", "verify"]).status.code(), Some(1));
    assert!(app.service.audit_verify().await.unwrap().is_err());
    pool.close().await;
    app.cleanup().await;
}

/// A KMS wrapper that fails every rewrap after the first `allowed`: a fault injector (a real KMS server
/// cannot be told to fail half-way through a run).
#[derive(Debug)]
struct FailingRewrapKms {
    inner: Arc<dyn Kms>,
    allowed: usize,
    calls: AtomicUsize,
}

#[async_trait]
impl Kms for FailingRewrapKms {
    fn provider(&self) -> &'static str {
        "fault-injecting"
    }
    fn current_key_id(&self) -> &str {
        self.inner.current_key_id()
    }
    async fn generate_data_key(&self, context: &KmsContext) -> Result<(DataKey, WrappedKey), KmsError> {
        self.inner.generate_data_key(context).await
    }
    async fn decrypt(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<DataKey, KmsError> {
        self.inner.decrypt(wrapped, context).await
    }
    async fn rewrap(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<WrappedKey, KmsError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.allowed {
            // Fail late, as a timeout would: the rewraps that succeeded have committed by then.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            return Err(KmsError::Unavailable("injected fault".into()));
        }
        self.inner.rewrap(wrapped, context).await
    }
}

#[tokio::test]
async fn an_interrupted_rewrap_resumes_and_every_key_still_decrypts() {
    let app = TestApp::sqlite_local("rewrap").await;
    let mut keys = vec![];
    for _ in 0..40 {
        keys.push(app.create_key(&["query:read"]).await);
    }
    let total = app.counts().await.secrets as u64;
    let failing =
        Arc::new(FailingRewrapKms { inner: app.service.kms().clone(), allowed: 10, calls: AtomicUsize::new(0) });
    // Batches of 8: the first commits, the second meets the fault after two rewraps and stores nothing.
    let settings = Settings { rewrap_batch: 8, ..Settings::default() };
    let broken = Service::new(app.store.clone(), failing, app.clock.clone(), Box::new(rand_core::OsRng), settings);
    let error = broken.rewrap(&Actor::Cli, &|_, _| {}).await.unwrap_err();
    assert_eq!(error.code(), "kms_unavailable");
    let moved =
        app.store.rewrap_pending(i64::MAX, 1000).await.unwrap().iter().filter(|s| s.data_key_version == 2).count();
    assert_eq!(moved, 8);

    // Run again (through the API): the interrupted run continues where it stopped.
    let (status, finished) = app.admin(Method::POST, "/admin/kms/rewrap", None).await;
    assert_eq!(status, StatusCode::OK, "{finished}");
    assert_eq!(finished["rewrapped"].as_u64(), Some(total - 8));
    assert!(app.store.rewrap_pending(i64::MAX, 1000).await.unwrap().iter().all(|s| s.data_key_version == 2));
    let log = app.service.audit_log(None, 10).await.unwrap();
    assert!(log.iter().any(|e| e.action == "kms.rewrap.start" && e.detail.contains("\"resumed\":true")));
    for (key, id) in &keys {
        let (status, revealed) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/reveal"), None).await;
        assert_eq!((status, revealed["api_key"].as_str()), (StatusCode::OK, Some(key.as_str())));
    }
    // A finished run is not resumed: the next one moves every data key again, to the next version.
    assert_eq!(app.service.rewrap(&Actor::Cli, &|_, _| {}).await.unwrap(), total);
    app.cleanup().await;
}

#[tokio::test]
async fn rewrap_moves_every_data_key_to_the_new_kms_key() {
    let app = TestApp::postgres_aws("rewrap").await;
    let mut keys = vec![];
    for _ in 0..12 {
        keys.push(app.create_key(&["query:read"]).await);
    }
    // The origin signing keys move too.
    app.service.ensure_origin_key().await.unwrap();
    app.service.rotate_origin_key(&Actor::Cli, None).await.unwrap();
    let signing_jwks = app.service.jwks().await.unwrap();
    let server = app.kms_server.as_ref().unwrap();
    let new_key = server.create_key().await;
    let rotated_kms = Arc::new(keygate_control_plane::kms::aws::AwsKms::from_client(server.client(), new_key.clone()));
    let service = Service::new(
        app.store.clone(),
        rotated_kms,
        app.clock.clone(),
        Box::new(rand_core::OsRng),
        Settings::default(),
    );
    let done = std::sync::Mutex::new(vec![]);
    let count = service.rewrap(&Actor::Cli, &|n, total| done.lock().unwrap().push((n, total))).await.unwrap();
    let secrets = app.counts().await.secrets;
    assert_eq!(count, secrets as u64);
    assert_eq!(done.lock().unwrap().last(), Some(&(count, count)));
    for secret in app.store.rewrap_pending(i64::MAX, 1000).await.unwrap() {
        assert_eq!(secret.kms_key_id, new_key);
    }
    for (key, id) in &keys {
        let revealed = service.reveal(&Actor::Cli, id.parse().unwrap()).await.unwrap();
        assert_eq!(revealed.expose(), key);
    }
    let origin_keys = app.store.origin_keys().await.unwrap();
    assert_eq!(origin_keys.len(), 2);
    for row in &origin_keys {
        assert_eq!(row.kms_key_id, new_key);
        let opened = service.origin_keys().open(row).await.unwrap();
        assert!(signing_jwks["keys"].as_array().unwrap().contains(&serde_json::to_value(opened.public_jwk()).unwrap()));
    }
    app.cleanup().await;
}

/// The `Debug` output of everything that holds or leads to a key (what a `{:?}` in a log line would
/// print) shows ids, never key text.
#[tokio::test]
async fn debug_output_of_values_holding_keys_shows_no_key() {
    let app = TestApp::sqlite_local("debug-output").await;
    let request = NewKey {
        name: "debug".into(),
        tier: "default".into(),
        permissions: vec!["query:read".into()],
        ..NewKey::default()
    };
    let created = app.service.create(&Actor::Cli, request).await.unwrap();
    let id = created.key.key_id();
    let rotated = app.service.rotate(&Actor::Cli, id, Some(60)).await.unwrap();
    let revealed = app.service.reveal(&Actor::Cli, id).await.unwrap();
    let (view, secrets) = app.service.show(id).await.unwrap();
    let shown = [
        format!("{created:?}"),
        format!("{rotated:?}"),
        format!("{revealed:?}"),
        format!("{view:?}"),
        format!("{secrets:?}"),
        format!("{:?}", app.service),
    ];
    for key in [created.key.expose(), rotated.key.expose(), &app.admin_key] {
        for text in &shown {
            for form in forms_of(key) {
                assert!(!contains(text.as_bytes(), &form), "a key in Debug output: {text}");
            }
        }
    }
    assert!(shown[0].contains(&id.to_string()) && shown[1].contains(&id.to_string()), "{shown:?}");
    app.cleanup().await;
}
