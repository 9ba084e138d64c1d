//! The request check, in DESIGN.md's order: key shape and checksum (no storage read) → record by key
//! id → constant-time secret match, revocation, expiry → permission for the GraphQL operation → rate
//! limit. It is a plain function over a [`RecordSource`] and a [`DocumentSource`], so native tests
//! drive it without a runtime.
//!
//! A persisted query (hash only) is classified from the document the edge remembers for its hash,
//! after the key is checked; an unknown hash gets Apollo's `PERSISTED_QUERY_NOT_FOUND` answer.

use keygate_shared::{Denial, KeyId, KeyRecord, ParsedKey};

use crate::graphql::{ClassifyError, GraphqlBody};
use crate::ratelimit::{Decision, Tiers};

/// Where the check finds a key's record (Workers KV in the worker).
#[allow(async_fn_in_trait)] // The worker is single-threaded: its futures need not be Send.
pub trait RecordSource {
    /// The record stored for `key_id` (the 22-character form), if any.
    async fn record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreFault>;
}

/// Where the check finds the documents of persisted queries (Workers KV in the worker).
#[allow(async_fn_in_trait)]
pub trait DocumentSource {
    /// The document remembered under `hash` (64 lower-case hex digits), if any.
    async fn document(&self, hash: &str) -> Result<Option<String>, StoreFault>;
}

/// No persisted documents: every hash is unknown.
pub struct NoDocuments;

impl DocumentSource for NoDocuments {
    async fn document(&self, _hash: &str) -> Result<Option<String>, StoreFault> {
        Ok(None)
    }
}

/// The record store failed (not "no record").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFault(pub String);

/// What the check needs of a request.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// `GET` or `POST` (others are refused before the check).
    pub method: &'a str,
    /// The `X-API-Key` header, if present.
    pub api_key: Option<&'a str>,
    /// Query-string pairs, decoded.
    pub query: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// A request allowed through, and what to tell the origin and the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The key's record as the check read it: its id, tier, permissions, owner and `seq` are what the
    /// origin is told (the headers and the JWT's claims).
    pub record: KeyRecord,
    /// The window's limit.
    pub limit: u32,
    /// Requests left in the window.
    pub remaining: u32,
    /// Documents the request sent with their matching hash, as `(hash, document)`: to remember.
    pub registrations: Vec<(String, String)>,
    /// The name of each operation it runs (`None` if anonymous), for usage counts; none for an upgrade.
    pub operation_names: Vec<Option<String>>,
}

/// Why a request is refused; each maps to one status and one GraphQL-shaped body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No `X-API-Key` header: 401.
    MissingKey,
    /// Malformed, failed checksum, unknown, wrong, revoked or expired: 401, all alike.
    BadKey,
    /// A key in the URL's query string: 400 (it is in logs now; rotate it).
    KeyInUrl,
    /// Not a GraphQL request keygate can classify: 400.
    BadRequest(ClassifyError),
    /// A persisted query's hash the edge knows no document for: 200 with Apollo's answer, so the
    /// client sends the document. `batch` is the batch's size, `None` for a single request.
    PersistedQueryNotFound {
        /// The batch's size, if the request was one.
        batch: Option<usize>,
    },
    /// The key may not do this: 403.
    Forbidden(Denial),
    /// Over the tier's limit: 429.
    RateLimited {
        /// The window's limit.
        limit: u32,
        /// Seconds until the window ends.
        retry_after: i64,
    },
    /// The record store failed: 503.
    Unavailable,
}

/// Query parameter names that carry keys in other products.
const KEY_PARAMETERS: [&str; 6] = ["api_key", "apikey", "key", "x-api-key", "access_token", "token"];

/// A request's GraphQL operations: the JSON body of a POST, or the `query` parameters of a GET.
fn graphql_body(request: &Incoming<'_>) -> Result<GraphqlBody, ClassifyError> {
    if request.method.eq_ignore_ascii_case("GET") {
        let param = |name: &str| request.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        return GraphqlBody::from_query_params(param("query"), param("operationName"), param("extensions"));
    }
    GraphqlBody::decode(request.body)
}

/// Whether the query string carries a key: a parameter named like one, or a value shaped like one.
pub fn key_in_url(query: &[(String, String)]) -> bool {
    query.iter().any(|(name, value)| {
        KEY_PARAMETERS.iter().any(|k| name.eq_ignore_ascii_case(k)) || ParsedKey::parse(value).is_ok()
    })
}

/// The key a request presents, checked against its record at `now` (unix seconds): the record, or the
/// refusal. A key in the URL is refused before anything else.
pub async fn authenticate<R: RecordSource>(
    api_key: Option<&str>,
    query: &[(String, String)],
    records: &R,
    now: i64,
) -> Result<KeyRecord, Refused> {
    if key_in_url(query) {
        return Err(Refused::KeyInUrl);
    }
    let presented = api_key.ok_or(Refused::MissingKey)?;
    // Shape and checksum: a mistyped or forged key costs no storage read.
    let key = ParsedKey::parse(presented).map_err(|_| Refused::BadKey)?;
    let record = records.record(key.key_id_str()).await.map_err(|_| Refused::Unavailable)?.ok_or(Refused::BadKey)?;
    record.check(&key, now).map_err(|_| Refused::BadKey)?;
    Ok(record)
}

