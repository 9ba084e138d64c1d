//! keygate's control plane: where keys are born and die. This crate also builds the `keygate` binary.

pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod console;
pub mod envelope;
pub mod key_update;
pub mod kms;
pub mod leak_webhook;
pub mod leaks;
pub mod origin_keys;
pub mod replicator;
pub mod rng;
pub mod service;
pub mod store;
pub mod usage;
