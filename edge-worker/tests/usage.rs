//! The isolate's usage counter, natively: counts per key, minute and outcome, the limits on
//! operations and rows, when a flush is due, retries that keep their batch, and the bounds that drop
//! and count (the worker's glue and the real runtime are covered by `tests/tests/usage_edge.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate_edge::usage::{Delivery, Outcome, Outgoing, Policy, UsageCounter};
use keygate_shared::usage::{self, UsageBatch, UsageRow, MAX_OPERATIONS_PER_ROW, MAX_ROWS_PER_BATCH, OTHER_OPERATIONS};
use keygate_shared::{KeyId, SyncSecret};

/// A minute's start, in ms.
const T0: i64 = 1_800_000_000_000;

fn id(n: u128) -> KeyId {
    KeyId::from(n)
}

/// A fresh batch id's randomness: distinct per call.
fn random() -> impl FnOnce() -> Option<[u8; 16]> {
    use std::sync::atomic::{AtomicU8, Ordering};
    static NEXT: AtomicU8 = AtomicU8::new(1);
    || Some([NEXT.fetch_add(1, Ordering::Relaxed); 16])
}

fn batch(outgoing: &Outgoing) -> UsageBatch {
    let batch: UsageBatch = serde_json::from_slice(&outgoing.body).unwrap();
    assert_eq!(batch.batch_id, outgoing.batch_id);
    assert_eq!(batch.validate(), Ok(()), "the control plane's limits hold");
    batch
}

fn row(batch: &UsageBatch, key: KeyId, minute_ms: i64) -> &UsageRow {
    batch.rows.iter().find(|r| r.key_id == key && r.minute == minute_ms / 1000).expect("a row for the key and minute")
}

fn operations(row: &UsageRow) -> Vec<(&str, u64)> {
    row.operations.iter().map(|op| (op.name.as_str(), op.count)).collect()
}

const NONE: [Option<&str>; 0] = [];

#[test]
fn counts_go_by_key_minute_and_outcome_with_operations_for_admitted_requests() {
    let mut counter = UsageCounter::new(Policy::default());
    counter.record(id(1), Outcome::Admitted, [Some("GetUser")], T0 + 1_000);
    counter.record(id(1), Outcome::Admitted, [Some("GetUser"), None, Some("")], T0 + 2_000);
    counter.record(id(1), Outcome::Forbidden, [Some("Ignored")], T0 + 3_000);
    counter.record(id(1), Outcome::RateLimited, NONE, T0 + 4_000);
    counter.record(id(1), Outcome::Refused, NONE, T0 + 5_000);
    counter.record(id(2), Outcome::Refused, NONE, T0 + 6_000);
    // The minute's last millisecond, and the next minute's first.
    counter.record(id(1), Outcome::Admitted, NONE, T0 + 59_999);
    counter.record(id(1), Outcome::Admitted, [Some("Later")], T0 + 60_000);
    assert_eq!(counter.waiting(), 8);

    let sent = batch(&counter.take_due(T0 + 60_000, random()).expect("10 s have passed"));
    assert_eq!(sent.rows.len(), 3);
    assert_eq!(sent.dropped, 0);
    let first = row(&sent, id(1), T0);
    assert_eq!((first.admitted, first.forbidden, first.rate_limited, first.refused), (3, 1, 1, 1));
    // A batch request counts once as a request and once per operation; no name and an empty one are
    // both anonymous; a refused request's operations are not counted.
    assert_eq!(operations(first), [("GetUser", 2), (usage::ANONYMOUS_OPERATION, 2)]);
    let other_key = row(&sent, id(2), T0);
    assert_eq!((other_key.admitted, other_key.refused), (0, 1));
    assert!(other_key.operations.is_empty());
    let next_minute = row(&sent, id(1), T0 + 60_000);
    assert_eq!((next_minute.admitted, operations(next_minute)), (1, vec![("Later", 1)]));
    assert_eq!(counter.waiting(), 0);
}

#[test]
fn operation_names_are_cut_and_capped_per_row() {
    let mut counter = UsageCounter::new(Policy::default());
    let long = "N".repeat(300);
    counter.record(id(1), Outcome::Admitted, [Some(long.as_str())], T0);
    let names: Vec<String> = (0..MAX_OPERATIONS_PER_ROW + 8).map(|n| format!("Op{n}")).collect();
    counter.record(id(1), Outcome::Admitted, names.iter().map(|n| Some(n.as_str())), T0);
    // A name already kept is still counted under its own name once the row is full.
    counter.record(id(1), Outcome::Admitted, [Some("Op0")], T0);
    let sent = batch(&counter.take_due(T0 + 10_000, random()).unwrap());
    let ops = operations(row(&sent, id(1), T0));
    assert_eq!(ops.len(), MAX_OPERATIONS_PER_ROW + 1);
    assert_eq!(ops[0], ("N".repeat(usage::MAX_OPERATION_NAME_LEN).as_str(), 1));
    assert_eq!(ops[1], ("Op0", 2));
    // 32 names kept: the long one and Op0..Op30; Op31..Op39 go under (other).
    assert_eq!(ops.last(), Some(&(OTHER_OPERATIONS, 9)));
}

