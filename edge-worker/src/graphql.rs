//! What a GraphQL request asks for: the operation types it would run, and whether it is a batch.
//!
//! The body is GraphQL-over-HTTP JSON: `{"query", "operationName"?, "extensions"?, ...}` or an array of
//! those (a batch). Documents are parsed with apollo-parser under recursion and token limits, so a
//! hostile document costs bounded work; a document with several operations is resolved by
//! `operationName`.
//!
//! An entry may name its document by hash instead (Apollo's automatic persisted queries,
//! `extensions.persistedQuery {version: 1, sha256Hash}`): [`GraphqlBody::unresolved`] lists the hashes to
//! look up, [`GraphqlBody::resolve`] fills in a remembered document, and an entry that sends both a
//! document and its hash must hash to it, so what the edge classifies is what the origin runs.

use std::cell::RefCell;
use std::collections::HashMap;

use apollo_parser::cst;
use apollo_parser::Parser;
use keygate_shared::{sha256_hex, OperationKind};
use serde::Deserialize;

/// Nesting depth a document may reach.
const RECURSION_LIMIT: usize = 64;
/// Tokens a document may have.
const TOKEN_LIMIT: usize = 15_000;

/// Why a body is not a GraphQL request keygate can classify: a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassifyError {
    /// Not JSON of the GraphQL-over-HTTP shape.
    NotGraphqlJson,
    /// An entry has neither a `query` string nor a persisted query's hash.
    MissingQuery,
    /// `extensions.persistedQuery` is not `{"version": 1, "sha256Hash": <64 hex digits>}`.
    BadPersistedQuery,
    /// A document sent with its hash does not hash to it.
    HashMismatch,
    /// The document does not parse, or exceeds the limits.
    Unparsable,
    /// No operation, or none named `operationName`, or several and no `operationName`.
    NoOperation,
    /// An empty batch.
    EmptyBatch,
}

