//! The key parser on arbitrary input: it must never panic, and what it accepts must be a v1 key.

#![no_main]

use keygate_shared::ParsedKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = ParsedKey::parse(text) {
        assert!(text.len() <= keygate_shared::key::MAX_KEY_LEN);
        assert_eq!(key.key_id().to_string(), key.key_id_str());
        assert!(text.starts_with(key.prefix()));
        assert_eq!(
            text.len(),
            key.prefix().len() + key.region().len() + 3 + keygate_shared::key::KEY_ID_LEN + 49
        );
    }
});
