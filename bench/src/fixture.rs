//! A key for the edge, made as the control plane would make it, for harnesses that run the built worker
//! on its own (`scripts/bench-edge.sh`, `bench/workerd/edge.mjs`): a fresh API key, its record, and a fresh ES256 origin
//! signing key sealed under the sync secret. Prints one JSON object:
//! `{"api_key", "record", "signing_key", "jwk"}`; the caller puts `record` (and, to let the edge sign,
//! `signing_key`) into a `SyncPayload` and pushes it signed with the same sync secret, and can check the
//! edge's tokens against `jwk`, the signing key's public half.

use std::time::{SystemTime, UNIX_EPOCH};

use keygate_shared::{ApiKey, KeyRecord, OriginSigningKey, PermissionSet, Prefix, Region, SecretEntry, SyncSecret};
use rand_core::OsRng;
use serde_json::json;

use crate::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The edge's `SYNC_SECRET`: seals the signing key.
    #[arg(long)]
    sync_secret: String,
    /// The key's rate-limit tier.
    #[arg(long, default_value = "default")]
    tier: String,
    /// The key's owner (the token's `tenant_id`).
    #[arg(long, default_value = "bench")]
    owner: String,
}

pub fn run(args: &Args) -> Result<(), Error> {
    let millis = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let key = ApiKey::generate(&Prefix::default(), &Region::default(), millis, &mut OsRng);
    let record = KeyRecord {
        key_id: key.key_id(),
        seq: 1,
        tier: args.tier.clone(),
        permissions: PermissionSet::parse(["query:read"])?,
        expires_at: None,
        revoked: false,
        disabled: false,
        secrets: vec![SecretEntry { hash: key.hash(), not_after: None }],
        owner: Some(args.owner.clone()),
    };
    let signing_key = OriginSigningKey::generate("bench-signing-key".into(), &mut OsRng);
    // Version 1, active from the epoch: the edge signs with it at once.
    let sealed = signing_key.seal_for_edge(&SyncSecret::new(args.sync_secret.clone()), 1, 0, &mut OsRng)?;
    let jwk = signing_key.public_jwk();
    println!("{}", json!({"api_key": key.expose(), "record": record, "signing_key": sealed, "jwk": jwk}));
    Ok(())
}
