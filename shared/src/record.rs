//! The replicated key record — what the edge knows of a key — and the check of a presented key against it.
//!
//! Times are unix seconds. The clock is a parameter: callers pass `now`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use subtle::{Choice, ConstantTimeEq};

use crate::hash::SecretHash;
use crate::key::{KeyId, ParsedKey};
use crate::permissions::PermissionSet;

/// One generation of a key's secret, as replicated: its hash and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEntry {
    /// SHA-256 of the whole key of this generation.
    pub hash: SecretHash,
    /// End of the grace period (unix seconds, exclusive); `None` for the current generation.
    pub not_after: Option<i64>,
}

impl SecretEntry {
    /// Whether this generation still opens the door at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.not_after.is_none_or(|end| now < end)
    }
}

/// What the edge holds for one key id. A newer `seq` replaces an older record; an older one is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key id.
    pub key_id: KeyId,
    /// The control plane's change sequence number for this key; higher wins.
    pub seq: u64,
    /// Rate-limit tier, e.g. `default` or `premium`.
    pub tier: String,
    /// What the key may do.
    pub permissions: PermissionSet,
    /// When the key expires (unix seconds, exclusive); `None` for never.
    pub expires_at: Option<i64>,
    /// Whether the key was revoked. A revoked record is kept so an older record can never bring it back.
    pub revoked: bool,
    /// Whether an operator switched the key off. Unlike a revocation it can be undone: a newer record
    /// with `disabled` false lets the key in again. Absent (false) from records replicated before it
    /// existed, and left out of the wire form when false, so an enabled key's record is unchanged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// Every generation whose secret may still work: the current one and those in their grace period.
    pub secrets: Vec<SecretEntry>,
    /// Who the key belongs to, if anyone: the origin sees it as the JWT's `tenant_id`. Absent from
    /// records replicated before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

/// Why a well-formed key is refused by its record. The edge answers every one the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No record for this key id (or the record is for another id).
    UnknownKey,
    /// The secret matches no live generation (wrong, or its grace period has ended).
    WrongSecret,
    /// The key was revoked.
    Revoked,
    /// The key is past its expiry.
    Expired,
    /// The key is switched off (until an operator enables it again).
    Disabled,
}

impl Refusal {
    /// A stable, greppable identifier, for logs and metrics (never for the client, which sees one answer).
    pub fn code(self) -> &'static str {
        match self {
            Self::UnknownKey => "unknown_key",
            Self::WrongSecret => "wrong_secret",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownKey => "no such key",
            Self::WrongSecret => "the secret does not match",
            Self::Revoked => "the key was revoked",
            Self::Expired => "the key has expired",
            Self::Disabled => "the key is disabled",
        })
    }
}

impl core::error::Error for Refusal {}

