//! keygate's edge worker. The Cloudflare Worker itself (routing, Workers KV, forwarding) arrives with
//! the edge issue; until then this crate only pins down that the worker builds on `keygate-shared`
//! without its `std` feature, as it must for `wasm32-unknown-unknown`.

#![no_std]

pub use keygate_shared as shared;
