//! Usage reports end to end through the real router, on SQLite and PostgreSQL: a signed batch is kept
//! once and served by the usage API; refused batches store nothing; pruning, `last_used_at` and the
//! key list by use. Time is the test's `ManualClock`.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use keygate_control_plane::clock::Clock;
use keygate_control_plane::service::Settings;
use keygate_control_plane::usage::{self, Granularity, Pruned};
use keygate_shared::sync::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use keygate_shared::usage::{sign, MAX_BATCH_BYTES, USAGE_PATH};
use keygate_shared::SyncSecret;
use serde_json::{json, Value};

use crate::support::app::{TestApp, SYNC_SECRET, T0};

/// The start of a minute well inside T0's day, two hours past midnight UTC.
const DAY_START: i64 = T0 - T0 % 86_400;
const MINUTE: i64 = DAY_START + 7_200 + 600;

fn secret() -> SyncSecret {
    SyncSecret::new(SYNC_SECRET)
}

fn batch_id(n: u32) -> String {
    format!("{n:032x}")
}

/// A signed `POST /_keygate/usage` of `body` at `timestamp`, with an optional bearer.
async fn post_raw(
    app: &TestApp,
    body: &[u8],
    timestamp: Option<i64>,
    signature: Option<String>,
    bearer: Option<&str>,
) -> (StatusCode, Value) {
    let mut request =
        Request::builder().method(Method::POST).uri(USAGE_PATH).header(header::CONTENT_TYPE, "application/json");
    if let Some(timestamp) = timestamp {
        request = request.header(TIMESTAMP_HEADER, timestamp.to_string());
    }
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    if let Some(key) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let (status, _, bytes) = app.send(request.body(Body::from(body.to_vec())).unwrap()).await;
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// `batch` signed now, as the edge sends it.
async fn post(app: &TestApp, batch: &Value) -> (StatusCode, Value) {
    let body = batch.to_string().into_bytes();
    let now = app.clock.now();
    post_raw(app, &body, Some(now), Some(sign(&secret(), now, &body)), None).await
}

async fn usage_of(app: &TestApp, key: &str, query: &str) -> Value {
    let (status, body) = app.admin(Method::GET, &format!("/admin/api-keys/{key}/usage?{query}"), None).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

fn rfc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A range query for `[from, to)`.
fn range(granularity: &str, from: i64, to: i64) -> String {
    format!("granularity={granularity}&from={}&to={}", rfc(from).replace('+', "%2B"), rfc(to).replace('+', "%2B"))
}

fn totals(series: &Value) -> [i64; 4] {
    let mut sums = [0; 4];
    for bucket in series.as_array().unwrap() {
        for (sum, field) in sums.iter_mut().zip(["admitted", "forbidden", "rate_limited", "refused"]) {
            *sum += bucket[field].as_i64().unwrap();
        }
    }
    sums
}

fn unknown_key() -> String {
    "0000000000000000000042".into()
}

/// Two minutes of one key's use (one of them in the next hour), and a row for a key nobody made.
fn first_batch(key: &str) -> Value {
    json!({"batch_id": batch_id(1), "dropped": 3, "rows": [
        {"key_id": key, "minute": MINUTE, "admitted": 5, "forbidden": 1, "rate_limited": 2, "refused": 1,
         "operations": [{"name": "GetUser", "count": 3}, {"name": "(anonymous)", "count": 2}]},
        {"key_id": key, "minute": MINUTE + 3_000, "admitted": 4, "refused": 7,
         "operations": [{"name": "ListOrders", "count": 4}]},
        {"key_id": unknown_key(), "minute": MINUTE, "admitted": 100, "operations": [{"name": "Evil", "count": 100}]},
    ]})
}

async fn stored_and_served(app: TestApp) {
    let (_, key) = app.create_key(&["query:read"]).await;
    app.clock.advance(MINUTE + 3_100 - T0);
    let (status, answer) = post(&app, &first_batch(&key)).await;
    assert_eq!((status, answer.clone()), (StatusCode::OK, json!({"applied": true, "rows": 2, "skipped": 1})));

    // Minute buckets: every minute of the range, zero-filled, exact counts where reported.
    let minutes = usage_of(&app, &key, &range("minute", MINUTE - 120, MINUTE + 3_060)).await;
    let series = minutes["series"].as_array().unwrap();
    assert_eq!(series.len(), 53, "{minutes}");
    assert_eq!(
        series[0],
        json!({"start": rfc(MINUTE - 120), "admitted": 0, "forbidden": 0, "rate_limited": 0, "refused": 0})
    );
    assert_eq!(
        series[2],
        json!({"start": rfc(MINUTE), "admitted": 5, "forbidden": 1, "rate_limited": 2, "refused": 1})
    );
    assert_eq!(series[52]["start"], rfc(MINUTE + 3_000));
    assert_eq!(series[52]["refused"], 7);
    assert_eq!(
        minutes["operations"],
        json!([{"name": "ListOrders", "count": 4}, {"name": "GetUser", "count": 3}, {"name": "(anonymous)", "count": 2}])
    );
    // Hour and day rollups agree with the minutes.
    let hours = usage_of(&app, &key, &range("hour", DAY_START, DAY_START + 86_400)).await;
    assert_eq!(hours["series"].as_array().unwrap().len(), 24);
    assert_eq!(hours["series"][2]["admitted"], 5);
    assert_eq!(hours["series"][3]["admitted"], 4);
    let days = usage_of(&app, &key, &range("day", DAY_START, DAY_START + 86_400)).await;
    assert_eq!(
        days["series"],
        json!([{"start": rfc(DAY_START), "admitted": 9, "forbidden": 1, "rate_limited": 2, "refused": 8}])
    );
    assert_eq!(totals(&minutes["series"]), totals(&hours["series"]));
    assert_eq!(totals(&hours["series"]), [9, 1, 2, 8]);
    assert_eq!(days["operations"], minutes["operations"]);
    let top = usage_of(&app, &key, &format!("{}&limit=1", range("day", DAY_START, DAY_START + 86_400))).await;
    assert_eq!(top["operations"], json!([{"name": "ListOrders", "count": 4}]));
    // Defaults: the last 24 h by hour, ending now.
    let default = usage_of(&app, &key, "").await;
    assert_eq!(default["granularity"], "hour");
    assert_eq!(totals(&default["series"]), [9, 1, 2, 8]);

    // The key's views carry the start of its latest minute with an admitted request.
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{key}"), None).await;
    assert_eq!(shown["last_used_at"], rfc(MINUTE + 3_000));
    let (_, listed) = app.admin(Method::GET, "/admin/api-keys", None).await;
    let item = listed["items"].as_array().unwrap().iter().find(|k| k["api_key_id"] == key.as_str()).unwrap();
    assert_eq!(item["last_used_at"], rfc(MINUTE + 3_000));
    // An older report does not move it back.
    let older = json!({"batch_id": batch_id(2), "rows": [{"key_id": key, "minute": MINUTE - 60, "admitted": 1}]});
    assert_eq!(post(&app, &older).await.0, StatusCode::OK);
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{key}"), None).await;
    assert_eq!(shown["last_used_at"], rfc(MINUTE + 3_000));
    // An unknown key id gets nothing: it has no usage to ask for.
    let (status, _) = app.admin(Method::GET, &format!("/admin/api-keys/{}/usage", unknown_key()), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A replay, as sent or re-signed later, changes nothing.
    assert_eq!(post(&app, &first_batch(&key)).await, (StatusCode::OK, json!({"applied": false})));
    app.clock.advance(120);
    assert_eq!(post(&app, &first_batch(&key)).await, (StatusCode::OK, json!({"applied": false})));
    let again = usage_of(&app, &key, &range("day", DAY_START, DAY_START + 86_400)).await;
    assert_eq!(totals(&again["series"]), [10, 1, 2, 8], "only the older report's one request was added");
    app.cleanup().await;
}

#[tokio::test]
async fn a_signed_batch_is_stored_once_and_served_on_sqlite() {
    stored_and_served(TestApp::sqlite_local("usage_served").await).await;
}

#[tokio::test]
async fn a_signed_batch_is_stored_once_and_served_on_postgres() {
    stored_and_served(TestApp::postgres_local("usage_served", [7; 32]).await).await;
}

async fn refused_batches_store_nothing(app: TestApp) {
    let (_, key) = app.create_key(&["query:read"]).await;
    app.clock.advance(MINUTE + 3_100 - T0);
    let now = app.clock.now();
    let batch = first_batch(&key);
    let body = batch.to_string().into_bytes();
    let good = sign(&secret(), now, &body);
    // What, timestamp, signature, bearer.
    type Case<'a> = (&'a str, Option<i64>, Option<String>, Option<String>);
    let cases: Vec<Case> = vec![
        ("unsigned", None, None, None),
        ("no timestamp", None, Some(good.clone()), None),
        ("a wrong signature", Some(now), Some(sign(&SyncSecret::new("another secret"), now, &body)), None),
        ("a sync push's signature", Some(now), Some(secret().sign(now, &body)), None),
        ("a signature of another timestamp", Some(now + 1), Some(good.clone()), None),
        ("a stale timestamp", Some(now - 301), Some(sign(&secret(), now - 301, &body)), None),
        ("the admin key and no signature", None, None, Some(app.admin_key.clone())),
    ];
    for (what, timestamp, signature, bearer) in cases {
        let (status, answer) = post_raw(&app, &body, timestamp, signature, bearer.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{what}: {answer}");
    }
    // No bearer challenge: this route takes none.
    let unsigned = Request::builder().method(Method::POST).uri(USAGE_PATH).body(Body::from(body.clone())).unwrap();
    let (status, headers, _) = app.send(unsigned).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::WWW_AUTHENTICATE).is_none(), "{headers:?}");
    let signed = |value: &Value| {
        let body = value.to_string().into_bytes();
        (sign(&secret(), now, &body), body)
    };
    let mut bad_minute = batch.clone();
    bad_minute["rows"][0]["minute"] = json!(MINUTE + 1);
    let mut future = batch.clone();
    future["rows"][0]["minute"] = json!(now - now % 60 + 600);
    let mut unknown_field = batch.clone();
    unknown_field["rows"][0]["extra"] = json!(1);
    let mut bad_id = batch.clone();
    bad_id["batch_id"] = json!("not-hex");
    let mut huge = batch.clone();
    huge["rows"][0]["admitted"] = json!(u64::MAX);
    let shapes: Vec<(&str, Value, StatusCode, &str)> = vec![
        ("a minute not on a minute", bad_minute, StatusCode::UNPROCESSABLE_ENTITY, "bad_minute"),
        ("a minute in the future", future, StatusCode::UNPROCESSABLE_ENTITY, "future_minute"),
        ("an unknown field", unknown_field, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("a bad batch id", bad_id, StatusCode::UNPROCESSABLE_ENTITY, "bad_batch_id"),
        ("a count past the limit", huge, StatusCode::UNPROCESSABLE_ENTITY, "bad_count"),
    ];
    for (what, value, expected, code) in shapes {
        let (signature, body) = signed(&value);
        let (status, answer) = post_raw(&app, &body, Some(now), Some(signature), None).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (expected, Some(code)), "{what}: {answer}");
    }
    let malformed = b"{\"batch_id\": ".to_vec();
    let (status, answer) = post_raw(&app, &malformed, Some(now), Some(sign(&secret(), now, &malformed)), None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_json")));
    let big = vec![b' '; MAX_BATCH_BYTES + 1];
    let (status, answer) = post_raw(&app, &big, Some(now), Some(sign(&secret(), now, &big)), None).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")));

    // Nothing was kept: no counts, no last use, and the batch id is still free.
    let usage = usage_of(&app, &key, &range("day", DAY_START, DAY_START + 86_400)).await;
    assert_eq!(totals(&usage["series"]), [0; 4]);
    let (_, shown) = app.admin(Method::GET, &format!("/admin/api-keys/{key}"), None).await;
    assert_eq!(shown["last_used_at"], Value::Null);
    assert_eq!(post(&app, &batch).await.1["applied"], true);

    // Without a sync secret the route is off.
    let off = app.with_settings(Settings::default());
    let (status, answer) = post(&off, &batch).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    app.cleanup().await;
}

#[tokio::test]
async fn refused_batches_store_nothing_on_sqlite() {
    refused_batches_store_nothing(TestApp::sqlite_local("usage_refused").await).await;
}

#[tokio::test]
async fn refused_batches_store_nothing_on_postgres() {
    refused_batches_store_nothing(TestApp::postgres_local("usage_refused", [8; 32]).await).await;
}

async fn pruning_removes_what_is_past_retention(app: TestApp) {
    let (_, key) = app.create_key(&["query:read"]).await;
    app.clock.advance(MINUTE + 120 - T0);
    let batch = json!({"batch_id": batch_id(9), "rows": [
        {"key_id": key, "minute": MINUTE, "admitted": 1, "operations": [{"name": "A", "count": 1}]},
        {"key_id": key, "minute": MINUTE + 60, "admitted": 2, "operations": [{"name": "A", "count": 2}]},
    ]});
    assert_eq!(post(&app, &batch).await.1["rows"], 2);
    let store = app.store.clone();
    let clock: std::sync::Arc<dyn keygate_control_plane::clock::Clock> = app.clock.clone();
    // Nothing is past retention yet.
    assert_eq!(usage::prune(&store, &clock).await.unwrap(), Pruned::default());
    // 48 h after the first minute and 30 s: that minute (and its operations) goes, the next one stays.
    let now = app.clock.now();
    app.clock.advance(MINUTE + Granularity::Minute.retention_secs() + 30 - now);
    assert_eq!(usage::prune(&store, &clock).await.unwrap(), Pruned { batches: 0, rollups: 2 });
    let minutes = usage_of(&app, &key, &range("minute", MINUTE, MINUTE + 120)).await;
    assert_eq!(minutes["series"][0]["admitted"], 0);
    assert_eq!(minutes["series"][1]["admitted"], 2);
    let hours = usage_of(&app, &key, &range("hour", DAY_START, DAY_START + 86_400)).await;
    assert_eq!(totals(&hours["series"]), [3, 0, 0, 0], "the hours are kept");
    // The batch id goes 48 h after it came (at MINUTE + 120), and by then the second minute too.
    app.clock.advance(91);
    assert_eq!(usage::prune(&store, &clock).await.unwrap(), Pruned { batches: 1, rollups: 2 });
    // 90 days after the hour started: the hour and its operations go; the day stays.
    let now = app.clock.now();
    app.clock.advance(DAY_START + 7_200 + Granularity::Hour.retention_secs() + 1 - now);
    assert_eq!(usage::prune(&store, &clock).await.unwrap(), Pruned { batches: 0, rollups: 2 });
    let days = usage_of(&app, &key, &range("day", DAY_START, DAY_START + 86_400)).await;
    assert_eq!(totals(&days["series"]), [3, 0, 0, 0]);
    // Two years after the day: everything is gone.
    let now = app.clock.now();
    app.clock.advance(DAY_START + Granularity::Day.retention_secs() + 1 - now);
    assert_eq!(usage::prune(&store, &clock).await.unwrap(), Pruned { batches: 0, rollups: 2 });
    app.cleanup().await;
}

#[tokio::test]
async fn pruning_removes_exactly_what_is_past_retention_on_sqlite() {
    pruning_removes_what_is_past_retention(TestApp::sqlite_local("usage_prune").await).await;
}

#[tokio::test]
async fn pruning_removes_exactly_what_is_past_retention_on_postgres() {
    pruning_removes_what_is_past_retention(TestApp::postgres_local("usage_prune", [9; 32]).await).await;
}

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|k| k["api_key_id"].as_str().unwrap().to_owned()).collect()
}

