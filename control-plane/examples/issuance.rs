//! Load tool: how fast the control plane issues keys, and how long a rewrap of all of them takes.
//!
//! Drives the lifecycle service directly (no HTTP), `--concurrency` creations in flight, against the
//! database and KMS given. For PostgreSQL it works in a fresh schema and drops it after. Prints one JSON
//! line. `make bench` (P4, P6) runs it against SQLite and PostgreSQL, with the local KMS and with
//! the aws provider on the KMS API server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use keygate_control_plane::clock::SystemClock;
use keygate_control_plane::kms::aws::AwsKms;
use keygate_control_plane::kms::cache::{CacheLimits, CachingKms};
use keygate_control_plane::kms::local::LocalKms;
use keygate_control_plane::kms::{Kms, KmsContext, Purpose};
use keygate_control_plane::service::{Actor, NewKey, Service, Settings};
use keygate_control_plane::store::{SqlStore, Store};
use rand_core::OsRng;
use sqlx::postgres::PgConnectOptions;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KmsKind {
    Local,
    Aws,
}

#[derive(Debug, Parser)]
struct Args {
    /// `sqlite://...` or `postgres://...` (a fresh schema is made and dropped).
    #[arg(long, default_value = "sqlite://target/bench/issuance.db")]
    database_url: String,
    #[arg(long, value_enum, default_value = "local")]
    kms: KmsKind,
    /// KMS API endpoint for `--kms aws`.
    #[arg(long)]
    kms_endpoint: Option<String>,
    /// Keys to create.
    #[arg(long, default_value_t = 2_000)]
    keys: usize,
    /// Creations in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Also time a rewrap of every data key.
    #[arg(long)]
    rewrap: bool,
    /// Data-key cache: secrets per KMS data key (0: no cache, one data key per secret).
    #[arg(long, default_value_t = 0)]
    cache_uses: u64,
    /// Instead of issuing keys, time `--keys` bare GenerateDataKey calls (`--concurrency` in flight):
    /// the KMS provider's own ceiling, the baseline for issuance without a data-key cache.
    #[arg(long)]
    kms_only: bool,
}

async fn aws(endpoint: &str) -> (aws_sdk_kms::Client, String) {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(endpoint)
        .http_client(http)
        .build();
    let client = aws_sdk_kms::Client::from_conf(config);
    let key = client.create_key().send().await.unwrap().key_metadata().unwrap().arn().unwrap().to_owned();
    (client, key)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut schema = None;
    let store: Arc<dyn Store> = if args.database_url.starts_with("sqlite:") {
        let path = args.database_url.trim_start_matches("sqlite://");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
        Arc::new(SqlStore::<sqlx::Sqlite>::connect_sqlite(&args.database_url).await.unwrap())
    } else {
        let name = format!("kg_bench_{}", std::process::id());
        let admin = sqlx::PgPool::connect(&args.database_url).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&admin).await.unwrap();
        schema = Some((admin, name.clone()));
        let options = PgConnectOptions::from_str(&args.database_url).unwrap().options([("search_path", name.as_str())]);
        Arc::new(SqlStore::<sqlx::Postgres>::connect_postgres(options).await.unwrap())
    };
    store.migrate().await.unwrap();
    let kms: Arc<dyn Kms> = match args.kms {
        KmsKind::Local => Arc::new(LocalKms::from_master_key(&[42; 32], OsRng)),
        KmsKind::Aws => {
            let (client, key) = aws(args.kms_endpoint.as_deref().expect("--kms-endpoint")).await;
            Arc::new(AwsKms::from_client(client, key))
        }
    };
    let kms: Arc<dyn Kms> = if args.cache_uses > 0 {
        let limits = CacheLimits { max_uses: args.cache_uses, max_age_secs: 300 };
        Arc::new(CachingKms::new(kms, limits, Arc::new(SystemClock)))
    } else {
        kms
    };
    if args.kms_only {
        let started = Instant::now();
        futures_util::stream::iter(0..args.keys)
            .map(|_| {
                let kms = kms.clone();
                async move {
                    let id = keygate_shared::KeyId::new_v7(0, &mut OsRng);
                    let context = KmsContext { key_id: id, purpose: Purpose::ApiKeySecret, shared_id: None };
                    kms.generate_data_key(&context).await.unwrap();
                }
            })
            .buffer_unordered(args.concurrency)
            .collect::<Vec<()>>()
            .await;
        let calls_per_sec = (args.keys as f64 / started.elapsed().as_secs_f64()).round();
        println!("{}", serde_json::json!({"kms": kms.provider(), "calls": args.keys, "calls_per_sec": calls_per_sec}));
        return;
    }
    let service =
        Arc::new(Service::new(store.clone(), kms.clone(), Arc::new(SystemClock), Box::new(OsRng), Settings::default()));

    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures_util::stream::iter(0..args.keys)
        .map(|i| {
            let service = service.clone();
            async move {
                let t = Instant::now();
                let request = NewKey {
                    name: format!("bench {i}"),
                    tier: "default".into(),
                    permissions: vec!["query:read".into()],
                    ..NewKey::default()
                };
                service.create(&Actor::Cli, request).await.unwrap();
                t.elapsed()
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();

    let mut rewrap_secs = None;
    if args.rewrap {
        let target: Arc<dyn Kms> = match args.kms {
            KmsKind::Local => kms.clone(),
            KmsKind::Aws => {
                let (client, key) = aws(args.kms_endpoint.as_deref().unwrap()).await;
                Arc::new(AwsKms::from_client(client, key))
            }
        };
        let rewrapper =
            Service::new(store.clone(), target, Arc::new(SystemClock), Box::new(OsRng), Settings::default());
        let t = Instant::now();
        let count = rewrapper.rewrap(&Actor::Cli, &|_, _| {}).await.unwrap();
        assert_eq!(count as usize, args.keys);
        rewrap_secs = Some(t.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "database": store.dialect(), "kms": kms.provider(), "cache_uses": args.cache_uses,
            "keys": args.keys, "concurrency": args.concurrency,
            "keys_per_sec": (args.keys as f64 / elapsed).round(),
            "create_ms_p50": percentile(&latencies, 0.5), "create_ms_p99": percentile(&latencies, 0.99),
            "rewrap_secs": rewrap_secs,
        })
    );
    if let Some((admin, name)) = schema {
        sqlx::query(&format!("DROP SCHEMA {name} CASCADE")).execute(&admin).await.unwrap();
    }
}
