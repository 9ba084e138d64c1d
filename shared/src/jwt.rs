//! The JWT the edge puts on every forwarded request, so that a GraphQL server trusts keygate through its
//! own standard JWT support (FraiseQL, Hasura, Apollo Router): JWS compact form, `ES256` with the
//! control plane's keys (published as a JWKS) or `HS256` with the origin secret, and the claims
//! DESIGN.md lists.
//!
//! Nothing in a token is request-specific, so the edge may reuse one key's token for up to
//! [`MAX_REUSE_SECS`]: signing is the costly part.

use alloc::string::{String, ToString};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use serde::Serialize;

use crate::origin::OriginSecret;
use crate::record::KeyRecord;
use crate::signing_key::OriginSigningKey;

/// `iss` when the worker's `ORIGIN_JWT_ISSUER` is unset.
pub const DEFAULT_ISSUER: &str = "keygate";
/// `aud` when the worker's `ORIGIN_JWT_AUDIENCE` is unset.
pub const DEFAULT_AUDIENCE: &str = "graphql";
/// Lifetime when the worker's `ORIGIN_JWT_TTL_SECS` is unset.
pub const DEFAULT_TTL_SECS: i64 = 60;
/// The longest an isolate may reuse one key's token.
pub const MAX_REUSE_SECS: i64 = 10;
/// The `kid` of HS256 tokens: there is one origin secret, and a verifier may want a `kid` all the same.
pub const HS256_KID: &str = "keygate-origin-secret";
/// Bytes of randomness in a `jti`.
pub const JTI_LEN: usize = 16;

/// What the token says of the caller (RFC 7519 registered claims plus keygate's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims<'a> {
    /// Issuer: the worker's `ORIGIN_JWT_ISSUER`.
    pub iss: &'a str,
    /// Audience: the worker's `ORIGIN_JWT_AUDIENCE`.
    pub aud: &'a str,
    /// The key id.
    pub sub: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Unique per token.
    pub jti: String,
    /// The key's permissions, joined by single spaces.
    pub scope: String,
    /// The key's rate-limit tier.
    pub tier: &'a str,
    /// The key's owner, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<&'a str>,
}

/// Issuer, audience and lifetime: the worker's vars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// `exp - iat`, seconds.
    pub ttl_secs: i64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self { issuer: DEFAULT_ISSUER.into(), audience: DEFAULT_AUDIENCE.into(), ttl_secs: DEFAULT_TTL_SECS }
    }
}

impl<'a> Claims<'a> {
    /// The claims for the key `record` describes, issued at `now`; `jti` is fresh randomness.
    pub fn for_record(record: &'a KeyRecord, settings: &'a TokenSettings, now: i64, jti: &[u8; JTI_LEN]) -> Self {
        Self {
            iss: &settings.issuer,
            aud: &settings.audience,
            sub: record.key_id.to_string(),
            iat: now,
            exp: now.saturating_add(settings.ttl_secs),
            jti: URL_SAFE_NO_PAD.encode(jti),
            scope: record.permissions.to_strings().join(" "),
            tier: &record.tier,
            tenant_id: record.owner.as_deref(),
        }
    }
}

/// What signs the tokens: the control plane's ES256 key, or the origin secret for HS256.
#[derive(Debug)]
pub enum TokenSigner {
    /// ES256, verified by the origin against the JWKS.
    Es256(OriginSigningKey),
    /// HS256 with the secret the origin also holds: for a single origin.
    Hs256(OriginSecret),
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

impl TokenSigner {
    /// The `kid` the tokens carry.
    pub fn kid(&self) -> &str {
        match self {
            Self::Es256(key) => key.kid(),
            Self::Hs256(_) => HS256_KID,
        }
    }

    /// The JWS `alg`.
    pub fn alg(&self) -> &'static str {
        match self {
            Self::Es256(_) => "ES256",
            Self::Hs256(_) => "HS256",
        }
    }

    /// The token, in JWS compact form.
    pub fn sign(&self, claims: &Claims<'_>) -> String {
        let input = signing_input(self.alg(), self.kid(), claims);
        match self {
            Self::Es256(key) => {
                let signature = key.sign(input.as_bytes());
                compact(input, &signature)
            }
            Self::Hs256(secret) => {
                let signature = hs256(secret, &input);
                compact(input, &signature)
            }
        }
    }
}

/// The JWS signing input, `base64url(header) "." base64url(claims)`: what an ES256 or HS256 signature
/// covers. The edge signs it with WebCrypto (ES256) or the origin secret (HS256) and calls [`compact`].
pub fn signing_input(alg: &str, kid: &str, claims: &Claims<'_>) -> String {
    let header = Header { alg, kid, typ: "JWT" };
    let mut input = String::with_capacity(512);
    append_b64_json(&mut input, &header);
    input.push('.');
    append_b64_json(&mut input, claims);
    input
}

