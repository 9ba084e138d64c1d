//! The actions on a key's page: edit, disable / enable, rotate, revoke, and reveal after a confirmation.

use super::*;

/// A form of a key action that carries the session's CSRF token.
trait WithToken {
    fn csrf(&self) -> &str;
}

/// A key action's form, the operator allowed to do it with `scope`, and the key's id; or the answer
/// that refuses it (a bad form, no session, a bad token or origin, a missing scope, an unknown id).
async fn checked<F: WithToken>(
    state: &ConsoleState,
    headers: &HeaderMap,
    id: &str,
    form: Result<Form<F>, FormRejection>,
    scope: AdminScope,
) -> Result<(F, Operator, KeyId), Response> {
    let Form(form) = form.map_err(|rejection| bad_form(&rejection))?;
    let op = may_change(state, headers, form.csrf(), Some(scope)).await?;
    let id = id.parse::<KeyId>().map_err(|_| service_error(ServiceError::NotFound))?;
    Ok((form, op, id))
}

impl WithToken for TokenForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

fn back_to(id: KeyId, done: &str) -> Response {
    Redirect::to(&format!("/ui/keys/{id}?done={done}")).into_response()
}

#[derive(Deserialize)]
pub(crate) struct EditForm {
    csrf: String,
    name: String,
    tier: String,
    permissions: String,
    owner: Option<String>,
    expires_at: Option<String>,
    /// The expiry the form was drawn with: an unchanged expiry is left alone.
    expires_was: Option<String>,
}

impl WithToken for EditForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(crate) async fn edit_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<EditForm>, FormRejection>,
) -> Response {
    let (form, op, id) = match checked(&state, &headers, &id, form, AdminScope::KeysWrite).await {
        Ok(checked) => checked,
        Err(response) => return response,
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
pub(crate) struct EnabledForm {
    csrf: String,
    enabled: bool,
}

impl WithToken for EnabledForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(crate) async fn set_enabled(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<EnabledForm>, FormRejection>,
) -> Response {
    let (form, op, id) = match checked(&state, &headers, &id, form, AdminScope::KeysWrite).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let update = KeyUpdate { enabled: Some(Some(form.enabled)), ..KeyUpdate::default() };
    match state.service.update(&op.actor(), id, update).await {
        Ok(_) => back_to(id, if form.enabled { "enabled" } else { "disabled" }),
        Err(error) => service_error(error),
    }
}

#[derive(Deserialize)]
pub(crate) struct RotateForm {
    csrf: String,
    grace_period_secs: i64,
}

impl WithToken for RotateForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(crate) async fn rotate_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<RotateForm>, FormRejection>,
) -> Response {
    let (form, op, id) = match checked(&state, &headers, &id, form, AdminScope::KeysWrite).await {
        Ok(checked) => checked,
        Err(response) => return response,
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
pub(crate) struct RevokeForm {
    csrf: String,
    reason: Option<String>,
}

impl WithToken for RevokeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(crate) async fn revoke_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> Response {
    let (form, op, id) = match checked(&state, &headers, &id, form, AdminScope::KeysWrite).await {
        Ok(checked) => checked,
        Err(response) => return response,
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
pub(crate) async fn reveal_page(
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

pub(crate) async fn reveal_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let (_, op, id) = match checked(&state, &headers, &id, form, AdminScope::Reveal).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    match state.service.reveal(&op.actor(), id).await {
        Ok(key) => {
            shown(&op, StatusCode::OK, "Key revealed", id, key.expose(), "This reveal is in the audit log.".into())
        }
        Err(error) => service_error(error),
    }
}
