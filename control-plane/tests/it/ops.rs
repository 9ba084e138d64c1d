//! The operations routes: the OpenAPI document names every route, and metrics count what happened.

use axum::http::{Method, StatusCode};
use keygate_control_plane::api::{routes, Access};

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

/// Every operation in the route table lists the errors the layers around its handler give, each with the
/// error schema, and its security requirement: what a generated client needs to model them.
#[tokio::test]
async fn every_operation_documents_its_errors_and_its_security() {
    let app = TestApp::sqlite_local("openapi_errors").await;
    let (_, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    // A PATCH must name a field, and may name them all (utoipa-gen 5.5 writes `min_properties` as
    // `maxProperties`; the document's writer sets it right).
    let update = &doc["components"]["schemas"]["UpdateKeyRequest"];
    assert_eq!((update["minProperties"].as_u64(), update.get("maxProperties")), (Some(1), None), "{update}");
    for route in routes() {
        let name = format!("{} {}", route.method, route.path);
        let operation = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
        assert!(operation.is_object(), "{name} is not documented");
        let responses = operation["responses"].as_object().unwrap();
        let mut expected = vec!["429"];
        match route.access {
            Access::Admin(scope) => {
                assert_eq!(operation["security"], serde_json::json!([{"admin_key": [scope.as_str()]}]), "{name}");
                assert!(operation["description"].as_str().unwrap().contains(scope.as_str()), "{name}");
                expected.extend(["401", "403", "503"]);
            }
            Access::EdgeSignature => {
                assert_eq!(operation["security"], serde_json::json!([{"edge_signature": []}]), "{name}");
                expected.push("401");
            }
            Access::Public => assert_eq!(operation["security"], serde_json::json!([]), "{name}"),
        }
        if route.path.contains("{id}") {
            expected.push("404");
        }
        if operation.get("requestBody").is_some() {
            expected.extend(["400", "413", "415", "422"]);
        }
        for status in expected {
            assert!(responses.contains_key(status), "{name} does not document {status}: {:?}", responses.keys());
        }
        for (status, response) in responses.iter().filter(|(status, _)| !status.starts_with('2')) {
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/ErrorBody", "{name} {status}");
        }
    }
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

/// What the document allows, the server takes: `null` for an optional body, and a whole number
/// written with a fraction (`60.0`, an integer to JSON Schema) for an integer field.
#[tokio::test]
async fn bodies_the_document_allows_are_taken() {
    let app = TestApp::sqlite_local("openapi_bodies").await;
    let (_, id) = app.create_key(&["query:read"]).await;
    let rotate = format!("/admin/api-keys/{id}/rotate");
    let (status, body) = app.admin(Method::POST, &rotate, Some(serde_json::json!({"grace_period_secs": 60.0}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.admin(Method::POST, &rotate, Some(serde_json::json!({"grace_period_secs": 60.5}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body")));
    let (status, body) =
        app.admin(Method::POST, &format!("/admin/api-keys/{id}/revoke"), Some(serde_json::Value::Null)).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("revoked")), "{body}");
    app.cleanup().await;
}
