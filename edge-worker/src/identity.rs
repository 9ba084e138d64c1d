//! Origin identity: the `Authorization: Bearer <JWT>` the edge puts on every request it forwards, so
//! the origin trusts keygate through its own standard JWT support. `ES256` (the default) signs with the
//! control plane's key the edge holds ([`crate::signing_keys`]); `HS256` signs with `ORIGIN_SECRET`.
//!
//! The ES256 signature itself is made by the runtime's WebCrypto (`crypto.subtle.sign`), not in wasm:
//! measured in workerd, WebCrypto signs in well under 0.1 ms where p256 compiled to wasm took about
//! 0.65 ms (BENCHMARKS.md, P9). So minting is two steps: [`OriginIdentity::begin`] builds the signing
//! input (or returns a token it may reuse, or an HS256 token at once), the worker signs it, and
//! [`OriginIdentity::finish`] assembles and keeps the token.
//!
//! Signing is the costly part and nothing in a token is request-specific, so an isolate reuses a key's
//! token for `ORIGIN_JWT_REUSE_SECS` (at most [`MAX_REUSE_SECS`]), but only while the record (its `seq`)
//! and the signing key (its `kid`) are the ones it was minted for: an edited key or a rotated signing
//! key gets a fresh token at once.
//!
//! With no way to sign (ES256 before the control plane has pushed a key, HS256 without
//! `ORIGIN_SECRET`), the request is forwarded without a token rather than refused: the edge's answer
//! does not depend on how the origin is set up, an origin that requires the token refuses the request
//! itself, and one still relying on the `X-Keygate-*` headers keeps working during a roll-out. The
//! worker logs the cause once per isolate. Clock and randomness are parameters.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use keygate_shared::jwt::{self, Claims, TokenSettings, HS256_KID, JTI_LEN, MAX_REUSE_SECS};
use keygate_shared::{KeyId, KeyRecord, OriginSecret, SyncSecret};
use zeroize::Zeroizing;

use crate::signing_keys::HeldSigningKeys;

/// Tokens held at most; a full cache first drops what may no longer be reused, then everything.
pub const TOKEN_CAPACITY: usize = 10_000;
/// How often tokens that may no longer be reused are dropped, so a long-lived isolate holds only the
/// last few seconds' worth.
pub const SWEEP_EVERY_SECS: i64 = 10;

/// The client's request headers the origin never gets, by name (in lower case, as the runtime gives
/// names): the API key, `Host`, and the client's own `Authorization`, as only keygate's token may reach
/// the origin.
pub const DROPPED_CLIENT_HEADERS: [&str; 3] = ["x-api-key", "host", "authorization"];

/// The prefix of the identity headers (lower case): only keygate's, signed, reach the origin, so the
/// client's own are dropped.
pub const IDENTITY_HEADER_PREFIX: &str = "x-keygate-";

/// What comes before the token in the `Authorization` header's value.
pub const BEARER: &str = "Bearer ";

/// Whether a client's request header goes on to the origin: not one of [`DROPPED_CLIENT_HEADERS`] and
/// not an identity header ([`IDENTITY_HEADER_PREFIX`]), in any case.
pub fn forwards_client_header(name: &str) -> bool {
    let identity =
        name.get(..IDENTITY_HEADER_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(IDENTITY_HEADER_PREFIX));
    let dropped = DROPPED_CLIENT_HEADERS.iter().any(|d| name.eq_ignore_ascii_case(d));
    !identity && !dropped
}

/// The JWS algorithm of the origin's tokens (var `ORIGIN_JWT_ALG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alg {
    /// The control plane's keys, published as a JWKS.
    #[default]
    Es256,
    /// `ORIGIN_SECRET`, shared with a single origin.
    Hs256,
}

/// The token's settings, from the worker's vars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// `ORIGIN_JWT_ALG`.
    pub alg: Alg,
    /// `ORIGIN_JWT_ISSUER`, `ORIGIN_JWT_AUDIENCE`, `ORIGIN_JWT_TTL_SECS`.
    pub settings: TokenSettings,
    /// `ORIGIN_JWT_REUSE_SECS`: how long one key's token is reused; 0 signs every request.
    pub reuse_secs: i64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self { alg: Alg::Es256, settings: TokenSettings::default(), reuse_secs: MAX_REUSE_SECS }
    }
}

