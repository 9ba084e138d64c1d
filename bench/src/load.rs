//! A closed-loop load generator: `connections` HTTP/1.1 keep-alive connections, each sending its next
//! request when the last answer is read, for a fixed time after a warm-up. Latency goes into an HDR
//! histogram (microseconds, 3 significant digits); the result is one JSON line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target, `http://host:port/path`.
    #[arg(long)]
    url: String,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// A header, `Name: value`; repeat for more.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Request body.
    #[arg(long, default_value = "")]
    body: String,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Label copied into the output.
    #[arg(long, default_value = "load")]
    label: String,
}

/// What one connection saw while measuring.
struct Tally {
    latency: hdrhistogram::Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

struct Target {
    authority: String,
    path: String,
    method: hyper::Method,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    body: Bytes,
}

impl Target {
    fn parse(args: &Args) -> Result<Self, Error> {
        let uri: hyper::Uri = args.url.parse()?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// URLs (loopback load)".into());
        }
        let authority = uri.authority().ok_or("the URL has no host")?.to_string();
        let path = uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.to_string());
        let mut headers = Vec::new();
        for header in &args.headers {
            let (name, value) = header.split_once(':').ok_or("a header is `Name: value`")?;
            headers.push((name.trim().parse()?, value.trim().parse()?));
        }
        Ok(Self {
            authority,
            path,
            method: args.method.parse()?,
            headers,
            body: Bytes::from(args.body.clone().into_bytes()),
        })
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, Error> {
        let mut builder =
            Request::builder().method(self.method.clone()).uri(&self.path).header("host", &self.authority);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        Ok(builder.body(Full::new(self.body.clone()))?)
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: &Target) -> Result<Sender, Error> {
    let stream = tokio::net::TcpStream::connect(&target.authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request and its whole answer; the status, or an error.
async fn exchange(sender: &mut Sender, target: &Target) -> Result<u16, Error> {
    sender.ready().await?;
    let response = sender.send_request(target.request()?).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

async fn drive(target: &Target, measure_from: Instant, until: Instant) -> Result<Tally, Error> {
    let mut tally = Tally { latency: hdrhistogram::Histogram::new(3)?, statuses: BTreeMap::new(), errors: 0 };
    let mut sender = None;
    loop {
        let started = Instant::now();
        if started >= until {
            return Ok(tally);
        }
        let outcome = match sender.as_mut() {
            Some(live) => exchange(live, target).await,
            None => match connect(target).await {
                Ok(fresh) => exchange(sender.insert(fresh), target).await,
                Err(error) => Err(error),
            },
        };
        if started < measure_from {
            if outcome.is_err() {
                sender = None;
            }
            continue;
        }
        match outcome {
            Ok(status) => {
                tally.latency.record(started.elapsed().as_micros().try_into().unwrap_or(u64::MAX))?;
                *tally.statuses.entry(status).or_default() += 1;
            }
            Err(_) => {
                tally.errors += 1;
                sender = None;
                // A refused connection must not spin the loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

pub async fn run(args: Args) -> Result<(), Error> {
    let target = std::sync::Arc::new(Target::parse(&args)?);
    let measure_from = Instant::now() + Duration::from_secs_f64(args.warmup);
    let until = measure_from + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move { drive(&target, measure_from, until).await })
        })
        .collect();
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut statuses = BTreeMap::<u16, u64>::new();
    let mut errors = 0;
    for task in tasks {
        let tally = task.await??;
        latency.add(&tally.latency)?;
        for (status, count) in tally.statuses {
            *statuses.entry(status).or_default() += count;
        }
        errors += tally.errors;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "label": args.label, "connections": args.connections, "seconds": args.seconds,
            "requests": latency.len(), "rps": (latency.len() as f64 / args.seconds).round(),
            "mean_ms": latency.mean().round() / 1000.0,
            "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": latency.max() as f64 / 1000.0,
            "statuses": statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "errors": errors,
        })
    );
    Ok(())
}
