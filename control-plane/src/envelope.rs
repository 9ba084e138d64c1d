//! Envelope encryption of one generation of an API key: the key text sealed with AES-256-GCM under that
//! generation's data key, with a random 96-bit nonce and AAD binding the key id and generation, so a
//! sealed secret copied onto another key or generation does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keygate_shared::{ApiKey, KeyId};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::kms::DataKey;

const NONCE_LEN: usize = 12;

/// Why a sealed secret does not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Wrong data key, key id or generation, or the ciphertext was altered.
    #[error("the sealed secret does not authenticate")]
    Unauthentic,
    /// It opened, but is not a well-formed key for this key id.
    #[error("the sealed secret is not a key for this key id")]
    NotThisKey,
    /// The AEAD refused to seal (it only does for messages of more than 64 GiB).
    #[error("the secret could not be sealed")]
    Seal,
}

fn aad(key_id: KeyId, generation: u32) -> Vec<u8> {
    let mut aad = b"keygate:secret:v1:".to_vec();
    aad.extend_from_slice(key_id.to_string().as_bytes());
    aad.push(b':');
    aad.extend_from_slice(&generation.to_be_bytes());
    aad
}

/// Seals `key` as generation `generation`: returns nonce followed by ciphertext and tag.
pub fn seal<R: RngCore + CryptoRng + ?Sized>(
    data_key: &DataKey,
    key: &ApiKey,
    generation: u32,
    rng: &mut R,
) -> Result<Vec<u8>, EnvelopeError> {
    seal_bytes(data_key, key.expose().as_bytes(), &aad(key.key_id(), generation), rng)
}

/// Seals any secret bytes under `data_key`, bound to `aad`: nonce followed by ciphertext and tag.
pub fn seal_bytes<R: RngCore + CryptoRng + ?Sized>(
    data_key: &DataKey,
    plain: &[u8],
    aad: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, EnvelopeError> {
    let cipher = Aes256Gcm::new(data_key.expose().into());
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut sealed = nonce.to_vec();
    sealed.extend(
        cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad }).map_err(|_| EnvelopeError::Seal)?,
    );
    Ok(sealed)
}

/// Opens what [`seal_bytes`] sealed with the same data key and `aad`.
pub fn open_bytes(data_key: &DataKey, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if sealed.len() <= NONCE_LEN {
        return Err(EnvelopeError::Unauthentic);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(data_key.expose().into());
    Ok(Zeroizing::new(
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| EnvelopeError::Unauthentic)?,
    ))
}

/// Opens a sealed secret of `key_id`'s generation `generation`.
pub fn open(data_key: &DataKey, sealed: &[u8], key_id: KeyId, generation: u32) -> Result<ApiKey, EnvelopeError> {
    let plain = open_bytes(data_key, sealed, &aad(key_id, generation))?;
    let text = String::from_utf8(plain.to_vec()).map_err(|e| {
        // Wipe the rejected bytes on the way out, as the key would have been.
        drop(Zeroizing::new(e.into_bytes()));
        EnvelopeError::NotThisKey
    })?;
    let key = ApiKey::parse(text).map_err(|_| EnvelopeError::NotThisKey)?;
    if key.key_id() != key_id {
        return Err(EnvelopeError::NotThisKey);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use keygate_shared::{Prefix, Region};
    use rand_core::OsRng;

    use super::*;

    fn data_key(byte: u8) -> DataKey {
        DataKey::from_slice(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_data_key_id_and_generation() {
        let key = ApiKey::generate(&Prefix::default(), &Region::default(), 1_764_400_000_000, &mut OsRng);
        let sealed = seal(&data_key(1), &key, 3, &mut OsRng).unwrap();
        assert_eq!(open(&data_key(1), &sealed, key.key_id(), 3).unwrap().expose(), key.expose());
        assert_eq!(open(&data_key(2), &sealed, key.key_id(), 3).unwrap_err(), EnvelopeError::Unauthentic);
        assert_eq!(open(&data_key(1), &sealed, key.key_id(), 4).unwrap_err(), EnvelopeError::Unauthentic);
        assert_eq!(open(&data_key(1), &sealed, KeyId::from_u128(1), 3).unwrap_err(), EnvelopeError::Unauthentic);
        for at in [0, NONCE_LEN, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[at] = tampered[at].wrapping_add(1);
            assert_eq!(open(&data_key(1), &tampered, key.key_id(), 3).unwrap_err(), EnvelopeError::Unauthentic);
        }
        assert_eq!(open(&data_key(1), &sealed[..NONCE_LEN], key.key_id(), 3).unwrap_err(), EnvelopeError::Unauthentic);
    }

    #[test]
    fn the_ciphertext_holds_nothing_of_the_key_and_nonces_differ() {
        let key = ApiKey::generate(&Prefix::default(), &Region::default(), 1_764_400_000_000, &mut OsRng);
        let a = seal(&data_key(1), &key, 1, &mut OsRng).unwrap();
        let b = seal(&data_key(1), &key, 1, &mut OsRng).unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        let secret = &key.expose().as_bytes()[key.expose().len() - 49..];
        assert!(!a.windows(8).any(|w| secret.windows(8).any(|s| s == w)));
    }
}
