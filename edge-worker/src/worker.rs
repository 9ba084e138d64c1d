//! The Cloudflare Worker: `POST /_keygate/sync` applies pushes from the control plane; every other
//! request is checked and, if admitted, forwarded to `ORIGIN_URL` ([`crate::forward`] over HTTP,
//! [`crate::relay`] for a WebSocket). Records live in Workers KV under their key id (binding
//! `KEYGATE_RECORDS`).
//!
//! Configuration: vars `ORIGIN_URL` (required), `TIERS` (JSON, requests per minute per tier) and
//! `RECORD_CACHE_MS` (how long the isolate uses a record read from KV; 1000 by default, 0 for never),
//! `FAILED_ATTEMPTS_PER_MINUTE` (bad keys one client address may send a minute before it is
//! refused outright; 20 by default, 0 for no limit) and `APQ_TTL_SECS` (how long KV keeps a persisted
//! query's document; a day by default, at least 60), `WS_MESSAGES_PER_SEC` (messages one WebSocket
//! client may send a second, after a burst of twice that; 100 by default, 0 for no limit);
//! secrets `SYNC_SECRET` (required) and `ORIGIN_SECRET` (signs the identity headers).
//!
//! Usage ([`crate::usage`]): var `CONTROL_PLANE_URL` (the control plane's base URL; unset, nothing is
//! counted) and `USAGE_RETRY_SECS` (how long a batch that did not get through is retried before its
//! counts are dropped and reported as dropped; 300 by default). Reports are posted to
//! `{CONTROL_PLANE_URL}/_keygate/usage` off the request path, signed with a key derived from `SYNC_SECRET`.
//!
//! The origin's JWT (`Authorization: Bearer`, see [`crate::identity`]): vars `ORIGIN_JWT_ALG` (`ES256`,
//! the default, signs with the control plane's key pushed to the edge and held sealed in KV under
//! `keygate:signing-keys`; `HS256` signs with `ORIGIN_SECRET`), `ORIGIN_JWT_ISSUER` (`keygate`),
//! `ORIGIN_JWT_AUDIENCE` (`graphql`), `ORIGIN_JWT_TTL_SECS` (60) and `ORIGIN_JWT_REUSE_SECS` (0 to 10,
//! 10 by default: how long an isolate reuses one key's token; 0 signs every request).
//!
//! A WebSocket upgrade goes to the relay ([`crate::relay`]); persisted queries' documents are kept in
//! the same KV namespace under `apq:<hash>` ([`crate::persisted`]).

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;

use keygate_shared::jwt::JTI_LEN;
use keygate_shared::{attempts, sync, FailedAttempts, KeyRecord, OriginSecret, SealedSigningKey, SyncSecret};
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::{self, JsFuture};
use worker::{js_sys, Env, Headers, KvStore, Method, Request, Response, Result};

use crate::check::{DocumentSource, RecordSource, StoreFault};
use crate::identity::{IdentityConfig, Mint, NoToken, OriginIdentity};
use crate::persisted::{self, RecentDocuments};
use crate::ratelimit::{RateLimiter, Tiers};
use crate::recent::RecentRecords;
use crate::replica::{apply_push, push_refusal_response, RecordStore};
use crate::request_url;
use crate::signing_keys::{SigningKeyStore, SIGNING_KEYS_NAME};

/// The KV binding that holds the records.
pub(crate) const RECORDS: &str = "KEYGATE_RECORDS";

thread_local! {
    // One isolate serves many requests, one at a time between awaits: the counts live here.
    pub(crate) static LIMITER: RefCell<RateLimiter> = RefCell::new(RateLimiter::default());
    static RECENT: RefCell<RecentRecords> = RefCell::new(RecentRecords::default());
    pub(crate) static FAILED: RefCell<FailedAttempts> = RefCell::new(FailedAttempts::default());
    // Persisted queries' documents seen lately, and how long KV keeps one (`APQ_TTL_SECS`).
    static DOCUMENTS: RefCell<RecentDocuments> = RefCell::new(RecentDocuments::default());
    static APQ_TTL_SECS: Cell<u64> = const { Cell::new(persisted::DEFAULT_TTL_SECS) };
    // Messages a second one WebSocket client may send (`WS_MESSAGES_PER_SEC`; 0 for no limit).
    pub(crate) static WS_MESSAGES_PER_SEC: Cell<u32> = const { Cell::new(crate::graphql_ws::DEFAULT_MESSAGES_PER_SEC) };
    // The vars do not change within an isolate: read once.
    static TIERS: OnceCell<Rc<Tiers>> = const { OnceCell::new() };
    static RECORDS_KV: OnceCell<KvStore> = const { OnceCell::new() };
    // The origin's JWT: its settings, the sealed signing keys and the recent tokens. Set up on first use.
    static IDENTITY: RefCell<Option<OriginIdentity>> = const { RefCell::new(None) };
    // The active signing key imported into WebCrypto, by kid and version.
    static WEBCRYPTO_KEY: RefCell<Option<(String, u64, web_sys::CryptoKey)>> = const { RefCell::new(None) };
}

