//! The console's screens (one module each) and what they share: the navigation, the guards of a page
//! and of a change, and the shown-once key page. Every change is a form POST carrying the session's
//! CSRF token, answered by a redirect, except those that show a key once: they answer the page itself.

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use keygate_shared::{AdminScope, KeyId};
use serde::Deserialize;

mod audit_log;
mod key_actions;
mod key_list;
mod key_page;
mod sign_in;

pub(crate) use audit_log::audit_page;
pub(crate) use key_actions::{edit_key, reveal_key, reveal_page, revoke_key, rotate_key, set_enabled};
pub(crate) use key_list::{create_key, key_list, new_key_page};
pub(crate) use key_page::key_page;
pub(crate) use sign_in::{sign_in, sign_in_page, sign_out};

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
        // Audited as the API audits a refused admin request.
        let detail = serde_json::json!({"scope": scope.as_str()});
        if let Err(error) = state.service.audit_event(&op.actor(), "console.action", "forbidden", detail).await {
            return Err(service_error(error));
        }
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

#[derive(Deserialize)]
pub(crate) struct TokenForm {
    csrf: String,
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

/// Permission strings typed as a list separated by commas, spaces or lines.
fn permission_list(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n', '\r', '\t']).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
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
