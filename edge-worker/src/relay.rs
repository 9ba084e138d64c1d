//! The WebSocket relay: GraphQL subscriptions through the edge. The edge holds both ends, the
//! client's (a `WebSocketPair`) and the origin's (an upgrade `fetch`), because it reads every message
//! the client sends.
//!
//! - **The upgrade** is checked like a request: a key in `X-API-Key` is checked, and counted against
//!   its rate limit, before the client gets its 101; a bad one gets the HTTP refusal and no socket.
//!   Without the header (browsers cannot set one) the key comes in the `connection_init` payload,
//!   within [`INIT_TIMEOUT_MS`]; the origin's socket opens only once it is good. Either way the
//!   origin's upgrade carries the same identity as an HTTP request (headers and JWT), and never the key.
//! - **Each operation** (`subscribe`, legacy `start`) goes through the HTTP check with the socket's
//!   key: its permission, the rate limit, persisted queries. A refused one gets an `error` message for
//!   its id and never reaches the origin.
//! - **Other client messages** must be the subprotocol's, at most 1 MiB, and at most
//!   `WS_MESSAGES_PER_SEC` a second ([`MessageBudget`]); they go on as sent.
//! - **The key is re-checked** every [`RECHECK_MS`] against the isolate's recent record: once it is
//!   revoked, disabled or expired the client's socket closes with 4403, and the origin's with it.
//! - **Closing**: a close on one side closes the other with the same code (see
//!   [`relayable_close`]); an error on one side closes the other; nothing outlives its peer.
//! - **Usage** ([`crate::usage`]): the upgrade's key check (header or `connection_init`) counts as
//!   one request without an operation, each checked operation as one request with its name.
//!
//! The origin's messages are not read: they go to the client from the runtime's own event callback
//! ([`OriginPassage`]), as the runtime's value, without becoming Rust text or waking the relay's task.

use std::cell::{Cell, RefCell};
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use futures_channel::mpsc::{unbounded, UnboundedReceiver};
use futures_util::future::{select, Either};
use futures_util::{stream, StreamExt};
use keygate_shared::{KeyRecord, ParsedKey};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{
    console_error, js_sys, wasm_bindgen_futures, Context, Delay, Env, Fetch, Headers, Method, Request, RequestInit,
    Response, Result, WebSocket, WebSocketPair, WebsocketEvent,
};
use zeroize::Zeroizing;

use crate::check::{authenticate, check, check_key, key_in_url, refusal_error, refusal_response, Incoming, Refused};
use crate::forward::origin_target;
use crate::graphql_ws::{
    close, forwards_upgrade_header, read_client, relayable_close, ClientMessage, MessageBudget, Subprotocol,
    INIT_TIMEOUT_MS, MAX_MESSAGE,
};
use crate::request_url::{path_and_query, query_pairs};
use crate::usage::flush::count_request;
use crate::usage::NotingRecords;
use crate::worker::{
    blocked_client, client_address, graphql_error, json_response, now, origin_headers, records_kv, remember, tiers,
    KvDocuments, RecentKv, FAILED, LIMITER, WS_MESSAGES_PER_SEC,
};

/// How often an open socket's key is checked again, in milliseconds. With the isolate's record cache
/// (1 s by default) a revocation closes the socket within 1.5 s of reaching the edge's KV.
pub const RECHECK_MS: u64 = 500;
/// How long the origin has to accept its upgrade, in milliseconds.
const ORIGIN_CONNECT_MS: u64 = 10_000;

/// The upgrade request, as the relay needs it after the 101 has gone back.
struct Upgrade {
    protocol: Subprotocol,
    /// The origin's URL for the same path and query.
    target: String,
    /// The client's headers that go on to the origin.
    headers: Vec<(String, String)>,
    /// The client's address, for the failed-attempts limit.
    client: String,
    /// The upgrade's context: usage is flushed in its `wait_until`, which the open socket keeps alive.
    ctx: Context,
}

/// The socket's key, and the origin's end once it is open.
struct Opened {
    key: Zeroizing<String>,
    origin: WebSocket,
    /// When the key stops being good with no change to its record, in unix milliseconds.
    good_until_ms: f64,
}

