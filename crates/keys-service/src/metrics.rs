//! What the keys service counts, for `/metrics`. Mutations by RPC are the gRPC server metrics'
//! `grpc_server_handled_total` of the management services.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The key-state outbox's metrics (cheap to clone: every metric is shared).
#[derive(Clone, Default)]
pub struct KeysMetrics {
    pub pushed: Counter,
    pub push_failures: Counter,
    /// Changes committed and not yet pushed, sampled by the background loop.
    pub outbox_depth: Gauge,
}

impl KeysMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("tollgate_keys");
        registry.register(
            "state_pushed",
            "Key-state outbox entries pushed to the shared cache (and announced to authz)",
            self.pushed.clone(),
        );
        registry.register(
            "state_push_failures",
            "Key-state pushes that failed (Redis or the database unreachable); the background loop retries them",
            self.push_failures.clone(),
        );
        registry.register(
            "state_outbox_depth",
            "Key-state changes committed and not yet pushed to the shared cache (sampled every 5 s)",
            self.outbox_depth.clone(),
        );
    }
}
