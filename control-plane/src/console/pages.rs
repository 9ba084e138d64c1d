//! The console's screens and actions: sign-in, the key list, a key's page with its charts and
//! actions, create, reveal, and the audit log. Every change is a form POST carrying the session's CSRF
//! token, answered by a redirect, except those that show a key once: they answer the page itself.

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use keygate_shared::{AdminScope, KeyId};
use serde::Deserialize;

use super::charts::{self, OUTCOMES};
use super::{csrf, error_page, operator, page, service_error, ConsoleState, NoSession, Operator};
use crate::api::admin::rfc3339;
use crate::key_update::KeyUpdate;
use crate::service::{NewKey, ServiceError};
use crate::usage::service::UsageQuery;
use crate::usage::{Granularity, UsageBucket};

/// Keys per page of the list.
pub const PAGE_SIZE: usize = 20;
/// Most keys the list reads to search and filter in the process.
const LIST_SCAN: i64 = 10_000;

/// What the layout needs to draw the navigation.
struct Nav {
    csrf: String,
    admin_id: String,
    can_write: bool,
    can_audit: bool,
}

impl Nav {
    fn of(op: &Operator) -> Self {
        Self {
            csrf: op.session.csrf.expose().to_owned(),
            admin_id: op.row.id.to_string(),
            can_write: op.can(AdminScope::KeysWrite),
            can_audit: op.can(AdminScope::AuditRead),
        }
    }
}

/// A page's guard: the operator, or the sign-in redirect.
async fn signed_in(state: &ConsoleState, headers: &HeaderMap) -> Result<Operator, Response> {
    match operator(state, headers).await {
        Ok(op) => Ok(op),
        Err(NoSession::Missing) => Err(Redirect::to("/ui/sign-in").into_response()),
        Err(NoSession::Failed(error)) => Err(service_error(error)),
    }
}

/// A change's guard: a live session, a same-origin request, the session's token, and `scope`; else
/// 403 (401 without a session) and nothing changes.
async fn may_change(
    state: &ConsoleState,
    headers: &HeaderMap,
    token: &str,
    scope: Option<AdminScope>,
) -> Result<Operator, Response> {
    let op = match operator(state, headers).await {
        Ok(op) => op,
        Err(NoSession::Missing) => return Err(error_page(StatusCode::FORBIDDEN, "Sign in first.", false)),
        Err(NoSession::Failed(error)) => return Err(service_error(error)),
    };
    if !csrf::same_origin(headers) || !csrf::token_matches(op.session.csrf.expose(), token) {
        return Err(error_page(StatusCode::FORBIDDEN, "This form is stale or came from another site.", true));
    }
    if let Some(scope) = scope.filter(|scope| !op.can(*scope)) {
        return Err(error_page(StatusCode::FORBIDDEN, format!("This admin key lacks {}.", scope.as_str()), true));
    }
    Ok(op)
}

fn bad_form(rejection: &FormRejection) -> Response {
    error_page(StatusCode::UNPROCESSABLE_ENTITY, format!("The form is not valid: {}", rejection.body_text()), true)
}

/// The notice after a redirect: one of the actions' fixed words, never other text from the URL.
fn notice(done: Option<String>) -> Option<String> {
    done.filter(|done| ["edited", "enabled", "disabled", "revoked"].contains(&done.as_str()))
}

fn time(at: Option<i64>) -> String {
    at.map_or_else(|| "—".to_owned(), rfc3339)
}

// ---- sign-in ----

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    error: Option<String>,
}

pub(super) async fn sign_in_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if operator(&state, &headers).await.is_ok() {
        return Redirect::to("/ui/keys").into_response();
    }
    page(StatusCode::OK, &SignInPage { error: None })
}

#[derive(Deserialize)]
pub(super) struct SignInForm {
    api_key: String,
}

/// Checks the admin key once (a failure is a 401, counted toward the failed-attempt limit) and starts
/// a session holding its id, never the key.
pub(super) async fn sign_in(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    if !csrf::same_origin(&headers) {
        return error_page(StatusCode::FORBIDDEN, "Sign in from the console's own page.", false);
    }
    let Ok(Form(form)) = form else {
        return page(StatusCode::UNPROCESSABLE_ENTITY, &SignInPage { error: Some("Enter an admin key.".into()) });
    };
    let refused = |status, message: &str| page(status, &SignInPage { error: Some(message.to_owned()) });
    match state.service.authenticate(Some(form.api_key.trim()), AdminScope::KeysRead, "console.sign_in").await {
        Ok(crate::service::Actor::Admin(admin_id)) => {
            let (id, _) = state.sessions.start(admin_id);
            let cookie = super::cookie_header(Some(id.expose()), &headers);
            ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/keys")).into_response()
        }
        Ok(_) | Err(ServiceError::Unauthorized) => refused(StatusCode::UNAUTHORIZED, "That is not a live admin key."),
        Err(ServiceError::Forbidden(_)) => {
            refused(StatusCode::FORBIDDEN, "This admin key lacks admin:keys:read, which the console needs.")
        }
        Err(error) => service_error(error),
    }
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    csrf: String,
}

