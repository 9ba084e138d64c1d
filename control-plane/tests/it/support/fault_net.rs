//! Network fault injectors for KMS: a black hole that accepts connections and never answers, and a
//! proxy in front of the KMS API server that can forward, refuse or hang. Both exist because a real
//! server cannot be told to hang, and a stopped moto server forgets its keys (it keeps them in memory).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A KMS client for `endpoint` with static test credentials and the given timeouts (the product's
/// `AwsKms::connect` sets its own; tests pass shorter ones to stay fast).
pub fn kms_client(endpoint: &str, connect: Duration, attempt: Duration, operation: Duration) -> aws_sdk_kms::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(connect)
        .operation_attempt_timeout(attempt)
        .operation_timeout(operation)
        .build();
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "keygate-tests"))
        .endpoint_url(endpoint)
        .http_client(http)
        .timeout_config(timeouts)
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

/// Fault injector: a TCP listener that accepts every connection, reads nothing, answers nothing, and
/// keeps the connection open — a KMS that hangs.
pub struct BlackHole {
    pub endpoint: String,
    task: JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            // Held, not dropped: a closed connection would be a different fault (a reset, at once).
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self { endpoint, task }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay bytes both ways to the upstream server.
    Forward,
    /// Nothing listens on the port: connecting is refused, as with a stopped server.
    Refuse,
    /// Accept and never answer, as with a hung server.
    Hang,
}

/// Fault injector: a TCP proxy in front of a server, switchable between [`Mode`]s. A switch cuts every
/// open connection, as a crashing server would; the upstream server (and its state) lives on.
pub struct FaultProxy {
    pub endpoint: String,
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// A forwarding proxy on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Forward);
        let acceptor = tokio::spawn(accept(listener, upstream, mode.subscribe()));
        Self { endpoint: format!("http://{addr}"), addr, upstream, mode, acceptor: Mutex::new(Some(acceptor)) }
    }

    /// Switches mode; when this returns, new connections see the new mode and old ones are cut.
    pub async fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        let running = self.acceptor.lock().unwrap().take();
        if let Some(task) = running {
            task.abort();
            let _ = task.await; // the listener is closed once the task is gone
        }
        if mode != Mode::Refuse {
            // Same port again (mio sets SO_REUSEADDR), so clients keep their endpoint.
            let listener = TcpListener::bind(self.addr).await.expect("rebind the proxy's port");
            let task = tokio::spawn(accept(listener, self.upstream, self.mode.subscribe()));
            *self.acceptor.lock().unwrap() = Some(task);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(task) = self.acceptor.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(relay(client, upstream, mode.clone()));
    }
}

/// One client connection, handled per the mode it was accepted in until the mode changes.
async fn relay(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let accepted_in = *mode.borrow_and_update();
    match accepted_in {
        Mode::Forward => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = mode.changed() => {}
            }
        }
        Mode::Hang | Mode::Refuse => {
            let _ = mode.changed().await;
        }
    }
}