impl ClassifyError {
    /// The message sent to the client.
    pub fn message(&self) -> &'static str {
        match self {
            Self::NotGraphqlJson => "the body must be a GraphQL request in JSON: {\"query\": ...} or an array of them",
            Self::MissingQuery => "every request needs a \"query\" string or a persisted query's sha256Hash",
            Self::BadPersistedQuery => {
                "extensions.persistedQuery must be {\"version\": 1, \"sha256Hash\": <64 hex digits>}"
            }
            Self::HashMismatch => "provided sha does not match query",
            Self::Unparsable => "the GraphQL document does not parse, or is too large or too deep",
            Self::NoOperation => "no operation to run: name one with operationName when the document has several",
            Self::EmptyBatch => "a batch must hold at least one request",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Entry {
    query: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    extensions: Option<Extensions>,
    /// The query was filled in from a remembered document, not sent.
    #[serde(skip)]
    resolved: bool,
}

/// The part of `extensions` the edge reads; other members pass through untouched.
#[derive(Debug, Default, Deserialize)]
struct Extensions {
    #[serde(rename = "persistedQuery")]
    persisted_query: Option<PersistedQuery>,
}

#[derive(Debug, Deserialize)]
struct PersistedQuery {
    version: serde_json::Value,
    #[serde(rename = "sha256Hash")]
    sha256_hash: serde_json::Value,
}

impl Entry {
    /// The persisted query's hash, lower-cased, if the entry names one, checked for shape.
    fn persisted_hash(&self) -> Result<Option<String>, ClassifyError> {
        let Some(persisted) = self.extensions.as_ref().and_then(|e| e.persisted_query.as_ref()) else {
            return Ok(None);
        };
        let hash = persisted.sha256_hash.as_str().filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        match (persisted.version.as_u64(), hash) {
            (Some(1), Some(hash)) => Ok(Some(hash.to_ascii_lowercase())),
            _ => Err(ClassifyError::BadPersistedQuery),
        }
    }
}

/// A decoded request body, not yet parsed as GraphQL.
#[derive(Debug)]
pub struct GraphqlBody {
    entries: Vec<Entry>,
    batch: bool,
}

impl GraphqlBody {
    /// Decodes the JSON envelope (cheap: the documents are parsed by [`GraphqlBody::operations`]).
    ///
    /// A JSON array is a batch, anything else a single request: the first byte that is not JSON
    /// whitespace says which, so the body is read once, straight into its type.
    pub fn decode(body: &[u8]) -> Result<Self, ClassifyError> {
        let is_batch = body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) == Some(&b'[');
        if !is_batch {
            let entry = serde_json::from_slice::<Entry>(body).map_err(|_| ClassifyError::NotGraphqlJson)?;
            return Ok(Self { entries: vec![entry], batch: false });
        }
        match serde_json::from_slice::<Vec<Entry>>(body).map_err(|_| ClassifyError::NotGraphqlJson)? {
            entries if entries.is_empty() => Err(ClassifyError::EmptyBatch),
            entries => Ok(Self { entries, batch: true }),
        }
    }

    /// A GET request's `query`, `operationName` and `extensions` parameters (`extensions` is JSON).
    pub fn from_query_params(
        query: Option<String>,
        operation_name: Option<String>,
        extensions: Option<String>,
    ) -> Result<Self, ClassifyError> {
        let extensions = match extensions {
            Some(text) => serde_json::from_str(&text).map_err(|_| ClassifyError::NotGraphqlJson)?,
            None => None,
        };
        Ok(Self { entries: vec![Entry { query, operation_name, extensions, resolved: false }], batch: false })
    }

    /// The persisted-query hashes whose documents must be looked up, in order and without repeats.
    /// Checks every persisted query's shape, and that a document sent with its hash hashes to it.
    pub fn unresolved(&self) -> Result<Vec<String>, ClassifyError> {
        let mut hashes: Vec<String> = Vec::new();
        for entry in &self.entries {
            match (entry.persisted_hash()?, entry.query.as_deref()) {
                (Some(hash), Some(query)) if !entry.resolved && sha256_hex(query) != hash => {
                    return Err(ClassifyError::HashMismatch);
                }
                (Some(hash), None) if !hashes.contains(&hash) => hashes.push(hash),
                _ => {}
            }
        }
        Ok(hashes)
    }

    /// Gives every entry that names `hash` without a document the remembered `document`.
    pub fn resolve(&mut self, hash: &str, document: &str) {
        for entry in &mut self.entries {
            if entry.query.is_none() && entry.persisted_hash().ok().flatten().as_deref() == Some(hash) {
                entry.query = Some(document.to_owned());
                entry.resolved = true;
            }
        }
    }

    /// The documents sent together with their (matching) hash, as `(hash, document)`: what the edge
    /// remembers once the request is admitted.
    pub fn registrations(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|entry| !entry.resolved)
            .filter_map(|entry| Some((entry.persisted_hash().ok().flatten()?, entry.query.clone()?)))
            .collect()
    }

    /// Whether the body was a JSON array.
    pub fn is_batch(&self) -> bool {
        self.batch
    }

    /// How many operations it would run.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no operation (never, once decoded).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The type of each operation it would run, in order.
    pub fn operations(&self) -> Result<Vec<OperationKind>, ClassifyError> {
        Ok(self.named_operations()?.into_iter().map(|(kind, _)| kind).collect())
    }

    /// The type and name of each operation it would run, in order (the name `None` for an anonymous
    /// operation): what usage counts an admitted request under.
    pub fn named_operations(&self) -> Result<Vec<(OperationKind, Option<String>)>, ClassifyError> {
        self.entries
            .iter()
            .map(|entry| {
                let query = entry.query.as_deref().ok_or(ClassifyError::MissingQuery)?;
                operation(query, entry.operation_name.as_deref())
            })
            .collect()
    }
}

/// The type of the operation `document` would run, chosen by `operation_name` when it has several.
pub fn operation_kind(document: &str, operation_name: Option<&str>) -> Result<OperationKind, ClassifyError> {
    operation(document, operation_name).map(|(kind, _)| kind)
}

/// What [`operation`] answered for a document and operation name.
type Classification = Result<(OperationKind, Option<String>), ClassifyError>;

/// Documents remembered by [`Classified`]: at most this many, each at most [`CLASSIFIED_MAX_LEN`]
/// bytes with an operation name of at most [`CLASSIFIED_MAX_NAME`] (under 560 KiB in all).
const CLASSIFIED_CAPACITY: usize = 128;
const CLASSIFIED_MAX_LEN: usize = 4096;
const CLASSIFIED_MAX_NAME: usize = 256;

