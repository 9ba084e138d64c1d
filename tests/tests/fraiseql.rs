//! A real FraiseQL server behind keygate, trusting it through nothing but its own standard JWT
//! configuration (`[auth]` with keygate's JWKS, the audience and ES256): a read key gets rows through
//! the edge; FraiseQL refuses a direct call without a token, a forged token, a token signed by a key
//! not in the JWKS, and an expired one; and after `keygate origin-keys rotate` requests keep working
//! with no restart of FraiseQL or the edge. Apollo persisted queries work through the edge to
//! FraiseQL's own APQ: the edge remembers the document, FraiseQL its copy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::Kms;
use keygate_control_plane::origin_keys::OriginKeyPolicy;
use keygate_control_plane::service::Settings;
use keygate_control_plane::store::{SqlStore, Store};
use keygate_shared::jwt::{Claims, TokenSettings, TokenSigner, JTI_LEN};
use keygate_shared::{sha256_hex, KeyRecord, OriginSigningKey, PermissionSet};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::edge::{through_edge, Edge, EdgeOptions};
use support::fraiseql::FraiseQl;

const WIDGETS: &str = r#"{"query":"{ widgets { id name } }"}"#;
const WIDGETS_DOCUMENT: &str = "{ widgets { id name } }";

/// An Apollo persisted query for [`WIDGETS_DOCUMENT`]: its hash, and the document when `with_document`.
fn persisted_widgets(with_document: bool) -> String {
    let mut body =
        json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256_hex(WIDGETS_DOCUMENT)}}});
    if with_document {
        body["query"] = WIDGETS_DOCUMENT.into();
    }
    body.to_string()
}

/// The names FraiseQL returned, if it returned rows.
fn widget_names(body: &str) -> Option<Vec<String>> {
    let answer: Value = serde_json::from_str(body).ok()?;
    let rows = answer["data"]["widgets"].as_array()?;
    let mut names: Vec<String> = rows.iter().filter_map(|row| row["name"].as_str().map(str::to_owned)).collect();
    names.sort();
    Some(names)
}

