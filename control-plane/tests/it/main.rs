//! The `keygate` binary, run as a user would run it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod key_commands;