/// The classifications of documents seen lately, by the document and the operation name as sent. A
/// client sends the same few documents again and again; in the worker, parsing even `{ hello }` cost
/// about as much as the rest of the check together (BENCHMARKS.md, P1), and the answer depends on
/// nothing else, so it is kept. Full, it starts over: no order to keep up on every hit.
#[derive(Default)]
struct Classified {
    /// By document: each operation name it was sent with, and the answer.
    documents: HashMap<String, Vec<(Option<String>, Classification)>>,
    len: usize,
}

impl Classified {
    fn get(&self, document: &str, operation_name: Option<&str>) -> Option<Classification> {
        let named = self.documents.get(document)?;
        named
            .iter()
            .find(|(name, _)| name.as_deref() == operation_name)
            .map(|(_, classification)| classification.clone())
    }

    fn keep(&mut self, document: &str, operation_name: Option<&str>, classification: &Classification) {
        if document.len() > CLASSIFIED_MAX_LEN || operation_name.is_some_and(|n| n.len() > CLASSIFIED_MAX_NAME) {
            return;
        }
        if self.len >= CLASSIFIED_CAPACITY {
            self.documents.clear();
            self.len = 0;
        }
        let named = self.documents.entry(document.to_owned()).or_default();
        named.push((operation_name.map(str::to_owned), classification.clone()));
        self.len += 1;
    }
}

thread_local! {
    static CLASSIFIED: RefCell<Classified> = RefCell::new(Classified::default());
}

/// The type and the name (`None` if anonymous) of the operation `document` would run, chosen by
/// `operation_name` when it has several. Remembered for documents seen lately ([`Classified`]).
pub fn operation(document: &str, operation_name: Option<&str>) -> Classification {
    if let Some(known) = CLASSIFIED.with(|held| held.borrow().get(document, operation_name)) {
        return known;
    }
    let classification = parse_operation(document, operation_name);
    CLASSIFIED.with(|held| held.borrow_mut().keep(document, operation_name, &classification));
    classification
}

