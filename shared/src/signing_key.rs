//! The ES256 keys that sign the origin's JWTs: made and kept by the control plane, published as a JWKS,
//! and sent to the edge sealed, so neither the replication channel nor the edge's KV holds one in the
//! clear.
//!
//! Sealing for the edge: the private key as a JWK (`d`, `x`, `y`: the form WebCrypto imports), under
//! AES-256-GCM with a key derived with HKDF-SHA256 from the sync secret the control plane and the edge
//! already share, a random 96-bit nonce, and AAD binding the key id, its version and its activation
//! time. The edge stores the sealed form as it came and opens it in memory; whoever reads KV without
//! the sync secret cannot sign.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::sync::SyncSecret;

/// Length of a P-256 private scalar.
pub const SCALAR_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// HKDF `info` for the sealing key: a key derived for this purpose opens nothing else.
const SEAL_INFO: &[u8] = b"keygate signing-key seal v1";

/// Why a signing key could not be made or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigningKeyError {
    /// The bytes are not a valid P-256 private scalar.
    BadScalar,
    /// The sealed key does not open with this sync secret, or was altered.
    Unauthentic,
    /// The sealed form is not base64url.
    Malformed,
    /// The AEAD refused to seal (it only does for messages of more than 64 GiB).
    Seal,
}

impl fmt::Display for SigningKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadScalar => "not a P-256 private key",
            Self::Unauthentic => "the sealed signing key does not open with this secret",
            Self::Malformed => "the sealed signing key is not base64url",
            Self::Seal => "the signing key could not be sealed",
        })
    }
}

impl core::error::Error for SigningKeyError {}

/// An ES256 private key and its `kid`. Wiped on drop (p256 zeroizes its scalar); `Debug` shows only
/// the `kid`.
#[derive(Clone)]
pub struct OriginSigningKey {
    kid: String,
    key: SigningKey,
}

impl OriginSigningKey {
    /// A fresh key from `rng` (the OS CSPRNG in production).
    pub fn generate<R: RngCore + CryptoRng>(kid: String, rng: &mut R) -> Self {
        Self { kid, key: SigningKey::random(rng) }
    }

    /// A key from its private scalar (big-endian, 32 bytes).
    pub fn from_scalar(kid: String, scalar: &[u8]) -> Result<Self, SigningKeyError> {
        let key = SigningKey::from_slice(scalar).map_err(|_| SigningKeyError::BadScalar)?;
        Ok(Self { kid, key })
    }

    /// The private scalar, for sealing. Never log or store it in the clear.
    pub fn to_scalar(&self) -> Zeroizing<[u8; SCALAR_LEN]> {
        let mut scalar = Zeroizing::new([0u8; SCALAR_LEN]);
        scalar.copy_from_slice(&self.key.to_bytes());
        scalar
    }

    /// The key's id, as the JWT header's `kid` and the JWK's.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK (RFC 7517, 7518 §6.2).
    pub fn public_jwk(&self) -> Jwk {
        Jwk::es256(&self.kid, self.key.verifying_key())
    }

    /// An ES256 signature over `message`: the 64-byte `r || s` JWS uses (RFC 7518 §3.4), with an
    /// RFC 6979 deterministic nonce.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let signature: Signature = self.key.sign(message);
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(&signature.to_bytes());
        bytes
    }

    /// The private key as a JWK (RFC 7518 §6.2.2): what WebCrypto's `importKey("jwk", ...)` takes.
    fn private_jwk(&self) -> Zeroizing<String> {
        let public = self.public_jwk();
        let d = Zeroizing::new(URL_SAFE_NO_PAD.encode(*self.to_scalar()));
        let mut jwk = Zeroizing::new(String::with_capacity(192));
        for part in [
            r#"{"kty":"EC","crv":"P-256","d":""#,
            d.as_str(),
            r#"","x":""#,
            &public.x,
            r#"","y":""#,
            &public.y,
            r#""}"#,
        ] {
            jwk.push_str(part);
        }
        jwk
    }

    /// The key sealed for the edge under `secret`, as version `version`, to be used from `activates_at`.
    pub fn seal_for_edge<R: RngCore + CryptoRng + ?Sized>(
        &self,
        secret: &SyncSecret,
        version: u64,
        activates_at: i64,
        rng: &mut R,
    ) -> Result<SealedSigningKey, SigningKeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let jwk = self.private_jwk();
        let aad = aad(&self.kid, version, activates_at);
        let ciphertext = cipher(secret)
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: jwk.as_bytes(), aad: &aad })
            .map_err(|_| SigningKeyError::Seal)?;
        let mut sealed = nonce.to_vec();
        sealed.extend(ciphertext);
        Ok(SealedSigningKey { kid: self.kid.clone(), version, activates_at, sealed: URL_SAFE_NO_PAD.encode(sealed) })
    }
}

