//! Permissions a key carries, and the decision whether they allow a GraphQL request or an admin action.
//!
//! Edge rules (DESIGN.md): a query needs `query:read` or `read:*`, a mutation `mutation:write` or
//! `write:*`, a subscription `subscription:read`; `*` allows every operation and any batch; a JSON array
//! (batch) of N operations also needs `batch:M` with M ≥ N. `*` does not make a key an admin key: admin
//! actions need `admin:*` or the named `admin:` scope. Other well-formed strings are kept for the origin
//! to interpret.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest permission string accepted.
pub const MAX_PERMISSION_LEN: usize = 64;

/// A GraphQL operation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// `query` (and an anonymous `{ ... }` document).
    Query,
    /// `mutation`.
    Mutation,
    /// `subscription`.
    Subscription,
}

impl OperationKind {
    /// The keyword, as written in GraphQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Mutation => "mutation",
            Self::Subscription => "subscription",
        }
    }
}

/// A narrow admin scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminScope {
    /// `admin:keys:read`: list and show keys.
    KeysRead,
    /// `admin:keys:write`: create, rotate, revoke.
    KeysWrite,
    /// `admin:reveal`: show a key's secret again.
    Reveal,
    /// `admin:audit:read`: read the audit log.
    AuditRead,
    /// `admin:kms`: rewrap data keys.
    Kms,
    /// `admin:origin-keys`: rotate the keys that sign the origin's JWTs.
    OriginKeys,
}

impl AdminScope {
    /// Every scope, for tables and tests.
    pub const ALL: [AdminScope; 6] =
        [Self::KeysRead, Self::KeysWrite, Self::Reveal, Self::AuditRead, Self::Kms, Self::OriginKeys];

    /// The permission string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeysRead => "admin:keys:read",
            Self::KeysWrite => "admin:keys:write",
            Self::Reveal => "admin:reveal",
            Self::AuditRead => "admin:audit:read",
            Self::Kms => "admin:kms",
            Self::OriginKeys => "admin:origin-keys",
        }
    }
}

/// One permission.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `*`: every GraphQL operation, any batch size.
    All,
    /// `read:*`: queries.
    ReadAll,
    /// `write:*`: mutations.
    WriteAll,
    /// `query:read`.
    QueryRead,
    /// `mutation:write`.
    MutationWrite,
    /// `subscription:read`.
    SubscriptionRead,
    /// `batch:N`: JSON-array batches of up to N operations.
    Batch(u32),
    /// `admin:*`: every admin scope.
    AdminAll,
    /// A narrow admin scope.
    Admin(AdminScope),
    /// Any other well-formed permission, passed on for the origin to interpret.
    Custom(String),
}

/// A permission string that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PermissionError {
    /// Empty, longer than [`MAX_PERMISSION_LEN`], or not `segment(:segment)*` of `[a-z0-9_*.-]`.
    Malformed,
    /// `batch:` followed by something other than a whole number from 1 to 4294967295.
    BadBatchSize,
    /// `admin:` followed by a scope keygate does not have.
    UnknownAdminScope,
}

impl PermissionError {
    /// A stable, greppable identifier for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "invalid_permission",
            Self::BadBatchSize => "invalid_batch_size",
            Self::UnknownAdminScope => "unknown_admin_scope",
        }
    }
}

impl fmt::Display for PermissionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "a permission is 1 to 64 characters of [a-z0-9_*.-] in ':'-separated segments",
            Self::BadBatchSize => "batch:N needs N to be a whole number from 1 to 4294967295",
            Self::UnknownAdminScope => {
                "admin scopes are admin:*, admin:keys:read, admin:keys:write, admin:reveal, admin:audit:read, admin:kms, admin:origin-keys"
            }
        })
    }
}

impl core::error::Error for PermissionError {}

fn is_well_formed(text: &str) -> bool {
    (1..=MAX_PERMISSION_LEN).contains(&text.len())
        && text.split(':').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'*' | b'.' | b'-'))
        })
}

impl FromStr for Permission {
    type Err = PermissionError;

