//! What a GraphQL request asks for: the operation types it would run, and whether it is a batch.
//!
//! The body is GraphQL-over-HTTP JSON: `{"query", "operationName"?, ...}` or an array of those (a
//! batch). Documents are parsed with apollo-parser under recursion and token limits, so a hostile
//! document costs bounded work; a document with several operations is resolved by `operationName`.

use apollo_parser::cst;
use apollo_parser::Parser;
use keygate_shared::OperationKind;
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
    /// An entry has no `query` string (persisted queries are not supported).
    MissingQuery,
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
            Self::MissingQuery => "every request needs a \"query\" string (persisted queries are not supported)",
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
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Envelope {
    Batch(Vec<Entry>),
    Single(Entry),
}

/// A decoded request body, not yet parsed as GraphQL.
#[derive(Debug)]
pub struct GraphqlBody {
    entries: Vec<Entry>,
    batch: bool,
}

impl GraphqlBody {
    /// Decodes the JSON envelope (cheap: the documents are parsed by [`GraphqlBody::operations`]).
    pub fn decode(body: &[u8]) -> Result<Self, ClassifyError> {
        match serde_json::from_slice::<Envelope>(body).map_err(|_| ClassifyError::NotGraphqlJson)? {
            Envelope::Single(entry) => Ok(Self { entries: vec![entry], batch: false }),
            Envelope::Batch(entries) if entries.is_empty() => Err(ClassifyError::EmptyBatch),
            Envelope::Batch(entries) => Ok(Self { entries, batch: true }),
        }
    }

    /// A GET request's `query` and `operationName` parameters.
    pub fn from_query_params(query: Option<String>, operation_name: Option<String>) -> Self {
        Self { entries: vec![Entry { query, operation_name }], batch: false }
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
        self.entries
            .iter()
            .map(|entry| {
                let query = entry.query.as_deref().ok_or(ClassifyError::MissingQuery)?;
                operation_kind(query, entry.operation_name.as_deref())
            })
            .collect()
    }
}

/// The type of the operation `document` would run, chosen by `operation_name` when it has several.
pub fn operation_kind(document: &str, operation_name: Option<&str>) -> Result<OperationKind, ClassifyError> {
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
    Ok(match chosen.operation_type() {
        // The `{ ... }` shorthand is a query.
        None => OperationKind::Query,
        Some(kind) if kind.mutation_token().is_some() => OperationKind::Mutation,
        Some(kind) if kind.subscription_token().is_some() => OperationKind::Subscription,
        Some(_) => OperationKind::Query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationKind::*;

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
        let persisted = GraphqlBody::decode(br#"{"extensions":{"persistedQuery":{"sha256Hash":"ab"}}}"#).unwrap();
        assert_eq!(persisted.operations(), Err(ClassifyError::MissingQuery));
    }
}
