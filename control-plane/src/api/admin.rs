//! The admin routes: keys, reveal, audit log, KMS rewrap. Each handler authenticates first, with the
//! scope it needs; the request body is read only after that.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use keygate_shared::{AdminScope, KeyId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::key_update::KeyUpdate;
use crate::service::{Actor, KeyView, NewKey};
use crate::store::SecretRow;
use crate::usage::{KeyCursor, KeyListing, KeyOrder};

/// RFC 3339 (UTC, whole seconds) for unix seconds.
pub(crate) fn rfc3339(unix_seconds: i64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    scope: AdminScope,
    action: &str,
) -> Result<Actor, ApiError> {
    Ok(state.service.authenticate(bearer(headers), scope, action).await?)
}

/// A query string's fields, or a 422 saying what is wrong with them.
pub(crate) fn query_fields<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(fields)| fields)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", e.body_text()))
}

/// A page size: 1 to 1000, 100 when absent.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(100);
    if (1..=1_000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", "limit must be between 1 and 1000"))
    }
}

/// An optional key id in a query string.
fn query_key_id(text: Option<&str>, field: &str) -> Result<Option<KeyId>, ApiError> {
    text.map(|text| {
        text.parse::<KeyId>().map_err(|_| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", format!("{field} must be an api_key_id"))
        })
    })
    .transpose()
}

/// A path id that is not a key id names no key.
/// The `{id}` of a key route, as text. It never rejects: an id that does not even decode to UTF-8
/// becomes `""`, so the handler authorizes first and then answers `key_not_found`, as for any other
/// text that is not a key id (axum's own rejection would be a plain-text 400 before authorization).
pub(crate) struct IdParam(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(Path::<String>::from_request_parts(parts, state).await.map(|Path(id)| id).unwrap_or_default()))
    }
}

pub(crate) fn key_id(text: &str) -> Result<KeyId, ApiError> {
    text.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "key_not_found", "no API key with this id"))
}

/// Body of `POST /admin/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Display name, 1 to 200 characters, not only white space (it is trimmed).
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    /// Rate-limit tier, `[a-z0-9_-]{1,32}`; `default` when absent.
    #[serde(default = "default_tier")]
    #[schema(pattern = r"^[a-z0-9_-]{1,32}$")]
    tier: String,
    /// Permission strings, e.g. `query:read`, `batch:10`, `*`: at most 64, each `:`-separated segments
    /// of `[a-z0-9_*.-]`. `batch:N` needs N ≥ 1, and `admin:` ones must name a known scope.
    #[schema(max_items = 64, inline, value_type = Vec<super::openapi::PermissionString>)]
    permissions: Vec<String>,
    /// Lifetime in days (1 to 3650); 90 when absent.
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default, deserialize_with = "super::error::whole_number")]
    expires_in_days: Option<i64>,
    /// Region of the key text, `[a-z0-9]+` words joined by `_`; the deployment's when absent.
    #[schema(max_length = 165, pattern = r"^[a-z0-9]+(_[a-z0-9]+)*$")]
    region: Option<String>,
    /// Who the key belongs to, at most 200 characters.
    #[schema(max_length = 200)]
    owner: Option<String>,
    /// A JSON object of at most 8 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

fn default_tier() -> String {
    "default".into()
}

/// A key's metadata: never its secret or a hash of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    api_key_id: String,
    name: String,
    owner: Option<String>,
    tier: String,
    permissions: Vec<String>,
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    prefix: String,
    region: String,
    /// `active`, `disabled`, `revoked` or `expired`: `revoked` wins over `expired`, which wins over
    /// `disabled` (each says what stops the key, the most lasting first).
    #[schema(value_type = String, example = "active")]
    status: &'static str,
    /// `false` while the key is switched off (`PATCH ... {"enabled": false}`), whatever its status.
    enabled: bool,
    /// When it was switched off; null while it is enabled.
    disabled_at: Option<String>,
    /// Past 80% of its lifetime.
    should_rotate: bool,
    created_at: String,
    expires_at: Option<String>,
    rotated_at: Option<String>,
    revoked_at: Option<String>,
    revoked_reason: Option<String>,
    generation: i64,
    /// The start of the latest minute with an admitted request at the edge (RFC 3339); null if never.
    last_used_at: Option<String>,
}

