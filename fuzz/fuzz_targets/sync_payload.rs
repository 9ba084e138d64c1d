//! A replication push on arbitrary input: signature check, then the payload decoder. Never a panic;
//! a decoded payload encodes and decodes to itself.

#![no_main]

use keygate_shared::{SyncPayload, SyncSecret};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_764_400_000;

fuzz_target!(|data: &[u8]| {
    let secret = SyncSecret::new("fuzz-sync-secret");
    // Split the input into two headers and a body at the first two newlines.
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (Some(stamp), Some(signature), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(stamp), Ok(signature)) = (std::str::from_utf8(stamp), std::str::from_utf8(signature)) else {
        return;
    };
    let _ = secret.verify(stamp, signature, body, NOW);
    // The decoder runs only after a good signature in production; fuzz it on its own too.
    if let Ok(payload) = serde_json::from_slice::<SyncPayload>(body) {
        let again = serde_json::to_vec(&payload).unwrap_or_default();
        assert_eq!(serde_json::from_slice::<SyncPayload>(&again).ok(), Some(payload));
    }
});