pub(super) async fn sign_out(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    let op = match may_change(&state, &headers, &token, None).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    state.sessions.end(&op.session_id);
    ([(header::SET_COOKIE, super::cookie_header(None, &headers))], Redirect::to("/ui/sign-in")).into_response()
}

// ---- the key list ----

/// One row of the key list.
struct KeyRowView {
    id: String,
    name: String,
    tier: String,
    status: &'static str,
    last_used: String,
    expires: String,
    should_rotate: bool,
    sparkline: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeyListPage {
    nav: Nav,
    rows: Vec<KeyRowView>,
    q: String,
    status: String,
    statuses: [&'static str; 5],
    page: usize,
    pages: usize,
    matched: usize,
    prev_link: Option<String>,
    next_link: Option<String>,
    done: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    q: Option<String>,
    status: Option<String>,
    page: Option<usize>,
    done: Option<String>,
}

fn list_link(q: &str, status: &str, page: usize) -> String {
    let mut link = format!("/ui/keys?page={page}");
    for (name, value) in [("q", q), ("status", status)] {
        if !value.is_empty() {
            link.push_str(&format!("&{name}={}", encode(value)));
        }
    }
    link
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// 24 hourly buckets ending with the current hour.
fn last_day(now: i64) -> UsageQuery {
    let to = Granularity::Hour.bucket(now) + 3_600;
    UsageQuery { granularity: Some(Granularity::Hour), from: Some(to - 24 * 3_600), to: Some(to), limit: Some(10) }
}

/// 7 daily buckets ending with today.
fn last_week(now: i64) -> UsageQuery {
    let to = Granularity::Day.bucket(now) + 86_400;
    UsageQuery { granularity: Some(Granularity::Day), from: Some(to - 7 * 86_400), to: Some(to), limit: Some(10) }
}

/// The keys, searched (name, id or owner) and filtered by status in the process, a page at a time.
pub(super) async fn key_list(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(Query(query)) = query else {
        return error_page(StatusCode::UNPROCESSABLE_ENTITY, "The search is not valid.", true);
    };
    let q = query.q.unwrap_or_default().trim().to_owned();
    let status = query.status.unwrap_or_default();
    let needle = q.to_lowercase();
    let mut all = Vec::new();
    let mut after = None;
    while (all.len() as i64) < LIST_SCAN {
        let batch = match state.service.list(after, 1_000).await {
            Ok(batch) => batch,
            Err(error) => return service_error(error),
        };
        let full = batch.len() == 1_000;
        after = batch.last().map(|view| view.row.id);
        all.extend(batch.into_iter().filter(|view| {
            (status.is_empty() || view.status == status)
                && (needle.is_empty()
                    || view.row.name.to_lowercase().contains(&needle)
                    || view.row.id.to_string().to_lowercase().contains(&needle)
                    || view.row.owner.as_deref().is_some_and(|o| o.to_lowercase().contains(&needle)))
        }));
        if !full {
            break;
        }
    }
    let matched = all.len();
    let pages = matched.div_ceil(PAGE_SIZE).max(1);
    let page_no = query.page.unwrap_or(1).clamp(1, pages);
    let now = state.service.clock().now();
    let mut rows = Vec::new();
    for view in all.into_iter().skip((page_no - 1) * PAGE_SIZE).take(PAGE_SIZE) {
        let usage = match state.service.key_usage(view.row.id, last_day(now)).await {
            Ok(usage) => usage,
            Err(error) => return service_error(error),
        };
        rows.push(KeyRowView {
            id: view.row.id.to_string(),
            sparkline: charts::sparkline(&usage.series, &format!("requests per hour, last 24 h, {}", view.row.name)),
            name: view.row.name,
            tier: view.row.tier,
            status: view.status,
            last_used: time(view.row.last_used_at),
            expires: time(view.row.expires_at),
            should_rotate: view.should_rotate,
        });
    }
    page(
        StatusCode::OK,
        &KeyListPage {
            nav: Nav::of(&op),
            rows,
            prev_link: (page_no > 1).then(|| list_link(&q, &status, page_no - 1)),
            next_link: (page_no < pages).then(|| list_link(&q, &status, page_no + 1)),
            q,
            status,
            statuses: ["active", "disabled", "expired", "revoked", ""],
            page: page_no,
            pages,
            matched,
            done: notice(query.done),
        },
    )
}

// ---- create, and the shown-once key ----

#[derive(Template)]
#[template(path = "new_key.html")]
struct NewKeyPage {
    nav: Nav,
}

pub(super) async fn new_key_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers).await {
        Ok(op) if op.can(AdminScope::KeysWrite) => page(StatusCode::OK, &NewKeyPage { nav: Nav::of(&op) }),
        Ok(_) => error_page(StatusCode::FORBIDDEN, "This admin key lacks admin:keys:write.", true),
        Err(response) => response,
    }
}

/// A key shown once, in the answer to the POST that made it visible; never in a URL or the session.
#[derive(Template)]
#[template(path = "shown_key.html")]
struct ShownKeyPage {
    nav: Nav,
    heading: &'static str,
    key_id: String,
    api_key: String,
    note: String,
}

fn shown(op: &Operator, status: StatusCode, heading: &'static str, key_id: KeyId, key: &str, note: String) -> Response {
    page(status, &ShownKeyPage { nav: Nav::of(op), heading, key_id: key_id.to_string(), api_key: key.to_owned(), note })
}

#[derive(Deserialize)]
pub(super) struct CreateForm {
    csrf: String,
    name: String,
    tier: String,
    permissions: String,
    expires_in_days: Option<String>,
    owner: Option<String>,
}

/// Permission strings typed as a list separated by commas, spaces or lines.
fn permission_list(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n', '\r', '\t']).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

pub(super) async fn create_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    form: Result<Form<CreateForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return bad_form(&rejection),
    };
    let op = match may_change(&state, &headers, &form.csrf, Some(AdminScope::KeysWrite)).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let expires_in_days = match non_empty(form.expires_in_days).map(|d| d.parse::<i64>()).transpose() {
        Ok(days) => days,
        Err(_) => return error_page(StatusCode::UNPROCESSABLE_ENTITY, "Expiry must be a number of days.", true),
    };
    let request = NewKey {
        name: form.name,
        tier: non_empty(Some(form.tier)).unwrap_or_else(|| "default".into()),
        permissions: permission_list(&form.permissions),
        expires_in_days,
        region: None,
        owner: non_empty(form.owner),
        metadata: None,
    };
    match state.service.create(&op.actor(), request).await {
        Ok(created) => shown(
            &op,
            StatusCode::CREATED,
            "Key created",
            created.view.row.id,
            created.key.expose(),
            format!("{} ({})", created.view.row.name, created.view.row.tier),
        ),
        Err(error) => service_error(error),
    }
}