impl From<KeyView> for KeyResponse {
    fn from(view: KeyView) -> Self {
        let row = view.row;
        Self {
            api_key_id: row.id.to_string(),
            name: row.name,
            owner: row.owner,
            tier: row.tier,
            permissions: row.permissions,
            metadata: row.metadata,
            prefix: row.prefix,
            region: row.region,
            status: view.status,
            enabled: row.disabled_at.is_none(),
            disabled_at: row.disabled_at.map(rfc3339),
            should_rotate: view.should_rotate,
            created_at: rfc3339(row.created_at),
            expires_at: row.expires_at.map(rfc3339),
            rotated_at: row.rotated_at.map(rfc3339),
            revoked_at: row.revoked_at.map(rfc3339),
            revoked_reason: row.revoked_reason,
            generation: row.generation,
            last_used_at: row.last_used_at.map(rfc3339),
        }
    }
}

/// Answer of `POST /admin/api-keys`: the only time the key is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedResponse {
    /// The whole key. Store it now: keygate shows it again only through reveal.
    api_key: String,
    #[serde(flatten)]
    key: KeyResponse,
}

impl From<crate::service::Created> for CreatedResponse {
    fn from(created: crate::service::Created) -> Self {
        Self { api_key: created.key.expose().to_owned(), key: created.view.into() }
    }
}

#[utoipa::path(post, path = "/admin/api-keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedResponse), (status = 422, body = super::error::ErrorBody)),
    security(("admin_key" = ["admin:keys:write"])))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<CreateKeyRequest>, ApiError>,
) -> Result<(StatusCode, Json<CreatedResponse>), ApiError> {
    let actor = authorize(&state, &headers, AdminScope::KeysWrite, "key.create").await?;
    let JsonBody(request) = body?;
    let created = state
        .service
        .create(
            &actor,
            NewKey {
                name: request.name,
                tier: request.tier,
                permissions: request.permissions,
                expires_in_days: request.expires_in_days,
                region: request.region,
                owner: request.owner,
                metadata: request.metadata,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Paging through keys.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The previous page's `next_after`, as it is: a key id, or with `sort=last_used`
    /// `<last use in unix seconds, or -1>.<key id>`.
    #[param(pattern = r"^((-1|[0-9]{1,12})\.)?[0-6][0-9A-Za-z]{21}$")]
    after: Option<String>,
    /// `created` (default: creation order) or `last_used` (most recently used first, never-used keys
    /// last); with `last_used`, `after` takes the previous page's `next_after` as it is.
    #[param(inline)]
    sort: Option<KeyOrder>,
    /// Only keys unused for more than this many days (1 to 3650): last used before then, or never
    /// used and created before then.
    #[param(minimum = 1, maximum = 3650)]
    unused_days: Option<i64>,
}

/// A page of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    items: Vec<KeyResponse>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<String>,
}

#[utoipa::path(get, path = "/admin/api-keys", tag = "keys", params(ListQuery),
    responses((status = 200, body = KeyPage), (status = 401, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)),
    security(("admin_key" = ["admin:keys:read"])))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    authorize(&state, &headers, AdminScope::KeysRead, "key.list").await?;
    let query = query_fields(query)?;
    let limit = page_limit(query.limit)?;
    if query.sort.is_some() || query.unused_days.is_some() {
        return list_by_use(&state, query, limit).await.map(Json);
    }
    let after = query_key_id(query.after.as_deref().map(cursor_key_id), "after")?;
    let views = state.service.list(after, limit).await?;
    let next_after = (views.len() as i64 == limit).then(|| views.last().map(|v| v.row.id.to_string())).flatten();
    Ok(Json(KeyPage { items: views.into_iter().map(KeyResponse::from).collect(), next_after }))
}

/// The key id of a `next_after` of either order (`<id>`, or `<last use>.<id>`): a cursor from one
/// order continues the other after the same key.
fn cursor_key_id(after: &str) -> &str {
    after.rsplit_once('.').map_or(after, |(_, id)| id)
}

