//! Key format v1, `<prefix>_<region>_<key_id>_<secret><checksum>`: making keys and reading them back.
//!
//! Parsing never touches storage: shape, range and checksum are checked here, so a mistyped or forged
//! key is refused before anything is looked up.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::base62;
use crate::hash::SecretHash;

/// The prefix a deployment uses unless it configures another.
pub const DEFAULT_PREFIX: &str = "fraiseql";
/// The region a deployment uses unless it configures another.
pub const DEFAULT_REGION: &str = "us_east_1";
/// No key is longer than this many bytes; a longer input is refused before anything else.
pub const MAX_KEY_LEN: usize = 255;
/// Width of the key id field: 128 bits in base62.
pub const KEY_ID_LEN: usize = 22;
/// Width of the secret field: 256 bits in base62.
pub const SECRET_LEN: usize = 43;
/// Width of the checksum field: a CRC-32 in base62.
pub const CHECKSUM_LEN: usize = 6;

const PREFIX_MIN_LEN: usize = 2;
const PREFIX_MAX_LEN: usize = 16;
/// The longest region that still leaves room, under the longest prefix, for a key of at most 255 bytes.
const REGION_MAX_LEN: usize = MAX_KEY_LEN - PREFIX_MAX_LEN - KEY_ID_LEN - SECRET_LEN - CHECKSUM_LEN - 3;
/// Everything after the region: `_<key id>_<secret><checksum>`, the same width in every key.
const TAIL_LEN: usize = 1 + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
/// A two-letter prefix and a one-letter region.
const SHORTEST_KEY_LEN: usize = PREFIX_MIN_LEN + 1 + 1 + TAIL_LEN;
/// 2^128 - 1 and 2^256 - 1 in base62: fixed-width digit strings compare like the numbers they encode.
const MAX_KEY_ID_DIGITS: &[u8; KEY_ID_LEN] = b"7n42DGM5Tflk9n8mt7Fhc7";
const MAX_SECRET_DIGITS: &[u8; SECRET_LEN] = b"yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1";

/// Why a string is not a well-formed key (or prefix, region, key id).
///
/// Each variant has a stable [`code`](KeyError::code) for logs, JSON and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The input is empty.
    Empty,
    /// The input is longer than [`MAX_KEY_LEN`] bytes.
    TooLong,
    /// A character outside `[A-Za-z0-9_]`.
    InvalidCharacter,
    /// Fewer than the four `_`-separated parts (prefix, region, key id, secret+checksum).
    MissingParts,
    /// The prefix is not `[a-z][a-z0-9]{1,15}`.
    InvalidPrefix,
    /// The region is not one or more `[a-z0-9]+` words joined by `_` (or, when configured, is too long).
    InvalidRegion,
    /// The key id field is not 22 base62 characters.
    InvalidKeyId,
    /// The key id field encodes a number of 2^128 or more.
    KeyIdOutOfRange,
    /// The secret+checksum field is not 49 base62 characters.
    InvalidSecret,
    /// The secret field encodes a number of 2^256 or more.
    SecretOutOfRange,
    /// The checksum does not match the rest of the key.
    ChecksumMismatch,
}

impl KeyError {
    /// A stable, greppable identifier for this error.
    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::InvalidCharacter => "invalid_character",
            Self::MissingParts => "missing_parts",
            Self::InvalidPrefix => "invalid_prefix",
            Self::InvalidRegion => "invalid_region",
            Self::InvalidKeyId => "invalid_key_id",
            Self::KeyIdOutOfRange => "key_id_out_of_range",
            Self::InvalidSecret => "invalid_secret",
            Self::SecretOutOfRange => "secret_out_of_range",
            Self::ChecksumMismatch => "checksum_mismatch",
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "the key is empty",
            Self::TooLong => "the key is longer than 255 bytes",
            Self::InvalidCharacter => "the key has a character outside [A-Za-z0-9_]",
            Self::MissingParts => "the key lacks one of prefix, region, key id, secret",
            Self::InvalidPrefix => "the prefix is not 2 to 16 characters of [a-z0-9] starting with a letter",
            Self::InvalidRegion => "the region is not [a-z0-9] words joined by '_'",
            Self::InvalidKeyId => "the key id is not 22 base62 characters",
            Self::KeyIdOutOfRange => "the key id does not fit in 128 bits",
            Self::InvalidSecret => "the secret and checksum are not 49 base62 characters",
            Self::SecretOutOfRange => "the secret does not fit in 256 bits",
            Self::ChecksumMismatch => "the checksum does not match",
        })
    }
}