async fn list_by_use(app: TestApp) {
    // A second between keys: their ids (UUIDv7 under the manual clock) are then in creation order.
    let mut made = Vec::new();
    for _ in 0..3 {
        app.clock.advance(1);
        made.push(app.create_key(&["query:read"]).await.1);
    }
    let [never, early, late] = <[String; 3]>::try_from(made).unwrap();
    let (_, page) = app.admin(Method::GET, "/admin/api-keys", None).await;
    let admin = ids(&page)[0].clone();
    assert!(![&never, &early, &late].contains(&&admin));
    app.clock.advance(MINUTE + 600 - app.clock.now());
    let batch = json!({"batch_id": batch_id(3), "rows": [
        {"key_id": early, "minute": MINUTE, "admitted": 1},
        {"key_id": late, "minute": MINUTE + 60, "admitted": 1},
        {"key_id": never, "minute": MINUTE + 120, "forbidden": 4},
    ]});
    assert_eq!(post(&app, &batch).await.1["rows"], 3);
    // Last use first; never used (a refusal is no use) after, in creation order.
    let expected = vec![late.clone(), early.clone(), admin.clone(), never.clone()];
    let (_, page) = app.admin(Method::GET, "/admin/api-keys?sort=last_used", None).await;
    assert_eq!(ids(&page), expected);
    let mut walked = Vec::new();
    let mut query = "/admin/api-keys?sort=last_used&limit=1".to_owned();
    loop {
        let (status, page) = app.admin(Method::GET, &query, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        walked.extend(ids(&page));
        match page["next_after"].as_str() {
            Some(after) => query = format!("/admin/api-keys?sort=last_used&limit=1&after={after}"),
            None => break,
        }
    }
    assert_eq!(walked, expected, "pages of one walk the same order");
    // The default order is untouched.
    let (_, page) = app.admin(Method::GET, "/admin/api-keys", None).await;
    assert_eq!(ids(&page), vec![admin.clone(), never.clone(), early.clone(), late.clone()]);

    // 40 days on, `late` is used again: every other key is unused for 30 days.
    app.clock.advance(40 * 86_400);
    let now = app.clock.now();
    let batch = json!({"batch_id": batch_id(4), "rows": [{"key_id": late, "minute": now - now % 60, "admitted": 1}]});
    assert_eq!(post(&app, &batch).await.1["rows"], 1);
    let (_, page) = app.admin(Method::GET, "/admin/api-keys?unused_days=30", None).await;
    assert_eq!(ids(&page), vec![admin.clone(), never.clone(), early.clone()]);
    let (_, page) = app.admin(Method::GET, "/admin/api-keys?unused_days=30&sort=last_used", None).await;
    assert_eq!(ids(&page), vec![early.clone(), admin.clone(), never.clone()]);
    let (_, page) = app.admin(Method::GET, "/admin/api-keys?unused_days=50", None).await;
    assert_eq!(ids(&page), Vec::<String>::new(), "every key was created 41 days ago");
    for bad in ["unused_days=0", "unused_days=x", "sort=newest", "sort=last_used&after=nope"] {
        let (status, answer) = app.admin(Method::GET, &format!("/admin/api-keys?{bad}"), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {answer}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn the_key_list_sorts_by_last_use_and_finds_unused_keys_on_sqlite() {
    list_by_use(TestApp::sqlite_local("usage_list").await).await;
}

#[tokio::test]
async fn the_key_list_sorts_by_last_use_and_finds_unused_keys_on_postgres() {
    list_by_use(TestApp::postgres_local("usage_list", [10; 32]).await).await;
}

#[tokio::test]
async fn the_usage_api_refuses_bad_queries() {
    let app = TestApp::sqlite_local("usage_queries").await;
    let (_, key) = app.create_key(&["query:read"]).await;
    let cases = [
        ("granularity=week".to_owned(), "invalid_query"),
        ("from=yesterday".to_owned(), "invalid_query"),
        ("limit=0".to_owned(), "invalid_limit"),
        ("limit=101".to_owned(), "invalid_limit"),
        ("bogus=1".to_owned(), "invalid_query"),
    ];
    for (query, code) in cases {
        let (status, answer) = app.admin(Method::GET, &format!("/admin/api-keys/{key}/usage?{query}"), None).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
            "{query}"
        );
    }
    // The largest range answers whole; a longer one keeps its last 1,500 buckets, and says so.
    let most = usage_of(&app, &key, &range("minute", MINUTE, MINUTE + 1_500 * 60)).await;
    assert_eq!(most["series"].as_array().unwrap().len(), 1_500);
    let longer = usage_of(&app, &key, &range("minute", MINUTE, MINUTE + 1_501 * 60)).await;
    assert_eq!(longer["series"].as_array().unwrap().len(), 1_500);
    assert_eq!(
        (longer["from"].as_str(), longer["series"][0]["start"].as_str()),
        (Some(&*rfc(MINUTE + 60)), Some(&*rfc(MINUTE + 60)))
    );
    // A range that ends where or before it starts is empty.
    for empty in [range("hour", MINUTE, MINUTE), range("hour", MINUTE + 3_600, MINUTE)] {
        let answer = usage_of(&app, &key, &empty).await;
        assert_eq!(
            (answer["series"].as_array().unwrap().len(), answer["operations"].as_array().unwrap().len()),
            (0, 0),
            "{empty}"
        );
    }
    let (status, _) = app.admin(Method::GET, "/admin/api-keys/nope/usage", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.cleanup().await;
}

#[tokio::test]
async fn concurrent_copies_of_a_batch_count_once_on_postgres() {
    let app = TestApp::postgres_local("usage_race", [11; 32]).await;
    let (_, key) = app.create_key(&["query:read"]).await;
    app.clock.advance(MINUTE + 120 - T0);
    let batch = json!({"batch_id": batch_id(5), "rows": [{"key_id": key, "minute": MINUTE, "admitted": 2}]});
    let answers = futures_util::future::join_all((0..8).map(|_| post(&app, &batch))).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK), "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, a)| a["applied"] == true).count(), 1, "{answers:?}");
    let usage = usage_of(&app, &key, &range("day", DAY_START, DAY_START + 86_400)).await;
    assert_eq!(totals(&usage["series"]), [2, 0, 0, 0]);
    app.cleanup().await;
}

#[tokio::test]
async fn the_pruning_task_follows_the_service_clock_and_stops_on_shutdown() {
    let app = TestApp::sqlite_local("usage_pruner").await;
    let (_, key) = app.create_key(&["query:read"]).await;
    app.clock.advance(MINUTE + 120 - T0);
    let batch = json!({"batch_id": batch_id(6), "rows": [{"key_id": key, "minute": MINUTE, "admitted": 1}]});
    assert_eq!(post(&app, &batch).await.1["rows"], 1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pruner = usage::pruner::Pruner::new(app.store.clone(), app.clock.clone())
        .with_poll(std::time::Duration::from_millis(5))
        .run(async move {
            let _ = stopped.await;
        });
    let task = tokio::spawn(pruner);
    let minute_count = || async {
        let minutes = usage_of(&app, &key, &range("minute", MINUTE, MINUTE + 60)).await;
        minutes["series"][0]["admitted"].as_i64().unwrap()
    };
    // Its first pass found nothing to prune; the minute goes only once the clock passes its retention
    // and the next pass is due.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(minute_count().await, 1);
    app.clock.advance(Granularity::Minute.retention_secs());
    let mut pruned = false;
    for _ in 0..2_000 {
        if minute_count().await == 0 {
            pruned = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(pruned, "the task pruned the minute past its retention");
    stop.send(()).unwrap();
    task.await.unwrap();
    app.cleanup().await;
}
