//! The HTTP path: a GraphQL request checked ([`crate::check`]) and, if admitted, forwarded to the origin
//! with the key's identity; the origin's answer goes back with the rate-limit headers.
//!
//! Every call between the wasm and the runtime's JS costs, so the request's I/O is done in the
//! runtime's JS (`js/http.js`) and the wasm is entered once per request, with every input the check
//! needs, and answers once, with everything the forward needs:
//! - the wasm's `fetch` handler hands the request to js/http.js first ([`try_answer`]), which takes it
//!   if it plainly is a GraphQL request over HTTP (a GET or a POST, no `Upgrade` header, no
//!   `/_keygate/` in its URL) and leaves anything else to the handler's routing, so the wasm does not
//!   read the URL, the method and a header across the boundary on every request;
//! - js/http.js reads the body, and calls [`check_http`] with the method, the URL, the `X-API-Key` and
//!   client-address headers and the body;
//! - the check decides ([`crate::check`], in DESIGN.md's order), counts the request for usage and, for
//!   an admitted request, works out the origin's URL and the identity it is told (the signed
//!   `X-Keygate-*` headers and the JWT), which go back in one value ([`admitted`]);
//! - js/http.js copies the client's headers without the names Rust decides to drop
//!   ([`crate::identity::DROPPED_CLIENT_HEADERS`], [`crate::identity::IDENTITY_HEADER_PREFIX`]), sets the
//!   identity on them, sends the body it read to the origin and wraps its answer with the rate-limit
//!   headers. A refusal is a response the wasm made; js/http.js returns it as it is.
//!
//! The check is a Rust future polled once on the spot: with the record in the isolate's cache and the
//! origin's JWT at hand (nearly every request) it finishes without waiting. Only a request that must
//! wait (a KV read, a signature, a persisted query's document) goes to `wasm-bindgen-futures`'
//! executor, and js/http.js awaits its promise. The settings js/http.js needs (the check, the header
//! names) are handed to it once per isolate. BENCHMARKS.md (P1) has the measurements.

