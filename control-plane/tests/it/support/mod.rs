//! Real parts the tests start themselves.

pub mod app;
pub mod fault_net;
pub mod kms_server;
pub mod ports;
pub mod slow_edge;

pub use ports::free_port;
