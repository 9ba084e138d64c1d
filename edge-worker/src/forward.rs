//! The HTTP path: a GraphQL request checked ([`crate::check`]) and, if admitted, forwarded to the origin
//! with the key's identity; the origin's answer goes back with the rate-limit headers.
//!
//! Every request pays for each call between the wasm and the runtime's JS, so this path makes few: it
//! works on the runtime's own `Request`, `Headers` and `Response` (web-sys) rather than workers-rs's
//! copies of them (which read the request's `cf` object and parse its URL on every request), copies the
//! client's headers in one call, passes the body it read on to the origin without copying it back, and
//! wraps the origin's answer without copying its headers.
//!
//! It is also not driven by an async executor when it need not be. The request's own steps (read the
//! body, fetch from the origin) are chained as the runtime's promises, with callbacks made once per
//! isolate. Between them, the check and the origin's headers run as Rust futures polled once on the
//! spot: with the record in the isolate's cache and the origin's JWT at hand (nearly every request),
//! they finish without waiting and no task is spawned. Only a request that must wait (a KV read, a
//! signature, a persisted query's document) goes to `wasm-bindgen-futures`' executor, from where it
//! left off. BENCHMARKS.md (P1) has the measurements.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Poll, Waker};

use keygate_shared::KeyRecord;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::{future_to_promise, JsFuture};
use worker::{js_sys, Context, Env, Result};

use crate::check::{check, refusal_response, Incoming, Refused};
use crate::identity::{DROPPED_CLIENT_HEADERS, IDENTITY_HEADER_PREFIX};
use crate::request_url::{path_and_query, query_pairs};
use crate::usage::flush::count_request;
use crate::usage::NotingRecords;
use crate::worker::{
    blocked_client, graphql_error, json_response, now, origin_token, records_kv, remember, tiers, with_identity,
    KvDocuments, RecentKv, CLIENT_ADDRESS_HEADER, FAILED, LIMITER,
};

/// The largest request body checked; larger is refused with 413.
const MAX_BODY: usize = 1024 * 1024;

#[wasm_bindgen]
extern "C" {
    /// The runtime's `fetch`, with a URL and an init.
    #[wasm_bindgen(js_name = fetch)]
    fn runtime_fetch(input: &str, init: &web_sys::RequestInit) -> js_sys::Promise;

    /// A promise, as far as chaining it goes.
    type Thenable;
    /// `promise.then(fulfilled, rejected)`: a promise of what the callback that runs returns.
    #[wasm_bindgen(method, js_name = then)]
    fn then_either(this: &Thenable, fulfilled: &Callback, rejected: &Callback) -> JsValue;

    /// A `Headers`, as far as reading and writing it by a name made once ([`Names`]) goes.
    type NamedHeaders;
    /// `headers.get(name)`.
    #[wasm_bindgen(method, catch, js_name = get)]
    fn get_named(this: &NamedHeaders, name: &JsValue) -> std::result::Result<Option<String>, JsValue>;
    /// `headers.set(name, value)`.
    #[wasm_bindgen(method, catch, js_name = set)]
    fn set_named(this: &NamedHeaders, name: &JsValue, value: &str) -> std::result::Result<(), JsValue>;
    /// `headers.set(name, number)`: the runtime writes the number as the header's value.
    #[wasm_bindgen(method, catch, js_name = set)]
    fn set_number(this: &NamedHeaders, name: &JsValue, value: f64) -> std::result::Result<(), JsValue>;

    /// A function the runtime calls back.
    #[derive(Clone)]
    type Callback;
    /// `callback.bind(null, a, b, c)`: the callback with its first three arguments given.
    #[wasm_bindgen(method, js_name = bind)]
    fn bind_three(this: &Callback, this_arg: &JsValue, a: &JsValue, b: &JsValue, c: &JsValue) -> Callback;
}

/// `headers` read and written by names made once.
fn named(headers: &web_sys::Headers) -> &NamedHeaders {
    headers.unchecked_ref()
}

/// `promise.then(fulfilled, rejected)`.
fn then(promise: &js_sys::Promise, fulfilled: &Callback, rejected: &Callback) -> JsValue {
    promise.unchecked_ref::<Thenable>().then_either(fulfilled, rejected)
}

