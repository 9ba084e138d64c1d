//! P5: how long a revocation takes to reach the edge. For each of `count` keys: create it through the
//! admin API, wait until the edge admits it, then revoke it and poll the edge until it answers 401. The
//! time from sending the revoke call to the first 401 is the propagation time, to within the poll
//! interval.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control plane's base URL.
    #[arg(long)]
    admin_url: String,
    /// File holding an admin key with `admin:keys:write`.
    #[arg(long)]
    admin_key_file: std::path::PathBuf,
    /// The edge's GraphQL URL.
    #[arg(long)]
    edge_url: String,
    /// Revocations to time.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Milliseconds between polls of the edge.
    #[arg(long, default_value_t = 2)]
    poll_ms: u64,
    /// Give up on one key after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

struct Probe {
    http: reqwest::Client,
    args: Args,
    admin_key: String,
}

impl Probe {
    async fn admin(&self, path: &str, body: Value) -> Result<Value, Error> {
        let response = self
            .http
            .post(format!("{}{path}", self.args.admin_url))
            .bearer_auth(&self.admin_key)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        if !status.is_success() {
            return Err(format!("{path}: {status} {answer}").into());
        }
        Ok(answer)
    }

    async fn edge_status(&self, key: &str) -> Result<u16, Error> {
        let response = self
            .http
            .post(&self.args.edge_url)
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(r#"{"query":"{ hello }"}"#)
            .send()
            .await?;
        let status = response.status().as_u16();
        response.bytes().await?;
        Ok(status)
    }

    /// Polls the edge until `done(status)`; the time it took.
    async fn until(&self, key: &str, done: impl Fn(u16) -> bool) -> Result<Duration, Error> {
        let started = Instant::now();
        loop {
            if done(self.edge_status(key).await?) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(self.args.timeout_secs) {
                return Err("the edge never changed its answer".into());
            }
            tokio::time::sleep(Duration::from_millis(self.args.poll_ms)).await;
        }
    }
}

pub async fn run(args: Args) -> Result<(), Error> {
    let admin_key = std::fs::read_to_string(&args.admin_key_file)?.trim().to_owned();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let probe = Probe { http, args, admin_key };
    let mut times = Vec::with_capacity(probe.args.count);
    for n in 0..probe.args.count {
        let created = probe
            .admin("/admin/api-keys", json!({"name": format!("propagation {n}"), "permissions": ["query:read"]}))
            .await?;
        let key = created["api_key"].as_str().ok_or("no api_key in the answer")?.to_owned();
        let id = created["api_key_id"].as_str().ok_or("no api_key_id in the answer")?.to_owned();
        probe.until(&key, |status| status == 200).await?;
        let started = Instant::now();
        probe.admin(&format!("/admin/api-keys/{id}/revoke"), json!({"reason": "propagation benchmark"})).await?;
        probe.until(&key, |status| status == 401).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times.get(((times.len().saturating_sub(1)) as f64 * q).round() as usize).copied();
    println!(
        "{}",
        json!({
            "revocations": times.len(), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "max_ms": times.last(), "min_ms": times.first(),
        })
    );
    Ok(())
}