impl IdentityConfig {
    /// The settings from `var(name)` (a var's value, if set). A value that is not valid is replaced by
    /// the default and named in the returned list, for the log.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> (Self, Vec<&'static str>) {
        let mut config = Self::default();
        let mut invalid = Vec::new();
        let var = |name| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        match var("ORIGIN_JWT_ALG") {
            Some(alg) if alg.eq_ignore_ascii_case("ES256") => config.alg = Alg::Es256,
            Some(alg) if alg.eq_ignore_ascii_case("HS256") => config.alg = Alg::Hs256,
            Some(_) => invalid.push("ORIGIN_JWT_ALG"),
            None => {}
        }
        if let Some(issuer) = var("ORIGIN_JWT_ISSUER") {
            config.settings.issuer = issuer;
        }
        if let Some(audience) = var("ORIGIN_JWT_AUDIENCE") {
            config.settings.audience = audience;
        }
        match var("ORIGIN_JWT_TTL_SECS").map(|v| v.parse::<i64>()) {
            Some(Ok(ttl)) if ttl > 0 => config.settings.ttl_secs = ttl,
            Some(_) => invalid.push("ORIGIN_JWT_TTL_SECS"),
            None => {}
        }
        match var("ORIGIN_JWT_REUSE_SECS").map(|v| v.parse::<i64>()) {
            Some(Ok(reuse)) if (0..=MAX_REUSE_SECS).contains(&reuse) => config.reuse_secs = reuse,
            Some(_) => invalid.push("ORIGIN_JWT_REUSE_SECS"),
            None => {}
        }
        (config, invalid)
    }

    /// How long a token is reused: never more than half its life, so the origin always gets one with
    /// time left (this only bites when `ORIGIN_JWT_TTL_SECS` is under twice the reuse time).
    fn effective_reuse_secs(&self) -> i64 {
        self.reuse_secs.clamp(0, MAX_REUSE_SECS).min(self.settings.ttl_secs / 2)
    }
}

/// Why a request goes to the origin without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoToken {
    /// ES256, and no key is active yet (the control plane has pushed none, or only pending ones).
    NoSigningKey,
    /// ES256, and the active key does not open with this edge's `SYNC_SECRET` (or it is not set).
    SigningKeyUnopenable,
    /// HS256, and `ORIGIN_SECRET` is not set.
    NoOriginSecret,
    /// The CSPRNG failed, so no unique `jti` could be made.
    NoRandomness,
    /// WebCrypto refused to import the key or to sign.
    SigningFailed,
}

impl NoToken {
    /// One line for the operator's log; it names no key material.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoSigningKey => {
                "keygate: ORIGIN_JWT_ALG is ES256 but no signing key is active yet (has the control plane \
                 pushed one?): forwarding without Authorization"
            }
            Self::SigningKeyUnopenable => {
                "keygate: the active signing key does not open with this SYNC_SECRET: forwarding without \
                 Authorization"
            }
            Self::NoOriginSecret => {
                "keygate: ORIGIN_JWT_ALG is HS256 but the ORIGIN_SECRET secret is not set: forwarding without \
                 Authorization"
            }
            Self::NoRandomness => "keygate: no randomness for a token's jti: forwarding without Authorization",
            Self::SigningFailed => {
                "keygate: WebCrypto could not sign the origin's token: forwarding without Authorization"
            }
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::NoSigningKey => 1,
            Self::SigningKeyUnopenable => 2,
            Self::NoOriginSecret => 4,
            Self::NoRandomness => 8,
            Self::SigningFailed => 16,
        }
    }
}

/// A token and what it was minted for. `Debug` leaves the token out: it is a bearer credential.
#[derive(Clone)]
struct Minted {
    /// The `Authorization` header's value that carries the token (`Bearer <JWT>`).
    token: Rc<str>,
    seq: u64,
    kid: String,
    iat: i64,
}

impl Minted {
    /// Whether it may still be reused at `now`. A clock that went back does not make it younger.
    fn young(&self, reuse_secs: i64, now: i64) -> bool {
        (self.iat..self.iat.saturating_add(reuse_secs)).contains(&now)
    }
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("seq", &self.seq)
            .field("kid", &self.kid)
            .field("iat", &self.iat)
            .finish_non_exhaustive()
    }
}