// ---- a key's page ----

struct GenerationView {
    generation: i64,
    status: &'static str,
    created: String,
    not_after: String,
}

struct BucketRow {
    label: String,
    counts: [i64; 4],
}

struct AuditRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    key_id: String,
    outcome: String,
    detail: String,
}

impl From<crate::audit::AuditEntry> for AuditRow {
    fn from(entry: crate::audit::AuditEntry) -> Self {
        Self {
            seq: entry.seq,
            at: rfc3339(entry.at),
            actor: entry.actor,
            action: entry.action,
            key_id: entry.key_id.unwrap_or_default(),
            outcome: entry.outcome,
            detail: entry.detail,
        }
    }
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    nav: Nav,
    can_reveal: bool,
    id: String,
    name: String,
    owner: String,
    tier: String,
    status: &'static str,
    enabled: bool,
    permissions: Vec<String>,
    metadata: String,
    prefix: String,
    region: String,
    created: String,
    expires: String,
    expires_input: String,
    rotated: String,
    revoked: String,
    revoked_reason: String,
    last_used: String,
    should_rotate: bool,
    generations: Vec<GenerationView>,
    day_chart: String,
    day_rows: Vec<BucketRow>,
    week_chart: String,
    week_rows: Vec<BucketRow>,
    outcomes: [(&'static str, &'static str); 4],
    operations: Vec<(String, i64)>,
    entries: Vec<AuditRow>,
    done: Option<String>,
}

fn hour_label(start: i64) -> String {
    chrono::DateTime::from_timestamp(start, 0).map(|t| t.format("%H:00").to_string()).unwrap_or_default()
}

fn day_label(start: i64) -> String {
    chrono::DateTime::from_timestamp(start, 0).map(|t| t.format("%m-%d").to_string()).unwrap_or_default()
}

