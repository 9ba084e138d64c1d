//! Sign-in and sign-out: the admin key is checked once, and a session holds its id.

use super::*;

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    error: Option<String>,
}

pub(crate) async fn sign_in_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if operator(&state, &headers).await.is_ok() {
        return Redirect::to("/ui/keys").into_response();
    }
    page(StatusCode::OK, &SignInPage { error: None })
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    api_key: String,
}

/// Checks the admin key once (a failure is a 401, counted toward the failed-attempt limit) and starts
/// a session holding its id, never the key.
pub(crate) async fn sign_in(
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
        Ok(actor @ crate::service::Actor::Admin(admin_id)) => {
            // Audited before the session exists: a sign-in that cannot be recorded does not happen.
            if let Err(error) = state.service.audit_event(&actor, "console.sign_in", "ok", serde_json::json!({})).await
            {
                return service_error(error);
            }
            let (id, _) = state.sessions.start(admin_id);
            let cookie = crate::console::cookie_header(Some(id.expose()), &headers);
            ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/keys")).into_response()
        }
        Ok(_) | Err(ServiceError::Unauthorized) => refused(StatusCode::UNAUTHORIZED, "That is not a live admin key."),
        Err(ServiceError::Forbidden(_)) => {
            refused(StatusCode::FORBIDDEN, "This admin key lacks admin:keys:read, which the console needs.")
        }
        Err(error) => service_error(error),
    }
}

pub(crate) async fn sign_out(
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
    // The session is over whatever the log says; a failed write is the operator's to read about.
    if let Err(error) = state.service.audit_event(&op.actor(), "console.sign_out", "ok", serde_json::json!({})).await {
        tracing::warn!(%error, "console sign-out not audited");
    }
    ([(header::SET_COOKIE, crate::console::cookie_header(None, &headers))], Redirect::to("/ui/sign-in")).into_response()
}
