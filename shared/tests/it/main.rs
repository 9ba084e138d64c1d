//! keygate-shared's integration tests, one binary (kanidm style): known-answer vectors and properties.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod properties;
mod vectors;