/// The key list with `sort` or `unused_days`: filtered and ordered in the database.
async fn list_by_use(state: &AppState, query: ListQuery, limit: i64) -> Result<KeyPage, ApiError> {
    let order = query.sort.unwrap_or_default();
    let bad_after = || ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", "after must be a next_after");
    let after = match (order, query.after.as_deref()) {
        (_, None) => None,
        (KeyOrder::Created, Some(text)) => {
            Some(KeyCursor::Created(cursor_key_id(text).parse().map_err(|_| bad_after())?))
        }
        (KeyOrder::LastUsed, Some(text)) => match text.split_once('.') {
            Some((at, id)) => {
                Some(KeyCursor::LastUsed(at.parse().map_err(|_| bad_after())?, id.parse().map_err(|_| bad_after())?))
            }
            // A bare key id continues after that key's place in this order, as of now.
            None => {
                let id: KeyId = text.parse().map_err(|_| bad_after())?;
                let row = state.service.store().key(id).await.map_err(crate::service::ServiceError::from)?;
                Some(KeyCursor::LastUsed(row.and_then(|row| row.last_used_at).unwrap_or(-1), id))
            }
        },
    };
    let unused_since = match query.unused_days {
        None => None,
        Some(days @ 1..=3_650) => Some(state.service.clock().now() - days * 86_400),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                "unused_days must be between 1 and 3650",
            ))
        }
    };
    let views = state.service.list_keys(KeyListing { order, unused_since, after, limit }).await?;
    let next_after = (views.len() as i64 == limit).then(|| views.last()).flatten().map(|last| match order {
        KeyOrder::Created => last.row.id.to_string(),
        KeyOrder::LastUsed => format!("{}.{}", last.row.last_used_at.unwrap_or(-1), last.row.id),
    });
    Ok(KeyPage { items: views.into_iter().map(KeyResponse::from).collect(), next_after })
}

/// One generation of a key's secret: no hash, no ciphertext.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationResponse {
    generation: i64,
    /// `current`, `grace` (the old secret still works) or `retired`.
    status: &'static str,
    created_at: String,
    not_after: Option<String>,
    kms_key_id: String,
    data_key_version: i64,
}

/// One key, with its generations.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyDetail {
    #[serde(flatten)]
    key: KeyResponse,
    generations: Vec<GenerationResponse>,
}

#[utoipa::path(get, path = "/admin/api-keys/{id}", tag = "keys", params(("id" = String, Path, description = "api_key_id")),
    responses((status = 200, body = KeyDetail), (status = 404, body = super::error::ErrorBody)),
    security(("admin_key" = ["admin:keys:read"])))]
pub(crate) async fn show_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    IdParam(id): IdParam,
) -> Result<Json<KeyDetail>, ApiError> {
    authorize(&state, &headers, AdminScope::KeysRead, "key.show").await?;
    let (view, secrets) = state.service.show(key_id(&id)?).await?;
    let now = state.service.clock().now();
    let generations = secrets.iter().map(|s| generation(s, view.row.generation, now)).collect();
    Ok(Json(KeyDetail { key: view.into(), generations }))
}

fn generation(secret: &SecretRow, current: i64, now: i64) -> GenerationResponse {
    let status = if secret.generation == current {
        "current"
    } else if secret.not_after.is_some_and(|end| now < end) {
        "grace"
    } else {
        "retired"
    };
    GenerationResponse {
        generation: secret.generation,
        status,
        created_at: rfc3339(secret.created_at),
        not_after: secret.not_after.map(rfc3339),
        kms_key_id: secret.kms_key_id.clone(),
        data_key_version: secret.data_key_version,
    }
}

/// Body of a reroll; may be empty.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old secret keeps working, 0 to 2592000 s (default 86400), capped at the key's expiry.
    #[schema(minimum = 0, maximum = 2592000)]
    #[serde(default, deserialize_with = "super::error::whole_number")]
    grace_period_secs: Option<i64>,
}

/// Answer of a reroll.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedResponse {
    /// The new whole key, shown once.
    api_key: String,
    api_key_id: String,
    generation: i64,
    /// When the previous secret stops working.
    previous_valid_until: String,
}

