//! Real parts the tests start themselves.

pub mod kms_server;
