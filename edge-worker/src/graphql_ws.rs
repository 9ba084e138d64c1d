//! GraphQL over WebSocket, as the relay reads it: the two subprotocols, what each client message is,
//! and the messages and close codes the edge itself sends.
//!
//! - `graphql-transport-ws` (the `graphql-ws` library): the client sends `connection_init`, `ping`,
//!   `pong`, `subscribe` and `complete`.
//! - `graphql-ws`, the legacy protocol of `subscriptions-transport-ws`: `connection_init`, `start`,
//!   `stop` and `connection_terminate`.
//!
//! A message the edge cannot read as one of these is refused (the socket closes with 4400), never
//! forwarded for the origin to read some other way. `subscribe` and `start` carry an operation, which
//! the relay checks like an HTTP request; everything else passes as sent, except `connection_init`,
//! whose API key is taken out before it reaches the origin.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// The largest message a client may send (the HTTP body's limit); larger closes the socket with 1009.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// How long a client that sends its key in `connection_init` has to send it, in milliseconds.
pub const INIT_TIMEOUT_MS: u64 = 10_000;
/// The name a key goes by in the `connection_init` payload (matched without regard to case).
pub const INIT_KEY: &str = "X-API-Key";
/// Messages a client may send a second unless the var `WS_MESSAGES_PER_SEC` says otherwise, after a
/// burst of twice as many; more closes the socket with 4429. A GraphQL client sends a few (operations,
/// `complete`, pings); a flood would keep the runtime busy relaying it.
pub const DEFAULT_MESSAGES_PER_SEC: u32 = 100;

/// Close codes the edge sends. The 44xx codes are graphql-ws's own.
pub mod close {
    /// A normal closure.
    pub const NORMAL: u16 = 1000;
    /// A message larger than [`super::MAX_MESSAGE`].
    pub const TOO_BIG: u16 = 1009;
    /// The origin failed, or could not be reached.
    pub const ORIGIN_FAILED: u16 = 1011;
    /// Key records are unavailable; try again.
    pub const TRY_AGAIN: u16 = 1013;
    /// A message that is not one of the subprotocol's.
    pub const BAD_MESSAGE: u16 = 4400;
    /// An operation before `connection_init`.
    pub const UNAUTHORIZED: u16 = 4401;
    /// A missing or bad key, or one revoked, disabled or expired while the socket is open.
    pub const FORBIDDEN: u16 = 4403;
    /// No `connection_init` within [`super::INIT_TIMEOUT_MS`].
    pub const INIT_TIMEOUT: u16 = 4408;
    /// Over the key's rate limit at `connection_init`, or over the socket's message rate.
    pub const RATE_LIMITED: u16 = 4429;
}

/// The subprotocol a socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subprotocol {
    /// `graphql-transport-ws`.
    TransportWs,
    /// `graphql-ws`, the legacy protocol.
    Legacy,
}

impl Subprotocol {
    /// The subprotocol to speak, from the client's `Sec-WebSocket-Protocol` offer:
    /// `graphql-transport-ws` when offered, else `graphql-ws`, else none.
    pub fn negotiate(offered: &str) -> Option<Self> {
        let offers: Vec<&str> = offered.split(',').map(str::trim).collect();
        if offers.contains(&"graphql-transport-ws") {
            Some(Self::TransportWs)
        } else if offers.contains(&"graphql-ws") {
            Some(Self::Legacy)
        } else {
            None
        }
    }

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::TransportWs => "graphql-transport-ws",
            Self::Legacy => "graphql-ws",
        }
    }

    /// Whether a client may send a message of this type.
    fn client_sends(self, kind: &str) -> bool {
        match self {
            Self::TransportWs => matches!(kind, "connection_init" | "ping" | "pong" | "subscribe" | "complete"),
            Self::Legacy => matches!(kind, "connection_init" | "start" | "stop" | "connection_terminate"),
        }
    }

    /// The message type that starts an operation.
    fn operation_type(self) -> &'static str {
        match self {
            Self::TransportWs => "subscribe",
            Self::Legacy => "start",
        }
    }

    /// The `error` message that ends operation `id`, refused by the edge with this GraphQL error code
    /// and message. graphql-transport-ws carries a list of errors; the legacy protocol one error.
    pub fn operation_error(self, id: &str, code: &str, message: &str) -> String {
        let error = serde_json::json!({"message": message, "extensions": {"code": code}});
        let payload = match self {
            Self::TransportWs => Value::Array(vec![error]),
            Self::Legacy => error,
        };
        serde_json::json!({"id": id, "type": "error", "payload": payload}).to_string()
    }
}

