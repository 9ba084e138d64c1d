//! What the origin's JWT costs to make natively, next to its baseline: the HMAC the edge already
//! computes for the identity headers. ES256 signing is the costly part, which is why an isolate reuses
//! one key's token for up to 10 s; opening the sealed signing key happens once per isolate and refresh.
//!
//! `cargo bench -p keygate-shared --bench origin_token`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate_shared::jwt::{Claims, TokenSettings, TokenSigner, JTI_LEN};
use keygate_shared::{KeyId, KeyRecord, OriginSecret, OriginSigningKey, PermissionSet, SyncSecret};
use rand_core::OsRng;

fn bench(c: &mut Criterion) {
    let record = KeyRecord {
        key_id: KeyId::from(0x0190_a1b2_c3d4_7e8f_9a0b_1c2d_3e4f_5061),
        seq: 1,
        tier: "default".into(),
        permissions: PermissionSet::parse(["query:read", "mutation:write", "batch:10"]).unwrap(),
        expires_at: Some(1_900_000_000),
        revoked: false,
        disabled: false,
        secrets: Vec::new(),
        owner: Some("acme".into()),
    };
    let settings = TokenSettings::default();
    let now = 1_800_000_000;
    let es256 = TokenSigner::Es256(OriginSigningKey::generate("kid".into(), &mut OsRng));
    let hs256 = TokenSigner::Hs256(OriginSecret::new("origin-secret"));
    let origin_secret = OriginSecret::new("origin-secret");
    let sync_secret = SyncSecret::new("sync-secret");
    let sealed =
        OriginSigningKey::generate("kid".into(), &mut OsRng).seal_for_edge(&sync_secret, 1, 0, &mut OsRng).unwrap();

    c.bench_function("identity_header_hmac", |b| {
        b.iter(|| origin_secret.sign(black_box(now), "0000000000000000000007", "default"))
    });
    c.bench_function("jwt_hs256", |b| {
        b.iter(|| hs256.sign(&Claims::for_record(black_box(&record), &settings, now, &[7; JTI_LEN])))
    });
    c.bench_function("jwt_es256", |b| {
        b.iter(|| es256.sign(&Claims::for_record(black_box(&record), &settings, now, &[7; JTI_LEN])))
    });
    c.bench_function("open_sealed_signing_key", |b| b.iter(|| black_box(&sealed).open(&sync_secret).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