impl core::error::Error for KeyError {}

fn is_lower_alnum(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit()
}

// The scans below fold without short-circuiting so the compiler can vectorize them: a key is short,
// and a check that stops early saves nothing but costs the vector loop.

/// `[A-Za-z0-9]`, without branches: the test [`base62::digit_value`] makes with a table, in a form the
/// compiler can vectorize.
fn is_base62_digit(b: u8) -> bool {
    // Setting bit 5 folds A-Z onto a-z and sends nothing else into a-z.
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter | digit
}

/// `[A-Za-z0-9_]`, without branches.
fn is_key_character(b: u8) -> bool {
    is_base62_digit(b) | (b == b'_')
}

fn all_key_characters(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |misfits, &b| misfits | u8::from(!is_key_character(b))) == 0
}

fn contains_underscore(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |found, b| found | u8::from(*b == b'_')) != 0
}

fn is_valid_prefix(prefix: &[u8]) -> bool {
    (PREFIX_MIN_LEN..=PREFIX_MAX_LEN).contains(&prefix.len())
        && prefix[0].is_ascii_lowercase()
        && prefix[1..].iter().all(|b| is_lower_alnum(*b))
}

/// Words of `[a-z0-9]+` joined by single underscores.
///
/// A loop that stops at the first misfit: it runs only for a region being configured or a key the
/// fast path below could not judge, and one pass carrying the byte before beats comparing pairs.
fn is_valid_region(region: &[u8]) -> bool {
    // As if an underscore came first: the region may neither start nor end with one, nor be empty.
    let mut after_underscore = true;
    for &b in region {
        let underscore = b == b'_';
        if !(is_lower_alnum(b) || (underscore && !after_underscore)) {
            return false;
        }
        after_underscore = underscore;
    }
    !after_underscore
}

/// Whether the six digits at the end of `bytes` are the checksum of everything before them.
fn checksum_matches(bytes: &[u8]) -> bool {
    let (body, checksum) = bytes.split_at(bytes.len().saturating_sub(CHECKSUM_LEN));
    // Fixed-width base62 is one-to-one, so decoding the six digits and comparing numbers is the same
    // test as encoding the CRC, with a multiply chain in place of a division chain.
    checksum.len() == CHECKSUM_LEN && base62::decode_u64(checksum) == u64::from(crc32fast::hash(body))
}

/// The verdict on a key whose shape the fast path can judge: where its prefix ends and its tail
/// starts, or [`KeyError::ChecksumMismatch`] when only the checksum is wrong. `None` for anything else.
///
/// The fast path for the keys that matter: good ones, and garbage that has a key's shape (the edge
/// refuses that without a lookup, so it must be cheap too). Every check runs over a window of fixed
/// width, so each is a few vector instructions with no loop: the tail has a fixed width, its two
/// separators sit at known places, and a prefix and region of up to [`SHORT_HEAD`] bytes fit one
/// window. [`split_step_by_step`] makes the same checks one by one, in the order that names the first
/// thing wrong; any key this cannot judge goes there, and a unit test holds that the two agree.
fn split_well_formed(bytes: &[u8]) -> Option<Result<(usize, usize), KeyError>> {
    if !(SHORTEST_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
        return None;
    }
    let key_id_at = bytes.len() - TAIL_LEN;
    let tail: &[u8; TAIL_LEN] = bytes[key_id_at..].try_into().ok()?;
    // `_` where the two separators belong and a base62 digit everywhere else.
    let misfits = (0..TAIL_LEN).zip(tail).fold(0u8, |misfits, (at, &b)| {
        let fits = if at == 0 || at == 1 + KEY_ID_LEN { b == b'_' } else { is_base62_digit(b) };
        misfits | u8::from(!fits)
    });
    if misfits != 0 {
        return None;
    }
    let prefix_end = split_short_head(bytes, key_id_at)?;
    // The alphabet is in ASCII order, so a first digit below the limit's settles the range at once.
    let key_id = &tail[1..1 + KEY_ID_LEN];
    let secret = &tail[2 + KEY_ID_LEN..2 + KEY_ID_LEN + SECRET_LEN];
    let in_range = |digits: &[u8], limit: &[u8]| digits[0] < limit[0] || digits <= limit;
    if !(in_range(key_id, MAX_KEY_ID_DIGITS) && in_range(secret, MAX_SECRET_DIGITS)) {
        return None;
    }
    // The checksum is the step-by-step checks' last, so a wrong one is their verdict too.
    Some(if checksum_matches(bytes) { Ok((prefix_end, key_id_at)) } else { Err(KeyError::ChecksumMismatch) })
}

