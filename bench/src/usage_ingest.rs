//! P11: the control plane's usage ingest against the flushes of a busy edge. The edge modelled serves
//! `keys` active keys from `isolates` isolates, each flushing every `flush_secs` seconds one batch with
//! a row per key (each with `operations` operation names): `isolates / flush_secs` batches a second of
//! `keys` rows each is the rate the control plane must keep up with. An edge at 10,000 req/s with
//! 20 isolates gives each isolate 5,000 requests per 10 s flush, so every one of 1,000 active keys
//! has a row in every flush.
//!
//! `--mode capacity` posts signed batches back to back on `connections` connections: the most the
//! control plane ingests. `--mode paced` posts them at the required rate (open loop), to run beside
//! the key-check load (P8) and see what the ingest costs it. The keys are made through the admin API
//! once and their ids kept in `--key-ids-file`. Every batch is for the current minute, so batches
//! from all "isolates" add to the same rows, as they do at a real edge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, StreamExt, TryStreamExt};
use keygate_shared::sync::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use keygate_shared::usage::{self, OperationCount, UsageBatch, UsageRow, USAGE_PATH};
use keygate_shared::{KeyId, SyncSecret};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Back to back on every connection.
    Capacity,
    /// At the required rate.
    Paced,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control plane's base URL.
    #[arg(long)]
    control_url: String,
    /// File holding an admin key with `admin:keys:write` (to make the keys).
    #[arg(long)]
    admin_key_file: PathBuf,
    /// The control plane's sync secret.
    #[arg(long, env = "KEYGATE_SYNC_SECRET", hide_env_values = true)]
    sync_secret: String,
    /// Where the keys' ids are kept between runs (made when the file is absent).
    #[arg(long)]
    key_ids_file: PathBuf,
    /// Active keys: one row each per batch.
    #[arg(long, default_value_t = 1_000)]
    keys: usize,
    /// Isolates flushing.
    #[arg(long, default_value_t = 20)]
    isolates: u32,
    /// Seconds between one isolate's flushes.
    #[arg(long, default_value_t = 10.0)]
    flush_secs: f64,
    /// Operation names per row.
    #[arg(long, default_value_t = 3)]
    operations: usize,
    /// `capacity` or `paced`.
    #[arg(long, value_enum, default_value = "capacity")]
    mode: Mode,
    /// Connections posting at once (capacity mode).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Label copied into the output.
    #[arg(long, default_value = "usage")]
    label: String,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The keys' ids: read from the file, or made through the admin API and written there.
