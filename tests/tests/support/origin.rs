//! A GraphQL origin on a real socket that records every request it receives and answers with data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

/// What the origin received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub headers: HashMap<String, String>,
    pub path_and_query: String,
    pub body: String,
}

#[derive(Default)]
pub struct Origin {
    pub seen: Mutex<Vec<Seen>>,
}

impl Origin {
    /// How many requests reached the origin so far.
    pub fn reached(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn origin_handler(
    State(origin): State<Arc<Origin>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let headers: HashMap<String, String> =
        headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    origin.seen.lock().unwrap().push(Seen {
        headers,
        path_and_query: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    axum::Json(json!({"data": {"users": [{"id": 1}]}}))
}

/// Starts the origin on a free loopback port; returns it and its URL.
pub async fn start_origin() -> (Arc<Origin>, String) {
    let origin = Arc::new(Origin::default());
    let app = Router::new().fallback(any(origin_handler)).with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (origin, url)
}