/// The longest prefix and region (with the `_` between them) that [`split_well_formed`] takes.
const SHORT_HEAD: usize = 32;

/// Where the prefix ends, if the `head_len` bytes before the key id's `_` are a valid prefix, `_` and
/// a valid region, and at most [`SHORT_HEAD`] bytes.
///
/// Both are words of `[a-z0-9]+` joined by single underscores, the first word the prefix, so the
/// head is checked as one: a first byte that is a letter, only `[a-z0-9_]`, no underscore followed
/// by another (the byte after the head is the separator, so this also refuses a trailing one), and
/// a first underscore 2 to 16 bytes in. The loop has a fixed length, over a window that always
/// exists (every key is longer), and bytes past the head are masked out.
fn split_short_head(bytes: &[u8], head_len: usize) -> Option<usize> {
    let window: &[u8; SHORT_HEAD + 1] = bytes.get(..=SHORT_HEAD)?.try_into().ok()?;
    // Positions as bytes, so the masks are byte lanes.
    let head_len = u8::try_from(head_len).ok().filter(|len| usize::from(*len) <= SHORT_HEAD)?;
    let mut misfit = false;
    let mut first_underscore = u8::MAX;
    for (at, pair) in (0u8..).zip(window.windows(2)) {
        let (b, next) = (pair[0], pair[1]);
        let in_head = at < head_len;
        let underscore = b == b'_';
        misfit |= in_head & (!(is_lower_alnum(b) | underscore) | (underscore & (next == b'_')));
        first_underscore = first_underscore.min(if in_head & underscore { at } else { u8::MAX });
    }
    let prefix_end = usize::from(first_underscore);
    let well_formed =
        !misfit && window[0].is_ascii_lowercase() && (PREFIX_MIN_LEN..=PREFIX_MAX_LEN).contains(&prefix_end);
    well_formed.then_some(prefix_end)
}

/// Where a fixed-width field that ends at `end` should start, and what is wrong when it is not there.
#[derive(Clone, Copy)]
enum FieldFault {
    /// No `_` before `end` at all: a part is missing.
    Missing,
    /// The field between the last `_` and `end` has the wrong width.
    WrongWidth,
}

/// The index of the `_` that opens the `width`-byte field ending at `end`.
///
/// Parsing goes from the right: the last two fields have fixed widths, so their separators sit at fixed
/// distances from the end and need no search.
fn fixed_field(bytes: &[u8], end: usize, width: usize) -> Result<usize, FieldFault> {
    if let Some(separator) = end.checked_sub(width + 1) {
        if bytes[separator] == b'_' && !contains_underscore(&bytes[separator + 1..end]) {
            return Ok(separator);
        }
    }
    Err(if contains_underscore(&bytes[..end]) { FieldFault::WrongWidth } else { FieldFault::Missing })
}

/// The same checks as [`split_well_formed`] one at a time, in the order that decides which [`KeyError`]
/// a bad key gets.
fn split_step_by_step(bytes: &[u8]) -> Result<(usize, usize), KeyError> {
    if bytes.is_empty() {
        return Err(KeyError::Empty);
    }
    if bytes.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !all_key_characters(bytes) {
        return Err(KeyError::InvalidCharacter);
    }
    let fault = |fault, wrong_width| match fault {
        FieldFault::Missing => KeyError::MissingParts,
        FieldFault::WrongWidth => wrong_width,
    };
    let tail_at =
        fixed_field(bytes, bytes.len(), SECRET_LEN + CHECKSUM_LEN).map_err(|f| fault(f, KeyError::InvalidSecret))?;
    let key_id_at = fixed_field(bytes, tail_at, KEY_ID_LEN).map_err(|f| fault(f, KeyError::InvalidKeyId))?;
    // The region is the only part that may itself contain '_': the prefix ends at the first one.
    let head = &bytes[..key_id_at];
    let prefix_end = head.iter().position(|b| *b == b'_').ok_or(KeyError::MissingParts)?;
    if !is_valid_prefix(&head[..prefix_end]) {
        return Err(KeyError::InvalidPrefix);
    }
    if !is_valid_region(&head[prefix_end + 1..]) {
        return Err(KeyError::InvalidRegion);
    }
    if &bytes[key_id_at + 1..tail_at] > MAX_KEY_ID_DIGITS.as_slice() {
        return Err(KeyError::KeyIdOutOfRange);
    }
    let secret = &bytes[tail_at + 1..tail_at + 1 + SECRET_LEN];
    if secret > MAX_SECRET_DIGITS.as_slice() {
        return Err(KeyError::SecretOutOfRange);
    }
    if !checksum_matches(bytes) {
        return Err(KeyError::ChecksumMismatch);
    }
    Ok((prefix_end, key_id_at))
}

