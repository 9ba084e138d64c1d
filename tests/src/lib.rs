//! keygate's end-to-end tests live in `tests/edge.rs`: they start the built worker in workerd, the
//! control plane with its replicator, a KMS API server, PostgreSQL or SQLite, and a GraphQL origin.