/// [`operation`] without the memory: the document parsed.
fn parse_operation(document: &str, operation_name: Option<&str>) -> Classification {
    let tree = Parser::new(document).recursion_limit(RECURSION_LIMIT).token_limit(TOKEN_LIMIT).parse();
    if tree.errors().len() > 0 {
        return Err(ClassifyError::Unparsable);
    }
    let operations: Vec<cst::OperationDefinition> = tree
        .document()
        .definitions()
        .filter_map(|definition| match definition {
            cst::Definition::OperationDefinition(operation) => Some(operation),
            _ => None,
        })
        .collect();
    let chosen = match (operation_name, operations.as_slice()) {
        (_, []) => return Err(ClassifyError::NoOperation),
        (None, [only]) => only,
        (None, _) => return Err(ClassifyError::NoOperation),
        (Some(name), _) => operations
            .iter()
            .find(|operation| operation.name().is_some_and(|n| n.text() == name))
            .ok_or(ClassifyError::NoOperation)?,
    };
    let kind = match chosen.operation_type() {
        // The `{ ... }` shorthand is a query.
        None => OperationKind::Query,
        Some(kind) if kind.mutation_token().is_some() => OperationKind::Mutation,
        Some(kind) if kind.subscription_token().is_some() => OperationKind::Subscription,
        Some(_) => OperationKind::Query,
    };
    Ok((kind, chosen.name().map(|name| name.text().to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationKind::*;

    #[test]
    fn a_remembered_document_is_answered_as_parsed_for_each_operation_name() {
        let doc = "query RememberRead { a } mutation RememberWrite { b }";
        for _ in 0..3 {
            assert_eq!(operation(doc, Some("RememberWrite")), Ok((Mutation, Some("RememberWrite".to_owned()))));
            assert_eq!(operation(doc, Some("RememberRead")), Ok((Query, Some("RememberRead".to_owned()))));
            assert_eq!(operation(doc, None), Err(ClassifyError::NoOperation));
            assert_eq!(operation("mutation {", None), Err(ClassifyError::Unparsable));
        }
        let kept = CLASSIFIED.with(|held| held.borrow().get(doc, Some("RememberWrite")));
        assert_eq!(kept, Some(parse_operation(doc, Some("RememberWrite"))));
    }

    #[test]
    fn the_memory_of_documents_is_bounded() {
        let mut classified = Classified::default();
        for n in 0..1000 {
            let document = format!("{{ field{n} }}");
            classified.keep(&document, None, &parse_operation(&document, None));
            assert!(classified.len <= CLASSIFIED_CAPACITY);
            assert_eq!(classified.len, classified.documents.values().map(Vec::len).sum::<usize>());
        }
        let long = format!("{{ {} }}", "a ".repeat(CLASSIFIED_MAX_LEN));
        classified.keep(&long, None, &Ok((Query, None)));
        assert_eq!(classified.get(&long, None), None, "a long document is parsed every time");
        let name = "N".repeat(CLASSIFIED_MAX_NAME + 1);
        classified.keep("{ a }", Some(&name), &Ok((Query, None)));
        assert_eq!(classified.get("{ a }", Some(&name)), None);
    }

    #[test]
    fn each_operation_type_is_recognised() {
        assert_eq!(operation_kind("{ users { id } }", None), Ok(Query));
        assert_eq!(operation_kind("query Q { users { id } }", None), Ok(Query));
        assert_eq!(operation_kind("mutation M { addUser(name: \"x\") { id } }", None), Ok(Mutation));
        assert_eq!(operation_kind("subscription S { events { id } }", None), Ok(Subscription));
        assert_eq!(operation_kind("fragment F on User { id } mutation { a { ...F } }", None), Ok(Mutation));
    }

    #[test]
    fn operation_name_picks_among_several() {
        let doc = "query Read { a } mutation Write { b }";
        assert_eq!(operation_kind(doc, Some("Write")), Ok(Mutation));
        assert_eq!(operation_kind(doc, Some("Read")), Ok(Query));
        assert_eq!(operation_kind(doc, None), Err(ClassifyError::NoOperation));
        assert_eq!(operation_kind(doc, Some("Other")), Err(ClassifyError::NoOperation));
        assert_eq!(operation(doc, Some("Write")), Ok((Mutation, Some("Write".to_owned()))));
        assert_eq!(operation("query Only { a }", None), Ok((Query, Some("Only".to_owned()))));
        assert_eq!(operation("{ a }", None), Ok((Query, None)));
        // A mutation cannot hide behind a misleading field or alias name.
        assert_eq!(operation_kind("mutation { query: deleteAll { id } }", None), Ok(Mutation));
    }

    #[test]
    fn broken_huge_or_deep_documents_are_refused() {
        assert_eq!(operation_kind("mutation {", None), Err(ClassifyError::Unparsable));
        assert_eq!(operation_kind("", None), Err(ClassifyError::Unparsable), "a document needs a definition");
        assert_eq!(operation_kind("fragment F on T { id }", None), Err(ClassifyError::NoOperation));
        let deep = format!("{}{}", "{ a ".repeat(200), "}".repeat(200));
        assert_eq!(operation_kind(&deep, None), Err(ClassifyError::Unparsable));
        let wide = format!("{{ {} }}", "a ".repeat(20_000));
        assert_eq!(operation_kind(&wide, None), Err(ClassifyError::Unparsable));
    }

    #[test]
    fn bodies_and_batches_decode() {
        let single = GraphqlBody::decode(br#"{"query":"mutation { a }","variables":{"x":1}}"#).unwrap();
        assert!(!single.is_batch());
        assert_eq!(single.operations(), Ok(vec![Mutation]));
        let batch = GraphqlBody::decode(
            br#"[{"query":"{ a }"},{"query":"query A { a } mutation B { b }","operationName":"B"}]"#,
        )
        .unwrap();
        assert!(batch.is_batch());
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.operations(), Ok(vec![Query, Mutation]));
        assert_eq!(GraphqlBody::decode(b"[]").unwrap_err(), ClassifyError::EmptyBatch);
        assert_eq!(GraphqlBody::decode(b"not json").unwrap_err(), ClassifyError::NotGraphqlJson);
        assert_eq!(GraphqlBody::decode(b"42").unwrap_err(), ClassifyError::NotGraphqlJson);
        // The first byte that is not JSON whitespace decides between a batch and a single request.
        assert!(GraphqlBody::decode(b" \r\n\t[{\"query\":\"{ a }\"}]").unwrap().is_batch());
        assert!(!GraphqlBody::decode(b"\n {\"query\":\"{ a }\"}").unwrap().is_batch());
        assert_eq!(GraphqlBody::decode(b" [] ").unwrap_err(), ClassifyError::EmptyBatch);
        assert_eq!(GraphqlBody::decode(b"[1]").unwrap_err(), ClassifyError::NotGraphqlJson);
        assert_eq!(GraphqlBody::decode(b"[{\"query\":\"{ a }\"}").unwrap_err(), ClassifyError::NotGraphqlJson);
        assert_eq!(GraphqlBody::decode(b"").unwrap_err(), ClassifyError::NotGraphqlJson);
        let persisted = GraphqlBody::decode(br#"{"extensions":{"other":1}}"#).unwrap();
        assert_eq!(persisted.operations(), Err(ClassifyError::MissingQuery));
    }

    fn persisted(hash: &str, query: Option<&str>) -> Vec<u8> {
        let mut entry = serde_json::json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}}});
        if let Some(query) = query {
            entry["query"] = query.into();
        }
        entry.to_string().into_bytes()
    }

    #[test]
    fn a_persisted_query_is_classified_from_its_remembered_document() {
        let document = "mutation { bump }";
        let hash = sha256_hex(document);
        let mut body = GraphqlBody::decode(&persisted(&hash, None)).unwrap();
        assert_eq!(body.unresolved(), Ok(vec![hash.clone()]));
        assert_eq!(body.operations(), Err(ClassifyError::MissingQuery), "unresolved, it cannot be classified");
        assert!(body.registrations().is_empty());
        body.resolve(&hash, document);
        assert_eq!(body.unresolved(), Ok(vec![]));
        assert_eq!(body.operations(), Ok(vec![Mutation]));
        assert!(body.registrations().is_empty(), "a remembered document is not registered again");
    }

    #[test]
    fn a_document_sent_with_its_hash_must_match_it() {
        let document = "{ hello }";
        let hash = sha256_hex(document);
        let body = GraphqlBody::decode(&persisted(&hash.to_ascii_uppercase(), Some(document))).unwrap();
        assert_eq!(body.unresolved(), Ok(vec![]));
        assert_eq!(body.registrations(), vec![(hash.clone(), document.to_owned())]);
        let lie = GraphqlBody::decode(&persisted(&hash, Some("mutation { bump }"))).unwrap();
        assert_eq!(lie.unresolved(), Err(ClassifyError::HashMismatch));
    }

    #[test]
    fn malformed_persisted_queries_are_refused() {
        let hash = sha256_hex("{ a }");
        for bad in [
            serde_json::json!({"version": 2, "sha256Hash": hash}),
            serde_json::json!({"version": "1", "sha256Hash": hash}),
            serde_json::json!({"version": 1, "sha256Hash": &hash[1..]}),
            serde_json::json!({"version": 1, "sha256Hash": format!("{}g", &hash[1..])}),
            serde_json::json!({"version": 1}),
        ] {
            let body = serde_json::json!({"extensions": {"persistedQuery": bad}}).to_string();
            let unresolved = GraphqlBody::decode(body.as_bytes()).and_then(|b| b.unresolved());
            assert!(unresolved.is_err(), "{body}");
        }
        // A persisted query named twice in one entry is refused, not read one way here and another at the origin.
        let twice = format!(
            r#"{{"extensions":{{"persistedQuery":{{"version":1,"sha256Hash":"{hash}"}},"persistedQuery":null}}}}"#
        );
        assert_eq!(GraphqlBody::decode(twice.as_bytes()).unwrap_err(), ClassifyError::NotGraphqlJson);
    }

    #[test]
    fn get_parameters_carry_persisted_queries() {
        let hash = sha256_hex("{ a }");
        let extensions = format!(r#"{{"persistedQuery":{{"version":1,"sha256Hash":"{hash}"}}}}"#);
        let body = GraphqlBody::from_query_params(None, None, Some(extensions)).unwrap();
        assert_eq!(body.unresolved(), Ok(vec![hash]));
        assert!(GraphqlBody::from_query_params(None, None, Some("{".into())).is_err());
    }
}
