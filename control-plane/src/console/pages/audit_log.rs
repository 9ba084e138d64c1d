//! The audit log, filtered by key, and the chain check (`audit verify`).

use super::*;

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    key_id: String,
    entries: Vec<AuditRow>,
    verified: Option<Result<i64, String>>,
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    key_id: Option<String>,
    verify: Option<String>,
}

/// The audit log, newest first, optionally about one key, and `?verify=1` checks the whole chain
/// (it changes nothing, so it is a GET).
pub(crate) async fn audit_page(
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
