//! Secret hygiene over a whole end-to-end run: the real `keygate` binary (`serve` at `KEYGATE_LOG=trace`,
//! SQLite, the local KMS with a known master key, replicating) and the CLI, the worker in workerd
//! (`wrangler dev` at `WRANGLER_LOG=debug`, local KV) and a GraphQL origin go through a full key
//! lifecycle. Then no log line, no CLI output but the one meant to show a key, no byte of the SQLite
//! files and no byte of the edge's KV folder may hold an API key, a secret part, the sync or origin
//! secret, or the master key in any usual encoding.
//!
//! Needs the worker toolchain: `scripts/tools.sh` installs it (make test runs it first).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use support::edge::{through_edge_at, until_status, Edge, EdgeOptions};
use support::origin::start_origin;
use support::{free_port, http, keygate_binary, MUTATION, QUERY};

/// Characters in a key's secret segment (the 49-character last part is secret + 6 checksum).
const SECRET_LEN: usize = 43;

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    OsRng.fill_bytes(&mut raw);
    hex_lower(&raw)
}

fn hex_lower(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Standard base64 with padding; `url` switches to the URL-safe alphabet.
fn base64(bytes: &[u8], url: bool) -> String {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use base64::Engine as _;
    if url {
        URL_SAFE.encode(bytes)
    } else {
        STANDARD.encode(bytes)
    }
}

/// The secret segment of a key: the first 43 characters of its last `_`-separated part.
fn secret_part(key: &str) -> &str {
    let (_, last) = key.rsplit_once('_').unwrap();
    assert_eq!(last.len(), SECRET_LEN + 6, "not a v1 key: {key}");
    &last[..SECRET_LEN]
}

/// The key id part of a key (public).
fn key_id_of(key: &str) -> &str {
    let (rest, _) = key.rsplit_once('_').unwrap();
    rest.rsplit_once('_').unwrap().1
}

/// `text` without ANSI colour sequences (tracing colours its output even into a file), so that a
/// value split by one would still be found.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Something that must never be written where it is looked for: a name for the report, and its forms.
struct Secret {
    what: String,
    forms: Vec<Vec<u8>>,
}

/// `keygate serve`, stopped with SIGTERM (or killed if the test fails first).
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-s", "TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "keygate serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One CLI run's output, and whether its stdout is meant to show a key.
struct CliRun {
    args: String,
    stdout: String,
    stderr: String,
    stdout_shows_key: bool,
}

/// The binary, its environment, and every CLI output so far.
struct Keygate {
    binary: PathBuf,
    env: Vec<(String, String)>,
    runs: Vec<CliRun>,
}

impl Keygate {
    /// Runs `keygate <args>` to completion; its stdout, after checking it succeeded.
    fn run(&mut self, args: &[&str], stdin: Option<&str>, stdout_shows_key: bool) -> String {
        let mut child = Command::new(&self.binary)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let run = CliRun {
            args: args.join(" "),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout_shows_key,
        };
        assert!(out.status.success(), "keygate {}: {}\n{}", run.args, run.stdout, run.stderr);
        let stdout = run.stdout.clone();
        self.runs.push(run);
        stdout
    }

    /// The binary with the run's configuration: SQLite and the local KMS in `dir`, logging at trace,
    /// replicating to `edge` (its URL and the sync secret) if given.
    fn new(dir: &Path, edge: Option<(&str, &str)>) -> Self {
        let mut env = vec![
            ("KEYGATE_LOG".to_owned(), "trace".to_owned()),
            ("KEYGATE_DATABASE_URL".to_owned(), format!("sqlite://{}", dir.join("keygate.db").display())),
            ("KEYGATE_KMS".to_owned(), "local".to_owned()),
            ("KEYGATE_KMS_MASTER_KEY_FILE".to_owned(), dir.join("master.key").display().to_string()),
        ];
        if let Some((url, sync_secret)) = edge {
            env.push(("KEYGATE_EDGE_URL".to_owned(), url.to_owned()));
            env.push(("KEYGATE_SYNC_SECRET".to_owned(), sync_secret.to_owned()));
        }
        Self { binary: keygate_binary(), env, runs: Vec::new() }
    }

    /// `keygate serve` on a free port, stdout and stderr to `log`, once it is ready.
    async fn serve(&self, log: &Path) -> Server {
        let listen = format!("127.0.0.1:{}", free_port());
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(&self.binary)
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("KEYGATE_LISTEN", &listen)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let server = Server { child, url: format!("http://{listen}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = http().get(format!("{}/readyz", server.url)).send().await {
                if response.status().is_success() {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "keygate serve did not start: {}",
                std::fs::read_to_string(log).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A request that must fail: the status, method, path, key and JSON body.
type FailingRequest<'a> = (u16, &'static str, String, Option<&'a str>, Option<Value>);

/// A request to the admin API with `key`: status and JSON body (`Null` if it has none).
async fn admin(server: &Server, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request =
        http().request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", server.url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Creates a key through the API; its text and id.
async fn create(server: &Server, admin_key: &str, body: Value) -> (String, String) {
    let (status, created) = admin(server, "POST", "/admin/api-keys", Some(admin_key), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    (created["api_key"].as_str().unwrap().to_owned(), created["api_key_id"].as_str().unwrap().to_owned())
}

/// Rotates a key through the API with this grace period; the new key text.
async fn rotate(server: &Server, admin_key: &str, id: &str, grace_secs: u64) -> String {
    let path = format!("/admin/api-keys/{id}/rotate");
    let (status, rotated) =
        admin(server, "POST", &path, Some(admin_key), Some(json!({"grace_period_secs": grace_secs}))).await;
    assert_eq!(status, 200, "{rotated}");
    rotated["api_key"].as_str().unwrap().to_owned()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|window| window == needle)
}

/// Every `(where, what)` for a secret form found in `text`.
fn leaks_in(place: &str, text: &[u8], secrets: &[Secret]) -> Vec<String> {
    secrets
        .iter()
        .filter(|secret| secret.forms.iter().any(|form| contains(text, form)))
        .map(|secret| format!("{place}: {}", secret.what))
        .collect()
}

/// Runs of exactly 64 hexadecimal digits, and padded base64 of 32 bytes (43 characters and `=`): the
/// shapes a plaintext data key or the master key would have (SHA-256 hashes, which are public, have
/// the first).
fn key_shaped_runs(text: &str) -> Vec<String> {
    let mut runs = Vec::new();
    let mut hex = String::new();
    let mut b64 = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            hex.push(c);
        } else {
            if hex.len() == 64 {
                runs.push(hex.to_ascii_lowercase());
            }
            hex.clear();
        }
        if c.is_ascii_alphanumeric() || c == '+' || c == '/' {
            b64.push(c);
        } else {
            if c == '=' && b64.len() == 43 {
                runs.push(format!("{b64}="));
            }
            b64.clear();
        }
    }
    runs
}

#[test]
fn the_encodings_the_scan_looks_for_are_right() {
    assert_eq!(base64(&[0xfb, 0xff, 0xbf], true), "-_-_");
    let key = [7u8; 32];
    assert_eq!(key_shaped_runs(&format!("x {} y={}.", hex_lower(&key), base64(&key, false))).len(), 2);
    assert_eq!(without_ansi("\u{1b}[2mkey\u{1b}[0m=1"), "key=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_the_database_or_the_edge_kv() {
    let dir = std::env::temp_dir().join(format!("keygate-e2e-hygiene-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Secrets of our own, random, so that no accidental text can match them.
    let sync_secret = format!("sync-{}", random_hex(24));
    let origin_secret = format!("origin-{}", random_hex(24));
    let mut master = [0u8; 32];
    OsRng.fill_bytes(&mut master);
    let master_file = dir.join("master.key");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&master_file)
        .unwrap()
        .write_all(&master)
        .unwrap();

    let (origin, origin_url) = start_origin().await;
    // At `WRANGLER_LOG=debug`, wrangler's most verbose; the per-client brake off, since this run sends bad
    // keys on purpose.
    let edge_dir = dir.join("edge");
    let mut edge = Edge::start_with_options(
        "hygiene",
        &origin_url,
        &EdgeOptions {
            vars: &[("FAILED_ATTEMPTS_PER_MINUTE", "0")],
            secrets: Some((&sync_secret, &origin_secret)),
            log_level: Some("debug"),
            dir: Some(&edge_dir),
            port: None,
        },
    );
    let mut keygate = Keygate::new(&dir, Some((&edge.url, &sync_secret)));
    // Every key text this run makes: the admin keys and the client keys, every generation.
    let mut keys: Vec<(String, String)> = Vec::new();

    keygate.run(&["migrate"], None, false);
    let bootstrap = keygate.run(&["admin", "bootstrap"], None, true);
    let admin_key = bootstrap.trim().to_owned();
    assert_eq!(bootstrap, format!("{admin_key}\n"), "bootstrap prints the key alone");
    keys.push(("bootstrap admin key".into(), admin_key.clone()));

    let cp_log = dir.join("keygate-serve.log");
    let mut server = keygate.serve(&cp_log).await;
    let root_key = Some(admin_key.as_str());

    // Keys made through the API: a reader, a writer, and a narrower admin key.
    let (reader_key, reader_id) =
        create(&server, &admin_key, json!({"name": "reader", "permissions": ["query:read"]})).await;
    keys.push(("reader, generation 1".into(), reader_key.clone()));
    let body = json!({"name": "writer", "permissions": ["query:read", "mutation:write"], "owner": "team-a"});
    let (writer_key, writer_id) = create(&server, &admin_key, body).await;
    keys.push(("writer".into(), writer_key.clone()));
    let body = json!({"name": "auditor", "permissions": ["admin:audit:read", "admin:keys:read"]});
    let (auditor_key, _) = create(&server, &admin_key, body).await;
    keys.push(("auditor admin key".into(), auditor_key.clone()));

    // One through the CLI, whose stdout is meant to show it.
    let created = keygate.run(&["keys", "create", "--name", "cli-made", "-p", "query:read"], None, true);
    let created: Value = serde_json::from_str(&created).unwrap();
    let cli_key = created["api_key"].as_str().unwrap().to_owned();
    let cli_id = created["api_key_id"].as_str().unwrap().to_owned();
    keys.push(("CLI-made key".into(), cli_key.clone()));

    // The edge: good keys pass, a mutation without the permission does not, bad keys do not.
    until_status(&edge, &reader_key, 200, Duration::from_secs(30)).await;
    until_status(&edge, &cli_key, 200, Duration::from_secs(30)).await;
    assert_eq!(through_edge_at(&edge, "/graphql", Some(&writer_key), MUTATION).await.0, 200);
    assert_eq!(through_edge_at(&edge, "/graphql", Some(&reader_key), MUTATION).await.0, 403);
    assert_eq!(through_edge_at(&edge, "/graphql", None, QUERY).await.0, 401);
    assert_eq!(through_edge_at(&edge, "/graphql", Some("not-a-key"), QUERY).await.0, 401);
    let unknown = keygate.run(&["key", "generate"], None, true);
    let unknown = unknown.trim().to_owned();
    // Printed by `key generate`, never stored: a key like any other for this scan.
    keys.push(("generated, never-issued key".into(), unknown.clone()));
    assert_eq!(through_edge_at(&edge, "/graphql", Some(&unknown), QUERY).await.0, 401);
    let mut wrong_checksum = reader_key.clone();
    let last = wrong_checksum.pop().unwrap();
    wrong_checksum.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(through_edge_at(&edge, "/graphql", Some(&wrong_checksum), QUERY).await.0, 401);
    // A key in the URL is refused (the worker's first check); wrangler logs paths without the query.
    assert_eq!(
        through_edge_at(&edge, &format!("/graphql?api_key={reader_key}"), Some(&reader_key), QUERY).await.0,
        400
    );

    // Rotate: both generations work at the edge during the grace period.
    let reader_key_2 = rotate(&server, &admin_key, &reader_id, 600).await;
    keys.push(("reader, generation 2".into(), reader_key_2.clone()));
    until_status(&edge, &reader_key_2, 200, Duration::from_secs(30)).await;
    assert_eq!(through_edge_at(&edge, "/graphql", Some(&reader_key), QUERY).await.0, 200);
    let reader_key_3 = rotate(&server, &admin_key, &reader_id, 0).await;
    keys.push(("reader, generation 3".into(), reader_key_3.clone()));
    until_status(&edge, &reader_key_3, 200, Duration::from_secs(30)).await;
    until_status(&edge, &reader_key_2, 401, Duration::from_secs(30)).await;

    // Reveal through the API and the CLI (whose stdout is meant to show it).
    let (status, revealed) =
        admin(&server, "POST", &format!("/admin/api-keys/{reader_id}/reveal"), root_key, None).await;
    assert_eq!((status, revealed["api_key"].as_str()), (200, Some(reader_key_3.as_str())));
    let revealed = keygate.run(&["keys", "reveal", &cli_id], None, true);
    assert_eq!(revealed.trim(), cli_key);

    // Revoke: the edge refuses the key, verify calls it invalid, the API refuses to reroll it.
    let (status, revoked) = admin(
        &server,
        "POST",
        &format!("/admin/api-keys/{writer_id}/revoke"),
        root_key,
        Some(json!({"reason": "hygiene"})),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    until_status(&edge, &writer_key, 401, Duration::from_secs(30)).await;
    for (key, valid) in [(&reader_key_3, true), (&writer_key, false), (&reader_key_2, false), (&unknown, false)] {
        let (status, verified) = admin(&server, "POST", "/v1/keys/verify", None, Some(json!({"api_key": key}))).await;
        assert_eq!((status, verified["valid"].as_bool()), (200, Some(valid)), "{verified}");
    }

    // Rewrap through the API and the CLI; reveal still works after it.
    let (status, rewrapped) = admin(&server, "POST", "/admin/kms/rewrap", root_key, None).await;
    assert_eq!(status, 200, "{rewrapped}");
    keygate.run(&["kms", "rewrap"], None, false);
    let (status, revealed) =
        admin(&server, "POST", &format!("/admin/api-keys/{reader_id}/reveal"), root_key, None).await;
    assert_eq!((status, revealed["api_key"].as_str()), (200, Some(reader_key_3.as_str())));

    // Failing admin requests, each with a key of some kind in hand.
    let failing: Vec<FailingRequest> = vec![
        (401, "GET", "/admin/api-keys".into(), None, None),
        (401, "GET", "/admin/api-keys".into(), Some(&writer_key), None),
        (401, "GET", "/admin/api-keys".into(), Some(&unknown), None),
        (401, "GET", "/admin/api-keys".into(), Some(&wrong_checksum), None),
        (403, "GET", "/admin/api-keys".into(), Some(&reader_key_3), None),
        (403, "POST", format!("/admin/api-keys/{reader_id}/reveal"), Some(&auditor_key), None),
        (404, "POST", format!("/admin/api-keys/{}/rotate", key_id_of(&unknown)), root_key, Some(json!({}))),
        (409, "POST", format!("/admin/api-keys/{writer_id}/rotate"), root_key, Some(json!({}))),
        (422, "POST", "/admin/api-keys".into(), root_key, Some(json!({"name": "x", "permissions": ["admin:nope"]}))),
        (
            422,
            "POST",
            "/admin/api-keys".into(),
            root_key,
            Some(json!({"name": "x", "permissions": [], "api_key": reader_key_3})),
        ),
    ];
    for (expected, method, path, key, body) in failing {
        let (status, answer) = admin(&server, method, &path, key, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
    }
    let malformed = http()
        .post(format!("{}/admin/api-keys", server.url))
        .bearer_auth(&admin_key)
        .header("content-type", "application/json")
        .body(format!("{{\"name\": \"{reader_key_3}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);

    // The audit log, through the API and the CLI; the CLI's read-only commands.
    let (status, audit) = admin(&server, "GET", "/admin/audit-log?limit=1000", Some(&auditor_key), None).await;
    assert_eq!(status, 200, "{audit}");
    assert!(audit["entries"].as_array().unwrap().len() > 10, "{audit}");
    keygate.run(&["audit", "verify"], None, false);
    keygate.run(&["keys", "list"], None, false);
    keygate.run(&["keys", "show", &reader_id], None, false);
    keygate.run(&["edge", "resync"], None, false);
    // The origin signing keys: a rotation through the API and the CLI, the list, and the JWKS.
    let (status, rotated) = admin(&server, "POST", "/admin/origin-keys/rotate", root_key, None).await;
    assert_eq!(status, 201, "{rotated}");
    keygate.run(&["origin-keys", "rotate", "--activate-in-secs", "0"], None, false);
    keygate.run(&["origin-keys", "list"], None, false);
    let jwks: Value =
        http().get(format!("{}/.well-known/jwks.json", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 3, "{jwks}");
    let (status, _, _) = through_edge_at(&edge, "/graphql", Some(&reader_key_3), QUERY).await;
    assert_eq!(status, 200);
    let inspected = keygate.run(&["key", "inspect", "-"], Some(&reader_key_3), false);
    let inspected: Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(inspected["valid"], true, "{inspected}");
    assert!(origin.reached() >= 4, "the origin saw {} requests", origin.reached());

    server.terminate();
    edge.stop();

    // What must appear nowhere.
    let mut logs_extra: Vec<(String, String)> = Vec::new();
    let mut secrets: Vec<Secret> = Vec::new();
    for (what, key) in &keys {
        secrets.push(Secret { what: format!("{what} ({})", key_id_of(key)), forms: vec![key.clone().into_bytes()] });
        let part = secret_part(key);
        secrets.push(Secret {
            what: format!("secret part of {what}"),
            forms: vec![part.as_bytes().to_vec(), hex_lower(part.as_bytes()).into_bytes()],
        });
    }
    secrets.push(Secret { what: "sync secret".into(), forms: vec![sync_secret.clone().into_bytes()] });
    secrets.push(Secret { what: "origin secret".into(), forms: vec![origin_secret.clone().into_bytes()] });
    let master_hex = hex_lower(&master);
    let master_forms = vec![
        master.to_vec(),
        master_hex.clone().into_bytes(),
        master_hex.to_ascii_uppercase().into_bytes(),
        base64(&master, false).into_bytes(),
        base64(&master, false).trim_end_matches('=').as_bytes().to_vec(),
        base64(&master, true).trim_end_matches('=').as_bytes().to_vec(),
        format!("{master:?}").into_bytes(),
    ];
    secrets.push(Secret { what: "master key".into(), forms: master_forms });
    // The origin signing keys' private scalars, opened as the control plane would open them.
    let store =
        keygate_control_plane::store::connect(&format!("sqlite://{}", dir.join("keygate.db").display())).await.unwrap();
    let kms: std::sync::Arc<dyn keygate_control_plane::kms::Kms> =
        std::sync::Arc::new(keygate_control_plane::kms::local::LocalKms::open_or_create(&master_file).unwrap());
    let opener = keygate_control_plane::service::Service::new(
        store.clone(),
        kms,
        std::sync::Arc::new(keygate_control_plane::clock::SystemClock),
        Box::new(OsRng),
        keygate_control_plane::service::Settings::default(),
    );
    let signing_rows = store.origin_keys().await.unwrap();
    assert_eq!(signing_rows.len(), 3);
    for row in &signing_rows {
        let scalar = opener.origin_keys().open(row).await.unwrap().to_scalar();
        let scalar_hex = hex_lower(scalar.as_slice());
        secrets.push(Secret {
            what: format!("origin signing key {}", row.kid),
            forms: vec![
                scalar.to_vec(),
                scalar_hex.clone().into_bytes(),
                scalar_hex.to_ascii_uppercase().into_bytes(),
                base64(scalar.as_slice(), false).trim_end_matches('=').as_bytes().to_vec(),
                base64(scalar.as_slice(), true).trim_end_matches('=').as_bytes().to_vec(),
            ],
        });
    }
    store.close().await;
    logs_extra.push(("the JWKS".into(), jwks.to_string()));

    // Every log: the server's, wrangler's output and its debug log file, and the CLI's.
    let server_log = without_ansi(&std::fs::read_to_string(&cp_log).unwrap());
    let wrangler_log = without_ansi(&edge.log());
    let mut logs: Vec<(String, String)> = vec![("keygate serve log".into(), server_log.clone())];
    logs.push(("wrangler dev output".into(), wrangler_log.clone()));
    for file in files_under(&edge.dir.join("wrangler-logs")) {
        logs.push((file.display().to_string(), without_ansi(&String::from_utf8_lossy(&std::fs::read(&file).unwrap()))));
    }
    for run in &keygate.runs {
        logs.push((format!("stderr of keygate {}", run.args), without_ansi(&run.stderr)));
        if !run.stdout_shows_key {
            logs.push((format!("stdout of keygate {}", run.args), without_ansi(&run.stdout)));
        }
    }
    let audit_text = audit.to_string();
    logs.push(("audit log (GET /admin/audit-log)".into(), audit_text.clone()));
    logs.append(&mut logs_extra);

    // The logs are real: the server logged at trace, with the key ids of the requests it served, and
    // wrangler logged the requests and pushes it saw.
    assert!(server_log.lines().count() > 100, "the server hardly logged:\n{server_log}");
    assert!(server_log.contains("TRACE") && server_log.contains("DEBUG"), "not at trace:\n{server_log}");
    assert!(server_log.contains(&reader_id), "the server log never names the reader's id");
    assert!(server_log.contains("/v1/keys/verify"), "the server log has no request lines");
    assert!(wrangler_log.contains("POST /graphql 200") && wrangler_log.contains("POST /graphql 401"), "{wrangler_log}");
    assert!(wrangler_log.contains("/_keygate/sync"), "wrangler logged no push: {wrangler_log}");

    let mut leaks = Vec::new();
    for (place, text) in &logs {
        for (number, line) in text.lines().enumerate() {
            for leak in leaks_in(&format!("{place}, line {}", number + 1), line.as_bytes(), &secrets) {
                leaks.push(format!("{leak}\n    {}", line.chars().take(300).collect::<String>()));
            }
        }
    }

    // Key-shaped values in the logs can only be hashes the run can name: audit hashes and key hashes.
    let mut public_hashes: Vec<String> = Vec::new();
    for entry in audit["entries"].as_array().unwrap() {
        public_hashes.push(entry["hash"].as_str().unwrap().to_owned());
        public_hashes.push(entry["prev_hash"].as_str().unwrap().to_owned());
    }
    for (_, key) in &keys {
        let inspected = keygate.run(&["key", "inspect", "-"], Some(key), false);
        let inspected: Value = serde_json::from_str(&inspected).unwrap();
        public_hashes.push(inspected["hash"].as_str().unwrap().to_owned());
    }
    let mut unexplained = Vec::new();
    for (place, text) in &logs {
        for run in key_shaped_runs(text) {
            if !public_hashes.contains(&run) {
                unexplained.push(format!("{place}: {run}"));
            }
        }
    }

    // Storage: hashes and ciphertext only, in the SQLite files and the edge's KV folder.
    for file in std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().path()) {
        if file.file_name().unwrap().to_string_lossy().starts_with("keygate.db") {
            leaks.extend(leaks_in(&file.display().to_string(), &std::fs::read(&file).unwrap(), &secrets));
        }
    }
    let kv_files = files_under(&edge.dir.join("state"));
    assert!(!kv_files.is_empty(), "the edge persisted nothing");
    let mut kv_bytes = 0;
    for file in kv_files {
        let bytes = std::fs::read(&file).unwrap();
        kv_bytes += bytes.len();
        leaks.extend(leaks_in(&file.display().to_string(), &bytes, &secrets));
    }
    // Key ids are not secret: finding one proves the scan reads the records.
    let kv_text: Vec<u8> =
        files_under(&edge.dir.join("state")).iter().flat_map(|f| std::fs::read(f).unwrap()).collect();
    assert!(contains(&kv_text, reader_id.as_bytes()), "the reader's record is not in the KV folder ({kv_bytes} bytes)");

    println!(
        "hygiene: {} secrets in {} forms over {} log sources ({} lines), {} CLI runs, {} KV bytes",
        secrets.len(),
        secrets.iter().map(|s| s.forms.len()).sum::<usize>(),
        logs.len(),
        logs.iter().map(|(_, text)| text.lines().count()).sum::<usize>(),
        keygate.runs.len(),
        kv_bytes
    );
    assert!(leaks.is_empty(), "secrets written where they must not be:\n{}", leaks.join("\n"));
    assert!(
        unexplained.is_empty(),
        "key-shaped values in the logs that are no known hash:\n{}",
        unexplained.join("\n")
    );
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that pastes a whole key where an id or a query value belongs must not get it written to
/// the log (the edge refuses keys in URLs for this reason). The request span names the route
/// template, not the URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pasted_into_an_admin_url_stays_out_of_the_log() {
    let dir = std::env::temp_dir().join(format!("keygate-e2e-hygiene-url-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut keygate = Keygate::new(&dir, None);
    let admin_key = keygate.run(&["admin", "bootstrap"], None, true).trim().to_owned();
    let log = dir.join("keygate-serve.log");
    let mut server = keygate.serve(&log).await;
    let root_key = Some(admin_key.as_str());
    let (key, _) = create(&server, &admin_key, json!({"name": "pasted", "permissions": ["query:read"]})).await;

    for (expected, method, path) in [
        (404, "GET", format!("/admin/api-keys/{key}")),
        (422, "GET", format!("/admin/audit-log?key_id={key}")),
        (200, "POST", format!("/v1/keys/verify?api_key={key}")),
    ] {
        let body = (method == "POST").then(|| json!({"api_key": key}));
        let (status, answer) = admin(&server, method, &path, root_key, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
    }
    server.terminate();

    let text = without_ansi(&std::fs::read_to_string(&log).unwrap());
    let leaked: Vec<&str> = text.lines().filter(|line| line.contains(secret_part(&key))).collect();
    assert!(leaked.is_empty(), "the key reached the control plane's log:\n{}", leaked.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
