//! The console's router over a real service (SQLite, local KMS, a manual clock): pages need a session,
//! changes need a session, the CSRF token and the console's own origin, and a refused change changes
//! nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::clock::ManualClock;
use crate::kms::local::LocalKms;
use crate::service::{NewKey, Service, Settings};
use crate::store::{SqlStore, Store};

struct Console {
    service: Arc<Service>,
    clock: Arc<ManualClock>,
    router: Router,
    admin_key: String,
}

async fn console() -> Console {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let dir = std::env::temp_dir().join(format!("keygate-console-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keygate.db").display());
    let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&url).await.unwrap());
    store.migrate().await.unwrap();
    let kms = Arc::new(LocalKms::open_or_create(&dir.join("master.key")).unwrap());
    let clock = Arc::new(ManualClock::at(1_800_000_000));
    let service = Arc::new(Service::new(store, kms, clock.clone(), Box::new(rand_core::OsRng), Settings::default()));
    let admin_key = service.bootstrap_admin().await.unwrap().key.expose().to_owned();
    let router = crate::api::router(service.clone());
    Console { service, clock, router, admin_key }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Answer { status, headers, body }
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path).header(header::HOST, "console.test");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, origin: Option<&str>, form: &str) -> Request<Body> {
    let mut request = Request::post(path)
        .header(header::HOST, "console.test")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    request.body(Body::from(form.to_owned())).unwrap()
}

