//! The console's server-side sessions: a random id (the cookie) → the admin key's id and the session's
//! CSRF token, in memory, ending 8 hours after sign-in or 30 minutes after the last request, whichever
//! comes first. Time comes from the service's [`Clock`]; ids and tokens from a [`SharedRng`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use keygate_shared::KeyId;

use crate::clock::Clock;
use crate::rng::SharedRng;

/// A session ends this long after sign-in, however busy.
pub const SESSION_MAX_SECS: i64 = 8 * 3_600;
/// A session ends after this long without a request.
pub const SESSION_IDLE_SECS: i64 = 30 * 60;
/// Most sessions kept at once; signing in past it ends the oldest.
pub const MAX_SESSIONS: usize = 10_000;

/// 32 random bytes, hex: a session id or a CSRF token. Its Debug output never shows the value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    fn random(rng: &SharedRng) -> Self {
        let mut bytes = [0u8; 32];
        rng.with(|rng| rng.fill_bytes(&mut bytes));
        Self(hex::encode(bytes))
    }

    /// The text, for the cookie or the form field.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// One signed-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The admin key that signed in; every request re-checks that it is still live.
    pub admin_id: KeyId,
    /// The token every form of this session carries.
    pub csrf: Token,
    started_at: i64,
    seen_at: i64,
}

/// The sessions of this process (a restart signs everyone out).
pub struct SessionStore {
    clock: Arc<dyn Clock>,
    rng: SharedRng,
    sessions: Mutex<HashMap<Token, Session>>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore").finish_non_exhaustive()
    }
}

impl SessionStore {
    /// An empty store reading `clock` and drawing ids from `rng`.
    pub fn new(clock: Arc<dyn Clock>, rng: SharedRng) -> Self {
        Self { clock, rng, sessions: Mutex::new(HashMap::new()) }
    }

    fn live(session: &Session, now: i64) -> bool {
        now < session.started_at + SESSION_MAX_SECS && now < session.seen_at + SESSION_IDLE_SECS
    }

    /// Starts a session for `admin_id`; its id (for the cookie) and the session.
    pub fn start(&self, admin_id: KeyId) -> (Token, Session) {
        let now = self.clock.now();
        let id = Token::random(&self.rng);
        let session = Session { admin_id, csrf: Token::random(&self.rng), started_at: now, seen_at: now };
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, s| Self::live(s, now));
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions.iter().min_by_key(|(_, s)| s.started_at).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session with this id, its idle timer restarted; an expired one is dropped.
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = self.clock.now();
        let key = Token(id.to_owned());
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let session = sessions.get_mut(&key)?;
        if !Self::live(session, now) {
            sessions.remove(&key);
            return None;
        }
        session.seen_at = now;
        Some(session.clone())
    }

    /// Ends the session with this id (sign-out).
    pub fn end(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(&Token(id.to_owned()));
    }

    /// Ends every session of `admin_id` (its key is no longer live).
    pub fn end_all(&self, admin_id: KeyId) {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, s| s.admin_id != admin_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn store(clock: &Arc<ManualClock>) -> SessionStore {
        SessionStore::new(clock.clone(), SharedRng::new(Box::new(rand_core::OsRng)))
    }

    fn admin() -> KeyId {
        "0000000000000000000001".parse().unwrap()
    }

    #[test]
    fn a_session_ends_after_its_idle_time() {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let sessions = store(&clock);
        let (id, started) = sessions.start(admin());
        assert_eq!(id.expose().len(), 64);
        assert_ne!(id, started.csrf);
        clock.advance(SESSION_IDLE_SECS - 1);
        assert_eq!(sessions.touch(id.expose()).map(|s| s.admin_id), Some(admin()));
        clock.advance(SESSION_IDLE_SECS - 1);
        assert!(sessions.touch(id.expose()).is_some(), "each request restarts the idle timer");
        clock.advance(SESSION_IDLE_SECS);
        assert!(sessions.touch(id.expose()).is_none());
        clock.advance(-SESSION_IDLE_SECS);
        assert!(sessions.touch(id.expose()).is_none(), "an expired session is gone for good");
    }

    #[test]
    fn a_busy_session_still_ends_after_its_maximum() {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let sessions = store(&clock);
        let (id, _) = sessions.start(admin());
        for _ in 0..(SESSION_MAX_SECS / 600 - 1) {
            clock.advance(600);
            assert!(sessions.touch(id.expose()).is_some());
        }
        clock.advance(600);
        assert!(sessions.touch(id.expose()).is_none());
    }

    #[test]
    fn sign_out_and_unknown_ids() {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let sessions = store(&clock);
        let (one, _) = sessions.start(admin());
        let (two, _) = sessions.start(admin());
        assert!(sessions.touch("not-a-session").is_none());
        sessions.end(one.expose());
        assert!(sessions.touch(one.expose()).is_none());
        assert!(sessions.touch(two.expose()).is_some());
        sessions.end_all(admin());
        assert!(sessions.touch(two.expose()).is_none());
    }

    #[test]
    fn debug_shows_no_token() {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let (id, session) = store(&clock).start(admin());
        let text = format!("{id:?} {session:?}");
        assert!(!text.contains(id.expose()) && !text.contains(session.csrf.expose()), "{text}");
    }
}