/// A callback the runtime calls with four arguments, made once per isolate (it lives as long as the
/// isolate; per-request values are bound to it with [`bind_three`]).
fn callback(f: fn(JsValue, JsValue, JsValue, JsValue) -> JsValue) -> Callback {
    Closure::<dyn FnMut(JsValue, JsValue, JsValue, JsValue) -> JsValue>::new(f).into_js_value().unchecked_into()
}

thread_local! {
    // (request, env, ctx, body): the body has been read.
    static AFTER_BODY: Callback = callback(after_body);
    // (limit, remaining, key id, answer): the origin answered.
    static ON_ANSWER: Callback = callback(|limit, remaining, _, answer| {
        let limit = limit.as_f64().unwrap_or_default() as u32;
        let remaining = remaining.as_f64().unwrap_or_default() as u32;
        into_js(with_rate_limit(&answer.unchecked_into(), limit, remaining))
    });
    // (limit, remaining, key id, error): the origin did not answer.
    static ON_FAILURE: Callback =
        callback(|_, _, key_id, error| into_js(origin_failed(&key_id.as_string().unwrap_or_default(), &error)));
    // (_, _, _, error): the runtime failed us (the body could not be read).
    static ON_ERROR: Callback = callback(|_, _, _, error| into_js(Err(error.into())));
}

/// The header names the HTTP path reads and writes on every request, as JS strings made once per
/// isolate: a `&str` crosses into the runtime as a new string decoded from the wasm's memory each time.
struct Names {
    upgrade: JsValue,
    api_key: JsValue,
    client_address: JsValue,
    key_id: JsValue,
    tier: JsValue,
    timestamp: JsValue,
    signature: JsValue,
    authorization: JsValue,
    limit: JsValue,
    remaining: JsValue,
    /// [`DROPPED_CLIENT_HEADERS`], as an array for [`forwarded_headers`].
    dropped: js_sys::Array,
    /// [`IDENTITY_HEADER_PREFIX`].
    identity_prefix: JsValue,
}

impl Names {
    fn new() -> Self {
        use keygate_shared::origin::{KEY_ID_HEADER, SIGNATURE_HEADER, TIER_HEADER, TIMESTAMP_HEADER};
        Self {
            upgrade: JsValue::from_str("upgrade"),
            api_key: JsValue::from_str("X-API-Key"),
            client_address: JsValue::from_str(CLIENT_ADDRESS_HEADER),
            key_id: JsValue::from_str(KEY_ID_HEADER),
            tier: JsValue::from_str(TIER_HEADER),
            timestamp: JsValue::from_str(TIMESTAMP_HEADER),
            signature: JsValue::from_str(SIGNATURE_HEADER),
            authorization: JsValue::from_str("authorization"),
            limit: JsValue::from_str("x-ratelimit-limit"),
            remaining: JsValue::from_str("x-ratelimit-remaining"),
            dropped: DROPPED_CLIENT_HEADERS.iter().map(|name| JsValue::from_str(name)).collect(),
            identity_prefix: JsValue::from_str(IDENTITY_HEADER_PREFIX),
        }
    }
}

thread_local! {
    static NAMES: Names = Names::new();
    // `ORIGIN_URL` without a trailing `/`: vars do not change within an isolate, so it is read once.
    static ORIGIN_URL: OnceCell<String> = const { OnceCell::new() };
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

/// Adds the verified identity of the key `record` describes to `headers`: the signed `X-Keygate-*`
/// headers and the origin's JWT.
pub(crate) async fn add_identity(headers: &web_sys::Headers, env: &Env, record: &KeyRecord) -> Result<()> {
    let key_id = record.key_id.to_string();
    let signed_at = now();
    let signature = with_identity(env, |identity| identity.header_signature(signed_at, &key_id, &record.tier));
    NAMES.with(|names| {
        named(headers).set_named(&names.key_id, &key_id)?;
        named(headers).set_named(&names.tier, &record.tier)?;
        named(headers).set_number(&names.timestamp, signed_at as f64)?;
        if let Some(signature) = signature {
            named(headers).set_named(&names.signature, &signature)?;
        }
        Ok::<_, JsValue>(())
    })?;
    if let Some(token) = origin_token(env, record).await {
        NAMES.with(|names| named(headers).set_named(&names.authorization, &format!("Bearer {token}")))?;
    }
    Ok(())
}

/// Whether `request` asks for a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_websocket_upgrade(request: &web_sys::Request) -> bool {
    let upgrade = NAMES.with(|names| named(&request.headers()).get_named(&names.upgrade)).ok().flatten();
    upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
}

