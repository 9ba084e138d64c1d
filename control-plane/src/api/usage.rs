//! Usage routes: `POST /_keygate/usage`, where edges report (authenticated by the batch's signature
//! under a key derived from the sync secret, never by an admin key), and
//! `GET /admin/api-keys/{id}/usage`, a key's usage by bucket and its top operations.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_shared::sync::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use keygate_shared::usage::{self, UsageBatch};
use keygate_shared::AdminScope;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::{authorize, key_id, query_fields, rfc3339, IdParam};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::usage::service::UsageQuery;
use crate::usage::{check_batch, Granularity, IngestOutcome};

/// Largest usage batch body accepted.
pub const USAGE_BODY_LIMIT: usize = usage::MAX_BATCH_BYTES;

/// What became of a usage batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResponse {
    /// False when this batch id was already kept: nothing changed.
    applied: bool,
    /// Rows counted (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    /// Rows for key ids this control plane does not know, not counted (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<u64>,
}

fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    metrics::counter!("keygate_usage_batches_total", "result" => "refused").increment(1);
    ApiError::new(status, code, message)
}

/// An ingest error: the JSON error, without the `WWW-Authenticate: Bearer` challenge of a 401, since
/// no bearer token is taken here.
pub(crate) struct IngestError(ApiError);

impl From<ApiError> for IngestError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        response.headers_mut().remove(header::WWW_AUTHENTICATE);
        response
    }
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("")
}

/// An edge's usage batch: the body (at most 4 MiB) is read and its signature checked before it is
/// parsed; a batch id already kept answers 200 `{"applied": false}` and changes nothing.
#[utoipa::path(post, path = "/_keygate/usage", tag = "usage", request_body = UsageBatchSchema,
    params(
        ("X-Keygate-Timestamp" = String, Header, description = "unix seconds, within 300 s of the control plane's clock"),
        ("X-Keygate-Signature" = String, Header, description = "hex HMAC-SHA256 of `timestamp.body` under the usage key derived from the sync secret"),
    ),
    responses(
        (status = 200, body = IngestResponse, description = "kept, or already kept (`applied: false`)"),
        (status = 400, body = ErrorBody, description = "malformed JSON"),
        (status = 401, body = ErrorBody, description = "missing or bad signature, or a timestamp outside the window"),
        (status = 404, body = ErrorBody, description = "usage reporting is off: no sync secret is configured"),
        (status = 413, body = ErrorBody, description = "the body is larger than 4 MiB"),
        (status = 422, body = ErrorBody, description = "well-formed JSON outside the batch's limits"),
        (status = 429, body = ErrorBody, description = "too many failed checks from this address"),
        (status = 503, body = ErrorBody, description = "the database is unavailable"),
    ),
    security(("edge_signature" = [])))]
pub(crate) async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestResponse>, IngestError> {
    let Some(secret) = state.service.settings().sync_secret.as_ref() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "usage reporting is off: no sync secret").into());
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            refused(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the batch is larger than 4 MiB")
        } else {
            refused(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text())
        }
    })?;
    let now = state.service.clock().now();
    usage::verify(secret, header_text(&headers, TIMESTAMP_HEADER), header_text(&headers, SIGNATURE_HEADER), &body, now)
        .map_err(|error| refused(StatusCode::UNAUTHORIZED, error.code(), error.to_string()))?;
    let batch: UsageBatch = serde_json::from_slice(&body).map_err(|error| {
        if error.is_data() {
            refused(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", error.to_string())
        } else {
            refused(StatusCode::BAD_REQUEST, "malformed_json", error.to_string())
        }
    })?;
    check_batch(&batch, now)
        .map_err(|error| refused(StatusCode::UNPROCESSABLE_ENTITY, error.code(), error.to_string()))?;
    Ok(Json(match state.service.ingest_usage(&batch).await.map_err(ApiError::from)? {
        IngestOutcome::Applied { rows, skipped } => {
            IngestResponse { applied: true, rows: Some(rows), skipped: Some(skipped) }
        }
        IngestOutcome::Duplicate => IngestResponse { applied: false, rows: None, skipped: None },
    }))
}

/// The wire form of a usage batch (`keygate_shared::usage::UsageBatch`), for the OpenAPI document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UsageBatchSchema {
    /// 32 lower-case hex digits, random, the same on every retry of this batch.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    batch_id: String,
    /// Counts per key and minute, at most 5000.
    #[schema(max_items = 5000)]
    rows: Vec<UsageRowSchema>,
    /// Events the edge counted and dropped since its last delivered batch.
    #[schema(minimum = 0)]
    dropped: Option<u64>,
}

