//! The web console at `/ui/`: server-rendered HTML (askama templates in `control-plane/console/`)
//! over the same [`Service`] calls as the admin API, with a server-side session per signed-in admin
//! key, a CSRF token on every form, and a strict Content-Security-Policy. It is merged into
//! [`crate::api::router`] outside the API's route table: its routes answer HTML, not JSON.

pub mod charts;
pub mod csrf;
mod pages;
pub mod session;

use std::sync::Arc;

use askama::Template;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use keygate_shared::{AdminScope, PermissionSet};
use tower_http::timeout::TimeoutLayer;

use crate::api::{ApiError, REQUEST_TIMEOUT};
use crate::rng::SharedRng;
use crate::service::{Service, ServiceError};
use crate::store::KeyRow;
use session::{Session, SessionStore};

/// Where the console lives.
pub const BASE: &str = "/ui";
/// The session cookie's name.
pub const COOKIE: &str = "keygate_console";
/// The Content-Security-Policy of every console response: no inline script or style, nothing from
/// elsewhere, forms post only here, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("../../console/assets/console.css");
const SCRIPT: &str = include_str!("../../console/assets/console.js");

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    service: Arc<Service>,
    sessions: Arc<SessionStore>,
}

impl ConsoleState {
    /// The console over `service`, its session ids drawn from `rng` (the OS generator in production).
    pub fn new(service: Arc<Service>, rng: SharedRng) -> Self {
        let sessions = Arc::new(SessionStore::new(service.clock().clone(), rng));
        Self { service, sessions }
    }
}

/// The console's routes, under [`BASE`], with their own state, ready to merge into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>(state: ConsoleState) -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/keys") }))
        .route("/ui/sign-in", get(pages::sign_in_page).post(pages::sign_in))
        .route("/ui/sign-out", post(pages::sign_out))
        .route("/ui/keys", get(pages::key_list).post(pages::create_key))
        .route("/ui/keys/new", get(pages::new_key_page))
        .route("/ui/keys/{id}", get(pages::key_page))
        .route("/ui/keys/{id}/edit", post(pages::edit_key))
        .route("/ui/keys/{id}/enabled", post(pages::set_enabled))
        .route("/ui/keys/{id}/rotate", post(pages::rotate_key))
        .route("/ui/keys/{id}/revoke", post(pages::revoke_key))
        .route("/ui/keys/{id}/reveal", get(pages::reveal_page).post(pages::reveal_key))
        .route("/ui/audit", get(pages::audit_page))
        .route("/ui/assets/console.css", get(|| async { asset("text/css; charset=utf-8", STYLESHEET) }))
        .route("/ui/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// Headers on every console response; pages (anything not an asset) are never stored by the browser,
/// so Back cannot bring a shown-once key back.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The session cookie's value in a request, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether the browser reached us over TLS (through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value for a session id, or (with `None`) one that deletes it.
fn cookie_header(id: Option<&str>, headers: &HeaderMap) -> String {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    match id {
        Some(id) => format!("{COOKIE}={id}; Path={BASE}; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// A signed-in operator: the session and the admin key's row as it is now.
pub(crate) struct Operator {
    session_id: String,
    session: Session,
    row: KeyRow,
    permissions: PermissionSet,
}

impl Operator {
    fn can(&self, scope: AdminScope) -> bool {
        self.permissions.allows_admin(scope)
    }

    fn actor(&self) -> crate::service::Actor {
        crate::service::Actor::Admin(self.row.id)
    }
}

/// What a request without a usable session gets.
enum NoSession {
    /// Nothing usable: sign in (a page) or 403 (a change).
    Missing,
    /// The store failed.
    Failed(ServiceError),
}

/// The operator behind the request's cookie. The admin key is read again each time, so revoking,
/// disabling or expiring it (or taking its admin permissions away) ends its sessions at once.
async fn operator(state: &ConsoleState, headers: &HeaderMap) -> Result<Operator, NoSession> {
    let id = session_cookie(headers).ok_or(NoSession::Missing)?;
    let session = state.sessions.touch(id).ok_or(NoSession::Missing)?;
    let row = state.service.store().key(session.admin_id).await.map_err(|e| NoSession::Failed(e.into()))?;
    let live = row.map(|row| state.service.view(row)).filter(|view| view.status == "active");
    let permissions = live.as_ref().and_then(|view| PermissionSet::parse(&view.row.permissions).ok());
    match (live, permissions) {
        (Some(view), Some(permissions)) if permissions.is_admin() => {
            Ok(Operator { session_id: id.to_owned(), session, row: view.row, permissions })
        }
        _ => {
            state.sessions.end_all(session.admin_id);
            Err(NoSession::Missing)
        }
    }
}

/// An HTML page with a status.
fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "console template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Html("<!doctype html><title>error</title><p>The page failed."))
                .into_response()
        }
    }
}

/// The error page.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    title: String,
    message: String,
    signed_in: bool,
}

fn error_page(status: StatusCode, message: impl Into<String>, signed_in: bool) -> Response {
    let title = status.canonical_reason().unwrap_or("Error").to_owned();
    page(status, &ErrorPage { title, message: message.into(), signed_in })
}

/// A service error as a page, with the API's status for it; the message never carries a cause's text.
fn service_error(error: ServiceError) -> Response {
    let message = error.to_string();
    let status = ApiError::from(error).status();
    error_page(status, message, true)
}

#[cfg(test)]
mod tests;
