//! Persisted queries' documents (Apollo APQ), as the edge remembers them.
//!
//! A document is remembered when a request sends it together with its SHA-256 hash and is admitted:
//! only a caller with a good key writes, and only what hashes to its name, so nobody can put a
//! mutation under a query's hash. Documents live in Workers KV under `apq:<hash>`, each with an expiry
//! (`APQ_TTL_SECS`, a day by default) and at most [`MAX_DOCUMENT`] bytes; a larger one is forwarded
//! but not remembered, so its hash alone gets `PERSISTED_QUERY_NOT_FOUND` and the client sends it
//! again. Each isolate also keeps the documents it has seen lately ([`RecentDocuments`]), bounded in
//! bytes, so a popular hash costs no KV read and is written to KV once per isolate, not per request.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// The KV name of a document: this prefix and its hash (a key id never has a colon).
pub const KV_PREFIX: &str = "apq:";
/// The largest document remembered, in bytes.
pub const MAX_DOCUMENT: usize = 64 * 1024;
/// How long KV keeps a document unless `APQ_TTL_SECS` says otherwise: a day.
pub const DEFAULT_TTL_SECS: u64 = 24 * 60 * 60;
/// The shortest expiry Workers KV accepts.
pub const MIN_TTL_SECS: u64 = 60;
/// Bytes of documents an isolate keeps in memory.
pub const ISOLATE_BYTES: usize = 4 * 1024 * 1024;

/// The KV name under which the document with `hash` is kept.
pub fn kv_name(hash: &str) -> String {
    format!("{KV_PREFIX}{hash}")
}

/// Whether a document is small enough to remember.
pub fn rememberable(document: &str) -> bool {
    document.len() <= MAX_DOCUMENT
}

/// The documents an isolate has seen lately, by hash, at most `capacity` bytes of them; the oldest
/// go first.
#[derive(Debug)]
pub struct RecentDocuments {
    documents: HashMap<String, Rc<str>>,
    order: VecDeque<String>,
    bytes: usize,
    capacity: usize,
}

impl Default for RecentDocuments {
    fn default() -> Self {
        Self::new(ISOLATE_BYTES)
    }
}

impl RecentDocuments {
    /// Holds at most `capacity` bytes of documents.
    pub fn new(capacity: usize) -> Self {
        Self { documents: HashMap::new(), order: VecDeque::new(), bytes: 0, capacity }
    }

    /// The document held for `hash`.
    pub fn get(&self, hash: &str) -> Option<Rc<str>> {
        self.documents.get(hash).cloned()
    }

    /// Keeps `document` under `hash`; returns false if it was held already. A document larger than
    /// [`MAX_DOCUMENT`] is not kept.
    pub fn keep(&mut self, hash: &str, document: &str) -> bool {
        if self.documents.contains_key(hash) || !rememberable(document) {
            return false;
        }
        while self.bytes + document.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(dropped) = self.documents.remove(&oldest) {
                self.bytes -= dropped.len();
            }
        }
        if self.bytes + document.len() > self.capacity {
            return false;
        }
        self.bytes += document.len();
        self.order.push_back(hash.to_owned());
        self.documents.insert(hash.to_owned(), Rc::from(document));
        true
    }

    /// Bytes of documents held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_kept_once_and_the_oldest_go_first() {
        let mut recent = RecentDocuments::new(10);
        assert!(recent.keep("a", "12345"));
        assert!(!recent.keep("a", "12345"), "held already: not written again");
        assert!(recent.keep("b", "1234"));
        assert_eq!(recent.bytes(), 9);
        assert!(recent.keep("c", "123"), "room is made by dropping the oldest");
        assert_eq!(recent.get("a"), None);
        assert_eq!(recent.get("b").as_deref(), Some("1234"));
        assert_eq!(recent.bytes(), 7);
        assert!(!recent.keep("d", "12345678901"), "larger than the whole capacity");
        assert!(recent.bytes() <= 10);
    }

    #[test]
    fn a_document_over_the_limit_is_not_remembered() {
        let mut recent = RecentDocuments::default();
        let huge = "a".repeat(MAX_DOCUMENT + 1);
        assert!(!rememberable(&huge));
        assert!(!recent.keep("h", &huge));
        assert!(rememberable(&huge[1..]));
        assert_eq!(kv_name("ab"), "apq:ab");
    }
}