/// A client message, as the relay reads it.
#[derive(Debug)]
pub enum ClientMessage {
    /// `connection_init`: the key its payload carried, if any, and the message to send the origin
    /// instead (the same, without the key).
    Init {
        /// The key from the payload.
        api_key: Option<Zeroizing<String>>,
        /// The message for the origin.
        forward: String,
    },
    /// `subscribe` (or legacy `start`): an operation to check before it goes on as sent.
    Operation {
        /// The operation's id, for an `error` answer.
        id: String,
        /// The payload: `{"query", "operationName"?, "variables"?, "extensions"?}`.
        payload: Box<RawValue>,
    },
    /// Any other message the subprotocol has: it goes on as sent.
    Other,
}

/// Why a client message is refused: the socket closes with [`close::BAD_MESSAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadMessage {
    /// Not a JSON object with a string `type` (or a field given twice).
    NotJson,
    /// A type the subprotocol does not have a client send.
    UnknownType,
    /// An operation without an `id` or a `payload`.
    IncompleteOperation,
    /// A `connection_init` payload that is not an object, or whose key is not one string.
    BadInit,
}

impl BadMessage {
    /// The close reason (at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotJson => "Invalid message: not a JSON object with a type",
            Self::UnknownType => "Invalid message: unknown type for this subprotocol",
            Self::IncompleteOperation => "Invalid message: an operation needs an id and a payload",
            Self::BadInit => "Invalid message: connection_init payload must be an object, its key one string",
        }
    }
}

/// The fields the relay reads; serde refuses a field given twice, so the edge and the origin cannot
/// read one message two ways.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<Box<RawValue>>,
}

/// Reads one text message from the client.
pub fn read_client(protocol: Subprotocol, text: &str) -> Result<ClientMessage, BadMessage> {
    let envelope: Envelope = serde_json::from_str(text).map_err(|_| BadMessage::NotJson)?;
    if !protocol.client_sends(&envelope.kind) {
        return Err(BadMessage::UnknownType);
    }
    if envelope.kind == "connection_init" {
        return read_init(envelope.payload.as_deref());
    }
    if envelope.kind == protocol.operation_type() {
        return match (envelope.id, envelope.payload) {
            (Some(id), Some(payload)) => Ok(ClientMessage::Operation { id, payload }),
            _ => Err(BadMessage::IncompleteOperation),
        };
    }
    Ok(ClientMessage::Other)
}

/// A `connection_init`: takes the key out of its payload and rebuilds the message without it.
fn read_init(payload: Option<&RawValue>) -> Result<ClientMessage, BadMessage> {
    let payload: Option<Map<String, Value>> = match payload {
        None => None,
        Some(raw) => serde_json::from_str::<Option<Map<String, Value>>>(raw.get()).map_err(|_| BadMessage::BadInit)?,
    };
    let mut api_key: Option<Zeroizing<String>> = None;
    let forward = match payload {
        None => serde_json::json!({"type": "connection_init"}),
        Some(mut payload) => {
            let names: Vec<String> =
                payload.keys().filter(|name| name.eq_ignore_ascii_case(INIT_KEY)).cloned().collect();
            for name in names {
                let Some(Value::String(key)) = payload.remove(&name) else {
                    return Err(BadMessage::BadInit);
                };
                let key = Zeroizing::new(key);
                // Two spellings of the name with two different keys: neither is taken.
                if api_key.as_ref().is_some_and(|first| **first != *key) {
                    return Err(BadMessage::BadInit);
                }
                api_key = Some(key);
            }
            serde_json::json!({"type": "connection_init", "payload": payload})
        }
    };
    Ok(ClientMessage::Init { api_key, forward: forward.to_string() })
}

/// The messages a client may still send: a token bucket of twice the rate, refilled at the rate.
#[derive(Debug, Clone)]
pub struct MessageBudget {
    per_sec: f64,
    tokens: f64,
    at_ms: f64,
}

