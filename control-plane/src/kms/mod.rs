//! KMS: where data keys come from, and how they are wrapped so the database never holds one in the clear.
//!
//! Two real providers behind one trait: [`aws::AwsKms`] (aws-sdk-kms, any KMS-compatible endpoint) and
//! [`local::LocalKms`] (a master-key file, for development only). Both bind a [`KmsContext`] into every
//! wrap: a data key unwrapped under another key id or purpose fails.

pub mod aws;
pub mod cache;
pub mod local;

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use keygate_shared::KeyId;
use zeroize::Zeroizing;

/// Length of a data key: AES-256.
pub const DATA_KEY_LEN: usize = 32;

/// A plaintext data key. Wiped on drop; `Debug` prints nothing of it.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Copies key bytes into a zeroizing home (the caller wipes its own copy).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if bytes.len() != DATA_KEY_LEN {
            return None;
        }
        key.copy_from_slice(bytes);
        Some(Self(key))
    }

    /// The key bytes, for the AEAD that uses them. Never log or store them.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// A data key as KMS wrapped it, and which KMS key wrapped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The provider's ciphertext blob; opaque.
    pub blob: Vec<u8>,
    /// The KMS key that wrapped it (an ARN for AWS, `local:<fingerprint>` for the local provider).
    pub kms_key_id: String,
    /// For a shared data key (the data-key cache), the id its encryption context names.
    pub shared_id: Option<String>,
}

/// What a data key protects, bound into its wrapping (AWS encryption context; AAD for the local provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsContext {
    /// The API key whose secret the data key encrypts.
    pub key_id: KeyId,
    /// What the data key is for.
    pub purpose: Purpose,
    /// Set for a data key shared by several secrets: the context names this id, not `key_id`.
    pub shared_id: Option<String>,
}

/// Why a data key exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Encrypting one generation of an API key's secret.
    ApiKeySecret,
    /// Encrypting the private half of an origin-token signing key (`key_id` is its kid).
    OriginSigningKey,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::ApiKeySecret => "api-key-secret",
            Self::OriginSigningKey => "origin-signing-key",
        }
    }
}

impl KmsContext {
    /// The context for an API key's secret.
    pub fn api_key_secret(key_id: KeyId) -> Self {
        Self { key_id, purpose: Purpose::ApiKeySecret, shared_id: None }
    }

    /// The context for an origin signing key's private half, named by its kid.
    pub fn origin_signing_key(kid: KeyId) -> Self {
        Self { key_id: kid, purpose: Purpose::OriginSigningKey, shared_id: None }
    }

    /// The context a stored data key was wrapped with: its own key id's, or its shared id's.
    pub fn for_wrapped(key_id: KeyId, wrapped: &WrappedKey) -> Self {
        Self { shared_id: wrapped.shared_id.clone(), ..Self::api_key_secret(key_id) }
    }

    /// The name-value pair that says whose data key this is.
    fn owner(&self) -> (&'static str, String) {
        match &self.shared_id {
            Some(id) => ("keygate:data_key_id", id.clone()),
            None => ("keygate:key_id", self.key_id.to_string()),
        }
    }

    /// The context as AWS encryption-context pairs.
    pub fn pairs(&self) -> HashMap<String, String> {
        let (name, value) = self.owner();
        HashMap::from([(name.to_owned(), value), ("keygate:purpose".to_owned(), self.purpose.as_str().to_owned())])
    }

    /// The context as bytes, one unambiguous encoding: the owner (fixed-width key id, or the shared id),
    /// then the purpose.
    pub(crate) fn to_aad(&self) -> Vec<u8> {
        let (name, value) = self.owner();
        let mut aad = Vec::with_capacity(64);
        aad.extend_from_slice(name.as_bytes());
        aad.push(b'=');
        aad.extend_from_slice(value.as_bytes());
        aad.extend_from_slice(b";keygate:purpose=");
        aad.extend_from_slice(self.purpose.as_str().as_bytes());
        aad
    }
}

/// A boxed error from a provider's client, kept for logs (never sent to a client).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a KMS call failed.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// KMS could not be reached or did not answer in time: a 503, retry later.
    #[error("KMS is unavailable")]
    Unavailable(#[source] Cause),
    /// KMS answered and refused: wrong key or context, a tampered blob, no permission.
    #[error("KMS refused the request")]
    Refused(#[source] Cause),
    /// KMS answered with something that is not a 256-bit data key.
    #[error("KMS returned a malformed response")]
    Malformed,
}

/// A key-management service that makes, unwraps and rewraps data keys.
#[async_trait]
pub trait Kms: Send + Sync + fmt::Debug {
    /// `local` or `aws`.
    fn provider(&self) -> &'static str;

    /// The KMS key new data keys are wrapped under (what a rewrap moves every data key to).
    fn current_key_id(&self) -> &str;

    /// A fresh AES-256 data key, in the clear and wrapped under the current KMS key.
    async fn generate_data_key(&self, context: &KmsContext) -> Result<(DataKey, WrappedKey), KmsError>;

    /// Unwraps a data key; fails unless `context` is the one it was wrapped with.
    async fn decrypt(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<DataKey, KmsError>;

    /// Re-wraps a data key under the current KMS key without exposing it here (AWS ReEncrypt).
    async fn rewrap(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<WrappedKey, KmsError>;
}
