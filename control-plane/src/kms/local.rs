//! The local KMS: a 256-bit master key in a file wraps data keys with AES-256-GCM.
//!
//! For development and tests on one machine. It is not for production: the master key sits on the same
//! disk as the database it protects.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use rand_core::{CryptoRng, OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{DataKey, Kms, KmsContext, KmsError, WrappedKey, DATA_KEY_LEN};

/// Blob layout: magic, 96-bit nonce, AES-256-GCM ciphertext and tag of the data key.
const MAGIC: &[u8; 4] = b"KGL1";
const NONCE_LEN: usize = 12;
const BLOB_LEN: usize = MAGIC.len() + NONCE_LEN + DATA_KEY_LEN + 16;

/// A master key held in memory, with the RNG for nonces and data keys (the OS CSPRNG unless a test
/// passes another).
pub struct LocalKms<R = OsRng> {
    cipher: Aes256Gcm,
    key_id: String,
    // Behind a lock, not cloned per call: a cloned seeded RNG would repeat nonces.
    rng: Mutex<R>,
}

impl<R> std::fmt::Debug for LocalKms<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Why the master-key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// Reading or creating the file failed.
    #[error("cannot read or create the master key file: {0}")]
    Io(#[from] io::Error),
    /// The file is not 32 bytes.
    #[error("the master key file must hold exactly 32 bytes")]
    WrongLength,
    /// Others than the owner may read or write it.
    #[error("the master key file is readable or writable by others than its owner (mode {0:o}); chmod 600 it")]
    TooOpen(u32),
}

impl LocalKms<OsRng> {
    /// Reads the master key from `path`, creating it (mode 0600, 32 bytes from the OS CSPRNG) if absent.
    pub fn open_or_create(path: &Path) -> Result<Self, MasterKeyError> {
        Self::open_or_create_with(path, OsRng)
    }
}

impl<R: RngCore + CryptoRng + Send> LocalKms<R> {
    /// As [`LocalKms::open_or_create`], with the given RNG.
    pub fn open_or_create_with(path: &Path, mut rng: R) -> Result<Self, MasterKeyError> {
        let mut master = Zeroizing::new([0u8; 32]);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut file) => {
                rng.fill_bytes(master.as_mut());
                file.write_all(master.as_ref())?;
                file.sync_all()?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let mut file = fs::File::open(path)?;
                let mode = file.metadata()?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(MasterKeyError::TooOpen(mode));
                }
                let mut contents = Zeroizing::new(Vec::with_capacity(33));
                Read::by_ref(&mut file).take(33).read_to_end(&mut contents)?;
                if contents.len() != 32 {
                    return Err(MasterKeyError::WrongLength);
                }
                master.copy_from_slice(&contents);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Self::from_master_key(&master, rng))
    }

    /// A provider over a master key already in memory.
    pub fn from_master_key(master: &[u8; 32], rng: R) -> Self {
        // The id names the master key without revealing it: a domain-separated hash, shortened.
        let fingerprint = Sha256::new().chain_update(b"keygate local kms key id\0").chain_update(master).finalize();
        let key_id = format!("local:{}", hex::encode(&fingerprint[..8]));
        Self { cipher: Aes256Gcm::new(master.into()), key_id, rng: Mutex::new(rng) }
    }

    /// The id recorded beside each data key this provider wraps.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn fill_random(&self, buf: &mut [u8]) {
        self.rng.lock().unwrap_or_else(PoisonError::into_inner).fill_bytes(buf);
    }

    fn aad(&self, context: &KmsContext) -> Vec<u8> {
        let mut aad = context.to_aad();
        aad.extend_from_slice(b";kms_key_id=");
        aad.extend_from_slice(self.key_id.as_bytes());
        aad
    }

    fn wrap(&self, key: &DataKey, context: &KmsContext) -> Result<WrappedKey, KmsError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.fill_random(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: key.expose(), aad: &self.aad(context) })
            .map_err(|_| KmsError::Malformed)?;
        let mut blob = Vec::with_capacity(BLOB_LEN);
        blob.extend_from_slice(MAGIC);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(WrappedKey { blob, kms_key_id: self.key_id.clone(), shared_id: context.shared_id.clone() })
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<DataKey, KmsError> {
        if wrapped.kms_key_id != self.key_id {
            return Err(KmsError::Refused("wrapped under another master key".into()));
        }
        let blob = &wrapped.blob;
        if blob.len() != BLOB_LEN || &blob[..MAGIC.len()] != MAGIC {
            return Err(KmsError::Refused("not a local KMS blob".into()));
        }
        let (nonce, sealed) = blob[MAGIC.len()..].split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &self.aad(context) })
                .map_err(|_| KmsError::Refused("the blob or its context does not authenticate".into()))?,
        );
        DataKey::from_slice(&plain).ok_or(KmsError::Malformed)
    }
}

#[async_trait]
impl<R: RngCore + CryptoRng + Send> Kms for LocalKms<R> {
    fn provider(&self) -> &'static str {
        "local"
    }

    fn current_key_id(&self) -> &str {
        &self.key_id
    }

    async fn generate_data_key(&self, context: &KmsContext) -> Result<(DataKey, WrappedKey), KmsError> {
        let mut bytes = Zeroizing::new([0u8; DATA_KEY_LEN]);
        self.fill_random(bytes.as_mut());
        let key = DataKey(bytes);
        let wrapped = self.wrap(&key, context)?;
        Ok((key, wrapped))
    }

    async fn decrypt(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<DataKey, KmsError> {
        self.unwrap(wrapped, context)
    }

    async fn rewrap(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<WrappedKey, KmsError> {
        let key = self.unwrap(wrapped, context)?;
        self.wrap(&key, context)
    }
}
