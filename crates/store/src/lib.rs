//! Tollgate's SQL stores.
//!
//! One implementation over sqlx's `Any` driver serves both backends: Postgres in production
//! (each service in its own schema) and a SQLite file for `tollgate dev`. The SQL is written
//! once in the dialect both accept; only the migrations differ per backend. Every store is a
//! small trait so the services depend on behaviour, and one conformance suite
//! (`tests/conformance.rs`) runs against both backends.

mod db;
mod error;
pub mod keys;
pub mod metering;

pub use db::{Backend, Database, DatabaseConfig};
pub use error::{StoreError, StoreResult};

/// A page of a keyset-paginated list: items after `after` (exclusive), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: u32,
}

/// One page and whether another follows.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The sort key to continue after, when more items exist.
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// Trims one look-ahead row fetched beyond `limit` and derives the continuation.
    pub(crate) fn from_lookahead(mut items: Vec<T>, limit: u32, sort_key: impl Fn(&T) -> String) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_after = if more { items.last().map(sort_key) } else { None };
        Self { items, next_after }
    }
}
