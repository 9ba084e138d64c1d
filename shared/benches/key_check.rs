//! What a key check costs, next to one SHA-256 of the same key (the floor: the check must hash the key).
//!
//! `cargo bench -p keygate-shared`. The figures go into the issue notes as ratios to `sha256_raw`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate_shared::{ApiKey, KeyId, KeyRecord, KeySecret, ParsedKey, PermissionSet, Prefix, Region, SecretEntry};
use sha2::{Digest, Sha256};

fn fixtures() -> (String, String, KeyRecord) {
    let key = ApiKey::assemble(
        &Prefix::default(),
        &Region::default(),
        KeyId::from(0x0190_a1b2_c3d4_7e8f_9a0b_1c2d_3e4f_5061),
        &KeySecret::from_bytes([0x5a; 32]),
    );
    let old =
        ApiKey::assemble(&Prefix::default(), &Region::default(), key.key_id(), &KeySecret::from_bytes([0x11; 32]));
    let record = KeyRecord {
        key_id: key.key_id(),
        seq: 1,
        tier: "default".into(),
        permissions: PermissionSet::parse(["query:read", "batch:10"]).unwrap(),
        expires_at: Some(2_000_000_000),
        revoked: false,
        disabled: false,
        // A key in its rotation grace period: the usual worst case of two generations to compare.
        secrets: vec![
            SecretEntry { hash: key.hash(), not_after: None },
            SecretEntry { hash: old.hash(), not_after: Some(1_900_000_000) },
        ],
        owner: None,
    };
    let text = key.expose().to_owned();
    // Flip the last checksum digit: same length and alphabet, wrong checksum.
    let mut garbage = text.clone();
    let last = garbage.pop().unwrap();
    garbage.push(if last == 'a' { 'b' } else { 'a' });
    (text, garbage, record)
}

fn bench(c: &mut Criterion) {
    let (key, garbage, record) = fixtures();
    let now = 1_800_000_000;
    assert!(ParsedKey::parse(&garbage).is_err());

    c.bench_function("sha256_raw", |b| b.iter(|| Sha256::digest(black_box(key.as_bytes()))));
    c.bench_function("parse_and_checksum", |b| b.iter(|| ParsedKey::parse(black_box(&key)).unwrap()));
    c.bench_function("hash_key", |b| b.iter(|| keygate_shared::SecretHash::of_key(black_box(&key))));
    c.bench_function("full_check", |b| {
        b.iter(|| {
            let parsed = ParsedKey::parse(black_box(&key)).unwrap();
            record.check(&parsed, black_box(now)).unwrap();
        })
    });
    c.bench_function("reject_bad_checksum", |b| b.iter(|| ParsedKey::parse(black_box(&garbage)).unwrap_err()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
