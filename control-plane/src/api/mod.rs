//! The control plane's HTTP API (axum): routes, shared state, limits, and the server loop.

pub mod admin;
pub mod error;
pub mod ops;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
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

/// The whole API.
pub fn router(service: Arc<Service>) -> Router {
    let state = AppState { service, metrics: metrics_handle() };
    let bounded = Router::new()
        .route("/admin/api-keys", post(admin::create_key).get(admin::list_keys))
        .route("/admin/api-keys/{id}", get(admin::show_key))
        .route("/admin/api-keys/{id}/rotate", post(admin::rotate_key))
        .route("/admin/api-keys/{id}/revoke", post(admin::revoke_key))
        .route("/admin/api-keys/{id}/reveal", post(admin::reveal_key))
        .route("/admin/audit-log", get(admin::audit_log))
        .route("/v1/keys/verify", post(ops::verify))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT));
    Router::new()
        .route("/admin/kms/rewrap", post(admin::rewrap))
        .merge(bounded)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(method_not_allowed))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in flight.
pub async fn run(
    listener: TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(service)).with_graceful_shutdown(shutdown).await
}
