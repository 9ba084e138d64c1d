//! Leaked keys revoke themselves: GitHub-shaped reports signed with a P-256 key made here (and one
//! signed by the `openssl` command line) revoke the keys they carry, with the audit entry and the
//! labels GitHub wants; unsigned, forged, unknown-key and tampered reports change nothing; the keys
//! file is re-read when it changes; and the self-report endpoint answers alike for every key.
//! SQLite with the local KMS, and PostgreSQL.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use keygate_control_plane::clock::Clock as _;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::Kms;
use keygate_control_plane::leak_webhook::LeakWebhook;
use keygate_control_plane::leaks::{GithubKeys, LeakSettings, OnLeak};
use keygate_control_plane::service::{Service, Settings};
use keygate_control_plane::store::{SqlStore, Store};
use keygate_shared::{ApiKey, KeyId, KeySecret, ParsedKey, Prefix, Region};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use rand_core::OsRng;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::app::{postgres_url, TestApp};
use crate::support::fault_net::{FaultProxy, Mode};

const GITHUB: &str = "/v1/secret-scanning/github";
const PG_MASTER_KEY: [u8; 32] = [0x4c; 32];

/// A GitHub stand-in: its own P-256 key pair, published under an identifier in a keys file.
struct Scanner {
    identifier: String,
    signing: SigningKey,
}

impl Scanner {
    fn new(identifier: &str) -> Self {
        Self { identifier: identifier.to_owned(), signing: SigningKey::random(&mut OsRng) }
    }

    fn public_pem(&self) -> String {
        self.signing.verifying_key().to_public_key_pem(LineEnding::LF).unwrap()
    }

    /// base64 of the DER signature over `body`, as GitHub sends it.
    fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.signing.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }
}

fn keys_document(keys: &[(&str, String)]) -> String {
    let entries: Vec<Value> = keys
        .iter()
        .map(|(identifier, pem)| json!({"key_identifier": identifier, "key": pem, "is_current": true}))
        .collect();
    json!({"public_keys": entries}).to_string()
}

/// A control plane with GitHub scanning configured, over a [`TestApp`]'s store and clock.
struct Leaky {
    app: TestApp,
    router: Router,
    keys_file: PathBuf,
    scanner: Scanner,
}

enum Db {
    Sqlite,
    Postgres,
    /// PostgreSQL behind a store made by the test (through the fault proxy), in this schema.
    PostgresStore(Arc<dyn Store>, String),
}

impl Leaky {
    async fn start(name: &str, db: Db, on_leak: OnLeak) -> Self {
        Self::start_with(name, db, on_leak, None).await
    }

