//! The node GraphQL parts in `tests/graphql-node/`, installed by `scripts/graphql-node.sh`: a real origin
//! ([`NodeOrigin`]: graphql-yoga with APQ over HTTP, graphql-ws and the legacy subscriptions-transport-ws
//! over WebSockets, logging what reached it) and real WebSocket clients ([`NodeClient`]), one scenario
//! per `node client.mjs` run, reporting JSON events line by line.
//!
//! The waiting here blocks its thread. Inside a multi-thread runtime (the end-to-end tests use two
//! workers) it goes through `block_in_place`, so the control plane and replicator tasks keep running.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{http, script_exports};

/// The folder `scripts/graphql-node.sh` installed the packages and copied the scripts into, from its
/// `KEYGATE_GRAPHQL_NODE`; installs on the first call of a test process.
pub fn graphql_node() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exports = script_exports("graphql-node.sh");
        let dir = exports.get("KEYGATE_GRAPHQL_NODE").expect("scripts/graphql-node.sh printed no KEYGATE_GRAPHQL_NODE");
        PathBuf::from(dir)
    })
}

/// Runs `wait`, letting a multi-thread runtime move its other tasks off this thread meanwhile.
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// `node <script> <args>` from the install folder (where its imports resolve), stdout and stderr piped.
fn node(script: &str, args: &[&str]) -> Child {
    Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(graphql_node())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start node {script}: {e}"))
}