/// An optional JSON body: absent (no bytes) or JSON `null` means the default.
pub(crate) async fn optional_body<T: serde::de::DeserializeOwned + Default>(
    request: axum::extract::Request,
    state: &AppState,
) -> Result<T, ApiError> {
    let empty = request.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v == "0")
        || (request.headers().get(header::CONTENT_TYPE).is_none()
            && request.headers().get(header::TRANSFER_ENCODING).is_none()
            && request.headers().get(header::CONTENT_LENGTH).is_none());
    if empty {
        return Ok(T::default());
    }
    let JsonBody(value) =
        <JsonBody<Option<T>> as axum::extract::FromRequest<AppState>>::from_request(request, state).await?;
    Ok(value.unwrap_or_default())
}

#[utoipa::path(post, path = "/admin/api-keys/{id}/rotate", tag = "keys", params(("id" = String, Path)),
    request_body(content = Option<RotateRequest>), responses((status = 200, body = RotatedResponse),
        (status = 409, body = super::error::ErrorBody, description = "`key_revoked` or `key_expired`: the key can no longer be rotated")),
    security(("admin_key" = ["admin:keys:write"])))]
pub(crate) async fn rotate_key(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    request: axum::extract::Request,
) -> Result<Json<RotatedResponse>, ApiError> {
    let actor = authorize(&state, request.headers(), AdminScope::KeysWrite, "key.rotate").await?;
    let id = key_id(&id)?;
    let body: RotateRequest = optional_body(request, &state).await?;
    let rotated = state.service.rotate(&actor, id, body.grace_period_secs).await?;
    Ok(Json(RotatedResponse {
        api_key: rotated.key.expose().to_owned(),
        api_key_id: id.to_string(),
        generation: rotated.generation,
        previous_valid_until: rfc3339(rotated.previous_valid_until),
    }))
}

/// Body of a revocation; may be empty.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why, up to 500 characters.
    #[schema(max_length = 500)]
    reason: Option<String>,
}

#[utoipa::path(post, path = "/admin/api-keys/{id}/revoke", tag = "keys", params(("id" = String, Path)),
    request_body(content = Option<RevokeRequest>), responses((status = 200, body = KeyResponse)),
    security(("admin_key" = ["admin:keys:write"])))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    request: axum::extract::Request,
) -> Result<Json<KeyResponse>, ApiError> {
    let actor = authorize(&state, request.headers(), AdminScope::KeysWrite, "key.revoke").await?;
    let id = key_id(&id)?;
    let body: RevokeRequest = optional_body(request, &state).await?;
    Ok(Json(state.service.revoke(&actor, id, body.reason).await?.into()))
}

/// A field that may be absent (leave it), `null`, or a value: `Some(None)` is an explicit `null`.
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Body of `PATCH /admin/api-keys/{id}`: at least one field. An absent field is left as it is; `null`
/// clears `owner`, resets `metadata` to `{}` and is refused (422) for the others.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
// `minProperties: 1` is set in `openapi.rs`: utoipa-gen 5.5's `min_properties` writes `maxProperties`.
pub struct UpdateKeyRequest {
    /// Display name, 1 to 200 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 200, pattern = r"\S")]
    name: Option<Option<String>>,
    /// Rate-limit tier, `[a-z0-9_-]{1,32}`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = false, pattern = "^[a-z0-9_-]{1,32}$")]
    tier: Option<Option<String>>,
    /// The whole new permission set (at most 64), e.g. `query:read`, `batch:10`, `*`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Vec<super::openapi::PermissionString>, inline, required = false, max_items = 64)]
    permissions: Option<Option<Vec<String>>>,
    /// A JSON object of at most 8 KiB; `null` resets it to `{}`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>, required = false)]
    metadata: Option<Option<serde_json::Value>>,
    /// Who the key belongs to, up to 200 characters; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, required = false, max_length = 200)]
    owner: Option<Option<String>>,
    /// New expiry, RFC 3339: in the future, at most 3650 days after the key was created.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, format = DateTime, required = false)]
    expires_at: Option<Option<String>>,
    /// `false` switches the key off (it is refused exactly like a revoked key), `true` on again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool, required = false)]
    enabled: Option<Option<bool>>,
}