/// When `key` stops passing `record`'s check with no change to the record, in unix milliseconds
/// (infinity if never).
fn good_until_ms(key: &str, record: &KeyRecord) -> f64 {
    let until = ParsedKey::parse(key).ok().and_then(|key| record.good_until(&key));
    until.map_or(f64::INFINITY, |secs| secs as f64 * 1000.0)
}

/// Answers a WebSocket upgrade: a refusal, or a 101 whose socket the relay then serves.
pub async fn open(request: Request, env: Env, ctx: Context) -> Result<Response> {
    if request.method() != Method::Get {
        return graphql_error(405, "METHOD_NOT_ALLOWED", "a WebSocket upgrade is a GET request");
    }
    let offered = request.headers().get("sec-websocket-protocol")?.unwrap_or_default();
    let Some(protocol) = Subprotocol::negotiate(&offered) else {
        return graphql_error(
            400,
            "BAD_REQUEST",
            "a GraphQL WebSocket needs the subprotocol graphql-transport-ws or graphql-ws",
        );
    };
    // Reads the vars (the failed-attempts limit among them) on an isolate's first request.
    let _ = tiers(&env);
    let client = client_address(&request)?;
    if let Some(blocked) = blocked_client(&client) {
        return blocked;
    }
    let url = request.inner().url();
    let query = query_pairs(path_and_query(&url));
    let headers = request.headers().entries().filter(|(name, _)| forwards_upgrade_header(name)).collect();
    let upgrade = Upgrade { protocol, target: origin_target(&env, path_and_query(&url))?, headers, client, ctx };
    let header_key = request.headers().get("X-API-Key")?.map(Zeroizing::new);

    // A key in the header (or the URL, refused) is checked before any socket opens; without one, the
    // key comes in connection_init.
    let opened = if header_key.is_some() || key_in_url(&query) {
        match upgrade_key(&env, &upgrade, header_key.as_deref(), &query).await? {
            Ok(opened) => Some(opened),
            Err(refusal) => return Ok(refusal),
        }
    } else {
        None
    };
    let pair = WebSocketPair::new()?;
    pair.server.accept()?;
    let server = pair.server;
    wasm_bindgen_futures::spawn_local(serve(env, upgrade, server, opened));
    let answer = Headers::new();
    answer.set("sec-websocket-protocol", protocol.name())?;
    Ok(Response::from_websocket(pair.client)?.with_headers(answer))
}

/// Checks the upgrade's header key and opens the origin's socket: the open socket, or the response
/// that refuses the upgrade.
async fn upgrade_key(
    env: &Env,
    upgrade: &Upgrade,
    key: Option<&String>,
    query: &[(String, String)],
) -> Result<std::result::Result<Opened, Response>> {
    let records = NotingRecords::new(RecentKv(env));
    let admit = |key, limit, at| LIMITER.with(|limiter| limiter.borrow_mut().admit(key, limit, at));
    let checked = check_key(key.map(String::as_str), query, &records, admit, &tiers(env), now()).await;
    count_request(&upgrade.ctx, key.map(String::as_str), records.found(), &checked);
    match checked {
        Ok(admitted) => match connect_origin(env, upgrade, &admitted.record).await {
            Some(origin) => {
                origin.accept()?;
                let key = Zeroizing::new(key.cloned().unwrap_or_default());
                let good_until_ms = good_until_ms(&key, &admitted.record);
                Ok(Ok(Opened { key, origin, good_until_ms }))
            }
            None => {
                Ok(Err(graphql_error(502, "ORIGIN_UNAVAILABLE", "the GraphQL origin did not accept the WebSocket")?))
            }
        },
        Err(refused) => {
            if refused == Refused::BadKey {
                FAILED.with(|failed| failed.borrow_mut().failed(&upgrade.client, now()));
            }
            let (status, headers, body) = refusal_response(&refused);
            Ok(Err(json_response(status, &headers, body)?))
        }
    }
}

