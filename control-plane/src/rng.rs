//! Randomness is a parameter: the service and the origin signing keys draw from one generator, the OS
//! CSPRNG in production and whatever a test passes in.

use std::sync::{Arc, Mutex, PoisonError};

use rand_core::CryptoRngCore;

/// One generator, shared by whoever holds a clone.
#[derive(Clone)]
pub struct SharedRng(Arc<Mutex<Box<dyn CryptoRngCore + Send>>>);

impl SharedRng {
    /// Shares `rng`.
    pub fn new(rng: Box<dyn CryptoRngCore + Send>) -> Self {
        Self(Arc::new(Mutex::new(rng)))
    }

    /// Runs `f` with the generator (a panic elsewhere while holding it does not stop randomness).
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn CryptoRngCore) -> T) -> T {
        let mut rng = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(rng.as_mut())
    }
}

impl std::fmt::Debug for SharedRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedRng")
    }
}
