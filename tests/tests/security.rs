//! Hostile input against the real parts: the control plane's admin and verify APIs on a real socket
//! (SQLite + local KMS, replicating), the worker in workerd (`wrangler dev`, local KV) and its sync
//! endpoint. Malformed requests get their exact status and error code and write nothing; forged, stale,
//! replayed and reordered pushes never undo a change; every bad key gets one and the same answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_control_plane::clock::ManualClock;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::Kms;
use keygate_control_plane::service::{Actor, NewKey, Service, Settings};
use keygate_control_plane::store::{RowCounts, SqlStore, Store};
use keygate_shared::sync::{SIGNATURE_HEADER, SYNC_PATH, TIMESTAMP_HEADER};
use keygate_shared::{ApiKey, KeyId, KeyRecord, KeySecret, PermissionSet, Prefix, Region, SecretEntry};
use reqwest::header::HeaderValue;
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::edge::{push, through_edge, until_status, Edge, SignedPush};
use support::origin::{start_origin, Origin};
use support::{http, now, MUTATION, QUERY, SYNC_SECRET};

/// The largest body the admin and verify APIs read (`api::BODY_LIMIT`).
const CONTROL_PLANE_BODY_LIMIT: usize = 64 * 1024;
/// The largest body the edge checks (`worker::MAX_BODY`).
const EDGE_BODY_LIMIT: usize = 1024 * 1024;
const DAY: i64 = 86_400;

/// One origin, one edge and one control plane over SQLite and the local KMS, for one test.
struct World {
    // Fields drop in order: the control plane stops before the edge it pushes to.
    plane: ControlPlane,
    edge: Edge,
    origin: Arc<Origin>,
    store: Arc<dyn Store>,
    kms: Arc<dyn Kms>,
    dir: PathBuf,
}