/// A token with the contract's claims for `sub`, signed by `signer`, issued at `iat`.
fn token(signer: &TokenSigner, iat: i64, ttl_secs: i64) -> String {
    let record = KeyRecord {
        key_id: keygate_shared::KeyId::from(42u128),
        seq: 1,
        tier: "default".into(),
        permissions: PermissionSet::parse(["query:read"]).unwrap(),
        expires_at: None,
        revoked: false,
        disabled: false,
        secrets: Vec::new(),
        owner: None,
    };
    let settings = TokenSettings { ttl_secs, ..TokenSettings::default() };
    let mut jti = [0u8; JTI_LEN];
    OsRng.fill_bytes(&mut jti);
    signer.sign(&Claims::for_record(&record, &settings, iat, &jti))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraiseql_trusts_keygate_through_its_jwks_and_refuses_everything_else() {
    let dir = std::env::temp_dir().join(format!("keygate-e2e-fraiseql-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The control plane first (FraiseQL needs its JWKS URL), then FraiseQL, then the edge in front.
    // The edge's URL is only known once it runs: the replicator is pointed at a listener reserved now.
    let edge_port = support::free_port();
    let edge_url = format!("http://127.0.0.1:{edge_port}");
    let url = format!("sqlite://{}", dir.join("keygate.db").display());
    let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&url).await.unwrap());
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open_or_create(&dir.join("master.key")).unwrap());
    let settings = Settings {
        // FraiseQL keeps the JWKS for 300 s and fetches it again for an unknown kid, but at most every
        // 30 s: a lead above that means it has the new key, or may fetch it, when the first token
        // signed with it arrives. Its defaults are left as they are.
        origin_keys: OriginKeyPolicy { publish_lead_secs: 32, ..OriginKeyPolicy::default() },
        ..Settings::default()
    };
    let plane = ControlPlane::start_with(store.clone(), kms, &edge_url, settings).await;
    let jwks_uri = format!("{}/.well-known/jwks.json", plane.url);
    let fraiseql = FraiseQl::start(&jwks_uri, "graphql", None);
    let edge = Edge::start_with_options(
        "fraiseql",
        &fraiseql.url,
        // The first pushes wait for the edge (the replicator backs off while it starts): the 401s
        // until the key arrives must not lock this client out.
        &EdgeOptions { port: Some(edge_port), vars: &[("FAILED_ATTEMPTS_PER_MINUTE", "0")], ..EdgeOptions::default() },
    );

    // A read key gets rows through the edge.
    let (key, _) = plane.create(json!({"name": "reader", "permissions": ["query:read"]})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = through_edge(&edge, Some(&key), WIDGETS).await;
        if status == 200 && widget_names(&body).is_some() {
            assert_eq!(widget_names(&body).unwrap(), ["flange", "gear", "sprocket"], "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "no rows through the edge: {status} {body}\n{}", fraiseql.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Persisted queries: the hash alone is unknown at first (the edge answers, FraiseQL is not asked);
    // sent with its document it runs at FraiseQL and is remembered by both; then the hash alone runs.
    let (status, _, body) = through_edge(&edge, Some(&key), &persisted_widgets(false)).await;
    assert_eq!(status, 200);
    assert!(body.contains("PERSISTED_QUERY_NOT_FOUND"), "{body}");
    let (status, _, body) = through_edge(&edge, Some(&key), &persisted_widgets(true)).await;
    assert_eq!((status, widget_names(&body).is_some()), (200, true), "registration: {body}\n{}", fraiseql.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = through_edge(&edge, Some(&key), &persisted_widgets(false)).await;
        if status == 200 && widget_names(&body).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the hash alone never ran at FraiseQL: {status} {body}\n{}", fraiseql.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Straight to FraiseQL, around the edge: refused without a token, and with every bad one.
    let now = support::now();
    let (status, body) = fraiseql.graphql(None, WIDGETS).await;
    assert_eq!(status, 401, "no token: {body}");
    let row = store.origin_keys().await.unwrap().remove(0);
    let real_key = plane.service.origin_keys().open(&row).await.unwrap();
    let real = TokenSigner::Es256(real_key);
    // The real key does open the door directly: the refusals below are for what is wrong with each.
    let (status, body) = fraiseql.graphql(Some(&token(&real, now, 60)), WIDGETS).await;
    assert_eq!(status, 200, "a good token straight to FraiseQL: {body}");
    let good = token(&real, now, 60);
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.rsplit_once('.').unwrap();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(rest.split('.').next().unwrap()).unwrap()).unwrap();
    claims["scope"] = json!("query:read mutation:write");
    let forged = format!("{head}.{}.{signature}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let stranger = TokenSigner::Es256(OriginSigningKey::generate(row.kid.to_string(), &mut OsRng));
    for (what, bad) in [
        ("a garbage token", "not.a.token".to_owned()),
        ("a forged token (claims changed, signature kept)", forged),
        ("a token signed by a key not in the JWKS (with a kid that is)", token(&stranger, now, 60)),
        ("an expired token", token(&real, now - 600, 60)),
    ] {
        let (status, body) = fraiseql.graphql(Some(&bad), WIDGETS).await;
        assert_eq!(status, 401, "{what}: {body}");
    }

    // A rotation: published at once, used by the edge after 32 s; every request keeps its rows, and no
    // part restarts.
    let old_kid = row.kid.to_string();
    let rotated = plane.admin("/admin/origin-keys/rotate", json!({})).await;
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    let started = Instant::now();
    // 32 s until it activates, up to 2 s until the edge re-reads its keys, up to 10 s until the last
    // token of the old key is no longer reused: after 52 s the edge has signed with the new key for a
    // while, and FraiseQL took every request.
    let mut requests = 0;
    while started.elapsed() < Duration::from_secs(52) {
        let (status, _, body) = through_edge(&edge, Some(&key), WIDGETS).await;
        assert_eq!(status, 200, "after the rotation: {body}\n{}", fraiseql.log());
        assert!(widget_names(&body).is_some(), "{body}");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(requests > 100, "only {requests} requests in 52 s");
    let views = plane.service.origin_key_views().await.unwrap();
    let active: Vec<String> =
        views.iter().filter(|v| v.status.as_str() == "active").map(|v| v.row.kid.to_string()).collect();
    assert_eq!(active, std::slice::from_ref(&new_kid), "the old key {old_kid} is still active");
    // And the edge's tokens are now signed with the new key: FraiseQL takes one only if it verifies.
    let new_row = store.origin_keys().await.unwrap().into_iter().find(|r| r.kid.to_string() == new_kid).unwrap();
    let new_signer = TokenSigner::Es256(plane.service.origin_keys().open(&new_row).await.unwrap());
    let (status, body) = fraiseql.graphql(Some(&token(&new_signer, support::now(), 60)), WIDGETS).await;
    assert_eq!(status, 200, "a token of the new key: {body}");
    drop(edge);
    drop(fraiseql);
    let _ = std::fs::remove_dir_all(dir);
}
