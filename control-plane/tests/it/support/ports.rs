//! Free ports for parts started as other processes. Shared with the end-to-end tests (`tests/`), which
//! include this file by path.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free port, for a part started as another process that must be told its port (the KMS server,
/// wrangler, workerd, FraiseQL, the control plane's binary).
///
/// Not one the kernel picks (`bind` to port 0): those come from its ephemeral range, 32768–60999 here,
/// which it also hands to every other `bind(0)` and outgoing connection on the machine, workerd's own
/// listeners among them. A port reserved that way and released could be taken by one of those before
/// the process it was meant for binds it; CI saw wrangler fail with "Address already in use" and the
/// test then talk to whatever held the port. These come from below that range, in turn, each call a
/// new one.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    // Two test processes at once (rare: cargo runs test binaries one by one) start far apart.
    let start = std::process::id();
    loop {
        let port = FIRST + (start.wrapping_add(TAKEN.fetch_add(1, Ordering::Relaxed)) % u32::from(COUNT)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
