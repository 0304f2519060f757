//! Taking usage reports: refuse those no worker could ever charge, then enqueue durably; and
//! putting dead letters back on the queue.

use std::sync::Arc;
use std::time::Duration;

use tollgate_core::Violations;
use tollgate_ports::usage_queue::UsageQueue;

use crate::error::MeteringResult;
use crate::metrics::MeteringMetrics;
use crate::payload;
use crate::pricing::{ModelLookup, Pricer};
use crate::usage::UsageReport;

/// Longest a report waits to learn whether its key and model exist.
const CHECK_KNOWN_WITHIN: Duration = Duration::from_millis(250);

/// Takes usage reports into the queue.
pub struct Recorder {
    queue: Arc<dyn UsageQueue>,
    pricer: Arc<Pricer>,
    metrics: MeteringMetrics,
}

impl Recorder {
    pub fn new(queue: Arc<dyn UsageQueue>, pricer: Arc<Pricer>, metrics: MeteringMetrics) -> Self {
        Self { queue, pricer, metrics }
    }

    /// Enqueues checked reports durably, all or none; returns how many. A report whose key or
    /// model the keys service says, now, does not exist is refused (the whole batch with it),
    /// named by `field` (`report`, `reports[3]`).
    pub async fn record(&self, reports: &[UsageReport], field: impl Fn(usize) -> String) -> MeteringResult<usize> {
        // The check may not hold a report up: past this, it is taken and the worker decides.
        if let Ok(checked) = tokio::time::timeout(CHECK_KNOWN_WITHIN, self.check_known(reports, field)).await {
            checked?;
        }
        let payloads: Vec<Vec<u8>> = reports.iter().map(payload::encode).collect();
        self.queue.enqueue(&payloads).await?;
        self.metrics.accepted.inc_by(payloads.len() as u64);
        Ok(payloads.len())
    }

    /// When it cannot tell (unreachable, or a model not in the catalog read a moment ago), the
    /// report is taken and the worker decides.
    async fn check_known(&self, reports: &[UsageReport], field: impl Fn(usize) -> String) -> MeteringResult<()> {
        let ids: Vec<(String, String)> = reports.iter().map(|r| (r.account_id.clone(), r.key_id.clone())).collect();
        let mut v = Violations::new();
        // Models first: the first lookup of a fresh process reads the catalog, and only a read
        // made now can say a model does not exist.
        for (i, report) in reports.iter().enumerate() {
            if let Ok(ModelLookup::Unknown) = self.pricer.model(&report.model).await {
                v.add(format!("{}.model", field(i)), "is not in the model catalog");
            }
        }
        if let Ok(found) = self.pricer.keys(&ids).await {
            for (i, key) in found.iter().enumerate() {
                v.check(key.is_some(), format!("{}.key", field(i)), "is not a key of that account");
            }
        }
        Ok(v.into_result()?)
    }

    /// Puts dead letters back on the queue (all of them when `ids` is empty); returns how many.
    pub async fn replay(&self, ids: &[String]) -> MeteringResult<u32> {
        Ok(self.queue.replay(ids).await?)
    }
}
