//! The replication link's wire form and its signature: HMAC-SHA256 over `timestamp + "." + body`.
//!
//! The control plane signs each push; the edge verifies it and refuses a timestamp more than
//! [`MAX_CLOCK_SKEW_SECS`] away from its own clock, so a captured push cannot be replayed later.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::record::KeyRecord;
use crate::signing_key::SealedSigningKey;

/// The path the edge receives pushes on.
pub const SYNC_PATH: &str = "/_keygate/sync";
/// Header carrying the signing time, unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Keygate-Timestamp";
/// Header carrying hex(HMAC-SHA256(secret, timestamp + "." + body)).
pub const SIGNATURE_HEADER: &str = "X-Keygate-Signature";
/// How far the signing time may be from the receiver's clock, either way.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// A push from the control plane to the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPayload {
    /// Records in outbox order.
    pub records: Vec<KeyRecord>,
    /// The origin-token signing keys the edge should hold: the active one and any published but not
    /// yet active, sealed under a key derived from the sync secret. Absent when unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SealedSigningKey>,
}

/// The secret shared by the control plane and the edge. Wiped on drop; `Debug` prints nothing of it.
#[derive(Clone)]
pub struct SyncSecret(Zeroizing<Vec<u8>>);

impl SyncSecret {
    /// Wraps the secret's bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }

    fn mac(&self, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = keyed_hmac(&self.0);
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The signature header's value for `body` signed at `timestamp` (unix seconds).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let timestamp = alloc::format!("{timestamp}");
        hex::encode(self.mac(&timestamp, body).finalize().into_bytes())
    }

    /// Checks the two headers of a push against `body` at `now`; returns the signing time.
    ///
    /// The signature comparison is constant-time.
    pub fn verify(&self, timestamp: &str, signature: &str, body: &[u8], now: i64) -> Result<i64, SyncError> {
        let signed_at = parse_timestamp(timestamp).ok_or(SyncError::BadTimestamp)?;
        if signed_at.abs_diff(now) > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
            return Err(SyncError::StaleTimestamp);
        }
        let mut tag = [0u8; 32];
        hex::decode_to_slice(signature, &mut tag).map_err(|_| SyncError::BadSignature)?;
        self.mac(timestamp, body).verify_slice(&tag).map_err(|_| SyncError::BadSignature)?;
        Ok(signed_at)
    }

    /// A 256-bit key for one purpose, named by `info`, derived from the secret with HKDF-SHA256: a
    /// key derived for one purpose says nothing of the secret or of a key for another.
    pub(crate) fn derive_key(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
        let _ = hkdf::Hkdf::<Sha256>::new(None, &self.0).expand(info, key.as_mut_slice());
        key
    }
}

/// HMAC-SHA256 under `key`.
pub(crate) fn keyed_hmac(key: &[u8]) -> Hmac<Sha256> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC pads or hashes a key of any length; `new_from_slice` only fails for fixed-size MACs.
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of every length"),
    }
}

/// Unix seconds as plain decimal digits: no sign, no spaces, at most 12 digits.
pub(crate) fn parse_timestamp(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Debug for SyncSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncSecret(<redacted>)")
    }
}

/// Why a push is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncError {
    /// The timestamp header is missing or not unix seconds.
    BadTimestamp,
    /// The timestamp is more than [`MAX_CLOCK_SKEW_SECS`] from the receiver's clock.
    StaleTimestamp,
    /// The signature is missing, not hex, or does not match.
    BadSignature,
}

impl SyncError {
    /// A stable, greppable identifier.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadTimestamp => "bad_timestamp",
            Self::StaleTimestamp => "stale_timestamp",
            Self::BadSignature => "bad_signature",
        }
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadTimestamp => "the timestamp is not unix seconds",
            Self::StaleTimestamp => "the timestamp is more than 300 s from the receiver's clock",
            Self::BadSignature => "the signature does not match",
        })
    }
}

impl core::error::Error for SyncError {}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_400_000;

    #[test]
    fn a_signed_body_verifies_within_the_window() {
        let secret = SyncSecret::new("s3cret");
        let signature = secret.sign(NOW, b"{}");
        let stamp = NOW.to_string();
        assert_eq!(secret.verify(&stamp, &signature, b"{}", NOW), Ok(NOW));
        assert_eq!(secret.verify(&stamp, &signature, b"{}", NOW + 300), Ok(NOW));
        assert_eq!(secret.verify(&stamp, &signature, b"{}", NOW - 300), Ok(NOW));
        assert_eq!(secret.verify(&stamp, &signature.to_uppercase(), b"{}", NOW), Ok(NOW));
    }

    #[test]
    fn known_answer_matches_an_independent_hmac() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            SyncSecret::new("key").sign(1_700_000_000, b"{}"),
            "9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn tampering_staleness_and_bad_headers_are_refused() {
        let secret = SyncSecret::new("s3cret");
        let signature = secret.sign(NOW, b"{}");
        let stamp = NOW.to_string();
        assert_eq!(secret.verify(&stamp, &signature, b"{ }", NOW), Err(SyncError::BadSignature));
        assert_eq!(SyncSecret::new("other").verify(&stamp, &signature, b"{}", NOW), Err(SyncError::BadSignature));
        assert_eq!(secret.verify(&stamp, &signature, b"{}", NOW + 301), Err(SyncError::StaleTimestamp));
        assert_eq!(secret.verify(&stamp, &signature, b"{}", NOW - 301), Err(SyncError::StaleTimestamp));
        assert_eq!(secret.verify(&(NOW + 1).to_string(), &signature, b"{}", NOW), Err(SyncError::BadSignature));
        assert_eq!(secret.verify(&stamp, "zz", b"{}", NOW), Err(SyncError::BadSignature));
        assert_eq!(secret.verify(&stamp, &signature[..62], b"{}", NOW), Err(SyncError::BadSignature));
        for stamp in ["", "-5", "+1764400000", " 1764400000", "1e9", "9999999999999"] {
            assert_eq!(secret.verify(stamp, &signature, b"{}", NOW), Err(SyncError::BadTimestamp), "{stamp:?}");
        }
    }

    #[test]
    fn debug_prints_nothing_secret() {
        assert_eq!(format!("{:?}", SyncSecret::new("hunter2")), "SyncSecret(<redacted>)");
    }
}
