//! Leaked keys revoke themselves: the policy, GitHub's secret-scanning public keys (re-read when their
//! file changes) and the handling of one reported token, shared by GitHub's reports and self-reports.
//!
//! A token is checked for shape and checksum first, so garbage costs no database read; a real key's
//! revocation is [`Service::revoke_noting`], the normal revoke with its outbox record for the edge.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use base64::Engine as _;
use keygate_shared::{KeyId, ParsedKey};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use serde_json::json;

use crate::audit::AuditDraft;
use crate::leak_webhook::{LeakNotice, LeakWebhook};
use crate::service::{Actor, Service, ServiceError};
use crate::store::Change;

/// The audit actor of a report signed by GitHub.
pub const GITHUB_ACTOR: Actor = Actor::Reporter("github-secret-scanning");
/// The audit actor of a key presented by whoever holds it.
pub const SELF_REPORT_ACTOR: Actor = Actor::Reporter("leak-report");
/// The revocation reason of a leaked key.
pub const LEAKED: &str = "leaked";
/// Longest `url` or `source` kept in the audit entry (GitHub's are far shorter).
pub const MAX_NOTE_CHARS: usize = 500;
/// How often, at most, a request looks at the key file's metadata.
const RECHECK_MS: i64 = 1_000;

/// What a report of a live key does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnLeak {
    /// Revoke it at once (reason `leaked`).
    #[default]
    Revoke,
    /// Only record the report in the audit log; the key keeps working.
    Notify,
}

/// The leak settings of a deployment.
#[derive(Debug, Clone, Default)]
pub struct LeakSettings {
    /// What a report of a live key does.
    pub on_leak: OnLeak,
    /// GitHub's public keys; without them every GitHub report is refused (401).
    pub github_keys: Option<std::sync::Arc<GithubKeys>>,
    /// Where the owner of a reported key is told, if anywhere.
    pub webhook: Option<std::sync::Arc<LeakWebhook>>,
}

/// GitHub's verdict for one token: is it a real secret of this deployment?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// A well-formed key whose secret matches a stored generation (live or not).
    TruePositive,
    /// Anything else: malformed, bad checksum, unknown id, or a secret that matches nothing.
    FalsePositive,
}

impl Label {
    /// GitHub's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruePositive => "true_positive",
            Self::FalsePositive => "false_positive",
        }
    }
}

/// Where a reported token was found, for the audit entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct FoundAt<'a> {
    /// The public URL it was found at.
    pub url: Option<&'a str>,
    /// GitHub's `source` (`content`, `commit`, `issue_comment`, ...) or the reporter's words.
    pub source: Option<&'a str>,
}

fn note(found: FoundAt<'_>) -> serde_json::Map<String, serde_json::Value> {
    let cut = |text: Option<&str>| text.map(|t| t.chars().take(MAX_NOTE_CHARS).collect::<String>());
    let mut note = serde_json::Map::new();
    note.insert("url".into(), json!(cut(found.url)));
    note.insert("source".into(), json!(cut(found.source)));
    note
}

/// Handles one reported token: its label, and the revocation of a key it opens (per the policy).
/// A token failing shape or checksum is answered without any storage read.
pub async fn handle_token(
    service: &Service,
    actor: &Actor,
    token: &str,
    found: FoundAt<'_>,
) -> Result<Label, ServiceError> {
    let Ok(parsed) = ParsedKey::parse(token) else {
        return Ok(Label::FalsePositive);
    };
    let id = parsed.key_id();
    let Some(row) = service.store().key(id).await? else {
        return Ok(Label::FalsePositive);
    };
    let presented = parsed.hash();
    let secrets = service.store().secrets(id).await?;
    // Every generation is compared (constant-time `==`), so which one matched leaks no timing.
    let mut matched = None;
    for secret in &secrets {
        if secret.secret_hash == presented {
            matched = Some(secret.not_after);
        }
    }
    let Some(not_after) = matched else {
        return Ok(Label::FalsePositive);
    };
    let now = service.clock().now();
    let still_opens = not_after.is_none_or(|end| now < end);
    metrics::counter!("keygate_leaks_reported_total", "actor" => actor_name(actor)).increment(1);
    if !still_opens && row.revoked_at.is_none() {
        // An old generation past its grace: the key's current secret was not leaked.
        audit_only(service, actor, id, "retired_secret", found).await?;
        return Ok(Label::TruePositive);
    }
    if row.revoked_at.is_some() {
        // Audited as `already_revoked` by the normal revoke; nothing new to tell the owner.
        service.revoke_noting(actor, id, Some(LEAKED.to_owned()), note(found)).await?;
        return Ok(Label::TruePositive);
    }
    let revoked = match service.settings().leaks.on_leak {
        // An expired key is revoked too: its expiry can be moved, a revocation cannot be undone.
        OnLeak::Revoke => {
            service.revoke_noting(actor, id, Some(LEAKED.to_owned()), note(found)).await?;
            tracing::warn!(key_id = %id, actor = %actor_name(actor), "leaked key revoked");
            true
        }
        OnLeak::Notify => {
            audit_only(service, actor, id, "notified", found).await?;
            tracing::warn!(key_id = %id, actor = %actor_name(actor), "leaked key reported; policy is notify");
            false
        }
    };
    if let Some(webhook) = &service.settings().leaks.webhook {
        let at = chrono::DateTime::from_timestamp(now, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let notice = LeakNotice {
            api_key_id: id.to_string(),
            name: row.name,
            owner: row.owner,
            revoked,
            found_at: found.url.map(|url| url.chars().take(MAX_NOTE_CHARS).collect()),
            source: found.source.map(|source| source.chars().take(MAX_NOTE_CHARS).collect()),
            at,
        };
        webhook.send(&notice, now);
    }
    Ok(Label::TruePositive)
}

fn actor_name(actor: &Actor) -> &'static str {
    match actor {
        Actor::Reporter(name) => name,
        _ => "other",
    }
}

