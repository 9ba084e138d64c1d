//! The `keygate` commands that open the database and KMS, run as an operator would, on SQLite and the
//! local KMS: migrate, admin bootstrap, keys create|list|show|rotate|reveal|revoke, kms rewrap,
//! audit verify, and serve (up, answering, and down on SIGTERM).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keygate-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
        command
            .env("KEYGATE_DATABASE_URL", format!("sqlite://{}", self.dir.join("keygate.db").display()))
            .env("KEYGATE_KMS_MASTER_KEY_FILE", self.dir.join("master.key"))
            .env_remove("KEYGATE_KMS")
            .env_remove("KEYGATE_EDGE_URL")
            .env_remove("KEYGATE_KEY_PREFIX")
            .env_remove("KEYGATE_REGION");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "keygate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn an_operator_manages_keys_from_the_command_line() {
    let env = Env::new("manage");
    assert_eq!(env.ok(&["migrate"]).trim(), "sqlite schema is up to date");
    assert!(!env.dir.join("master.key").exists(), "migrate needs no KMS");

    let admin = env.ok(&["admin", "bootstrap"]);
    assert_eq!(mode(&env.dir.join("master.key")), 0o600);
    assert_eq!(admin.lines().count(), 1, "bootstrap prints only the key");
    assert!(keygate_shared::ParsedKey::parse(admin.trim()).is_ok());

    let created = env.json(&[
        "keys",
        "create",
        "--name",
        "demo",
        "-p",
        "query:read",
        "-p",
        "batch:5",
        "--metadata",
        r#"{"team":"a"}"#,
    ]);
    let id = created["api_key_id"].as_str().unwrap().to_owned();
    assert_eq!(created["permissions"], serde_json::json!(["query:read", "batch:5"]));
    assert_eq!(created["metadata"]["team"], "a");
    let listed = env.json(&["keys", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(env.json(&["keys", "list", "--unused-days", "1"]), serde_json::json!([]), "every key is new");
    let by_use = env.json(&["keys", "list", "--sort", "last-used", "--limit", "1"]);
    assert_eq!(by_use.as_array().unwrap().len(), 1);
    assert_eq!(by_use[0]["last_used_at"], Value::Null, "no edge reported any use");
    let first = by_use[0]["api_key_id"].as_str().unwrap();
    let next = env.json(&["keys", "list", "--sort", "last-used", "--after", first]);
    assert_eq!(next.as_array().unwrap().len(), 1, "the page after the first of two");
    assert_ne!(next[0]["api_key_id"], by_use[0]["api_key_id"]);
    assert_eq!(env.run(&["keys", "list", "--unused-days", "0"]).status.code(), Some(2));
    assert_eq!(env.json(&["keys", "show", &id])["name"], "demo");

    let rotated = env.json(&["keys", "rotate", &id, "--grace-period-secs", "0"]);
    assert_eq!(rotated["generation"], 2);
    assert_eq!(env.ok(&["keys", "reveal", &id]).trim(), rotated["api_key"].as_str().unwrap());
    assert_eq!(env.json(&["keys", "revoke", &id, "--reason", "done"])["status"], "revoked");

    let rewrapped = env.json(&["kms", "rewrap"]);
    assert_eq!(rewrapped["rewrapped"], 3, "bootstrap key, and two generations of demo");
    assert_eq!(env.ok(&["keys", "reveal", &id]).trim(), rotated["api_key"].as_str().unwrap());
    assert!(env.ok(&["audit", "verify"]).contains("intact"));

    let out = env.run(&["keys", "show", "nonsense"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an api_key_id"));
    let out = env.run(&["keys", "show", "0000000000000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_not_found"));
    let out = env.run(&["--kms", "aws", "keys", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kms-key-id"));
    let out = env.run(&["--database-url", "mysql://x", "keys", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported database URL"));
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[test]
fn an_operator_rotates_the_origin_signing_keys_from_the_command_line() {
    let env = Env::new("origin-keys");
    let first = env.json(&["origin-keys", "rotate"]);
    assert_eq!((first["version"].as_i64(), first["status"].as_str()), (Some(1), Some("active")), "{first}");
    let second = env.json(&["origin-keys", "rotate", "--activate-in-secs", "300"]);
    assert_eq!((second["version"].as_i64(), second["status"].as_str()), (Some(2), Some("pending")), "{second}");
    let listed = env.json(&["origin-keys", "list"]);
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for key in keys {
        assert!(key["public_jwk"].get("d").is_none() && key.get("d").is_none(), "{key}");
    }
    let out = env.run(&["origin-keys", "rotate", "--activate-in-secs=-5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_activation"));
    assert_eq!(env.json(&["origin-keys", "list"])["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn serve_answers_and_stops_cleanly_on_sigterm() {
    let env = Env::new("serve");
    let port = crate::support::free_port();
    let mut child = env
        .command()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Some(answer) = http_get(port, "/readyz") {
            break answer;
        }
        assert!(Instant::now() < deadline, "keygate serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains(r#""database":"sqlite""#));
    let openapi = http_get(port, "/openapi.json").unwrap();
    assert!(openapi.contains(r#""openapi":"3.1.0""#));
    // serve made the first origin signing key, and publishes it.
    let jwks = http_get(port, "/.well-known/jwks.json").unwrap();
    assert!(
        jwks.contains(r#""kty":"EC""#) && jwks.to_lowercase().contains("cache-control: public, max-age=60"),
        "{jwks}"
    );

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(log.contains("keygate control plane serving"), "{log}");

    let out = env.run(&["serve", "--edge-url", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sync-secret"));
}
