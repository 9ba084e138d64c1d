//! The control plane's JSON request bodies on arbitrary input, through the real axum router.
//!
//! The body types (`CreateKeyRequest`, `UpdateKeyRequest`, `RotateRequest`, `RevokeRequest`, `VerifyRequest`) are public, but
//! their fields are not, and deserializing them alone would skip the handlers' validation, where the
//! input matters. So one service over an in-memory SQLite store and the local KMS is built per
//! process, and each input (its first byte picks the route, the rest is the body) is sent with the
//! bootstrap admin key and `Content-Type: application/json` to `POST /admin/api-keys`,
//! `PATCH /admin/api-keys/{id}`, `POST /admin/api-keys/{id}/rotate`, `/revoke`, `/reveal` or
//! `POST /v1/keys/verify`. Checked:
//!
//! - no handler panics and no answer is a 5xx (the store and KMS are in-process and always up);
//! - every answer's body is JSON;
//! - the status agrees with the body type: a body that does not deserialize as the route's type is a
//!   400 or 422 (an empty one means the defaults where the body is optional), a success deserializes,
//!   a created key parses as a v1 key.
//!
//! The rotate and revoke targets are replaced by fresh keys now and then, so the per-input work stays
//! small (a reroll reads every generation of its key); the whole control plane is replaced every
//! [`INPUTS_PER_APP`] inputs, as its database only grows (audit log, outbox) and a long run would
//! otherwise creep toward the RSS limit.

#![no_main]

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use keygate_control_plane::api::admin::{CreateKeyRequest, RevokeRequest, RotateRequest, UpdateKeyRequest};
use keygate_control_plane::api::ops::VerifyRequest;
use keygate_control_plane::clock::ManualClock;
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::service::{Actor, NewKey, Service, Settings};
use keygate_control_plane::store::{SqlStore, Store};
use keygate_shared::ParsedKey;
use libfuzzer_sys::fuzz_target;
use rand_core::OsRng;
use serde_json::Value;
use tokio::runtime::Runtime;
use tower::ServiceExt;

/// The service's clock stands still here, well inside every key's lifetime.
const T0: i64 = 1_800_000_000;
/// Rerolls of one rotate target before a fresh key takes its place.
const MAX_ROTATIONS: u32 = 8;
/// Successful revocations of one revoke target (the first revokes, the next finds it revoked).
const MAX_REVOCATIONS: u32 = 2;
/// Inputs one control plane serves before a fresh one takes its place.
const INPUTS_PER_APP: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Create,
    Update,
    Rotate,
    Revoke,
    Reveal,
    Verify,
}

const ROUTES: [Route; 6] =
    [Route::Create, Route::Update, Route::Rotate, Route::Revoke, Route::Reveal, Route::Verify];

/// The keys the id routes act on, and how often they have been acted on.
struct Targets {
    /// Never revoked, so an update of it is refused only for its body.
    update: String,
    rotate: String,
    rotations: u32,
    revoke: String,
    revocations: u32,
    reveal: String,
}

/// A control plane, and the inputs it has served.
struct App {
    runtime: Runtime,
    service: Arc<Service>,
    router: Router,
    authorization: String,
    targets: Targets,
    served: u32,
}

/// Setup failures are the harness's, not keygate's: stop loudly.
fn setup<T, E: Debug>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("fuzz setup: {what}: {error:?}"),
    }
}

/// A fresh key with a read permission; its id.
async fn new_target(service: &Service, name: &str) -> String {
    let request = NewKey {
        name: name.into(),
        tier: "default".into(),
        permissions: vec!["query:read".into()],
        ..NewKey::default()
    };
    setup(service.create(&Actor::Cli, request).await, "create a target key").key.key_id().to_string()
}

impl App {
    fn new() -> Self {
        // One thread: the handlers, the store's writer task and the fuzzer take turns.
        let runtime = setup(tokio::runtime::Builder::new_current_thread().enable_all().build(), "tokio runtime");
        let (service, admin, targets) = runtime.block_on(async {
            let store: Arc<dyn Store> =
                Arc::new(setup(SqlStore::connect_sqlite("sqlite::memory:").await, "in-memory SQLite"));
            setup(store.migrate().await, "migrations");
            let kms = Arc::new(LocalKms::from_master_key(&[0x42; 32], OsRng));
            let clock = Arc::new(ManualClock::at(T0));
            let service = Arc::new(Service::new(store, kms, clock, Box::new(OsRng), Settings::default()));
            let admin = setup(service.bootstrap_admin().await, "admin bootstrap").key.expose().to_owned();
            let targets = Targets {
                update: new_target(&service, "fuzz update target").await,
                rotate: new_target(&service, "fuzz rotate target").await,
                rotations: 0,
                revoke: new_target(&service, "fuzz revoke target").await,
                revocations: 0,
                reveal: new_target(&service, "fuzz reveal target").await,
            };
            (service, admin, targets)
        });
        let router = keygate_control_plane::api::router(service.clone());
        Self { runtime, service, router, authorization: format!("Bearer {admin}"), targets, served: 0 }
    }