/// Records in KV, read and written as they are: what a push compares and stores.
struct KvRecords(KvStore);

/// The request path's records: the isolate's recent ones, else KV (kept for next time). The KV
/// handle is taken only when the isolate does not know the record.
pub(crate) struct RecentKv<'a>(pub(crate) &'a Env);

/// Persisted queries' documents: the isolate's recent ones, else KV (kept for next time).
pub(crate) struct KvDocuments<'a>(pub(crate) &'a Env);

impl DocumentSource for KvDocuments<'_> {
    async fn document(&self, hash: &str) -> std::result::Result<Option<String>, StoreFault> {
        if let Some(known) = DOCUMENTS.with(|documents| documents.borrow().get(hash)) {
            return Ok(Some(known.to_string()));
        }
        let kv = records_kv(self.0).map_err(|e| StoreFault(e.to_string()))?;
        let document = kv.get(&persisted::kv_name(hash)).text().await.map_err(|e| StoreFault(e.to_string()))?;
        if let Some(document) = &document {
            DOCUMENTS.with(|documents| documents.borrow_mut().keep(hash, document));
        }
        Ok(document)
    }
}

/// Remembers the documents an admitted request sent with their hashes: in this isolate, and in KV
/// with an expiry when this isolate did not know them yet. A failed write is logged; the client then
/// gets `PERSISTED_QUERY_NOT_FOUND` elsewhere and sends the document again.
pub(crate) async fn remember(kv: KvStore, registrations: Vec<(String, String)>) {
    let ttl = APQ_TTL_SECS.with(Cell::get);
    for (hash, document) in registrations {
        if !DOCUMENTS.with(|documents| documents.borrow_mut().keep(&hash, &document)) {
            continue;
        }
        let written = match kv.put(&persisted::kv_name(&hash), document) {
            Ok(put) => put.expiration_ttl(ttl).execute().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = written {
            worker::console_error!("keygate: could not remember persisted query {hash}: {error}");
        }
    }
}

impl RecordSource for RecentKv<'_> {
    async fn record(&self, key_id: &str) -> std::result::Result<Option<KeyRecord>, StoreFault> {
        if let Some(known) = RECENT.with(|recent| recent.borrow().get(key_id, now_ms())) {
            return Ok(known);
        }
        let kv = records_kv(self.0).map_err(|e| StoreFault(e.to_string()))?;
        let record = KvRecords(kv).record(key_id).await?;
        RECENT.with(|recent| recent.borrow_mut().keep(key_id, record.clone(), now_ms()));
        Ok(record)
    }
}

impl RecordSource for KvRecords {
    async fn record(&self, key_id: &str) -> std::result::Result<Option<KeyRecord>, StoreFault> {
        match self.0.get(key_id).text().await {
            Ok(Some(text)) => serde_json::from_str(&text).map(Some).map_err(|e| StoreFault(e.to_string())),
            Ok(None) => Ok(None),
            Err(e) => Err(StoreFault(e.to_string())),
        }
    }
}

impl RecordStore for KvRecords {
    async fn store(&self, record: &KeyRecord) -> std::result::Result<(), StoreFault> {
        let text = serde_json::to_string(record).map_err(|e| StoreFault(e.to_string()))?;
        let put = self.0.put(&record.key_id.to_string(), text).map_err(|e| StoreFault(e.to_string()))?;
        put.execute().await.map_err(|e| StoreFault(e.to_string()))?;
        RECENT.with(|recent| recent.borrow_mut().stored(record, now_ms()));
        Ok(())
    }
}

impl SigningKeyStore for KvRecords {
    async fn signing_keys(&self) -> std::result::Result<Vec<SealedSigningKey>, StoreFault> {
        match self.0.get(SIGNING_KEYS_NAME).text().await {
            Ok(Some(text)) => serde_json::from_str(&text).map_err(|e| StoreFault(e.to_string())),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(StoreFault(e.to_string())),
        }
    }

