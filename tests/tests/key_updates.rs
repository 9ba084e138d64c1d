//! `PATCH /admin/api-keys/{id}` end to end: the control plane (SQLite, local KMS) replicating to the
//! built worker in workerd. A permission change reaches the edge within a second; a disabled key gets
//! exactly a revoked key's answer at the edge and at verify, and its open sockets close with 4403;
//! enabled again, it gets through; a revoked key cannot be patched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::edge::{through_edge, until_status, Edge};
use support::graphql_node::{NodeClient, NodeOrigin};
use support::origin::start_origin;
use support::{http, MUTATION, QUERY};

/// What the edge reports the same way for every request: everything but the date.
type Answer = (u16, HashMap<String, String>, String);

/// `PATCH /admin/api-keys/{id}` with the bootstrap admin key: status and JSON answer.
async fn patch(plane: &ControlPlane, id: &str, body: Value) -> (u16, Value) {
    let response = http()
        .patch(format!("{}/admin/api-keys/{id}", plane.url))
        .bearer_auth(&plane.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn verify(plane: &ControlPlane, key: &str) -> Value {
    let response =
        http().post(format!("{}/v1/keys/verify", plane.url)).json(&json!({"api_key": key})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

/// A request's answer without the headers that differ from one request to the next.
async fn answer(edge: &Edge, key: &str, body: &str) -> Answer {
    let (status, mut headers, body) = through_edge(edge, Some(key), body).await;
    headers.remove("date");
    (status, headers, body)
}

/// Waits until `body` sent with `key` is answered `status`, for at most `within`.
async fn until(edge: &Edge, key: &str, body: &str, status: u16, within: Duration) {
    let started = std::time::Instant::now();
    while through_edge(edge, Some(key), body).await.0 != status {
        assert!(started.elapsed() < within, "the edge did not answer {status} within {within:?}: {}", edge.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_reach_the_edge_and_a_disabled_key_answers_like_a_revoked_one() {
    let (origin, origin_url) = start_origin().await;
    // Refused keys are part of this test: the failed-attempts limit would turn later ones into 429s.
    let edge = Edge::start_with("key-updates", &origin_url, &[("FAILED_ATTEMPTS_PER_MINUTE", "0")]);
    let dir = std::env::temp_dir().join(format!("keygate-e2e-key-updates-{}", std::process::id()));
    let plane = ControlPlane::on_sqlite(&dir, &edge.url).await;

    let (key, id) = plane.create(json!({"name": "patched", "permissions": ["query:read"]})).await;
    until_status(&edge, &key, 200, Duration::from_secs(5)).await;
    assert_eq!(through_edge(&edge, Some(&key), MUTATION).await.0, 403);

    // Permissions, both ways, each within a second of the PATCH.
    let (status, body) = patch(&plane, &id, json!({"permissions": ["query:read", "mutation:write"]})).await;
    assert_eq!(status, 200, "{body}");
    until(&edge, &key, MUTATION, 200, Duration::from_secs(1)).await;
    let (status, _) = patch(&plane, &id, json!({"permissions": ["query:read"], "tier": "premium"})).await;
    assert_eq!(status, 200);
    until(&edge, &key, MUTATION, 403, Duration::from_secs(1)).await;
    assert_eq!(through_edge(&edge, Some(&key), QUERY).await.0, 200);

    // A revoked key's answers, to compare with.
    let (revoked, revoked_id) = plane.create(json!({"name": "revoked", "permissions": ["query:read"]})).await;
    until_status(&edge, &revoked, 200, Duration::from_secs(5)).await;
    plane.admin(&format!("/admin/api-keys/{revoked_id}/revoke"), json!({})).await;
    until_status(&edge, &revoked, 401, Duration::from_secs(1)).await;
    let revoked_answer = answer(&edge, &revoked, QUERY).await;
    let revoked_verdict = verify(&plane, &revoked).await;

    // Disabled: within a second, the revoked key's answer to the byte, and it never reaches the origin.
    let (status, body) = patch(&plane, &id, json!({"enabled": false})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("disabled")), "{body}");
    until_status(&edge, &key, 401, Duration::from_secs(1)).await;
    let reached = origin.reached();
    for request in [QUERY, MUTATION] {
        assert_eq!(answer(&edge, &key, request).await, revoked_answer, "a disabled key answers unlike a revoked one");
    }
    assert_eq!(origin.reached(), reached, "a disabled key's request reached the origin");
    assert_eq!(verify(&plane, &key).await, revoked_verdict);
    assert_eq!(revoked_verdict, json!({"valid": false, "code": "invalid_key"}));

    // Enabled again: through, with the settings it had.
    let (status, body) = patch(&plane, &id, json!({"enabled": true})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("active")), "{body}");
    until_status(&edge, &key, 200, Duration::from_secs(1)).await;
    let (_, headers, _) = through_edge(&edge, Some(&key), QUERY).await;
    assert_eq!(origin.seen.lock().unwrap().last().unwrap().headers["x-keygate-tier"], "premium", "{headers:?}");
    assert_eq!(through_edge(&edge, Some(&key), MUTATION).await.0, 403);
    assert_eq!(verify(&plane, &key).await["valid"], true);

    // A revoked key cannot be changed, nor switched back on.
    for body in [json!({"enabled": true}), json!({"permissions": ["*"]})] {
        let (status, refused) = patch(&plane, &revoked_id, body).await;
        assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("key_revoked")), "{refused}");
    }
    assert_eq!(answer(&edge, &revoked, QUERY).await, revoked_answer);
    drop(plane);
    drop(edge);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_keys_sockets_close_with_4403() {
    let origin = NodeOrigin::start();
    let edge = Edge::start_with("key-updates-ws", &origin.url, &[("FAILED_ATTEMPTS_PER_MINUTE", "0")]);
    let dir = std::env::temp_dir().join(format!("keygate-e2e-key-updates-ws-{}", std::process::id()));
    let plane = ControlPlane::on_sqlite(&dir, &edge.url).await;
    let (key, id) = plane.create(json!({"name": "socket", "permissions": ["subscription:read", "query:read"]})).await;
    until_status(&edge, &key, 200, Duration::from_secs(10)).await;

    let ws_url = format!("{}/graphql", edge.url.replacen("http", "ws", 1));
    let subscribe = |protocol: &str| {
        NodeClient::start(&json!({
            "url": ws_url, "protocol": protocol, "headers": {"X-API-Key": key}, "timeoutMs": 10_000,
            "operations": [{"id": "t", "query": "subscription Ticks { ticks(intervalMs: 20) }"}]
        }))
    };
    let mut clients: Vec<NodeClient> = ["graphql-transport-ws", "graphql-ws"].into_iter().map(subscribe).collect();
    for client in &mut clients {
        assert!(client.wait_for("next", Duration::from_secs(10)).is_some(), "{:?}", client.events());
    }
    let (status, body) = patch(&plane, &id, json!({"enabled": false})).await;
    assert_eq!(status, 200, "{body}");
    for client in &mut clients {
        let closed = client.wait_for("closed", Duration::from_secs(5)).expect("the socket of a disabled key closes");
        assert_eq!(closed["code"], 4403, "{closed}");
    }

    // Enabled again, the key opens a socket that streams.
    let (status, _) = patch(&plane, &id, json!({"enabled": true})).await;
    assert_eq!(status, 200);
    until_status(&edge, &key, 200, Duration::from_secs(1)).await;
    let mut client = subscribe("graphql-transport-ws");
    assert!(client.wait_for("next", Duration::from_secs(10)).is_some(), "{:?}", client.events());
    drop(client);
    drop(plane);
    drop(edge);
    let _ = std::fs::remove_dir_all(dir);
}