impl World {
    async fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keygate-e2e-security-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("keygate.db").display());
        let store: Arc<dyn Store> = Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&url).await.unwrap());
        let kms: Arc<dyn Kms> = Arc::new(LocalKms::open_or_create(&dir.join("master.key")).unwrap());
        let (origin, origin_url) = start_origin().await;
        // Every request here comes from one address, and these tests send far more bad keys than the
        // edge's per-client brake allows a minute: it would answer them all 429 before their checks.
        let edge = Edge::start_with(&format!("security-{name}"), &origin_url, &[("FAILED_ATTEMPTS_PER_MINUTE", "0")]);
        let plane = ControlPlane::start(store.clone(), kms.clone(), &edge.url).await;
        Self { plane, edge, origin, store, kms, dir }
    }

    /// Creates a key at the control plane and waits until the edge admits it.
    async fn key(&self, permissions: &[&str]) -> (String, String) {
        let (key, id) = self.plane.create(json!({"name": "e2e", "permissions": permissions})).await;
        until_status(&self.edge, &key, 200, Duration::from_secs(10)).await;
        (key, id)
    }

    /// Creates a key, then revokes it and waits until the edge refuses it.
    async fn revoked_key(&self) -> (String, String) {
        let (key, id) = self.key(&["*"]).await;
        self.plane.admin(&format!("/admin/api-keys/{id}/revoke"), json!({"reason": "e2e"})).await;
        until_status(&self.edge, &key, 401, Duration::from_secs(10)).await;
        (key, id)
    }

    /// Waits until the edge has accepted every outbox record.
    async fn replicated(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.store.outbox_pending(10).await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the outbox did not drain: {}", self.edge.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn counts(&self) -> RowCounts {
        self.store.counts().await.unwrap()
    }

    /// Every outbox record, without its delivery time.
    async fn outbox(&self) -> Vec<(i64, KeyId, String)> {
        let rows = self.store.outbox_after(0, 100_000).await.unwrap();
        rows.into_iter().map(|row| (row.seq, row.key_id, row.record)).collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The headers that must not tell bad keys apart: all but `date`.
    fn headers_but_date(&self) -> BTreeMap<String, String> {
        self.headers.iter().filter(|(name, _)| *name != "date").map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

async fn send(method: &str, url: &str, headers: &[(String, Vec<u8>)], body: &[u8]) -> Answer {
    let mut request = http().request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (name, value) in headers {
        request = request.header(name.as_str(), HeaderValue::from_bytes(value).unwrap());
    }
    if !body.is_empty() {
        request = request.body(body.to_vec());
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    Answer { status, headers, body: response.bytes().await.unwrap().to_vec() }
}

async fn verify(world: &World, key: &str) -> Answer {
    let body = json!({"api_key": key}).to_string();
    let headers = [("content-type".to_owned(), b"application/json".to_vec())];
    send("POST", &format!("{}/v1/keys/verify", world.plane.url), &headers, body.as_bytes()).await
}

async fn at_edge(world: &World, key: &str, body: &str) -> Answer {
    let headers = [("content-type".to_owned(), b"application/json".to_vec()), ("x-api-key".to_owned(), key.into())];
    send("POST", &format!("{}/graphql", world.edge.url), &headers, body.as_bytes()).await
}

/// The record the edge holds for `key`, as a test writes it.
fn record(key: &ApiKey, seq: u64, permissions: &[&str], revoked: bool, expires_at: Option<i64>) -> KeyRecord {
    KeyRecord {
        key_id: key.key_id(),
        seq,
        tier: "default".into(),
        permissions: PermissionSet::parse(permissions).unwrap(),
        expires_at,
        revoked,
        disabled: false,
        secrets: vec![SecretEntry { hash: key.hash(), not_after: None }],
        owner: None,
    }
}

fn fresh_key() -> ApiKey {
    ApiKey::generate(&Prefix::default(), &Region::default(), now() as u64 * 1000, &mut rand_core::OsRng)
}

/// `key` with its last character changed: a failed checksum.
fn bad_checksum(key: &str) -> String {
    let last = if key.ends_with('0') { "1" } else { "0" };
    format!("{}{last}", &key[..key.len() - 1])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Surface {
    Admin,
    Verify,
    Edge,
    Sync,
}

/// One bad input: where it goes, and the exact answer it must get.
#[derive(Debug, Clone)]
struct Row {
    surface: Surface,
    what: String,
    method: &'static str,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn row(surface: Surface, what: impl Into<String>, method: &'static str, path: impl Into<String>) -> Row {
    Row {
        surface,
        what: what.into(),
        method,
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
        status: 0,
        code: "",
    }
}

impl Row {
    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    fn json(self, body: impl AsRef<[u8]>) -> Self {
        self.header("content-type", "application/json").body(body)
    }

    fn bearer(self, key: &str) -> Self {
        self.header("authorization", format!("Bearer {key}"))
    }

    fn signed(self, push: &SignedPush) -> Self {
        self.header(TIMESTAMP_HEADER, &push.timestamp).header(SIGNATURE_HEADER, &push.signature).body(&push.body)
    }

    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }

    /// The error code the answer carries, where its surface puts it.
    fn code_of(&self, answer: &Answer) -> Option<String> {
        let json = answer.json();
        let code = match self.surface {
            Surface::Verify if answer.status == 200 => &json["code"],
            Surface::Admin | Surface::Verify | Surface::Sync => &json["error"]["code"],
            Surface::Edge => &json["errors"][0]["extensions"]["code"],
        };
        code.as_str().map(str::to_owned)
    }
}

/// Bad requests to the admin API, each with the admin key unless it is about the admin key.
fn admin_rows(admin: &str, good_id: &str, good: &str) -> Vec<Row> {
    let unknown = KeyId::from(u128::from(u64::MAX)).to_string();
    let create = |what: &str, body: &str| {
        row(Surface::Admin, format!("create: {what}"), "POST", "/admin/api-keys").bearer(admin).json(body)
    };
    let on_good = |what: &str, action: &str, body: &str| {
        row(Surface::Admin, format!("{action}: {what}"), "POST", format!("/admin/api-keys/{good_id}/{action}"))
            .bearer(admin)
            .json(body)
    };
    let get = |what: &str, path: String| row(Surface::Admin, what, "GET", path).bearer(admin);
    let mut rows = vec![
        create("truncated JSON", r#"{"name":"#).expect(400, "malformed_json"),
        create("not JSON", "name=x&permissions=*").expect(400, "malformed_json"),
        create("empty body", "").expect(400, "malformed_json"),
        row(Surface::Admin, "create: non-UTF-8 bytes", "POST", "/admin/api-keys")
            .bearer(admin)
            .json(b"{\"name\":\"\xff\xfe\",\"permissions\":[]}")
            .expect(400, "malformed_json"),
        create("a number out of range", r#"{"name":"n","permissions":[],"expires_in_days":1e400}"#)
            .expect(400, "malformed_json"),
        row(Surface::Admin, "create: text/plain", "POST", "/admin/api-keys")
            .bearer(admin)
            .header("content-type", "text/plain")
            .body(r#"{"name":"n","permissions":[]}"#)
            .expect(415, "unsupported_media_type"),
        row(Surface::Admin, "create: no content type", "POST", "/admin/api-keys")
            .bearer(admin)
            .body(r#"{"name":"n","permissions":[]}"#)
            .expect(415, "unsupported_media_type"),
        create(
            "a body over 64 KiB",
            &format!(r#"{{"name":"n","permissions":[],"owner":"{}"}}"#, "o".repeat(CONTROL_PLANE_BODY_LIMIT)),
        )
        .expect(413, "body_too_large"),
        create("an unknown field", r#"{"name":"n","permissions":["*"],"is_admin":true}"#).expect(422, "invalid_body"),
        create("name is a number", r#"{"name":5,"permissions":[]}"#).expect(422, "invalid_body"),
        create("permissions is a string", r#"{"name":"n","permissions":"query:read"}"#).expect(422, "invalid_body"),
        create("permissions missing", r#"{"name":"n"}"#).expect(422, "invalid_body"),
        create("a JSON array", "[]").expect(422, "invalid_body"),
        create("JSON null", "null").expect(422, "invalid_body"),
        create("a duplicate field", r#"{"name":"n","name":"m","permissions":[]}"#).expect(422, "invalid_body"),
        create("expires_in_days as a string", r#"{"name":"n","permissions":[],"expires_in_days":"30"}"#)
            .expect(422, "invalid_body"),
        create("expires_in_days fractional", r#"{"name":"n","permissions":[],"expires_in_days":1.5}"#)
            .expect(422, "invalid_body"),
        create("expires_in_days beyond i64", r#"{"name":"n","permissions":[],"expires_in_days":99999999999999999999}"#)
            .expect(422, "invalid_body"),
    ];
    let refused = [
        ("an over-long name", format!(r#"{{"name":"{}","permissions":[]}}"#, "n".repeat(201)), "invalid_name"),
        ("a blank name", r#"{"name":"   ","permissions":[]}"#.into(), "invalid_name"),
        ("negative expires_in_days", r#"{"name":"n","permissions":[],"expires_in_days":-1}"#.into(), "invalid_expiry"),
        ("zero expires_in_days", r#"{"name":"n","permissions":[],"expires_in_days":0}"#.into(), "invalid_expiry"),
        ("expires_in_days 3651", r#"{"name":"n","permissions":[],"expires_in_days":3651}"#.into(), "invalid_expiry"),
        (
            "expires_in_days i64::MAX",
            r#"{"name":"n","permissions":[],"expires_in_days":9223372036854775807}"#.into(),
            "invalid_expiry",
        ),
        ("a bad tier", r#"{"name":"n","tier":"Gold!","permissions":[]}"#.into(), "invalid_tier"),
        ("an unknown admin scope", r#"{"name":"n","permissions":["admin:root"]}"#.into(), "unknown_admin_scope"),
        ("batch:0", r#"{"name":"n","permissions":["batch:0"]}"#.into(), "invalid_batch_size"),
        ("an upper-case permission", r#"{"name":"n","permissions":["Query:Read"]}"#.into(), "invalid_permission"),
        (
            "65 permissions",
            json!({"name": "n", "permissions": (0..65).map(|i| format!("custom:p{i}")).collect::<Vec<_>>()})
                .to_string(),
            "invalid_permission",
        ),
        ("a bad region", r#"{"name":"n","permissions":[],"region":"EU-West"}"#.into(), "invalid_region"),
        (
            "an over-long owner",
            json!({"name": "n", "permissions": [], "owner": "o".repeat(201)}).to_string(),
            "invalid_owner",
        ),
        ("metadata not an object", r#"{"name":"n","permissions":[],"metadata":[1]}"#.into(), "invalid_metadata"),
        (
            "metadata over 8 KiB",
            json!({"name": "n", "permissions": [], "metadata": {"m": "m".repeat(9_000)}}).to_string(),
            "invalid_metadata",
        ),
    ];
    rows.extend(refused.into_iter().map(|(what, body, code)| create(what, &body).expect(422, code)));
    rows.extend([
        on_good("negative grace", "rotate", r#"{"grace_period_secs":-1}"#).expect(422, "invalid_grace_period"),
        on_good("grace over 30 days", "rotate", r#"{"grace_period_secs":2592001}"#).expect(422, "invalid_grace_period"),
        on_good("grace as a string", "rotate", r#"{"grace_period_secs":"60"}"#).expect(422, "invalid_body"),
        on_good("an unknown field", "rotate", r#"{"grace":5}"#).expect(422, "invalid_body"),
        on_good("truncated JSON", "rotate", r#"{"grace_period_secs":"#).expect(400, "malformed_json"),
        row(Surface::Admin, "rotate: text/plain", "POST", format!("/admin/api-keys/{good_id}/rotate"))
            .bearer(admin)
            .header("content-type", "text/plain")
            .body("{}")
            .expect(415, "unsupported_media_type"),
        on_good("a reason over 500 characters", "revoke", &json!({"reason": "r".repeat(501)}).to_string())
            .expect(422, "invalid_reason"),
        on_good("reason as a number", "revoke", r#"{"reason":5}"#).expect(422, "invalid_body"),
        row(Surface::Admin, "rotate: unknown key id", "POST", format!("/admin/api-keys/{unknown}/rotate"))
            .bearer(admin)
            .expect(404, "key_not_found"),
        row(Surface::Admin, "revoke: unknown key id", "POST", format!("/admin/api-keys/{unknown}/revoke"))
            .bearer(admin)
            .expect(404, "key_not_found"),
        row(Surface::Admin, "reveal: unknown key id", "POST", format!("/admin/api-keys/{unknown}/reveal"))
            .bearer(admin)
            .expect(404, "key_not_found"),
        get("show: unknown key id", format!("/admin/api-keys/{unknown}")).expect(404, "key_not_found"),
        get("show: malformed key id", "/admin/api-keys/not-a-key-id".into()).expect(404, "key_not_found"),
        get("show: key id out of range", format!("/admin/api-keys/{}", "z".repeat(22))).expect(404, "key_not_found"),
        get("show: 23-character key id", format!("/admin/api-keys/{good_id}0")).expect(404, "key_not_found"),
        get("show: encoded path traversal", "/admin/api-keys/..%2F..%2Fetc%2Fpasswd".into())
            .expect(404, "key_not_found"),
        // A path id that is not UTF-8 is still a path id that names no key (and errors are JSON).
        row(Surface::Admin, "revoke: non-UTF-8 key id", "POST", "/admin/api-keys/%00%ff/revoke")
            .bearer(admin)
            .expect(404, "key_not_found"),
        get("show: non-UTF-8 key id", "/admin/api-keys/%C3%28".into()).expect(404, "key_not_found"),
        get("list: limit=0", "/admin/api-keys?limit=0".into()).expect(422, "invalid_query"),
        get("list: limit=abc", "/admin/api-keys?limit=abc".into()).expect(422, "invalid_query"),
        get("list: after a malformed id", "/admin/api-keys?after=zz".into()).expect(422, "invalid_query"),
        get("list: the admin key in the query", format!("/admin/api-keys?api_key={admin}"))
            .expect(422, "invalid_query"),
        get("audit log: malformed key_id", "/admin/audit-log?key_id=bad".into()).expect(422, "invalid_query"),
        get("audit log: limit=100000", "/admin/audit-log?limit=100000".into()).expect(422, "invalid_query"),
        row(
            Surface::Admin,
            "create: the admin key in the URL instead of the header",
            "POST",
            format!("/admin/api-keys?api_key={admin}"),
        )
        .json(r#"{"name":"n","permissions":["*"]}"#)
        .expect(401, "unauthorized"),
        row(Surface::Admin, "create: no Authorization", "POST", "/admin/api-keys")
            .json(r#"{"name":"n","permissions":["*"]}"#)
            .expect(401, "unauthorized"),
        row(Surface::Admin, "create: Basic scheme", "POST", "/admin/api-keys")
            .header("authorization", format!("Basic {admin}"))
            .json(r#"{"name":"n","permissions":["*"]}"#)
            .expect(401, "unauthorized"),
        row(Surface::Admin, "create: a malformed bearer", "POST", "/admin/api-keys")
            .bearer("not-a-key")
            .json(r#"{"name":"n","permissions":["*"]}"#)
            .expect(401, "unauthorized"),
        row(Surface::Admin, "create: a non-UTF-8 bearer", "POST", "/admin/api-keys")
            .header("authorization", b"Bearer \xff\xfe")
            .json(r#"{"name":"n","permissions":["*"]}"#)
            .expect(401, "unauthorized"),
        row(Surface::Admin, "create: a data key as bearer", "POST", "/admin/api-keys")
            .bearer(good)
            .json(r#"{"name":"n","permissions":["*"]}"#)
            .expect(403, "forbidden"),
        row(Surface::Admin, "DELETE a key", "DELETE", format!("/admin/api-keys/{good_id}"))
            .bearer(admin)
            .expect(405, "method_not_allowed"),
        row(Surface::Admin, "PUT the key list", "PUT", "/admin/api-keys")
            .bearer(admin)
            .json(r#"{"name":"n","permissions":["*"]}"#)
            .expect(405, "method_not_allowed"),
        get("an unknown route", "/admin/nothing-here".into()).expect(404, "not_found"),
    ]);
    rows
}

/// Bad requests to `POST /v1/keys/verify`.
fn verify_rows(good: &str) -> Vec<Row> {
    let verify = |what: &str, body: &[u8]| row(Surface::Verify, what, "POST", "/v1/keys/verify").json(body);
    vec![
        verify("no api_key", b"{}").expect(422, "invalid_body"),
        verify("api_key is a number", br#"{"api_key":5}"#).expect(422, "invalid_body"),
        verify("api_key is null", br#"{"api_key":null}"#).expect(422, "invalid_body"),
        verify("an unknown field", br#"{"api_key":"x","key_id":"y"}"#).expect(422, "invalid_body"),
        verify("a JSON array", b"[]").expect(422, "invalid_body"),
        verify("truncated JSON", br#"{"api_key":"#).expect(400, "malformed_json"),
        verify("empty body", b"").expect(400, "malformed_json"),
        verify("non-UTF-8 bytes", b"{\"api_key\":\"\xc3\x28\"}").expect(400, "malformed_json"),
        verify("a body over 64 KiB", format!(r#"{{"api_key":"{}"}}"#, "a".repeat(CONTROL_PLANE_BODY_LIMIT)).as_bytes())
            .expect(413, "body_too_large"),
        row(Surface::Verify, "text/plain", "POST", "/v1/keys/verify")
            .header("content-type", "text/plain")
            .body(json!({"api_key": good}).to_string())
            .expect(415, "unsupported_media_type"),
        row(Surface::Verify, "no content type", "POST", "/v1/keys/verify")
            .body(json!({"api_key": good}).to_string())
            .expect(415, "unsupported_media_type"),
        row(Surface::Verify, "GET", "GET", "/v1/keys/verify").expect(405, "method_not_allowed"),
        verify("a 10 KB key", json!({"api_key": "a".repeat(10_240)}).to_string().as_bytes()).expect(200, "invalid_key"),
        verify("a NUL in the key", br#"{"api_key":"fraiseql_us_east_1_\u0000"}"#).expect(200, "invalid_key"),
        verify("the good key with a trailing newline", json!({"api_key": format!("{good}\n")}).to_string().as_bytes())
            .expect(200, "invalid_key"),
        verify("the good key with its checksum broken", json!({"api_key": bad_checksum(good)}).to_string().as_bytes())
            .expect(200, "invalid_key"),
    ]
}

/// Bad requests through the edge; `good` is a `query:read` + `batch:2` key.
fn edge_rows(good: &str, revoked: &str) -> Vec<Row> {
    let with = |what: &str, key: &[u8], body: &[u8]| {
        row(Surface::Edge, what, "POST", "/graphql").json(body).header("x-api-key", key)
    };
    let good_b = good.as_bytes();
    let query = QUERY.as_bytes();
    vec![
        row(Surface::Edge, "no key", "POST", "/graphql").json(QUERY).expect(401, "UNAUTHENTICATED"),
        with("a malformed key", b"garbage", query).expect(401, "UNAUTHENTICATED"),
        with("an empty key", b"", query).expect(401, "UNAUTHENTICATED"),
        with("a failed checksum", bad_checksum(good).as_bytes(), query).expect(401, "UNAUTHENTICATED"),
        with("a 300-character key", "a".repeat(300).as_bytes(), query).expect(401, "UNAUTHENTICATED"),
        with(
            "a 300-character key of the right shape",
            format!("{}{good}", "x".repeat(300 - good.len())).as_bytes(),
            query,
        )
        .expect(401, "UNAUTHENTICATED"),
        with("a non-UTF-8 key", b"fraiseql_\xff\xfe", query).expect(401, "UNAUTHENTICATED"),
        with("a revoked key", revoked.as_bytes(), query).expect(401, "UNAUTHENTICATED"),
        row(Surface::Edge, "the key as a bearer token", "POST", "/graphql")
            .json(QUERY)
            .bearer(good)
            .expect(401, "UNAUTHENTICATED"),
        row(Surface::Edge, "the key in ?api_key=", "POST", format!("/graphql?api_key={good}"))
            .json(QUERY)
            .expect(400, "API_KEY_IN_URL"),
        row(Surface::Edge, "the key in ?api_key= and the header", "POST", format!("/graphql?api_key={good}"))
            .json(QUERY)
            .header("x-api-key", good)
            .expect(400, "API_KEY_IN_URL"),
        row(Surface::Edge, "the key under another parameter", "POST", format!("/graphql?q={good}"))
            .json(QUERY)
            .header("x-api-key", good)
            .expect(400, "API_KEY_IN_URL"),
        row(Surface::Edge, "?token=", "GET", "/graphql?token=abc&query=%7B%20users%20%7B%20id%20%7D%20%7D")
            .header("x-api-key", good)
            .expect(400, "API_KEY_IN_URL"),
        with("a non-UTF-8 body", good_b, b"{\"query\":\"{ users { id } }\xff\"}").expect(400, "BAD_REQUEST"),
        with("a body over 1 MiB", good_b, &vec![b' '; EDGE_BODY_LIMIT + 1]).expect(413, "PAYLOAD_TOO_LARGE"),
        with("invalid JSON", good_b, br#"{"query":"#).expect(400, "BAD_REQUEST"),
        with("a JSON number", good_b, b"42").expect(400, "BAD_REQUEST"),
        with("query is a number", good_b, br#"{"query":5}"#).expect(400, "BAD_REQUEST"),
        with("a batch of numbers", good_b, b"[1]").expect(400, "BAD_REQUEST"),
        with("a persisted query without a version", good_b, br#"{"extensions":{"persistedQuery":{"sha256Hash":"ab"}}}"#)
            .expect(400, "BAD_REQUEST"),
        // A mutation under a hash that is not its own: the edge would classify one document, the origin run another.
        with(
            "a persisted query's document that is not its hash",
            good_b,
            br#"{"query":"mutation { a }","extensions":{"persistedQuery":{"version":1,"sha256Hash":"8f4b1e0f2f5a5e8a4f4bd6d5f0bb8f2d0b1f79c0c3b0e3cf2f7ea0a9bf0a1a2b"}}}"#,
        )
        .expect(400, "BAD_REQUEST"),
        with("a GraphQL syntax error", good_b, br#"{"query":"query { users { id }"}"#).expect(400, "BAD_REQUEST"),
        with("an empty document", good_b, br#"{"query":""}"#).expect(400, "BAD_REQUEST"),
        with("two operations, no operationName", good_b, br#"{"query":"query A { a } query B { b }"}"#)
            .expect(400, "BAD_REQUEST"),
        with("operationName naming nothing", good_b, br#"{"query":"query A { a }","operationName":"B"}"#)
            .expect(400, "BAD_REQUEST"),
        with(
            "a document nested 200 deep",
            good_b,
            json!({"query": format!("{}{}", "{ a ".repeat(200), "}".repeat(200))}).to_string().as_bytes(),
        )
        .expect(400, "BAD_REQUEST"),
        with("an empty batch", good_b, b"[]").expect(400, "BAD_REQUEST"),
        with("a batch of 3 (batch:2)", good_b, format!("[{QUERY},{QUERY},{QUERY}]").as_bytes())
            .expect(403, "FORBIDDEN"),
        with("a mutation with a read-only key", good_b, MUTATION.as_bytes()).expect(403, "FORBIDDEN"),
        with("a mutation in a batch", good_b, format!("[{QUERY},{MUTATION}]").as_bytes()).expect(403, "FORBIDDEN"),
        with("a subscription", good_b, br#"{"query":"subscription { events { id } }"}"#).expect(403, "FORBIDDEN"),
        with(
            "a mutation chosen by operationName",
            good_b,
            br#"{"query":"query R { a } mutation W { b }","operationName":"W"}"#,
        )
        .expect(403, "FORBIDDEN"),
        row(
            Surface::Edge,
            "a mutation over GET",
            "GET",
            "/graphql?query=mutation%20%7B%20addUser%20%7B%20id%20%7D%20%7D",
        )
        .header("x-api-key", good)
        .expect(403, "FORBIDDEN"),
        row(Surface::Edge, "GET without a query", "GET", "/graphql")
            .header("x-api-key", good)
            .expect(400, "BAD_REQUEST"),
        row(Surface::Edge, "PUT", "PUT", "/graphql")
            .json(QUERY)
            .header("x-api-key", good)
            .expect(405, "METHOD_NOT_ALLOWED"),
        row(Surface::Edge, "DELETE", "DELETE", "/graphql").header("x-api-key", good).expect(405, "METHOD_NOT_ALLOWED"),
        row(Surface::Edge, "PATCH", "PATCH", "/graphql")
            .json(QUERY)
            .header("x-api-key", good)
            .expect(405, "METHOD_NOT_ALLOWED"),
        row(Surface::Edge, "OPTIONS", "OPTIONS", "/graphql")
            .header("x-api-key", good)
            .expect(405, "METHOD_NOT_ALLOWED"),
    ]
}

/// Bad pushes to the sync endpoint. Each would bring `revoked` back (a record with a far higher seq
/// that says it is not revoked) if the edge applied it.
fn sync_rows(revoked: &ApiKey) -> Vec<Row> {
    let now = now();
    let resurrect = record(revoked, 1_000_000_000, &["*"], false, None);
    let good_push = SignedPush::new(vec![resurrect.clone()], now, SYNC_SECRET);
    let resurrecting = String::from_utf8(good_push.body.clone()).unwrap();
    let sync = |what: &str| row(Surface::Sync, what, "POST", SYNC_PATH);
    let signed = |what: &str, body: &[u8]| sync(what).signed(&SignedPush::of_body(body.to_vec(), now, SYNC_SECRET));
    // The good push's body and signature under another timestamp header.
    let timestamped = |what: &str, timestamp: &str| {
        sync(what)
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, &good_push.signature)
            .body(&good_push.body)
    };
    let forged = SignedPush::new(vec![resurrect.clone()], now, "guessed-secret");
    let stale = SignedPush::new(vec![resurrect.clone()], now - 301, SYNC_SECRET);
    // An hour ahead: the rows are sent some seconds after they are made, which only makes `stale` staler.
    let future = SignedPush::new(vec![resurrect.clone()], now + 3_600, SYNC_SECRET);
    let mut wrong_type = serde_json::to_value(&resurrect).unwrap();
    wrong_type["revoked"] = json!("no");
    let mut negative_seq = serde_json::to_value(&resurrect).unwrap();
    negative_seq["seq"] = json!(-1);
    let mut bad_id = serde_json::to_value(&resurrect).unwrap();
    bad_id["key_id"] = json!("not-a-key-id");
    let mut bad_hash = serde_json::to_value(&resurrect).unwrap();
    bad_hash["secrets"][0]["hash"] = json!("zz");
    let mut bad_permission = serde_json::to_value(&resurrect).unwrap();
    bad_permission["permissions"] = json!(["admin:root"]);
    let payload = |record: Value| json!({"records": [record]}).to_string().into_bytes();
    vec![
        sync("no signature")
            .header(TIMESTAMP_HEADER, now.to_string())
            .body(&good_push.body)
            .expect(401, "bad_signature"),
        sync("no timestamp")
            .header(SIGNATURE_HEADER, &good_push.signature)
            .body(&good_push.body)
            .expect(401, "bad_timestamp"),
        sync("no headers").body(&good_push.body).expect(401, "bad_timestamp"),
        sync("a forged signature").signed(&forged).expect(401, "bad_signature"),
        sync("a signature that is not hex")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, "g".repeat(64))
            .body(&good_push.body)
            .expect(401, "bad_signature"),
        sync("a truncated signature")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, &good_push.signature[..62])
            .body(&good_push.body)
            .expect(401, "bad_signature"),
        sync("a signature over another body")
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, SignedPush::of_body(b"{\"records\":[]}".to_vec(), now, SYNC_SECRET).signature)
            .body(&good_push.body)
            .expect(401, "bad_signature"),
        timestamped("a signature for another timestamp", &(now - 1).to_string()).expect(401, "bad_signature"),
        sync("a stale timestamp (-301 s)").signed(&stale).expect(401, "stale_timestamp"),
        sync("a future timestamp (+1 h)").signed(&future).expect(401, "stale_timestamp"),
        timestamped("a non-numeric timestamp", "yesterday").expect(401, "bad_timestamp"),
        timestamped("a negative timestamp", "-5").expect(401, "bad_timestamp"),
        timestamped("a timestamp in exponent form", "1.7e9").expect(401, "bad_timestamp"),
        timestamped("a 13-digit timestamp", "9999999999999").expect(401, "bad_timestamp"),
        row(Surface::Sync, "GET", "GET", SYNC_PATH).expect(405, "method_not_allowed"),
        row(Surface::Sync, "PUT, signed", "PUT", SYNC_PATH).signed(&good_push).expect(405, "method_not_allowed"),
        signed("signed, not JSON", b"records=all").expect(400, "bad_payload"),
        signed("signed, empty", b"").expect(400, "bad_payload"),
        signed("signed, non-UTF-8", b"{\"records\":[\"\xff\"]}").expect(400, "bad_payload"),
        signed("signed, no records", b"{}").expect(400, "bad_payload"),
        signed("signed, records is a string", br#"{"records":"all"}"#).expect(400, "bad_payload"),
        signed("signed, revoked is a string", &payload(wrong_type)).expect(400, "bad_payload"),
        signed("signed, a negative seq", &payload(negative_seq)).expect(400, "bad_payload"),
        signed("signed, a malformed key id", &payload(bad_id)).expect(400, "bad_payload"),
        signed("signed, a malformed hash", &payload(bad_hash)).expect(400, "bad_payload"),
        signed("signed, an unknown admin scope", &payload(bad_permission)).expect(400, "bad_payload"),
        signed(
            "signed, a good record then a malformed one",
            format!(r#"{{"records":[{},{{"key_id":"x"}}]}}"#, &resurrecting[12..resurrecting.len() - 2]).as_bytes(),
        )
        .expect(400, "bad_payload"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_on_every_surface_gets_its_exact_error_and_writes_nothing() {
    let world = World::start("bad-input").await;
    let (good, good_id) = world.key(&["query:read", "batch:2"]).await;
    let (revoked, _) = world.revoked_key().await;
    world.replicated().await;
    let revoked_key = ApiKey::parse(revoked.clone()).unwrap();

    let mut rows = admin_rows(&world.plane.admin, &good_id, &good);
    rows.extend(verify_rows(&good));
    rows.extend(edge_rows(&good, &revoked));
    rows.extend(sync_rows(&revoked_key));

    let kv_before = world.edge.kv_records();
    assert!(kv_before.len() >= 3, "the admin, good and revoked keys' records: {kv_before:?}");
    let outbox_before = world.outbox().await;
    let mut counts = world.counts().await;
    let started = Instant::now();
    let mut tried: BTreeMap<Surface, usize> = BTreeMap::new();
    // Every row runs; the failures are listed together at the end.
    let mut failures: Vec<String> = Vec::new();
    for row in &rows {
        let base = match row.surface {
            Surface::Admin | Surface::Verify => &world.plane.url,
            Surface::Edge | Surface::Sync => &world.edge.url,
        };
        let reached = world.origin.reached();
        let answer = send(row.method, &format!("{base}{}", row.path), &row.headers, &row.body).await;
        let context = format!("{:?}: {} ({} {:.100})", row.surface, row.what, row.method, row.path);
        let mut fail = |problem: String| failures.push(format!("{context}: {problem}"));
        let got = (answer.status, row.code_of(&answer));
        if got != (row.status, Some(row.code.to_owned())) {
            let content_type = answer.headers.get("content-type");
            fail(format!(
                "expected {} {}, got {got:?} ({content_type:?}): {:.300}",
                row.status,
                row.code,
                answer.text()
            ));
        }
        if row.surface == Surface::Verify
            && row.status == 200
            && answer.json() != json!({"valid": false, "code": "invalid_key"})
        {
            fail(format!("verify answered {:.300}", answer.text()));
        }
        let challenge = answer.headers.get("www-authenticate").map(String::as_str);
        if row.surface == Surface::Edge && row.status == 401 && challenge != Some("ApiKey header=\"X-API-Key\"") {
            fail(format!("WWW-Authenticate: {challenge:?}"));
        }

        // Nothing written: only a refused admin key leaves a trace, in the audit log.
        let after = world.counts().await;
        let audited = i64::from(row.surface == Surface::Admin && matches!(row.status, 401 | 403));
        if after != (RowCounts { audit: counts.audit + audited, ..counts }) {
            fail(format!("rows changed: {counts:?} -> {after:?}"));
        }
        counts = after;
        if world.origin.reached() != reached {
            fail("a refused request reached the origin".into());
        }
        if matches!(row.surface, Surface::Edge | Surface::Sync) {
            let good_status = through_edge(&world.edge, Some(&good), QUERY).await.0;
            let revoked_status = through_edge(&world.edge, Some(&revoked), QUERY).await.0;
            if (good_status, revoked_status) != (200, 401) {
                fail(format!("afterwards the good key got {good_status}, the revoked key {revoked_status}"));
            }
        }
        *tried.entry(row.surface).or_default() += 1;
    }
    let walked = started.elapsed();

    if world.outbox().await != outbox_before {
        failures.push("the outbox changed".into());
    }
    let kv_after = world.edge.kv_records();
    if kv_after != kv_before {
        failures.push(format!("the edge's KV changed: {kv_before:?} -> {kv_after:?}"));
    }
    if verify(&world, &good).await.json()["valid"] != true {
        failures.push("the good key no longer verifies".into());
    }
    let total: usize = tried.values().sum();
    println!("bad inputs tried: {total} {tried:?} in {walked:?}; KV records: {}", kv_before.len());
    assert!(failures.is_empty(), "{} failures over {total} rows:\n{}", failures.len(), failures.join("\n"));
    assert!(total >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_replayed_and_reordered_pushes_never_undo_a_change() {
    let world = World::start("replication").await;
    let edge = &world.edge;
    let (good, _) = world.key(&["query:read"]).await;
    let (revoked, revoked_id) = world.revoked_key().await;
    world.replicated().await;
    let revoked_key = ApiKey::parse(revoked.clone()).unwrap();
    let revoked_seq = world.outbox().await.iter().filter(|(_, id, _)| id.to_string() == revoked_id).map(|r| r.0).max();
    let revoked_seq = u64::try_from(revoked_seq.unwrap()).unwrap();
    let applied = |applied: usize, ignored: usize| (200u16, json!({"applied": applied, "ignored": ignored}));
    let sent = |answer: (u16, String)| (answer.0, serde_json::from_str::<Value>(&answer.1).unwrap_or(Value::Null));
    let refused = |code: &str| (401u16, json!({"error": {"code": code}}));
    // What the edge lets a key do: (query status, mutation status).
    let can = |key: &ApiKey| {
        let key = key.expose().to_owned();
        async move { (through_edge(edge, Some(&key), QUERY).await.0, through_edge(edge, Some(&key), MUTATION).await.0) }
    };

    // A key only the edge knows, so the test owns its seq numbers. Read-only, then everything.
    let owned = fresh_key();
    let forged = SignedPush::new(vec![record(&owned, 1, &["*"], false, None)], now(), "guessed-secret");
    assert_eq!(sent(forged.send(edge).await), refused("bad_signature"), "a forged push");
    let stale = SignedPush::new(vec![record(&owned, 1, &["*"], false, None)], now() - 301, SYNC_SECRET);
    assert_eq!(sent(stale.send(edge).await), refused("stale_timestamp"), "a push signed 301 s ago");
    // 302, not 301: the edge's clock may tick once between signing and checking.
    let early = SignedPush::new(vec![record(&owned, 1, &["*"], false, None)], now() + 302, SYNC_SECRET);
    assert_eq!(sent(early.send(edge).await), refused("stale_timestamp"), "a push signed 302 s ahead");
    assert_eq!(can(&owned).await, (401, 401), "a refused push admitted a key");

    let first = SignedPush::new(vec![record(&owned, 1, &["query:read"], false, None)], now(), SYNC_SECRET);
    let second = SignedPush::new(vec![record(&owned, 2, &["*"], false, None)], now(), SYNC_SECRET);
    assert_eq!(sent(first.send(edge).await), applied(1, 0));
    assert_eq!(can(&owned).await, (200, 403));
    assert_eq!(sent(second.send(edge).await), applied(1, 0));
    assert_eq!(can(&owned).await, (200, 200));
    // The earlier push again, byte for byte and still inside the clock window: ignored.
    assert_eq!(sent(first.send(edge).await), applied(0, 1), "a replayed push");
    assert_eq!(can(&owned).await, (200, 200), "a replay undid a change");

    // Reordered within one push: seq 4 (read-only) then seq 3 (everything); seq 4 holds.
    let reordered = vec![record(&owned, 4, &["query:read"], false, None), record(&owned, 3, &["*"], false, None)];
    assert_eq!(sent(push(edge, reordered, now(), SYNC_SECRET).await), applied(1, 1), "seq 4 then seq 3");
    assert_eq!(can(&owned).await, (200, 403), "an older record in the same push won");
    // Reordered across pushes: seq 6 then seq 5; and the same seq again with other content.
    assert_eq!(sent(push(edge, vec![record(&owned, 6, &["*"], false, None)], now(), SYNC_SECRET).await), applied(1, 0));
    let older = record(&owned, 5, &["query:read"], false, None);
    assert_eq!(sent(push(edge, vec![older], now(), SYNC_SECRET).await), applied(0, 1), "seq 5 after seq 6");
    let same = record(&owned, 6, &["query:read"], true, None);
    assert_eq!(sent(push(edge, vec![same], now(), SYNC_SECRET).await), applied(0, 1), "seq 6 again");
    assert_eq!(can(&owned).await, (200, 200), "the latest record does not hold");

    // The owned key revoked at seq 7; replaying the seq-6 state afterwards does not bring it back.
    let revocation = SignedPush::new(vec![record(&owned, 7, &["*"], true, None)], now(), SYNC_SECRET);
    assert_eq!(sent(revocation.send(edge).await), applied(1, 0));
    assert_eq!(can(&owned).await, (401, 401));
    assert_eq!(sent(second.send(edge).await), applied(0, 1), "a replay after a revocation");
    let unrevoke = vec![record(&owned, 7, &["*"], false, None), record(&owned, 1, &["*"], false, None)];
    assert_eq!(sent(push(edge, unrevoke, now(), SYNC_SECRET).await), applied(0, 2));
    assert_eq!(can(&owned).await, (401, 401), "a revocation was undone");

    // A key the control plane revoked: lower and equal seqs claiming it is not revoked are ignored;
    // a higher one that is forged or stale is refused.
    for seq in [1, revoked_seq - 1, revoked_seq] {
        let claim = record(&revoked_key, seq, &["*"], false, None);
        assert_eq!(sent(push(edge, vec![claim], now(), SYNC_SECRET).await), applied(0, 1), "seq {seq}");
    }
    let higher = vec![record(&revoked_key, revoked_seq + 1_000, &["*"], false, None)];
    assert_eq!(sent(push(edge, higher.clone(), now(), "guessed-secret").await), refused("bad_signature"));
    assert_eq!(sent(push(edge, higher, now() - 3_600, SYNC_SECRET).await), refused("stale_timestamp"));
    assert_eq!(can(&revoked_key).await, (401, 401), "a revocation was undone");
    assert_eq!(verify(&world, &revoked).await.json()["valid"], false);

    // The good key is as the control plane made it, and the edge's KV holds the latest records.
    assert_eq!(through_edge(edge, Some(&good), QUERY).await.0, 200);
    assert_eq!(through_edge(edge, Some(&good), MUTATION).await.0, 403);
    let kv = edge.kv_records();
    let held = |key: &ApiKey| serde_json::from_str::<KeyRecord>(&kv[&key.key_id().to_string()]).unwrap();
    assert_eq!(held(&owned), record(&owned, 7, &["*"], true, None));
    let revoked_record = held(&revoked_key);
    assert_eq!((revoked_record.seq, revoked_record.revoked), (revoked_seq, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_wrong_revoked_and_expired_keys_get_byte_identical_answers() {
    let world = World::start("same-answer").await;
    let (good, good_id) = world.key(&["*"]).await;
    let (revoked, _) = world.revoked_key().await;
    let unknown = fresh_key();
    let wrong = ApiKey::assemble(
        &Prefix::default(),
        &Region::default(),
        KeyId::from_str(&good_id).unwrap(),
        &KeySecret::generate(&mut rand_core::OsRng),
    );
    // Expired at the control plane: made by a service whose clock stands two days back, for one day.
    // Its record reaches the edge through the replicator like any other.
    let past = Service::new(
        world.store.clone(),
        world.kms.clone(),
        Arc::new(ManualClock::at(now() - 2 * DAY)),
        Box::new(rand_core::OsRng),
        Settings::default(),
    );
    let new_key = NewKey {
        name: "expired".into(),
        tier: "default".into(),
        permissions: vec!["*".into()],
        expires_in_days: Some(1),
        ..NewKey::default()
    };
    let expired = past.create(&Actor::Cli, new_key).await.unwrap().key;
    world.replicated().await;
    // Expired at the edge only: a record pushed straight to it, past its expiry.
    let expired_at_edge = fresh_key();
    let pushed = record(&expired_at_edge, 1, &["*"], false, Some(now() - 1));
    assert_eq!(push(&world.edge, vec![pushed], now(), SYNC_SECRET).await.0, 200);

    let bad_keys: Vec<(&str, String)> = vec![
        ("unknown", unknown.expose().to_owned()),
        ("wrong secret", wrong.expose().to_owned()),
        ("revoked", revoked.clone()),
        ("expired", expired.expose().to_owned()),
        ("expired at the edge", expired_at_edge.expose().to_owned()),
        ("malformed", "garbage".to_owned()),
        ("failed checksum", bad_checksum(&good)),
    ];
    assert_eq!(at_edge(&world, &good, QUERY).await.status, 200);
    let mut edge_answers = Vec::new();
    for (what, key) in &bad_keys {
        edge_answers.push((*what, at_edge(&world, key, QUERY).await));
    }
    let (_, first) = &edge_answers[0];
    assert_eq!(first.status, 401, "{}", first.text());
    assert_eq!(first.headers.get("www-authenticate").map(String::as_str), Some("ApiKey header=\"X-API-Key\""));
    assert_eq!(first.headers.get("content-type").map(String::as_str), Some("application/json"));
    for (what, answer) in &edge_answers {
        let seen = (answer.status, answer.headers_but_date(), &answer.body);
        assert_eq!(seen, (first.status, first.headers_but_date(), &first.body), "the edge told {what} apart");
    }

    // The verify API: the same for every bad key the control plane can tell apart (the key expired
    // at the edge only is merely unknown here, and still checked).
    assert_eq!(verify(&world, &good).await.json()["valid"], true);
    let mut verify_answers = Vec::new();
    for (what, key) in &bad_keys {
        verify_answers.push((*what, verify(&world, key).await));
    }
    let (_, first) = &verify_answers[0];
    assert_eq!((first.status, first.json()), (200, json!({"valid": false, "code": "invalid_key"})));
    assert_eq!(first.headers.get("content-type").map(String::as_str), Some("application/json"));
    for (what, answer) in &verify_answers {
        let seen = (answer.status, answer.headers_but_date(), &answer.body);
        assert_eq!(seen, (first.status, first.headers_but_date(), &first.body), "verify told {what} apart");
    }
    println!("same answer at the edge and at verify for: {:?}", bad_keys.iter().map(|k| k.0).collect::<Vec<_>>());
}

/// The edge holds off a client that sends too many bad keys: after `FAILED_ATTEMPTS_PER_MINUTE` 401s,
/// the next request gets 429 with `Retry-After`, even with a good key, and no record is read for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_holds_off_a_client_after_too_many_bad_keys() {
    let (origin, origin_url) = start_origin().await;
    let edge = Edge::start_with("security-attempts", &origin_url, &[("FAILED_ATTEMPTS_PER_MINUTE", "3")]);
    let good = fresh_key();
    let (status, body) = push(&edge, vec![record(&good, 1, &["query:read"], false, None)], now(), SYNC_SECRET).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(through_edge(&edge, Some(good.expose()), QUERY).await.0, 200, "a good key before any failure");

    let wrong = bad_checksum(good.expose());
    for _ in 0..3 {
        assert_eq!(through_edge(&edge, Some(&wrong), QUERY).await.0, 401);
    }
    let reached = origin.reached();
    let (status, headers, body) = through_edge(&edge, Some(good.expose()), QUERY).await;
    assert_eq!(status, 429, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    let retry_after: i64 = headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(origin.reached(), reached, "nothing forwarded while held off");
}

/// An origin that does not answer gets the client a 502 with a code and nothing more, and the operator a
/// log line naming the key id and the error: never the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_does_not_answer_is_a_502_the_operator_can_read_about() {
    // A port nothing listens on.
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let edge = Edge::start_with("security-origin-down", &closed, &[("FAILED_ATTEMPTS_PER_MINUTE", "0")]);
    let good = fresh_key();
    let (status, body) = push(&edge, vec![record(&good, 1, &["query:read"], false, None)], now(), SYNC_SECRET).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = through_edge(&edge, Some(good.expose()), QUERY).await;
    assert_eq!(status, 502, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "ORIGIN_UNAVAILABLE");
    let expected = format!("origin fetch failed for key {}", good.key_id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !edge.log().contains(&expected) {
        assert!(Instant::now() < deadline, "no log line {expected:?}:\n{}", edge.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!edge.log().contains(good.expose()), "the key reached the edge's log");
}
