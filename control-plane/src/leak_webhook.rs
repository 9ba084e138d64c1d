//! Tells a leaked key's owner what was revoked and where it was found: a JSON POST to
//! `--leak-webhook-url`, signed like a sync push (`X-Keygate-Timestamp`, `X-Keygate-Signature` =
//! hex HMAC-SHA256 of `timestamp.body` under `--leak-webhook-secret`). It is sent after the commit,
//! off the request path, with a timeout; a failure is logged and counted, never retried.

use std::time::Duration;

use keygate_shared::SyncSecret;
use serde::Serialize;

/// What the owner is told.
#[derive(Debug, Clone, Serialize)]
pub struct LeakNotice {
    /// The key's id.
    pub api_key_id: String,
    /// The key's name.
    pub name: String,
    /// The key's owner, if it has one.
    pub owner: Option<String>,
    /// Whether this report revoked it (`false` under `--on-leak notify`).
    pub revoked: bool,
    /// Where it was found.
    pub found_at: Option<String>,
    /// GitHub's `source`, or the reporter's words.
    pub source: Option<String>,
    /// When, RFC 3339.
    pub at: String,
}

/// The webhook: its URL, its signing secret and an HTTP client with timeouts.
pub struct LeakWebhook {
    url: String,
    secret: SyncSecret,
    http: reqwest::Client,
}

impl std::fmt::Debug for LeakWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakWebhook").field("url", &WebhookUrl(self.url.clone())).finish_non_exhaustive()
    }
}

/// A webhook URL. Its `Debug` shows the scheme and host only: a chat webhook's path is its credential.
#[derive(Clone)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// The whole URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for WebhookUrl {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if !(text.starts_with("https://") || text.starts_with("http://")) {
            return Err("the leak webhook URL must start with https:// or http://");
        }
        Ok(Self(text.to_owned()))
    }
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        // user:password@host keeps only the host.
        let host = host.rsplit('@').next().unwrap_or(host);
        write!(f, "{scheme}://{host}/<redacted>")
    }
}

impl LeakWebhook {
    /// A webhook to `url`, signed with `secret`.
    pub fn new(url: &str, secret: SyncSecret) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self { url: url.to_owned(), secret, http }
    }

    /// Sends `notice`, signed at `now` (unix seconds), on a task of its own: the caller does not wait.
    pub fn send(&self, notice: &LeakNotice, now: i64) {
        let Ok(body) = serde_json::to_vec(notice) else { return };
        let signature = self.secret.sign(now, &body);
        let request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Keygate-Timestamp", now.to_string())
            .header("X-Keygate-Signature", signature)
            .body(body);
        let key_id = notice.api_key_id.clone();
        tokio::spawn(async move {
            let outcome = match request.send().await {
                Ok(response) if response.status().is_success() => "ok",
                Ok(response) => {
                    tracing::warn!(%key_id, status = response.status().as_u16(), "leak webhook refused");
                    "refused"
                }
                Err(error) => {
                    tracing::warn!(%key_id, error = %error.without_url(), "leak webhook unreachable");
                    "unreachable"
                }
            };
            metrics::counter!("keygate_leak_webhooks_total", "outcome" => outcome).increment(1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_neither_the_secret_nor_the_urls_path() {
        let url = "https://user:pw@hooks.example.com/services/T000/B000/XXXXSECRETPATH?token=t0ken";
        let webhook = LeakWebhook::new(url, SyncSecret::new("webhook-signing-secret"));
        let shown = format!("{webhook:?}");
        assert_eq!(shown, r#"LeakWebhook { url: https://hooks.example.com/<redacted>, .. }"#);
        let parsed: WebhookUrl = url.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.as_str(), url);
        assert!("ftp://x".parse::<WebhookUrl>().is_err());
    }
}