/// An isolate's recent tokens by key id, each reused while it is young and still describes its key.
#[derive(Debug, Clone)]
pub struct RecentTokens {
    entries: HashMap<KeyId, Minted>,
    reuse_secs: i64,
    capacity: usize,
    /// When the next mint drops what may no longer be reused.
    next_sweep: i64,
}

impl RecentTokens {
    /// Reuses tokens for `reuse_secs` (0 keeps none), holding at most `capacity`.
    pub fn new(reuse_secs: i64, capacity: usize) -> Self {
        Self { entries: HashMap::new(), reuse_secs: reuse_secs.max(0), capacity, next_sweep: i64::MIN }
    }

    /// The held token for `record` if it was minted with `kid` for this very record and may still be
    /// reused at `now` (unix seconds).
    pub fn reusable(&self, record: &KeyRecord, kid: &str, now: i64) -> Option<Rc<str>> {
        self.entries
            .get(&record.key_id)
            .filter(|m| m.seq == record.seq && m.kid == kid && m.young(self.reuse_secs, now))
            .map(|m| m.token.clone())
    }

    /// Keeps `token`, minted with `kid` for `record` at `now`, for reuse.
    pub fn keep(&mut self, record: &KeyRecord, kid: &str, token: Rc<str>, now: i64) {
        if self.reuse_secs == 0 {
            return;
        }
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now.saturating_add(SWEEP_EVERY_SECS);
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&record.key_id) {
            self.sweep(now);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        let minted = Minted { token, seq: record.seq, kid: kid.to_owned(), iat: now };
        self.entries.insert(record.key_id, minted);
    }

    fn sweep(&mut self, now: i64) {
        let reuse_secs = self.reuse_secs;
        self.entries.retain(|_, minted| minted.young(reuse_secs, now));
    }

    /// Tokens held, reusable or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What putting a token on a request takes, after [`OriginIdentity::begin`]. `Debug` leaves a
/// ready token out: it is a bearer credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Mint {
    /// A token to use as it is, reused or just signed with HS256, as the `Authorization` header's
    /// value that carries it (`Bearer <JWT>`): made once per token, not once per request.
    Ready(Rc<str>),
    /// An ES256 signature over `input` with the active key, `kid` at `version` (its private JWK from
    /// [`OriginIdentity::private_jwk`]); then [`OriginIdentity::finish`].
    Es256 {
        /// The active key's id.
        kid: String,
        /// The active key's version: with the kid, what an imported key is held under.
        version: u64,
        /// The JWS signing input.
        input: String,
    },
}

impl fmt::Debug for Mint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(_) => f.write_str("Ready(..)"),
            Self::Es256 { kid, version, .. } => {
                f.debug_struct("Es256").field("kid", kid).field("version", version).finish_non_exhaustive()
            }
        }
    }
}

/// Everything an isolate needs to put a token on a forwarded request.
#[derive(Debug)]
pub struct OriginIdentity {
    config: IdentityConfig,
    /// `ORIGIN_SECRET`: signs the identity headers, and the tokens when the algorithm is HS256.
    origin_secret: Option<OriginSecret>,
    /// Opens the ES256 keys; `None` if `SYNC_SECRET` is not set.
    sync_secret: Option<SyncSecret>,
    keys: HeldSigningKeys,
    tokens: RecentTokens,
    /// The [`NoToken`] causes already logged, as bits.
    reported: u8,
    /// The identity headers' signatures made in one second (unix seconds), by key id: with the tier
    /// they signed. A key's requests within that second carry the same signature, made once.
    signed: (i64, HashMap<String, (String, Rc<str>)>),
}

impl OriginIdentity {
    /// The identity `config` describes, with the worker's secrets.
    pub fn new(config: IdentityConfig, origin_secret: Option<OriginSecret>, sync_secret: Option<SyncSecret>) -> Self {
        let tokens = RecentTokens::new(config.effective_reuse_secs(), TOKEN_CAPACITY);
        let keys = HeldSigningKeys::default();
        Self { config, origin_secret, sync_secret, keys, tokens, reported: 0, signed: (0, HashMap::new()) }
    }

