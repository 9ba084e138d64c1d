//! The origin's signing keys at the control plane: made and sealed under KMS, rotated through the API
//! and the CLI, published as a JWKS (pending, active, retired, then gone), never shown in private.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::support::app::TestApp;

async fn jwks(app: &TestApp) -> (Value, String) {
    let request = Request::builder().uri("/.well-known/jwks.json").body(Body::empty()).unwrap();
    let (status, headers, body) = app.send(request).await;
    assert_eq!(status, StatusCode::OK);
    let cache = headers.get(header::CACHE_CONTROL).unwrap().to_str().unwrap().to_owned();
    (serde_json::from_slice(&body).unwrap(), cache)
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|key| key["kid"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_rotation_is_published_before_it_signs_and_a_retired_key_stays_until_its_tokens_expire() {
    let app = TestApp::sqlite_local("origin_keys_life").await;
    let (empty, cache) = jwks(&app).await;
    assert_eq!(empty, json!({"keys": []}));
    assert_eq!(cache, "public, max-age=60");

    // The first key signs at once: nothing else could.
    let (status, first) = app.admin(Method::POST, "/admin/origin-keys/rotate", None).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!((first["version"].as_i64(), first["status"].as_str()), (Some(1), Some("active")));
    let first_kid = first["kid"].as_str().unwrap().to_owned();
    let (published, _) = jwks(&app).await;
    let key = &published["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str(), key["alg"].as_str(), key["use"].as_str(), key["kid"].as_str()),
        (Some("EC"), Some("P-256"), Some("ES256"), Some("sig"), Some(first_kid.as_str()))
    );
    assert_eq!(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap().len(), 32);
    assert_eq!(URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap().len(), 32);
    assert!(key.get("d").is_none(), "the JWKS never carries a private part");

    // The next one is published at once and signs after the publish lead.
    let (status, second) = app.admin(Method::POST, "/admin/origin-keys/rotate", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!((second["version"].as_i64(), second["status"].as_str()), (Some(2), Some("pending")));
    let second_kid = second["kid"].as_str().unwrap().to_owned();
    assert_eq!(kids(&jwks(&app).await.0), [first_kid.clone(), second_kid.clone()]);
    let statuses = |listed: &Value| -> Vec<String> {
        listed["keys"].as_array().unwrap().iter().map(|k| k["status"].as_str().unwrap().to_owned()).collect()
    };
    let (_, listed) = app.admin(Method::GET, "/admin/origin-keys", None).await;
    assert_eq!(statuses(&listed), ["active", "pending"]);

    app.clock.advance(60);
    let (_, listed) = app.admin(Method::GET, "/admin/origin-keys", None).await;
    assert_eq!(statuses(&listed), ["retired", "active"]);
    assert_eq!(kids(&jwks(&app).await.0), [first_kid.clone(), second_kid.clone()], "a retired key stays published");

    // Token lifetime (60 s) + an isolate's longest reuse (10 s) + clock slack (60 s).
    app.clock.advance(129);
    assert_eq!(kids(&jwks(&app).await.0).len(), 2);
    app.clock.advance(1);
    assert_eq!(kids(&jwks(&app).await.0), std::slice::from_ref(&second_kid));
    let (_, listed) = app.admin(Method::GET, "/admin/origin-keys", None).await;
    assert_eq!(statuses(&listed), ["expired", "active"]);

    // An emergency rotation signs at once.
    let (status, third) =
        app.admin(Method::POST, "/admin/origin-keys/rotate", Some(json!({"activate_in_secs": 0}))).await;
    assert_eq!((status, third["status"].as_str()), (StatusCode::CREATED, Some("active")));

    let (_, audit) = app.admin(Method::GET, "/admin/audit-log?limit=10", None).await;
    let rotations = audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "origin_key.rotate").count();
    assert_eq!(rotations, 3);
    app.cleanup().await;
}

#[tokio::test]
async fn bad_rotation_requests_are_refused_and_change_nothing() {
    let app = TestApp::sqlite_local("origin_keys_bad").await;
    for (body, code) in [
        (json!({"activate_in_secs": -1}), "invalid_activation"),
        (json!({"activate_in_secs": 604_801}), "invalid_activation"),
        (json!({"activate_in_secs": "soon"}), "invalid_body"),
        (json!({"kid": "mine"}), "invalid_body"),
    ] {
        let (status, answer) = app.admin(Method::POST, "/admin/origin-keys/rotate", Some(body.clone())).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
            "{body}"
        );
    }
    assert!(app.store.origin_keys().await.unwrap().is_empty());
    app.cleanup().await;
}

#[tokio::test]
async fn the_private_half_is_sealed_under_kms_and_bound_to_its_kid() {
    let app = TestApp::sqlite_local("origin_keys_sealed").await;
    // Two processes starting at once: one makes the first key, the other finds it (or loses the race
    // to insert version 1) and carries on.
    let (first, second) = tokio::join!(app.service.ensure_origin_key(), app.service.ensure_origin_key());
    let made = match (first.unwrap(), second.unwrap()) {
        (Some(made), None) | (None, Some(made)) => made,
        other => panic!("exactly one start-up makes the first key: {other:?}"),
    };
    assert!(app.service.ensure_origin_key().await.unwrap().is_none(), "only when there is none");
    let row = app.store.origin_keys().await.unwrap().remove(0);
    assert_eq!(row.kid, made.row.kid);
    let key = app.service.origin_keys().open(&row).await.unwrap();
    let scalar = key.to_scalar();
    assert!(!row.ciphertext.windows(8).any(|w| scalar.windows(8).any(|s| s == w)), "the scalar is not stored in clear");
    assert!(!row.public_jwk.contains(&URL_SAFE_NO_PAD.encode(*scalar)));
    // The data key's context names the kid: the same ciphertext under another kid does not open.
    let mut moved = row.clone();
    moved.kid = keygate_shared::KeyId::from(1u128);
    assert!(app.service.origin_keys().open(&moved).await.is_err());
    let printed = format!("{row:?} {key:?} {made:?}");
    assert!(!printed.contains(&hex::encode(*scalar)) && !printed.contains(&URL_SAFE_NO_PAD.encode(*scalar)));
    app.cleanup().await;
}