    fn from_str(text: &str) -> Result<Self, PermissionError> {
        if !is_well_formed(text) {
            return Err(PermissionError::Malformed);
        }
        Ok(match text {
            "*" => Self::All,
            "read:*" => Self::ReadAll,
            "write:*" => Self::WriteAll,
            "query:read" => Self::QueryRead,
            "mutation:write" => Self::MutationWrite,
            "subscription:read" => Self::SubscriptionRead,
            "admin:*" => Self::AdminAll,
            _ => {
                if let Some(size) = text.strip_prefix("batch:") {
                    let digits_only = size.bytes().all(|b| b.is_ascii_digit());
                    return match size.parse::<u32>() {
                        Ok(n) if n > 0 && digits_only => Ok(Self::Batch(n)),
                        _ => Err(PermissionError::BadBatchSize),
                    };
                }
                if text.starts_with("admin:") {
                    return AdminScope::ALL
                        .into_iter()
                        .find(|scope| scope.as_str() == text)
                        .map(Self::Admin)
                        .ok_or(PermissionError::UnknownAdminScope);
                }
                Self::Custom(text.into())
            }
        })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::ReadAll => f.write_str("read:*"),
            Self::WriteAll => f.write_str("write:*"),
            Self::QueryRead => f.write_str("query:read"),
            Self::MutationWrite => f.write_str("mutation:write"),
            Self::SubscriptionRead => f.write_str("subscription:read"),
            Self::Batch(n) => write!(f, "batch:{n}"),
            Self::AdminAll => f.write_str("admin:*"),
            Self::Admin(scope) => f.write_str(scope.as_str()),
            Self::Custom(text) => f.write_str(text),
        }
    }
}

/// Why a request is refused by a key's permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// The key may not run this kind of operation.
    Operation(OperationKind),
    /// The batch is larger than the key's `batch:N` (0 when it has none).
    BatchTooLarge {
        /// Operations in the request.
        size: usize,
        /// The largest batch the key may send.
        allowed: u32,
    },
}

impl Denial {
    /// A stable, greppable identifier.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Operation(_) => "operation_not_permitted",
            Self::BatchTooLarge { .. } => "batch_too_large",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operation(kind) => write!(f, "this key may not run a {}", kind.as_str()),
            Self::BatchTooLarge { size, allowed: 0 } => write!(f, "this key may not send batches ({size} operations)"),
            Self::BatchTooLarge { size, allowed } => {
                write!(f, "this key may send batches of up to {allowed} operations, not {size}")
            }
        }
    }
}

/// The permissions of one key, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet(Vec<Permission>);

impl PermissionSet {
    /// Parses every string; the first malformed one fails the whole set.
    pub fn parse<I, S>(items: I) -> Result<Self, PermissionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        items.into_iter().map(|item| item.as_ref().parse()).collect::<Result<_, _>>().map(Self)
    }

    /// The permissions.
    pub fn iter(&self) -> impl Iterator<Item = &Permission> {
        self.0.iter()
    }

    /// The permission strings, as stored.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    fn has(&self, wanted: &Permission) -> bool {
        self.0.contains(wanted)
    }

    /// Whether the key may run one operation of this kind.
    pub fn allows(&self, kind: OperationKind) -> bool {
        self.has(&Permission::All)
            || match kind {
                OperationKind::Query => self.has(&Permission::QueryRead) || self.has(&Permission::ReadAll),
                OperationKind::Mutation => self.has(&Permission::MutationWrite) || self.has(&Permission::WriteAll),
                OperationKind::Subscription => self.has(&Permission::SubscriptionRead),
            }
    }

    /// The largest batch the key may send: `u32::MAX` for `*`, 0 when it may not batch.
    pub fn max_batch(&self) -> u32 {
        if self.has(&Permission::All) {
            return u32::MAX;
        }
        self.0
            .iter()
            .filter_map(|p| match p {
                Permission::Batch(n) => Some(*n),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Decides a request: `operations` are the operations it runs, `batch` whether the body was a JSON array.
    pub fn check_request(&self, operations: &[OperationKind], batch: bool) -> Result<(), Denial> {
        if batch {
            let allowed = self.max_batch();
            if u32::try_from(operations.len()).map_or(true, |size| size > allowed) {
                return Err(Denial::BatchTooLarge { size: operations.len(), allowed });
            }
        }
        match operations.iter().find(|kind| !self.allows(**kind)) {
            Some(kind) => Err(Denial::Operation(*kind)),
            None => Ok(()),
        }
    }

    /// Whether the key may perform admin actions of this scope.
    pub fn allows_admin(&self, scope: AdminScope) -> bool {
        self.has(&Permission::AdminAll) || self.has(&Permission::Admin(scope))
    }

    /// Whether the key holds any admin permission.
    pub fn is_admin(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Permission::AdminAll | Permission::Admin(_)))
    }
}

