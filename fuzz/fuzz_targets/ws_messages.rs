//! The relay's reader of client WebSocket messages on arbitrary input, for both subprotocols.
//!
//! - `read_client` never panics.
//! - What it accepts, the origin reads the same way: parsed as JavaScript's `JSON.parse` would (the
//!   last of two equal names wins; here serde_json's `Value`), an accepted message has the type the
//!   relay saw. An operation (`subscribe`, legacy `start`) is never passed as something else, and its
//!   payload is the one the relay checked.
//! - A `connection_init` goes on without its key: the message for the origin is a `connection_init`
//!   whose payload has no member named like `X-API-Key`, in any case.

#![no_main]

use keygate_edge::graphql_ws::{read_client, ClientMessage, Subprotocol, INIT_KEY};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check(protocol: Subprotocol, text: &str) {
    let Ok(message) = read_client(protocol, text) else {
        return;
    };
    let Ok(as_origin_reads) = serde_json::from_str::<Value>(text) else {
        panic!("accepted a message that is not JSON: {text:?}");
    };
    let kind = as_origin_reads["type"].as_str().unwrap_or_default();
    let operation = match protocol {
        Subprotocol::TransportWs => "subscribe",
        Subprotocol::Legacy => "start",
    };
    match message {
        ClientMessage::Operation { id, payload } => {
            assert_eq!(kind, operation);
            assert_eq!(as_origin_reads["id"].as_str(), Some(id.as_str()));
            let Ok(checked) = serde_json::from_str::<Value>(payload.get()) else {
                panic!("an operation's payload that is not JSON");
            };
            assert_eq!(as_origin_reads["payload"], checked, "the origin would run another payload");
        }
        ClientMessage::Other => {
            assert_ne!(kind, operation, "an operation passed unchecked: {text:?}");
            assert_ne!(kind, "connection_init", "an init passed with its key: {text:?}");
        }
        ClientMessage::Init { forward, .. } => {
            assert_eq!(kind, "connection_init");
            let Ok(forward) = serde_json::from_str::<Value>(&forward) else {
                panic!("the init for the origin is not JSON");
            };
            assert_eq!(forward["type"], "connection_init");
            if let Some(payload) = forward.get("payload").and_then(Value::as_object) {
                assert!(!payload.keys().any(|name| name.eq_ignore_ascii_case(INIT_KEY)), "the key went on");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(Subprotocol::TransportWs, text);
    check(Subprotocol::Legacy, text);
});