    async fn store_signing_keys(&self, keys: &[SealedSigningKey]) -> std::result::Result<(), StoreFault> {
        let text = serde_json::to_string(keys).map_err(|e| StoreFault(e.to_string()))?;
        let put = self.0.put(SIGNING_KEYS_NAME, text).map_err(|e| StoreFault(e.to_string()))?;
        put.execute().await.map_err(|e| StoreFault(e.to_string()))?;
        // This isolate signs with the new keys at once; the others read them within REREAD_MS.
        IDENTITY.with(|held| {
            if let Some(identity) = held.borrow_mut().as_mut() {
                identity.keys_mut().replace(keys.to_vec(), now_ms());
            }
        });
        Ok(())
    }
}

pub(crate) fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

/// The records' KV namespace (binding `KEYGATE_RECORDS`). The binding belongs to the isolate, not to a
/// request, so its handle is made once.
pub(crate) fn records_kv(env: &Env) -> Result<KvStore> {
    RECORDS_KV.with(|held| {
        if let Some(kv) = held.get() {
            return Ok(kv.clone());
        }
        let kv = env.kv(RECORDS)?;
        let _ = held.set(kv.clone());
        Ok(kv)
    })
}

pub(crate) fn now() -> i64 {
    now_ms() / 1000
}

/// A number var, if set and a number.
fn number_var<T: std::str::FromStr>(env: &Env, name: &str) -> Option<T> {
    env.var(name).ok().and_then(|v| v.to_string().trim().parse().ok())
}

/// The tiers, and the record cache time, failed-attempt limit, persisted documents' expiry and
/// WebSocket message rate, from the vars on the isolate's first request.
pub(crate) fn tiers(env: &Env) -> Rc<Tiers> {
    TIERS.with(|held| {
        held.get_or_init(|| {
            if let Some(ms) = number_var(env, "RECORD_CACHE_MS") {
                RECENT.with(|recent| recent.borrow_mut().set_ttl_ms(ms));
            }
            if let Some(limit) = number_var(env, "FAILED_ATTEMPTS_PER_MINUTE") {
                FAILED.with(|failed| *failed.borrow_mut() = FailedAttempts::new(limit, attempts::DEFAULT_CAPACITY));
            }
            if let Some(rate) = number_var::<u32>(env, "WS_MESSAGES_PER_SEC") {
                WS_MESSAGES_PER_SEC.with(|held| held.set(rate));
            }
            if let Some(ttl) = number_var::<u64>(env, "APQ_TTL_SECS") {
                APQ_TTL_SECS.with(|held| held.set(ttl.max(persisted::MIN_TTL_SECS)));
            }
            crate::usage::flush::configure(env);
            Rc::new(env.var("TIERS").ok().and_then(|v| Tiers::from_json(&v.to_string()).ok()).unwrap_or_default())
        })
        .clone()
    })
}

/// Runs `f` on the isolate's origin identity, set up from the vars and secrets on first use.
pub(crate) fn with_identity<T>(env: &Env, f: impl FnOnce(&mut OriginIdentity) -> T) -> T {
    IDENTITY.with(|held| {
        let mut held = held.borrow_mut();
        let identity = held.get_or_insert_with(|| {
            let (config, invalid) = IdentityConfig::from_vars(|name| env.var(name).ok().map(|v| v.to_string()));
            for name in invalid {
                worker::console_error!("keygate: the var {name} is not valid; using its default");
            }
            let origin_secret = env.secret("ORIGIN_SECRET").ok().map(|s| OriginSecret::new(s.to_string()));
            let sync_secret = env.secret("SYNC_SECRET").ok().map(|s| SyncSecret::new(s.to_string()));
            OriginIdentity::new(config, origin_secret, sync_secret)
        });
        f(identity)
    })
}

/// A `jti`'s randomness, from the runtime's CSPRNG (`crypto.getRandomValues`).
fn random_jti() -> Option<[u8; JTI_LEN]> {
    let mut jti = [0u8; JTI_LEN];
    getrandom::getrandom(&mut jti).ok().map(|()| jti)
}

