//! Per-key rate limits by tier: a fixed one-minute window per key, counted in the worker's memory.
//!
//! Our own rather than governor's: governor reads `std::time::Instant`, which wasm32-unknown-unknown
//! does not have; here the clock is a parameter. Counts are per worker instance, so across many
//! Cloudflare locations a key gets up to its limit at each (the README says so).

use std::collections::HashMap;

use keygate_shared::KeyId;
use serde::Deserialize;

/// Length of a window.
pub const WINDOW_SECS: i64 = 60;
/// Keys tracked before old windows are pruned.
const PRUNE_AT: usize = 100_000;

/// Requests per minute for each tier; a tier not named gets `default`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Tiers {
    #[serde(flatten)]
    limits: HashMap<String, u32>,
}

impl Default for Tiers {
    /// The seed's tiers: 1,000 requests a minute for `default`, 10,000 for `premium`.
    fn default() -> Self {
        Self { limits: HashMap::from([("default".to_owned(), 1_000), ("premium".to_owned(), 10_000)]) }
    }
}

impl Tiers {
    /// Reads `{"tier": requests_per_minute, ...}`; `default` falls back to 1,000 if absent.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let mut tiers: Self = serde_json::from_str(text)?;
        tiers.limits.entry("default".to_owned()).or_insert(1_000);
        Ok(tiers)
    }

    /// Requests per minute for `tier`.
    pub fn limit(&self, tier: &str) -> u32 {
        self.limits.get(tier).or_else(|| self.limits.get("default")).copied().unwrap_or(1_000)
    }
}

/// The limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allowed {
        /// The window's limit.
        limit: u32,
        /// Requests left in the window after this one.
        remaining: u32,
    },
    /// Too many: try again in `retry_after` seconds.
    Limited {
        /// The window's limit.
        limit: u32,
        /// Seconds until the window ends.
        retry_after: i64,
    },
}

/// Counts per key for the current window.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: HashMap<KeyId, (i64, u32)>,
}

impl RateLimiter {
    /// Counts one request by `key` at `now` against `limit` per minute.
    pub fn admit(&mut self, key: KeyId, limit: u32, now: i64) -> Decision {
        let window = now - now.rem_euclid(WINDOW_SECS);
        if self.windows.len() >= PRUNE_AT {
            self.windows.retain(|_, (start, _)| *start == window);
        }
        let entry = self.windows.entry(key).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        if entry.1 >= limit {
            return Decision::Limited { limit, retry_after: window + WINDOW_SECS - now };
        }
        entry.1 += 1;
        Decision::Allowed { limit, remaining: limit - entry.1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_limit_per_window() {
        let mut limiter = RateLimiter::default();
        let (a, b) = (KeyId::from_u128(1), KeyId::from_u128(2));
        let start = 1_800_000_000; // a window boundary: divisible by 60
        assert_eq!(limiter.admit(a, 2, start + 10), Decision::Allowed { limit: 2, remaining: 1 });
        assert_eq!(limiter.admit(a, 2, start + 11), Decision::Allowed { limit: 2, remaining: 0 });
        assert_eq!(limiter.admit(a, 2, start + 15), Decision::Limited { limit: 2, retry_after: 45 });
        assert_eq!(limiter.admit(b, 2, start + 15), Decision::Allowed { limit: 2, remaining: 1 }, "keys count apart");
        assert_eq!(limiter.admit(a, 2, start + 60), Decision::Allowed { limit: 2, remaining: 1 }, "a new window");
    }

    #[test]
    fn tiers_come_from_json_with_a_default() {
        assert_eq!(Tiers::default().limit("premium"), 10_000);
        assert_eq!(Tiers::default().limit("unknown"), 1_000);
        let tiers = Tiers::from_json(r#"{"gold": 50}"#).unwrap();
        assert_eq!((tiers.limit("gold"), tiers.limit("default"), tiers.limit("x")), (50, 1_000, 1_000));
        assert!(Tiers::from_json(r#"{"gold": -1}"#).is_err());
    }
}
