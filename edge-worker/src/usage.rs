//! Usage counted in the isolate and reported to the control plane (DESIGN.md, "Operators see and
//! steer their keys"): what became of each request, per key and minute, cut into signed
//! [`UsageBatch`]es that the worker posts off the request path ([`flush`] in the wasm build).
//!
//! What counts, one event per request (a batch request is one, each of its operations counted by
//! name): `admitted`, `forbidden` (403), `rate_limited` (429), and `refused` (401) only when a record
//! was found for the key id (wrong secret, revoked, disabled, expired). A malformed key, an unknown
//! id, a missing key, a 400, a 503 or a persisted query the edge does not know count nowhere: they
//! name no key the operator has. Over a WebSocket, the upgrade (or the `connection_init` that carries
//! the key) counts as one request without an operation, and each `subscribe`/`start` as one request
//! with its operation's name.
//!
//! The [`UsageCounter`] holds at most one batch that is being sent or waits to be sent again: while
//! it waits, new events merge into the counts per key and minute, so a control plane that is down
//! costs memory by key-minutes, not by requests, and the whole is capped ([`Policy::memory_cap`]).
//! A batch keeps its id and its bytes on every retry (the control plane keeps a batch id once), with
//! backoff, as long as the next try would start within [`Policy::retry_for_ms`] of its first; then
//! it is dropped and its events go into the `dropped` count of the next batch. An event that finds
//! no room is dropped and counted the same way. A control plane answer that says the batch can
//! never be taken (400, 413, 422) drops it at once; any other failure is retried.
//!
//! Time and the batch id's randomness are parameters; nothing here panics.

use keygate_shared::sync::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use keygate_shared::usage::{
    self, OperationCount, UsageBatch, UsageRow, BATCH_ID_LEN, MAX_OPERATIONS_PER_ROW, MAX_ROWS_PER_BATCH,
    OTHER_OPERATIONS,
};
use keygate_shared::{KeyId, KeyRecord, ParsedKey, SyncSecret};

use crate::check::{Admitted, RecordSource, Refused, StoreFault};

#[cfg(target_arch = "wasm32")]
pub(crate) mod flush;

/// What became of one request, as usage counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Let through to the origin.
    Admitted,
    /// Refused for a missing permission (403).
    Forbidden,
    /// Refused by the rate limit (429).
    RateLimited,
    /// Refused as a bad key although a record for its id exists (401).
    Refused,
}

/// The request a check saw, as usage counts it: the key and the outcome, or `None` when it counts
/// nowhere (see the module's doc). `api_key` is the key the request presented and `record_found`
/// whether the check found a record for its id ([`NotingRecords::found`]).
pub fn outcome(
    api_key: Option<&str>,
    record_found: bool,
    checked: &Result<Admitted, Refused>,
) -> Option<(KeyId, Outcome)> {
    let outcome = match checked {
        Ok(admitted) => return Some((admitted.record.key_id, Outcome::Admitted)),
        Err(Refused::Forbidden(_)) => Outcome::Forbidden,
        Err(Refused::RateLimited { .. }) => Outcome::RateLimited,
        Err(Refused::BadKey) if record_found => Outcome::Refused,
        Err(_) => return None,
    };
    // A 403, a 429 and a refusal with a record all got past the key's shape and checksum.
    let key = ParsedKey::parse(api_key?).ok()?;
    Some((key.key_id(), outcome))
}

/// A record source that notes whether it found a record: what tells a 401 for a known key id (which
/// counts) from one for an unknown id (which does not), without the client seeing any difference.
pub struct NotingRecords<R> {
    inner: R,
    found: std::cell::Cell<bool>,
}

impl<R> NotingRecords<R> {
    /// `inner`, noting its answers.
    pub fn new(inner: R) -> Self {
        Self { inner, found: std::cell::Cell::new(false) }
    }

    /// Whether any read found a record.
    pub fn found(&self) -> bool {
        self.found.get()
    }
}