/// The origin's JWT for the key `record` describes, as the `Authorization` header's value (`Bearer
/// <JWT>`), or `None` if this edge cannot sign one (the cause is logged once per isolate; see
/// [`crate::identity`] for why the request still goes on).
pub(crate) async fn origin_token(env: &Env, record: &KeyRecord) -> Option<Rc<str>> {
    let read_keys = with_identity(env, |identity| {
        let needed = identity.needs_keys(now_ms());
        if needed {
            identity.keys_mut().reading(now_ms());
        }
        needed
    });
    if read_keys {
        let read = match records_kv(env) {
            Ok(kv) => KvRecords(kv).signing_keys().await,
            Err(e) => Err(StoreFault(e.to_string())),
        };
        with_identity(env, |identity| match read {
            Ok(keys) => identity.keys_mut().replace(keys, now_ms()),
            Err(_) => identity.keys_mut().read_failed(now_ms()),
        });
    }
    let minted = match with_identity(env, |identity| identity.begin(record, now_ms(), random_jti)) {
        Ok(Mint::Ready(token)) => Ok(token),
        Ok(Mint::Es256 { kid, version, input }) => match sign_es256(env, &kid, version, input.as_bytes()).await {
            Ok(signature) => {
                Ok(with_identity(env, |identity| identity.finish(record, &kid, input, &signature, now_ms())))
            }
            Err(cause) => Err(cause),
        },
        Err(cause) => Err(cause),
    };
    minted
        .map_err(|cause| {
            if with_identity(env, |identity| identity.first_report(cause)) {
                worker::console_error!("{}", cause.message());
            }
        })
        .ok()
}

/// An ES256 signature (`r || s`) over `input` with the active key `kid` at `version`, by WebCrypto. The
/// key is imported once per isolate, not extractable, and replaced when the active key changes.
async fn sign_es256(env: &Env, kid: &str, version: u64, input: &[u8]) -> std::result::Result<Vec<u8>, NoToken> {
    let held = WEBCRYPTO_KEY.with(|held| {
        held.borrow().as_ref().filter(|(k, v, _)| k == kid && *v == version).map(|(_, _, key)| key.clone())
    });
    let subtle = subtle_crypto().ok_or(NoToken::SigningFailed)?;
    let key = match held {
        Some(key) => key,
        None => {
            let jwk = with_identity(env, |identity| identity.private_jwk(now()))?;
            let key = import_es256(&subtle, &jwk).await.ok_or(NoToken::SigningFailed)?;
            WEBCRYPTO_KEY.with(|held| *held.borrow_mut() = Some((kid.to_owned(), version, key.clone())));
            key
        }
    };
    let algorithm = js_object(&[("name", "ECDSA"), ("hash", "SHA-256")]).ok_or(NoToken::SigningFailed)?;
    let promise = subtle.sign_with_object_and_u8_array(&algorithm, &key, input).map_err(|_| NoToken::SigningFailed)?;
    let signature = JsFuture::from(promise).await.map_err(|_| NoToken::SigningFailed)?;
    Ok(js_sys::Uint8Array::new(&signature).to_vec())
}

/// The runtime's `crypto.subtle`.
fn subtle_crypto() -> Option<web_sys::SubtleCrypto> {
    let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into()).ok()?;
    crypto.dyn_into::<web_sys::Crypto>().ok().map(|crypto| crypto.subtle())
}

/// Imports a private JWK as a non-extractable ECDSA P-256 signing key.
async fn import_es256(subtle: &web_sys::SubtleCrypto, jwk: &str) -> Option<web_sys::CryptoKey> {
    let key_data: js_sys::Object = js_sys::JSON::parse(jwk).ok()?.dyn_into().ok()?;
    let algorithm = js_object(&[("name", "ECDSA"), ("namedCurve", "P-256")])?;
    let usages = js_sys::Array::of1(&"sign".into());
    let promise = subtle.import_key_with_object("jwk", &key_data, &algorithm, false, &usages).ok()?;
    JsFuture::from(promise).await.ok()?.dyn_into().ok()
}

/// A plain JS object of string fields.
fn js_object(fields: &[(&str, &str)]) -> Option<js_sys::Object> {
    let object = js_sys::Object::new();
    for (name, value) in fields {
        js_sys::Reflect::set(&object, &(*name).into(), &(*value).into()).ok()?;
    }
    Some(object)
}

pub(crate) fn json_response(status: u16, headers: &[(&str, String)], body: String) -> Result<Response> {
    let response_headers = Headers::new();
    response_headers.set("content-type", "application/json")?;
    for (name, value) in headers {
        response_headers.set(name, value)?;
    }
    Ok(Response::ok(body)?.with_status(status).with_headers(response_headers))
}

pub(crate) fn graphql_error(status: u16, code: &str, message: &str) -> Result<Response> {
    let body = serde_json::json!({"errors": [{"message": message, "extensions": {"code": code}}]}).to_string();
    json_response(status, &[], body)
}