/// A deployment's key prefix, checked against `[a-z][a-z0-9]{1,15}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// Checks and wraps a prefix.
    pub fn new(prefix: &str) -> Result<Self, KeyError> {
        if is_valid_prefix(prefix.as_bytes()) {
            Ok(Self(prefix.into()))
        } else {
            Err(KeyError::InvalidPrefix)
        }
    }

    /// The prefix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.into())
    }
}

impl FromStr for Prefix {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::new(s)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A deployment's region: one or more `[a-z0-9]+` words joined by `_`, e.g. `us_east_1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Region(String);

impl Region {
    /// Checks and wraps a region.
    pub fn new(region: &str) -> Result<Self, KeyError> {
        // A configured region must leave room for any prefix; a presented key is bounded by its length.
        if region.len() <= REGION_MAX_LEN && is_valid_region(region.as_bytes()) {
            Ok(Self(region.into()))
        } else {
            Err(KeyError::InvalidRegion)
        }
    }

    /// The region text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Region {
    fn default() -> Self {
        Self(DEFAULT_REGION.into())
    }
}

impl FromStr for Region {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::new(s)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key's public identifier: 128 bits (a UUIDv7 when keygate makes it), written as 22 base62 digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u128);

impl KeyId {
    /// A new UUIDv7 key id: `unix_millis` in the top 48 bits, the rest from `rng`.
    pub fn new_v7<R: RngCore + CryptoRng + ?Sized>(unix_millis: u64, rng: &mut R) -> Self {
        let mut random = [0u8; 10];
        rng.fill_bytes(&mut random);
        Self::from(uuid::Builder::from_unix_timestamp_millis(unix_millis, &random).into_uuid())
    }

    /// The id with this numeric value (usable in constants).
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// The id as a UUID (the form the control plane stores).
    pub fn to_uuid(self) -> uuid::Uuid {
        uuid::Uuid::from_u128(self.0)
    }

    /// The 22 base62 digits, most significant first.
    pub fn to_digits(self) -> [u8; KEY_ID_LEN] {
        let mut digits = [b'0'; KEY_ID_LEN];
        // 62^22 > 2^128, so every u128 fits; the unit tests pin the widest one.
        let _always_fits = base62::encode_into(&self.0.to_be_bytes(), &mut digits);
        digits
    }

    /// Reads 22 base62 digits, checking width, alphabet and range.
    fn from_digits(digits: &[u8]) -> Result<Self, KeyError> {
        if digits.len() != KEY_ID_LEN || !digits.iter().all(|d| base62::digit_value(*d).is_some()) {
            return Err(KeyError::InvalidKeyId);
        }
        if digits > MAX_KEY_ID_DIGITS.as_slice() {
            return Err(KeyError::KeyIdOutOfRange);
        }
        Ok(Self::from_checked_digits(digits))
    }

