//! The OpenAPI document's error side, written from the route table: every operation gets the error
//! answers that the layers around its handler give (authentication, scope, the failed-attempt limit,
//! body parsing, timeouts), each with the error schema and its `code` values, and its security
//! requirement. The handlers' own annotations keep what only they know (success bodies, a 409).
//!
//! One table drives the router, the auth matrix and this, so a route cannot be served with an answer the
//! document does not list.

use axum::http::Method;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

use super::{routes, Access, RouteSpec};

/// The schema of one permission string: 1 to 64 characters of `:`-separated `[a-z0-9_*.-]` segments
/// (what `keygate_shared::Permission` parses; `batch:0` and unknown `admin:` scopes are refused too).
pub(crate) struct PermissionString;

impl utoipa::PartialSchema for PermissionString {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(keygate_shared::permissions::MAX_PERMISSION_LEN))
            .pattern(Some(r"^[a-z0-9_*.-]+(:[a-z0-9_*.-]+)*$"))
            .into()
    }
}

impl utoipa::ToSchema for PermissionString {}

/// The error answers a route can give whatever its handler does, by status: the codes and what they mean.
fn layer_errors(route: &RouteSpec, has_body: bool, has_query: bool) -> Vec<(u16, &'static str)> {
    let mut errors = Vec::new();
    if has_query {
        errors.push((422, "`invalid_query`: a query parameter is unknown or out of range"));
    }
    if has_body {
        errors.push((400, "`malformed_json`: the body is not JSON; `bad_request`: it could not be read"));
        errors.push((413, "`body_too_large`: the body is larger than 64 KiB"));
        errors.push((415, "`unsupported_media_type`: the body is not sent as `application/json`"));
        errors.push((
            422,
            "`invalid_body` or a field's own code (e.g. `invalid_name`): the body is not an object, or a field is missing, unknown or out of range",
        ));
    }
    match route.access {
        Access::Admin(_) => {
            errors.push((401, "`unauthorized`: no admin key, or one that is malformed, unknown, revoked, expired or disabled"));
            errors.push((403, "`forbidden`: the admin key lacks the scope this route needs"));
        }
        Access::EdgeSignature => errors.push((
            401,
            "`bad_timestamp`, `stale_timestamp` or `bad_signature`: the body is not signed by an edge holding the sync secret",
        )),
        Access::Public => {}
    }
    if route.path.contains("{id}") {
        errors.push((404, "`key_not_found`: no API key has this id"));
    }
    // Every route sits behind the failed-attempt limit and, unless untimed, the request timeout.
    errors
        .push((429, "`too_many_failed_attempts`: this address sent too many bad keys this minute (see `Retry-After`)"));
    if !matches!(route.path, "/healthz" | "/metrics" | "/openapi.json") {
        errors.push((
            503,
            "`database_unavailable`, `kms_unavailable`, or the request timed out: retry (see `Retry-After`)",
        ));
    }
    errors
}

/// An error answer with the error schema.
fn error_response(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    RefOr::T(ResponseBuilder::new().description(description).content("application/json", content).build())
}

fn operation<'a>(item: &'a mut PathItem, method: &Method) -> Option<&'a mut Operation> {
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        _ => None,
    }
}

/// Adds what the route table knows to every operation of the document.
pub(crate) struct FromRouteTable;

impl utoipa::Modify for FromRouteTable {
    fn modify(&self, openapi: &mut OpenApi) {
        // A PATCH with no field changes nothing and is refused; the document says so. (Not with
        // `#[schema(min_properties = 1)]`: utoipa-gen 5.5 writes that as `maxProperties`.)
        if let Some(components) = openapi.components.as_mut() {
            if let Some(RefOr::T(Schema::Object(update))) = components.schemas.get_mut("UpdateKeyRequest") {
                update.min_properties = Some(1);
            }
        }
        for route in routes() {
            let Some(item) = openapi.paths.paths.get_mut(route.path) else { continue };
            let Some(operation) = operation(item, &route.method) else { continue };
            let has_body = operation.request_body.is_some();
            let has_query = operation.parameters.iter().flatten().any(|p| p.parameter_in == ParameterIn::Query);
            for (status, description) in layer_errors(&route, has_body, has_query) {
                operation.responses.responses.entry(status.to_string()).or_insert_with(|| error_response(description));
            }
            match route.access {
                Access::Admin(scope) => {
                    operation.security = Some(vec![SecurityRequirement::new("admin_key", [scope.as_str()])]);
                    let needs = format!("Needs an admin key holding `{}` or `admin:*`.", scope.as_str());
                    operation.description = Some(match operation.description.take() {
                        Some(text) if !text.is_empty() => format!("{text}\n\n{needs}"),
                        _ => needs,
                    });
                }
                Access::EdgeSignature => {
                    operation.security = Some(vec![SecurityRequirement::new("edge_signature", Vec::<String>::new())]);
                }
                // No credential: an empty requirement list says so explicitly.
                Access::Public => operation.security = Some(Vec::new()),
            }
        }
    }
}
