//! keygate's shared core, used by the control plane and the edge worker alike: key format v1, the
//! stored form of a secret and its constant-time check, the replicated key record, permissions, and
//! the signature on replication pushes, the origin's JWT with the keys that sign it, and the usage
//! reports the edge sends back.
//!
//! `no_std` + `alloc`, so it builds for `wasm32-unknown-unknown`; the default `std` feature only adds
//! runtime CPU-feature detection for the checksum.

#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

extern crate alloc;

pub mod attempts;
mod base62;
pub mod hash;
pub mod jwt;
pub mod key;
pub mod origin;
pub mod permissions;
pub mod record;
pub mod signing_key;
pub mod sync;
pub mod usage;

pub use attempts::FailedAttempts;
pub use hash::{sha256_hex, SecretHash};
pub use key::{ApiKey, KeyError, KeyId, KeySecret, ParsedKey, Prefix, Region};
pub use origin::OriginSecret;
pub use permissions::{AdminScope, Denial, OperationKind, Permission, PermissionError, PermissionSet};
pub use record::{KeyRecord, Refusal, SecretEntry};
pub use signing_key::{Jwk, OriginSigningKey, SealedSigningKey, SigningKeyError};
pub use sync::{SyncError, SyncPayload, SyncSecret};
pub use usage::{UsageBatch, UsageRow};
