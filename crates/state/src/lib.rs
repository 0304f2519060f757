//! Tollgate's fast shared state: the Redis and in-process adapters of the ports in
//! `tollgate_ports`.
//!
//! - key-state cache and invalidations: [`redis::RedisState`] (production) and
//!   [`memory::MemoryState`] (`tollgate dev`, where every service runs in one process);
//! - counters: [`redis_counters::RedisCounters`] and [`memory_counters::MemoryCounters`];
//! - usage queue: [`redis_usage_queue::RedisUsageQueue`] (`tollgate dev`'s is a table, in
//!   `tollgate_store`).

pub mod counters;
pub mod memory;
pub mod memory_counters;
pub mod rebuild;
pub mod redis;
pub mod redis_conn;
pub mod redis_counters;
pub mod redis_usage_queue;
mod redis_usage_stream;
