//! Every kind of credential against every admin route of the router's own table (`api::routes`), so a
//! route added to the table is checked here without editing this file; and the table against the
//! README's admin API table and the OpenAPI document.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use keygate_control_plane::api::{routes, Access, RouteSpec};
use keygate_shared::{AdminScope, ApiKey, KeySecret, Prefix, Region};
use rand_core::OsRng;
use serde_json::{json, Value};

use crate::support::app::TestApp;

/// A body the route accepts; admin handlers check the key before they read it.
fn accepted_body(route: &RouteSpec) -> Option<Value> {
    match (route.method.as_str(), route.path) {
        ("POST", "/admin/api-keys") => Some(json!({"name": "matrix", "permissions": ["query:read"]})),
        ("POST", "/v1/keys/verify") => Some(json!({"api_key": "not-a-key"})),
        ("PATCH", "/admin/api-keys/{id}") => Some(json!({"name": "matrix patched"})),
        ("POST", "/v1/keys/report") => Some(json!({"api_key": "not-a-key"})),
        ("POST", "/v1/secret-scanning/github") => Some(json!([])),
        _ => None,
    }
}

/// The route's path with every `{param}` replaced by `id`.
fn fill(path: &str, id: &str) -> String {
    path.split('/').map(|segment| if segment.starts_with('{') { id } else { segment }).collect::<Vec<_>>().join("/")
}

fn label(route: &RouteSpec) -> String {
    format!("{} {}", route.method, route.path)
}

