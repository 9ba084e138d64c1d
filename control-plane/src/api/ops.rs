//! Unauthenticated routes: key verification for origins not behind the edge, health, readiness,
//! Prometheus metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::openapi::FromRouteTable;

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::service::Verdict;

/// Body of `POST /v1/keys/verify`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The key a client presented.
    api_key: String,
}

/// The verdict. Every bad key (malformed, unknown, wrong, revoked, disabled, expired) gets the same answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse {
    valid: bool,
    /// `ok` or `invalid_key`.
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/v1/keys/verify", tag = "verify", request_body = VerifyRequest,
    responses((status = 200, body = VerifyResponse), (status = 503, body = super::error::ErrorBody)))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<VerifyRequest>,
) -> Result<Response, ApiError> {
    let verdict = state.service.verify(&request.api_key).await?;
    let valid = matches!(verdict, Verdict::Valid { .. });
    metrics::counter!("keygate_verify_total", "valid" => valid.to_string()).increment(1);
    let mut response = Json(match verdict {
        Verdict::Valid { key_id, tier, permissions } => VerifyResponse {
            valid: true,
            code: "ok",
            api_key_id: Some(key_id.to_string()),
            tier: Some(tier),
            permissions: Some(permissions),
        },
        Verdict::Invalid => {
            VerifyResponse { valid: false, code: "invalid_key", api_key_id: None, tier: None, permissions: None }
        }
    })
    .into_response();
    if !valid {
        response.extensions_mut().insert(super::limits::FailedCheck);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "the process is up")))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "the database answers"), (status = 503, body = super::error::ErrorBody)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.service.store().ping().await.map_err(|e| ApiError::from(crate::service::ServiceError::from(e)))?;
    Ok(Json(
        serde_json::json!({"status": "ready", "database": state.service.store().dialect(), "kms": state.service.kms().provider()}),
    ))
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "keygate control plane", description = "Issue, rotate, revoke and verify API keys for GraphQL APIs."),
    paths(
        super::admin::create_key, super::admin::list_keys, super::admin::show_key, super::admin::update_key,
        super::admin::rotate_key,
        super::admin::revoke_key, super::admin::reveal_key, super::admin::audit_log, super::admin::rewrap,
        super::origin_keys::list, super::origin_keys::rotate, super::origin_keys::jwks,
        super::usage::ingest, super::usage::key_usage, super::secret_scanning::github, super::secret_scanning::report,
        verify, healthz, readyz, metrics, openapi
    ),
    modifiers(&BearerAuth, &FromRouteTable)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("a keygate admin key")).build(),
            ),
        );
        components.add_security_scheme(
            "edge_signature",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    keygate_shared::sync::SIGNATURE_HEADER,
                    "hex HMAC-SHA256 of `X-Keygate-Timestamp` + \".\" + body, under the usage key derived from the sync secret",
                ),
            )),
        );
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "this document")))]
pub(crate) async fn openapi() -> impl IntoResponse {
    (StatusCode::OK, Json(ApiDoc::openapi()))
}
