//! P3: a key with a bad checksum must cost no record read. Runs the edge's request check (the same
//! function the worker runs) over many such keys with a record source that counts its reads.

use std::cell::Cell;
use std::time::Instant;

use keygate_edge::check::{check, Incoming, NoDocuments, RecordSource, Refused, StoreFault};
use keygate_edge::ratelimit::{Decision, Tiers};
use keygate_shared::KeyRecord;
use serde_json::json;

use crate::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keys to try.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
}

/// Counts reads; holds nothing.
#[derive(Default)]
struct CountingRecords {
    reads: Cell<u64>,
}

impl RecordSource for CountingRecords {
    async fn record(&self, _key_id: &str) -> Result<Option<KeyRecord>, StoreFault> {
        self.reads.set(self.reads.get() + 1);
        Ok(None)
    }
}

/// A well-shaped key whose last checksum character is changed: it fails the checksum only.
fn garbage_key(n: u32) -> Result<String, Error> {
    let id = keygate_shared::KeyId::from_u128(u128::from(n) << 64 | 0x7000_8000_0000_0000);
    let secret = keygate_shared::KeySecret::from_bytes([n as u8; 32]);
    let key = keygate_shared::ApiKey::assemble(
        &keygate_shared::Prefix::new("kg")?,
        &keygate_shared::Region::new("us")?,
        id,
        &secret,
    );
    let mut text = key.expose().to_owned();
    let last = text.pop().ok_or("empty key")?;
    text.push(if last == 'a' { 'b' } else { 'a' });
    Ok(text)
}

pub fn run(args: &Args) -> Result<(), Error> {
    let keys: Vec<String> = (0..args.keys).map(garbage_key).collect::<Result<_, _>>()?;
    let records = CountingRecords::default();
    let tiers = Tiers::default();
    let body = br#"{"query":"{ hello }"}"#;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let started = Instant::now();
    let mut refused = 0u64;
    for key in &keys {
        let incoming = Incoming { method: "POST", api_key: Some(key), query: &[], body };
        let admit = |_, limit, _| Decision::Allowed { limit, remaining: limit };
        if runtime.block_on(check(&incoming, &records, &NoDocuments, admit, &tiers, 1_800_000_000))
            == Err(Refused::BadKey)
        {
            refused += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{}",
        json!({
            "keys": args.keys, "refused_401": refused, "record_reads": records.reads.get(),
            "ns_per_check_with_runtime": (elapsed.as_nanos() as f64 / f64::from(args.keys.max(1))).round(),
        })
    );
    Ok(())
}
