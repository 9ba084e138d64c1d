//! The control plane's HTTP API (axum): the route table, shared state, limits, and the server loop.

pub mod admin;
pub mod error;
mod limits;
mod openapi;
pub mod ops;
pub mod origin_keys;
pub mod secret_scanning;
pub mod usage;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::Router;
use keygate_shared::AdminScope;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::service::Service;
pub use error::ApiError;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take (a rewrap, which may run for minutes, is exempt).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The lifecycle.
    pub service: Arc<Service>,
    metrics: PrometheusHandle,
}

/// The process's Prometheus recorder, installed on first use.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's): ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("keygate_http_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("keygate_http_request_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
        .into_response();
    }
    response
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key.
    Public,
    /// An admin key holding this scope or `admin:*`. The handler enforces it (`authorize`, before the
    /// body is read); the table declares it so that tests can send every credential to every route.
    Admin(AdminScope),
    /// An edge: the body signed under a key derived from the sync secret (`X-Keygate-Timestamp`,
    /// `X-Keygate-Signature`). No admin key is accepted in its place.
    EdgeSignature,
}

/// One route: a method on a path, who may call it, and its handler.
#[derive(Debug)]
pub struct RouteSpec {
    /// The method.
    pub method: Method,
    /// The path, `{name}` standing for a path parameter.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Exempt from [`REQUEST_TIMEOUT`].
    pub untimed: bool,
    handler: MethodRouter<AppState>,
}

impl RouteSpec {
    fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, access: Access, handler: H) -> Self {
        Self { method: Method::GET, path, access, untimed: false, handler: routing::get(handler) }
    }

    fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, access: Access, handler: H) -> Self {
        Self { method: Method::POST, path, access, untimed: false, handler: routing::post(handler) }
    }

    fn patch<H: Handler<T, AppState>, T: 'static>(path: &'static str, access: Access, handler: H) -> Self {
        Self { method: Method::PATCH, path, access, untimed: false, handler: routing::patch(handler) }
    }

    fn untimed(self) -> Self {
        Self { untimed: true, ..self }
    }

    /// A body limit of its own in place of [`BODY_LIMIT`].
    fn body_limit(self, bytes: usize) -> Self {
        Self { handler: self.handler.layer(DefaultBodyLimit::max(bytes)), ..self }
    }
}

/// Every route, declared once: [`router`] is built from this table, and the auth-matrix test sends
/// every kind of credential to every `Admin` route in it, so a new route cannot go unchecked.
pub fn routes() -> Vec<RouteSpec> {
    use Access::{Admin, EdgeSignature, Public};
    vec![
        RouteSpec::post("/admin/api-keys", Admin(AdminScope::KeysWrite), admin::create_key),
        RouteSpec::get("/admin/api-keys", Admin(AdminScope::KeysRead), admin::list_keys),
        RouteSpec::get("/admin/api-keys/{id}", Admin(AdminScope::KeysRead), admin::show_key),
        RouteSpec::patch("/admin/api-keys/{id}", Admin(AdminScope::KeysWrite), admin::update_key),
        RouteSpec::post("/admin/api-keys/{id}/rotate", Admin(AdminScope::KeysWrite), admin::rotate_key),
        RouteSpec::post("/admin/api-keys/{id}/revoke", Admin(AdminScope::KeysWrite), admin::revoke_key),
        RouteSpec::post("/admin/api-keys/{id}/reveal", Admin(AdminScope::Reveal), admin::reveal_key),
        RouteSpec::get("/admin/audit-log", Admin(AdminScope::AuditRead), admin::audit_log),
        // A rewrap may run for minutes.
        RouteSpec::post("/admin/kms/rewrap", Admin(AdminScope::Kms), admin::rewrap).untimed(),
        RouteSpec::get("/admin/origin-keys", Admin(AdminScope::OriginKeys), origin_keys::list),
        RouteSpec::post("/admin/origin-keys/rotate", Admin(AdminScope::OriginKeys), origin_keys::rotate),
        RouteSpec::get("/.well-known/jwks.json", Public, origin_keys::jwks),
        RouteSpec::get("/admin/api-keys/{id}/usage", Admin(AdminScope::KeysRead), usage::key_usage),
        RouteSpec::post(keygate_shared::usage::USAGE_PATH, EdgeSignature, usage::ingest)
            .body_limit(usage::USAGE_BODY_LIMIT),
        RouteSpec::post("/v1/keys/verify", Public, ops::verify),
        // GitHub signs its reports; the handler checks the signature before anything else.
        RouteSpec::post("/v1/secret-scanning/github", Public, secret_scanning::github)
            .body_limit(secret_scanning::GITHUB_BODY_LIMIT),
        RouteSpec::post("/v1/keys/report", Public, secret_scanning::report),
        RouteSpec::get("/healthz", Public, ops::healthz),
        RouteSpec::get("/readyz", Public, ops::readyz),
        RouteSpec::get("/metrics", Public, ops::metrics),
        RouteSpec::get("/openapi.json", Public, ops::openapi),
    ]
}

/// Adds each route. Entries sharing a path need no grouping: axum merges them into one method router
/// (and panics if a path lists a method twice).
fn with_routes(router: Router<AppState>, routes: Vec<RouteSpec>) -> Router<AppState> {
    routes.into_iter().fold(router, |router, route| router.route(route.path, route.handler))
}

/// The whole API.
pub fn router(service: Arc<Service>) -> Router {
    // The web console (HTML at /ui/): its own routes and state, outside the JSON API's route table.
    let console = crate::console::router(crate::console::ConsoleState::new(
        service.clone(),
        crate::rng::SharedRng::new(Box::new(rand_core::OsRng)),
    ));
    let state = AppState { service, metrics: metrics_handle() };
    let (untimed, timed): (Vec<_>, Vec<_>) = routes().into_iter().partition(|route| route.untimed);
    let timed = with_routes(Router::new(), timed)
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT));
    with_routes(Router::new(), untimed)
        .merge(timed)
        .merge(console)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(method_not_allowed))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::limit_failed_checks))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The span of one request: its method and route template, never the URI. A client may paste a key
/// into a path segment or a query string, and the log must not keep it.
fn request_span(request: &Request) -> tracing::Span {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    tracing::debug_span!("request", method = %request.method(), route)
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in flight.
pub async fn run(
    listener: TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address feeds the failed-attempt limit.
    let app = router(service).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
