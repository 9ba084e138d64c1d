//! Failed key checks per client address. A peer that sends `--failed-attempts-per-minute` bad keys
//! (admin requests answered 401, verify calls answered `invalid_key`) within a minute gets 429 for the
//! rest of that minute on both, before any key is looked at, so it can neither guess on nor fill the
//! audit log with refusals. The peer is the TCP peer: behind a proxy, all clients share its address.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// Marks a response that answered a bad key without a 401 (verify's `invalid_key`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailedCheck;

/// The middleware; requests without a peer address (an embedding router, tests) are not limited.
pub(crate) async fn limit_failed_checks(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip().to_string()) else {
        return next.run(request).await;
    };
    let service = &state.service;
    if let Some(retry_after) = service.client_blocked(&peer) {
        metrics::counter!("keygate_failed_attempt_refusals_total").increment(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failed_attempts",
            "too many bad keys from this address",
        )
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED || response.extensions().get::<FailedCheck>().is_some() {
        service.client_failed(&peer);
    }
    response
}
