//! Real parts the tests start themselves.

pub mod app;
pub mod fault_net;
pub mod kms_server;
pub mod slow_edge;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free port for a part started as another process (the KMS server, the control plane's binary).
///
/// Not one the kernel picks with `bind` to port 0: those come from its ephemeral range (32768–60999),
/// which it also hands to every other `bind(0)` and outgoing connection, so a port reserved that way and
/// released can be taken before the process it was meant for binds it. These come from below that range,
/// in turn, each call a new one.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id();
    loop {
        let port = FIRST + (start.wrapping_add(TAKEN.fetch_add(1, Ordering::Relaxed)) % u32::from(COUNT)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