fn bucket_rows(series: &[UsageBucket], label: fn(i64) -> String) -> Vec<BucketRow> {
    series
        .iter()
        .map(|b| BucketRow {
            label: label(b.start),
            counts: [b.counts.admitted, b.counts.forbidden, b.counts.rate_limited, b.counts.refused],
        })
        .collect()
}

#[derive(Deserialize)]
pub(super) struct DoneQuery {
    done: Option<String>,
}

pub(super) async fn key_page(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<KeyId>() else {
        return service_error(ServiceError::NotFound);
    };
    let (view, secrets) = match state.service.show(id).await {
        Ok(found) => found,
        Err(error) => return service_error(error),
    };
    let now = state.service.clock().now();
    let (day, week) =
        match (state.service.key_usage(id, last_day(now)).await, state.service.key_usage(id, last_week(now)).await) {
            (Ok(day), Ok(week)) => (day, week),
            (Err(error), _) | (_, Err(error)) => return service_error(error),
        };
    let entries = if op.can(AdminScope::AuditRead) {
        match state.service.audit_log(Some(id), 20).await {
            Ok(entries) => entries.into_iter().map(AuditRow::from).collect(),
            Err(error) => return service_error(error),
        }
    } else {
        Vec::new()
    };
    let current = view.row.generation;
    let generations = secrets
        .iter()
        .map(|s| GenerationView {
            generation: s.generation,
            status: if s.generation == current {
                "current"
            } else if s.not_after.is_some_and(|end| now < end) {
                "grace"
            } else {
                "retired"
            },
            created: rfc3339(s.created_at),
            not_after: time(s.not_after),
        })
        .collect();
    let row = view.row;
    let name = row.name.clone();
    page(
        StatusCode::OK,
        &KeyPage {
            can_reveal: op.can(AdminScope::Reveal),
            nav: Nav::of(&op),
            id: row.id.to_string(),
            owner: row.owner.unwrap_or_default(),
            tier: row.tier,
            status: view.status,
            enabled: row.disabled_at.is_none(),
            permissions: row.permissions,
            metadata: row.metadata.to_string(),
            prefix: row.prefix,
            region: row.region,
            created: rfc3339(row.created_at),
            expires: time(row.expires_at),
            expires_input: row.expires_at.map(rfc3339).unwrap_or_default(),
            rotated: time(row.rotated_at),
            revoked: time(row.revoked_at),
            revoked_reason: row.revoked_reason.unwrap_or_default(),
            last_used: time(row.last_used_at),
            should_rotate: view.should_rotate,
            generations,
            day_chart: charts::stacked_bars(
                &day.series,
                &format!("{name}: requests by outcome, last 24 hours"),
                hour_label,
            ),
            day_rows: bucket_rows(&day.series, hour_label),
            week_chart: charts::stacked_bars(
                &week.series,
                &format!("{name}: requests by outcome, last 7 days"),
                day_label,
            ),
            week_rows: bucket_rows(&week.series, day_label),
            outcomes: OUTCOMES,
            operations: week.operations,
            entries,
            name,
            done: notice(query.ok().and_then(|Query(q)| q.done)),
        },
    )
}

// ---- actions on a key ----

fn back_to(id: KeyId, done: &str) -> Response {
    Redirect::to(&format!("/ui/keys/{id}?done={done}")).into_response()
}

#[derive(Deserialize)]
pub(super) struct EditForm {
    csrf: String,
    name: String,
    tier: String,
    permissions: String,
    owner: Option<String>,
    expires_at: Option<String>,
    /// The expiry the form was drawn with: an unchanged expiry is left alone.
    expires_was: Option<String>,
}

pub(super) async fn edit_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<EditForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return bad_form(&rejection),
    };
    let op = match may_change(&state, &headers, &form.csrf, Some(AdminScope::KeysWrite)).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<KeyId>() else {
        return service_error(ServiceError::NotFound);
    };
    let update = KeyUpdate {
        name: Some(Some(form.name)),
        tier: Some(Some(form.tier.trim().to_owned())),
        permissions: Some(Some(permission_list(&form.permissions))),
        metadata: None,
        owner: Some(non_empty(form.owner)),
        expires_at: non_empty(form.expires_at).filter(|at| Some(at) != non_empty(form.expires_was).as_ref()).map(Some),
        enabled: None,
    };
    match state.service.update(&op.actor(), id, update).await {
        Ok(_) => back_to(id, "edited"),
        Err(error) => service_error(error),
    }
}

#[derive(Deserialize)]
pub(super) struct EnabledForm {
    csrf: String,
    enabled: bool,
}

