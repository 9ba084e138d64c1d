//! Failed key checks per client. A client (an IP address at the edge, a peer address at the control
//! plane) that fails `limit` key checks within one fixed window is refused outright, whatever key it
//! sends, until the window ends: guessing keys costs a window per `limit` guesses, and the refusals it
//! would otherwise cause (audit entries, KV reads) stop too.
//!
//! Counts live in the memory of one worker isolate or one control-plane process; they are a brake on
//! one client, not a global quota.

use alloc::collections::BTreeMap;
use alloc::string::String;

/// Failed checks a client may make in one window.
pub const DEFAULT_LIMIT: u32 = 20;
/// Length of a window, in seconds.
pub const WINDOW_SECS: i64 = 60;
/// Clients tracked at most; past it, finished windows are dropped first, then every window.
pub const DEFAULT_CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: i64,
    failures: u32,
}

/// Failed attempts by client, in fixed windows.
#[derive(Debug, Clone)]
pub struct FailedAttempts {
    windows: BTreeMap<String, Window>,
    limit: u32,
    capacity: usize,
}

impl Default for FailedAttempts {
    fn default() -> Self {
        Self::new(DEFAULT_LIMIT, DEFAULT_CAPACITY)
    }
}

impl FailedAttempts {
    /// `limit` failed checks per client per window (0: no limit), at most `capacity` clients tracked.
    pub fn new(limit: u32, capacity: usize) -> Self {
        Self { windows: BTreeMap::new(), limit, capacity }
    }

    /// Seconds until `client` may try again, if it has used up its failures at `now`.
    pub fn blocked(&self, client: &str, now: i64) -> Option<i64> {
        let window = self.windows.get(client)?;
        let ends = window.started.saturating_add(WINDOW_SECS);
        (now < ends && window.failures >= self.limit).then(|| ends - now)
    }

    /// Counts a failed check by `client` at `now`.
    pub fn failed(&mut self, client: &str, now: i64) {
        if self.limit == 0 {
            return;
        }
        if let Some(window) = self.windows.get_mut(client) {
            if now < window.started.saturating_add(WINDOW_SECS) {
                window.failures = window.failures.saturating_add(1);
            } else {
                *window = Window { started: now, failures: 1 };
            }
            return;
        }
        if self.windows.len() >= self.capacity {
            self.windows.retain(|_, window| now < window.started.saturating_add(WINDOW_SECS));
            if self.windows.len() >= self.capacity {
                self.windows.clear();
            }
        }
        self.windows.insert(client.into(), Window { started: now, failures: 1 });
    }

    /// Clients tracked.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_blocked_after_its_limit_until_the_window_ends() {
        let mut attempts = FailedAttempts::new(3, 10);
        for _ in 0..2 {
            attempts.failed("10.0.0.1", 100);
        }
        assert_eq!(attempts.blocked("10.0.0.1", 101), None, "two of three used");
        attempts.failed("10.0.0.1", 110);
        assert_eq!(attempts.blocked("10.0.0.1", 110), Some(50), "until the window that began at 100 ends");
        assert_eq!(attempts.blocked("10.0.0.2", 110), None, "other clients are not touched");
        assert_eq!(attempts.blocked("10.0.0.1", 160), None, "a new window");
        attempts.failed("10.0.0.1", 160);
        assert_eq!(attempts.blocked("10.0.0.1", 161), None, "and its count starts again");
    }

    #[test]
    fn it_stays_within_its_capacity() {
        let mut attempts = FailedAttempts::new(1, 4);
        for n in 0..20 {
            attempts.failed(&alloc::format!("client {n}"), 0);
            assert!(attempts.len() <= 4);
        }
        attempts.failed("late", 0);
        assert_eq!(attempts.blocked("late", 1), Some(59));

        let mut off = FailedAttempts::new(0, 4);
        off.failed("client", 0);
        assert!(off.is_empty() && off.blocked("client", 1).is_none(), "0 turns the limit off");
    }
}
