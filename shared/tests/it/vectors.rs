//! Key format v1 known-answer vectors.
//!
//! `shared/testdata/keyformat-v1.json` is regenerated here from fixed inputs and must equal the committed
//! file (`KEYGATE_BLESS=1 cargo test -p keygate-shared` rewrites it after a deliberate change). The
//! independent vectors in `../shared/testdata/` beside the project must agree with this implementation.

use std::path::PathBuf;

use keygate_shared::{sha256_hex, ApiKey, KeyId, KeySecret, ParsedKey, Prefix, Region};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The checksum digits, written independently of the crate's base62 code.
fn checksum(body: &str) -> String {
    let mut value = u64::from(crc32fast::hash(body.as_bytes()));
    let mut digits = [b'0'; 6];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(digits.to_vec()).unwrap()
}

/// A body with its correct checksum appended: for near-misses whose fault is elsewhere.
fn with_checksum(body: &str) -> String {
    format!("{body}{}", checksum(body))
}

/// Fixed pseudo-random bytes: SHA-256 of a label.
fn fixed_bytes<const N: usize>(label: &str) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&Sha256::digest(label.as_bytes())[..N]);
    out
}

fn valid_case(prefix: &str, region: &str, key_id: [u8; 16], secret: [u8; 32]) -> Value {
    let key = ApiKey::assemble(
        &Prefix::new(prefix).unwrap(),
        &Region::new(region).unwrap(),
        KeyId::from(u128::from_be_bytes(key_id)),
        &KeySecret::from_bytes(secret),
    );
    let text = key.expose();
    json!({
        "prefix": prefix,
        "region": region,
        "key_id_hex": hex::encode(key_id),
        "secret_hex": hex::encode(secret),
        "key": text,
        "key_id": key.key_id().to_string(),
        "crc32_hex": format!("{:08x}", crc32fast::hash(&text.as_bytes()[..text.len() - 6])),
        "sha256_hex": sha256_hex(text),
    })
}

fn generate_vectors() -> Value {
    let mut counting = [0u8; 32];
    for (i, byte) in counting.iter_mut().enumerate() {
        *byte = i as u8;
    }
    let mut counting_id = [0u8; 16];
    counting_id.copy_from_slice(&counting[..16]);
    let mut valid = vec![
        valid_case("fraiseql", "us_east_1", [0; 16], [0; 32]),
        valid_case("fraiseql", "us_east_1", [0xff; 16], [0xff; 32]),
        valid_case("acme", "eu", counting_id, counting),
        valid_case("k9", "ap_south_east_2", fixed_bytes("id-1"), fixed_bytes("secret-1")),
        valid_case("abcdefghijklmnop", "x", fixed_bytes("id-2"), fixed_bytes("secret-2")),
        valid_case("a1", "0_1_2_3", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 61], [1; 32]),
    ];
    for i in 0..6 {
        valid.push(valid_case(
            "fraiseql",
            "us_east_1",
            fixed_bytes(&format!("id-r{i}")),
            fixed_bytes(&format!("secret-r{i}")),
        ));
    }

    let good = valid[2]["key"].as_str().unwrap().to_owned();
    let (body, _) = good.split_at(good.len() - 6);
    let id = "000SYW7RiJxkEgOGusQGwp";
    let secret = &body[body.len() - 43..];
    let invalid: Vec<(String, &str, &str)> = vec![
        (String::new(), "empty", "empty"),
        ("a".repeat(256), "too_long", "longer than 255 bytes"),
        (format!("{}_{}", "a".repeat(200), good), "too_long", "a valid key behind a long prefix"),
        (good.replace("acme_eu", "acme_e-u"), "invalid_character", "'-' in the region"),
        (good.replace("acme_eu", "acme_eü"), "invalid_character", "non-ASCII letter"),
        (format!("{good} "), "invalid_character", "trailing space"),
        (format!("{good}\n"), "invalid_character", "trailing newline"),
        (good.replace("acme_eu_", "acme_"), "missing_parts", "no region"),
        (good.replace('_', ""), "missing_parts", "no separators at all"),
        (with_checksum(&format!("ACME_eu_{id}_{secret}")), "invalid_prefix", "uppercase prefix, checksum right"),
        (with_checksum(&format!("a_eu_{id}_{secret}")), "invalid_prefix", "prefix of one character"),
        (with_checksum(&format!("abcdefghijklmnopq_eu_{id}_{secret}")), "invalid_prefix", "prefix of 17 characters"),
        (with_checksum(&format!("9acme_eu_{id}_{secret}")), "invalid_prefix", "prefix starts with a digit"),
        (with_checksum(&format!("_acme_eu_{id}_{secret}")), "invalid_prefix", "empty prefix"),
        (with_checksum(&format!("acme__{id}_{secret}")), "invalid_region", "empty region"),
        (with_checksum(&format!("acme_us__east_{id}_{secret}")), "invalid_region", "empty word inside the region"),
        (with_checksum(&format!("acme_EU_{id}_{secret}")), "invalid_region", "uppercase region"),
        (with_checksum(&format!("acme_eu_{}_{secret}", &id[1..])), "invalid_key_id", "key id of 21 characters"),
        (with_checksum(&format!("acme_eu_0{id}_{secret}")), "invalid_key_id", "key id of 23 characters"),
        (with_checksum(&format!("acme_eu_{}_{secret}", "z".repeat(22))), "key_id_out_of_range", "key id ≥ 2^128"),
        (with_checksum(&format!("acme_eu_7n42DGM5Tflk9n8mt7Fhc8_{secret}")), "key_id_out_of_range", "key id = 2^128"),
        (good[..good.len() - 1].to_owned(), "invalid_secret", "secret+checksum field of 48 characters"),
        (format!("{good}0"), "invalid_secret", "secret+checksum field of 50 characters"),
        (with_checksum(&format!("acme_eu_{id}_{}", "z".repeat(43))), "secret_out_of_range", "secret ≥ 2^256"),
        (
            format!("{body}{}", if good.ends_with('0') { "000001" } else { "000000" }),
            "checksum_mismatch",
            "checksum zeroed",
        ),
        (good.replacen("acme", "acmf", 1), "checksum_mismatch", "one prefix character changed"),
        (good.replace(id, "000SYW7RiJxkEgOGusQGwq"), "checksum_mismatch", "one key id character changed"),
    ];
    let invalid: Vec<Value> =
        invalid.into_iter().map(|(key, code, why)| json!({"key": key, "code": code, "why": why})).collect();
    json!({
        "format": "keygate key format v1 (../shared/DESIGN.md); regenerated by shared/tests/it/vectors.rs",
        "alphabet": String::from_utf8(ALPHABET.to_vec()).unwrap(),
        "valid": valid,
        "invalid": invalid,
    })
}