impl fmt::Debug for OriginSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginSigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

fn cipher(secret: &SyncSecret) -> Aes256Gcm {
    let key = secret.derive_key(SEAL_INFO);
    Aes256Gcm::new((&*key).into())
}

fn aad(kid: &str, version: u64, activates_at: i64) -> Vec<u8> {
    let mut aad = b"keygate:signing-key:v1:".to_vec();
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(&activates_at.to_be_bytes());
    aad.extend_from_slice(kid.as_bytes());
    aad
}

/// A signing key on its way to the edge and in the edge's KV: only the sync secret opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSigningKey {
    /// The key's id.
    pub kid: String,
    /// Higher is newer: the edge never goes back to a lower version.
    pub version: u64,
    /// When the edge starts signing with it (unix seconds). Until then the key is only published, so
    /// that origins caching the JWKS know it before they see it.
    pub activates_at: i64,
    /// base64url(nonce || AES-256-GCM ciphertext and tag) of the private scalar.
    pub sealed: String,
}

impl SealedSigningKey {
    /// Opens the key with the sync secret it was sealed under, as the private JWK (`kty`, `crv`, `d`,
    /// `x`, `y`) WebCrypto imports. Wiped on drop.
    pub fn open_private_jwk(&self, secret: &SyncSecret) -> Result<Zeroizing<String>, SigningKeyError> {
        let sealed = URL_SAFE_NO_PAD.decode(&self.sealed).map_err(|_| SigningKeyError::Malformed)?;
        if sealed.len() <= NONCE_LEN {
            return Err(SigningKeyError::Unauthentic);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let aad = aad(&self.kid, self.version, self.activates_at);
        let plain = cipher(secret)
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| SigningKeyError::Unauthentic)?;
        String::from_utf8(plain).map(Zeroizing::new).map_err(|e| {
            drop(Zeroizing::new(e.into_bytes()));
            SigningKeyError::BadScalar
        })
    }

    /// Opens the key with the sync secret it was sealed under.
    pub fn open(&self, secret: &SyncSecret) -> Result<OriginSigningKey, SigningKeyError> {
        let jwk = self.open_private_jwk(secret)?;
        let d = jwk
            .split_once(r#""d":""#)
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(d, _)| d)
            .ok_or(SigningKeyError::BadScalar)?;
        let scalar = Zeroizing::new(URL_SAFE_NO_PAD.decode(d).map_err(|_| SigningKeyError::BadScalar)?);
        OriginSigningKey::from_scalar(self.kid.clone(), &scalar)
    }
}

