//! The key lifecycle through the admin API, the same checks on SQLite + local KMS and on PostgreSQL +
//! the aws provider: create → verify → reroll (both secrets in grace, the old one refused after) →
//! revoke → verify fails → reveal → audit chain intact; expiry and `should_rotate` on the clock.

use axum::http::{Method, StatusCode};
use keygate_shared::KeyRecord;
use serde_json::{json, Value};

use crate::support::app::{TestApp, T0};

const DAY: i64 = 86_400;

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn lifecycle(app: &TestApp) {
    let create = json!({
        "name": "orders service", "tier": "premium", "permissions": ["query:read", "batch:5"],
        "expires_in_days": 30, "owner": "team-a", "metadata": {"env": "test"}
    });
    let (status, created) = app.admin(Method::POST, "/admin/api-keys", Some(create)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["api_key"].as_str().unwrap().to_owned();
    let id = created["api_key_id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("fraiseql_us_east_1_") && key.contains(&id));
    assert_eq!(created["created_at"], rfc3339(T0));
    assert_eq!(created["expires_at"], rfc3339(T0 + 30 * DAY));
    assert_eq!((created["status"].as_str(), created["generation"].as_i64()), (Some("active"), Some(1)));
    assert_eq!(created["metadata"], json!({"env": "test"}));

    let verdict = app.verify(&key).await;
    assert_eq!(
        verdict,
        json!({"valid": true, "code": "ok", "api_key_id": id, "tier": "premium", "permissions": ["query:read", "batch:5"]})
    );

    // Reads never show a secret or a hash of one.
    let (status, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = app.admin(Method::GET, "/admin/api-keys?limit=10", None).await;
    assert!(listed["items"].as_array().unwrap().iter().any(|k| k["api_key_id"] == id.as_str()));
    let hash = keygate_shared::sha256_hex(&key);
    for text in [shown.to_string(), listed.to_string()] {
        assert!(!text.contains(&key[key.len() - 49..]) && !text.contains(&hash) && !text.contains("hash"), "{text}");
    }
    assert_eq!(
        shown["generations"],
        json!([{"generation": 1, "status": "current", "created_at": rfc3339(T0),
        "not_after": null, "kms_key_id": shown["generations"][0]["kms_key_id"], "data_key_version": 1}])
    );

    // Reroll with an hour of grace: both work until it ends, then only the new one.
    app.clock.advance(100);
    let (status, rotated) = app
        .admin(Method::POST, &format!("/admin/api-keys/{id}/rotate"), Some(json!({"grace_period_secs": 3600})))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(rotated["generation"], 2);
    assert_eq!(rotated["previous_valid_until"], rfc3339(T0 + 100 + 3600));
    assert_eq!(app.verify(&key).await["valid"], true);
    assert_eq!(app.verify(&new_key).await["valid"], true);
    app.clock.advance(3599);
    assert_eq!(app.verify(&key).await["valid"], true, "old secret refused before its grace ended");
    app.clock.advance(1);
    assert_eq!(app.verify(&key).await, json!({"valid": false, "code": "invalid_key"}));
    assert_eq!(app.verify(&new_key).await["valid"], true);
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    let statuses: Vec<&str> =
        shown["generations"].as_array().unwrap().iter().map(|g| g["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["current", "retired"]);

    // Revoke: immediate.
    let (status, revoked) =
        app.admin(Method::POST, &format!("/admin/api-keys/{id}/revoke"), Some(json!({"reason": "leaked"}))).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!((revoked["status"].as_str(), revoked["revoked_reason"].as_str()), (Some("revoked"), Some("leaked")));
    assert_eq!(app.verify(&new_key).await, json!({"valid": false, "code": "invalid_key"}));
    let (status, again) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/revoke"), None).await;
    assert_eq!((status, &again["revoked_at"]), (StatusCode::OK, &revoked["revoked_at"]));
    let (status, refused) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/rotate"), None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("key_revoked")));

    // Reveal returns the current key (through KMS), and is audited.
    let (status, revealed) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/reveal"), None).await;
    assert_eq!(status, StatusCode::OK, "{revealed}");
    assert_eq!(revealed["api_key"], new_key.as_str());

    let (status, log) = app.admin(Method::GET, &format!("/admin/audit-log?key_id={id}&limit=10"), None).await;
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<(&str, &str)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("key.reveal", "ok"),
            ("key.revoke", "already_revoked"),
            ("key.revoke", "ok"),
            ("key.rotate", "ok"),
            ("key.create", "ok")
        ]
    );
    assert!(!log.to_string().contains(&new_key[new_key.len() - 49..]));
    assert!(app.service.audit_verify().await.unwrap().is_ok());

    // The outbox holds the edge's view after each change, in order; the last one is the revocation.
    let outbox: Vec<_> =
        app.store.outbox_after(0, 100).await.unwrap().into_iter().filter(|r| r.key_id.to_string() == id).collect();
    assert_eq!(outbox.len(), 3);
    assert!(outbox.windows(2).all(|w| w[0].seq < w[1].seq));
    let records: Vec<KeyRecord> = outbox.iter().map(|r| serde_json::from_str(&r.record).unwrap()).collect();
    assert_eq!(records[0].secrets.len(), 1);
    assert_eq!(records[1].secrets.len(), 2, "the rotation record carries the grace secret");
    assert_eq!(records[1].secrets[1].not_after, Some(T0 + 100 + 3600));
    assert!(!records[1].revoked && records[2].revoked);
    assert_eq!(records[2].tier, "premium");
}

async fn expiry(app: &TestApp) {
    let (status, created) = app
        .admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"name": "short", "permissions": ["*"], "expires_in_days": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (key, id) =
        (created["api_key"].as_str().unwrap().to_owned(), created["api_key_id"].as_str().unwrap().to_owned());
    assert_eq!(created["should_rotate"], false);
    app.clock.advance(8 * DAY - 1);
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(shown["should_rotate"], false);
    app.clock.advance(1);
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(shown["should_rotate"], true, "80% of a 10-day lifetime has passed");

    // A reroll's grace never outlives the key.
    let (status, rotated) = app
        .admin(Method::POST, &format!("/admin/api-keys/{id}/rotate"), Some(json!({"grace_period_secs": 5 * DAY})))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["previous_valid_until"], created["expires_at"]);
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();

    app.clock.advance(2 * DAY - 1);
    assert_eq!(app.verify(&new_key).await["valid"], true);
    assert_eq!(app.verify(&key).await["valid"], true);
    app.clock.advance(1);
    for presented in [&key, &new_key] {
        assert_eq!(app.verify(presented).await, json!({"valid": false, "code": "invalid_key"}));
    }
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(shown["status"], "expired");
    let (status, refused) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/rotate"), None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("key_expired")));
}

#[tokio::test]
async fn lifecycle_on_sqlite_with_the_local_kms() {
    let app = TestApp::sqlite_local("lifecycle").await;
    lifecycle(&app).await;
    expiry(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn lifecycle_on_postgres_with_the_aws_kms() {
    let app = TestApp::postgres_aws("lifecycle").await;
    lifecycle(&app).await;
    expiry(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn lifecycle_on_postgres_with_the_aws_kms_behind_a_data_key_cache() {
    let limits = keygate_control_plane::kms::cache::CacheLimits { max_uses: 4, max_age_secs: 300 };
    let app = TestApp::postgres_aws_cached("lifecycle_cached", limits).await;
    lifecycle(&app).await;
    expiry(&app).await;
    // Secrets share data keys (at most 4 each) and still open one by one, also after a rewrap.
    let mut keys = vec![];
    for _ in 0..9 {
        keys.push(app.create_key(&["query:read"]).await);
    }
    let secrets = app.store.rewrap_pending(i64::MAX, 1000).await.unwrap();
    let mut shared: Vec<&str> = secrets.iter().map(|s| s.data_key_id.as_deref().unwrap()).collect();
    shared.sort_unstable();
    let uses = shared.chunk_by(|a, b| a == b).map(<[&str]>::len).max().unwrap();
    assert!(uses > 1 && uses <= 4, "{uses}");
    let (status, rewrapped) = app.admin(Method::POST, "/admin/kms/rewrap", None).await;
    assert_eq!(status, StatusCode::OK, "{rewrapped}");
    // One ReEncrypt per data key: rows that share a data key still share one wrapped blob.
    let after = app.store.rewrap_pending(i64::MAX, 1000).await.unwrap();
    for secret in &after {
        let twin = after.iter().find(|s| s.data_key_id == secret.data_key_id).unwrap();
        assert_eq!(twin.wrapped_data_key, secret.wrapped_data_key);
    }
    let before_blobs: Vec<&Vec<u8>> = secrets.iter().map(|s| &s.wrapped_data_key).collect();
    assert!(after.iter().all(|s| !before_blobs.contains(&&s.wrapped_data_key)), "every data key was rewrapped");
    for (key, id) in &keys {
        let (status, revealed) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/reveal"), None).await;
        assert_eq!((status, revealed["api_key"].as_str()), (StatusCode::OK, Some(key.as_str())));
    }
    app.cleanup().await;
}

/// Rotations racing on one key: each one that succeeds moves the generation; the rest are told to retry;
/// the outbox holds exactly one record per success, in the order they committed.
async fn racing_rotations(app: &TestApp) {
    let (_, id) = app.create_key(&["query:read"]).await;
    let path = format!("/admin/api-keys/{id}/rotate");
    let calls = (0..8).map(|_| app.admin(Method::POST, &path, Some(json!({"grace_period_secs": 60}))));
    let results: Vec<(StatusCode, Value)> = futures_util::future::join_all(calls).await;
    let won = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert!(won >= 1);
    for (status, body) in &results {
        assert!(*status == StatusCode::OK || body["error"]["code"] == "conflict", "{status} {body}");
    }
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(shown["generation"], 1 + won as i64);
    let records: Vec<KeyRecord> = app
        .store
        .outbox_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.key_id.to_string() == id)
        .map(|r| serde_json::from_str(&r.record).unwrap())
        .collect();
    assert_eq!(records.len(), 1 + won);
    assert_eq!(records.last().unwrap().secrets.len(), 1 + won, "each generation still in grace is replicated");
}

#[tokio::test]
async fn racing_rotations_on_sqlite() {
    let app = TestApp::sqlite_local("race").await;
    racing_rotations(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn racing_rotations_on_postgres() {
    let app = TestApp::postgres_local("race", [7; 32]).await;
    racing_rotations(&app).await;
    app.cleanup().await;
}

/// Many writes at once are committed in groups: every caller gets its own answer, the audit chain
/// stays whole and the outbox holds one record per key, in commit order.
async fn concurrent_creates(app: &TestApp) {
    let before = app.counts().await;
    let creates = (0..200).map(|i| {
        app.admin(
            Method::POST,
            "/admin/api-keys",
            Some(json!({"name": format!("burst {i}"), "permissions": ["query:read"]})),
        )
    });
    let answers: Vec<(StatusCode, Value)> = futures_util::future::join_all(creates).await;
    let mut ids: Vec<&str> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::CREATED, "{body}");
            body["api_key_id"].as_str().unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    let after = app.counts().await;
    assert_eq!((after.keys - before.keys, after.outbox - before.outbox, after.audit - before.audit), (200, 200, 200));
    assert_eq!(app.service.audit_verify().await.unwrap(), Ok(after.audit));
    let outbox = app.store.outbox_after(0, 10_000).await.unwrap();
    assert!(outbox.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn concurrent_creates_on_sqlite() {
    let app = TestApp::sqlite_local("burst").await;
    concurrent_creates(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn concurrent_creates_on_postgres() {
    let app = TestApp::postgres_local("burst", [9; 32]).await;
    concurrent_creates(&app).await;
    app.cleanup().await;
}

/// Key checks reuse a key's row for `verify_cache_ms`: this process's own revocation applies at once,
/// another process's (same database) once that time has passed, never later.
#[tokio::test]
async fn a_revocation_by_another_process_reaches_verify_within_the_cache_time() {
    use std::sync::Arc;

    use keygate_control_plane::kms::local::LocalKms;
    use keygate_control_plane::service::{Actor, Service, Settings};

    let app = TestApp::sqlite_local("verify_cache").await;
    let (key, id) = app.create_key(&["query:read"]).await;
    let id: keygate_shared::KeyId = id.parse().unwrap();
    let other = Service::new(
        app.store.clone(),
        Arc::new(LocalKms::open_or_create(&app.dir.join("master.key")).unwrap()),
        app.clock.clone(),
        Box::new(rand_core::OsRng),
        Settings::default(),
    );
    assert_eq!(app.verify(&key).await["valid"], true, "read and kept");

    other.revoke(&Actor::Cli, id, None).await.unwrap();
    assert_eq!(other.verify(&key).await.unwrap(), keygate_control_plane::service::Verdict::Invalid, "at once here");
    assert_eq!(app.verify(&key).await["valid"], true, "the other process still holds its recent read");
    app.clock.advance_millis(Settings::default().verify_cache_ms);
    assert_eq!(app.verify(&key).await["valid"], false, "and reads again once its time is up");

    // Its own changes apply at once.
    let (second, second_id) = app.create_key(&["query:read"]).await;
    assert_eq!(app.verify(&second).await["valid"], true);
    let (status, _) = app.admin(Method::POST, &format!("/admin/api-keys/{second_id}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.verify(&second).await["valid"], false);
    app.cleanup().await;
}
