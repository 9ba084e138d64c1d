//! keygate's edge worker: checks every GraphQL request against replicated key records and forwards the
//! good ones to the origin. The logic lives in plain modules that native tests cover; the Cloudflare
//! Worker glue (routing, Workers KV, fetch) only calls them.

pub mod check;
#[cfg(target_arch = "wasm32")]
mod forward;
pub mod graphql;
pub mod graphql_ws;
pub mod identity;
pub mod persisted;
pub mod ratelimit;
pub mod recent;
#[cfg(target_arch = "wasm32")]
mod relay;
pub mod replica;
pub mod request_url;
pub mod signing_keys;
pub mod usage;
#[cfg(target_arch = "wasm32")]
mod worker;

pub use keygate_shared as shared;