/// Opens the origin's socket for the key `record` describes, with the identity an HTTP request
/// carries; `None` (logged) if the origin refuses or does not answer in time.
async fn connect_origin(env: &Env, upgrade: &Upgrade, record: &keygate_shared::KeyRecord) -> Option<WebSocket> {
    let key_id = record.key_id.to_string();
    let headers = origin_headers(upgrade.headers.iter().cloned(), env, record).await.ok()?;
    headers.set("upgrade", "websocket").ok()?;
    headers.set("sec-websocket-protocol", upgrade.protocol.name()).ok()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let request = Request::new_with_init(&upgrade.target, &init).ok()?;
    let fetch = Fetch::Request(request);
    let fetch = pin!(fetch.send());
    let timeout = pin!(Delay::from(Duration::from_millis(ORIGIN_CONNECT_MS)));
    let answer = match select(fetch, timeout).await {
        Either::Left((Ok(answer), _)) => answer,
        Either::Left((Err(error), _)) => {
            console_error!("keygate: origin WebSocket failed for key {key_id}: {error}");
            return None;
        }
        Either::Right(_) => {
            console_error!("keygate: origin WebSocket for key {key_id} did not open within {ORIGIN_CONNECT_MS} ms");
            return None;
        }
    };
    let status = answer.status_code();
    let socket = answer.websocket();
    if socket.is_none() {
        console_error!("keygate: origin refused the WebSocket for key {key_id} with status {status}");
    }
    socket
}

/// Closes a socket, ignoring one that is closed already.
fn shut(socket: &WebSocket, code: u16, reason: &str) {
    let _ = socket.close(Some(code), Some(reason));
}

/// Serves one client socket to its end: first its `connection_init` key when the upgrade had none,
/// then the relay.
async fn serve(env: Env, upgrade: Upgrade, client: WebSocket, opened: Option<Opened>) {
    let Ok(mut client_events) = client.events() else {
        shut(&client, close::ORIGIN_FAILED, "the edge could not read the socket");
        return;
    };
    let (opened, pending_init) = match opened {
        Some(opened) => (opened, None),
        None => match init_key(&env, &upgrade, &client, &mut client_events).await {
            Some((opened, forward)) => (opened, Some(forward)),
            None => return,
        },
    };
    let Opened { key, origin, good_until_ms } = opened;
    let good_until = Rc::new(Cell::new(good_until_ms));
    let (passage, origin_ends, origin_send) = match OriginPassage::open(&origin, &client, good_until.clone()) {
        Ok(opened) => opened,
        Err(_) => {
            shut(&client, close::ORIGIN_FAILED, "the edge could not read the origin's socket");
            shut(&origin, close::NORMAL, "the edge could not read the socket");
            return;
        }
    };
    if let Some(forward) = pending_init {
        if origin.send_with_str(&forward).is_err() {
            shut(&client, close::ORIGIN_FAILED, "the GraphQL origin closed");
            return;
        }
    }
    let relay = Relay {
        env: &env,
        protocol: upgrade.protocol,
        ctx: &upgrade.ctx,
        key: &key,
        client: &client,
        origin: &origin,
        origin_send,
        good_until,
        budget: RefCell::new(MessageBudget::new(WS_MESSAGES_PER_SEC.with(Cell::get), js_sys::Date::now())),
    };
    relay.run(client_events, origin_ends).await;
    drop(passage);
}

/// How the origin's socket ended.
enum OriginEnd {
    /// Closed, with this code and reason.
    Closed(u16, String),
    /// Failed.
    Failed,
}

/// The origin's side of a relay: its messages go straight to the client from the runtime's event
/// callback; its close or failure is sent to the relay's task. The listeners go when it is dropped.
///
/// The callback also ends the relay once the key's expiry (or its generation's end) has passed: a
/// stream faster than the runtime relays keeps it too busy for the relay's task and its timer, so
/// the 500 ms re-check alone could not close it.
struct OriginPassage {
    socket: web_sys::WebSocket,
    on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
    on_close: Closure<dyn FnMut(web_sys::CloseEvent)>,
    on_error: Closure<dyn FnMut(web_sys::ErrorEvent)>,
}