    /// Reads digits already known to be 22 base62 characters no greater than 2^128 - 1, so the
    /// arithmetic cannot overflow. Two chunks of 10 digits fit a `u64` each: two wide multiplies in all.
    fn from_checked_digits(digits: &[u8]) -> Self {
        const SCALE: u128 = 62u128.pow(10);
        let (high, rest) = digits.split_at(digits.len().saturating_sub(20));
        let (middle, low) = rest.split_at(rest.len().saturating_sub(10));
        let value = (u128::from(base62::decode_u64(high)) * SCALE + u128::from(base62::decode_u64(middle))) * SCALE
            + u128::from(base62::decode_u64(low));
        Self(value)
    }
}

impl From<u128> for KeyId {
    fn from(value: u128) -> Self {
        Self(value)
    }
}

impl From<uuid::Uuid> for KeyId {
    fn from(uuid: uuid::Uuid) -> Self {
        Self(uuid.as_u128())
    }
}

impl FromStr for KeyId {
    type Err = KeyError;
    /// Reads the 22-digit form used in keys and in the admin API.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_digits(s.as_bytes())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for digit in self.to_digits() {
            fmt::Write::write_char(f, char::from(digit))?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <alloc::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The 256 secret bits of a key, from a CSPRNG. Wiped on drop; `Debug` prints nothing of it.
pub struct KeySecret(Zeroizing<[u8; 32]>);

impl KeySecret {
    /// Fresh secret bits from `rng` (the OS CSPRNG in production).
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    /// Wraps given bits (test vectors; keys brought from elsewhere).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(<redacted>)")
    }
}

/// The checksum digits of everything before them.
fn checksum_digits(body: &str) -> [u8; CHECKSUM_LEN] {
    let mut digits = [b'0'; CHECKSUM_LEN];
    // 62^6 > 2^32: every CRC-32 fits.
    let _always_fits = base62::encode_u64_into(u64::from(crc32fast::hash(body.as_bytes())), &mut digits);
    digits
}

/// A whole key, as shown to its owner once. Wiped on drop; `Debug` shows only the key id.
pub struct ApiKey {
    text: Zeroizing<String>,
    key_id: KeyId,
}

impl ApiKey {
    /// Puts a key together from its parts, computing the checksum.
    pub fn assemble(prefix: &Prefix, region: &Region, key_id: KeyId, secret: &KeySecret) -> Self {
        let len = prefix.0.len() + region.0.len() + KEY_ID_LEN + SECRET_LEN + CHECKSUM_LEN + 3;
        // Sized up front so the secret is never left behind in a reallocated buffer.
        let mut text = Zeroizing::new(String::with_capacity(len));
        let mut secret_digits = Zeroizing::new([b'0'; SECRET_LEN]);
        // 62^43 > 2^256: every secret fits.
        let _always_fits = base62::encode_into(secret.0.as_ref(), secret_digits.as_mut());
        text.push_str(prefix.as_str());
        text.push('_');
        text.push_str(region.as_str());
        text.push('_');
        text.extend(key_id.to_digits().iter().map(|d| char::from(*d)));
        text.push('_');
        text.extend(secret_digits.iter().map(|d| char::from(*d)));
        let checksum = checksum_digits(&text);
        text.extend(checksum.iter().map(|d| char::from(*d)));
        Self { text, key_id }
    }

    /// A new key: a UUIDv7 key id stamped `unix_millis` and a fresh secret, both from `rng`.
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(
        prefix: &Prefix,
        region: &Region,
        unix_millis: u64,
        rng: &mut R,
    ) -> Self {
        let key_id = KeyId::new_v7(unix_millis, rng);
        let secret = KeySecret::generate(rng);
        Self::assemble(prefix, region, key_id, &secret)
    }

    /// Checks a key held as an owned string, taking ownership so it is wiped with the `ApiKey`.
    pub fn parse(text: String) -> Result<Self, KeyError> {
        let text = Zeroizing::new(text);
        let key_id = ParsedKey::parse(&text)?.key_id();
        Ok(Self { text, key_id })
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The stored and replicated form of the key: SHA-256 of the whole key.
    pub fn hash(&self) -> SecretHash {
        SecretHash::of_key(&self.text)
    }

    /// The key text itself, secret part included: only for showing it to its owner.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The key as parsed parts (it was checked when it was made, so this cannot fail).
    pub fn parts(&self) -> ParsedKey<'_> {
        ParsedKey::split_checked(&self.text)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// A presented key that has passed every offline check (shape, range, checksum), borrowed from the input.
///
/// `Debug` shows prefix, region and key id, never the secret.
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    text: &'a str,
    prefix: &'a str,
    region: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// Checks `text` against key format v1. Reads no storage: a key that fails here is refused outright.
    pub fn parse(text: &'a str) -> Result<Self, KeyError> {
        let bytes = text.as_bytes();
        let (prefix_end, key_id_at) = split_well_formed(bytes).unwrap_or_else(|| split_step_by_step(bytes))?;
        // The key id is decoded only when asked for: the edge looks records up by its digits, and a
        // record check needs no number.
        Ok(Self { text, prefix: &text[..prefix_end], region: &text[prefix_end + 1..key_id_at] })
    }

    /// Splits a key already known to be well formed.
    fn split_checked(text: &'a str) -> Self {
        let head = text.get(..text.len().saturating_sub(SECRET_LEN + CHECKSUM_LEN + KEY_ID_LEN + 2)).unwrap_or("");
        let (prefix, region) = head.split_once('_').unwrap_or((head, ""));
        Self { text, prefix, region }
    }

    /// The prefix, e.g. `fraiseql`.
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The region, e.g. `us_east_1`.
    pub fn region(&self) -> &'a str {
        self.region
    }

