//! Failed attempts per client address, on a real socket (the limit needs the peer's address): after
//! 20 bad keys in a minute, verify and the admin API answer 429 to that address, good key or not,
//! until the minute is over; nothing is written or audited meanwhile.

use serde_json::{json, Value};

use crate::support::app::TestApp;

#[tokio::test]
async fn an_address_that_sends_too_many_bad_keys_is_held_off_for_the_minute() {
    let app = TestApp::sqlite_local("attempts").await;
    let (good, _) = app.create_key(&["query:read"]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keygate_control_plane::api::run(listener, app.service.clone(), async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap();
    let verify = |key: String| {
        let http = http.clone();
        let url = format!("{base}/v1/keys/verify");
        async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(json!({"api_key": key}).to_string())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (status, retry_after, serde_json::from_slice::<Value>(&response.bytes().await.unwrap()).unwrap())
        }
    };
    let wrong = format!("{}x", &good[..good.len() - 1]);

    for _ in 0..keygate_shared::attempts::DEFAULT_LIMIT {
        let (status, _, body) = verify(wrong.clone()).await;
        assert_eq!((status, body["code"].as_str()), (200, Some("invalid_key")));
    }
    let before = app.counts().await;
    let (status, retry_after, body) = verify(good.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_failed_attempts")), "{body}");
    assert_eq!(retry_after.as_deref(), Some("60"));
    let admin = http.get(format!("{base}/admin/api-keys")).bearer_auth(&app.admin_key).send().await.unwrap();
    assert_eq!(admin.status().as_u16(), 429, "the admin API holds the address off too");
    assert_eq!(app.counts().await, before, "no audit entry, no row");

    app.clock.advance(keygate_shared::attempts::WINDOW_SECS);
    let (status, _, body) = verify(good).await;
    assert_eq!((status, body["valid"].as_bool()), (200, Some(true)), "a new minute, a new count");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    app.cleanup().await;
}
