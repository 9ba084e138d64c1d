//! An in-place change of a key's settings (`PATCH /admin/api-keys/{id}`, `keygate keys update`):
//! the request, checked with create's rules, applied to the stored row, and what it changed.
//!
//! Each field is three-way: absent leaves it as it is, a value sets it, and `null` clears `owner`,
//! resets `metadata` to `{}` and is refused for every other field (a key always has a name, a tier,
//! a permission list, an expiry and a state).

use serde_json::{json, Map, Value};

use crate::service::{self, ServiceError, MAX_EXPIRY_DAYS};
use crate::store::KeyRow;

/// Seconds in a day.
const DAY: i64 = 86_400;

/// What to change. For each field, `None` leaves it as it is and `Some(None)` is an explicit `null`.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    /// Display name, 1 to 200 characters.
    pub name: Option<Option<String>>,
    /// Rate-limit tier, `[a-z0-9_-]{1,32}`.
    pub tier: Option<Option<String>>,
    /// Permission strings: the whole new set.
    pub permissions: Option<Option<Vec<String>>>,
    /// A JSON object of at most 8 KiB; `null` resets it to `{}`.
    pub metadata: Option<Option<Value>>,
    /// Owner, up to 200 characters; `null` clears it.
    pub owner: Option<Option<String>>,
    /// New expiry, RFC 3339; clamped to [`MAX_EXPIRY_DAYS`] after the key was made, and one not later
    /// than now expires the key at once.
    pub expires_at: Option<Option<String>>,
    /// `false` switches the key off (it answers like a revoked one), `true` on again.
    pub enabled: Option<Option<bool>>,
}

/// An update whose values passed create's rules; the expiry is checked against the row in [`apply`].
#[derive(Debug, Clone)]
pub struct CheckedUpdate {
    name: Option<String>,
    tier: Option<String>,
    permissions: Option<Vec<String>>,
    metadata: Option<Value>,
    owner: Option<Option<String>>,
    expires_at: Option<i64>,
    enabled: Option<bool>,
}

/// `null` for a field that cannot be cleared.
fn not_null<T>(field: Option<Option<T>>, code: &'static str, name: &str) -> Result<Option<T>, ServiceError> {
    match field {
        None => Ok(None),
        Some(Some(value)) => Ok(Some(value)),
        Some(None) => Err(ServiceError::invalid(code, format!("{name} cannot be null"))),
    }
}

/// RFC 3339 text as unix seconds (a fraction of a second is dropped).
fn parse_time(text: &str) -> Result<i64, ServiceError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .map_err(|_| ServiceError::invalid("invalid_expiry", "expires_at must be an RFC 3339 time"))
}

impl KeyUpdate {
    /// Whether no field is given.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.tier.is_none()
            && self.permissions.is_none()
            && self.metadata.is_none()
            && self.owner.is_none()
            && self.expires_at.is_none()
            && self.enabled.is_none()
    }

    /// Checks every given value with the rules `create` uses; nothing is read or written.
    pub fn check(self) -> Result<CheckedUpdate, ServiceError> {
        if self.is_empty() {
            return Err(ServiceError::invalid(
                "empty_update",
                "give at least one of name, tier, permissions, metadata, owner, expires_at, enabled",
            ));
        }
        let name = not_null(self.name, "invalid_name", "name")?.map(|n| service::check_name(&n)).transpose()?;
        let tier = not_null(self.tier, "invalid_tier", "tier")?.map(service::check_tier).transpose()?;
        let permissions = not_null(self.permissions, "invalid_permission", "permissions")?
            .map(|p| service::check_permissions(&p))
            .transpose()?;
        let metadata = self.metadata.map(service::check_metadata).transpose()?;
        let owner = self.owner.map(service::check_owner).transpose()?;
        let expires_at =
            not_null(self.expires_at, "invalid_expiry", "expires_at")?.map(|t| parse_time(&t)).transpose()?;
        let enabled = not_null(self.enabled, "invalid_enabled", "enabled")?;
        Ok(CheckedUpdate { name, tier, permissions, metadata, owner, expires_at, enabled })
    }
}

impl CheckedUpdate {
    /// `row` as it will be stored after the update at `now`, one revision on. A new expiry is taken
    /// as given up to [`MAX_EXPIRY_DAYS`] after the key was made (the longest lifetime `create` gives)
    /// and clamped to that; one not later than `now` expires the key at once (a later update can move
    /// it again).
    pub fn apply(self, row: &KeyRow, now: i64) -> Result<KeyRow, ServiceError> {
        let mut updated = row.clone();
        updated.revision = row.revision + 1;
        if let Some(name) = self.name {
            updated.name = name;
        }
        if let Some(tier) = self.tier {
            updated.tier = tier;
        }
        if let Some(permissions) = self.permissions {
            updated.permissions = permissions;
        }
        if let Some(metadata) = self.metadata {
            updated.metadata = metadata;
        }
        if let Some(owner) = self.owner {
            updated.owner = owner;
        }
        if let Some(end) = self.expires_at {
            updated.expires_at = Some(end.min(row.created_at.saturating_add(MAX_EXPIRY_DAYS * DAY)));
        }
        match self.enabled {
            // Disabling a disabled key keeps the time it was first switched off.
            Some(false) => updated.disabled_at = row.disabled_at.or(Some(now)),
            Some(true) => updated.disabled_at = None,
            None => {}
        }
        Ok(updated)
    }
}

/// What differs between `before` and `after`, field by field: `{"name": {"old": .., "new": ..}, ...}`.
/// Times are unix seconds; the state is the `enabled` boolean.
pub fn changes(before: &KeyRow, after: &KeyRow) -> Map<String, Value> {
    let fields = [
        ("name", json!(before.name), json!(after.name)),
        ("tier", json!(before.tier), json!(after.tier)),
        ("permissions", json!(before.permissions), json!(after.permissions)),
        ("metadata", before.metadata.clone(), after.metadata.clone()),
        ("owner", json!(before.owner), json!(after.owner)),
        ("expires_at", json!(before.expires_at), json!(after.expires_at)),
        ("enabled", json!(before.disabled_at.is_none()), json!(after.disabled_at.is_none())),
    ];
    fields
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(field, old, new)| (field.to_owned(), json!({"old": old, "new": new})))
        .collect()
}