use std::cell::{Cell, OnceCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use keygate_shared::origin::{KEY_ID_HEADER, SIGNATURE_HEADER, TIER_HEADER, TIMESTAMP_HEADER};
use keygate_shared::KeyRecord;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::future_to_promise;
use worker::{js_sys, Context, Env, Result};

use crate::check::{check, refusal_response, Incoming, Refused};
use crate::identity::{DROPPED_CLIENT_HEADERS, IDENTITY_HEADER_PREFIX};
use crate::request_url::{path_and_query, query_pairs};
use crate::usage::flush::count_request;
use crate::usage::NotingRecords;
use crate::worker::{
    blocked_client, graphql_error, json_response, now, origin_token, remember, tiers, with_identity, KvDocuments,
    RecentKv, FAILED, LIMITER,
};

/// The largest request body checked; larger is refused with 413.
const MAX_BODY: u32 = 1024 * 1024;

/// The header that carries the key (as the runtime gives header names: lower case).
const API_KEY_HEADER: &str = "x-api-key";

#[wasm_bindgen(module = "/js/http.js")]
extern "C" {
    /// Hands js/http.js what it needs once per isolate: the check ([`check_http`]), the answer for an
    /// origin that did not answer ([`origin_failed`]), the names of the headers it reads and sets, and
    /// which client headers it drops.
    fn configure(
        check: &JsValue,
        failed: &JsValue,
        names: &js_sys::Array,
        dropped: &js_sys::Array,
        prefix: &str,
        elsewhere: &str,
    );

    /// A request that is plainly a GraphQL request over HTTP, answered (a promise of the response);
    /// `undefined` for any other, which the wasm routes ([`crate::worker::fetch`]).
    #[wasm_bindgen(js_name = serveIfHttp)]
    fn serve_if_http(request: &web_sys::Request, env: &JsValue, ctx: &JsValue) -> JsValue;

    /// A GraphQL request over HTTP, answered: a promise of the response.
    #[wasm_bindgen(js_name = serveHttp)]
    fn serve_http(request: &web_sys::Request, env: &JsValue, ctx: &JsValue) -> JsValue;

    /// What js/http.js needs to send an admitted request on, as one value.
    #[allow(clippy::too_many_arguments)]
    fn admitted(
        target: &str,
        key_id: &str,
        tier: &str,
        timestamp: f64,
        signature: Option<&str>,
        authorization: Option<&str>,
        limit: u32,
        remaining: u32,
    ) -> JsValue;
}

thread_local! {
    // Whether js/http.js has its settings in this isolate.
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
    // `ORIGIN_URL` without a trailing `/`: vars do not change within an isolate, so it is read once.
    static ORIGIN_URL: OnceCell<String> = const { OnceCell::new() };
}

/// A GraphQL request over HTTP answered in one call (a promise of the response), if js/http.js finds
/// `request` plainly is one: a GET or a POST, with no `Upgrade` header and nowhere in its URL the path
/// that is routed elsewhere (`/_keygate/`). `None` for any other request: the wasm routes it.
pub(crate) fn try_answer(request: &web_sys::Request, env: &Env, ctx: &JsValue) -> Option<JsValue> {
    configure_once();
    Some(serve_if_http(request, env, ctx)).filter(|served| !served.is_undefined())
}

/// Gives js/http.js its settings, once per isolate. The callbacks live as long as the isolate.
fn configure_once() {
    if CONFIGURED.with(|configured| configured.replace(true)) {
        return;
    }
    let check = Closure::<
        dyn FnMut(JsValue, JsValue, String, String, Option<String>, Option<String>, JsValue) -> JsValue,
    >::new(check_http)
    .into_js_value();
    let failed = Closure::<dyn FnMut(String, JsValue) -> JsValue>::new(|key_id: String, error: JsValue| {
        into_js(origin_failed(&key_id, &error))
    })
    .into_js_value();
    // In the order js/http.js reads them.
    let names: js_sys::Array = [
        API_KEY_HEADER,
        crate::worker::CLIENT_ADDRESS_HEADER,
        KEY_ID_HEADER,
        TIER_HEADER,
        TIMESTAMP_HEADER,
        SIGNATURE_HEADER,
        "authorization",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
    ]
    .iter()
    .map(|name| JsValue::from_str(name))
    .collect();
    let dropped: js_sys::Array = DROPPED_CLIENT_HEADERS.iter().map(|name| JsValue::from_str(name)).collect();
    configure(&check, &failed, &names, &dropped, IDENTITY_HEADER_PREFIX, crate::worker::ROUTED_ELSEWHERE);
}

/// Where the origin serves a request's `path_and_query` (its path, then `?` and the query if any).
pub(crate) fn origin_target(env: &Env, path_and_query: &str) -> Result<String> {
    ORIGIN_URL.with(|held| {
        if held.get().is_none() {
            let _ = held.set(env.var("ORIGIN_URL")?.to_string().trim_end_matches('/').to_owned());
        }
        Ok(format!("{}{path_and_query}", held.get().map_or("", String::as_str)))
    })
}

/// The verified identity of a key, as the origin is told it: the `X-Keygate-*` headers' values and
/// the `Authorization` header's.
pub(crate) struct Identity {
    pub(crate) key_id: String,
    pub(crate) tier: String,
    /// When the headers were signed (unix seconds).
    pub(crate) signed_at: i64,
    /// `X-Keygate-Signature`; none without `ORIGIN_SECRET`.
    pub(crate) signature: Option<Rc<str>>,
    /// `Bearer <JWT>`; none when this edge cannot sign (see [`crate::identity`]).
    pub(crate) authorization: Option<Rc<str>>,
}

/// The verified identity of the key `record` describes, signed, as headers and as the origin's JWT.
pub(crate) async fn identity(env: &Env, record: &KeyRecord) -> Identity {
    let key_id = record.key_id.to_string();
    let signed_at = now();
    let signature = with_identity(env, |identity| identity.header_signature(signed_at, &key_id, &record.tier));
    let authorization = origin_token(env, record).await;
    Identity { key_id, tier: record.tier.clone(), signed_at, signature, authorization }
}

/// Adds the verified identity of the key `record` describes to `headers` (the relay's upgrade).
pub(crate) async fn add_identity(headers: &web_sys::Headers, env: &Env, record: &KeyRecord) -> Result<()> {
    let identity = identity(env, record).await;
    headers.set(KEY_ID_HEADER, &identity.key_id)?;
    headers.set(TIER_HEADER, &identity.tier)?;
    headers.set(TIMESTAMP_HEADER, &identity.signed_at.to_string())?;
    if let Some(signature) = &identity.signature {
        headers.set(SIGNATURE_HEADER, signature)?;
    }
    if let Some(authorization) = &identity.authorization {
        headers.set("authorization", authorization)?;
    }
    Ok(())
}

/// Whether `request` asks for a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_websocket_upgrade(request: &web_sys::Request) -> bool {
    let upgrade = request.headers().get("upgrade").ok().flatten();
    upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
}

/// A GraphQL request over HTTP, answered: the response, or a promise of it. js/http.js does its I/O
/// and calls [`check_http`] once the body is read.
pub(crate) fn answer(request: web_sys::Request, env: Env, ctx: JsValue) -> JsValue {
    let method = request.method();
    if method != "GET" && method != "POST" {
        return into_js(graphql_error(405, "METHOD_NOT_ALLOWED", "GraphQL requests are GET or POST").map(Into::into));
    }
    configure_once();
    serve_http(&request, &env, &ctx)
}

/// What becomes of a checked request: an answer the edge gives itself (a refusal), or what to send
/// the origin.
enum Step {
    Answer(web_sys::Response),
    Send(Sending),
}

/// An admitted request, ready for the origin.
struct Sending {
    target: String,
    identity: Identity,
    limit: u32,
    remaining: u32,
}

