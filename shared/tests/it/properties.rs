//! Properties of key format v1 over generated input.

use keygate_shared::{ApiKey, KeyError, KeyId, KeySecret, ParsedKey, Prefix, Region};
use proptest::prelude::*;

fn prefixes() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{1,15}"
}

fn regions() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}(_[a-z0-9]{1,8}){0,4}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn parsing_any_string_never_panics(text in any::<String>()) {
        let _ = ParsedKey::parse(&text);
    }

    #[test]
    fn parsing_key_shaped_strings_never_panics(text in "[A-Za-z0-9_]{0,260}") {
        if let Ok(parsed) = ParsedKey::parse(&text) {
            prop_assert_eq!(parsed.key_id_str().len(), 22);
        }
    }

    #[test]
    fn assembled_keys_parse_back_to_their_parts(
        prefix in prefixes(), region in regions(), id in any::<u128>(), secret in any::<[u8; 32]>()
    ) {
        let key = ApiKey::assemble(&Prefix::new(&prefix).unwrap(), &Region::new(&region).unwrap(), KeyId::from(id), &KeySecret::from_bytes(secret));
        let parsed = ParsedKey::parse(key.expose()).unwrap();
        prop_assert_eq!(parsed.prefix(), prefix.as_str());
        prop_assert_eq!(parsed.region(), region.as_str());
        prop_assert_eq!(parsed.key_id(), KeyId::from(id));
        prop_assert_eq!(parsed.hash(), key.hash());
        prop_assert_eq!(ApiKey::parse(key.expose().to_owned()).unwrap().key_id(), key.key_id());
    }

    #[test]
    fn any_single_character_change_is_caught(
        id in any::<u128>(), secret in any::<[u8; 32]>(), position in any::<prop::sample::Index>(), replacement in "[A-Za-z0-9_]"
    ) {
        let key = ApiKey::assemble(&Prefix::default(), &Region::default(), KeyId::from(id), &KeySecret::from_bytes(secret));
        let mut bytes = key.expose().as_bytes().to_vec();
        let at = position.index(bytes.len());
        let new = replacement.as_bytes()[0];
        prop_assume!(bytes[at] != new);
        bytes[at] = new;
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(ParsedKey::parse(&changed).is_err(), "{} accepted", changed);
    }
}

#[test]
fn generated_keys_from_the_os_rng_are_well_formed_and_distinct() {
    let mut rng = rand_core::OsRng;
    let (prefix, region) = (Prefix::default(), Region::default());
    let a = ApiKey::generate(&prefix, &region, 1_764_400_000_000, &mut rng);
    let b = ApiKey::generate(&prefix, &region, 1_764_400_000_000, &mut rng);
    assert_ne!(a.expose(), b.expose());
    assert_ne!(a.key_id(), b.key_id());
    for key in [&a, &b] {
        let parsed = ParsedKey::parse(key.expose()).unwrap();
        assert_eq!(parsed.key_id().to_uuid().get_version_num(), 7);
        assert!(key.expose().starts_with("fraiseql_us_east_1_"));
    }
}

#[test]
fn debug_output_of_secret_holding_types_is_pinned() {
    let key =
        ApiKey::assemble(&Prefix::default(), &Region::default(), KeyId::from(42), &KeySecret::from_bytes([9; 32]));
    let parsed = ParsedKey::parse(key.expose()).unwrap();
    assert_eq!(format!("{key:?}"), "ApiKey { key_id: KeyId(000000000000000000000g), .. }");
    assert_eq!(
        format!("{parsed:?}"),
        r#"ParsedKey { prefix: "fraiseql", region: "us_east_1", key_id: KeyId(000000000000000000000g), .. }"#
    );
    assert_eq!(format!("{:?}", KeySecret::from_bytes([9; 32])), "KeySecret(<redacted>)");
    let secret_part = &key.expose()[key.expose().len() - 49..];
    for debug in [format!("{key:?}"), format!("{parsed:?}"), format!("{key:#?}")] {
        assert!(!debug.contains(secret_part));
    }
}

#[test]
fn errors_carry_stable_codes() {
    assert_eq!(ParsedKey::parse("").unwrap_err(), KeyError::Empty);
    assert_eq!(KeyError::ChecksumMismatch.code(), "checksum_mismatch");
    assert_eq!(KeyError::ChecksumMismatch.to_string(), "the checksum does not match");
}