impl<R: RecordSource> RecordSource for NotingRecords<R> {
    async fn record(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreFault> {
        let record = self.inner.record(key_id).await;
        if matches!(record, Ok(Some(_))) {
            self.found.set(true);
        }
        record
    }
}

/// When to flush, how long to retry, and how much to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A flush is due this long after the last one (ms).
    pub flush_every_ms: i64,
    /// A flush is due once this many events wait.
    pub flush_events: u64,
    /// A batch that did not get through is retried while its next try would start within this long
    /// of its first (ms); then it is dropped.
    pub retry_for_ms: i64,
    /// The first retry's wait (ms); each next one waits twice as long, up to [`Policy::max_backoff_ms`].
    pub first_backoff_ms: i64,
    /// The longest wait between two tries (ms).
    pub max_backoff_ms: i64,
    /// A send that has not finished this long after it started is taken as failed (ms): the runtime
    /// may cancel it without telling.
    pub send_timeout_ms: i64,
    /// The most bytes a batch's body may take: rows past it go in the next batch, due at once. The
    /// control plane takes request bodies up to 64 KiB.
    pub max_batch_bytes: usize,
    /// About how many bytes the counts and the unsent batch may take.
    pub memory_cap: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            flush_every_ms: 10_000,
            flush_events: 1_000,
            retry_for_ms: 300_000,
            first_backoff_ms: 1_000,
            max_backoff_ms: 30_000,
            send_timeout_ms: 30_000,
            max_batch_bytes: 60 * 1024,
            memory_cap: 1024 * 1024,
        }
    }
}

/// What a row takes at most in the batch's JSON (with 20-digit counts and an `(other)` count), and
/// about what it takes in memory, before its named operations.
const ROW_BYTES: usize = 288;
/// What an operation's count takes at most in the JSON besides its name (a GraphQL name needs no
/// escaping), and about what it takes in memory.
const OPERATION_BYTES: usize = 48;
/// What a batch's JSON takes besides its rows, at most.
const BATCH_BYTES: usize = 96;

/// One key's counts in one minute.
#[derive(Debug, Default, Clone)]
struct Counts {
    admitted: u64,
    forbidden: u64,
    rate_limited: u64,
    refused: u64,
    /// At most [`MAX_OPERATIONS_PER_ROW`] names.
    operations: Vec<OperationCount>,
    /// Operations past those names (or past the memory cap).
    other: u64,
}

impl Counts {
    /// What the row takes: at most in the batch's JSON, about in memory.
    fn bytes(&self) -> usize {
        let operations: usize = self.operations.iter().map(|op| OPERATION_BYTES + op.name.len()).sum();
        ROW_BYTES + operations
    }

    fn events(&self) -> u64 {
        self.admitted.saturating_add(self.forbidden).saturating_add(self.rate_limited).saturating_add(self.refused)
    }

    fn into_row(self, key_id: KeyId, minute: i64) -> UsageRow {
        let mut operations = self.operations;
        if self.other > 0 {
            operations.push(OperationCount { name: OTHER_OPERATIONS.to_owned(), count: self.other });
        }
        UsageRow {
            key_id,
            minute,
            admitted: self.admitted,
            forbidden: self.forbidden,
            rate_limited: self.rate_limited,
            refused: self.refused,
            operations,
        }
    }
}

/// A batch cut from the counts, sent or waiting to be sent again.
#[derive(Debug)]
struct Unsent {
    batch_id: String,
    body: Vec<u8>,
    /// The events its rows hold plus the drops it reports: what is dropped if it is.
    events: u64,
    first_try_ms: i64,
    tries: u32,
    /// When the send under way started.
    sending_since: Option<i64>,
    /// When to try again, once a try failed.
    next_try_ms: i64,
}

/// A batch to post now: its id and its JSON body, unchanged on every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The batch's id, to report the answer with ([`UsageCounter::finished`]).
    pub batch_id: String,
    /// The [`UsageBatch`] as JSON.
    pub body: Vec<u8>,
}

impl Outgoing {
    /// The request's headers, signed at `now` (unix seconds) with the key `usage::sign` derives from
    /// the sync secret.
    pub fn headers(&self, secret: &SyncSecret, now: i64) -> [(&'static str, String); 3] {
        [
            ("content-type", "application/json".to_owned()),
            (TIMESTAMP_HEADER, now.to_string()),
            (SIGNATURE_HEADER, usage::sign(secret, now, &self.body)),
        ]
    }
}

/// What became of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The control plane took the batch (2xx).
    Delivered,
    /// Try again later: no answer, a 5xx, or a 4xx that may pass later (401 while secrets are being
    /// changed, 404 before the control plane knows the route, 429).
    Retry,
    /// The control plane will never take this batch (400, 413, 422): drop it.
    Rejected,
}

impl Delivery {
    /// The delivery an HTTP status means.
    pub fn from_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Delivered,
            400 | 413 | 422 => Self::Rejected,
            _ => Self::Retry,
        }
    }
}

/// An isolate's usage counts and its one unsent batch.
#[derive(Debug, Default)]
pub struct UsageCounter {
    policy: Policy,
    /// Counts by (minute, key), sorted so that the oldest minutes go first. A sorted `Vec` rather than
    /// a `BTreeMap`: far less code in the worker, and new rows go near its end (this minute's).
    rows: Vec<((i64, KeyId), Counts)>,
    /// The events `rows` holds.
    events: u64,
    /// About the bytes `rows` and `unsent` take.
    bytes: usize,
    /// When the last batch was cut; `None` before the first event.
    last_flush_ms: Option<i64>,
    unsent: Option<Unsent>,
    /// Events dropped and not yet in a batch.
    dropped: u64,
    /// When the armed timer fires, if one is.
    timer_at_ms: Option<i64>,
}