/// Signs in; the cookie pair and the session's CSRF token (read from a page's form).
async fn sign_in(console: &Console) -> (String, String) {
    let form = format!("api_key={}", console.admin_key);
    let answer = send(&console.router, post("/ui/sign-in", None, Some("http://console.test"), &form)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let cookie = answer.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    let pair = cookie.split(';').next().unwrap().to_owned();
    let page = send(&console.router, get("/ui/keys", Some(&pair))).await;
    assert_eq!(page.status, StatusCode::OK);
    let at = page.body.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
    (pair, page.body[at..at + 64].to_owned())
}

async fn user_key(console: &Console) -> keygate_shared::KeyId {
    let created = console
        .service
        .create(
            &crate::service::Actor::Cli,
            NewKey {
                name: "shop".into(),
                tier: "default".into(),
                permissions: vec!["query:read".into()],
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    created.view.row.id
}

async fn status_of(console: &Console, id: keygate_shared::KeyId) -> &'static str {
    console.service.show(id).await.unwrap().0.status
}

#[tokio::test]
async fn pages_without_a_session_redirect_to_sign_in_with_the_security_headers() {
    let console = console().await;
    for path in ["/ui/keys", "/ui/audit", "/ui/keys/new"] {
        let answer = send(&console.router, get(path, None)).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers[header::LOCATION], "/ui/sign-in");
        assert_eq!(answer.headers[header::CONTENT_SECURITY_POLICY], super::CSP);
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    }
    let forged = send(&console.router, get("/ui/keys", Some("keygate_console=00ff"))).await;
    assert_eq!(forged.status, StatusCode::SEE_OTHER);
    let sign_in = send(&console.router, get("/ui/sign-in", None)).await;
    assert_eq!(sign_in.status, StatusCode::OK);
    assert!(sign_in.body.contains(r#"name="api_key""#));
    assert!(!super::CSP.contains("unsafe-inline"));
}

#[tokio::test]
async fn sign_in_refuses_a_bad_key_and_sets_a_strict_cookie() {
    let console = console().await;
    let bad = send(&console.router, post("/ui/sign-in", None, None, "api_key=fraiseql_us_east_1_nope")).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.get(header::SET_COOKIE).is_none());
    let cross = format!("api_key={}", console.admin_key);
    let cross = send(&console.router, post("/ui/sign-in", None, Some("http://evil.test"), &cross)).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    let form = format!("api_key={}", console.admin_key);
    let mut request = post("/ui/sign-in", None, None, &form);
    request.headers_mut().insert("x-forwarded-proto", "https".parse().unwrap());
    let good = send(&console.router, request).await;
    assert_eq!(good.status, StatusCode::SEE_OTHER);
    let cookie = good.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("keygate_console="), "{cookie}");
    for flag in ["Path=/ui", "HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.split("; ").any(|part| part == flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains(&console.admin_key));
}

#[tokio::test]
async fn a_change_without_session_token_or_own_origin_changes_nothing() {
    let console = console().await;
    let id = user_key(&console).await;
    let path = format!("/ui/keys/{id}/revoke");
    let no_session = send(&console.router, post(&path, None, None, "csrf=x&reason=r")).await;
    assert_eq!(no_session.status, StatusCode::FORBIDDEN);
    let (cookie, token) = sign_in(&console).await;
    let audit_before = console.service.audit_log(None, 1_000).await.unwrap().len();
    let no_token = send(&console.router, post(&path, Some(&cookie), None, "reason=r")).await;
    assert_eq!(no_token.status, StatusCode::UNPROCESSABLE_ENTITY, "a form without its token is malformed");
    let wrong_token =
        send(&console.router, post(&path, Some(&cookie), None, &format!("csrf={}&reason=r", "0".repeat(64)))).await;
    assert_eq!(wrong_token.status, StatusCode::FORBIDDEN);
    let form = format!("csrf={token}&reason=r");
    let cross_site = send(&console.router, post(&path, Some(&cookie), Some("http://evil.test"), &form)).await;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    assert_eq!(status_of(&console, id).await, "active");
    assert_eq!(console.service.audit_log(None, 1_000).await.unwrap().len(), audit_before);

    let done = send(&console.router, post(&path, Some(&cookie), Some("http://console.test"), &form)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(status_of(&console, id).await, "revoked");
    let entry = console.service.audit_log(Some(id), 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "key.revoke");
    assert!(entry.actor.starts_with("admin:"), "the console acts as its admin key: {}", entry.actor);
}

#[tokio::test]
async fn sessions_end_on_sign_out_on_expiry_and_when_the_admin_key_goes() {
    let console = console().await;
    let (cookie, token) = sign_in(&console).await;
    let out = send(&console.router, post("/ui/sign-out", Some(&cookie), None, &format!("csrf={token}"))).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(send(&console.router, get("/ui/keys", Some(&cookie))).await.status, StatusCode::SEE_OTHER);

    let (cookie, _) = sign_in(&console).await;
    console.clock.advance(super::session::SESSION_IDLE_SECS);
    assert_eq!(send(&console.router, get("/ui/keys", Some(&cookie))).await.status, StatusCode::SEE_OTHER);

    let (cookie, _) = sign_in(&console).await;
    let admin_id = keygate_shared::ParsedKey::parse(&console.admin_key).unwrap().key_id();
    console.service.revoke(&crate::service::Actor::Cli, admin_id, None).await.unwrap();
    assert_eq!(send(&console.router, get("/ui/keys", Some(&cookie))).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn create_shows_the_key_once_refuses_bad_input_and_needs_the_write_scope() {
    let console = console().await;
    let (cookie, token) = sign_in(&console).await;
    let count = || async { console.service.list(None, 1_000).await.unwrap().len() };
    let before = count().await;
    let bad = format!("csrf={token}&name=x&tier=NOT+A+TIER&permissions=query%3Aread");
    let bad = send(&console.router, post("/ui/keys", Some(&cookie), None, &bad)).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert!(bad.body.contains("tier"), "{}", bad.body);
    assert_eq!(count().await, before);

    let good = format!("csrf={token}&name=shop&tier=default&permissions=query%3Aread+batch%3A10&expires_in_days=30");
    let good = send(&console.router, post("/ui/keys", Some(&cookie), None, &good)).await;
    assert_eq!(good.status, StatusCode::CREATED);
    assert_eq!(good.headers[header::CACHE_CONTROL], "no-store");
    let marker = r#"id="api-key" class="secret" readonly value=""#;
    let at = good.body.find(marker).unwrap() + marker.len();
    let key = &good.body[at..at + good.body[at..].find('"').unwrap()];
    let parsed = keygate_shared::ParsedKey::parse(key).unwrap();
    assert_eq!(count().await, before + 1);
    let page = send(&console.router, get(&format!("/ui/keys/{}", parsed.key_id()), Some(&cookie))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("batch:10") && !page.body.contains(key), "the key's page never shows the key");

    let reader = console
        .service
        .create(
            &crate::service::Actor::Cli,
            NewKey {
                name: "reader".into(),
                tier: "admin".into(),
                permissions: vec!["admin:keys:read".into()],
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    let form = format!("api_key={}", reader.key.expose());
    let answer = send(&console.router, post("/ui/sign-in", None, None, &form)).await;
    let reader_cookie = answer.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let list = send(&console.router, get("/ui/keys", Some(&reader_cookie))).await;
    assert!(
        !list.body.contains("/ui/keys/new") && !list.body.contains("/ui/audit"),
        "nothing it may not do is offered"
    );
    let at = list.body.find(r#"name="csrf" value=""#).unwrap() + r#"name="csrf" value=""#.len();
    let reader_token = &list.body[at..at + 64];
    let form = format!("csrf={reader_token}&name=x&tier=default&permissions=query%3Aread");
    let refused = send(&console.router, post("/ui/keys", Some(&reader_cookie), None, &form)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(count().await, before + 2, "only the reader itself was added");
    // The reader's sign-in and its refused create are in the audit log, as the reader.
    let reader_actor = format!("admin:{}", reader.view.row.id);
    let entries = console.service.audit_log(None, 1_000).await.unwrap();
    let by_reader: Vec<(&str, &str)> = entries
        .iter()
        .filter(|entry| entry.actor == reader_actor)
        .map(|entry| (entry.action.as_str(), entry.outcome.as_str()))
        .collect();
    assert_eq!(by_reader, [("console.action", "forbidden"), ("console.sign_in", "ok")], "newest first");
    let refusal = entries.iter().find(|entry| entry.action == "console.action").unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&refusal.detail).unwrap()["scope"], "admin:keys:write");
}
