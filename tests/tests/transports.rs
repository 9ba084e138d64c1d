//! GraphQL as clients really send it, through the edge in workerd: subscriptions over WebSocket (both
//! `graphql-transport-ws` and the legacy `graphql-ws`) and Apollo's persisted queries. The origin is
//! graphql-yoga with graphql-ws, subscriptions-transport-ws and `@graphql-yoga/plugin-apq`; the
//! clients are the `graphql-ws` and `subscriptions-transport-ws` libraries (`tests/graphql-node`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keygate_shared::{sha256_hex, KeyRecord, ParsedKey, PermissionSet, SecretEntry};
use serde_json::{json, Value};
use support::control_plane::ControlPlane;
use support::edge::{Edge, EdgeOptions, SignedPush};
use support::graphql_node::{NodeClient, NodeOrigin};
use support::{http, SYNC_SECRET};

const TRANSPORT_WS: &str = "graphql-transport-ws";
const LEGACY_WS: &str = "graphql-ws";
const TICKS: &str = "subscription Ticks { ticks(intervalMs: 20) }";
const BUMP: &str = "mutation Bump { bump }";
const HELLO: &str = "query Hello { hello }";

/// A graphql-yoga origin, the edge in front of it and a control plane on SQLite replicating to it.
struct Stack {
    origin: NodeOrigin,
    edge: Edge,
    plane: ControlPlane,
}

impl Stack {
    async fn start(name: &str) -> Self {
        Self::start_with(name, &[]).await
    }

    /// The stack, with these vars for the edge too.
    async fn start_with(name: &str, more_vars: &[(&str, &str)]) -> Self {
        let origin = NodeOrigin::start();
        // Refused keys are part of these tests: the failed-attempts limit would turn later ones into 429s.
        let mut vars = vec![("FAILED_ATTEMPTS_PER_MINUTE", "0")];
        vars.extend_from_slice(more_vars);
        let edge = Edge::start_with_options(name, &origin.url, &EdgeOptions { vars: &vars, ..EdgeOptions::default() });
        let dir = std::env::temp_dir().join(format!("keygate-e2e-transports-{name}-{}", std::process::id()));
        let plane = ControlPlane::on_sqlite(&dir, &edge.url).await;
        Self { origin, edge, plane }
    }

