//! keygate's control plane: where keys are born and die. This crate also builds the `keygate` binary.

pub mod cli;
pub mod envelope;
pub mod kms;
