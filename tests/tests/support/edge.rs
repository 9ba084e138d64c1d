//! The worker in workerd, through `wrangler dev` with local KV in its own folder, and the ways the
//! tests talk to it: requests through the edge, signed pushes, and a look at its KV.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keygate_shared::sync::{SIGNATURE_HEADER, SYNC_PATH, TIMESTAMP_HEADER};
use keygate_shared::{KeyRecord, SyncPayload, SyncSecret};
use serde_json::Value;

use super::{free_port, http, root, tools, ORIGIN_SECRET, QUERY, SYNC_SECRET};

/// Builds the worker once per test run.
pub fn built_worker() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new("bash").arg(root().join("scripts/build-worker.sh")).status().unwrap();
            assert!(status.success(), "the worker did not build");
            root().join("edge-worker/build/index.js")
        })
        .clone()
}

/// The KV binding that holds the records (the worker's `RECORDS`).
const RECORDS_BINDING: &str = "KEYGATE_RECORDS";

pub struct Edge {
    child: Child,
    pub url: String,
    /// The edge's folder: `wrangler.log` (everything wrangler printed), `wrangler-logs/` (wrangler's
    /// own log file, when a log level was asked for) and `state/` (local KV).
    pub dir: PathBuf,
    tools: HashMap<String, String>,
    /// Whether the folder stays after the edge stops, for a test that reads it afterwards.
    keep_dir: bool,
    stopped: bool,
}

/// How to start an edge beyond the defaults.
#[derive(Default)]
pub struct EdgeOptions<'a> {
    /// Vars set (or overridden) on top of the repo's config.
    pub vars: &'a [(&'a str, &'a str)],
    /// The sync and origin secrets, instead of [`SYNC_SECRET`] and [`ORIGIN_SECRET`].
    pub secrets: Option<(&'a str, &'a str)>,
    /// `WRANGLER_LOG` (`debug` is the most verbose); wrangler's log file then goes to `wrangler-logs/`.
    pub log_level: Option<&'a str>,
    /// Run in this folder and leave it in place when the edge stops.
    pub dir: Option<&'a Path>,
    /// Listen on this port (one reserved earlier, for a part that must know the URL first).
    pub port: Option<u16>,
}

impl Edge {
    pub fn start(name: &str, origin: &str) -> Self {
        Self::start_with(name, origin, &[])
    }

    /// An edge with these vars set (or overridden) on top of the repo's config.
    pub fn start_with(name: &str, origin: &str, vars: &[(&str, &str)]) -> Self {
        Self::start_with_options(name, origin, &EdgeOptions { vars, ..EdgeOptions::default() })
    }

    /// An edge that reports usage to `control_plane` (its var `CONTROL_PLANE_URL`; without it, as every
    /// other test starts one, the edge counts nothing), with these vars too.
    pub fn start_reporting_usage(name: &str, origin: &str, control_plane: &str, vars: &[(&str, &str)]) -> Self {
        let vars: Vec<(&str, &str)> = vars.iter().copied().chain([("CONTROL_PLANE_URL", control_plane)]).collect();
        Self::start_with(name, origin, &vars)
    }

