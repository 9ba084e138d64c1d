//! The origin's signing keys over HTTP: the public JWKS origins verify tokens against, and the admin
//! routes that list and rotate the keys (scope `admin:origin-keys`). No route ever shows a private half.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_shared::AdminScope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::{authorize, optional_body, rfc3339};
use super::error::ApiError;
use super::AppState;
use crate::service::OriginKeyView;

/// Body of `POST /admin/origin-keys/rotate`; may be empty.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateOriginKeyRequest {
    /// Seconds until edges sign with the new key (0 to 604800); the server's publish lead when absent,
    /// so origins caching the JWKS learn the key first. 0 switches at once: for a compromised key.
    #[schema(minimum = 0, maximum = 604800)]
    #[serde(default, deserialize_with = "super::error::whole_number")]
    activate_in_secs: Option<i64>,
}

/// An origin signing key: its public facts.
#[derive(Debug, Serialize, ToSchema)]
pub struct OriginKeyResponse {
    /// The JWT header's `kid`.
    kid: String,
    /// 1, 2, ...: higher is newer.
    version: i64,
    /// `pending` (published, not yet signing), `active`, `retired` (still published) or `expired`.
    status: &'static str,
    created_at: String,
    /// When edges start signing with it.
    activates_at: String,
    /// The public half, as the JWKS lists it.
    #[schema(value_type = Object)]
    public_jwk: serde_json::Value,
}

impl From<OriginKeyView> for OriginKeyResponse {
    fn from(view: OriginKeyView) -> Self {
        Self {
            kid: view.row.kid.to_string(),
            version: view.row.version,
            status: view.status.as_str(),
            created_at: rfc3339(view.row.created_at),
            activates_at: rfc3339(view.row.activates_at),
            public_jwk: serde_json::from_str(&view.row.public_jwk).unwrap_or_default(),
        }
    }
}

/// `GET /admin/origin-keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OriginKeysResponse {
    /// Oldest first.
    keys: Vec<OriginKeyResponse>,
}

#[utoipa::path(get, path = "/admin/origin-keys", tag = "origin-keys",
    responses((status = 200, body = OriginKeysResponse)),
    security(("admin_key" = ["admin:origin-keys"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<OriginKeysResponse>, ApiError> {
    authorize(&state, &headers, AdminScope::OriginKeys, "origin_key.list").await?;
    let keys = state.service.origin_key_views().await?.into_iter().map(OriginKeyResponse::from).collect();
    Ok(Json(OriginKeysResponse { keys }))
}

#[utoipa::path(post, path = "/admin/origin-keys/rotate", tag = "origin-keys",
    request_body(content = Option<RotateOriginKeyRequest>), responses((status = 201, body = OriginKeyResponse)),
    security(("admin_key" = ["admin:origin-keys"])))]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let actor = authorize(&state, request.headers(), AdminScope::OriginKeys, "origin_key.rotate").await?;
    let body: RotateOriginKeyRequest = optional_body(request, &state).await?;
    let view = state.service.rotate_origin_key(&actor, body.activate_in_secs).await?;
    Ok((axum::http::StatusCode::CREATED, Json(OriginKeyResponse::from(view))).into_response())
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "origin-keys",
    responses((status = 200, description = "RFC 7517 JWK set: the public halves of the keys that sign the origin's JWTs",
        body = Object)))]
pub(crate) async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let document = state.service.jwks().await?;
    let max_age = state.service.origin_keys().policy().publish_lead_secs;
    let cache =
        HeaderValue::from_str(&format!("public, max-age={max_age}")).unwrap_or(HeaderValue::from_static("no-cache"));
    Ok(([(header::CACHE_CONTROL, cache)], Json(document)).into_response())
}