impl MessageBudget {
    /// A full budget of `per_sec` messages a second at `now_ms`; 0 is no limit.
    pub fn new(per_sec: u32, now_ms: f64) -> Self {
        let per_sec = f64::from(per_sec);
        Self { per_sec, tokens: 2.0 * per_sec, at_ms: now_ms }
    }

    /// Spends one message at `now_ms`; false when none is left.
    pub fn spend(&mut self, now_ms: f64) -> bool {
        if self.per_sec == 0.0 {
            return true;
        }
        let elapsed = (now_ms - self.at_ms).max(0.0);
        self.tokens = (self.tokens + elapsed * self.per_sec / 1000.0).min(2.0 * self.per_sec);
        self.at_ms = now_ms.max(self.at_ms);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Whether a header of the client's upgrade request goes on to the origin's: what an HTTP request
/// would pass, without the handshake's own headers (the origin's upgrade makes its own).
pub fn forwards_upgrade_header(name: &str) -> bool {
    let handshake = [
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h));
    !handshake && crate::identity::forwards_client_header(name)
}

/// The close code to pass on to the other side for one a peer closed with: codes an endpoint may
/// send (1000 and 3000–4999) pass as they are; a closure without a code, or an abnormal one, becomes
/// 1000 or 1011.
pub fn relayable_close(code: u16) -> u16 {
    match code {
        1000 | 3000..=4999 => code,
        // 1001 going away, 1005 no status: a normal end as far as the other side is concerned.
        1001 | 1005 => close::NORMAL,
        _ => close::ORIGIN_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subprotocol_is_negotiated_from_the_offer() {
        assert_eq!(Subprotocol::negotiate("graphql-transport-ws"), Some(Subprotocol::TransportWs));
        assert_eq!(Subprotocol::negotiate("graphql-ws"), Some(Subprotocol::Legacy));
        assert_eq!(Subprotocol::negotiate("graphql-ws, graphql-transport-ws"), Some(Subprotocol::TransportWs));
        assert_eq!(Subprotocol::negotiate("chat, superchat"), None);
        assert_eq!(Subprotocol::negotiate(""), None);
    }

    #[test]
    fn operations_are_read_for_each_subprotocol() {
        let subscribe = r#"{"type":"subscribe","id":"1","payload":{"query":"subscription { ticks }"}}"#;
        let Ok(ClientMessage::Operation { id, payload }) = read_client(Subprotocol::TransportWs, subscribe) else {
            panic!("a subscribe is an operation");
        };
        assert_eq!((id.as_str(), payload.get()), ("1", r#"{"query":"subscription { ticks }"}"#));
        let start = r#"{"type":"start","id":"a","payload":{"query":"{ hello }"}}"#;
        assert!(matches!(read_client(Subprotocol::Legacy, start), Ok(ClientMessage::Operation { .. })));
        // Each protocol's own types only.
        assert_eq!(read_client(Subprotocol::Legacy, subscribe).unwrap_err(), BadMessage::UnknownType);
        assert_eq!(read_client(Subprotocol::TransportWs, start).unwrap_err(), BadMessage::UnknownType);
        for other in [r#"{"type":"ping"}"#, r#"{"type":"complete","id":"1"}"#] {
            assert!(matches!(read_client(Subprotocol::TransportWs, other), Ok(ClientMessage::Other)));
        }
        assert!(matches!(read_client(Subprotocol::Legacy, r#"{"type":"stop","id":"a"}"#), Ok(ClientMessage::Other)));
    }

    #[test]
    fn messages_that_could_be_read_two_ways_are_refused() {
        let bad = [
            "not json",
            "[]",
            r#"{"id":"1"}"#,
            r#"{"type":"ping","type":"subscribe","id":"1","payload":{"query":"mutation { a }"}}"#,
            r#"{"type":"subscribe","id":"1","id":"2","payload":{"query":"{ a }"}}"#,
            r#"{"type":"subscribe","id":1,"payload":{"query":"{ a }"}}"#,
        ];
        for text in bad {
            assert!(read_client(Subprotocol::TransportWs, text).is_err(), "{text}");
        }
        assert_eq!(
            read_client(Subprotocol::TransportWs, r#"{"type":"subscribe","id":"1"}"#).unwrap_err(),
            BadMessage::IncompleteOperation
        );
        // An escaped type name is the same type, as JSON.parse reads it.
        let escaped = r#"{"type":"\u0073ubscribe","id":"1","payload":{"query":"mutation { a }"}}"#;
        assert!(matches!(read_client(Subprotocol::TransportWs, escaped), Ok(ClientMessage::Operation { .. })));
    }

    #[test]
    fn the_init_key_is_taken_out_before_the_origin_sees_it() {
        let init = r#"{"type":"connection_init","payload":{"X-API-Key":"kg_secret","locale":"fr"}}"#;
        let Ok(ClientMessage::Init { api_key, forward }) = read_client(Subprotocol::TransportWs, init) else {
            panic!("an init");
        };
        assert_eq!(api_key.as_deref().map(String::as_str), Some("kg_secret"));
        assert!(!forward.contains("kg_secret"));
        let forward: Value = serde_json::from_str(&forward).unwrap();
        assert_eq!(forward, serde_json::json!({"type": "connection_init", "payload": {"locale": "fr"}}));

        let lower = r#"{"type":"connection_init","payload":{"x-api-key":"kg_a"}}"#;
        assert!(matches!(read_client(Subprotocol::Legacy, lower), Ok(ClientMessage::Init { api_key: Some(_), .. })));
        let Ok(ClientMessage::Init { api_key: None, forward }) =
            read_client(Subprotocol::TransportWs, r#"{"type":"connection_init"}"#)
        else {
            panic!("an init without a payload");
        };
        assert_eq!(forward, r#"{"type":"connection_init"}"#);
        for bad in [
            r#"{"type":"connection_init","payload":{"X-API-Key":"kg_a","x-api-key":"kg_b"}}"#,
            r#"{"type":"connection_init","payload":{"X-API-Key":42}}"#,
            r#"{"type":"connection_init","payload":"kg_a"}"#,
        ] {
            assert_eq!(read_client(Subprotocol::TransportWs, bad).unwrap_err(), BadMessage::BadInit, "{bad}");
        }
    }

    #[test]
    fn a_client_gets_a_burst_then_a_steady_rate_of_messages() {
        let mut budget = MessageBudget::new(DEFAULT_MESSAGES_PER_SEC, 0.0);
        assert!((0..200).all(|_| budget.spend(0.0)), "the burst");
        assert!(!budget.spend(0.0), "then nothing at once");
        assert!(budget.spend(10.0), "one more after 10 ms at 100 a second");
        assert!(!budget.spend(10.0));
        // A second's rest refills 100, never more than the burst.
        assert_eq!((0..300).filter(|_| budget.spend(1_010.0)).count(), 100);
        let mut rested = MessageBudget::new(DEFAULT_MESSAGES_PER_SEC, 0.0);
        assert_eq!((0..300).filter(|_| rested.spend(60_000.0)).count(), 200);
        let mut unlimited = MessageBudget::new(0, 0.0);
        assert!((0..100_000).all(|_| unlimited.spend(0.0)));
    }

    #[test]
    fn the_handshake_key_and_identity_headers_stay_behind() {
        for kept in ["user-agent", "origin", "cookie", "x-request-id"] {
            assert!(forwards_upgrade_header(kept), "{kept}");
        }
        for dropped in ["Sec-WebSocket-Key", "upgrade", "Connection", "X-API-Key", "authorization", "x-keygate-tier"] {
            assert!(!forwards_upgrade_header(dropped), "{dropped}");
        }
    }

    #[test]
    fn errors_and_close_codes_follow_each_protocol() {
        let error: Value =
            serde_json::from_str(&Subprotocol::TransportWs.operation_error("7", "FORBIDDEN", "no")).unwrap();
        assert_eq!(error["type"], "error");
        assert_eq!(error["id"], "7");
        assert_eq!(error["payload"][0]["extensions"]["code"], "FORBIDDEN");
        let legacy: Value = serde_json::from_str(&Subprotocol::Legacy.operation_error("7", "FORBIDDEN", "no")).unwrap();
        assert_eq!(legacy["payload"]["message"], "no");
        for (peer, relayed) in [(1000, 1000), (4403, 4403), (4499, 4499), (1001, 1000), (1005, 1000), (1006, 1011)] {
            assert_eq!(relayable_close(peer), relayed, "{peer}");
        }
        for reason in
            [BadMessage::NotJson, BadMessage::UnknownType, BadMessage::IncompleteOperation, BadMessage::BadInit]
        {
            assert!(reason.reason().len() <= 123);
        }
    }
}
