//! The end-to-end harness the test binaries share: the worker in workerd ([`edge`]), an HTTP GraphQL
//! origin ([`origin`]) and the control plane on a real socket with its replicator ([`control_plane`]).
//!
//! Needs the worker toolchain: `scripts/tools.sh` installs it (make test runs it first).

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod control_plane;
pub mod edge;
pub mod fraiseql;
pub mod graphql_node;
pub mod origin;
#[path = "../../../control-plane/tests/it/support/ports.rs"]
mod ports;

pub use ports::free_port;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The secret the control plane signs pushes with and the edge verifies them with.
pub const SYNC_SECRET: &str = "e2e-sync-secret";
/// The secret the edge signs identity headers for the origin with.
pub const ORIGIN_SECRET: &str = "e2e-origin-secret";

/// A query a `query:read` key may run.
pub const QUERY: &str = r#"{"query":"{ users { id } }"}"#;
/// A mutation, which needs `mutation:write`.
pub const MUTATION: &str = r#"{"query":"mutation { addUser(name: \"x\") { id } }"}"#;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The `export NAME="value"` lines a setup script under `scripts/` prints (it installs what is missing
/// first), as a map. `$PATH` in a value is this process's `PATH`.
pub fn script_exports(script: &str) -> HashMap<String, String> {
    let out = Command::new("bash")
        .arg(root().join("scripts").join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(out.status.success(), "scripts/{script} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .flat_map(|line| line.split(' '))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let value = v.trim_matches('"').replace("$PATH", &std::env::var("PATH").unwrap_or_default());
            (k.to_owned(), value)
        })
        .collect()
}

/// The worker toolchain's environment, from `scripts/tools.sh`.
pub fn tools() -> HashMap<String, String> {
    script_exports("tools.sh")
}

/// An HTTP client whose calls fail after 10 s instead of hanging a test.
pub fn http() -> reqwest::Client {
    // Every part listens on plain HTTP on loopback: skipping the system's root certificates makes a
    // client in well under a millisecond instead of ~50 ms, which adds up over hundreds of requests.
    reqwest::Client::builder().timeout(Duration::from_secs(10)).tls_built_in_root_certs(false).build().unwrap()
}

/// The `keygate` binary in this test's target directory, built (or brought up to date) first: `cargo
/// test -p keygate-tests` builds the library, not the binary.
pub fn keygate_binary() -> PathBuf {
    // <target>/<profile>/deps/<test>-<hash>: the profile directory is two levels up, in the target
    // directory cargo used for this test (`CARGO_TARGET_DIR` or the workspace's `target`).
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "keygate-control-plane", "--bin", "keygate"]);
    // Without the variables cargo set for this test: inherited, they change the fingerprints of
    // dependencies' builds, and the next `cargo build` or `cargo test` would compile them all again.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| name.starts_with("CARGO_") && name != "CARGO_HOME") {
            build.env_remove(name);
        }
    }
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.env("CARGO_TARGET_DIR", target_dir).current_dir(root()).status().unwrap();
    assert!(status.success(), "cargo build -p keygate-control-plane failed");
    let binary = profile_dir.join("keygate");
    assert!(binary.exists(), "no keygate binary at {}", binary.display());
    binary
}
