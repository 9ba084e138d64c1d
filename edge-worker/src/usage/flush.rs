//! The worker's side of usage reporting: the isolate's [`UsageCounter`], fed by the request paths,
//! and its batches posted to `{CONTROL_PLANE_URL}/_keygate/usage`, never on a request's way: in the
//! request's `ctx.wait_until` (a WebSocket's upgrade keeps its context while the socket is open).
//! Without `CONTROL_PLANE_URL` nothing is counted.

use std::cell::RefCell;

use keygate_shared::usage::USAGE_PATH;
use keygate_shared::SyncSecret;
use worker::{console_error, js_sys, Context, Delay, Env, Fetch, Headers, Method, Request, RequestInit};

use super::{outcome, Delivery, Outgoing, Policy, UsageCounter};
use crate::check::{Admitted, Refused};
use crate::worker::now_ms;

/// Where the reports go and what signs them, with the counts.
struct Report {
    url: String,
    secret: SyncSecret,
    counter: UsageCounter,
    /// Whether a failed delivery was logged since the last good one (one line per outage).
    logged_failure: bool,
}

thread_local! {
    // `None` (nothing counted) until `configure` finds `CONTROL_PLANE_URL`.
    static REPORT: RefCell<Option<Report>> = const { RefCell::new(None) };
}

/// Reads `CONTROL_PLANE_URL` (and `USAGE_RETRY_SECS`, how long a failed batch is retried; 300 by
/// default) once per isolate, with the other vars.
pub(crate) fn configure(env: &Env) {
    let Some(control) = env.var("CONTROL_PLANE_URL").ok().map(|v| v.to_string()).filter(|v| !v.trim().is_empty())
    else {
        return;
    };
    let Ok(secret) = env.secret("SYNC_SECRET") else {
        console_error!("keygate: CONTROL_PLANE_URL is set but SYNC_SECRET is not: usage is not counted");
        return;
    };
    let mut policy = Policy::default();
    let retry_secs = env.var("USAGE_RETRY_SECS").ok().and_then(|v| v.to_string().trim().parse::<i64>().ok());
    if let Some(secs) = retry_secs.filter(|secs| *secs >= 0) {
        policy.retry_for_ms = secs.saturating_mul(1000);
    }
    let url = format!("{}{USAGE_PATH}", control.trim().trim_end_matches('/'));
    let report = Report {
        url,
        secret: SyncSecret::new(secret.to_string()),
        counter: UsageCounter::new(policy),
        logged_failure: false,
    };
    REPORT.with(|held| *held.borrow_mut() = Some(report));
}

/// Counts a checked request (see [`super::outcome`]) and starts a flush if one is due, or a timer for
/// the next one, in `ctx.wait_until`. `record_found` is [`super::NotingRecords::found`].
pub(crate) fn count_request(
    ctx: &Context,
    api_key: Option<&str>,
    record_found: bool,
    checked: &Result<Admitted, Refused>,
) {
    let due = REPORT.with(|held| {
        let mut held = held.borrow_mut();
        let report = held.as_mut()?;
        let (key_id, outcome) = outcome(api_key, record_found, checked)?;
        let names = checked.as_ref().map_or(&[][..], |admitted| admitted.operation_names.as_slice());
        let now = now_ms();
        report.counter.record(key_id, outcome, names.iter().map(Option::as_deref), now);
        match report.counter.take_due(now, random_id) {
            Some(outgoing) => Some(Step::Send(outgoing)),
            None => report.counter.arm_timer(now).map(Step::Wait),
        }
    });
    if let Some(step) = due {
        ctx.wait_until(flush(step));
    }
}

/// What a counted request leaves to do off its path.
enum Step {
    /// Post this batch now.
    Send(Outgoing),
    /// Wait this many ms, then post what is due.
    Wait(i64),
}

/// Runs `step`, then the next ones while something waits: counts that came in during a send, or a
/// batch to retry, get their own timer rather than waiting for the next request. (Where the runtime
/// cancels a long chain with its request, the next request's count starts a new one.)
async fn flush(mut step: Step) {
    // A bound on the chain, whatever the clock does.
    for _ in 0..MAX_STEPS {
        let outgoing = match step {
            Step::Send(outgoing) => outgoing,
            Step::Wait(ms) => {
                Delay::from(std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))).await;
                let due = with_counter(|counter| {
                    counter.timer_fired();
                    counter.take_due(now_ms(), random_id)
                });
                match due.flatten() {
                    Some(outgoing) => outgoing,
                    None => match with_counter(|counter| counter.arm_timer(now_ms())).flatten() {
                        Some(ms) => {
                            step = Step::Wait(ms.max(MIN_WAIT_MS));
                            continue;
                        }
                        None => return,
                    },
                }
            }
        };
        send(outgoing).await;
        match with_counter(|counter| counter.arm_timer(now_ms())).flatten() {
            Some(ms) => step = Step::Wait(ms),
            None => return,
        }
    }
}

/// The most steps one flush chain takes.
const MAX_STEPS: usize = 64;
/// The shortest wait of a timer that found nothing due.
const MIN_WAIT_MS: i64 = 100;

/// `f` on the isolate's counter, if usage is counted.
fn with_counter<T>(f: impl FnOnce(&mut UsageCounter) -> T) -> Option<T> {
    REPORT.with(|held| held.borrow_mut().as_mut().map(|report| f(&mut report.counter)))
}

/// Posts one batch and tells the counter what became of it.
async fn send(outgoing: Outgoing) {
    let Some((url, headers)) = REPORT.with(|held| {
        let held = held.borrow();
        let report = held.as_ref()?;
        Some((report.url.clone(), outgoing.headers(&report.secret, now_ms() / 1000)))
    }) else {
        return;
    };
    let answer = post(&url, &headers, &outgoing.body).await;
    let delivery = answer.as_ref().map_or(Delivery::Retry, |status| Delivery::from_status(*status));
    REPORT.with(|held| {
        let mut held = held.borrow_mut();
        let Some(report) = held.as_mut() else { return };
        let dropped_before = report.counter.dropped();
        report.counter.finished(&outgoing.batch_id, delivery, now_ms());
        if delivery == Delivery::Delivered {
            report.logged_failure = false;
        } else if !std::mem::replace(&mut report.logged_failure, true) {
            // The control plane's URL is configuration, not a secret; the body and headers are not logged.
            let answer = answer.as_ref().map_or_else(|e| e.to_string(), |status| format!("status {status}"));
            console_error!("keygate: usage report to {} failed ({answer}); it is retried", report.url);
        }
        let newly_dropped = report.counter.dropped().saturating_sub(dropped_before);
        if newly_dropped > 0 {
            console_error!("keygate: dropped a usage batch of {newly_dropped} events; the next report says so");
        }
    });
}

/// `POST url` with `headers` and `body`: the answer's status.
async fn post(url: &str, headers: &[(&'static str, String)], body: &[u8]) -> worker::Result<u16> {
    let sent = Headers::new();
    for (name, value) in headers {
        sent.set(name, value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(sent).with_body(Some(js_sys::Uint8Array::from(body).into()));
    let answer = Fetch::Request(Request::new_with_init(url, &init)?).send().await?;
    Ok(answer.status_code())
}

/// A batch id's randomness, from the runtime's CSPRNG (`crypto.getRandomValues`).
fn random_id() -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).ok().map(|()| id)
}