#[test]
fn a_flush_is_due_after_ten_seconds_or_a_thousand_events_and_one_at_a_time() {
    let mut counter = UsageCounter::new(Policy::default());
    assert_eq!(counter.take_due(T0, random()), None, "nothing counted, nothing to send");
    counter.record(id(1), Outcome::Admitted, NONE, T0);
    assert_eq!(counter.take_due(T0 + 9_999, random()), None);
    let first = counter.take_due(T0 + 10_000, random()).expect("due by time");
    counter.finished(&first.batch_id, Delivery::Delivered, T0 + 10_050);

    for n in 0..999 {
        counter.record(id(1), Outcome::Admitted, NONE, T0 + 10_100 + n);
    }
    assert_eq!(counter.take_due(T0 + 11_100, random()), None, "999 events, 1.1 s");
    counter.record(id(1), Outcome::Admitted, NONE, T0 + 11_100);
    let by_count = counter.take_due(T0 + 11_100, random()).expect("due by count");
    assert_eq!(row(&batch(&by_count), id(1), T0).admitted, 1_000);

    // While that one is under way, nothing else goes, however much waits.
    for n in 0..2_000 {
        counter.record(id(2), Outcome::Admitted, NONE, T0 + 12_000 + n);
    }
    assert_eq!(counter.take_due(T0 + 25_000, random()), None);
    counter.finished(&by_count.batch_id, Delivery::Delivered, T0 + 25_000);
    let next = batch(&counter.take_due(T0 + 25_000, random()).unwrap());
    assert_eq!(row(&next, id(2), T0).admitted, 2_000);
    assert_ne!(next.batch_id, by_count.batch_id);
}

#[test]
fn a_failed_batch_is_retried_unchanged_with_backoff_while_new_counts_wait() {
    let mut counter = UsageCounter::new(Policy::default());
    counter.record(id(1), Outcome::Admitted, [Some("Q")], T0);
    let first = counter.take_due(T0 + 10_000, random()).unwrap();
    counter.finished(&first.batch_id, Delivery::Retry, T0 + 10_010);
    counter.record(id(1), Outcome::Admitted, [Some("Q")], T0 + 10_020);
    assert_eq!(counter.take_due(T0 + 10_500, random()), None, "the first backoff is 1 s");
    let again = counter.take_due(T0 + 11_010, random()).expect("retried after its backoff");
    assert_eq!(again, first, "same id, same bytes");
    counter.finished(&again.batch_id, Delivery::Retry, T0 + 11_020);
    assert_eq!(counter.take_due(T0 + 12_500, random()), None, "then 2 s");
    let third = counter.take_due(T0 + 13_020, random()).unwrap();
    assert_eq!(third, first);
    // An answer for a batch that is not under way changes nothing.
    counter.finished("0123456789abcdef0123456789abcdef", Delivery::Delivered, T0 + 13_030);
    assert_eq!(counter.take_due(T0 + 13_040, random()), None, "still under way");
    counter.finished(&third.batch_id, Delivery::Delivered, T0 + 13_050);
    // The request counted meanwhile goes in the next batch, with nothing dropped.
    let next = batch(&counter.take_due(T0 + 20_010, random()).unwrap());
    assert_ne!(next.batch_id, first.batch_id);
    assert_eq!((row(&next, id(1), T0).admitted, next.dropped), (1, 0));
}

#[test]
fn a_send_that_never_finishes_counts_as_failed() {
    let policy = Policy::default();
    let mut counter = UsageCounter::new(policy);
    counter.record(id(1), Outcome::Admitted, NONE, T0);
    let first = counter.take_due(T0 + 10_000, random()).unwrap();
    assert_eq!(counter.take_due(T0 + 10_000 + policy.send_timeout_ms - 1, random()), None);
    let after = T0 + 10_000 + policy.send_timeout_ms + policy.max_backoff_ms;
    assert_eq!(counter.take_due(after, random()), Some(first));
}