    async fn start_with(name: &str, db: Db, on_leak: OnLeak, webhook: Option<Arc<LeakWebhook>>) -> Self {
        let (app, kms): (TestApp, Arc<dyn Kms>) = match db {
            Db::Sqlite => {
                let app = TestApp::sqlite_local(name).await;
                let kms = Arc::new(LocalKms::open_or_create(&app.dir.join("master.key")).unwrap());
                (app, kms)
            }
            Db::Postgres => {
                let app = TestApp::postgres_local(name, PG_MASTER_KEY).await;
                (app, Arc::new(LocalKms::from_master_key(&PG_MASTER_KEY, OsRng)))
            }
            Db::PostgresStore(store, schema) => {
                let kms: Arc<dyn Kms> = Arc::new(LocalKms::from_master_key(&PG_MASTER_KEY, OsRng));
                (TestApp::over(store, kms.clone(), Some(schema)).await, kms)
            }
        };
        let scanner = Scanner::new("github-key-1");
        let keys_file = std::env::temp_dir().join(format!("keygate-gh-keys-{name}-{}.json", std::process::id()));
        std::fs::write(&keys_file, keys_document(&[(&scanner.identifier, scanner.public_pem())])).unwrap();
        let github_keys = Arc::new(GithubKeys::open(&keys_file, app.clock.now_millis()).unwrap());
        let settings = Settings {
            leaks: LeakSettings { on_leak, github_keys: Some(github_keys), webhook },
            ..Settings::default()
        };
        let service = Arc::new(Service::new(app.store.clone(), kms, app.clock.clone(), Box::new(OsRng), settings));
        let router = keygate_control_plane::api::router(service);
        Self { app, router, keys_file, scanner }
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(Method::POST).uri(path).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.router.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A GitHub report signed by `scanner` under `identifier`.
    async fn github(&self, scanner: &Scanner, body: &[u8]) -> (StatusCode, Value) {
        let signature = scanner.sign(body);
        let headers = [
            ("Github-Public-Key-Identifier", scanner.identifier.as_str()),
            ("Github-Public-Key-Signature", &signature),
        ];
        self.post(GITHUB, &headers, body.to_vec()).await
    }

    async fn key(&self, id: &str) -> Value {
        let (status, body) = self.app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn newest_audit(&self, id: &str) -> Value {
        let (status, body) = self.app.admin(Method::GET, &format!("/admin/audit-log?key_id={id}&limit=1"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["entries"][0].clone()
    }

    async fn cleanup(self) {
        let _ = std::fs::remove_file(&self.keys_file);
        self.app.cleanup().await;
    }
}

fn report(tokens: &[&str]) -> Vec<u8> {
    let items: Vec<Value> = tokens
        .iter()
        .map(|token| {
            json!({"token": token, "type": "keygate_api_key", "url": "https://github.com/octo/leak/blob/main/.env", "source": "content"})
        })
        .collect();
    serde_json::to_vec(&items).unwrap()
}

fn sha256_hex(text: &str) -> String {
    keygate_shared::hash::sha256_hex(text)
}

/// A well-formed key no one issued.
fn stranger() -> String {
    ApiKey::generate(&Prefix::default(), &Region::default(), 1_800_000_000_000, &mut OsRng).expose().to_owned()
}

/// The same key id as `key` with another secret: well-formed, checksum right, matching nothing.
fn wrong_secret(key: &str) -> String {
    let id = ParsedKey::parse(key).unwrap().key_id();
    ApiKey::assemble(&Prefix::default(), &Region::default(), id, &KeySecret::generate(&mut OsRng)).expose().to_owned()
}

async fn signed_batch_revokes_and_labels(db: Db, name: &str) {
    let leaky = Leaky::start(name, db, OnLeak::Revoke).await;
    let app = &leaky.app;
    let (live, live_id) = app.create_key(&["query:read"]).await;
    let (dead, dead_id) = app.create_key(&["query:read"]).await;
    let (status, _) = app.admin(Method::POST, &format!("/admin/api-keys/{dead_id}/revoke"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let mut broken = live.clone();
    broken.replace_range(broken.len() - 1.., if live.ends_with('A') { "B" } else { "A" });
    let unknown = stranger();
    let other_secret = wrong_secret(&live);
    let tokens = [live.as_str(), dead.as_str(), "not a key at all", broken.as_str(), unknown.as_str(), &other_secret];

    let before = app.counts().await;
    let (status, answer) = leaky.github(&leaky.scanner, &report(&tokens)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let labels: Vec<&str> = answer.as_array().unwrap().iter().map(|f| f["label"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        ["true_positive", "true_positive", "false_positive", "false_positive", "false_positive", "false_positive"]
    );
    for (feedback, token) in answer.as_array().unwrap().iter().zip(tokens) {
        assert_eq!(feedback["token_hash"], sha256_hex(token));
        assert_eq!(feedback["token_type"], "keygate_api_key");
    }

    let shown = leaky.key(&live_id).await;
    assert_eq!((shown["status"].as_str(), shown["revoked_reason"].as_str()), (Some("revoked"), Some("leaked")));
    assert_eq!(app.verify(&live).await["valid"], false, "the leaked key no longer opens anything");
    let entry = leaky.newest_audit(&live_id).await;
    assert_eq!(entry["actor"], "github-secret-scanning");
    assert_eq!((entry["action"].as_str(), entry["outcome"].as_str()), (Some("key.revoke"), Some("ok")));
    assert_eq!(entry["detail"]["reason"], "leaked");
    assert_eq!(entry["detail"]["url"], "https://github.com/octo/leak/blob/main/.env");
    assert_eq!(entry["detail"]["source"], "content");
    let entry = leaky.newest_audit(&dead_id).await;
    assert_eq!(
        (entry["actor"].as_str(), entry["outcome"].as_str()),
        (Some("github-secret-scanning"), Some("already_revoked"))
    );

    let after = app.counts().await;
    assert_eq!(after.outbox, before.outbox + 1, "one revocation record for the edge, the normal way");
    assert_eq!(after.audit, before.audit + 2, "the revocation and the re-report of the revoked key");
    assert_eq!((after.keys, after.secrets), (before.keys, before.secrets));
    leaky.cleanup().await;
}

#[tokio::test]
async fn a_signed_batch_revokes_live_keys_and_labels_every_token_sqlite() {
    signed_batch_revokes_and_labels(Db::Sqlite, "leaks_batch").await;
}

#[tokio::test]
async fn a_signed_batch_revokes_live_keys_and_labels_every_token_postgres() {
    signed_batch_revokes_and_labels(Db::Postgres, "leaks_batch").await;
}

/// Header names and values of one request.
type Headers<'a> = Vec<(&'a str, &'a str)>;

async fn bad_signatures_revoke_nothing(db: Db, name: &str) {
    let leaky = Leaky::start(name, db, OnLeak::Revoke).await;
    let (live, _) = leaky.app.create_key(&["query:read"]).await;
    let body = report(&[&live]);
    let good = leaky.scanner.sign(&body);
    let before = leaky.app.counts().await;
    let impostor = Scanner { identifier: leaky.scanner.identifier.clone(), signing: SigningKey::random(&mut OsRng) };
    let forged = impostor.sign(&body);
    let tampered = report(&[&live, "x"]);
    let id = leaky.scanner.identifier.clone();
    let cases: Vec<(&str, Headers, Vec<u8>, &str)> = vec![
        ("unsigned", vec![], body.clone(), "missing_signature"),
        ("no signature", vec![("Github-Public-Key-Identifier", &id)], body.clone(), "missing_signature"),
        ("no identifier", vec![("Github-Public-Key-Signature", &good)], body.clone(), "missing_signature"),
        (
            "unknown identifier",
            vec![("Github-Public-Key-Identifier", "someone-else"), ("Github-Public-Key-Signature", &good)],
            body.clone(),
            "unknown_public_key",
        ),
        (
            "forged",
            vec![("Github-Public-Key-Identifier", &id), ("Github-Public-Key-Signature", &forged)],
            body.clone(),
            "bad_signature",
        ),
        (
            "tampered body",
            vec![("Github-Public-Key-Identifier", &id), ("Github-Public-Key-Signature", &good)],
            tampered,
            "bad_signature",
        ),
        (
            "not base64",
            vec![("Github-Public-Key-Identifier", &id), ("Github-Public-Key-Signature", "%%%")],
            body.clone(),
            "bad_signature",
        ),
        (
            "not DER",
            vec![("Github-Public-Key-Identifier", &id), ("Github-Public-Key-Signature", "AAAA")],
            body.clone(),
            "bad_signature",
        ),
    ];
    for (case, headers, body, code) in cases {
        let (status, answer) = leaky.post(GITHUB, &headers, body).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some(code)), "{case}");
    }
    assert_eq!(leaky.app.counts().await, before, "no row, no audit entry, no outbox record");
    assert_eq!(leaky.app.verify(&live).await["valid"], true);
    leaky.cleanup().await;
}

#[tokio::test]
async fn unsigned_forged_unknown_and_tampered_reports_revoke_nothing_sqlite() {
    bad_signatures_revoke_nothing(Db::Sqlite, "leaks_forged").await;
}

#[tokio::test]
async fn unsigned_forged_unknown_and_tampered_reports_revoke_nothing_postgres() {
    bad_signatures_revoke_nothing(Db::Postgres, "leaks_forged").await;
}

#[tokio::test]
async fn a_signed_malformed_body_is_a_4xx_and_changes_nothing() {
    let leaky = Leaky::start("leaks_malformed", Db::Sqlite, OnLeak::Revoke).await;
    let before = leaky.app.counts().await;
    for (body, status, code) in [
        ("not json", StatusCode::BAD_REQUEST, "malformed_json"),
        ("[{\"token\": ", StatusCode::BAD_REQUEST, "malformed_json"),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("[1]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("[{\"type\": \"x\"}]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("[{\"token\": 7}]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
    ] {
        let (got, answer) = leaky.github(&leaky.scanner, body.as_bytes()).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body}: {answer}");
    }
    let (status, answer) = leaky.github(&leaky.scanner, b"[]").await;
    assert_eq!((status, answer), (StatusCode::OK, json!([])), "an empty batch is answered with an empty array");
    assert_eq!(leaky.app.counts().await, before);
    leaky.cleanup().await;
}

#[tokio::test]
async fn under_notify_a_leaked_key_is_labelled_and_audited_but_keeps_working() {
    let leaky = Leaky::start("leaks_notify", Db::Sqlite, OnLeak::Notify).await;
    let (live, live_id) = leaky.app.create_key(&["query:read"]).await;
    let before = leaky.app.counts().await;
    let (status, answer) = leaky.github(&leaky.scanner, &report(&[&live, &stranger()])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer[0]["label"], "true_positive");
    assert_eq!(answer[1]["label"], "false_positive");
    assert_eq!(leaky.app.verify(&live).await["valid"], true, "notify revokes nothing");
    assert_eq!(leaky.key(&live_id).await["status"], "active");
    let entry = leaky.newest_audit(&live_id).await;
    assert_eq!((entry["action"].as_str(), entry["outcome"].as_str()), (Some("key.leak_reported"), Some("notified")));
    assert_eq!(entry["actor"], "github-secret-scanning");
    assert_eq!(entry["detail"]["url"], "https://github.com/octo/leak/blob/main/.env");
    let after = leaky.app.counts().await;
    assert_eq!((after.audit, after.outbox), (before.audit + 1, before.outbox), "an audit entry, nothing replicated");
    leaky.cleanup().await;
}

#[tokio::test]
async fn the_keys_file_is_read_again_after_it_changes() {
    let leaky = Leaky::start("leaks_reread", Db::Sqlite, OnLeak::Revoke).await;
    let (live, _) = leaky.app.create_key(&["query:read"]).await;
    let newcomer = Scanner::new("github-key-2");
    let body = report(&[&live]);
    let (status, answer) = leaky.github(&newcomer, &body).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unknown_public_key")));

    // GitHub publishes a second key; the file's mtime and length move.
    let both = keys_document(&[
        (&leaky.scanner.identifier, leaky.scanner.public_pem()),
        (&newcomer.identifier, newcomer.public_pem()),
    ]);
    std::fs::write(&leaky.keys_file, both).unwrap();
    let (status, _) = leaky.github(&newcomer, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the file is looked at once a second at most");
    leaky.app.clock.advance(1);
    let (status, answer) = leaky.github(&newcomer, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer[0]["label"], "true_positive");
    assert_eq!(leaky.app.verify(&live).await["valid"], false);

    // A broken rewrite keeps the keys already loaded.
    std::fs::write(&leaky.keys_file, "{ not json").unwrap();
    leaky.app.clock.advance(1);
    let (status, answer) = leaky.github(&leaky.scanner, &report(&[&stranger()])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    leaky.cleanup().await;
}

/// An independent implementation signs: `openssl` makes the key pair and the signature.
#[tokio::test]
async fn a_report_signed_by_openssl_verifies() {
    let leaky = Leaky::start("leaks_openssl", Db::Sqlite, OnLeak::Revoke).await;
    let (live, live_id) = leaky.app.create_key(&["query:read"]).await;
    let dir = leaky.app.dir.join("openssl");
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "private.pem"]);
    openssl(&["ec", "-in", "private.pem", "-pubout", "-out", "public.pem"]);
    let body = report(&[&live]);
    std::fs::write(dir.join("body.json"), &body).unwrap();
    openssl(&["dgst", "-sha256", "-sign", "private.pem", "-out", "signature.der", "body.json"]);
    let signature = base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("signature.der")).unwrap());
    let public = std::fs::read_to_string(dir.join("public.pem")).unwrap();
    std::fs::write(
        &leaky.keys_file,
        keys_document(&[(&leaky.scanner.identifier, leaky.scanner.public_pem()), ("openssl-key", public)]),
    )
    .unwrap();
    leaky.app.clock.advance(1);

    let headers =
        [("Github-Public-Key-Identifier", "openssl-key"), ("Github-Public-Key-Signature", signature.as_str())];
    let (status, answer) = leaky.post(GITHUB, &headers, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer[0]["label"], "true_positive");
    assert_eq!(leaky.key(&live_id).await["revoked_reason"], "leaked");
    leaky.cleanup().await;
}

async fn a_thousand_tokens(db: Db, name: &str) {
    let leaky = Leaky::start(name, db, OnLeak::Revoke).await;
    let mut real = Vec::new();
    for _ in 0..10 {
        real.push(leaky.app.create_key(&["query:read"]).await);
    }
    let mut tokens: Vec<String> = (0..990).map(|_| stranger()).collect();
    for (at, (key, _)) in real.iter().enumerate() {
        tokens.insert(at * 100, key.clone());
    }
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let body = report(&refs);
    assert!(body.len() > 64 * 1024, "a batch this size is over the other routes' body limit");
    let (status, answer) = leaky.github(&leaky.scanner, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answer = answer.as_array().unwrap();
    assert_eq!(answer.len(), 1_000);
    let positives: Vec<usize> =
        answer.iter().enumerate().filter(|(_, f)| f["label"] == "true_positive").map(|(at, _)| at).collect();
    assert_eq!(positives, (0..10).map(|at| at * 100).collect::<Vec<_>>());
    for (key, id) in &real {
        assert_eq!(leaky.app.verify(key).await["valid"], false);
        assert_eq!(leaky.key(id).await["revoked_reason"], "leaked");
    }
    leaky.cleanup().await;
}

#[tokio::test]
async fn a_batch_of_a_thousand_tokens_is_answered_in_order_sqlite() {
    a_thousand_tokens(Db::Sqlite, "leaks_thousand").await;
}

#[tokio::test]
async fn a_batch_of_a_thousand_tokens_is_answered_in_order_postgres() {
    a_thousand_tokens(Db::Postgres, "leaks_thousand").await;
}

async fn self_reports(db: Db, name: &str) {
    let leaky = Leaky::start(name, db, OnLeak::Revoke).await;
    let (live, live_id) = leaky.app.create_key(&["query:read"]).await;
    let (dead, dead_id) = leaky.app.create_key(&["query:read"]).await;
    let (status, _) =
        leaky.app.admin(Method::POST, &format!("/admin/api-keys/{dead_id}/revoke"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let body = |key: &str| serde_json::to_vec(&json!({"api_key": key, "source": "pasted in a public chat"})).unwrap();

    let (status, answer) = leaky.post("/v1/keys/report", &[], body(&live)).await;
    assert_eq!((status, &answer), (StatusCode::ACCEPTED, &json!({"received": true})));
    assert_eq!(leaky.key(&live_id).await["revoked_reason"], "leaked");
    let entry = leaky.newest_audit(&live_id).await;
    assert_eq!((entry["actor"].as_str(), entry["action"].as_str()), (Some("leak-report"), Some("key.revoke")));
    assert_eq!(entry["detail"]["source"], "pasted in a public chat");

    // Revoked, unknown, wrong secret, garbage: the very same answer.
    for key in [dead.clone(), live.clone(), stranger(), wrong_secret(&dead), "garbage".to_owned(), String::new()] {
        let (status, same) = leaky.post("/v1/keys/report", &[], body(&key)).await;
        assert_eq!((status, &same), (StatusCode::ACCEPTED, &answer), "{key}");
    }
    // A disabled key is not revoked yet (disabling can be undone): a leak revokes it.
    let (disabled, disabled_id) = leaky.app.create_key(&["query:read"]).await;
    let (status, _) = leaky
        .app
        .admin(Method::PATCH, &format!("/admin/api-keys/{disabled_id}"), Some(json!({"enabled": false})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(leaky.post("/v1/keys/report", &[], body(&disabled)).await, (StatusCode::ACCEPTED, answer.clone()));
    let view = leaky.key(&disabled_id).await;
    assert_eq!((view["status"].as_str(), view["revoked_reason"].as_str()), (Some("revoked"), Some("leaked")));
    let without_source = serde_json::to_vec(&json!({"api_key": stranger()})).unwrap();
    assert_eq!(leaky.post("/v1/keys/report", &[], without_source).await.0, StatusCode::ACCEPTED);

    let before = leaky.app.counts().await;
    let long = "x".repeat(501);
    for malformed in [
        json!({}),
        json!({"api_key": 5}),
        json!({"api_key": "a", "extra": 1}),
        json!({"api_key": "a", "source": long}),
        json!(["a"]),
    ] {
        let (status, answer) = leaky.post("/v1/keys/report", &[], serde_json::to_vec(&malformed).unwrap()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{malformed}: {answer}");
        assert!(answer["error"]["code"].is_string());
    }
    assert_eq!(leaky.app.counts().await, before);
    leaky.cleanup().await;
}

#[tokio::test]
async fn a_self_report_revokes_and_answers_alike_for_every_key_sqlite() {
    self_reports(Db::Sqlite, "leaks_report").await;
}

#[tokio::test]
async fn a_self_report_revokes_and_answers_alike_for_every_key_postgres() {
    self_reports(Db::Postgres, "leaks_report").await;
}

/// Every report counts as a failed check (a real socket: the limit needs the peer's address), so the
/// endpoint probes no faster than verify.
#[tokio::test]
async fn self_reports_count_toward_the_failed_attempt_limit() {
    let app = TestApp::sqlite_local("leaks_report_limit").await;
    let (good, _) = app.create_key(&["query:read"]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keygate_control_plane::api::run(listener, app.service.clone(), async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap();
    let post = |path: &str, body: Value| {
        let request = http.post(format!("{base}{path}")).header("content-type", "application/json");
        async move { request.body(body.to_string()).send().await.unwrap().status().as_u16() }
    };
    for _ in 0..keygate_shared::attempts::DEFAULT_LIMIT {
        assert_eq!(post("/v1/keys/report", json!({"api_key": KeyId::from(7).to_string()})).await, 202);
    }
    assert_eq!(post("/v1/keys/report", json!({"api_key": "x"})).await, 429);
    assert_eq!(post("/v1/keys/verify", json!({"api_key": good})).await, 429, "verify is held off too");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    app.cleanup().await;
}

/// The README's pattern for GitHub matches every valid key vector and none of the shape near-misses.
/// (Checksum and range near-misses fit any pattern; the endpoint labels them `false_positive` without a
/// database read.)
#[test]
fn the_readme_pattern_matches_the_valid_vectors_and_no_shape_near_miss() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("\n## Leaked keys\n").nth(1).expect("README has a Leaked keys section");
    let pattern = section.split("```regex\n").nth(1).and_then(|rest| rest.split("\n```").next()).unwrap();
    let anchored = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/testdata/keyformat-v1.json")).unwrap(),
    )
    .unwrap();
    for valid in vectors["valid"].as_array().unwrap() {
        let key = valid["key"].as_str().unwrap();
        assert!(anchored.is_match(key), "the pattern misses a valid key: {key}");
    }
    let mut refused = 0;
    for invalid in vectors["invalid"].as_array().unwrap() {
        let (key, code) = (invalid["key"].as_str().unwrap(), invalid["code"].as_str().unwrap());
        if matches!(code, "checksum_mismatch" | "key_id_out_of_range" | "secret_out_of_range") {
            continue;
        }
        assert!(!anchored.is_match(key), "the pattern takes a near-miss ({code}): {key:?}");
        refused += 1;
    }
    assert!(refused >= 20, "most near-misses are shape errors");
    // A key in a file is found inside its text.
    let inside = regex::Regex::new(pattern).unwrap();
    let key = vectors["valid"][0]["key"].as_str().unwrap();
    assert_eq!(inside.find(&format!("API_KEY=\"{key}\"\n")).map(|m| m.as_str()), Some(key));
}

/// The owner's webhook: a real HTTP server here gets the signed notice after the revocation; the
/// signature is checked with `openssl dgst -hmac`, not with keygate's own code.
#[tokio::test]
async fn the_owners_webhook_hears_what_was_revoked_and_where() {
    let (got, mut received) = tokio::sync::mpsc::unbounded_channel::<(axum::http::HeaderMap, String)>();
    let hook = Router::new().route(
        "/leaks",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let got = got.clone();
            async move {
                let _ = got.send((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/leaks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    let secret = "webhook-secret-for-the-test";
    let webhook = Arc::new(LeakWebhook::new(&url, keygate_shared::SyncSecret::new(secret)));
    let leaky = Leaky::start_with("leaks_webhook", Db::Sqlite, OnLeak::Revoke, Some(webhook)).await;
    let (status, created) = leaky
        .app
        .admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"name": "ci deploy", "owner": "team-a", "permissions": ["query:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (live, live_id) = (created["api_key"].as_str().unwrap(), created["api_key_id"].as_str().unwrap());

    let (status, _) = leaky.github(&leaky.scanner, &report(&[live, &stranger()])).await;
    assert_eq!(status, StatusCode::OK);
    let (headers, body) =
        tokio::time::timeout(std::time::Duration::from_secs(10), received.recv()).await.unwrap().unwrap();
    let notice: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(notice["api_key_id"], live_id);
    assert_eq!((notice["name"].as_str(), notice["owner"].as_str()), (Some("ci deploy"), Some("team-a")));
    assert_eq!(notice["revoked"], true);
    assert_eq!(notice["found_at"], "https://github.com/octo/leak/blob/main/.env");
    assert_eq!(notice["source"], "content");
    assert!(notice["at"].as_str().unwrap().ends_with('Z'));
    assert!(!body.contains(live), "the notice never carries the key");

    let timestamp = headers["x-keygate-timestamp"].to_str().unwrap();
    let signature = headers["x-keygate-signature"].to_str().unwrap();
    let mut openssl = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut openssl.stdin.take().unwrap(), format!("{timestamp}.{body}").as_bytes()).unwrap();
    let out = String::from_utf8(openssl.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out.trim().rsplit(' ').next(), Some(signature), "openssl computes another HMAC: {out}");
    assert!(received.try_recv().is_err(), "one notice: the stranger's token revoked nothing");
    leaky.cleanup().await;
}

/// Garbage costs no database read, shown on real PostgreSQL behind the fault proxy: with the database
/// refusing connections, tokens failing shape or checksum are still answered `false_positive`, while a
/// single well-formed token needs the database (503, which GitHub retries).
#[tokio::test]
async fn garbage_is_answered_without_the_database() {
    let schema = format!("kg_leaks_nodb_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    let authority = postgres_url().split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
    let proxy = FaultProxy::start(&format!("http://{authority}")).await;
    let port: u16 = proxy.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&postgres_url())
        .unwrap()
        .host("127.0.0.1")
        .port(port)
        .options([("search_path", schema.as_str())]);
    let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Postgres>::connect_postgres(options).await.unwrap());
    store.migrate().await.unwrap();
    let leaky = Leaky::start_with("leaks_nodb", Db::PostgresStore(store, schema), OnLeak::Revoke, None).await;
    let (live, _) = leaky.app.create_key(&["query:read"]).await;
    let mut broken = live.clone();
    broken.replace_range(broken.len() - 1.., if live.ends_with('A') { "B" } else { "A" });
    let too_long = format!("{}{live}", "a".repeat(200));

    proxy.set(Mode::Refuse).await;
    let garbage = report(&["", "not a key", &broken, &too_long, &live[..live.len() - 1]]);
    let (status, answer) = leaky.github(&leaky.scanner, &garbage).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.as_array().unwrap().iter().all(|f| f["label"] == "false_positive"), "{answer}");
    let (status, answer) = leaky.github(&leaky.scanner, &report(&["not a key", &live])).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("database_unavailable"))
    );
    proxy.set(Mode::Forward).await;

    let (status, answer) = leaky.github(&leaky.scanner, &report(&[&live])).await;
    assert_eq!((status, answer[0]["label"].as_str()), (StatusCode::OK, Some("true_positive")), "{answer}");
    leaky.cleanup().await;
}