impl UsageCounter {
    /// An empty counter with `policy`.
    pub fn new(policy: Policy) -> Self {
        Self { policy, ..Self::default() }
    }

    /// Counts one request of `key_id` at `now_ms` (unix ms). `operations` are the names of an admitted
    /// request's operations (`None` for an anonymous one); they are ignored for other outcomes.
    pub fn record<'a>(
        &mut self,
        key_id: KeyId,
        outcome: Outcome,
        operations: impl IntoIterator<Item = Option<&'a str>>,
        now_ms: i64,
    ) {
        self.last_flush_ms.get_or_insert(now_ms);
        let now = now_ms.div_euclid(1000);
        let minute = now - now.rem_euclid(60);
        let slot = (minute, key_id);
        let at = match self.rows.binary_search_by(|(held, _)| held.cmp(&slot)) {
            Ok(at) => at,
            Err(at) => {
                if self.bytes.saturating_add(ROW_BYTES) > self.policy.memory_cap {
                    self.dropped = self.dropped.saturating_add(1);
                    return;
                }
                self.bytes = self.bytes.saturating_add(ROW_BYTES);
                self.rows.insert(at, (slot, Counts::default()));
                at
            }
        };
        let Some((_, counts)) = self.rows.get_mut(at) else { return };
        self.events = self.events.saturating_add(1);
        let count = match outcome {
            Outcome::Admitted => &mut counts.admitted,
            Outcome::Forbidden => &mut counts.forbidden,
            Outcome::RateLimited => &mut counts.rate_limited,
            Outcome::Refused => &mut counts.refused,
        };
        *count = count.saturating_add(1);
        if outcome != Outcome::Admitted {
            return;
        }
        for name in operations {
            let name = usage::operation_name(name);
            if let Some(known) = counts.operations.iter_mut().find(|op| op.name == name) {
                known.count = known.count.saturating_add(1);
                continue;
            }
            let cost = OPERATION_BYTES + name.len();
            if counts.operations.len() >= MAX_OPERATIONS_PER_ROW
                || self.bytes.saturating_add(cost) > self.policy.memory_cap
            {
                counts.other = counts.other.saturating_add(1);
                continue;
            }
            self.bytes += cost;
            counts.operations.push(OperationCount { name: name.to_owned(), count: 1 });
        }
    }

    /// The batch to post now, if a flush is due and none is under way: the unsent batch again once its
    /// backoff has passed; else, with none unsent, a new batch cut from the counts when
    /// [`Policy::flush_every_ms`] has passed since the last one or [`Policy::flush_events`] events
    /// wait. `random` gives the new batch's id (`None` if the system's randomness failed: the flush
    /// waits).
    pub fn take_due(&mut self, now_ms: i64, random: impl FnOnce() -> Option<[u8; 16]>) -> Option<Outgoing> {
        if let Some(since) = self.unsent.as_ref().and_then(|unsent| unsent.sending_since) {
            if now_ms.saturating_sub(since) < self.policy.send_timeout_ms {
                return None;
            }
            // The send was lost (cancelled with its request): a try that failed when it timed out.
            self.finished_try(Delivery::Retry, since.saturating_add(self.policy.send_timeout_ms));
        }
        // Only tries that start within the bound are made (see `finished_try`); a try that is late
        // for want of a request to start it still goes.
        if let Some(unsent) = &mut self.unsent {
            if now_ms < unsent.next_try_ms {
                return None;
            }
            unsent.sending_since = Some(now_ms);
            unsent.tries = unsent.tries.saturating_add(1);
            return Some(Outgoing { batch_id: unsent.batch_id.clone(), body: unsent.body.clone() });
        }
        if !self.due(now_ms) {
            return None;
        }
        let batch_id = hex(&random()?);
        // The oldest rows, as many as the batch's limits allow (at least one).
        let mut size = BATCH_BYTES;
        let mut taken = 0;
        for (_, counts) in &self.rows {
            let row = counts.bytes();
            if taken == MAX_ROWS_PER_BATCH || (taken > 0 && size + row > self.policy.max_batch_bytes) {
                break;
            }
            size += row;
            taken += 1;
        }
        let mut rows = Vec::with_capacity(taken);
        let mut events = 0u64;
        for ((minute, key_id), counts) in self.rows.drain(..taken) {
            events = events.saturating_add(counts.events());
            rows.push(counts.into_row(key_id, minute));
        }
        self.events = self.events.saturating_sub(events);
        self.bytes = self.bytes.saturating_sub(size - BATCH_BYTES);
        // Rows left behind are due as soon as this batch is through.
        let due_again = if self.rows.is_empty() { now_ms } else { now_ms.saturating_sub(self.policy.flush_every_ms) };
        self.last_flush_ms = Some(due_again);
        let batch = UsageBatch { batch_id, rows, dropped: std::mem::take(&mut self.dropped) };
        let events = events.saturating_add(batch.dropped);
        let Ok(body) = serde_json::to_vec(&batch) else {
            // Not for these types; if it were, the events would be lost: say so.
            self.dropped = self.dropped.saturating_add(events);
            return None;
        };
        self.bytes = self.bytes.saturating_add(body.len());
        let outgoing = Outgoing { batch_id: batch.batch_id.clone(), body: body.clone() };
        self.unsent = Some(Unsent {
            batch_id: batch.batch_id,
            body,
            events,
            first_try_ms: now_ms,
            tries: 1,
            sending_since: Some(now_ms),
            next_try_ms: now_ms,
        });
        Some(outgoing)
    }

    /// Whether a new batch is due at `now_ms`.
    fn due(&self, now_ms: i64) -> bool {
        let waiting = self.events > 0 || self.dropped > 0;
        let since = self.last_flush_ms.map_or(0, |last| now_ms.saturating_sub(last));
        waiting && (self.events >= self.policy.flush_events || since >= self.policy.flush_every_ms)
    }

    /// Reports what became of the send of `batch_id` at `now_ms`.
    pub fn finished(&mut self, batch_id: &str, delivery: Delivery, now_ms: i64) {
        let ours = self.unsent.as_ref().is_some_and(|u| u.batch_id == batch_id && u.sending_since.is_some());
        if ours {
            self.finished_try(delivery, now_ms);
        }
    }

    fn finished_try(&mut self, delivery: Delivery, now_ms: i64) {
        let Some(unsent) = &mut self.unsent else { return };
        unsent.sending_since = None;
        match delivery {
            Delivery::Delivered => {
                self.bytes = self.bytes.saturating_sub(unsent.body.len());
                self.unsent = None;
            }
            Delivery::Rejected => self.drop_unsent(),
            Delivery::Retry => {
                let doublings = unsent.tries.saturating_sub(1).min(20);
                let backoff =
                    self.policy.first_backoff_ms.saturating_mul(1 << doublings).min(self.policy.max_backoff_ms);
                unsent.next_try_ms = now_ms.saturating_add(backoff);
                if unsent.next_try_ms.saturating_sub(unsent.first_try_ms) > self.policy.retry_for_ms {
                    self.drop_unsent();
                }
            }
        }
    }

    /// Drops the unsent batch, counting its events as dropped.
    fn drop_unsent(&mut self) {
        if let Some(unsent) = self.unsent.take() {
            self.bytes = self.bytes.saturating_sub(unsent.body.len());
            self.dropped = self.dropped.saturating_add(unsent.events);
        }
    }

    /// How long to wait (ms) before the next flush may be due, if a timer should be armed for it now:
    /// something waits, no send is under way and no armed timer is still to fire. The timer's task
    /// calls [`UsageCounter::timer_fired`], then [`UsageCounter::take_due`].
    pub fn arm_timer(&mut self, now_ms: i64) -> Option<i64> {
        // A timer that should have fired long ago was cancelled with its request.
        if self.timer_at_ms.is_some_and(|at| now_ms <= at.saturating_add(self.policy.send_timeout_ms)) {
            return None;
        }
        let wake_at = match &self.unsent {
            Some(unsent) if unsent.sending_since.is_some() => return None,
            Some(unsent) => unsent.next_try_ms,
            None if self.events > 0 || self.dropped > 0 => {
                self.last_flush_ms.unwrap_or(now_ms).saturating_add(self.policy.flush_every_ms)
            }
            None => return None,
        };
        self.timer_at_ms = Some(wake_at);
        Some(wake_at.saturating_sub(now_ms).max(0))
    }

    /// The armed timer fired.
    pub fn timer_fired(&mut self) {
        self.timer_at_ms = None;
    }

    /// Events dropped and not yet reported in a batch.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Events counted and not yet in a batch.
    pub fn waiting(&self) -> u64 {
        self.events
    }

    /// About how many bytes the counts and the unsent batch take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// `bytes` as lower-case hex: a batch id.
fn hex(bytes: &[u8; 16]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(BATCH_ID_LEN);
    for byte in bytes {
        id.push(char::from(DIGITS[usize::from(byte >> 4)]));
        id.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    id
}