    /// The key id (decoded from its digits on each call).
    pub fn key_id(&self) -> KeyId {
        KeyId::from_checked_digits(self.key_id_str().as_bytes())
    }

    /// The key id as it appears in the key (22 base62 digits): the lookup key for stored records.
    pub fn key_id_str(&self) -> &'a str {
        let end = self.text.len() - SECRET_LEN - CHECKSUM_LEN - 1;
        &self.text[end - KEY_ID_LEN..end]
    }

    /// SHA-256 of the whole key, the form records hold.
    pub fn hash(&self) -> SecretHash {
        SecretHash::of_key(self.text)
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, prop, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig};

    use super::*;

    #[test]
    fn range_limits_are_the_encodings_of_all_ones() {
        let mut id = [0u8; KEY_ID_LEN];
        assert!(base62::encode_into(&[0xff; 16], &mut id));
        assert_eq!(&id, MAX_KEY_ID_DIGITS);
        let mut secret = [0u8; SECRET_LEN];
        assert!(base62::encode_into(&[0xff; 32], &mut secret));
        assert_eq!(&secret, MAX_SECRET_DIGITS);
    }

    #[test]
    fn widest_prefix_and_region_stay_within_the_length_limit() {
        let prefix = Prefix::new("abcdefghijklmnop").unwrap();
        let region = Region::new(&"a".repeat(REGION_MAX_LEN)).unwrap();
        assert_eq!(Region::new(&"a".repeat(REGION_MAX_LEN + 1)), Err(KeyError::InvalidRegion));
        let key = ApiKey::assemble(&prefix, &region, KeyId::from(u128::MAX), &KeySecret::from_bytes([0xff; 32]));
        assert_eq!(key.expose().len(), MAX_KEY_LEN);
        assert!(ParsedKey::parse(key.expose()).is_ok());
    }

    #[test]
    fn a_presented_key_may_have_a_long_region_under_a_short_prefix() {
        let region = "b".repeat(MAX_KEY_LEN - 2 - KEY_ID_LEN - SECRET_LEN - CHECKSUM_LEN - 3);
        assert!(region.len() > REGION_MAX_LEN);
        let body = format!("ab_{region}_{}_{}", KeyId::from(1), "0".repeat(SECRET_LEN));
        let key = format!("{body}{}", core::str::from_utf8(&checksum_digits(&body)).unwrap());
        assert_eq!(key.len(), MAX_KEY_LEN);
        assert_eq!(ParsedKey::parse(&key).map(|k| k.region().len()), Ok(region.len()));
    }

    #[test]
    fn key_ids_round_trip_through_their_digits() {
        for value in
            [0u128, 1, 61, 62, 3_843, u128::from(u64::MAX), u128::MAX, 0x0190_a1b2_c3d4_7e8f_9a0b_1c2d_3e4f_5061]
        {
            let id = KeyId::from(value);
            assert_eq!(id.to_string().len(), KEY_ID_LEN);
            assert_eq!(id.to_string().parse::<KeyId>(), Ok(id));
        }
        assert_eq!("00000000000000000000-0".parse::<KeyId>(), Err(KeyError::InvalidKeyId));
        assert_eq!("0".parse::<KeyId>(), Err(KeyError::InvalidKeyId));
    }

    #[test]
    fn one_more_than_the_largest_key_id_is_out_of_range() {
        // "7n42DGM5Tflk9n8mt7Fhc8" is 2^128 exactly.
        assert_eq!("7n42DGM5Tflk9n8mt7Fhc8".parse::<KeyId>(), Err(KeyError::KeyIdOutOfRange));
        assert_eq!("7n42DGM5Tflk9n8mt7Fhc7".parse::<KeyId>(), Ok(KeyId::from(u128::MAX)));
    }