#[wasm_bindgen(module = "/js/headers.js")]
extern "C" {
    /// A copy of `client` without the names in `dropped` or starting with `prefix` (js/headers.js).
    #[wasm_bindgen(catch, js_name = forwardedHeaders)]
    fn forwarded_headers_js(
        client: &web_sys::Headers,
        dropped: &js_sys::Array,
        prefix: &JsValue,
    ) -> std::result::Result<web_sys::Headers, JsValue>;
}

/// A copy of the client's headers without those the origin must not get (the names and the prefix
/// [`crate::identity::forwards_client_header`] drops), made in the runtime's JS with one iteration.
fn forwarded_headers(client: &web_sys::Headers) -> Result<web_sys::Headers> {
    Ok(NAMES.with(|names| forwarded_headers_js(client, &names.dropped, &names.identity_prefix))?)
}

/// A GraphQL request over HTTP, answered: the response, or a promise of it. Checked in the order
/// DESIGN.md gives, then forwarded (or refused).
pub(crate) fn answer(request: web_sys::Request, env: Env, ctx: JsValue) -> JsValue {
    let method = request.method();
    if method != "GET" && method != "POST" {
        return into_js(graphql_error(405, "METHOD_NOT_ALLOWED", "GraphQL requests are GET or POST").map(Into::into));
    }
    let client = match NAMES.with(|names| named(&request.headers()).get_named(&names.client_address)) {
        Ok(client) => client.unwrap_or_default(),
        Err(error) => return into_js(Err(error.into())),
    };
    // Reads the vars (the failed-attempts limit among them) on an isolate's first request.
    let _ = tiers(&env);
    if let Some(blocked) = blocked_client(&client) {
        return into_js(blocked.map(Into::into));
    }
    let read = if method == "POST" { Some(request.array_buffer()) } else { None };
    let (request, env) = (JsValue::from(request), JsValue::from(env));
    match read {
        None => after_body(request, env, ctx, JsValue::UNDEFINED),
        Some(Ok(body)) => {
            let next = AFTER_BODY.with(|f| f.bind_three(&JsValue::NULL, &request, &env, &ctx));
            let failed = ON_ERROR.with(Clone::clone);
            then(&body, &next, &failed)
        }
        Some(Err(error)) => into_js(Err(error.into())),
    }
}

/// What becomes of a checked request: an answer the edge gives itself (a refusal), or the request to
/// send to the origin.
enum Step {
    Answer(web_sys::Response),
    Send(Sending),
}

/// An admitted request, ready for the origin.
struct Sending {
    target: String,
    init: web_sys::RequestInit,
    limit: u32,
    remaining: u32,
    key_id: String,
}