pub(super) async fn set_enabled(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<EnabledForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return bad_form(&rejection),
    };
    let op = match may_change(&state, &headers, &form.csrf, Some(AdminScope::KeysWrite)).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<KeyId>() else {
        return service_error(ServiceError::NotFound);
    };
    let update = KeyUpdate { enabled: Some(Some(form.enabled)), ..KeyUpdate::default() };
    match state.service.update(&op.actor(), id, update).await {
        Ok(_) => back_to(id, if form.enabled { "enabled" } else { "disabled" }),
        Err(error) => service_error(error),
    }
}

#[derive(Deserialize)]
pub(super) struct RotateForm {
    csrf: String,
    grace_period_secs: i64,
}

pub(super) async fn rotate_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<RotateForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return bad_form(&rejection),
    };
    let op = match may_change(&state, &headers, &form.csrf, Some(AdminScope::KeysWrite)).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<KeyId>() else {
        return service_error(ServiceError::NotFound);
    };
    match state.service.rotate(&op.actor(), id, Some(form.grace_period_secs)).await {
        Ok(rotated) => shown(
            &op,
            StatusCode::OK,
            "Key rotated",
            id,
            rotated.key.expose(),
            format!(
                "Generation {}. The previous secret works until {}.",
                rotated.generation,
                rfc3339(rotated.previous_valid_until)
            ),
        ),
        Err(error) => service_error(error),
    }
}

#[derive(Deserialize)]
pub(super) struct RevokeForm {
    csrf: String,
    reason: Option<String>,
}

pub(super) async fn revoke_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return bad_form(&rejection),
    };
    let op = match may_change(&state, &headers, &form.csrf, Some(AdminScope::KeysWrite)).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<KeyId>() else {
        return service_error(ServiceError::NotFound);
    };
    match state.service.revoke(&op.actor(), id, non_empty(form.reason)).await {
        Ok(_) => back_to(id, "revoked"),
        Err(error) => service_error(error),
    }
}

#[derive(Template)]
#[template(path = "reveal.html")]
struct RevealPage {
    nav: Nav,
    id: String,
    name: String,
}

/// Reveal asks first: the key is shown only by the confirming POST.
pub(super) async fn reveal_page(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    if !op.can(AdminScope::Reveal) {
        return error_page(StatusCode::FORBIDDEN, "This admin key lacks admin:reveal.", true);
    }
    let Ok(id) = id.parse::<KeyId>() else {
        return service_error(ServiceError::NotFound);
    };
    match state.service.show(id).await {
        Ok((view, _)) => {
            page(StatusCode::OK, &RevealPage { nav: Nav::of(&op), id: id.to_string(), name: view.row.name })
        }
        Err(error) => service_error(error),
    }
}

pub(super) async fn reveal_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return bad_form(&rejection),
    };
    let op = match may_change(&state, &headers, &form.csrf, Some(AdminScope::Reveal)).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<KeyId>() else {
        return service_error(ServiceError::NotFound);
    };
    match state.service.reveal(&op.actor(), id).await {
        Ok(key) => {
            shown(&op, StatusCode::OK, "Key revealed", id, key.expose(), "This reveal is in the audit log.".into())
        }
        Err(error) => service_error(error),
    }
}

// ---- the audit log ----

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    key_id: String,
    entries: Vec<AuditRow>,
    verified: Option<Result<i64, String>>,
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    key_id: Option<String>,
    verify: Option<String>,
}

/// The audit log, newest first, optionally about one key, and `?verify=1` checks the whole chain
/// (it changes nothing, so it is a GET).
pub(super) async fn audit_page(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    if !op.can(AdminScope::AuditRead) {
        return error_page(StatusCode::FORBIDDEN, "This admin key lacks admin:audit:read.", true);
    }
    let Ok(Query(query)) = query else {
        return error_page(StatusCode::UNPROCESSABLE_ENTITY, "The filter is not valid.", true);
    };
    let key_text = non_empty(query.key_id).unwrap_or_default();
    let key_id = if key_text.is_empty() {
        None
    } else {
        match key_text.parse::<KeyId>() {
            Ok(id) => Some(id),
            Err(_) => return error_page(StatusCode::UNPROCESSABLE_ENTITY, "That is not a key id.", true),
        }
    };
    let entries = match state.service.audit_log(key_id, 200).await {
        Ok(entries) => entries.into_iter().map(AuditRow::from).collect(),
        Err(error) => return service_error(error),
    };
    let verified = if query.verify.is_some() {
        match state.service.audit_verify().await {
            Ok(result) => Some(result.map_err(|broken| broken.to_string())),
            Err(error) => return service_error(error),
        }
    } else {
        None
    };
    page(StatusCode::OK, &AuditPage { nav: Nav::of(&op), key_id: key_text, entries, verified })
}