impl Serialize for PermissionSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for PermissionSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = <Vec<alloc::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
        Self::parse(items).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationKind::*;

    fn set(items: &[&str]) -> PermissionSet {
        PermissionSet::parse(items).unwrap()
    }

    #[test]
    fn each_operation_needs_its_permission() {
        assert!(set(&["query:read"]).allows(Query));
        assert!(set(&["read:*"]).allows(Query));
        assert!(!set(&["read:*"]).allows(Mutation));
        assert!(!set(&["read:*"]).allows(Subscription));
        assert!(set(&["mutation:write"]).allows(Mutation));
        assert!(set(&["write:*"]).allows(Mutation));
        assert!(!set(&["write:*"]).allows(Query));
        assert!(set(&["subscription:read"]).allows(Subscription));
        assert!(!set(&["subscription:read"]).allows(Query));
        for kind in [Query, Mutation, Subscription] {
            assert!(set(&["*"]).allows(kind));
            assert!(!set(&[]).allows(kind));
            assert!(!set(&["admin:*"]).allows(kind));
        }
    }

    #[test]
    fn batches_need_a_large_enough_batch_permission() {
        let reader = set(&["query:read", "batch:3"]);
        assert_eq!(reader.check_request(&[Query, Query, Query], true), Ok(()));
        assert_eq!(reader.check_request(&[Query; 4], true), Err(Denial::BatchTooLarge { size: 4, allowed: 3 }));
        assert_eq!(
            set(&["query:read"]).check_request(&[Query], true),
            Err(Denial::BatchTooLarge { size: 1, allowed: 0 })
        );
        assert_eq!(set(&["query:read"]).check_request(&[Query], false), Ok(()));
        assert_eq!(set(&["*"]).check_request(&[Mutation; 50], true), Ok(()));
        assert_eq!(reader.check_request(&[Query, Mutation], true), Err(Denial::Operation(Mutation)));
    }

    #[test]
    fn admin_scopes_are_separate_from_graphql_permissions() {
        assert!(set(&["admin:*"]).allows_admin(AdminScope::Reveal));
        assert!(set(&["admin:keys:read"]).allows_admin(AdminScope::KeysRead));
        assert!(!set(&["admin:keys:read"]).allows_admin(AdminScope::KeysWrite));
        assert!(!set(&["*"]).allows_admin(AdminScope::KeysRead));
        assert!(!set(&["*"]).is_admin());
        assert!(set(&["admin:kms"]).is_admin());
    }

    #[test]
    fn malformed_permissions_are_refused() {
        for (text, error) in [
            ("", PermissionError::Malformed),
            ("Query:read", PermissionError::Malformed),
            ("query::read", PermissionError::Malformed),
            ("query read", PermissionError::Malformed),
            ("batch:0", PermissionError::BadBatchSize),
            ("batch:+5", PermissionError::Malformed),
            ("batch:x", PermissionError::BadBatchSize),
            ("batch:99999999999", PermissionError::BadBatchSize),
            ("admin:everything", PermissionError::UnknownAdminScope),
        ] {
            assert_eq!(text.parse::<Permission>(), Err(error), "{text:?}");
        }
        assert_eq!(PermissionSet::parse(["x".repeat(65)]), Err(PermissionError::Malformed));
        assert_eq!("orders:read".parse(), Ok(Permission::Custom("orders:read".into())));
    }

    #[test]
    fn permission_strings_round_trip_through_serde() {
        let strings = [
            "*",
            "read:*",
            "write:*",
            "query:read",
            "mutation:write",
            "subscription:read",
            "batch:10",
            "admin:*",
            "admin:audit:read",
            "orders:read",
        ];
        let parsed = set(&strings);
        assert_eq!(parsed.to_strings(), strings);
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(serde_json::from_str::<PermissionSet>(&json).unwrap(), parsed);
        assert!(serde_json::from_str::<PermissionSet>(r#"["batch:0"]"#).is_err());
    }
}