#[test]
fn past_the_retry_bound_a_batch_is_dropped_and_the_next_batch_says_how_many() {
    let policy = Policy { retry_for_ms: 20_000, ..Policy::default() };
    let mut counter = UsageCounter::new(policy);
    for _ in 0..5 {
        counter.record(id(1), Outcome::Admitted, NONE, T0);
    }
    counter.record(id(2), Outcome::Refused, NONE, T0);
    let first = counter.take_due(T0 + 10_000, random()).unwrap();
    counter.finished(&first.batch_id, Delivery::Retry, T0 + 10_000);
    let (mut now, mut tries, mut meanwhile) = (T0 + 10_000, 1, 0);
    let next = loop {
        now += 1_000;
        assert!(now - T0 < 60_000, "the bound did not drop the batch");
        counter.record(id(3), Outcome::Admitted, NONE, now);
        meanwhile += 1;
        match counter.take_due(now, random()) {
            Some(again) if again.batch_id == first.batch_id => {
                assert_eq!(again, first);
                tries += 1;
                counter.finished(&first.batch_id, Delivery::Retry, now);
            }
            Some(next) => break batch(&next),
            None => {}
        }
    };
    // Tried at 0, 1, 3, 7 and 15 s; the next wait would end past the bound, so it was dropped then.
    assert_eq!(tries, 5);
    assert!(now - (T0 + 10_000) <= policy.retry_for_ms, "dropped within the bound");
    assert_eq!(next.dropped, 6, "the first batch's six events");
    let waited = next.rows.iter().find(|r| r.key_id == id(3)).unwrap().admitted;
    assert_eq!(waited, meanwhile, "the events counted meanwhile are all there");
}

#[test]
fn a_dropped_report_of_drops_is_dropped_in_turn_and_a_rejected_batch_at_once() {
    let policy = Policy { retry_for_ms: 0, ..Policy::default() };
    let mut counter = UsageCounter::new(policy);
    counter.record(id(1), Outcome::Admitted, NONE, T0);
    let first = counter.take_due(T0 + 10_000, random()).unwrap();
    counter.finished(&first.batch_id, Delivery::Retry, T0 + 10_000);
    assert_eq!(counter.dropped(), 1);
    counter.record(id(1), Outcome::Forbidden, NONE, T0 + 10_001);
    let second = batch(&counter.take_due(T0 + 20_000, random()).unwrap());
    assert_eq!(second.dropped, 1);
    // The control plane says it will never take it: dropped at once, with the drop it reported.
    counter.finished(&second.batch_id, Delivery::Rejected, T0 + 20_001);
    assert_eq!(counter.dropped(), 2);
    // Only drops to report: a batch without rows says so.
    let third = batch(&counter.take_due(T0 + 30_001, random()).unwrap());
    assert_eq!((third.rows.len(), third.dropped), (0, 2));
    counter.finished(&third.batch_id, Delivery::Delivered, T0 + 30_002);
    assert_eq!((counter.dropped(), counter.bytes()), (0, 0));
    assert_eq!(counter.take_due(T0 + 60_000, random()), None, "nothing left");
}

#[test]
fn statuses_say_delivered_retry_or_rejected() {
    for (status, delivery) in [
        (200, Delivery::Delivered),
        (204, Delivery::Delivered),
        (400, Delivery::Rejected),
        (413, Delivery::Rejected),
        (422, Delivery::Rejected),
        (401, Delivery::Retry),
        (404, Delivery::Retry),
        (429, Delivery::Retry),
        (500, Delivery::Retry),
        (503, Delivery::Retry),
    ] {
        assert_eq!(Delivery::from_status(status), delivery, "{status}");
    }
}

#[test]
fn memory_is_capped_new_rows_past_it_are_dropped_and_counted() {
    let policy = Policy { memory_cap: 4_096, ..Policy::default() };
    let mut counter = UsageCounter::new(policy);
    for n in 0..1_000 {
        counter.record(id(n), Outcome::Admitted, [Some("Q")], T0);
    }
    assert!(counter.bytes() <= policy.memory_cap, "{} bytes", counter.bytes());
    let kept = counter.waiting();
    assert!(kept > 0 && kept < 1_000);
    assert_eq!(counter.dropped(), 1_000 - kept);
    // A row that is already there still counts.
    counter.record(id(0), Outcome::Admitted, NONE, T0);
    assert_eq!(counter.waiting(), kept + 1);
    let sent = batch(&counter.take_due(T0 + 10_000, random()).unwrap());
    assert_eq!(sent.dropped, 1_000 - kept);
    assert_eq!(sent.rows.iter().map(|r| r.admitted).sum::<u64>(), kept + 1);
}