    /// A key with these permissions, once the edge admits it (and can sign the origin's JWT).
    async fn key(&self, permissions: &[&str]) -> (String, String) {
        let (key, key_id) = self.plane.create(json!({"name": "transports", "permissions": permissions})).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = self.post(&key, json!({"query": "{ __typename }"})).await;
            // A key that may not run queries is known once it is forbidden rather than unauthenticated.
            if status == 200 || status == 403 {
                return (key, key_id);
            }
            assert!(Instant::now() < deadline, "the key never reached the edge: {}", self.edge.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A GraphQL POST through the edge: status and JSON answer.
    async fn post(&self, key: &str, body: Value) -> (u16, Value) {
        let response = http()
            .post(format!("{}/graphql", self.edge.url))
            .header("X-API-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A GraphQL GET through the edge with these parameters.
    async fn get(&self, key: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let response = http()
            .get(format!("{}/graphql", self.edge.url))
            .header("X-API-Key", key)
            .query(params)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn ws_url(&self) -> String {
        format!("{}/graphql", self.edge.url.replacen("http", "ws", 1))
    }

    /// Operations the origin ran of this type (`query`, `mutation`, `subscription`).
    async fn origin_ran(&self, kind: &str) -> Vec<Value> {
        let log = self.origin.log().await;
        log["operations"].as_array().unwrap().iter().filter(|op| op["type"] == kind).cloned().collect()
    }

    async fn origin_upgrades(&self) -> Vec<Value> {
        self.origin.log().await["upgrades"].as_array().unwrap().clone()
    }
}

/// A client spec: this subprotocol, the key in the upgrade's header or in `connection_init`.
fn spec(url: &str, protocol: &str, key: KeyIn<'_>, operations: Value) -> Value {
    let mut spec = json!({"url": url, "protocol": protocol, "operations": operations, "timeoutMs": 10_000});
    match key {
        KeyIn::Header(key) => spec["headers"] = json!({"X-API-Key": key}),
        KeyIn::Init(key) => spec["connectionParams"] = json!({"X-API-Key": key, "locale": "fr"}),
        KeyIn::Nowhere => {}
    }
    spec
}

#[derive(Clone, Copy)]
enum KeyIn<'a> {
    Header(&'a str),
    Init(&'a str),
    Nowhere,
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Verifies the origin's JWT as an origin would, with `jsonwebtoken` against the JWKS: its claims.
fn verify(token: &str, jwks: &Value) -> Value {
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let key = DecodingKey::from_jwk(set.find(&kid).expect("the token's kid is in the JWKS")).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["graphql"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap().claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_stream_through_the_edge_with_the_origins_identity_and_never_the_key() {
    let stack = Stack::start("ws-stream").await;
    let (key, key_id) = stack.key(&["subscription:read"]).await;
    let jwks = stack.plane.jwks().await;
    let ticks = json!([{"id": "t", "query": TICKS, "take": 10}]);

    for protocol in [TRANSPORT_WS, LEGACY_WS] {
        for key_in in [KeyIn::Header(&key), KeyIn::Init(&key)] {
            stack.origin.reset().await;
            let mut spec = spec(&stack.ws_url(), protocol, key_in, ticks.clone());
            // graphql-transport-ws clients ping; the origin's pongs come back through the edge.
            spec["keepAliveMs"] = json!(30);
            let events = NodeClient::run(&spec);
            let values: Vec<i64> =
                of_kind(&events, "next").iter().map(|e| e["data"]["ticks"].as_i64().unwrap()).collect();
            let expected: Vec<i64> = (1..=10).collect();
            assert_eq!(values, expected, "{protocol}: the subscription streams: {events:?}\n{}", stack.edge.log());
            if protocol == TRANSPORT_WS {
                let pongs = of_kind(&events, "pong");
                assert!(pongs.iter().any(|p| p["received"] == true), "ping and pong pass through: {events:?}");
            }
            // The client's complete (legacy: stop) after ten reached the origin, which ended the stream.
            let deadline = Instant::now() + Duration::from_secs(3);
            while stack.origin.log().await["completes"].as_array().unwrap().is_empty() {
                assert!(Instant::now() < deadline, "{protocol}: the client's complete never reached the origin");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }

            let upgrades = stack.origin_upgrades().await;
            assert_eq!(upgrades.len(), 1, "{protocol}: one socket to the origin");
            let headers = &upgrades[0]["headers"];
            assert_eq!(upgrades[0]["protocol"], protocol);
            assert!(headers.get("x-api-key").is_none(), "the key never reaches the origin: {headers}");
            assert_eq!(headers["x-keygate-key-id"], key_id.as_str());
            let token = headers["authorization"].as_str().unwrap().strip_prefix("Bearer ").unwrap();
            let claims = verify(token, &jwks);
            assert_eq!(claims["sub"], key_id.as_str());
            assert_eq!(claims["scope"], "subscription:read");
            let inits = stack.origin.log().await["inits"].clone();
            assert!(!inits.to_string().contains(&key), "the connection_init key is taken out: {inits}");
            if let KeyIn::Init(_) = key_in {
                assert_eq!(inits[0]["locale"], "fr", "the rest of the init payload goes on");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_over_the_socket_needs_its_own_permission_and_bad_keys_open_nothing() {
    let stack = Stack::start("ws-check").await;
    let (subscriber, _) = stack.key(&["subscription:read"]).await;
    let (writer, _) = stack.key(&["mutation:write", "subscription:read"]).await;

    for protocol in [TRANSPORT_WS, LEGACY_WS] {
        // A subscription-only key: its mutation and query get an error for their id and never run.
        stack.origin.reset().await;
        let operations =
            json!([{"id": "m", "query": BUMP}, {"id": "q", "query": HELLO}, {"id": "s", "query": TICKS, "take": 1}]);
        let events = NodeClient::run(&spec(&stack.ws_url(), protocol, KeyIn::Header(&subscriber), operations));
        let errors = of_kind(&events, "error");
        let refused: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e["id"].as_str().unwrap(), e["errors"][0]["extensions"]["code"].as_str().unwrap()))
            .collect();
        assert_eq!(refused, [("m", "FORBIDDEN"), ("q", "FORBIDDEN")], "{protocol}: {events:?}");
        assert_eq!(of_kind(&events, "next").len(), 1, "the subscription on the same socket still runs");
        assert!(stack.origin_ran("mutation").await.is_empty(), "{protocol}: the mutation never reached the origin");
        assert!(stack.origin_ran("query").await.is_empty());
        assert_eq!(stack.origin.log().await["counter"], 0);

        // A key that may: the same mutation runs once.
        let events = NodeClient::run(&spec(
            &stack.ws_url(),
            protocol,
            KeyIn::Header(&writer),
            json!([{"id": "m", "query": BUMP}]),
        ));
        assert_eq!(of_kind(&events, "next")[0]["data"]["bump"], 1, "{protocol}: {events:?}");
        assert_eq!(stack.origin_ran("mutation").await.len(), 1);
    }

    // Bad keys: a refused upgrade in the header, a 4403 close for connection_init; no socket to the origin.
    stack.origin.reset().await;
    let mut forged = subscriber.clone();
    forged.replace_range(forged.len() - 12..forged.len() - 8, "AAAA");
    let ticks = json!([{"id": "t", "query": TICKS, "take": 1}]);
    for protocol in [TRANSPORT_WS, LEGACY_WS] {
        let header = NodeClient::run(&spec(&stack.ws_url(), protocol, KeyIn::Header(&forged), ticks.clone()));
        let rejected = of_kind(&header, "rejected");
        assert_eq!(rejected.first().map(|r| r["status"].clone()), Some(json!(401)), "{protocol}: {header:?}");
        for key_in in [KeyIn::Init(&forged), KeyIn::Nowhere] {
            let events = NodeClient::run(&spec(&stack.ws_url(), protocol, key_in, ticks.clone()));
            let closed = of_kind(&events, "closed");
            assert_eq!(closed.first().map(|c| c["code"].clone()), Some(json!(4403)), "{protocol}: {events:?}");
            assert!(of_kind(&events, "next").is_empty());
        }
    }
    assert!(stack.origin_upgrades().await.is_empty(), "no bad key opened a socket to the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_closes_its_sockets_and_closes_pass_through() {
    let stack = Stack::start("ws-revoke").await;
    let (key, key_id) = stack.key(&["subscription:read"]).await;

    for protocol in [TRANSPORT_WS, LEGACY_WS] {
        // The origin closes: the client sees the origin's own code.
        let mut client = NodeClient::start(&spec(
            &stack.ws_url(),
            protocol,
            KeyIn::Header(&key),
            json!([{"id": "t", "query": TICKS}]),
        ));
        assert!(client.wait_for("next", Duration::from_secs(10)).is_some(), "{protocol}: {:?}", client.events());
        assert_eq!(stack.origin.close_sockets(4499, "origin says bye").await, 1);
        let closed = client.wait_for("closed", Duration::from_secs(5)).expect("the client's socket closed too");
        assert_eq!((closed["code"].as_i64(), closed["reason"].as_str()), (Some(4499), Some("origin says bye")));
        drop(client);

        // The client goes away: the origin's socket closes too, not left open.
        stack.origin.reset().await;
        let mut client = NodeClient::start(&spec(
            &stack.ws_url(),
            protocol,
            KeyIn::Init(&key),
            json!([{"id": "t", "query": TICKS}]),
        ));
        assert!(client.wait_for("next", Duration::from_secs(10)).is_some());
        drop(client); // kills the client process: its socket vanishes without a close frame
        let deadline = Instant::now() + Duration::from_secs(5);
        while stack.origin.log().await["closes"].as_array().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{protocol}: the origin's socket outlived its client");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Revoked mid-stream: closed with 4403 within 2 s of the change reaching the edge.
    let mut clients: Vec<NodeClient> = [TRANSPORT_WS, LEGACY_WS]
        .into_iter()
        .map(|protocol| {
            NodeClient::start(&spec(
                &stack.ws_url(),
                protocol,
                KeyIn::Header(&key),
                json!([{"id": "t", "query": TICKS}]),
            ))
        })
        .collect();
    for client in &mut clients {
        assert!(client.wait_for("next", Duration::from_secs(10)).is_some(), "{:?}", client.events());
    }
    stack.origin.reset().await;
    stack.plane.admin(&format!("/admin/api-keys/{key_id}/revoke"), json!({"reason": "test"})).await;
    let revoked_at = Instant::now();
    // The push reaching the edge: the key is refused over HTTP from then on.
    while stack.post(&key, json!({"query": "{ __typename }"})).await.0 != 401 {
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "the revocation never reached the edge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached_edge = revoked_at.elapsed();
    for client in &mut clients {
        let closed = client.wait_for("closed", Duration::from_secs(4)).expect("the socket of a revoked key closes");
        assert_eq!(closed["code"], 4403, "{closed}");
        let after = revoked_at.elapsed().saturating_sub(reached_edge);
        println!("closed {after:?} after the revocation reached the edge ({reached_edge:?} after the API call)");
        assert!(after < Duration::from_secs(2), "closed {after:?} after the revocation reached the edge");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while stack.origin.log().await["closes"].as_array().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the origin's sockets stayed open after the revocation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_expires_mid_stream_closes_its_sockets() {
    let stack = Stack::start("ws-expiry").await;
    let (key, _) = stack.key(&["subscription:read"]).await;
    // The key's record as the control plane would send it, but expiring in a few seconds (the API's
    // shortest life is a day): pushed, signed, with a sequence number above the control plane's.
    let parsed = ParsedKey::parse(&key).unwrap();
    let expires_at = support::now() + 4;
    let record = KeyRecord {
        key_id: parsed.key_id(),
        seq: 1 << 40,
        tier: "default".into(),
        permissions: PermissionSet::parse(["subscription:read"]).unwrap(),
        expires_at: Some(expires_at),
        revoked: false,
        disabled: false,
        secrets: vec![SecretEntry { hash: parsed.hash(), not_after: None }],
        owner: None,
    };
    let (status, body) = SignedPush::new(vec![record], support::now(), SYNC_SECRET).send(&stack.edge).await;
    assert_eq!(status, 200, "{body}");

    let mut clients: Vec<NodeClient> = [TRANSPORT_WS, LEGACY_WS]
        .into_iter()
        .map(|protocol| {
            let mut spec = spec(&stack.ws_url(), protocol, KeyIn::Header(&key), json!([{"id": "t", "query": TICKS}]));
            spec["timeoutMs"] = json!(15_000);
            NodeClient::start(&spec)
        })
        .collect();
    for client in &mut clients {
        assert!(client.wait_for("next", Duration::from_secs(10)).is_some(), "{:?}", client.events());
    }
    for client in &mut clients {
        let closed = client.wait_for("closed", Duration::from_secs(10)).expect("the socket of an expired key closes");
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert_eq!(closed["code"], 4403, "{closed}");
        let late = at - expires_at as f64;
        println!("closed {late:.3} s after the key expired");
        assert!((-0.1..2.0).contains(&late), "closed {late:.3} s after the key expired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_its_socket_is_closed() {
    // 20 messages a second after a burst of 40. The client sends each query once the last one is
    // answered, so how fast it floods is the machine's round trip: on a busy host, about 190 a second.
    // At the default rate (100 a second, a burst of 200) 300 queries at that pace stay within the limit;
    // at 20 a second any pace above about 25 a second is a flood.
    const RATE: usize = 20;
    let stack = Stack::start_with("ws-flood", &[("WS_MESSAGES_PER_SEC", &RATE.to_string())]).await;
    let (key, _) = stack.key(&["query:read"]).await;
    // 300 queries back to back: past the burst the socket closes.
    let operations: Vec<Value> = (0..300).map(|i| json!({"id": format!("q{i}"), "query": HELLO})).collect();
    let events = NodeClient::run(&spec(&stack.ws_url(), TRANSPORT_WS, KeyIn::Header(&key), json!(operations)));
    let closed = of_kind(&events, "closed");
    assert_eq!(closed.first().map(|c| c["code"].clone()), Some(json!(4429)), "{:?}", events.last());
    // The burst passes (less the connection's own messages), and not every query.
    let answered = of_kind(&events, "next").len();
    assert!((2 * RATE - 2..300).contains(&answered), "{answered} answered before the close");
}

/// An APQ request body: the hash, and the document when `with_document`.
fn persisted(document: &str, with_document: bool) -> Value {
    let mut body = json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256_hex(document)}}});
    if with_document {
        body["query"] = document.into();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_queries_register_at_the_edge_and_a_remembered_mutation_stays_a_mutation() {
    let stack = Stack::start("apq").await;
    let (reader, _) = stack.key(&["query:read"]).await;
    let (writer, _) = stack.key(&["query:read", "mutation:write"]).await;
    stack.origin.reset().await;

    // Unknown hash: Apollo's answer from the edge, and the origin never asked.
    let (status, body) = stack.post(&reader, persisted(HELLO, false)).await;
    assert_eq!(status, 200);
    assert_eq!(body["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND", "{body}");
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");
    assert!(stack.origin_ran("query").await.is_empty());

    // Registration: the document with its hash runs and is remembered.
    let (status, body) = stack.post(&reader, persisted(HELLO, true)).await;
    assert_eq!((status, &body["data"]["hello"]), (200, &json!("world")), "{body}");

    // The hash alone, over POST and GET, classified from the remembered document and forwarded as sent.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = stack.post(&reader, persisted(HELLO, false)).await;
        if status == 200 && body["data"]["hello"] == "world" {
            break;
        }
        assert!(Instant::now() < deadline, "the hash alone never worked: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let extensions = persisted(HELLO, false)["extensions"].to_string();
    let (status, body) = stack.get(&reader, &[("extensions", &extensions)]).await;
    assert_eq!((status, &body["data"]["hello"]), (200, &json!("world")), "GET: {body}");
    assert!(stack.origin_ran("query").await.len() >= 3);

    // The document is in KV under its hash, for the other isolates and edges.
    let stored = stack.edge.kv_records();
    assert_eq!(stored.get(&format!("apq:{}", sha256_hex(HELLO))).map(String::as_str), Some(HELLO));

    // A wrong hash: 400, nothing runs, nothing is remembered.
    let lie =
        json!({"query": BUMP, "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256_hex("{ other }")}}});
    let (status, body) = stack.post(&writer, lie).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(stack.origin.log().await["counter"], 0);

    // A mutation registered by a key that may run it stays a mutation for a read-only key.
    let (status, body) = stack.post(&writer, persisted(BUMP, true)).await;
    assert_eq!((status, &body["data"]["bump"]), (200, &json!(1)), "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = stack.post(&reader, persisted(BUMP, false)).await;
        if status == 403 {
            assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN");
            break;
        }
        assert_eq!(body["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND", "{status} {body}");
        assert!(Instant::now() < deadline, "the remembered mutation was never found");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stack.origin.log().await["counter"], 1, "the read-only key's hash-only mutation never ran");
    let (status, body) = stack.post(&writer, persisted(BUMP, false)).await;
    assert_eq!((status, &body["data"]["bump"]), (200, &json!(2)), "the writer's hash-only mutation runs: {body}");
}
