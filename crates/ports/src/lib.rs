//! Tollgate's ports: the traits the services reach shared state through, and the types they
//! pass. Services depend on these traits only; adapters implement them — Redis and in-process
//! in `tollgate_state`, SQL (`tollgate dev`'s usage queue) in `tollgate_store`.
//!
//! - [`key_state`]: the key-state cache and its invalidations (keys writes, authz reads);
//! - [`counters`]: the counters, split by who uses them (authz, metering, keys, rebuild);
//! - [`usage_queue`]: the durable queue between `RecordUsage` and the metering workers.

pub mod counters;
mod error;
pub mod key_state;
pub mod usage_queue;

pub use error::StateError;