/// The worker's `fetch` handler (the runtime calls it through the bundle's module entry): a push, a
/// WebSocket upgrade for the relay, or a GraphQL request over HTTP ([`crate::forward`], which answers
/// most requests without an async task). A request that plainly is the last is taken by js/http.js at
/// once ([`crate::forward::try_answer`]); the routing below sees the others, and decides as before.
/// Returns the response or a promise of it.
#[wasm_bindgen]
pub fn fetch(request: web_sys::Request, env: Env, ctx: worker::worker_sys::Context) -> JsValue {
    let ctx: JsValue = ctx.into();
    if let Some(served) = crate::forward::try_answer(&request, &env, &ctx) {
        return served;
    }
    let url = request.url();
    if request_url::path(request_url::path_and_query(&url)) == sync::SYNC_PATH {
        return in_task(receive_push(request.into(), env));
    }
    if crate::forward::is_websocket_upgrade(&request) {
        return in_task(crate::relay::open(request.into(), env, worker::Context::new(ctx.unchecked_into())));
    }
    crate::forward::answer(request, env, ctx)
}

/// What js/http.js leaves to [`fetch`]'s routing when it is anywhere in a request's URL: the prefix
/// of the push path ([`sync::SYNC_PATH`]).
pub(crate) const ROUTED_ELSEWHERE: &str = "/_keygate/";
// The push path must be one js/http.js leaves to [`fetch`].
const _: () = {
    let (path, prefix) = (sync::SYNC_PATH.as_bytes(), ROUTED_ELSEWHERE.as_bytes());
    assert!(path.len() >= prefix.len());
    let mut i = 0;
    while i < prefix.len() {
        assert!(path[i] == prefix[i]);
        i += 1;
    }
};

/// A promise of the response `handler` gives, driven by the async executor.
fn in_task(handler: impl std::future::Future<Output = Result<Response>> + 'static) -> JsValue {
    wasm_bindgen_futures::future_to_promise(async move {
        Ok(crate::forward::into_js(handler.await.map(web_sys::Response::from)))
    })
    .into()
}

async fn receive_push(mut request: Request, env: Env) -> Result<Response> {
    if request.method() != Method::Post {
        return json_response(405, &[("allow", "POST".into())], r#"{"error":{"code":"method_not_allowed"}}"#.into());
    }
    let secret = SyncSecret::new(env.secret("SYNC_SECRET")?.to_string());
    let timestamp = request.headers().get(sync::TIMESTAMP_HEADER)?;
    let signature = request.headers().get(sync::SIGNATURE_HEADER)?;
    let body = request.bytes().await?;
    let records = KvRecords(records_kv(&env)?);
    match apply_push(&records, &secret, timestamp.as_deref(), signature.as_deref(), &body, now()).await {
        Ok(applied) => json_response(200, &[], serde_json::to_string(&applied)?),
        Err(refused) => {
            let (status, body) = push_refusal_response(&refused);
            json_response(status, &[], body)
        }
    }
}

/// The header in which Cloudflare gives the client's address; locally (wrangler dev) there is none and
/// all clients share one.
pub(crate) const CLIENT_ADDRESS_HEADER: &str = "CF-Connecting-IP";

/// The client's address as Cloudflare saw it ([`CLIENT_ADDRESS_HEADER`]).
pub(crate) fn client_address(request: &Request) -> Result<String> {
    Ok(request.headers().get(CLIENT_ADDRESS_HEADER)?.unwrap_or_default())
}

/// The 429 for a client address that sent too many bad keys, if it is blocked now.
pub(crate) fn blocked_client(client: &str) -> Option<Result<Response>> {
    let retry_after = FAILED.with(|failed| failed.borrow().blocked(client, now()))?;
    let body = serde_json::json!({"errors": [{"message": "too many failed attempts from this client",
        "extensions": {"code": "RATE_LIMITED"}}]});
    Some(json_response(429, &[("retry-after", retry_after.to_string())], body.to_string()))
}

/// The headers the origin gets on the relay's upgrade: the client's `passed` ones, and the verified
/// identity of the key `record` describes, signed, as headers and as the origin's JWT.
pub(crate) async fn origin_headers(
    passed: impl Iterator<Item = (String, String)>,
    env: &Env,
    record: &KeyRecord,
) -> Result<Headers> {
    let headers = Headers::new();
    for (name, value) in passed {
        headers.append(&name, &value)?;
    }
    crate::forward::add_identity(&headers.0, env, record).await?;
    Ok(headers)
}