    #[test]
    fn parts_of_an_assembled_key_match_a_fresh_parse() {
        let key = ApiKey::assemble(
            &Prefix::new("acme").unwrap(),
            &Region::new("eu_west_2").unwrap(),
            KeyId::from(42),
            &KeySecret::from_bytes([7; 32]),
        );
        let parts = key.parts();
        let parsed = ParsedKey::parse(key.expose()).unwrap();
        assert_eq!(parts.prefix(), parsed.prefix());
        assert_eq!(parts.region(), parsed.region());
        assert_eq!(parts.key_id_str(), parsed.key_id_str());
        assert_eq!(parsed.key_id_str(), "000000000000000000000g");
    }

    #[test]
    fn the_branch_free_digit_test_agrees_with_the_digit_table() {
        for byte in 0..=u8::MAX {
            assert_eq!(is_base62_digit(byte), base62::digit_value(byte).is_some(), "byte {byte:#04x}");
        }
    }

    /// A key body (no checksum) with one byte replaced, removed or added, then a fresh checksum: every
    /// check but the checksum's gets a say.
    fn mutated(body: &str, edit: u8, at: prop::sample::Index, byte: u8) -> Option<String> {
        let mut bytes = body.as_bytes().to_vec();
        let at = at.index(bytes.len() + 1);
        match edit % 3 {
            0 if at < bytes.len() => bytes[at] = byte,
            1 if at < bytes.len() => drop(bytes.remove(at)),
            _ => bytes.insert(at, byte),
        }
        let body = String::from_utf8(bytes).ok()?;
        let checksum = checksum_digits(&body);
        Some(format!("{body}{}", core::str::from_utf8(&checksum).ok()?))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        #[test]
        fn the_fast_path_agrees_with_the_step_by_step_checks(
            prefix in "[a-z][a-z0-9]{1,15}",
            region in "[a-z0-9]{1,6}(_[a-z0-9]{1,6}){0,3}",
            id in prop_oneof![any::<u128>(), Just(u128::MAX), Just(0)],
            secret in prop_oneof![any::<[u8; 32]>(), Just([0xff; 32])],
            edits in prop::collection::vec((any::<u8>(), any::<prop::sample::Index>(), prop::sample::select(
                b"_0a9zAZy7-".to_vec())), 0..3),
            stale_checksum in any::<bool>(),
        ) {
            let key = ApiKey::assemble(&Prefix::new(&prefix).unwrap(), &Region::new(&region).unwrap(), KeyId::from(id), &KeySecret::from_bytes(secret));
            let mut text = key.expose().to_owned();
            for (edit, at, byte) in edits {
                let body = &text[..text.len().saturating_sub(CHECKSUM_LEN)];
                match mutated(body, edit, at, byte) {
                    Some(next) => text = next,
                    None => return Ok(()),
                }
            }
            if stale_checksum && text.len() >= CHECKSUM_LEN {
                let old = &key.expose()[key.expose().len() - CHECKSUM_LEN..];
                text.replace_range(text.len() - CHECKSUM_LEN.., old);
            }
            let bytes = text.as_bytes();
            // The fast path judges good keys and wrong checksums, and leaves longer heads to the other.
            let expected = match split_step_by_step(bytes) {
                Ok((prefix_end, key_id_at)) if key_id_at <= SHORT_HEAD => Some(Ok((prefix_end, key_id_at))),
                Err(KeyError::ChecksumMismatch) if bytes.len() - TAIL_LEN <= SHORT_HEAD => {
                    Some(Err(KeyError::ChecksumMismatch))
                }
                _ => None,
            };
            prop_assert_eq!(split_well_formed(bytes), expected, "{}", text);
        }
    }

    #[test]
    fn uuid_v7_key_ids_carry_the_timestamp() {
        struct Counting(u8);
        impl RngCore for Counting {
            fn next_u32(&mut self) -> u32 {
                0
            }
            fn next_u64(&mut self) -> u64 {
                0
            }
            fn fill_bytes(&mut self, dest: &mut [u8]) {
                for byte in dest {
                    self.0 = self.0.wrapping_add(1);
                    *byte = self.0;
                }
            }
            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
                self.fill_bytes(dest);
                Ok(())
            }
        }
        impl CryptoRng for Counting {}
        let id = KeyId::new_v7(1_700_000_000_123, &mut Counting(0));
        let uuid = id.to_uuid();
        assert_eq!(uuid.get_version_num(), 7);
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos / 1_000_000), (1_700_000_000, 123));
    }
}
