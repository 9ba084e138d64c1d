//! The origin's view of keygate, end to end: every forwarded request carries a standard JWT that a
//! library we did not write (`jsonwebtoken`, on ring's ECDSA and HMAC) verifies against the control
//! plane's JWKS, with the claims DESIGN.md lists; the client's own `Authorization` never reaches the
//! origin; an isolate reuses a token for at most 10 s; and a key rotation reaches the edge with no
//! restart, every token still verifying.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::Kms;
use keygate_control_plane::origin_keys::OriginKeyPolicy;
use keygate_control_plane::service::Settings;
use keygate_control_plane::store::{SqlStore, Store};
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::edge::{through_edge, Edge};
use support::origin::{start_origin, Origin};
use support::{http, ORIGIN_SECRET, QUERY};

const ISSUER: &str = "https://keygate.e2e";
const AUDIENCE: &str = "e2e-graphql";

async fn plane_on_sqlite(dir: &Path, edge: &str, publish_lead_secs: i64) -> ControlPlane {
    std::fs::create_dir_all(dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keygate.db").display());
    let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&url).await.unwrap());
    let kms: Arc<dyn Kms> = Arc::new(LocalKms::open_or_create(&dir.join("master.key")).unwrap());
    let settings = Settings {
        origin_keys: OriginKeyPolicy { publish_lead_secs, ..OriginKeyPolicy::default() },
        ..Settings::default()
    };
    ControlPlane::start_with(store, kms, edge, settings).await
}

/// The bearer token the origin received with its `index`th request.
fn token_seen(origin: &Origin, index: usize) -> String {
    let seen = origin.seen.lock().unwrap();
    let authorization = seen[index].headers.get("authorization").expect("the origin got an Authorization header");
    authorization.strip_prefix("Bearer ").expect("a bearer token").to_owned()
}