/// The token in JWS compact form: the signing input, `.`, and the signature in base64url (for ES256
/// the 64-byte `r || s`, RFC 7518 §3.4, which is also what WebCrypto's ECDSA returns).
pub fn compact(mut input: String, signature: &[u8]) -> String {
    input.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut input);
    input
}

/// The HS256 signature over `input` with the origin secret.
pub fn hs256(secret: &OriginSecret, input: &str) -> [u8; 32] {
    let mut mac = secret.keyed_hmac();
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().into()
}

fn append_b64_json<T: Serialize>(out: &mut String, value: &T) {
    // Serializing these plain structs of strings and integers cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    URL_SAFE_NO_PAD.encode_string(json, out);
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature, VerifyingKey};
    use rand_core::OsRng;
    use serde_json::Value;

    use super::*;
    use crate::{KeyId, PermissionSet};

    fn record(owner: Option<&str>) -> KeyRecord {
        KeyRecord {
            key_id: KeyId::from(7),
            seq: 1,
            tier: "premium".into(),
            permissions: PermissionSet::parse(["query:read", "batch:5"]).unwrap(),
            expires_at: None,
            revoked: false,
            disabled: false,
            secrets: Vec::new(),
            owner: owner.map(Into::into),
        }
    }

    fn part(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn claims_are_exactly_the_contracts() {
        let settings = TokenSettings::default();
        let record = record(Some("acme"));
        let claims = Claims::for_record(&record, &settings, 1_800_000_000, &[1; JTI_LEN]);
        let json = serde_json::to_value(&claims).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "iss": "keygate", "aud": "graphql", "sub": "0000000000000000000007",
                "iat": 1_800_000_000, "exp": 1_800_000_060, "jti": "AQEBAQEBAQEBAQEBAQEBAQ",
                "scope": "query:read batch:5", "tier": "premium", "tenant_id": "acme"
            })
        );
        let ownerless = record_without_owner_claims();
        assert!(ownerless.get("tenant_id").is_none());
    }

    fn record_without_owner_claims() -> Value {
        let settings = TokenSettings::default();
        let record = record(None);
        serde_json::to_value(Claims::for_record(&record, &settings, 0, &[0; JTI_LEN])).unwrap()
    }

    #[test]
    fn an_es256_token_verifies_with_the_public_key_over_header_and_claims() {
        let key = OriginSigningKey::generate("kid-1".into(), &mut OsRng);
        let verifying = *p256::ecdsa::SigningKey::from_slice(&*key.to_scalar()).unwrap().verifying_key();
        let signer = TokenSigner::Es256(key);
        let settings = TokenSettings::default();
        let record = record(None);
        let token = signer.sign(&Claims::for_record(&record, &settings, 1_800_000_000, &[2; JTI_LEN]));
        assert_eq!(part(&token, 0), serde_json::json!({"alg": "ES256", "kid": "kid-1", "typ": "JWT"}));
        assert_eq!(part(&token, 1)["sub"], "0000000000000000000007");
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
        assert!(VerifyingKey::verify(&verifying, input.as_bytes(), &signature).is_ok());
        let tampered = input.replace('.', ".e");
        assert!(VerifyingKey::verify(&verifying, tampered.as_bytes(), &signature).is_err());
    }

    #[test]
    fn an_hs256_token_matches_an_independent_hmac() {
        let signer = TokenSigner::Hs256(OriginSecret::new("s"));
        let settings = TokenSettings { issuer: "i".into(), audience: "a".into(), ttl_secs: 5 };
        let record = record(None);
        let token = signer.sign(&Claims::for_record(&record, &settings, 1_700_000_000, &[0; JTI_LEN]));
        // Header and claims as compact JSON, and the signature computed by Python's hmac module over
        // them: b64(hmac.new(b"s", header_b64 + "." + claims_b64, hashlib.sha256).digest()).
        assert_eq!(part(&token, 0), serde_json::json!({"alg": "HS256", "kid": "keygate-origin-secret", "typ": "JWT"}));
        assert_eq!(
            token,
            "eyJhbGciOiJIUzI1NiIsImtpZCI6ImtleWdhdGUtb3JpZ2luLXNlY3JldCIsInR5cCI6IkpXVCJ9.\
             eyJpc3MiOiJpIiwiYXVkIjoiYSIsInN1YiI6IjAwMDAwMDAwMDAwMDAwMDAwMDAwMDciLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMDAwNSwianRpIjoiQUFBQUFBQUFBQUFBQUFBQUFBQUFBQSIsInNjb3BlIjoicXVlcnk6cmVhZCBiYXRjaDo1IiwidGllciI6InByZW1pdW0ifQ.\
             tabJ9G-Hbr_cwJdozthHB8CG5L8kZ_XLSorbxRgmTzg"
        );
    }
}
