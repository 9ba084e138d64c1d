//! The operations routes: the OpenAPI document names every route, and metrics count what happened.

use axum::http::{Method, StatusCode};

use crate::support::app::TestApp;

#[tokio::test]
async fn openapi_documents_every_route() {
    let app = TestApp::sqlite_local("openapi").await;
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |m| format!("{} {path}", m.to_uppercase())))
        .collect();
    for route in [
        "POST /admin/api-keys",
        "GET /admin/api-keys",
        "GET /admin/api-keys/{id}",
        "POST /admin/api-keys/{id}/rotate",
        "POST /admin/api-keys/{id}/revoke",
        "POST /admin/api-keys/{id}/reveal",
        "GET /admin/audit-log",
        "POST /admin/kms/rewrap",
        "POST /v1/keys/verify",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
    ] {
        assert!(documented.iter().any(|d| d == route), "{route} is not in the OpenAPI document: {documented:?}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["admin_key"]["scheme"], "bearer");
    app.cleanup().await;
}

#[tokio::test]
async fn metrics_count_requests_and_keys() {
    let app = TestApp::sqlite_local("metrics").await;
    app.create_key(&["query:read"]).await;
    app.call(Method::GET, "/admin/api-keys", None, None).await;
    let request = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap();
    let (status, headers, body) = app.send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[axum::http::header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("keygate_keys_created_total"), "{text}");
    assert!(text.contains(r#"keygate_http_requests_total{route="/admin/api-keys",status="401"}"#), "{text}");
    assert!(text.contains("keygate_admin_refusals_total"));
    app.cleanup().await;
}
