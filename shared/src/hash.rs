//! The stored and replicated form of a key: SHA-256 of the whole key, compared in constant time.

use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// SHA-256 of a whole key. Equality is constant-time.
#[derive(Clone, Copy, Eq)]
pub struct SecretHash([u8; 32]);

/// A hash that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHash;

impl fmt::Display for InvalidHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret hash is 64 hex digits")
    }
}

impl core::error::Error for InvalidHash {}

impl SecretHash {
    /// Hashes a whole key, as presented.
    pub fn of_key(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Wraps a digest.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, the form records and the database hold.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<Self, InvalidHash> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidHash)?;
        Ok(Self(bytes))
    }
}

/// `sha256_hex(full key string)`, DESIGN.md's stored form of a secret.
pub fn sha256_hex(key: &str) -> String {
    SecretHash::of_key(key).to_hex()
}

impl ConstantTimeEq for SecretHash {
    /// The bitwise differences of all bytes OR-ed together, then one `subtle` comparison with zero: no
    /// branch depends on the data, and it costs a few vector instructions, not `subtle`'s per-byte barriers.
    fn ct_eq(&self, other: &Self) -> Choice {
        let difference = self.0.iter().zip(&other.0).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        difference.ct_eq(&0)
    }
}

impl PartialEq for SecretHash {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl fmt::Debug for SecretHash {
    /// Enough to tell hashes apart in a test failure; the whole digest stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({}…)", hex::encode(&self.0[..4]))
    }
}

impl Serialize for SecretHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <alloc::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_lengths() {
        let hash = SecretHash::of_key("abc");
        assert_eq!(hash.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(SecretHash::from_hex(&hash.to_hex().to_uppercase()), Ok(hash));
        assert_eq!(SecretHash::from_hex("ba78"), Err(InvalidHash));
        assert_eq!(SecretHash::from_hex(&"g".repeat(64)), Err(InvalidHash));
    }

    #[test]
    fn equality_sees_a_difference_in_any_bit() {
        let hash = SecretHash::of_key("abc");
        assert_eq!(hash, hash);
        for byte in 0..32 {
            for bit in 0..8 {
                let mut other = *hash.as_bytes();
                other[byte] ^= 1 << bit;
                assert_ne!(SecretHash::from_bytes(other), hash);
            }
        }
    }

    #[test]
    fn debug_shows_only_a_short_prefix() {
        assert_eq!(format!("{:?}", SecretHash::of_key("abc")), "SecretHash(ba7816bf…)");
    }
}
