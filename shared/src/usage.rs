//! Usage counted at the edge and reported to the control plane: the batch's wire form, its limits,
//! and its signature.
//!
//! An edge isolate counts per key and minute what became of each request (admitted, forbidden, rate
//! limited, refused) and the admitted ones per GraphQL operation name, then posts a [`UsageBatch`] to
//! the control plane at [`USAGE_PATH`], off the request path. The batch is signed like a sync push
//! (the same two headers, `timestamp + "." + body`), but with a key derived from the sync secret for
//! this direction only, so a push can never pass for a report or the other way round. Each batch
//! carries a random id: the control plane keeps a batch once, so a retried flush never counts twice.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::key::KeyId;
use crate::sync::{SyncError, SyncSecret};

/// The path on the control plane that takes usage batches.
pub const USAGE_PATH: &str = "/_keygate/usage";
/// The operation name counted for an operation that has none.
pub const ANONYMOUS_OPERATION: &str = "(anonymous)";
/// The operation name that stands for the names past [`MAX_OPERATIONS_PER_ROW`] in one row.
pub const OTHER_OPERATIONS: &str = "(other)";
/// The longest operation name kept; a longer one is cut to this many bytes (at a character boundary).
pub const MAX_OPERATION_NAME_LEN: usize = 128;
/// The most operation names one row carries; the rest are counted under [`OTHER_OPERATIONS`].
pub const MAX_OPERATIONS_PER_ROW: usize = 32;
/// The most rows one batch carries.
pub const MAX_ROWS_PER_BATCH: usize = 5_000;
/// The length of a batch id: 32 lower-case hex digits (128 random bits).
pub const BATCH_ID_LEN: usize = 32;
/// The largest count a row may carry in any field (2^40): far above what one key does in a minute, and
/// low enough that two years of sums stay inside a signed 64-bit column.
pub const MAX_COUNT: u64 = 1 << 40;
/// The largest batch body the control plane takes, in bytes; a flush that would be larger is split.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// HKDF info naming the key that signs usage batches.
const USAGE_SIGNING_INFO: &[u8] = b"keygate usage report signing v1";

/// One flush from one edge isolate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// [`BATCH_ID_LEN`] lower-case hex digits, random, the same on every retry of this batch.
    pub batch_id: String,
    /// Counts per key and minute.
    pub rows: Vec<UsageRow>,
    /// Events this isolate counted and then dropped, since its last delivered batch, because the
    /// control plane could not be reached for too long.
    #[serde(default)]
    pub dropped: u64,
}

/// What became of one key's requests in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRow {
    /// The key.
    pub key_id: KeyId,
    /// The minute's start, unix seconds (a multiple of 60).
    pub minute: i64,
    /// Requests let through to the origin.
    #[serde(default)]
    pub admitted: u64,
    /// Requests refused for a missing permission (403).
    #[serde(default)]
    pub forbidden: u64,
    /// Requests refused by the rate limit (429).
    #[serde(default)]
    pub rate_limited: u64,
    /// Requests with this key id refused as a bad key (401: wrong secret, revoked, disabled, expired).
    #[serde(default)]
    pub refused: u64,
    /// Admitted operations by GraphQL operation name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<OperationCount>,
}

/// Admitted operations of one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationCount {
    /// The operation's name, or [`ANONYMOUS_OPERATION`].
    pub name: String,
    /// How many.
    pub count: u64,
}

/// Why a batch's content is refused (its signature is checked apart, by [`verify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// The batch id is not [`BATCH_ID_LEN`] lower-case hex digits.
    BadBatchId,
    /// More than [`MAX_ROWS_PER_BATCH`] rows.
    TooManyRows,
    /// A minute that is negative or not a multiple of 60.
    BadMinute,
    /// More than [`MAX_OPERATIONS_PER_ROW`] operations in a row (plus [`OTHER_OPERATIONS`]), or a
    /// name that is empty or longer than [`MAX_OPERATION_NAME_LEN`].
    BadOperation,
    /// A count above [`MAX_COUNT`].
    BadCount,
}

impl UsageError {
    /// A stable, greppable identifier.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadBatchId => "bad_batch_id",
            Self::TooManyRows => "too_many_rows",
            Self::BadMinute => "bad_minute",
            Self::BadOperation => "bad_operation",
            Self::BadCount => "bad_count",
        }
    }
}

impl core::fmt::Display for UsageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BadBatchId => "the batch id is not 32 lower-case hex digits",
            Self::TooManyRows => "the batch has more rows than allowed",
            Self::BadMinute => "a row's minute is not the start of a minute",
            Self::BadOperation => "a row has too many operations or a bad operation name",
            Self::BadCount => "a count is larger than allowed",
        })
    }
}

impl core::error::Error for UsageError {}

impl UsageBatch {
    /// Checks the limits above.
    pub fn validate(&self) -> Result<(), UsageError> {
        let id = self.batch_id.as_bytes();
        if id.len() != BATCH_ID_LEN || !id.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(UsageError::BadBatchId);
        }
        if self.rows.len() > MAX_ROWS_PER_BATCH {
            return Err(UsageError::TooManyRows);
        }
        for row in &self.rows {
            if row.minute < 0 || row.minute % 60 != 0 {
                return Err(UsageError::BadMinute);
            }
            if row.operations.len() > MAX_OPERATIONS_PER_ROW + 1 {
                return Err(UsageError::BadOperation);
            }
            if row.operations.iter().any(|op| op.name.is_empty() || op.name.len() > MAX_OPERATION_NAME_LEN) {
                return Err(UsageError::BadOperation);
            }
            let counts = [row.admitted, row.forbidden, row.rate_limited, row.refused];
            if counts.into_iter().chain(row.operations.iter().map(|op| op.count)).any(|count| count > MAX_COUNT) {
                return Err(UsageError::BadCount);
            }
        }
        Ok(())
    }
}