async fn audit_only(
    service: &Service,
    actor: &Actor,
    id: KeyId,
    outcome: &str,
    found: FoundAt<'_>,
) -> Result<(), ServiceError> {
    let audit = AuditDraft {
        at: service.clock().now(),
        actor: actor_name(actor).to_owned(),
        action: "key.leak_reported".into(),
        key_id: Some(id),
        outcome: outcome.to_owned(),
        detail: serde_json::Value::Object(note(found)).to_string(),
    };
    service.store().apply(Change { audit, ops: vec![], outbox: None }).await?;
    Ok(())
}

/// Why a GitHub report's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No keys file is configured.
    #[error("GitHub secret scanning is not configured")]
    NotConfigured,
    /// The identifier names no key in the file.
    #[error("unknown GitHub public key identifier")]
    UnknownKey,
    /// The signature is not base64 DER, or does not verify.
    #[error("the signature does not verify")]
    BadSignature,
}

/// Why the keys file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be read.
    #[error("cannot read the GitHub scanning keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not GitHub's public-keys document.
    #[error("the GitHub scanning keys file {path} is not a public-keys document: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct KeysDocument {
    public_keys: Vec<PublicKeyEntry>,
}

#[derive(Deserialize)]
struct PublicKeyEntry {
    key_identifier: String,
    key: String,
}

/// The file's identity: when a change moves either, the file is read again.
type Stamp = (Option<SystemTime>, u64);

#[derive(Debug)]
struct Loaded {
    stamp: Stamp,
    keys: HashMap<String, VerifyingKey>,
    checked_at_ms: i64,
}

/// GitHub's secret-scanning public keys, from the file `--github-scanning-keys` names. The file's
/// metadata is looked at, at most once a second, and the file re-read when its mtime or length moved;
/// a re-read that fails keeps the keys already loaded (and logs why).
#[derive(Debug)]
pub struct GithubKeys {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn stamp(path: &Path) -> Result<Stamp, std::io::Error> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified().ok(), meta.len()))
}

fn read_keys(path: &Path) -> Result<HashMap<String, VerifyingKey>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read { path: path.to_owned(), source })?;
    let parse_error = |reason: String| KeyFileError::Parse { path: path.to_owned(), reason };
    let document: KeysDocument = serde_json::from_str(&text).map_err(|e| parse_error(e.to_string()))?;
    let mut keys = HashMap::new();
    for entry in document.public_keys {
        let key = VerifyingKey::from_public_key_pem(entry.key.trim())
            .map_err(|_| parse_error(format!("key {} is not a P-256 public key (PEM)", entry.key_identifier)))?;
        keys.insert(entry.key_identifier, key);
    }
    Ok(keys)
}

impl GithubKeys {
    /// Reads the file; it must be readable and well-formed at start.
    pub fn open(path: &Path, now_ms: i64) -> Result<Self, KeyFileError> {
        let stamp = stamp(path).map_err(|source| KeyFileError::Read { path: path.to_owned(), source })?;
        let keys = read_keys(path)?;
        Ok(Self { path: path.to_owned(), loaded: Mutex::new(Loaded { stamp, keys, checked_at_ms: now_ms }) })
    }

    /// How many keys are loaded.
    pub fn len(&self, now_ms: i64) -> usize {
        self.current(now_ms, |keys| keys.len())
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self, now_ms: i64) -> bool {
        self.len(now_ms) == 0
    }

    /// Verifies GitHub's signature (base64 DER ECDSA P-256 SHA-256) over the raw body.
    pub fn verify(
        &self,
        identifier: &str,
        signature_base64: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), SignatureError> {
        let key = self.current(now_ms, |keys| keys.get(identifier).copied()).ok_or(SignatureError::UnknownKey)?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature_base64.trim())
            .map_err(|_| SignatureError::BadSignature)?;
        let signature = Signature::from_der(&der).map_err(|_| SignatureError::BadSignature)?;
        key.verify(body, &signature).map_err(|_| SignatureError::BadSignature)
    }

    /// Runs `with` over the keys, re-read first if the file changed (looked at once a second at most).
    fn current<T>(&self, now_ms: i64, with: impl FnOnce(&HashMap<String, VerifyingKey>) -> T) -> T {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if now_ms.saturating_sub(loaded.checked_at_ms) >= RECHECK_MS || now_ms < loaded.checked_at_ms {
            loaded.checked_at_ms = now_ms;
            match stamp(&self.path) {
                Ok(seen) if seen != loaded.stamp => match read_keys(&self.path) {
                    Ok(keys) => {
                        tracing::info!(keys = keys.len(), "GitHub scanning keys re-read");
                        loaded.keys = keys;
                        loaded.stamp = seen;
                    }
                    Err(error) => tracing::warn!(%error, "GitHub scanning keys file unusable; keeping the old keys"),
                },
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "GitHub scanning keys file unreadable; keeping the old keys"),
            }
        }
        with(&loaded.keys)
    }
}