impl OriginPassage {
    /// Listens on `origin`, passing its messages to `client`. Also returns how it ends, and the
    /// origin's own `send`, for passing client messages on as the runtime's values.
    fn open(
        origin: &WebSocket,
        client: &WebSocket,
        good_until_ms: Rc<Cell<f64>>,
    ) -> std::result::Result<(Self, UnboundedReceiver<OriginEnd>, js_sys::Function), JsValue> {
        let socket: web_sys::WebSocket = origin.as_ref().clone();
        let client: web_sys::WebSocket = client.as_ref().clone();
        let client_send: js_sys::Function = js_sys::Reflect::get(&client, &"send".into())?.dyn_into()?;
        let origin_send: js_sys::Function = js_sys::Reflect::get(&socket, &"send".into())?.dyn_into()?;
        let origin_socket = socket.clone();
        let mut expired = false;
        // A client that cannot take a message is closing: its own close event ends the relay.
        let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |event: web_sys::MessageEvent| {
            if expired {
                return;
            }
            if js_sys::Date::now() >= good_until_ms.get() {
                expired = true;
                let _ = client.close_with_code_and_reason(close::FORBIDDEN, KEY_NO_LONGER_GOOD);
                let _ = origin_socket.close_with_code_and_reason(close::NORMAL, CLIENT_REFUSED);
                return;
            }
            let _ = client_send.call1(&client, &event.data());
        });
        let (ended, ends) = unbounded();
        let failed = ended.clone();
        let on_close = Closure::<dyn FnMut(web_sys::CloseEvent)>::new(move |event: web_sys::CloseEvent| {
            let _ = ended.unbounded_send(OriginEnd::Closed(event.code(), event.reason()));
        });
        let on_error = Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |_: web_sys::ErrorEvent| {
            let _ = failed.unbounded_send(OriginEnd::Failed);
        });
        socket.add_event_listener_with_callback("message", on_message.as_ref().unchecked_ref())?;
        socket.add_event_listener_with_callback("close", on_close.as_ref().unchecked_ref())?;
        socket.add_event_listener_with_callback("error", on_error.as_ref().unchecked_ref())?;
        Ok((Self { socket, on_message, on_close, on_error }, ends, origin_send))
    }
}

impl Drop for OriginPassage {
    fn drop(&mut self) {
        let _ = self.socket.remove_event_listener_with_callback("message", self.on_message.as_ref().unchecked_ref());
        let _ = self.socket.remove_event_listener_with_callback("close", self.on_close.as_ref().unchecked_ref());
        let _ = self.socket.remove_event_listener_with_callback("error", self.on_error.as_ref().unchecked_ref());
    }
}