/// Checks one request at `now` (unix seconds).
///
/// `admit(key, limit_per_minute, now)` is the rate limiter, called last and synchronously: a worker
/// serves concurrent requests in one isolate, so its state may not be borrowed across an `await`.
/// A request answered with `PERSISTED_QUERY_NOT_FOUND` counts against the limit too.
pub async fn check<R: RecordSource, D: DocumentSource>(
    request: &Incoming<'_>,
    records: &R,
    documents: &D,
    admit: impl FnOnce(KeyId, u32, i64) -> Decision,
    tiers: &Tiers,
    now: i64,
) -> Result<Admitted, Refused> {
    let record = authenticate(request.api_key, request.query, records, now).await?;

    let mut body = graphql_body(request).map_err(Refused::BadRequest)?;
    // The batch size is checked before any document is parsed or looked up.
    let allowed = record.permissions.max_batch();
    if body.is_batch() && u32::try_from(body.len()).map_or(true, |size| size > allowed) {
        return Err(Refused::Forbidden(Denial::BatchTooLarge { size: body.len(), allowed }));
    }
    let mut unknown = false;
    for hash in body.unresolved().map_err(Refused::BadRequest)? {
        match documents.document(&hash).await.map_err(|_| Refused::Unavailable)? {
            Some(document) => body.resolve(&hash, &document),
            None => unknown = true,
        }
    }
    if unknown {
        rate_limit(&record, admit, tiers, now)?;
        return Err(Refused::PersistedQueryNotFound { batch: body.is_batch().then(|| body.len()) });
    }
    let (operations, operation_names): (Vec<_>, Vec<_>) =
        body.named_operations().map_err(Refused::BadRequest)?.into_iter().unzip();
    record.permissions.check_request(&operations, body.is_batch()).map_err(Refused::Forbidden)?;

    let (limit, remaining) = rate_limit(&record, admit, tiers, now)?;
    Ok(Admitted { record, limit, remaining, registrations: body.registrations(), operation_names })
}

/// The rate limiter's answer for the key `record` describes: the window's limit and what is left,
/// or the 429.
fn rate_limit(
    record: &KeyRecord,
    admit: impl FnOnce(KeyId, u32, i64) -> Decision,
    tiers: &Tiers,
    now: i64,
) -> Result<(u32, u32), Refused> {
    match admit(record.key_id, tiers.limit(&record.tier), now) {
        Decision::Allowed { limit, remaining } => Ok((limit, remaining)),
        Decision::Limited { limit, retry_after } => Err(Refused::RateLimited { limit, retry_after }),
    }
}

/// Checks a request that carries no GraphQL operation of its own (a WebSocket upgrade): the key, then
/// the rate limit.
pub async fn check_key<R: RecordSource>(
    api_key: Option<&str>,
    query: &[(String, String)],
    records: &R,
    admit: impl FnOnce(KeyId, u32, i64) -> Decision,
    tiers: &Tiers,
    now: i64,
) -> Result<Admitted, Refused> {
    let record = authenticate(api_key, query, records, now).await?;
    let (limit, remaining) = rate_limit(&record, admit, tiers, now)?;
    Ok(Admitted { record, limit, remaining, registrations: vec![], operation_names: vec![] })
}

/// Apollo's answer for an unknown persisted query, one per entry of a batch.
fn persisted_query_not_found(batch: Option<usize>) -> String {
    let one = serde_json::json!({"errors": [{"message": "PersistedQueryNotFound",
        "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}]});
    match batch {
        None => one.to_string(),
        Some(size) => serde_json::Value::Array(vec![one; size]).to_string(),
    }
}

/// A refusal's status, GraphQL error code and message.
pub fn refusal_error(refused: &Refused) -> (u16, &'static str, String) {
    match refused {
        Refused::MissingKey => (401, "UNAUTHENTICATED", "missing API key: send it in the X-API-Key header".into()),
        Refused::BadKey => (401, "UNAUTHENTICATED", "invalid API key".into()),
        Refused::KeyInUrl => (
            400,
            "API_KEY_IN_URL",
            "API keys are not accepted in the URL: send the key in the X-API-Key header, and rotate it".into(),
        ),
        Refused::BadRequest(error) => (400, "BAD_REQUEST", error.message().into()),
        Refused::Forbidden(denial) => (403, "FORBIDDEN", denial.to_string()),
        Refused::RateLimited { .. } => (429, "RATE_LIMITED", "rate limit exceeded for this API key".into()),
        Refused::Unavailable => (503, "SERVICE_UNAVAILABLE", "key records are unavailable; retry".into()),
        Refused::PersistedQueryNotFound { .. } => (200, "PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound".into()),
    }
}

/// A refusal as the client sees it: status, extra headers, and a GraphQL-shaped JSON body.
pub fn refusal_response(refused: &Refused) -> (u16, Vec<(&'static str, String)>, String) {
    if let Refused::PersistedQueryNotFound { batch } = refused {
        return (200, vec![("content-type", "application/json".to_owned())], persisted_query_not_found(*batch));
    }
    let (status, code, message) = refusal_error(refused);
    let mut headers = vec![("content-type", "application/json".to_owned())];
    match refused {
        Refused::MissingKey | Refused::BadKey => {
            headers.push(("www-authenticate", "ApiKey header=\"X-API-Key\"".into()))
        }
        Refused::RateLimited { limit, retry_after } => {
            headers.push(("retry-after", retry_after.to_string()));
            headers.push(("x-ratelimit-limit", limit.to_string()));
            headers.push(("x-ratelimit-remaining", "0".into()));
        }
        Refused::Unavailable => headers.push(("retry-after", "1".into())),
        _ => {}
    }
    let body = serde_json::json!({"errors": [{"message": message, "extensions": {"code": code}}]}).to_string();
    (status, headers, body)
}
