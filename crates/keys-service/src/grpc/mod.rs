//! The gRPC adapter: checks and converts each request, calls [`KeysService`], converts the
//! answer. One struct implements every keys.v1 service.

mod accounts;
mod applications;
mod audit;
mod groups;
mod key_state;
mod keys;
mod models;

use std::sync::Arc;

use tollgate_core::{Violations, page_token};
use tollgate_store::Page;
use tonic::metadata::MetadataMap;

use crate::error::KeysError;
use crate::service::{Actor, KeysService};

/// The keys.v1 services over gRPC.
#[derive(Clone)]
pub struct KeysGrpc {
    service: Arc<KeysService>,
}

impl KeysGrpc {
    pub fn new(service: Arc<KeysService>) -> Self {
        Self { service }
    }
}

/// The actor named in metadata, for the audit log.
fn actor(metadata: &MetadataMap) -> Actor {
    Actor(tollgate_auth::actor(metadata))
}

/// Fails with every violation collected so far.
fn check(violations: Violations) -> Result<(), KeysError> {
    violations.into_result().map_err(KeysError::InvalidArgument)
}

/// The `next_page_token` of a page.
fn next_token<T>(page: &Page<T>, collection: &str) -> String {
    page.next_after.as_deref().map(|after| page_token::encode(collection, after)).unwrap_or_default()
}
