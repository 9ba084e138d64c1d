//! Leaked-key reports: GitHub's secret-scanning partner endpoint (signed batches of found tokens) and
//! the self-report of whoever holds a key. The logic is in [`crate::leaks`]; these are the wire forms.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, JsonBody};
use super::AppState;
use crate::leaks::{self, FoundAt, SignatureError, MAX_NOTE_CHARS};
use crate::service::ServiceError;

/// Largest GitHub report accepted: room for a batch of well over 1,000 tokens.
pub const GITHUB_BODY_LIMIT: usize = 1024 * 1024;
/// The header naming the key that signed a GitHub report.
pub const KEY_IDENTIFIER_HEADER: &str = "Github-Public-Key-Identifier";
/// The header carrying the signature: base64 of the DER ECDSA P-256 SHA-256 signature of the raw body.
pub const SIGNATURE_HEADER: &str = "Github-Public-Key-Signature";

/// One token GitHub found.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GithubToken {
    /// The text that matched our pattern.
    token: String,
    /// The token type registered with GitHub; echoed back as `token_type`.
    #[serde(rename = "type", default)]
    token_type: String,
    /// Where it was found.
    #[serde(default)]
    url: Option<String>,
    /// What kind of place (`content`, `commit`, `issue_comment`, ...).
    #[serde(default)]
    source: Option<String>,
}

/// GitHub's feedback on one token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenFeedback {
    /// SHA-256 of the token, hex.
    token_hash: String,
    /// The `type` GitHub sent.
    token_type: String,
    /// `true_positive`: a real key of this deployment (live or already dead); `false_positive`: anything else.
    #[schema(pattern = "^(true_positive|false_positive)$")]
    label: &'static str,
}

fn refused(error: SignatureError) -> ApiError {
    metrics::counter!("keygate_leak_reports_refused_total").increment(1);
    let code = match error {
        SignatureError::NotConfigured => "scanning_not_configured",
        SignatureError::UnknownKey => "unknown_public_key",
        SignatureError::BadSignature => "bad_signature",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, error.to_string())
}

/// A lost race (the key changed while it was revoked) is retried by the reporter, never shown as a 409:
/// a 409 would tell a self-reporter that the key exists.
fn retryable(error: ServiceError) -> ApiError {
    match error {
        ServiceError::Conflict => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "conflict", "a reported key changed meanwhile; retry")
        }
        other => other.into(),
    }
}

#[utoipa::path(post, path = "/v1/secret-scanning/github", tag = "leaks",
    description = "GitHub's secret-scanning partner endpoint. The raw body must be signed by a key in \
        `--github-scanning-keys`. Every token that is a live key is revoked (reason `leaked`), or only \
        audited under `--on-leak notify`.",
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "the GitHub key that signed the body"),
        ("Github-Public-Key-Signature" = String, Header, description = "base64 DER ECDSA P-256 SHA-256 signature of the raw body"),
    ),
    request_body(content = Vec<GithubToken>, content_type = "application/json"),
    responses(
        (status = 200, body = Vec<TokenFeedback>, description = "one verdict per token, in order"),
        (status = 400, body = ErrorBody, description = "`malformed_json`: the signed body is not JSON"),
        (status = 401, body = ErrorBody, description = "`missing_signature`, `unknown_public_key`, `bad_signature` or `scanning_not_configured`: nothing was revoked"),
        (status = 413, body = ErrorBody, description = "`body_too_large`: the body is larger than 1 MiB"),
        (status = 422, body = ErrorBody, description = "`invalid_body`: the signed body is not an array of `{token, type, url, source}`"),
        (status = 503, body = ErrorBody, description = "`database_unavailable`, `conflict`, or the request timed out: retry"),
    ))]
pub(crate) async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(identifier), Some(signature)) = (header(KEY_IDENTIFIER_HEADER), header(SIGNATURE_HEADER)) else {
        metrics::counter!("keygate_leak_reports_refused_total").increment(1);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_signature",
            "GitHub's signature headers are required",
        ));
    };
    let keys =
        state.service.settings().leaks.github_keys.clone().ok_or_else(|| refused(SignatureError::NotConfigured))?;
    let now_ms = state.service.clock().now_millis();
    keys.verify(identifier, signature, &body, now_ms).map_err(refused)?;
    let tokens: Vec<GithubToken> = serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", "the body is not JSON")
        } else {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", format!("the body does not fit: {e}"))
        }
    })?;
    let mut feedback = Vec::with_capacity(tokens.len());
    for token in &tokens {
        let found = FoundAt { url: token.url.as_deref(), source: token.source.as_deref() };
        let label =
            leaks::handle_token(&state.service, &leaks::GITHUB_ACTOR, &token.token, found).await.map_err(retryable)?;
        feedback.push(TokenFeedback {
            token_hash: keygate_shared::hash::sha256_hex(&token.token),
            token_type: token.token_type.clone(),
            label: label.as_str(),
        });
    }
    Ok(Json(feedback).into_response())
}

/// Body of `POST /v1/keys/report`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// The leaked key, as found.
    api_key: String,
    /// Where it was found (a URL, or a few words).
    #[schema(max_length = 500)]
    #[serde(default)]
    source: Option<String>,
}

/// The one answer of `POST /v1/keys/report`, whatever the key was.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportReceived {
    /// Always `true`.
    received: bool,
}

#[utoipa::path(post, path = "/v1/keys/report", tag = "leaks", request_body = ReportRequest,
    description = "Report a leaked key by presenting it; a live key is revoked (reason `leaked`). The answer \
        is the same for live, revoked, unknown and malformed keys, and every call counts toward the \
        failed-attempt limit like a failed verify.",
    responses(
        (status = 202, body = ReportReceived, description = "received; says nothing about the key"),
        (status = 422, body = ErrorBody, description = "`invalid_body` or `invalid_source`: a field is missing, unknown or too long"),
        (status = 503, body = ErrorBody, description = "`database_unavailable`, `conflict`, or the request timed out: retry"),
    ))]
pub(crate) async fn report(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ReportRequest>,
) -> Result<Response, ApiError> {
    if request.source.as_ref().is_some_and(|s| s.chars().count() > MAX_NOTE_CHARS) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_source",
            "source must be at most 500 characters",
        ));
    }
    let found = FoundAt { url: None, source: request.source.as_deref() };
    leaks::handle_token(&state.service, &leaks::SELF_REPORT_ACTOR, &request.api_key, found).await.map_err(retryable)?;
    let mut response = (StatusCode::ACCEPTED, Json(ReportReceived { received: true })).into_response();
    // Every report counts as a failed check: it probes no faster than verify.
    response.extensions_mut().insert(super::limits::FailedCheck);
    Ok(response)
}