/// Collects everything a child prints on this stream, on a thread of its own.
fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut text = into.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `origin.mjs`: graphql-yoga at `/graphql` (POST, GET, batching, APQ with hash checks) and WebSockets
/// on the same path (`graphql-transport-ws` through graphql-ws, legacy `graphql-ws` through
/// subscriptions-transport-ws), with `hello`, `counter`, `bump` and `ticks(count, intervalMs)`.
pub struct NodeOrigin {
    /// `http://127.0.0.1:PORT`; GraphQL is at `/graphql`, over HTTP and WebSocket.
    pub url: String,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl NodeOrigin {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With more arguments for origin.mjs, e.g. `["--legacy-keepalive-ms", "200"]` (the legacy
    /// server then sends `ka` after the ack and every 200 ms).
    pub fn start_with(args: &[&str]) -> Self {
        let started = Instant::now();
        // Port 0: the origin binds a free port itself and says which, so no other process can take it
        // between our choosing and its binding.
        let mut child = node("origin.mjs", &[&["0"][..], args].concat());
        let output = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().unwrap(), output.clone());
        let (port_tx, port_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let rest = output.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            for line in lines.by_ref() {
                if let Some(port) = line.strip_prefix("listening ").and_then(|p| p.trim().parse::<u16>().ok()) {
                    let _ = port_tx.send(port);
                    break;
                }
                rest.lock().unwrap().push_str(&format!("{line}\n"));
            }
            // Keep draining, so the origin never blocks on a full pipe.
            for line in lines {
                rest.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let port = blocking(|| port_rx.recv_timeout(Duration::from_secs(15)));
        let port = match port {
            Ok(port) => port,
            Err(e) => {
                stop(&mut child);
                panic!("origin.mjs did not listen within 15 s ({e}):\n{}", output.lock().unwrap());
            }
        };
        eprintln!("graphql-node origin: up at 127.0.0.1:{port} in {:?}", started.elapsed());
        Self { url: format!("http://127.0.0.1:{port}"), child, output }
    }

    /// `ws://127.0.0.1:PORT/graphql`, to reach the origin directly.
    pub fn ws_url(&self) -> String {
        format!("{}/graphql", self.url.replacen("http://", "ws://", 1))
    }

    /// `GET /_origin/log`: `{"upgrades": [{"protocol", "url", "headers": {lowercase name: value}}],
    /// "inits": [connection_init payload or null], "operations": [{"transport": "http"|"ws",
    /// "protocol", "type", "name"}], "counter": n, "closes": [{"protocol", "code", "reason"}]}`.
    pub async fn log(&self) -> Value {
        let response = http().get(format!("{}/_origin/log", self.url)).send().await.unwrap();
        assert!(response.status().is_success(), "GET /_origin/log: {}", response.status());
        response.json().await.unwrap()
    }

    /// `POST /_origin/reset`: empties the log and the APQ store, sets the counter to 0.
    pub async fn reset(&self) {
        let response = http().post(format!("{}/_origin/reset", self.url)).send().await.unwrap();
        assert!(response.status().is_success(), "POST /_origin/reset: {}", response.status());
    }

    /// Closes every WebSocket the origin holds with this code and reason; how many there were.
    pub async fn close_sockets(&self, code: u16, reason: &str) -> u64 {
        let response = http()
            .post(format!("{}/_origin/close-sockets", self.url))
            .query(&[("code", code.to_string()), ("reason", reason.to_owned())])
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "POST /_origin/close-sockets: {}", response.status());
        response.json::<Value>().await.unwrap()["closed"].as_u64().unwrap()
    }

    /// SIGTERM, and waits (at most 5 s) for the origin to exit: it closes every socket with 1001 first.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(5);
        blocking(|| {
            while self.child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "origin.mjs still runs 5 s after SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }

    /// SIGKILL: its sockets drop without a close frame (peers see 1006).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// What the origin printed so far (stderr, and stdout besides the `listening` line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for NodeOrigin {
    fn drop(&mut self) {
        stop(&mut self.child);
        if std::thread::panicking() {
            eprintln!("graphql-node origin output:\n{}", self.output());
        }
    }
}

/// One `client.mjs` scenario. The spec: `{"url": "ws://…/graphql", "protocol": "graphql-transport-ws" |
/// "graphql-ws", "headers": {…}?, "connectionParams": {…}?, "operations": [{"id", "query",
/// "variables"?, "operationName"?, "take"?}], "hold": bool?, "timeoutMs": n?}`. Events, each with
/// `t` (ms since the client started): `opened`, `rejected` {status, headers}, `socket_error`
/// {message}, `connected` {payload?}, `connection_error` {payload}, `ka`, `unexpected_message` {data},
/// `next` {id, data, errors?}, `error` {id, errors}, `complete` {id, by: "server"|"client"}, `closed`
/// {code, reason}, `done`, `timeout`; a line that is not JSON arrives as `unparsed` {line}. See
/// `tests/graphql-node/client.mjs`.
pub struct NodeClient {
    child: Child,
    events: Receiver<Value>,
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    timeout: Duration,
}

impl NodeClient {
    pub fn start(spec: &Value) -> NodeClient {
        let mut child = node("client.mjs", &[&spec.to_string()]);
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().unwrap(), stderr.clone());
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line).unwrap_or_else(|_| json!({"event": "unparsed", "line": line}));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        // The client's own limit, plus node's start-up.
        let timeout = Duration::from_millis(spec["timeoutMs"].as_u64().unwrap_or(10_000)) + Duration::from_secs(15);
        NodeClient { child, events, seen: Vec::new(), stderr, timeout }
    }

    /// The next event, or None when none came within `timeout` or the client has exited.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        let event = blocking(|| self.events.recv_timeout(timeout)).ok()?;
        self.seen.push(event.clone());
        Some(event)
    }

    /// The first event named `event`, skipping others, within `timeout` in all.
    pub fn wait_for(&mut self, event: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let next = self.next_event(left)?;
            if next["event"] == event {
                return Some(next);
            }
        }
    }

    /// Every event read so far (by `next_event` and `wait_for`, the skipped ones too).
    pub fn events(&self) -> &[Value] {
        &self.seen
    }

    /// What the client printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads the rest of the events until the client exits; panics if it fails (a bad spec) or
    /// outlives its own timeout by 15 s.
    pub fn finish(mut self) -> Vec<Value> {
        let deadline = Instant::now() + self.timeout;
        blocking(|| loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => self.seen.push(event),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "client.mjs still runs after {:?}; events: {:?}\n{}",
                    self.timeout,
                    self.seen,
                    self.stderr.lock().unwrap()
                ),
            }
        });
        let status = blocking(|| self.child.wait()).unwrap();
        assert!(status.success(), "client.mjs failed ({status}); events: {:?}\n{}", self.seen, self.stderr());
        std::mem::take(&mut self.seen)
    }

    /// Runs a scenario to its end: all its events.
    pub fn run(spec: &Value) -> Vec<Value> {
        Self::start(spec).finish()
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