/// One request to `route` at `path`: the status, the `WWW-Authenticate` header, the JSON answer.
async fn send(
    app: &TestApp,
    route: &RouteSpec,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::builder().method(route.method.clone()).uri(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let request = match accepted_body(route) {
        Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let (status, headers, bytes) = app.send(request).await;
    let challenge = headers.get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_route_in_the_table_answers_each_credential_as_its_access_says() {
    let app = TestApp::sqlite_local("auth_matrix").await;
    let mut scoped = Vec::new();
    for scope in AdminScope::ALL {
        scoped.push((scope, app.create_key(&[scope.as_str()]).await.0));
    }
    let (query_key, _) = app.create_key(&["query:read"]).await;
    let (star_key, _) = app.create_key(&["*"]).await;
    let data_plane = [("a query:read key", query_key), ("a * key", star_key)];
    let (revoked, revoked_id) = app.create_key(&["admin:*"]).await;
    let (status, _) = app.admin(Method::POST, &format!("/admin/api-keys/{revoked_id}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    let expiring = json!({"name": "expiring admin", "permissions": ["admin:*"], "expires_in_days": 1});
    let (status, created) = app.admin(Method::POST, "/admin/api-keys", Some(expiring)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let expired = created["api_key"].as_str().unwrap().to_owned();
    // Past that key's one day; every other key lives 90.
    app.clock.advance(2 * 86_400);
    let unknown = ApiKey::generate(&Prefix::default(), &Region::default(), 1, &mut OsRng);
    let admin = ApiKey::parse(app.admin_key.clone()).unwrap();
    let wrong_secret = ApiKey::assemble(
        &Prefix::new(admin.parts().prefix()).unwrap(),
        &Region::new(admin.parts().region()).unwrap(),
        admin.key_id(),
        &KeySecret::generate(&mut OsRng),
    );
    let unauthorized: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("Bearer with garbage", Some("Bearer not-a-key".into())),
        ("a good key under Basic", Some(format!("Basic {}", app.admin_key))),
        ("a good key without a scheme", Some(app.admin_key.clone())),
        ("an unknown key", Some(format!("Bearer {}", unknown.expose()))),
        ("a wrong secret", Some(format!("Bearer {}", wrong_secret.expose()))),
        ("a revoked admin key", Some(format!("Bearer {revoked}"))),
        ("an expired admin key", Some(format!("Bearer {expired}"))),
    ];

    let table = routes();
    for route in &table {
        let admin_access = matches!(route.access, Access::Admin(_));
        assert_eq!(admin_access, route.path.starts_with("/admin/"), "{}: access and path disagree", label(route));
    }
    let admin_routes: Vec<(&RouteSpec, AdminScope)> = table
        .iter()
        .filter_map(|route| match route.access {
            Access::Admin(scope) => Some((route, scope)),
            Access::Public | Access::EdgeSignature => None,
        })
        .collect();
    assert!(!admin_routes.is_empty());
    for (route, scope) in admin_routes {
        let label = label(route);
        // A key of its own for each route, so that a revoke does not change what a later route answers.
        let (_, target) = app.create_key(&["query:read"]).await;
        let path = fill(route.path, &target);
        let before = app.counts().await;
        let mut refused = 0;
        for (what, authorization) in &unauthorized {
            let (status, challenge, answer) = send(&app, route, &path, authorization.as_deref()).await;
            let refusal = (status, answer["error"]["code"].as_str());
            assert_eq!(refusal, (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{label} with {what}: {answer}");
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{label} with {what}");
            refused += 1;
        }
        // Data-plane keys (`*` included) and every other admin scope.
        let others = scoped.iter().filter(|(other, _)| *other != scope).map(|(other, key)| (other.as_str(), key));
        for (what, key) in data_plane.iter().map(|(what, key)| (*what, key)).chain(others) {
            let (status, _, answer) = send(&app, route, &path, Some(&format!("Bearer {key}"))).await;
            let refusal = (status, answer["error"]["code"].as_str());
            assert_eq!(refusal, (StatusCode::FORBIDDEN, Some("forbidden")), "{label} with {what}: {answer}");
            refused += 1;
        }
        let after = app.counts().await;
        assert_eq!(
            (after.keys, after.secrets, after.outbox),
            (before.keys, before.secrets, before.outbox),
            "{label}: a refused request changed something"
        );
        assert_eq!(after.audit - before.audit, refused, "{label}: each refusal is audited once");

        let right = &scoped.iter().find(|(granted, _)| *granted == scope).unwrap().1;
        let (status, _, answer) = send(&app, route, &path, Some(&format!("Bearer {right}"))).await;
        assert!(
            status.is_success(),
            "{label} with {}: {status} {answer} (does it need a body in `accepted_body`?)",
            scope.as_str()
        );
    }

    // Signed routes take no key in place of the signature: not even an admin key with every scope.
    let admin_bearer = Some(format!("Bearer {}", app.admin_key));
    for route in table.iter().filter(|route| route.access == Access::EdgeSignature) {
        let path = fill(route.path, &revoked_id);
        for (what, authorization) in unauthorized.iter().chain([&("the admin:* key", admin_bearer.clone())]) {
            let (status, _, answer) = send(&app, route, &path, authorization.as_deref()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{} with {what}: {answer}", label(route));
            assert!(answer["error"]["code"].is_string(), "{}: {answer}", label(route));
        }
    }

    // Public routes answer without a key (any key id fills a path parameter).
    for route in table.iter().filter(|route| route.access == Access::Public) {
        let (status, _, answer) = send(&app, route, &fill(route.path, &revoked_id), None).await;
        if route.path == "/v1/secret-scanning/github" {
            // GitHub's signature is its credential (leaks.rs sends signed reports).
            assert_eq!(answer["error"]["code"], "missing_signature", "{} unsigned: {status}", label(route));
            continue;
        }
        assert!(status.is_success(), "{} without a key: {status} {answer}", label(route));
    }
    app.cleanup().await;
}

#[tokio::test]
async fn the_route_table_matches_the_readme_and_the_openapi_document() {
    let table = routes();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("\n## Admin API\n").nth(1).expect("README has an Admin API section");
    let section = section.split("\n## ").next().unwrap();
    // Rows start with "| `METHOD /path?query` ...".
    let mut in_readme: Vec<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
        .filter(|route| route.contains(" /admin/"))
        .map(|route| route.split('?').next().unwrap().to_owned())
        .collect();
    let mut in_table: Vec<String> =
        table.iter().filter(|route| matches!(route.access, Access::Admin(_))).map(label).collect();
    in_readme.sort();
    in_table.sort();
    assert_eq!(in_table, in_readme, "the table's admin routes and the README's admin API table differ");
    for route in table.iter().filter(|route| !matches!(route.access, Access::Admin(_))) {
        assert!(section.contains(route.path), "{} is not in the README's admin API table", label(route));
    }

    let app = TestApp::sqlite_local("route_table").await;
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for route in &table {
        let operation = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
        assert!(operation.is_object(), "{} is not in the OpenAPI document", label(route));
        let security = match route.access {
            Access::Admin(scope) => json!([{"admin_key": [scope.as_str()]}]),
            // Public: an empty requirement list, "no credential", said explicitly.
            Access::Public => json!([]),
            Access::EdgeSignature => json!([{"edge_signature": []}]),
        };
        assert_eq!(operation["security"], security, "{}: the OpenAPI document declares other access", label(route));
    }
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|ops| ops.as_object().unwrap().len()).sum();
    assert_eq!(documented, table.len(), "the OpenAPI document has an operation the table lacks");
    app.cleanup().await;
}
