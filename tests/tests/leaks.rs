//! A leaked key found by GitHub, end to end: the real `keygate serve` (SQLite, local KMS, replicating
//! to the worker in workerd) gets a GitHub-shaped report signed with a P-256 key made here, revokes
//! the key, and the edge then refuses it; a self-report does the same for another key.
//!
//! Needs the worker toolchain: `scripts/tools.sh` installs it (make test runs it first).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::{json, Value};
use support::edge::{until_status, Edge};
use support::origin::start_origin;
use support::{free_port, http, keygate_binary, SYNC_SECRET};

/// The `keygate` binary in this test's target directory, built (or brought up to date) first.
/// `keygate serve`, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut request = http().post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_report_signed_like_githubs_revokes_the_key_and_the_edge_refuses_it() {
    let (_origin, origin_url) = start_origin().await;
    let edge = Edge::start("leaks", &origin_url);
    let dir = std::env::temp_dir().join(format!("keygate-e2e-leaks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let github = SigningKey::random(&mut rand_core::OsRng);
    let pem = github.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
    let keys_file = dir.join("github-keys.json");
    let document = json!({"public_keys": [{"key_identifier": "e2e-key", "key": pem, "is_current": true}]});
    std::fs::write(&keys_file, document.to_string()).unwrap();

    let binary = keygate_binary();
    let env = [
        ("KEYGATE_DATABASE_URL", format!("sqlite://{}", dir.join("keygate.db").display())),
        ("KEYGATE_KMS_MASTER_KEY_FILE", dir.join("master.key").display().to_string()),
        ("KEYGATE_EDGE_URL", edge.url.clone()),
        ("KEYGATE_SYNC_SECRET", SYNC_SECRET.to_owned()),
        ("KEYGATE_GITHUB_SCANNING_KEYS", keys_file.display().to_string()),
    ];
    let bootstrap = Command::new(&binary).args(["admin", "bootstrap"]).envs(env.clone()).output().unwrap();
    assert!(bootstrap.status.success(), "{}", String::from_utf8_lossy(&bootstrap.stderr));
    let admin = String::from_utf8(bootstrap.stdout).unwrap().trim().to_owned();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = dir.join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let _serve = Serve(
        Command::new(&binary)
            .arg("serve")
            .envs(env)
            .env("KEYGATE_LISTEN", &listen)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http().get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "keygate serve did not start: {}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let create = |name: &str| {
        let request = http()
            .post(format!("{base}/admin/api-keys"))
            .bearer_auth(&admin)
            .json(&json!({"name": name, "permissions": ["query:read"]}));
        async move {
            let created: Value = request.send().await.unwrap().json().await.unwrap();
            (created["api_key"].as_str().unwrap().to_owned(), created["api_key_id"].as_str().unwrap().to_owned())
        }
    };
    let (leaked, leaked_id) = create("pushed to a public repo").await;
    let (pasted, _) = create("pasted in a chat").await;
    until_status(&edge, &leaked, 200, Duration::from_secs(10)).await;
    until_status(&edge, &pasted, 200, Duration::from_secs(10)).await;

    let body = serde_json::to_vec(&json!([
        {"token": leaked, "type": "keygate_api_key", "url": "https://github.com/octo/app/blob/main/.env", "source": "content"},
        {"token": "fraiseql_us_east_1_not_a_key", "type": "keygate_api_key", "url": "https://github.com/x", "source": "commit"},
    ]))
    .unwrap();
    let signature: Signature = github.sign(&body);
    let signature = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    let github_url = format!("{base}/v1/secret-scanning/github");

    // Unsigned first: refused, and the key still works at the edge afterwards.
    let (status, _) = post(&github_url, &[], body.clone()).await;
    assert_eq!(status, 401);

    let headers = [("Github-Public-Key-Identifier", "e2e-key"), ("Github-Public-Key-Signature", signature.as_str())];
    let (status, answer) = post(&github_url, &headers, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer[0]["label"], "true_positive");
    assert_eq!(answer[0]["token_hash"], keygate_shared::hash::sha256_hex(&leaked));
    assert_eq!(answer[1]["label"], "false_positive");
    until_status(&edge, &leaked, 401, Duration::from_secs(10)).await;
    until_status(&edge, &pasted, 200, Duration::from_secs(1)).await;
    let shown: Value = http()
        .get(format!("{base}/admin/api-keys/{leaked_id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["revoked_reason"], "leaked");

    let report = serde_json::to_vec(&json!({"api_key": pasted, "source": "a public chat"})).unwrap();
    let (status, answer) = post(&format!("{base}/v1/keys/report"), &[], report).await;
    assert_eq!((status, answer), (202, json!({"received": true})));
    until_status(&edge, &pasted, 401, Duration::from_secs(10)).await;

    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains(&leaked) && !log.contains(&pasted), "a reported key reached the log");
    let _ = std::fs::remove_dir_all(&dir);
}
