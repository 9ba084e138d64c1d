//! Cross-site request forgery checks for the console's POSTs: the session's token must come back in
//! the form (compared in constant time), and a browser's `Origin` / `Sec-Fetch-Site` must say the
//! request came from the console's own pages. `SameSite=Strict` on the cookie is a third layer.

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// Whether the form's token is the session's.
pub fn token_matches(expected: &str, presented: &str) -> bool {
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// Whether the request's browser headers allow it: `Sec-Fetch-Site`, when sent, is `same-origin` (or
/// `none`, typed by the user), and `Origin`, when sent, is this host over http or https. `Origin: null`
/// says nothing: browsers send it for the console's own forms, because its pages' `Referrer-Policy` is
/// `no-referrer`; the token (and `Sec-Fetch-Site`) decide then.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    let Some(origin) = text(header::ORIGIN.as_str()).filter(|origin| *origin != "null") else {
        return true;
    };
    let Some(host) = text(header::HOST.as_str()) else {
        return false;
    };
    origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn tokens_must_match_exactly() {
        let token = "a".repeat(64);
        assert!(token_matches(&token, &token));
        assert!(!token_matches(&token, &"a".repeat(63)));
        assert!(!token_matches(&token, &format!("{}b", "a".repeat(63))));
        assert!(!token_matches(&token, ""));
    }

    #[test]
    fn only_the_console_own_origin_passes() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])), "no Origin: not a browser's cross-site post");
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[("host", "keys.example"), ("origin", "https://keys.example")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:9999")])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])), "no-referrer's Origin");
        assert!(!same_origin(&headers(&[("host", "h"), ("origin", "null"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("origin", "http://127.0.0.1:8080")])), "an Origin without a Host");
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-site")])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-origin")])));
    }
}