/// Waits for the `connection_init` that carries the key, checks the key and opens the origin's
/// socket. `None` once the client's socket is closed with the reason.
async fn init_key(
    env: &Env,
    upgrade: &Upgrade,
    client: &WebSocket,
    events: &mut worker::EventStream<'_>,
) -> Option<(Opened, String)> {
    let timeout = pin!(Delay::from(Duration::from_millis(INIT_TIMEOUT_MS)));
    let text = match select(events.next(), timeout).await {
        Either::Left((Some(Ok(WebsocketEvent::Message(message))), _)) => message.text(),
        Either::Left(_) => return None,
        Either::Right(_) => {
            shut(client, close::INIT_TIMEOUT, "Connection initialisation timeout");
            return None;
        }
    };
    let Some(text) = text.filter(|text| text.len() <= MAX_MESSAGE) else {
        shut(client, close::BAD_MESSAGE, "Invalid message: a text message of at most 1 MiB");
        return None;
    };
    let (key, forward) = match read_client(upgrade.protocol, &text) {
        Ok(ClientMessage::Init { api_key: Some(key), forward }) => (key, forward),
        Ok(ClientMessage::Init { api_key: None, .. }) => {
            shut(client, close::FORBIDDEN, "Forbidden: send the API key in X-API-Key or the connection_init payload");
            return None;
        }
        Ok(_) => {
            shut(client, close::UNAUTHORIZED, "Unauthorized: connection_init comes first");
            return None;
        }
        Err(bad) => {
            shut(client, close::BAD_MESSAGE, bad.reason());
            return None;
        }
    };
    let records = NotingRecords::new(RecentKv(env));
    let admit = |id, limit, at| LIMITER.with(|limiter| limiter.borrow_mut().admit(id, limit, at));
    let checked = check_key(Some(&key), &[], &records, admit, &tiers(env), now()).await;
    count_request(&upgrade.ctx, Some(&key), records.found(), &checked);
    let admitted = match checked {
        Ok(admitted) => admitted,
        Err(refused) => {
            let (code, reason) = match refused {
                Refused::RateLimited { .. } => {
                    (close::RATE_LIMITED, "Too many requests: rate limit exceeded for this API key")
                }
                Refused::Unavailable => (close::TRY_AGAIN, "key records are unavailable; retry"),
                _ => (close::FORBIDDEN, "Forbidden: invalid API key"),
            };
            if refused == Refused::BadKey {
                FAILED.with(|failed| failed.borrow_mut().failed(&upgrade.client, now()));
            }
            shut(client, code, reason);
            return None;
        }
    };
    let Some(origin) = connect_origin(env, upgrade, &admitted.record).await else {
        shut(client, close::ORIGIN_FAILED, "the GraphQL origin did not accept the WebSocket");
        return None;
    };
    if origin.accept().is_err() {
        shut(client, close::ORIGIN_FAILED, "the GraphQL origin did not accept the WebSocket");
        return None;
    }
    let good_until_ms = good_until_ms(&key, &admitted.record);
    Some((Opened { key, origin, good_until_ms }, forward))
}

/// What woke the relay.
enum Woke {
    Client(Result<WebsocketEvent>),
    Origin(OriginEnd),
    Recheck,
}

/// How the relay ends: the codes and reasons each side is closed with.
struct End {
    client: (u16, String),
    origin: (u16, String),
}

impl End {
    /// The client is refused: its socket closes with `code`, the origin's normally.
    fn client_refused(code: u16, reason: &str) -> Self {
        Self { client: (code, reason.to_owned()), origin: (close::NORMAL, CLIENT_REFUSED.into()) }
    }
}

/// The close reason of a socket whose key was revoked, disabled or expired.
const KEY_NO_LONGER_GOOD: &str = "Forbidden: the API key was revoked, disabled or expired";
/// The close reason the origin gets when the edge refuses the client.
const CLIENT_REFUSED: &str = "the client was refused by the edge";

/// One open relay between a client and the origin.
struct Relay<'a> {
    env: &'a Env,
    ctx: &'a Context,
    protocol: Subprotocol,
    key: &'a Zeroizing<String>,
    client: &'a WebSocket,
    origin: &'a WebSocket,
    /// The origin socket's `send`, for a client message passed on as the runtime's value.
    origin_send: js_sys::Function,
    /// When the key stops being good with no change to its record (unix ms), as of the last check.
    good_until: Rc<Cell<f64>>,
    /// The messages the client may still send.
    budget: RefCell<MessageBudget>,
}

