//! What metering counts, for `/metrics` and the workers' minutely log line. Label values come
//! from fixed sets only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tollgate_ports::usage_queue::QueueDepth;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Metering's metrics (cheap to clone: every metric is shared).
#[derive(Clone)]
pub struct MeteringMetrics {
    pub accepted: Counter,
    pub applied: Counter,
    pub duplicates: Counter,
    pub dead_lettered: Counter,
    pub batches: Counter,
    queue_entries: Gauge,
    queue_pending: Gauge,
    dead_letters: Gauge,
    retries: Family<StageLabels, Counter>,
    reconciles: Family<OutcomeLabels, Counter>,
    lag: Histogram,
}

impl Default for MeteringMetrics {
    fn default() -> Self {
        Self {
            accepted: Counter::default(),
            applied: Counter::default(),
            duplicates: Counter::default(),
            dead_lettered: Counter::default(),
            batches: Counter::default(),
            queue_entries: Gauge::default(),
            queue_pending: Gauge::default(),
            dead_letters: Gauge::default(),
            retries: Family::default(),
            reconciles: Family::default(),
            // 1 ms to about 65 s.
            lag: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl MeteringMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("tollgate_metering");
        registry.register("reports_accepted", "Usage reports taken into the queue", self.accepted.clone());
        registry.register(
            "reports_applied",
            "Usage reports charged to the ledger and the counters",
            self.applied.clone(),
        );
        registry.register(
            "reports_duplicate",
            "Usage reports of calls charged before (a retried report, or a redelivery)",
            self.duplicates.clone(),
        );
        registry.register(
            "reports_dead_lettered",
            "Usage reports set aside as dead letters",
            self.dead_lettered.clone(),
        );
        registry.register("batches", "Batches applied and acknowledged", self.batches.clone());
        registry.register(
            "queue_entries",
            "Usage reports in the queue: waiting, or handed out and not acknowledged (sampled every 5 s)",
            self.queue_entries.clone(),
        );
        registry.register(
            "queue_pending",
            "Usage reports handed out to a worker and not yet acknowledged (sampled every 5 s)",
            self.queue_pending.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead letters waiting to be replayed (sampled every 5 s)",
            self.dead_letters.clone(),
        );
        registry.register(
            "batch_retries",
            "Batches left to come back, by stage: commit (pricing, the database) or settle (the counters, the acknowledgement)",
            self.retries.clone(),
        );
        registry.register(
            "reconciles",
            "Rebuilds of the counters from the ledger, by outcome",
            self.reconciles.clone(),
        );
        registry.register(
            "lag_seconds",
            "Time from a report's acceptance to its acknowledgement, once applied (Redis queues only)",
            self.lag.clone(),
        );
    }

    pub(crate) fn queue(&self, depth: QueueDepth) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_entries.set(gauge(depth.entries));
        self.queue_pending.set(gauge(depth.pending));
        self.dead_letters.set(gauge(depth.dead_letters));
    }

    pub(crate) fn retry(&self, stage: &'static str) {
        self.retries.get_or_create(&StageLabels { stage }).inc();
    }

    pub(crate) fn reconciled(&self, ok: bool) {
        self.reconciles.get_or_create(&OutcomeLabels { outcome: if ok { "ok" } else { "failed" } }).inc();
    }

    pub(crate) fn lag(&self, seconds: f64) {
        self.lag.observe(seconds);
    }
}