    /// `X-Keygate-Signature` for the identity headers of `key_id` and `tier` signed at `signed_at`
    /// (unix seconds), or `None` without `ORIGIN_SECRET`. Made once per key, tier and second.
    pub fn header_signature(&mut self, signed_at: i64, key_id: &str, tier: &str) -> Option<Rc<str>> {
        let secret = self.origin_secret.as_ref()?;
        let (second, signed) = &mut self.signed;
        if *second != signed_at {
            *second = signed_at;
            signed.clear();
        }
        if let Some((signed_tier, signature)) = signed.get(key_id) {
            if signed_tier == tier {
                return Some(signature.clone());
            }
        }
        let signature: Rc<str> = secret.sign(signed_at, key_id, tier).into();
        signed.insert(key_id.to_owned(), (tier.to_owned(), signature.clone()));
        Some(signature)
    }

    /// The settings in use.
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// Whether to read the signing keys from KV before signing at `now_ms` (never for HS256).
    pub fn needs_keys(&self, now_ms: i64) -> bool {
        self.config.alg == Alg::Es256 && self.keys.needs_read(now_ms)
    }

    /// The isolate's signing keys, to give it what a KV read or a push returned.
    pub fn keys_mut(&mut self) -> &mut HeldSigningKeys {
        &mut self.keys
    }

    /// The first step of a token for `record` at `now_ms`: a token it may reuse, an HS256 token signed at
    /// once, or the input for an ES256 signature. A new token's `jti` comes from `random`.
    pub fn begin(
        &mut self,
        record: &KeyRecord,
        now_ms: i64,
        random: impl FnOnce() -> Option<[u8; JTI_LEN]>,
    ) -> Result<Mint, NoToken> {
        let now = now_ms.div_euclid(1000);
        let (alg, kid, version) = match self.config.alg {
            Alg::Hs256 => {
                self.origin_secret.as_ref().ok_or(NoToken::NoOriginSecret)?;
                ("HS256", HS256_KID.to_owned(), 0)
            }
            Alg::Es256 => {
                let active = self.keys.active(now).ok_or(NoToken::NoSigningKey)?;
                ("ES256", active.kid.clone(), active.version)
            }
        };
        if let Some(token) = self.tokens.reusable(record, &kid, now) {
            return Ok(Mint::Ready(token));
        }
        let jti = random().ok_or(NoToken::NoRandomness)?;
        let input = jwt::signing_input(alg, &kid, &Claims::for_record(record, &self.config.settings, now, &jti));
        match &self.origin_secret {
            Some(secret) if self.config.alg == Alg::Hs256 => {
                let signature = jwt::hs256(secret, &input);
                Ok(Mint::Ready(self.finish(record, &kid, input, &signature, now_ms)))
            }
            _ => Ok(Mint::Es256 { kid, version, input }),
        }
    }

    /// The private JWK of the key that signs at `now` (unix seconds), for WebCrypto to import once.
    pub fn private_jwk(&self, now: i64) -> Result<Zeroizing<String>, NoToken> {
        let secret = self.sync_secret.as_ref().ok_or(NoToken::SigningKeyUnopenable)?;
        let active = self.keys.active(now).ok_or(NoToken::NoSigningKey)?;
        active.open_private_jwk(secret).map_err(|_| NoToken::SigningKeyUnopenable)
    }

    /// The token made of `input` (from [`Mint::Es256`], or an HS256 one) and its `signature`, kept for
    /// reuse under `kid`, as the `Authorization` header's value that carries it (`Bearer <JWT>`).
    pub fn finish(&mut self, record: &KeyRecord, kid: &str, input: String, signature: &[u8], now_ms: i64) -> Rc<str> {
        let token: Rc<str> = format!("{BEARER}{}", jwt::compact(input, signature)).into();
        self.tokens.keep(record, kid, token.clone(), now_ms.div_euclid(1000));
        token
    }

    /// Whether `cause` is seen for the first time in this isolate (then log it; after, stay quiet).
    pub fn first_report(&mut self, cause: NoToken) -> bool {
        let first = self.reported & cause.bit() == 0;
        self.reported |= cause.bit();
        first
    }
}