/// One key's counts in one minute.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UsageRowSchema {
    /// The api_key_id.
    key_id: String,
    /// The minute's start, unix seconds, a multiple of 60.
    #[schema(minimum = 0, multiple_of = 60)]
    minute: i64,
    #[schema(minimum = 0, maximum = 1_099_511_627_776_u64)]
    admitted: Option<u64>,
    #[schema(minimum = 0, maximum = 1_099_511_627_776_u64)]
    forbidden: Option<u64>,
    #[schema(minimum = 0, maximum = 1_099_511_627_776_u64)]
    rate_limited: Option<u64>,
    #[schema(minimum = 0, maximum = 1_099_511_627_776_u64)]
    refused: Option<u64>,
    /// Admitted requests by operation name, at most 33 entries.
    #[schema(max_items = 33)]
    operations: Option<Vec<OperationSchema>>,
}

/// Admitted requests of one operation name.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OperationSchema {
    /// 1 to 128 bytes; `(anonymous)` for none, `(other)` for names past the row's 32.
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    #[schema(minimum = 0, maximum = 1_099_511_627_776_u64)]
    count: u64,
}

/// The range and buckets of a usage query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// RFC 3339, rounded down to the bucket; default `to` minus 1 h (minute), 24 h (hour) or 30 days (day).
    #[param(format = DateTime)]
    from: Option<String>,
    /// RFC 3339, exclusive; default now.
    #[param(format = DateTime)]
    to: Option<String>,
    /// `minute`, `hour` (default) or `day`.
    #[param(inline)]
    granularity: Option<Granularity>,
    /// Most operations listed, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// One bucket's counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBucketResponse {
    /// The bucket's start, RFC 3339.
    start: String,
    admitted: i64,
    forbidden: i64,
    rate_limited: i64,
    refused: i64,
}

/// Admitted requests of one operation name over the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationResponse {
    name: String,
    count: i64,
}

/// A key's usage: every bucket in the range (zero-filled) and its top operations.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    api_key_id: String,
    /// `minute`, `hour` or `day`.
    granularity: &'static str,
    /// The first bucket's start.
    from: String,
    /// The end of the range (exclusive).
    to: String,
    series: Vec<UsageBucketResponse>,
    /// Most first, ties by name.
    operations: Vec<OperationResponse>,
}

fn instant(text: Option<&str>, field: &str) -> Result<Option<i64>, ApiError> {
    text.map(|text| {
        chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp()).map_err(|_| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", format!("{field} must be RFC 3339"))
        })
    })
    .transpose()
}

/// A key's usage by bucket, zero-filled, and its top operations.
#[utoipa::path(get, path = "/admin/api-keys/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "api_key_id"), UsageParams),
    responses(
        (status = 200, body = UsageResponse),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such key"),
        (status = 422, body = ErrorBody, description = "a bad range, granularity or limit, or more than 1500 buckets"),
        (status = 503, body = ErrorBody),
    ),
    security(("admin_key" = ["admin:keys:read"])))]
pub(crate) async fn key_usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    IdParam(id): IdParam,
    query: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageResponse>, ApiError> {
    authorize(&state, &headers, AdminScope::KeysRead, "key.usage").await?;
    let id = key_id(&id)?;
    let params = query_fields(query)?;
    let query = UsageQuery {
        granularity: params.granularity,
        from: instant(params.from.as_deref(), "from")?,
        to: instant(params.to.as_deref(), "to")?,
        limit: params.limit,
    };
    let usage = state.service.key_usage(id, query).await?;
    Ok(Json(UsageResponse {
        api_key_id: id.to_string(),
        granularity: usage.granularity.as_str(),
        from: rfc3339(usage.from),
        to: rfc3339(usage.to),
        series: usage
            .series
            .into_iter()
            .map(|bucket| UsageBucketResponse {
                start: rfc3339(bucket.start),
                admitted: bucket.counts.admitted,
                forbidden: bucket.counts.forbidden,
                rate_limited: bucket.counts.rate_limited,
                refused: bucket.counts.refused,
            })
            .collect(),
        operations: usage.operations.into_iter().map(|(name, count)| OperationResponse { name, count }).collect(),
    }))
}
