//! The control plane's integration tests, one binary: the `keygate` binary run as a user would, and the
//! parts it is built from, against real servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attempts;
mod auth_matrix;
mod cli;
mod faults;
mod key_commands;
mod key_updates;
mod kms;
mod leaks;
mod lifecycle;
mod ops;
mod origin_keys;
mod replication;
mod safety;
mod support;
mod usage;