    pub fn start_with_options(name: &str, origin: &str, options: &EdgeOptions<'_>) -> Self {
        let entry = built_worker();
        let tools = tools();
        let dir = match options.dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::temp_dir().join(format!("keygate-e2e-edge-{name}-{}", std::process::id())),
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The repo's wrangler.toml, without its build step (the worker is built above) and with the tiers
        // the tests use.
        let config = std::fs::read_to_string(root().join("wrangler.toml"))
            .unwrap()
            .replace("main = \"edge-worker/build/index.js\"", &format!("main = \"{}\"", entry.display()))
            .replace("command = \"scripts/build-worker.sh\"", "")
            .replace("[build]", "")
            .replace(r#"TIERS = '{"default": 1000, "premium": 10000}'"#, r#"TIERS = '{"default": 1000, "tiny": 3}'"#);
        std::fs::write(dir.join("wrangler.toml"), config).unwrap();
        let (sync_secret, origin_secret) = options.secrets.unwrap_or((SYNC_SECRET, ORIGIN_SECRET));
        let log = std::fs::File::create(dir.join("wrangler.log")).unwrap();
        let port = options.port.unwrap_or_else(free_port);
        let mut command = Command::new(&tools["WRANGLER"]);
        command
            .args(["dev", "--config", "wrangler.toml", "--ip", "127.0.0.1", "--port", &port.to_string()])
            // Two edges at once must not fight over the default inspector port.
            .args(["--inspector-port", &free_port().to_string()])
            .args(["--persist-to", "state", "--var", &format!("ORIGIN_URL:{origin}")])
            .args(["--var", &format!("SYNC_SECRET:{sync_secret}"), "--var", &format!("ORIGIN_SECRET:{origin_secret}")])
            .args(options.vars.iter().flat_map(|(name, value)| ["--var".to_owned(), format!("{name}:{value}")]))
            .current_dir(&dir)
            .envs(tools.iter())
            .env("CI", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(level) = options.log_level {
            command.env("WRANGLER_LOG", level).env("WRANGLER_LOG_PATH", dir.join("wrangler-logs"));
        }
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start wrangler dev");
        let mut edge = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            tools,
            keep_dir: options.dir.is_some(),
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        // Up only once wrangler says so: a connection alone could reach another process on the port.
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !edge.log().contains("Ready on") {
            let exited = edge.child.try_wait().ok().flatten();
            assert!(exited.is_none(), "wrangler dev exited ({exited:?}): {}", edge.log());
            assert!(Instant::now() < deadline, "wrangler dev did not start: {}", edge.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        edge
    }

    /// Stops wrangler and workerd, so that their logs and KV files are complete.
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // wrangler runs workerd as a child: stop the whole group.
        // SIGKILL: wrangler dev does not exit on SIGTERM, and a test edge has nothing to save.
        let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("wrangler.log")).unwrap_or_default()
    }

    /// Runs `wrangler <args>` against this edge's config and local state; its stdout.
    fn wrangler(&self, args: &[&str]) -> String {
        let out = Command::new(&self.tools["WRANGLER"])
            .args(args)
            .args(["--binding", RECORDS_BINDING, "--local", "--persist-to", "state", "--config", "wrangler.toml"])
            .current_dir(&self.dir)
            .envs(self.tools.iter())
            .env("CI", "true")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "wrangler {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Every record in the edge's KV, by key id, as stored: read by wrangler from the folder
    /// `wrangler dev` persists local KV to, not through the worker.
    pub fn kv_records(&self) -> BTreeMap<String, String> {
        let listed = self.wrangler(&["kv", "key", "list"]);
        let listed = json_in(&listed, '[', ']');
        if listed.as_array().unwrap().is_empty() {
            return BTreeMap::new();
        }
        let names = self.dir.join("kv-names.json");
        std::fs::write(&names, listed.to_string()).unwrap();
        let got = self.wrangler(&["kv", "bulk", "get", names.to_str().unwrap()]);
        json_in(&got, '{', '}')
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, entry)| (name.clone(), entry["value"].as_str().unwrap_or("<none>").to_owned()))
            .collect()
    }
}

/// The JSON value that starts at an `open` and ends at the last `close` of a command's output (wrangler
/// may print lines around it).
fn json_in(output: &str, open: char, close: char) -> Value {
    let end = output.rfind(close).unwrap_or_else(|| panic!("no JSON in {output:?}"));
    output
        .match_indices(open)
        .find_map(|(start, _)| serde_json::from_str(&output[start..=end]).ok())
        .unwrap_or_else(|| panic!("no JSON in {output:?}"))
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A request through the edge: status, headers, body.
pub async fn through_edge(edge: &Edge, key: Option<&str>, body: &str) -> (u16, HashMap<String, String>, String) {
    through_edge_at(edge, "/graphql", key, body).await
}

pub async fn through_edge_at(
    edge: &Edge,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut request =
        http().post(format!("{}{path}", edge.url)).header("content-type", "application/json").body(body.to_owned());
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}\n{}", edge.log()));
    let status = response.status().as_u16();
    let headers =
        response.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    (status, headers, response.text().await.unwrap())
}

/// Waits until `key` gets `status` at the edge; returns how long that took.
pub async fn until_status(edge: &Edge, key: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if through_edge(edge, Some(key), QUERY).await.0 == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "the edge did not answer {status} within {within:?}: {}", edge.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A push as it goes on the wire: body, timestamp header, signature header.
#[derive(Debug, Clone)]
pub struct SignedPush {
    pub body: Vec<u8>,
    pub timestamp: String,
    pub signature: String,
}

impl SignedPush {
    /// `records` signed at `signed_at` with `secret`, as the control plane would.
    pub fn new(records: Vec<KeyRecord>, signed_at: i64, secret: &str) -> Self {
        Self::of_body(serde_json::to_vec(&SyncPayload { records, signing_keys: vec![] }).unwrap(), signed_at, secret)
    }

    /// Any body, signed.
    pub fn of_body(body: Vec<u8>, signed_at: i64, secret: &str) -> Self {
        let signature = SyncSecret::new(secret).sign(signed_at, &body);
        Self { body, timestamp: signed_at.to_string(), signature }
    }

    /// Sends it to the edge's sync endpoint; status and body.
    pub async fn send(&self, edge: &Edge) -> (u16, String) {
        send_push(edge, Some(&self.timestamp), Some(&self.signature), self.body.clone()).await
    }
}

/// A POST to the sync endpoint with exactly these headers and body.
pub async fn send_push(edge: &Edge, timestamp: Option<&str>, signature: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let mut request = http().post(format!("{}{SYNC_PATH}", edge.url)).body(body);
    if let Some(timestamp) = timestamp {
        request = request.header(TIMESTAMP_HEADER, timestamp);
    }
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}\n{}", edge.log()));
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A push signed as the control plane would, straight to the edge.
pub async fn push(edge: &Edge, records: Vec<KeyRecord>, signed_at: i64, secret: &str) -> (u16, String) {
    SignedPush::new(records, signed_at, secret).send(edge).await
}