fn our_vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/keyformat-v1.json")
}

#[test]
fn committed_vectors_are_what_the_code_generates() {
    let generated = serde_json::to_string_pretty(&generate_vectors()).unwrap() + "\n";
    if std::env::var_os("KEYGATE_BLESS").is_some() {
        std::fs::write(our_vectors_path(), &generated).unwrap();
    }
    let committed = std::fs::read_to_string(our_vectors_path()).unwrap();
    assert!(
        committed == generated,
        "shared/testdata/keyformat-v1.json differs from what the code generates; if the change is \
         deliberate, run `KEYGATE_BLESS=1 cargo test -p keygate-shared` and commit the file"
    );
}

fn check_vectors(file: &Value) -> usize {
    let mut checked = 0;
    for case in file["valid"].as_array().unwrap() {
        let text = case["key"].as_str().unwrap();
        let parsed = ParsedKey::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.prefix(), case["prefix"], "{text}");
        assert_eq!(parsed.region(), case["region"], "{text}");
        assert_eq!(parsed.key_id_str(), case["key_id"], "{text}");
        assert_eq!(parsed.key_id().to_string(), case["key_id"], "{text}");
        assert_eq!(parsed.hash().to_hex(), case["sha256_hex"], "{text}");
        let key_id: [u8; 16] = hex::decode(case["key_id_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
        let secret: [u8; 32] = hex::decode(case["secret_hex"].as_str().unwrap()).unwrap().try_into().unwrap();
        assert_eq!(parsed.key_id(), KeyId::from(u128::from_be_bytes(key_id)), "{text}");
        let rebuilt = ApiKey::assemble(
            &Prefix::new(parsed.prefix()).unwrap(),
            &Region::new(parsed.region()).unwrap(),
            parsed.key_id(),
            &KeySecret::from_bytes(secret),
        );
        assert_eq!(rebuilt.expose(), text);
        let crc = format!("{:08x}", crc32fast::hash(&text.as_bytes()[..text.len() - 6]));
        assert_eq!(crc, case["crc32_hex"], "{text}");
        checked += 1;
    }
    for case in file["invalid"].as_array().unwrap() {
        let text = case["key"].as_str().unwrap();
        let error = ParsedKey::parse(text).expect_err(text);
        if let Some(code) = case.get("code") {
            assert_eq!(error.code(), code, "{}: {text:?}", case["why"]);
        }
        checked += 1;
    }
    checked
}

#[test]
fn our_vectors_hold() {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(our_vectors_path()).unwrap()).unwrap();
    let codes: std::collections::BTreeSet<&str> =
        file["invalid"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap()).collect();
    // Every error the parser can give has at least one vector.
    assert_eq!(codes.len(), 11, "{codes:?}");
    assert!(check_vectors(&file) > 35);
}

/// The vectors made by an independent implementation (`../shared/testdata/` beside the project root).
#[test]
fn independent_vectors_agree() {
    let path = std::env::var_os("KEYGATE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("testdata/keyformat-v1.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        // CI always has ../shared beside the clone; a developer's checkout elsewhere may not.
        assert!(std::env::var_os("CI").is_none(), "{} is missing in CI", path.display());
        eprintln!("note: {} not found; independent vectors not checked", path.display());
        return;
    };
    let file: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(check_vectors(&file), 13);
}