impl KeyRecord {
    /// Checks a presented key at `now`: secret against every live generation (constant time, no early
    /// exit), then revocation, then being disabled, then expiry. Permissions and rate limits come after, elsewhere.
    pub fn check(&self, key: &ParsedKey<'_>, now: i64) -> Result<(), Refusal> {
        let presented = key.hash();
        let mut matched = Choice::from(0);
        for secret in &self.secrets {
            matched |= secret.hash.ct_eq(&presented) & Choice::from(u8::from(secret.is_live(now)));
        }
        if !bool::from(matched) {
            // The hash covers the whole key, key id included, so a match proves the id: only a miss
            // decodes it, to say which refusal this is.
            return Err(if self.key_id == key.key_id() { Refusal::WrongSecret } else { Refusal::UnknownKey });
        }
        if self.revoked {
            return Err(Refusal::Revoked);
        }
        if self.disabled {
            return Err(Refusal::Disabled);
        }
        if self.is_expired(now) {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    /// When a key that passes [`check`](Self::check) stops passing with no change to this record:
    /// the earlier of the key's expiry and the end of the secret generation it presents (unix
    /// seconds), or `None` if neither ends.
    pub fn good_until(&self, key: &ParsedKey<'_>) -> Option<i64> {
        let presented = key.hash();
        let secret_end = self
            .secrets
            .iter()
            .filter(|secret| bool::from(secret.hash.ct_eq(&presented)))
            .filter_map(|secret| secret.not_after)
            .min();
        match (self.expires_at, secret_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the key is past its expiry at `now`.
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|end| now >= end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ApiKey, KeySecret, Prefix, Region};

    fn key(secret_byte: u8) -> ApiKey {
        ApiKey::assemble(
            &Prefix::default(),
            &Region::default(),
            KeyId::from(7),
            &KeySecret::from_bytes([secret_byte; 32]),
        )
    }

    fn record(secrets: Vec<SecretEntry>) -> KeyRecord {
        KeyRecord {
            key_id: KeyId::from(7),
            seq: 1,
            tier: "default".into(),
            permissions: PermissionSet::parse(["query:read"]).unwrap(),
            expires_at: Some(1_000),
            revoked: false,
            disabled: false,
            secrets,
            owner: None,
        }
    }

    #[test]
    fn a_key_is_good_until_its_expiry_or_its_generations_end() {
        let (old, new) = (key(1), key(2));
        let mut record = record(vec![
            SecretEntry { hash: new.hash(), not_after: None },
            SecretEntry { hash: old.hash(), not_after: Some(500) },
        ]);
        assert_eq!(record.good_until(&new.parts()), Some(1_000));
        assert_eq!(record.good_until(&old.parts()), Some(500));
        record.expires_at = None;
        assert_eq!(record.good_until(&new.parts()), None);
        assert_eq!(record.good_until(&old.parts()), Some(500));
        // Where the answer says a key is good, check agrees; from then on it does not.
        record.expires_at = Some(400);
        assert_eq!(record.check(&old.parts(), 399), Ok(()));
        assert!(record.check(&old.parts(), record.good_until(&old.parts()).unwrap()).is_err());
    }

    #[test]
    fn current_and_grace_secrets_work_until_their_end() {
        let (old, new) = (key(1), key(2));
        let record = record(vec![
            SecretEntry { hash: new.hash(), not_after: None },
            SecretEntry { hash: old.hash(), not_after: Some(500) },
        ]);
        assert_eq!(record.check(&new.parts(), 499), Ok(()));
        assert_eq!(record.check(&old.parts(), 499), Ok(()));
        assert_eq!(record.check(&old.parts(), 500), Err(Refusal::WrongSecret));
        assert_eq!(record.check(&new.parts(), 500), Ok(()));
        assert_eq!(record.check(&key(3).parts(), 0), Err(Refusal::WrongSecret));
    }

    #[test]
    fn revocation_and_expiry_refuse_a_right_secret() {
        let good = key(1);
        let mut record = record(vec![SecretEntry { hash: good.hash(), not_after: None }]);
        assert_eq!(record.check(&good.parts(), 999), Ok(()));
        assert_eq!(record.check(&good.parts(), 1_000), Err(Refusal::Expired));
        record.revoked = true;
        assert_eq!(record.check(&good.parts(), 0), Err(Refusal::Revoked));
    }

    #[test]
    fn a_record_for_another_id_does_not_match() {
        // Same secret, other id: the hash covers the id, so it cannot match, and the miss says why.
        let other =
            ApiKey::assemble(&Prefix::default(), &Region::default(), KeyId::from(8), &KeySecret::from_bytes([1; 32]));
        let record = record(vec![SecretEntry { hash: key(1).hash(), not_after: None }]);
        assert_eq!(record.check(&other.parts(), 0), Err(Refusal::UnknownKey));
        assert_eq!(record.check(&key(2).parts(), 0), Err(Refusal::WrongSecret));
    }

    #[test]
    fn wire_form_is_the_one_design_md_names() {
        let good = key(1);
        let record = record(vec![SecretEntry { hash: good.hash(), not_after: Some(5) }]);
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(json["key_id"], "0000000000000000000007");
        assert_eq!(json["permissions"], serde_json::json!(["query:read"]));
        assert_eq!(json["secrets"][0]["hash"], good.hash().to_hex());
        assert_eq!(json["secrets"][0]["not_after"], 5);
        assert_eq!(json["expires_at"], 1_000);
        assert_eq!(json["revoked"], false);
        assert!(json.get("disabled").is_none(), "an enabled key's wire form is the one before `disabled` existed");
        let back: KeyRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn a_disabled_key_is_refused_until_a_newer_record_enables_it() {
        let good = key(1);
        let mut record = record(vec![SecretEntry { hash: good.hash(), not_after: None }]);
        record.disabled = true;
        assert_eq!(record.check(&good.parts(), 0), Err(Refusal::Disabled));
        assert_eq!(record.check(&key(2).parts(), 0), Err(Refusal::WrongSecret), "the secret is checked first");
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["disabled"], true);
        assert_eq!(serde_json::from_value::<KeyRecord>(json).unwrap(), record);
        record.disabled = false;
        assert_eq!(record.check(&good.parts(), 0), Ok(()));
        record.revoked = true;
        record.disabled = true;
        assert_eq!(record.check(&good.parts(), 0), Err(Refusal::Revoked), "revocation is named first");
    }
}
