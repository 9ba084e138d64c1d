//! `PATCH /admin/api-keys/{id}` on SQLite and on PostgreSQL: every field changes and is audited with
//! its old and new value, a disabled key is refused like a revoked one until it is enabled, every
//! rule create enforces refuses a bad value and writes nothing, a revoked or unknown key is refused,
//! and changes racing on one key never leave the edge a stale record. Also `keygate keys update`.

use std::process::Command;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use keygate_control_plane::clock::Clock;
use keygate_control_plane::store::{Change, Op};
use keygate_shared::{KeyId, KeyRecord};
use serde_json::{json, Value};

use crate::support::app::{TestApp, T0};

const DAY: i64 = 86_400;

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn patch(app: &TestApp, id: &str, body: Value) -> (StatusCode, Value) {
    app.admin(Method::PATCH, &format!("/admin/api-keys/{id}"), Some(body)).await
}

/// The newest audit entry about `id`.
async fn last_audit(app: &TestApp, id: &str) -> Value {
    let (status, log) = app.admin(Method::GET, &format!("/admin/audit-log?key_id={id}&limit=1"), None).await;
    assert_eq!(status, StatusCode::OK);
    log["entries"][0].clone()
}

/// The record the edge gets next for `id`: its newest outbox row.
async fn last_record(app: &TestApp, id: &str) -> (i64, KeyRecord, Value) {
    let row = app.store.outbox_after(0, 1_000).await.unwrap().into_iter().rev().find(|r| r.key_id.to_string() == id);
    let row = row.expect("an outbox record for the key");
    (row.seq, serde_json::from_str(&row.record).unwrap(), serde_json::from_str(&row.record).unwrap())
}