/// Verifies `token` as an origin would, with `jsonwebtoken` against the JWKS; its claims.
fn verify_es256(token: &str, jwks: &Value) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.ok_or("no kid")?;
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let jwk = set.find(&kid).ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss"]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(|data| data.claims).map_err(|e| e.to_string())
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_verifies_every_request_against_the_jwks_through_a_rotation() {
    let dir = std::env::temp_dir().join(format!("keygate-e2e-jwt-{}", std::process::id()));
    let (origin, origin_url) = start_origin().await;
    let edge = Edge::start_with(
        "jwt",
        &origin_url,
        &[("ORIGIN_JWT_ISSUER", ISSUER), ("ORIGIN_JWT_AUDIENCE", AUDIENCE), ("ORIGIN_JWT_TTL_SECS", "30")],
    );
    let plane = plane_on_sqlite(&dir, &edge.url, 3).await;
    let (key, key_id) =
        plane.create(json!({"name": "jwt", "permissions": ["query:read", "batch:5"], "owner": "acme"})).await;

    // The record and the first signing key arrive by replication; then the client's own Authorization
    // is replaced by keygate's token.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = http()
            .post(format!("{}/graphql", edge.url))
            .header("X-API-Key", &key)
            .header("Authorization", "Bearer the-clients-own-token")
            .header("content-type", "application/json")
            .body(QUERY)
            .send()
            .await
            .unwrap();
        let reached = origin.reached();
        if response.status() == 200
            && reached > 0
            && origin.seen.lock().unwrap()[reached - 1].headers.contains_key("authorization")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no request reached the origin with a token: {}", edge.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = origin.reached() - 1;
    let token = token_seen(&origin, first);
    assert!(!token.contains("the-clients-own-token"));
    {
        let seen = origin.seen.lock().unwrap();
        let headers = &seen[first].headers;
        assert_eq!(headers.get("x-keygate-key-id"), Some(&key_id), "the identity headers stay");
        assert!(headers.contains_key("x-keygate-signature"));
        assert!(seen.iter().all(|s| s.headers.get("authorization").is_none_or(|a| !a.contains("clients-own"))));
    }

    let jwks = plane.jwks().await;
    let claims = verify_es256(&token, &jwks).unwrap();
    assert_eq!(claims["sub"], key_id.as_str());
    assert_eq!(claims["scope"], "query:read batch:5");
    assert_eq!(claims["tier"], "default");
    assert_eq!(claims["tenant_id"], "acme");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 30);
    assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() >= 16));
    let claim_names: Vec<&str> = claims.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = ["iss", "aud", "sub", "iat", "exp", "jti", "scope", "tier", "tenant_id"];
    expected.sort_unstable();
    let mut got = claim_names.clone();
    got.sort_unstable();
    assert_eq!(got, expected, "exactly the contract's claims");

    // A forgery: our token with another key id in it no longer verifies.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    assert!(verify_es256(&parts.join("."), &jwks).is_err());

    // Over 13 s, a request every second: a token is reused only within 10 s of its first use.
    let mut sent_at: HashMap<String, Vec<Instant>> = HashMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(13) {
        let before = origin.reached();
        let (status, _, body) = through_edge(&edge, Some(&key), QUERY).await;
        assert_eq!(status, 200, "{body}");
        let token = token_seen(&origin, before);
        assert!(verify_es256(&token, &jwks).is_ok());
        sent_at.entry(token).or_default().push(Instant::now());
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    assert!(sent_at.len() >= 2, "a token was used for 13 s");
    assert!(sent_at.values().any(|times| times.len() >= 2), "no token was reused at all");
    for times in sent_at.values() {
        let span = *times.last().unwrap() - times[0];
        // Our clock sees each request a little after the edge minted for it: allow for that.
        assert!(span <= Duration::from_millis(10_500), "a token was used over {span:?}");
    }
    let jtis: std::collections::HashSet<String> =
        sent_at.keys().map(|token| verify_es256(token, &jwks).unwrap()["jti"].as_str().unwrap().to_owned()).collect();
    assert_eq!(jtis.len(), sent_at.len(), "every token has its own jti");

    // Rotation: published at once, signing after the 3 s lead; no restart, no failed request.
    let old_kid = kid_of(&token);
    let rotated = plane.admin("/admin/origin-keys/rotate", json!({})).await;
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    let rotated_at = Instant::now();
    let jwks = plane.jwks().await;
    let published: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(published, [old_kid.as_str(), new_kid.as_str()]);
    let switched = loop {
        let before = origin.reached();
        let (status, _, body) = through_edge(&edge, Some(&key), QUERY).await;
        assert_eq!(status, 200, "{body}");
        let token = token_seen(&origin, before);
        verify_es256(&token, &jwks).unwrap();
        if kid_of(&token) == new_kid {
            break rotated_at.elapsed();
        }
        assert!(rotated_at.elapsed() < Duration::from_secs(20), "the edge still signs with the old key");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The lead (3 s, counted in whole seconds of the control plane's clock, so at least 2 s of ours),
    // the edge's key refresh (≤ 2 s) and an old token's reuse (≤ 10 s).
    assert!(switched >= Duration::from_secs(2), "signed with the new key before its time: {switched:?}");
    assert!(switched < Duration::from_secs(16), "switched after {switched:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_are_signed_with_the_origin_secret() {
    let dir = std::env::temp_dir().join(format!("keygate-e2e-hs256-{}", std::process::id()));
    let (origin, origin_url) = start_origin().await;
    let edge = Edge::start_with(
        "hs256",
        &origin_url,
        &[("ORIGIN_JWT_ALG", "HS256"), ("ORIGIN_JWT_ISSUER", ISSUER), ("ORIGIN_JWT_AUDIENCE", AUDIENCE)],
    );
    let plane = plane_on_sqlite(&dir, &edge.url, 60).await;
    let (key, key_id) = plane.create(json!({"name": "hs", "permissions": ["query:read"]})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while through_edge(&edge, Some(&key), QUERY).await.0 != 200 {
        assert!(Instant::now() < deadline, "the key did not reach the edge");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token_seen(&origin, origin.reached() - 1);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::HS256, Some("keygate-origin-secret")));
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    let claims =
        jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(ORIGIN_SECRET.as_bytes()), &validation)
            .unwrap()
            .claims;
    assert_eq!(claims["sub"], key_id.as_str());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 60);
    assert!(claims.get("tenant_id").is_none(), "a key without an owner has no tenant");
    let wrong = DecodingKey::from_secret(b"another secret");
    assert!(jsonwebtoken::decode::<Value>(&token, &wrong, &validation).is_err());
    let _ = std::fs::remove_dir_all(dir);
}