/// A public key as a JWK, as `GET /.well-known/jwks.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC`.
    pub kty: String,
    /// `P-256`.
    pub crv: String,
    /// The x coordinate, base64url.
    pub x: String,
    /// The y coordinate, base64url.
    pub y: String,
    /// The key's id.
    pub kid: String,
    /// `ES256`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    fn es256(kid: &str, key: &VerifyingKey) -> Self {
        let point = key.to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| URL_SAFE_NO_PAD.encode(c)).unwrap_or_default();
        Self {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: coordinate(point.x()),
            y: coordinate(point.y()),
            kid: kid.into(),
            alg: "ES256".into(),
            use_: "sig".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Verifier;
    use rand_core::OsRng;

    use super::*;

    fn key() -> OriginSigningKey {
        OriginSigningKey::generate("k1".into(), &mut OsRng)
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_secret_and_unaltered() {
        let key = key();
        let secret = SyncSecret::new("sync");
        let sealed = key.seal_for_edge(&secret, 3, 1_800_000_000, &mut OsRng).unwrap();
        let opened = sealed.open(&secret).unwrap();
        assert_eq!(opened.public_jwk(), key.public_jwk());
        assert_eq!(*opened.to_scalar(), *key.to_scalar());
        let jwk: serde_json::Value = serde_json::from_str(&sealed.open_private_jwk(&secret).unwrap()).unwrap();
        let public = key.public_jwk();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!((jwk["x"].as_str(), jwk["y"].as_str()), (Some(public.x.as_str()), Some(public.y.as_str())));
        assert_eq!(URL_SAFE_NO_PAD.decode(jwk["d"].as_str().unwrap()).unwrap(), key.to_scalar().to_vec());

        assert_eq!(sealed.open(&SyncSecret::new("other")).unwrap_err(), SigningKeyError::Unauthentic);
        for altered in [
            SealedSigningKey { version: 4, ..sealed.clone() },
            SealedSigningKey { activates_at: 1_800_000_001, ..sealed.clone() },
            SealedSigningKey { kid: "k2".into(), ..sealed.clone() },
            SealedSigningKey { sealed: sealed.sealed[..16].into(), ..sealed.clone() },
        ] {
            assert_eq!(altered.open(&secret).unwrap_err(), SigningKeyError::Unauthentic, "{altered:?}");
        }
        let garbage = SealedSigningKey { sealed: "not base64!".into(), ..sealed.clone() };
        assert_eq!(garbage.open(&secret).unwrap_err(), SigningKeyError::Malformed);
    }

    #[test]
    fn the_sealed_form_holds_nothing_of_the_scalar_and_nonces_differ() {
        let key = key();
        let secret = SyncSecret::new("sync");
        let a = key.seal_for_edge(&secret, 1, 0, &mut OsRng).unwrap();
        let b = key.seal_for_edge(&secret, 1, 0, &mut OsRng).unwrap();
        assert_ne!(a.sealed, b.sealed);
        let raw = URL_SAFE_NO_PAD.decode(&a.sealed).unwrap();
        let scalar = key.to_scalar();
        assert!(!raw.windows(8).any(|w| scalar.windows(8).any(|s| s == w)));
        let text = serde_json_text(&a);
        assert!(!text.contains(&hex::encode(*scalar)));
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(*scalar)));
    }

    fn serde_json_text(sealed: &SealedSigningKey) -> String {
        serde_json::to_string(sealed).unwrap()
    }

    #[test]
    fn signatures_verify_under_the_published_jwk() {
        let key = key();
        let jwk = key.public_jwk();
        assert_eq!(
            (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str(), jwk.use_.as_str()),
            ("EC", "P-256", "ES256", "sig")
        );
        let x = URL_SAFE_NO_PAD.decode(&jwk.x).unwrap();
        let y = URL_SAFE_NO_PAD.decode(&jwk.y).unwrap();
        let point = p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
        let verifying = VerifyingKey::from_encoded_point(&point).unwrap();
        let signature = Signature::from_slice(&key.sign(b"message")).unwrap();
        assert!(verifying.verify(b"message", &signature).is_ok());
        assert!(verifying.verify(b"messagf", &signature).is_err());
        let json = serde_json::to_value(&jwk).unwrap();
        assert_eq!(json["use"], "sig");
        assert!(json.get("d").is_none(), "a JWK of ours never carries the private part");
    }

    #[test]
    fn debug_shows_the_kid_and_nothing_secret() {
        let key = key();
        let printed = format!("{key:?}");
        assert_eq!(printed, r#"OriginSigningKey { kid: "k1", .. }"#);
        assert!(OriginSigningKey::from_scalar("k".into(), &[0u8; 32]).is_err());
    }
}