impl Relay<'_> {
    async fn run(&self, client_events: worker::EventStream<'_>, origin_ends: UnboundedReceiver<OriginEnd>) {
        let rechecks = stream::unfold((), |()| async {
            Delay::from(Duration::from_millis(RECHECK_MS)).await;
            Some((Woke::Recheck, ()))
        });
        let events = stream::select(client_events.map(Woke::Client), origin_ends.map(Woke::Origin));
        let mut woken = pin!(stream::select(events, rechecks));
        while let Some(woke) = woken.next().await {
            let end = match woke {
                Woke::Client(Ok(WebsocketEvent::Message(message))) => self.read_from_client(message).await,
                Woke::Client(Ok(WebsocketEvent::Close(event))) => {
                    shut(self.origin, relayable_close(event.code()), &event.reason());
                    return;
                }
                Woke::Client(Err(_)) => {
                    shut(self.origin, close::NORMAL, "the client went away");
                    return;
                }
                Woke::Origin(OriginEnd::Closed(code, reason)) => {
                    shut(self.client, relayable_close(code), &reason);
                    return;
                }
                Woke::Origin(OriginEnd::Failed) => {
                    shut(self.client, close::ORIGIN_FAILED, "the GraphQL origin failed");
                    return;
                }
                Woke::Recheck => self.recheck().await,
            };
            if let Some(End { client, origin }) = end {
                shut(self.client, client.0, &client.1);
                shut(self.origin, origin.0, &origin.1);
                return;
            }
        }
    }

    /// Reads a client message: an operation is checked, everything else passes on (an init without
    /// its key).
    async fn read_from_client(&self, message: worker::MessageEvent) -> Option<End> {
        if !self.budget.borrow_mut().spend(js_sys::Date::now()) {
            return Some(End::client_refused(close::RATE_LIMITED, "Too many messages"));
        }
        let Some(text) = message.text() else {
            return Some(End::client_refused(close::BAD_MESSAGE, "Invalid message: GraphQL messages are text"));
        };
        if text.len() > MAX_MESSAGE {
            return Some(End::client_refused(close::TOO_BIG, "Message too big: at most 1 MiB"));
        }
        // What goes on: the message as the runtime holds it, or the init without its key.
        let forward: JsValue = match read_client(self.protocol, &text) {
            Err(bad) => return Some(End::client_refused(close::BAD_MESSAGE, bad.reason())),
            Ok(ClientMessage::Init { forward, .. }) => forward.into(),
            Ok(ClientMessage::Other) => message.as_ref().data(),
            Ok(ClientMessage::Operation { id, payload }) => match self.operation(payload.get().as_bytes()).await {
                Ok(()) => message.as_ref().data(),
                Err(Refused::BadKey | Refused::MissingKey) => {
                    return Some(End::client_refused(close::FORBIDDEN, "Forbidden: invalid API key"));
                }
                Err(refused) => {
                    let (_, code, message) = refusal_error(&refused);
                    return self.to_client(&self.protocol.operation_error(&id, code, &message));
                }
            },
        };
        self.origin_send.call1(self.origin.as_ref(), &forward).err().map(|_| End {
            client: (close::ORIGIN_FAILED, "the GraphQL origin closed".into()),
            origin: (close::NORMAL, "the edge could not send".into()),
        })
    }

    /// Checks one operation with the socket's key, as an HTTP POST of its payload would be, and
    /// remembers a persisted query it registers.
    async fn operation(&self, payload: &[u8]) -> std::result::Result<(), Refused> {
        if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(Refused::BadRequest(crate::graphql::ClassifyError::NotGraphqlJson));
        }
        let incoming = Incoming { method: "POST", api_key: Some(self.key), query: &[], body: payload };
        let admit = |key, limit, at| LIMITER.with(|limiter| limiter.borrow_mut().admit(key, limit, at));
        let tiers = tiers(self.env);
        let records = NotingRecords::new(RecentKv(self.env));
        let checked = check(&incoming, &records, &KvDocuments(self.env), admit, &tiers, now()).await;
        count_request(self.ctx, Some(self.key), records.found(), &checked);
        let admitted = checked?;
        if !admitted.registrations.is_empty() {
            let kv = records_kv(self.env).map_err(|_| Refused::Unavailable)?;
            remember(kv, admitted.registrations).await;
        }
        Ok(())
    }

    /// Whether the socket's key is still good; if not, both sides close.
    async fn recheck(&self) -> Option<End> {
        match authenticate(Some(self.key), &[], &RecentKv(self.env), now()).await {
            Ok(record) => {
                self.good_until.set(good_until_ms(self.key, &record));
                None
            }
            Err(Refused::BadKey | Refused::MissingKey) => {
                Some(End::client_refused(close::FORBIDDEN, KEY_NO_LONGER_GOOD))
            }
            // A store outage keeps the socket: the next check tries again.
            Err(_) => None,
        }
    }

    /// Sends the client a message the edge wrote.
    fn to_client(&self, text: &str) -> Option<End> {
        self.client.send_with_str(text).err().map(|_| End {
            client: (close::NORMAL, "the client's socket failed".into()),
            origin: (close::NORMAL, "the client went away".into()),
        })
    }
}
