//! Real parts the tests start themselves.

pub mod app;
pub mod kms_server;