#[utoipa::path(patch, path = "/admin/api-keys/{id}", tag = "keys", params(("id" = String, Path, description = "api_key_id")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "the key as it is now", body = KeyResponse),
        (status = 400, description = "malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "no usable admin key", body = super::error::ErrorBody),
        (status = 403, description = "the admin key lacks admin:keys:write", body = super::error::ErrorBody),
        (status = 404, description = "no key with this id (`key_not_found`)", body = super::error::ErrorBody),
        (status = 409, description = "the key is revoked (`key_revoked`), or a concurrent change won (`conflict`)",
            body = super::error::ErrorBody),
        (status = 413, description = "the body is over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "the body is not application/json", body = super::error::ErrorBody),
        (status = 422, description = "no field, an unknown field, or a value create would refuse", body = super::error::ErrorBody),
        (status = 429, description = "too many bad keys from this address", body = super::error::ErrorBody),
        (status = 503, description = "the database is unavailable", body = super::error::ErrorBody)),
    security(("admin_key" = ["admin:keys:write"])))]
pub(crate) async fn update_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    IdParam(id): IdParam,
    body: Result<JsonBody<UpdateKeyRequest>, ApiError>,
) -> Result<Json<KeyResponse>, ApiError> {
    let actor = authorize(&state, &headers, AdminScope::KeysWrite, "key.update").await?;
    let id = key_id(&id)?;
    let JsonBody(request) = body?;
    let update = KeyUpdate {
        name: request.name,
        tier: request.tier,
        permissions: request.permissions,
        metadata: request.metadata,
        owner: request.owner,
        expires_at: request.expires_at,
        enabled: request.enabled,
    };
    Ok(Json(state.service.update(&actor, id, update).await?.into()))
}

/// Answer of reveal.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevealedResponse {
    /// The current whole key.
    api_key: String,
    api_key_id: String,
}

#[utoipa::path(post, path = "/admin/api-keys/{id}/reveal", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = RevealedResponse)), security(("admin_key" = ["admin:reveal"])))]
pub(crate) async fn reveal_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    IdParam(id): IdParam,
) -> Result<Json<RevealedResponse>, ApiError> {
    let actor = authorize(&state, &headers, AdminScope::Reveal, "key.reveal").await?;
    let id = key_id(&id)?;
    let key = state.service.reveal(&actor, id).await?;
    Ok(Json(RevealedResponse { api_key: key.expose().to_owned(), api_key_id: id.to_string() }))
}

/// Filtering the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries about this key.
    #[param(pattern = r"^[0-6][0-9A-Za-z]{21}$")]
    key_id: Option<String>,
    /// At most this many entries, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryResponse {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    key_id: Option<String>,
    outcome: String,
    #[schema(value_type = Object)]
    detail: serde_json::Value,
    prev_hash: String,
    hash: String,
}

/// Audit entries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    entries: Vec<AuditEntryResponse>,
}

#[utoipa::path(get, path = "/admin/audit-log", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage)), security(("admin_key" = ["admin:audit:read"])))]
pub(crate) async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    authorize(&state, &headers, AdminScope::AuditRead, "audit.read").await?;
    let query = query_fields(query)?;
    let limit = page_limit(query.limit)?;
    let key_id = query_key_id(query.key_id.as_deref(), "key_id")?;
    let entries = state.service.audit_log(key_id, limit).await?;
    let entries = entries
        .into_iter()
        .map(|e| AuditEntryResponse {
            seq: e.seq,
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            key_id: e.key_id,
            outcome: e.outcome,
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null),
            prev_hash: e.prev_hash,
            hash: e.hash,
        })
        .collect();
    Ok(Json(AuditPage { entries }))
}

/// Answer of a rewrap.
#[derive(Debug, Serialize, ToSchema)]
pub struct RewrapResponse {
    /// Data keys re-encrypted by this call.
    rewrapped: u64,
    /// The KMS key they are now wrapped under.
    kms_key_id: String,
}

#[utoipa::path(post, path = "/admin/kms/rewrap", tag = "kms",
    responses((status = 200, body = RewrapResponse), (status = 503, body = super::error::ErrorBody)),
    security(("admin_key" = ["admin:kms"])))]
pub(crate) async fn rewrap(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<RewrapResponse>, ApiError> {
    let actor = authorize(&state, &headers, AdminScope::Kms, "kms.rewrap").await?;
    let rewrapped = state.service.rewrap(&actor, &|_, _| {}).await?;
    Ok(Json(RewrapResponse { rewrapped, kms_key_id: state.service.kms().current_key_id().to_owned() }))
}