/// The body is read (`undefined` for a GET): check the request and send it on. The check runs at once
/// when it can; see the module's doc.
fn after_body(request: JsValue, env: JsValue, ctx: JsValue, body: JsValue) -> JsValue {
    let checked =
        check_request(request.unchecked_into(), env.unchecked_into(), Context::new(ctx.unchecked_into()), body);
    match now_or_later(checked) {
        Ok(Ok(Step::Answer(response))) => response.into(),
        Ok(Ok(Step::Send(sending))) => {
            let (limit, remaining, key_id) = (sending.limit.into(), sending.remaining.into(), sending.key_id.into());
            let answered = ON_ANSWER.with(|f| f.bind_three(&JsValue::NULL, &limit, &remaining, &key_id));
            let failed = ON_FAILURE.with(|f| f.bind_three(&JsValue::NULL, &limit, &remaining, &key_id));
            then(&runtime_fetch(&sending.target, &sending.init), &answered, &failed)
        }
        Ok(Err(error)) => into_js(Err(error)),
        Err(waiting) => future_to_promise(async move {
            let sending = match waiting.await? {
                Step::Answer(response) => return Ok(response.into()),
                Step::Send(sending) => sending,
            };
            let answered = match JsFuture::from(runtime_fetch(&sending.target, &sending.init)).await {
                Ok(answer) => with_rate_limit(&answer.unchecked_into(), sending.limit, sending.remaining),
                Err(error) => origin_failed(&sending.key_id, &error),
            };
            Ok(into_js(answered))
        })
        .into(),
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

/// The check, and for an admitted request its headers and init for the origin.
async fn check_request(request: web_sys::Request, env: Env, ctx: Context, body_buffer: JsValue) -> Result<Step> {
    let method = request.method();
    let url = request.url();
    let client_headers = request.headers();
    let path_and_query = path_and_query(&url);
    let query = query_pairs(path_and_query);
    let api_key = NAMES.with(|names| named(&client_headers).get_named(&names.api_key))?;
    let body = if body_buffer.is_undefined() { Vec::new() } else { js_sys::Uint8Array::new(&body_buffer).to_vec() };
    if body.len() > MAX_BODY {
        let response = graphql_error(413, "PAYLOAD_TOO_LARGE", "the request body is larger than 1 MiB")?;
        return Ok(Step::Answer(response.into()));
    }
    let kv = records_kv(&env)?;
    let records = NotingRecords::new(RecentKv(kv.clone()));
    let documents = KvDocuments(kv.clone());
    let incoming = Incoming { method: &method, api_key: api_key.as_deref(), query: &query, body: &body };
    let admit = |key, limit, at| LIMITER.with(|limiter| limiter.borrow_mut().admit(key, limit, at));
    let checked = check(&incoming, &records, &documents, admit, &tiers(&env), now()).await;
    count_request(&ctx, api_key.as_deref(), records.found(), &checked);
    let mut admitted = match checked {
        Ok(admitted) => admitted,
        Err(refused) => {
            if refused == Refused::BadKey {
                let client = client_headers.get(CLIENT_ADDRESS_HEADER)?.unwrap_or_default();
                FAILED.with(|failed| failed.borrow_mut().failed(&client, now()));
            }
            let (status, headers, body) = refusal_response(&refused);
            return Ok(Step::Answer(json_response(status, &headers, body)?.into()));
        }
    };
    let registrations = std::mem::take(&mut admitted.registrations);
    if !registrations.is_empty() {
        ctx.wait_until(remember(kv, registrations));
    }
    // Sent on: same method, path, query and body; `X-API-Key`, `Host`, `Authorization` and any identity
    // headers the client sent removed; the verified identity added and signed, as headers and as the
    // origin's JWT.
    let headers = forwarded_headers(&client_headers)?;
    add_identity(&headers, &env, &admitted.record).await?;
    let init = web_sys::RequestInit::new();
    init.set_method(&method);
    init.set_headers(&headers);
    if !body.is_empty() {
        init.set_body(&body_buffer);
    }
    Ok(Step::Send(Sending {
        target: origin_target(&env, path_and_query)?,
        init,
        limit: admitted.limit,
        remaining: admitted.remaining,
        key_id: admitted.record.key_id.to_string(),
    }))
}

/// The origin's answer as it is (status, headers, body stream) in a response whose headers may be
/// changed (`new Response(answer.body, answer)`), with the rate-limit headers.
fn with_rate_limit(answer: &web_sys::Response, limit: u32, remaining: u32) -> Result<web_sys::Response> {
    let response = web_sys::Response::new_with_opt_readable_stream_and_init(
        answer.body().as_ref(),
        answer.unchecked_ref::<web_sys::ResponseInit>(),
    )?;
    let headers = response.headers();
    NAMES.with(|names| {
        named(&headers).set_number(&names.limit, limit.into())?;
        named(&headers).set_number(&names.remaining, remaining.into())
    })?;
    Ok(response)
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