async fn every_field_changes_and_is_audited(app: &TestApp) {
    let create = json!({
        "name": "orders", "tier": "default", "permissions": ["query:read"],
        "owner": "team-a", "metadata": {"env": "test"}, "expires_in_days": 30
    });
    let (status, created) = app.admin(Method::POST, "/admin/api-keys", Some(create)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["api_key"].as_str().unwrap().to_owned();
    let id = created["api_key_id"].as_str().unwrap().to_owned();
    assert_eq!((created["enabled"].as_bool(), &created["disabled_at"]), (Some(true), &Value::Null));
    let (seq_created, _, wire) = last_record(app, &id).await;
    assert!(wire.get("disabled").is_none(), "an enabled key's record has no `disabled`: {wire}");

    app.clock.advance(10);
    let expires = T0 + 60 * DAY;
    let body = json!({
        "name": "orders v2", "tier": "premium", "permissions": ["query:read", "mutation:write"],
        "metadata": {"env": "prod"}, "owner": "team-b", "expires_at": rfc3339(expires), "enabled": false
    });
    let (status, updated) = patch(app, &id, body).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "orders v2");
    assert_eq!(updated["tier"], "premium");
    assert_eq!(updated["permissions"], json!(["query:read", "mutation:write"]));
    assert_eq!(updated["metadata"], json!({"env": "prod"}));
    assert_eq!(updated["owner"], "team-b");
    assert_eq!(updated["expires_at"], rfc3339(expires));
    assert_eq!((updated["status"].as_str(), updated["enabled"].as_bool()), (Some("disabled"), Some(false)));
    assert_eq!(updated["disabled_at"], rfc3339(T0 + 10));
    assert_eq!(updated["generation"], 1, "an update is no reroll");
    let (status, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    for field in ["name", "tier", "permissions", "metadata", "owner", "expires_at", "status", "enabled"] {
        assert_eq!(shown[field], updated[field], "GET shows what PATCH answered: {field}");
    }

    let entry = last_audit(app, &id).await;
    assert_eq!((entry["action"].as_str(), entry["outcome"].as_str()), (Some("key.update"), Some("ok")));
    let admin_id = keygate_shared::ParsedKey::parse(&app.admin_key).unwrap().key_id();
    assert_eq!(entry["actor"], format!("admin:{admin_id}"), "the actor other admin actions name");
    assert_eq!(
        entry["detail"]["changes"],
        json!({
            "name": {"old": "orders", "new": "orders v2"},
            "tier": {"old": "default", "new": "premium"},
            "permissions": {"old": ["query:read"], "new": ["query:read", "mutation:write"]},
            "metadata": {"old": {"env": "test"}, "new": {"env": "prod"}},
            "owner": {"old": "team-a", "new": "team-b"},
            "expires_at": {"old": T0 + 30 * DAY, "new": expires},
            "enabled": {"old": true, "new": false}
        })
    );
    assert!(app.service.audit_verify().await.unwrap().is_ok());

    // The edge's record carries it all, with a higher seq.
    let (seq_disabled, record, _) = last_record(app, &id).await;
    assert!(seq_disabled > seq_created);
    assert!(record.disabled && !record.revoked);
    assert_eq!(
        (record.tier.as_str(), record.owner.as_deref(), record.expires_at),
        ("premium", Some("team-b"), Some(expires))
    );
    assert_eq!(record.permissions.to_strings(), ["query:read", "mutation:write"]);
    assert_eq!(record.secrets.len(), 1);

    // Disabled: verify answers exactly as for a revoked key.
    let (revoked_key, revoked_id) = app.create_key(&["query:read"]).await;
    let (status, _) = app.admin(Method::POST, &format!("/admin/api-keys/{revoked_id}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.verify(&key).await, app.verify(&revoked_key).await);
    assert_eq!(app.verify(&key).await, json!({"valid": false, "code": "invalid_key"}));

    // Enabled again: it works, with its new settings, and the record says so.
    app.clock.advance(10);
    let (status, enabled) = patch(app, &id, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!((enabled["status"].as_str(), enabled["enabled"].as_bool()), (Some("active"), Some(true)));
    assert_eq!(enabled["disabled_at"], Value::Null);
    assert_eq!(
        app.verify(&key).await,
        json!({"valid": true, "code": "ok", "api_key_id": id, "tier": "premium", "permissions": ["query:read", "mutation:write"]})
    );
    let (seq_enabled, record, wire) = last_record(app, &id).await;
    assert!(seq_enabled > seq_disabled && !record.disabled && wire.get("disabled").is_none());
    assert_eq!(last_audit(app, &id).await["detail"]["changes"], json!({"enabled": {"old": false, "new": true}}));

    // null clears the owner and resets the metadata.
    let (status, cleared) = patch(app, &id, json!({"owner": null, "metadata": null})).await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!((&cleared["owner"], &cleared["metadata"]), (&Value::Null, &json!({})));
    assert_eq!(
        last_audit(app, &id).await["detail"]["changes"],
        json!({"owner": {"old": "team-b", "new": null}, "metadata": {"old": {"env": "prod"}, "new": {}}})
    );
    assert_eq!(last_record(app, &id).await.1.owner, None);

    // A change to what it already is: audited as unchanged, nothing replicated.
    let before = app.counts().await;
    let (status, same) = patch(app, &id, json!({"name": "orders v2", "enabled": true})).await;
    assert_eq!((status, same["name"].as_str()), (StatusCode::OK, Some("orders v2")));
    let after = app.counts().await;
    assert_eq!(
        (after.keys, after.secrets, after.outbox, after.audit),
        (before.keys, before.secrets, before.outbox, before.audit + 1)
    );
    assert_eq!(last_audit(app, &id).await["outcome"], "unchanged");

    // An expired key can be given a later expiry, and is active again.
    app.clock.advance(61 * DAY);
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(shown["status"], "expired");
    let (status, _) = patch(app, &id, json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(
        (shown["status"].as_str(), shown["enabled"].as_bool()),
        (Some("expired"), Some(false)),
        "expired wins over disabled"
    );
    let (status, revived) = patch(app, &id, json!({"expires_at": rfc3339(T0 + 100 * DAY), "enabled": true})).await;
    assert_eq!((status, revived["status"].as_str()), (StatusCode::OK, Some("active")), "{revived}");
    assert_eq!(app.verify(&key).await["valid"], true);

    // A disabled admin key opens nothing, like a revoked one; enabled, it works again.
    let (admin_key, admin_id) = app.create_key(&["admin:keys:read"]).await;
    let (status, _) = patch(app, &admin_id, json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = app.call(Method::GET, "/admin/api-keys", Some(&admin_key), None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (status, _) = patch(app, &admin_id, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.call(Method::GET, "/admin/api-keys", Some(&admin_key), None).await;
    assert_eq!(status, StatusCode::OK);

    // A change made from a stale read (another revision won meanwhile) is refused by the store.
    let id: KeyId = id.parse().unwrap();
    let mut stale = app.store.key(id).await.unwrap().unwrap();
    stale.name = "stale".into();
    stale.revision += 2;
    let audit = keygate_control_plane::audit::AuditDraft {
        at: app.clock.now(),
        actor: "test".into(),
        action: "key.update".into(),
        key_id: Some(id),
        outcome: "ok".into(),
        detail: "{}".into(),
    };
    let refused = app.store.apply(Change { audit, ops: vec![Op::Update(stale)], outbox: None }).await;
    assert!(matches!(refused, Err(keygate_control_plane::store::StoreError::Conflict)), "{refused:?}");
}

async fn bad_updates_write_nothing(app: &TestApp) {
    let (_, id) = app.create_key(&["query:read"]).await;
    let now = app.clock.now();
    let long = "x".repeat(201);
    let too_many: Vec<String> = (0..65).map(|n| format!("batch:{}", n + 1)).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "empty_update"),
        (json!({"name": ""}), "invalid_name"),
        (json!({"name": "   "}), "invalid_name"),
        (json!({"name": long}), "invalid_name"),
        (json!({"name": null}), "invalid_name"),
        (json!({"tier": "Premium!"}), "invalid_tier"),
        (json!({"tier": "x".repeat(33)}), "invalid_tier"),
        (json!({"tier": null}), "invalid_tier"),
        (json!({"permissions": ["NOT A PERMISSION"]}), "invalid_permission"),
        (json!({"permissions": ["batch:0"]}), "invalid_batch_size"),
        (json!({"permissions": ["admin:everything"]}), "unknown_admin_scope"),
        (json!({"permissions": too_many}), "invalid_permission"),
        (json!({"permissions": null}), "invalid_permission"),
        (json!({"metadata": [1, 2]}), "invalid_metadata"),
        (json!({"metadata": {"big": "x".repeat(9 * 1024)}}), "invalid_metadata"),
        (json!({"owner": long}), "invalid_owner"),
        (json!({"expires_at": "next tuesday"}), "invalid_expiry"),
        (json!({"expires_at": null}), "invalid_expiry"),
        (json!({"enabled": null}), "invalid_enabled"),
        (json!({"enabled": "no"}), "invalid_body"),
        (json!({"region": "eu_west_1"}), "invalid_body"),
        (json!({"name": "ok", "owner": long}), "invalid_owner"),
        (json!([{"name": "x"}]), "invalid_body"),
    ];
    for (body, code) in cases {
        let before = app.counts().await;
        let (status, answer) = patch(app, &id, body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
            "{body}: {answer}"
        );
        assert!(!answer["error"]["message"].as_str().unwrap_or_default().is_empty());
        assert_eq!(app.counts().await, before, "{body} wrote something");
    }
    // Every RFC 3339 time is taken (the document cannot say "in the future"): the longest lifetime
    // create allows is kept, a later one is clamped to it, and one not later than now expires the key.
    let created = chrono::DateTime::parse_from_rfc3339(
        patch(app, &id, json!({"name": "same"})).await.1["created_at"].as_str().unwrap(),
    )
    .unwrap()
    .timestamp();
    let (status, answer) = patch(app, &id, json!({"expires_at": rfc3339(created + 3_650 * DAY)})).await;
    assert_eq!(
        (status, answer["expires_at"].as_str()),
        (StatusCode::OK, Some(&*rfc3339(created + 3_650 * DAY))),
        "{answer}"
    );
    let (status, answer) = patch(app, &id, json!({"expires_at": rfc3339(created + 9_000 * DAY)})).await;
    assert_eq!(
        (status, answer["expires_at"].as_str()),
        (StatusCode::OK, Some(&*rfc3339(created + 3_650 * DAY))),
        "{answer}"
    );
    let (status, answer) = patch(app, &id, json!({"expires_at": rfc3339(now - DAY)})).await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("expired")), "{answer}");
    let (status, answer) = patch(app, &id, json!({"expires_at": rfc3339(now + DAY)})).await;
    assert_eq!((status, answer["status"].as_str()), (StatusCode::OK, Some("active")), "{answer}");

    let path = format!("/admin/api-keys/{id}");
    let before = app.counts().await;
    let request = |content_type: Option<&str>, body: &str| {
        let mut request = Request::builder()
            .method(Method::PATCH)
            .uri(&path)
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key));
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        request.body(Body::from(body.to_owned())).unwrap()
    };
    let (status, _, body) = app.send(request(Some("application/json"), "{\"name\":")).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_json")));
    let (status, _, body) = app.send(request(None, r#"{"name":"x"}"#)).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type"))
    );
    assert_eq!(app.counts().await, before);

    // Unknown ids, and a revoked key.
    for unknown in ["0000000000000000000001", "not-a-key-id"] {
        let (status, answer) = patch(app, unknown, json!({"name": "x"})).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("key_not_found")),
            "{answer}"
        );
    }
    let (status, _) = app.admin(Method::POST, &format!("/admin/api-keys/{id}/revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    let before = app.counts().await;
    for body in [json!({"name": "x"}), json!({"enabled": true}), json!({"enabled": false})] {
        let (status, answer) = patch(app, &id, body).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("key_revoked")), "{answer}");
    }
    assert_eq!(app.counts().await, before);
    assert_eq!(app.admin(Method::GET, &path, None).await.1["status"], "revoked");
}

/// Updates and rerolls racing on one key: each one that succeeds is replicated, the rest are told to
/// retry, and the edge's last record is the row as it ended, whatever won (none computed from a read
/// another change had overtaken).
async fn racing_changes(app: &TestApp) {
    let (_, id) = app.create_key(&["query:read"]).await;
    let key_path = format!("/admin/api-keys/{id}");
    let rotate_path = format!("{key_path}/rotate");
    let patches = [
        json!({"tier": "premium"}),
        json!({"owner": "team-race"}),
        json!({"permissions": ["query:read", "mutation:write"]}),
        json!({"enabled": false}),
        json!({"name": "raced"}),
    ];
    let updates = patches.into_iter().map(|body| app.admin(Method::PATCH, &key_path, Some(body)));
    let rotations = (0..3).map(|_| app.admin(Method::POST, &rotate_path, Some(json!({"grace_period_secs": 60}))));
    let (updated, rotated) =
        futures_util::future::join(futures_util::future::join_all(updates), futures_util::future::join_all(rotations))
            .await;
    let mut won = 0;
    for (status, body) in updated.iter().chain(&rotated) {
        assert!(*status == StatusCode::OK || body["error"]["code"] == "conflict", "{status} {body}");
        won += usize::from(*status == StatusCode::OK);
    }
    assert!(won >= 1);
    let row = app.store.key(id.parse().unwrap()).await.unwrap().unwrap();
    let records: Vec<KeyRecord> = app
        .store
        .outbox_after(0, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.key_id.to_string() == id)
        .map(|r| serde_json::from_str(&r.record).unwrap())
        .collect();
    assert_eq!(records.len(), 1 + won, "one record per change that won");
    let last = records.last().unwrap();
    assert_eq!(
        (last.tier.as_str(), last.owner.as_deref(), last.permissions.to_strings(), last.disabled),
        (row.tier.as_str(), row.owner.as_deref(), row.permissions.clone(), row.disabled_at.is_some()),
        "the edge's last record is not the row"
    );
    assert_eq!(last.secrets.len() as i64, row.generation, "every generation still in grace is replicated");
    assert!(app.service.audit_verify().await.unwrap().is_ok());
}

#[tokio::test]
async fn updates_on_sqlite() {
    let app = TestApp::sqlite_local("key_updates").await;
    every_field_changes_and_is_audited(&app).await;
    bad_updates_write_nothing(&app).await;
    racing_changes(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn updates_on_postgres() {
    let app = TestApp::postgres_local("key_updates", [5; 32]).await;
    every_field_changes_and_is_audited(&app).await;
    bad_updates_write_nothing(&app).await;
    racing_changes(&app).await;
    app.cleanup().await;
}

#[test]
fn an_operator_updates_a_key_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("keygate-cli-update-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .env("KEYGATE_DATABASE_URL", format!("sqlite://{}", dir.join("keygate.db").display()))
            .env("KEYGATE_KMS_MASTER_KEY_FILE", dir.join("master.key"))
            .env_remove("KEYGATE_KMS")
            .env_remove("KEYGATE_EDGE_URL")
            .args(args)
            .output()
            .unwrap()
    };
    let json = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "keygate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let created = json(&["keys", "create", "--name", "cli", "-p", "query:read", "--owner", "team-a"]);
    let id = created["api_key_id"].as_str().unwrap().to_owned();

    let updated = json(&[
        "keys",
        "update",
        &id,
        "--name",
        "cli v2",
        "--tier",
        "premium",
        "-p",
        "query:read",
        "-p",
        "mutation:write",
        "--metadata",
        r#"{"env":"prod"}"#,
        "--clear-owner",
        "--expires-at",
        "2030-01-01T00:00:00Z",
        "--disable",
    ]);
    assert_eq!(updated["name"], "cli v2");
    assert_eq!(updated["tier"], "premium");
    assert_eq!(updated["permissions"], json!(["query:read", "mutation:write"]));
    assert_eq!((&updated["metadata"], &updated["owner"]), (&json!({"env": "prod"}), &Value::Null));
    assert_eq!(updated["expires_at"], "2030-01-01T00:00:00Z");
    assert_eq!((updated["status"].as_str(), updated["enabled"].as_bool()), (Some("disabled"), Some(false)));
    let enabled = json(&["keys", "update", &id, "--enable", "--owner", "team-b"]);
    assert_eq!((enabled["status"].as_str(), enabled["owner"].as_str()), (Some("active"), Some("team-b")));
    assert_eq!(json(&["keys", "show", &id])["enabled"], true);

    let refusals: [(&[&str], &str); 6] = [
        (&["keys", "update", &id], "empty_update"),
        (&["keys", "update", &id, "--tier", "Bad Tier"], "invalid_tier"),
        (&["keys", "update", &id, "--expires-at", "tomorrow"], "invalid_expiry"),
        (&["keys", "update", &id, "--metadata", "[1]"], "JSON object"),
        (&["keys", "update", &id, "--disable", "--enable"], "cannot be used with"),
        (&["keys", "update", "nonsense", "--disable"], "not an api_key_id"),
    ];
    for (args, message) in refusals {
        let out = run(args);
        assert!(!out.status.success(), "keygate {args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "keygate {args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "keygate {args:?} printed {}", String::from_utf8_lossy(&out.stdout));
    }
    assert_eq!(json(&["keys", "show", &id])["tier"], "premium", "a refused update changed nothing");
    let revoked = json(&["keys", "revoke", &id]);
    assert_eq!(revoked["status"], "revoked");
    let out = run(&["keys", "update", &id, "--name", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_revoked"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_openapi_document_gives_patch_every_answer_and_no_required_field() {
    let app = TestApp::sqlite_local("key_updates_openapi").await;
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let operation = &doc["paths"]["/admin/api-keys/{id}"]["patch"];
    assert_eq!(operation["security"], json!([{"admin_key": ["admin:keys:write"]}]));
    let responses = operation["responses"].as_object().unwrap();
    let mut statuses: Vec<&str> = responses.keys().map(String::as_str).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["200", "400", "401", "403", "404", "409", "413", "415", "422", "429", "503"]);
    for (status, response) in responses {
        let schema = &response["content"]["application/json"]["schema"]["$ref"];
        let expected = if status == "200" { "KeyResponse" } else { "ErrorBody" };
        assert_eq!(schema, &json!(format!("#/components/schemas/{expected}")), "{status}: {response}");
    }
    let body = &doc["components"]["schemas"]["UpdateKeyRequest"];
    assert!(body["required"].as_array().is_none_or(|r| r.is_empty()), "every field is optional: {body}");
    let mut fields: Vec<&str> = body["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["enabled", "expires_at", "metadata", "name", "owner", "permissions", "tier"]);
    assert_eq!(body["additionalProperties"], false, "unknown fields are refused: {body}");
    assert_eq!(doc["components"]["schemas"]["KeyResponse"]["properties"]["enabled"]["type"], "boolean");
    app.cleanup().await;
}