    fn path(&self, route: Route) -> String {
        let targets = &self.targets;
        match route {
            Route::Create => "/admin/api-keys".into(),
            Route::Update => format!("/admin/api-keys/{}", targets.update),
            Route::Rotate => format!("/admin/api-keys/{}/rotate", targets.rotate),
            Route::Revoke => format!("/admin/api-keys/{}/revoke", targets.revoke),
            Route::Reveal => format!("/admin/api-keys/{}/reveal", targets.reveal),
            Route::Verify => "/v1/keys/verify".into(),
        }
    }

    /// Counts a success on a target, and puts a fresh key in its place once it has had its share.
    fn acted_on(&mut self, route: Route) {
        let targets = &mut self.targets;
        match route {
            Route::Rotate => {
                targets.rotations += 1;
                if targets.rotations >= MAX_ROTATIONS {
                    targets.rotate = self.runtime.block_on(new_target(&self.service, "fuzz rotate target"));
                    targets.rotations = 0;
                }
            }
            Route::Revoke => {
                targets.revocations += 1;
                if targets.revocations >= MAX_REVOCATIONS {
                    targets.revoke = self.runtime.block_on(new_target(&self.service, "fuzz revoke target"));
                    targets.revocations = 0;
                }
            }
            Route::Create | Route::Update | Route::Reveal | Route::Verify => {}
        }
    }

    /// One request through the router: status and body bytes.
    fn send(&self, method: Method, path: &str, body: &[u8]) -> (StatusCode, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, &self.authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body.to_vec()));
        let Ok(request) = request else {
            panic!("harness: request to {path} does not build");
        };
        self.runtime.block_on(async {
            let Ok(response) = self.router.clone().oneshot(request).await;
            let (parts, body) = response.into_parts();
            let Ok(bytes) = to_bytes(body, usize::MAX).await else {
                panic!("the answer's body to {path} could not be read");
            };
            (parts.status, bytes.to_vec())
        })
    }
}

/// Whether `body` deserializes as the route's request type, as the handler's JSON extractor would.
fn decodes(route: Route, body: &[u8]) -> bool {
    match route {
        Route::Create => serde_json::from_slice::<CreateKeyRequest>(body).is_ok(),
        Route::Update => serde_json::from_slice::<UpdateKeyRequest>(body).is_ok(),
        Route::Rotate => serde_json::from_slice::<RotateRequest>(body).is_ok(),
        Route::Revoke => serde_json::from_slice::<RevokeRequest>(body).is_ok(),
        Route::Verify => serde_json::from_slice::<VerifyRequest>(body).is_ok(),
        // Reveal reads no body.
        Route::Reveal => true,
    }
}

/// The current control plane, built on first use and replaced after [`INPUTS_PER_APP`] inputs.
fn with_app(f: impl FnOnce(&mut App)) {
    static APP: Mutex<Option<App>> = Mutex::new(None);
    let mut slot = APP.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.as_ref().is_none_or(|app| app.served >= INPUTS_PER_APP) {
        // The old one (runtime, pool, in-memory database) goes before the new one is built.
        *slot = None;
        *slot = Some(App::new());
    }
    if let Some(app) = slot.as_mut() {
        app.served += 1;
        f(app);
    }
}

/// Sends `body` to `route` and checks the answer.
fn fuzz_one(app: &mut App, route: Route, body: &[u8]) {
    let path = app.path(route);
    let method = if route == Route::Update { Method::PATCH } else { Method::POST };
    let (status, answer) = app.send(method, &path, body);

    assert!(!status.is_server_error(), "{route:?} answered {status}: {}", String::from_utf8_lossy(&answer));
    let Ok(json) = serde_json::from_slice::<Value>(&answer) else {
        panic!("{route:?} answered {status} with a body that is not JSON: {:?}", String::from_utf8_lossy(&answer));
    };

    // An empty body means the defaults where the body is optional.
    let optional_and_empty = matches!(route, Route::Rotate | Route::Revoke) && body.is_empty();
    let decodes = optional_and_empty || decodes(route, body);
    if !decodes {
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{route:?}: a body that does not deserialize got {status}: {json}"
        );
    }
    if status.is_success() {
        assert!(decodes, "{route:?}: a body that does not deserialize got {status}: {json}");
    }
    match route {
        Route::Create if status == StatusCode::CREATED => {
            let Some(key) = json["api_key"].as_str() else {
                panic!("a created key without its text: {json}");
            };
            let Ok(parsed) = ParsedKey::parse(key) else {
                panic!("a created key that does not parse: {key:?}");
            };
            assert_eq!(json["api_key_id"].as_str(), Some(parsed.key_id_str()));
        }
        Route::Rotate | Route::Revoke if status == StatusCode::OK => app.acted_on(route),
        Route::Reveal => assert_eq!(status, StatusCode::OK, "reveal of a live key: {json}"),
        Route::Verify if decodes => assert_eq!(status, StatusCode::OK, "verify of a well-formed body: {json}"),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[usize::from(selector) % ROUTES.len()];
    with_app(|app| fuzz_one(app, route, body));
});
