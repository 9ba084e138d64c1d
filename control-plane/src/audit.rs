//! The audit log's hash chain: each entry carries the hash of the one before, so an edited, inserted or
//! deleted entry breaks the chain at that point, and a truncated tail no longer matches the stored head.

use keygate_shared::KeyId;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The hash that stands before the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry to append: the store assigns its sequence number and chain hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    /// Unix seconds.
    pub at: i64,
    /// Who acted: `admin:<key id>`, `cli`, or `anonymous` for a refused request without a usable key.
    pub actor: String,
    /// What was attempted, e.g. `key.create`.
    pub action: String,
    /// The API key acted on, if any.
    pub key_id: Option<KeyId>,
    /// `ok`, or the refusal's error code.
    pub outcome: String,
    /// More about it, as a JSON object (never a secret).
    pub detail: String,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who acted.
    pub actor: String,
    /// What was attempted.
    pub action: String,
    /// The API key acted on, if any.
    pub key_id: Option<String>,
    /// `ok`, or the refusal's error code.
    pub outcome: String,
    /// JSON object text.
    pub detail: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

impl AuditEntry {
    /// The entry a draft becomes at `seq` after `prev_hash`.
    pub fn seal(draft: &AuditDraft, seq: i64, prev_hash: &str) -> Self {
        let mut entry = Self {
            seq,
            at: draft.at,
            actor: draft.actor.clone(),
            action: draft.action.clone(),
            key_id: draft.key_id.map(|id| id.to_string()),
            outcome: draft.outcome.clone(),
            detail: draft.detail.clone(),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.chain_hash();
        entry
    }

    /// SHA-256 over the previous hash and every field, each length-prefixed so no two different entries
    /// serialize alike.
    pub fn chain_hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"keygate audit v1");
        let (seq, at) = (self.seq.to_string(), self.at.to_string());
        let key_id = self.key_id.as_deref().unwrap_or("\u{0}none");
        for field in [&self.prev_hash, &seq, &at, &self.actor, &self.action, key_id, &self.outcome, &self.detail] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// An entry's fields no longer hash to its stored hash: it was edited.
    #[error("entry {0} was altered: its hash does not match its contents")]
    Altered(i64),
    /// An entry does not follow the one before it: entries were deleted, inserted or reordered.
    #[error("entry {0} does not follow the entry before it")]
    Broken(i64),
    /// The chain ends before the recorded head: entries at the end were deleted.
    #[error("the log ends at entry {found}, but the head records entry {head}")]
    Truncated {
        /// The last entry found.
        found: i64,
        /// The last entry recorded by the head.
        head: i64,
    },
}

/// Checks `entries` (in sequence order) against each other and against the recorded head; returns
/// how many entries were checked.
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    head_seq: i64,
    head_hash: &str,
) -> Result<i64, ChainBreak> {
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut last = 0;
    for entry in entries {
        if entry.seq != last + 1 || entry.prev_hash != prev_hash {
            return Err(ChainBreak::Broken(entry.seq));
        }
        if entry.chain_hash() != entry.hash {
            return Err(ChainBreak::Altered(entry.seq));
        }
        prev_hash.clone_from(&entry.hash);
        last = entry.seq;
    }
    if last != head_seq || prev_hash != head_hash {
        return Err(ChainBreak::Truncated { found: last, head: head_seq });
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let draft = AuditDraft {
                    at: 1_000 + seq,
                    actor: "cli".into(),
                    action: "key.create".into(),
                    key_id: Some(KeyId::from_u128(seq as u128)),
                    outcome: "ok".into(),
                    detail: "{}".into(),
                };
                let entry = AuditEntry::seal(&draft, seq, &prev);
                prev.clone_from(&entry.hash);
                entry
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let entries = chain(5);
        assert_eq!(verify_chain(&entries, 5, &entries[4].hash), Ok(5));
        assert_eq!(verify_chain(&[], 0, GENESIS_HASH), Ok(0));
    }

    #[test]
    fn edits_deletions_and_truncation_are_found() {
        let entries = chain(5);
        let head = entries[4].hash.clone();
        let mut edited = entries.clone();
        edited[2].outcome = "denied".into();
        assert_eq!(verify_chain(&edited, 5, &head), Err(ChainBreak::Altered(3)));
        let mut deleted = entries.clone();
        deleted.remove(1);
        assert_eq!(verify_chain(&deleted, 5, &head), Err(ChainBreak::Broken(3)));
        assert_eq!(verify_chain(&entries[..4], 5, &head), Err(ChainBreak::Truncated { found: 4, head: 5 }));
        // Rehashing an edited entry does not help: the next entry no longer follows it.
        let mut rehashed = entries.clone();
        rehashed[2].detail = r#"{"x":1}"#.into();
        rehashed[2].hash = rehashed[2].chain_hash();
        assert_eq!(verify_chain(&rehashed, 5, &head), Err(ChainBreak::Broken(4)));
    }

    #[test]
    fn fields_cannot_be_shifted_between_each_other() {
        let mut a = chain(1).remove(0);
        a.actor = "ab".into();
        a.action = "c".into();
        let mut b = a.clone();
        b.actor = "a".into();
        b.action = "bc".into();
        assert_ne!(a.chain_hash(), b.chain_hash());
    }
}