/// `name` as a usage row keeps it: [`ANONYMOUS_OPERATION`] for none or an empty one, else cut to at
/// most [`MAX_OPERATION_NAME_LEN`] bytes at a character boundary.
pub fn operation_name(name: Option<&str>) -> &str {
    match name {
        None | Some("") => ANONYMOUS_OPERATION,
        Some(name) => {
            let mut end = name.len().min(MAX_OPERATION_NAME_LEN);
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            &name[..end]
        }
    }
}

/// The key that signs usage batches: derived from the sync secret, for this purpose only.
fn usage_key(secret: &SyncSecret) -> SyncSecret {
    SyncSecret::new(secret.derive_key(USAGE_SIGNING_INFO).to_vec())
}

/// The signature header's value for a usage batch's `body` signed at `timestamp` (unix seconds).
pub fn sign(secret: &SyncSecret, timestamp: i64, body: &[u8]) -> String {
    usage_key(secret).sign(timestamp, body)
}

/// Checks a usage batch's two headers against `body` at `now`, with the sync push's clock window;
/// returns the signing time. The comparison is constant-time.
pub fn verify(secret: &SyncSecret, timestamp: &str, signature: &str, body: &[u8], now: i64) -> Result<i64, SyncError> {
    usage_key(secret).verify(timestamp, signature, body, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_400_000;

    fn batch() -> UsageBatch {
        UsageBatch {
            batch_id: "0123456789abcdef0123456789abcdef".into(),
            rows: vec![UsageRow {
                key_id: KeyId::from(7),
                minute: NOW - NOW % 60,
                admitted: 3,
                forbidden: 1,
                rate_limited: 0,
                refused: 2,
                operations: vec![OperationCount { name: "GetUser".into(), count: 3 }],
            }],
            dropped: 0,
        }
    }

    #[test]
    fn a_signed_batch_verifies_and_a_sync_signature_does_not() {
        let secret = SyncSecret::new("s3cret");
        let body = serde_json::to_vec(&batch()).unwrap();
        let signature = sign(&secret, NOW, &body);
        assert_eq!(verify(&secret, &NOW.to_string(), &signature, &body, NOW), Ok(NOW));
        // The same secret signing the same bytes as a sync push does not make a usage signature.
        let push_signature = secret.sign(NOW, &body);
        assert_ne!(push_signature, signature);
        assert_eq!(verify(&secret, &NOW.to_string(), &push_signature, &body, NOW), Err(SyncError::BadSignature));
        assert_eq!(
            secret.verify(&NOW.to_string(), &signature, &body, NOW),
            Err(SyncError::BadSignature),
            "a usage signature does not pass for a push"
        );
        assert_eq!(verify(&secret, &NOW.to_string(), &signature, &body, NOW + 301), Err(SyncError::StaleTimestamp));
    }

    #[test]
    fn the_wire_form_round_trips_and_refuses_unknown_fields() {
        let json = serde_json::to_value(batch()).unwrap();
        assert_eq!(json["rows"][0]["key_id"], "0000000000000000000007");
        assert_eq!(json["rows"][0]["operations"][0]["name"], "GetUser");
        let back: UsageBatch = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, batch());
        let mut extra = json;
        extra["rows"][0]["bogus"] = 1.into();
        assert!(serde_json::from_value::<UsageBatch>(extra).is_err());
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(batch().validate(), Ok(()));
        let mut bad = batch();
        bad.batch_id = "0123456789ABCDEF0123456789abcdef".into();
        assert_eq!(bad.validate(), Err(UsageError::BadBatchId));
        let mut bad = batch();
        bad.rows[0].minute += 1;
        assert_eq!(bad.validate(), Err(UsageError::BadMinute));
        let mut bad = batch();
        bad.rows[0].operations[0].name = String::new();
        assert_eq!(bad.validate(), Err(UsageError::BadOperation));
        let mut bad = batch();
        bad.rows[0].operations[0].count = MAX_COUNT + 1;
        assert_eq!(bad.validate(), Err(UsageError::BadCount));
        let mut bad = batch();
        bad.rows[0].refused = MAX_COUNT + 1;
        assert_eq!(bad.validate(), Err(UsageError::BadCount));
        let mut bad = batch();
        bad.rows = vec![batch().rows[0].clone(); MAX_ROWS_PER_BATCH + 1];
        assert_eq!(bad.validate(), Err(UsageError::TooManyRows));
    }

    #[test]
    fn operation_names_are_kept_short_and_named() {
        assert_eq!(operation_name(None), ANONYMOUS_OPERATION);
        assert_eq!(operation_name(Some("")), ANONYMOUS_OPERATION);
        assert_eq!(operation_name(Some("GetUser")), "GetUser");
        let long = "é".repeat(100);
        let cut = operation_name(Some(&long));
        assert!(cut.len() <= MAX_OPERATION_NAME_LEN && cut.len() >= MAX_OPERATION_NAME_LEN - 1);
        assert!(long.starts_with(cut));
    }
}
