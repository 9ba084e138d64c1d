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

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
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

/// A free port, for a part started as another process that must be told its port (wrangler, workerd,
/// FraiseQL, the control plane's binary).
///
/// Not one the kernel picks (`bind` to port 0): those come from its ephemeral range, 32768–60999 here,
/// which it also hands to every other `bind(0)` and outgoing connection on the machine, workerd's own
/// listeners among them. A port reserved that way and released could be taken by one of those before the
/// process it was meant for binds it; CI saw wrangler fail with "Address already in use" and the test then
/// talk to whatever held the port. These come from below that range, in turn, each call a new one.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    // Two test processes at once (rare: cargo runs test binaries one by one) start far apart.
    let start = std::process::id();
    loop {
        let port = FIRST + (start.wrapping_add(TAKEN.fetch_add(1, Ordering::Relaxed)) % u32::from(COUNT)) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
