//! The signature the edge puts on a forwarded request so the origin can trust its identity headers:
//! `X-Keygate-Signature` = hex(HMAC-SHA256(origin secret, "keygate-origin-v1\n" + timestamp + "\n" +
//! key id + "\n" + tier)), with the signing time in `X-Keygate-Timestamp` (unix seconds).
//!
//! An origin checks it with [`OriginSecret::verify`]: the same secret, the two identity headers, the
//! timestamp, and a window against replay.

use alloc::string::String;
use core::fmt;

use hmac::{Hmac, Mac};

use crate::sync::{keyed_hmac, parse_timestamp};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Header with the verified key's id.
pub const KEY_ID_HEADER: &str = "X-Keygate-Key-Id";
/// Header with the verified key's tier.
pub const TIER_HEADER: &str = "X-Keygate-Tier";
/// Header with the signing time, unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Keygate-Timestamp";
/// Header with the signature over the identity headers and the time.
pub const SIGNATURE_HEADER: &str = "X-Keygate-Signature";
/// How far the signing time may be from the origin's clock, either way.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// The secret shared by the edge and the origin. Wiped on drop; `Debug` prints nothing of it.
pub struct OriginSecret(Zeroizing<alloc::vec::Vec<u8>>);

/// Why an origin refuses the identity headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OriginError {
    /// The timestamp is not unix seconds.
    BadTimestamp,
    /// The timestamp is outside the window.
    StaleTimestamp,
    /// The signature does not match.
    BadSignature,
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadTimestamp => "the timestamp is not unix seconds",
            Self::StaleTimestamp => "the timestamp is outside the accepted window",
            Self::BadSignature => "the signature does not match",
        })
    }
}

impl core::error::Error for OriginError {}

impl OriginSecret {
    /// Wraps the secret's bytes.
    pub fn new(bytes: impl Into<alloc::vec::Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    /// HMAC-SHA256 keyed with the secret: the identity headers' signature, and HS256 tokens.
    pub(crate) fn keyed_hmac(&self) -> Hmac<Sha256> {
        keyed_hmac(&self.0)
    }

    fn mac(&self, timestamp: &str, key_id: &str, tier: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed_hmac();
        for part in [b"keygate-origin-v1".as_slice(), timestamp.as_bytes(), key_id.as_bytes(), tier.as_bytes()] {
            mac.update(part);
            mac.update(b"\n");
        }
        mac
    }

    /// The signature header's value for a key id and tier signed at `timestamp`.
    pub fn sign(&self, timestamp: i64, key_id: &str, tier: &str) -> String {
        let timestamp = alloc::format!("{timestamp}");
        hex::encode(self.mac(&timestamp, key_id, tier).finalize().into_bytes())
    }

    /// Checks the headers an origin received, at `now` (constant-time comparison).
    pub fn verify(
        &self,
        timestamp: &str,
        key_id: &str,
        tier: &str,
        signature: &str,
        now: i64,
    ) -> Result<(), OriginError> {
        let signed_at = parse_timestamp(timestamp).ok_or(OriginError::BadTimestamp)?;
        if signed_at.abs_diff(now) > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
            return Err(OriginError::StaleTimestamp);
        }
        let mut tag = [0u8; 32];
        hex::decode_to_slice(signature, &mut tag).map_err(|_| OriginError::BadSignature)?;
        self.mac(timestamp, key_id, tier).verify_slice(&tag).map_err(|_| OriginError::BadSignature)
    }
}

impl fmt::Debug for OriginSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OriginSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_accepts_what_the_edge_signed_and_nothing_else() {
        let secret = OriginSecret::new("origin-secret");
        let signature = secret.sign(1_800_000_000, "0000000000000000000007", "premium");
        assert_eq!(secret.verify("1800000000", "0000000000000000000007", "premium", &signature, 1_800_000_100), Ok(()));
        assert_eq!(
            secret.verify("1800000000", "0000000000000000000007", "default", &signature, 1_800_000_000),
            Err(OriginError::BadSignature)
        );
        assert_eq!(
            secret.verify("1800000000", "0000000000000000000008", "premium", &signature, 1_800_000_000),
            Err(OriginError::BadSignature)
        );
        assert_eq!(
            OriginSecret::new("other").verify(
                "1800000000",
                "0000000000000000000007",
                "premium",
                &signature,
                1_800_000_000
            ),
            Err(OriginError::BadSignature)
        );
        assert_eq!(
            secret.verify("1800000000", "0000000000000000000007", "premium", &signature, 1_800_000_301),
            Err(OriginError::StaleTimestamp)
        );
        assert_eq!(secret.verify("-1", "a", "b", &signature, 0), Err(OriginError::BadTimestamp));
    }

    #[test]
    fn known_answer_matches_an_independent_hmac() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"s",b"keygate-origin-v1\n1700000000\nid\ntier\n",hashlib.sha256).hexdigest())'
        assert_eq!(
            OriginSecret::new("s").sign(1_700_000_000, "id", "tier"),
            "47c40b2aaab5550f72a061f4e5b78d9b202600efc0333916706ba884f880217e"
        );
        assert_eq!(format!("{:?}", OriginSecret::new("s")), "OriginSecret(<redacted>)");
    }
}