/// The check, called by js/http.js once the body is read (`undefined` for a GET): a response that
/// refuses the request, the value [`admitted`] makes, or a promise of one of them.
fn check_http(
    env: JsValue,
    ctx: JsValue,
    method: String,
    url: String,
    api_key: Option<String>,
    client: Option<String>,
    body: JsValue,
) -> JsValue {
    let env: Env = env.unchecked_into();
    // Reads the vars (the failed-attempts limit among them) on an isolate's first request.
    let _ = tiers(&env);
    let client = client.unwrap_or_default();
    if let Some(blocked) = blocked_client(&client) {
        return into_js(blocked.map(Into::into));
    }
    let body = if body.is_undefined() { None } else { Some(js_sys::Uint8Array::new(&body)) };
    if body.as_ref().is_some_and(|body| body.length() > MAX_BODY) {
        return into_js(
            graphql_error(413, "PAYLOAD_TOO_LARGE", "the request body is larger than 1 MiB").map(Into::into),
        );
    }
    let body = body.map(|body| body.to_vec()).unwrap_or_default();
    let request = Presented { env, ctx: Context::new(ctx.unchecked_into()), method, url, api_key, client, body };
    match now_or_later(decide(request)) {
        Ok(step) => verdict(step),
        Err(waiting) => future_to_promise(async move { Ok(verdict(waiting.await)) }).into(),
    }
}

/// What the check is given of a request.
struct Presented {
    env: Env,
    ctx: Context,
    method: String,
    url: String,
    api_key: Option<String>,
    client: String,
    body: Vec<u8>,
}

/// The checked request as js/http.js takes it.
fn verdict(step: Result<Step>) -> JsValue {
    match step {
        Ok(Step::Answer(response)) => response.into(),
        Ok(Step::Send(sending)) => {
            let identity = &sending.identity;
            admitted(
                &sending.target,
                &identity.key_id,
                &identity.tier,
                identity.signed_at as f64,
                identity.signature.as_deref(),
                identity.authorization.as_deref(),
                sending.limit,
                sending.remaining,
            )
        }
        Err(error) => into_js(Err(error)),
    }
}

/// A future's output if it is ready at once (polled once, with a waker that does nothing), else the
/// future, to be driven by an executor: its next poll there gives the pending I/O the executor's waker.
fn now_or_later<F: Future>(future: F) -> std::result::Result<F::Output, Pin<Box<F>>> {
    let mut future = Box::pin(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err(future),
    }
}

/// The check, and for an admitted request where it goes and what the origin is told.
async fn decide(request: Presented) -> Result<Step> {
    let Presented { env, ctx, method, url, api_key, client, body } = request;
    let path_and_query = path_and_query(&url);
    let query = query_pairs(path_and_query);
    let records = NotingRecords::new(RecentKv(&env));
    let incoming = Incoming { method: &method, api_key: api_key.as_deref(), query: &query, body: &body };
    let admit = |key, limit, at| LIMITER.with(|limiter| limiter.borrow_mut().admit(key, limit, at));
    let checked = check(&incoming, &records, &KvDocuments(&env), admit, &tiers(&env), now()).await;
    count_request(&ctx, api_key.as_deref(), records.found(), &checked);
    let mut admitted = match checked {
        Ok(admitted) => admitted,
        Err(refused) => {
            if refused == Refused::BadKey {
                FAILED.with(|failed| failed.borrow_mut().failed(&client, now()));
            }
            let (status, headers, body) = refusal_response(&refused);
            return Ok(Step::Answer(json_response(status, &headers, body)?.into()));
        }
    };
    let registrations = std::mem::take(&mut admitted.registrations);
    if !registrations.is_empty() {
        ctx.wait_until(remember(crate::worker::records_kv(&env)?, registrations));
    }
    Ok(Step::Send(Sending {
        target: origin_target(&env, path_and_query)?,
        identity: identity(&env, &admitted.record).await,
        limit: admitted.limit,
        remaining: admitted.remaining,
    }))
}

/// The 502 for an origin that did not answer. For the operator's log: the client gets only the code.
/// No URL (its query string is the client's) and no header is written.
fn origin_failed(key_id: &str, error: &JsValue) -> Result<web_sys::Response> {
    let error = error.dyn_ref::<js_sys::Error>().map(|e| String::from(e.to_string())).or_else(|| error.as_string());
    worker::console_error!("keygate: origin fetch failed for key {key_id}: {}", error.unwrap_or_default());
    graphql_error(502, "ORIGIN_UNAVAILABLE", "the GraphQL origin did not answer").map(Into::into)
}

/// A response as the runtime takes it; an error (the runtime failed us, never the client's doing) is
/// logged and answered with a bare 500, as workers-rs answers a handler's error.
pub(crate) fn into_js(response: Result<web_sys::Response>) -> JsValue {
    match response {
        Ok(response) => response.into(),
        Err(error) => {
            worker::console_error!("keygate: {error}");
            let init = web_sys::ResponseInit::new();
            init.set_status(500);
            web_sys::Response::new_with_opt_str_and_init(Some("INTERNAL SERVER ERROR"), &init)
                .map_or(JsValue::UNDEFINED, Into::into)
        }
    }
}