#[test]
fn a_batch_carries_at_most_the_row_limit_and_the_rest_goes_next() {
    let policy = Policy { memory_cap: usize::MAX, max_batch_bytes: usize::MAX, ..Policy::default() };
    let mut counter = UsageCounter::new(policy);
    let keys = MAX_ROWS_PER_BATCH as u128 + 7;
    for n in 0..keys {
        counter.record(id(n), Outcome::Admitted, NONE, T0);
    }
    let first = counter.take_due(T0 + 10_000, random()).unwrap();
    assert_eq!(batch(&first).rows.len(), MAX_ROWS_PER_BATCH);
    counter.finished(&first.batch_id, Delivery::Delivered, T0 + 10_001);
    assert_eq!(counter.waiting(), 7);
    let second = counter.take_due(T0 + 20_001, random()).unwrap();
    assert_eq!(batch(&second).rows.len(), 7);
}

#[test]
fn a_timer_is_armed_once_for_the_next_due_flush() {
    let mut counter = UsageCounter::new(Policy::default());
    assert_eq!(counter.arm_timer(T0), None, "nothing waits");
    counter.record(id(1), Outcome::Admitted, NONE, T0);
    assert_eq!(counter.arm_timer(T0 + 2_000), Some(8_000));
    assert_eq!(counter.arm_timer(T0 + 3_000), None, "one timer at a time");
    counter.timer_fired();
    let sent = counter.take_due(T0 + 10_000, random()).unwrap();
    assert_eq!(counter.arm_timer(T0 + 10_000), None, "a send is under way");
    counter.finished(&sent.batch_id, Delivery::Retry, T0 + 10_100);
    assert_eq!(counter.arm_timer(T0 + 10_100), Some(1_000), "the retry's backoff");
    // A timer that never fired (cancelled with its request) does not block the next one for ever.
    assert_eq!(counter.arm_timer(T0 + 10_100 + Policy::default().send_timeout_ms + 2_000), Some(0));
}

#[test]
fn no_randomness_no_batch_yet() {
    let mut counter = UsageCounter::new(Policy::default());
    counter.record(id(1), Outcome::Admitted, NONE, T0);
    assert_eq!(counter.take_due(T0 + 10_000, || None), None);
    assert_eq!(counter.waiting(), 1, "the counts wait for the next try");
    assert!(counter.take_due(T0 + 10_001, random()).is_some());
}

#[test]
fn the_headers_carry_a_usage_signature_the_control_plane_verifies() {
    let mut counter = UsageCounter::new(Policy::default());
    counter.record(id(1), Outcome::Admitted, NONE, T0);
    let outgoing = counter.take_due(T0 + 10_000, random()).unwrap();
    let secret = SyncSecret::new("the sync secret");
    let now = (T0 + 10_000) / 1000;
    let headers = outgoing.headers(&secret, now);
    assert_eq!(headers[0], ("content-type", "application/json".to_owned()));
    let (timestamp, signature) = (&headers[1].1, &headers[2].1);
    assert_eq!(usage::verify(&secret, timestamp, signature, &outgoing.body, now), Ok(now));
    assert!(usage::verify(&SyncSecret::new("another"), timestamp, signature, &outgoing.body, now).is_err());
}

#[test]
fn a_batch_stays_within_the_body_limit_and_the_rest_is_due_at_once() {
    let policy = Policy { memory_cap: usize::MAX, ..Policy::default() };
    let mut counter = UsageCounter::new(policy);
    let names: Vec<String> = (0..MAX_OPERATIONS_PER_ROW + 3).map(|n| format!("Operation{n:0>119}")).collect();
    for n in 0..400 {
        // Counts as large as they come, and full rows of the longest names.
        for _ in 0..3 {
            counter.record(id(n), Outcome::Admitted, names.iter().map(|n| Some(n.as_str())), T0);
        }
        counter.record(id(n), Outcome::Refused, NONE, T0);
    }
    let mut now = T0 + 10_000;
    let mut batches = 0;
    let mut counted = 0;
    while let Some(outgoing) = counter.take_due(now, random()) {
        assert!(outgoing.body.len() <= policy.max_batch_bytes, "{} bytes", outgoing.body.len());
        let sent = batch(&outgoing);
        counted += sent.rows.iter().map(|r| r.admitted + r.refused).sum::<u64>();
        counter.finished(&outgoing.batch_id, Delivery::Delivered, now + 10);
        now += 20;
        batches += 1;
    }
    assert!(batches > 1, "the rows did not fit one batch");
    assert_eq!((counted, counter.waiting(), counter.dropped()), (1_600, 0, 0), "all went, one batch after the other");
    assert_eq!(counter.bytes(), 0);
}