async fn key_ids(args: &Args, http: &reqwest::Client) -> Result<Vec<KeyId>, Error> {
    if let Ok(text) = std::fs::read_to_string(&args.key_ids_file) {
        let ids: Vec<KeyId> = text.lines().map(str::parse).collect::<Result<_, _>>().map_err(|_| "a bad key id")?;
        if ids.len() >= args.keys {
            return Ok(ids.into_iter().take(args.keys).collect());
        }
    }
    let admin_key = std::fs::read_to_string(&args.admin_key_file)?.trim().to_owned();
    let url = format!("{}/admin/api-keys", args.control_url);
    let ids: Vec<KeyId> = stream::iter(0..args.keys)
        .map(|n| {
            let request = http
                .post(&url)
                .bearer_auth(&admin_key)
                .json(&json!({"name": format!("usage bench {n}"), "permissions": ["query:read"]}));
            async move {
                let answer: Value = request.send().await?.error_for_status()?.json().await?;
                let id = answer["api_key_id"].as_str().ok_or("no api_key_id")?;
                id.parse::<KeyId>().map_err(|_| Error::from("a bad api_key_id"))
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    std::fs::write(&args.key_ids_file, text)?;
    Ok(ids)
}

/// One isolate's flush for `minute`, serialized with a placeholder batch id.
fn template(ids: &[KeyId], minute: i64, operations: usize) -> String {
    const NAMES: [&str; 5] = ["GetUser", "ListOrders", "(anonymous)", "UpdateCart", "Search"];
    let rows = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let admitted = 3 + (n % 5) as u64;
            UsageRow {
                key_id: *id,
                minute,
                admitted,
                forbidden: (n % 3 == 0).into(),
                rate_limited: (n % 7 == 0).into(),
                refused: (n % 11 == 0).into(),
                operations: (0..operations.min(NAMES.len()))
                    .map(|i| OperationCount {
                        name: NAMES[(n + i) % NAMES.len()].into(),
                        count: admitted / operations as u64 + u64::from(i == 0) * (admitted % operations as u64),
                    })
                    .collect(),
            }
        })
        .collect();
    let batch = UsageBatch { batch_id: "0".repeat(usage::BATCH_ID_LEN), rows, dropped: 0 };
    serde_json::to_string(&batch).unwrap_or_default()
}

struct Poster {
    http: reqwest::Client,
    url: String,
    secret: SyncSecret,
    ids: Vec<KeyId>,
    operations: usize,
    /// The current minute's batch, serialized once.
    cached: std::sync::Mutex<(i64, Arc<String>)>,
}

impl Poster {
    fn body(&self) -> String {
        let minute = unix_now() - unix_now().rem_euclid(60);
        let template = {
            let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if cached.0 != minute {
                *cached = (minute, Arc::new(template(&self.ids, minute, self.operations)));
            }
            cached.1.clone()
        };
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        template.replacen(&"0".repeat(usage::BATCH_ID_LEN), &id, 1)
    }

    /// Posts one fresh batch; its latency.
    async fn post(&self) -> Result<Duration, Error> {
        let body = self.body();
        let now = unix_now();
        let signature = usage::sign(&self.secret, now, body.as_bytes());
        let started = Instant::now();
        let response = self
            .http
            .post(&self.url)
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        if !status.is_success() || answer["applied"] != true {
            return Err(format!("{status} {answer}").into());
        }
        Ok(started.elapsed())
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
}

impl Tally {
    fn add(&mut self, outcome: Result<Duration, Error>) {
        match outcome {
            Ok(latency) => self.latencies.push(latency),
            Err(error) => {
                if self.errors == 0 {
                    eprintln!("usage bench: {error}");
                }
                self.errors += 1;
            }
        }
    }
}

pub async fn run(args: Args) -> Result<(), Error> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let ids = key_ids(&args, &http).await?;
    let poster = Arc::new(Poster {
        http,
        url: format!("{}{USAGE_PATH}", args.control_url),
        secret: SyncSecret::new(args.sync_secret.as_bytes()),
        ids,
        operations: args.operations,
        cached: std::sync::Mutex::new((i64::MIN, Arc::new(String::new()))),
    });
    let required_batches = f64::from(args.isolates) / args.flush_secs;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let mut tally = Tally::default();
    match args.mode {
        Mode::Capacity => {
            let tasks: Vec<_> = (0..args.connections.max(1))
                .map(|_| {
                    let poster = poster.clone();
                    tokio::spawn(async move {
                        let mut tally = Tally::default();
                        while Instant::now() < until {
                            tally.add(poster.post().await);
                        }
                        tally
                    })
                })
                .collect();
            for task in tasks {
                let part = task.await?;
                tally.latencies.extend(part.latencies);
                tally.errors += part.errors;
            }
        }
        Mode::Paced => {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / required_batches));
            let mut sent = Vec::new();
            while Instant::now() < until {
                ticks.tick().await;
                let poster = poster.clone();
                sent.push(tokio::spawn(async move { poster.post().await }));
            }
            for task in sent {
                tally.add(task.await?);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = tally.latencies;
    latencies.sort();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let batches = latencies.len() as f64;
    let rows_per_batch = args.keys as f64;
    println!(
        "{}",
        json!({
            "label": args.label,
            "mode": match args.mode { Mode::Capacity => "capacity", Mode::Paced => "paced" },
            "keys": args.keys, "isolates": args.isolates, "flush_secs": args.flush_secs,
            "operations": args.operations, "connections": args.connections, "seconds": elapsed,
            "required_batches_per_s": required_batches,
            "required_rows_per_s": required_batches * rows_per_batch,
            "batches": batches, "errors": tally.errors,
            "batches_per_s": batches / elapsed,
            "rows_per_s": batches * rows_per_batch / elapsed,
            "headroom": batches / elapsed / required_batches,
            "p50_ms": quantile(0.5), "p99_ms": quantile(0.99), "max_ms": quantile(1.0),
        })
    );
    Ok(())
}
