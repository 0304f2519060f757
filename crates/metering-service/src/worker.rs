//! The queue workers: receive a batch of usage reports, price them, charge them in one
//! database transaction, bring the counters authz reads up to date, then acknowledge.
//!
//! Exactly once: the ledger skips a request id the account already has and says which commit
//! charged it, and the counters remember each commit's settlement (or, after a redelivery,
//! each call's) for longer than a redelivery can take, so a batch applied twice (a worker died
//! after the commit, before the acknowledgement) changes nothing the second time.
//! Acknowledging only after both makes every accepted report applied at least once.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use foldhash::{HashMap, HashSet};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_core::clock::Clock;
use tollgate_core::money::usage_cost;
use tollgate_core::windows::{Calendar, WindowsCache};
use tollgate_ports::StateError;
use tollgate_ports::counters::{MoneyCounters, RECONCILE_PAUSE_MS, SETTLE_AGAIN_WITHIN_MS, Settlement};
use tollgate_ports::usage_queue::{QueuedReport, UsageQueue};
use tollgate_store::StoreError;
use tollgate_store::metering::{MeteringStore, Recorded, UsageEntry};

use crate::metrics::MeteringMetrics;
use crate::payload;
use crate::pricing::{ModelLookup, PricedKey, Pricer};
use crate::usage::{Charge, UsageReport};

/// How a worker batches and gives up.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Most reports per batch (and per database transaction).
    pub batch_size: usize,
    /// Deliveries after which a report that cannot be applied goes to the dead letters.
    pub max_deliveries: u32,
    /// How long one receive waits for new reports.
    pub poll_wait: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { batch_size: 1000, max_deliveries: 5, poll_wait: Duration::from_millis(500) }
    }
}

/// Logs, once a minute when anything happened, what the workers applied, skipped as
/// duplicates and set aside.
pub async fn log_stats(stats: MeteringMetrics, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    let mut last = [0u64; 4];
    loop {
        tokio::select! { _ = shutdown.cancelled() => return, _ = tick.tick() => {} }
        let now = [stats.applied.get(), stats.duplicates.get(), stats.dead_lettered.get(), stats.batches.get()];
        if now != last {
            tracing::info!(
                applied = now[0] - last[0],
                duplicates = now[1] - last[1],
                dead_lettered = now[2] - last[2],
                batches = now[3] - last[3],
                "usage reports in the last minute"
            );
            last = now;
        }
    }
}

/// The batch could not be applied now; it stays unacknowledged and comes back.
#[derive(Debug)]
struct Retry(String);

/// Waits between tries while a dependency is down: from 100 ms, doubling up to `max`, with
/// jitter so that workers do not retry in step.
fn backoff(max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sleeps the next back-off delay; `false` when shut down meanwhile.
async fn wait(delays: &mut ExponentialBackoff, max: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delays.next().unwrap_or(max)) => true,
    }
}

/// Longest wait between tries of a batch (or of the queue).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between tries of a transaction while the database is down.
const MAX_DATABASE_BACKOFF: Duration = Duration::from_secs(2);
/// How long a worker waits between tries while a reconciliation pauses settling.
const RECONCILE_POLL: Duration = Duration::from_millis(100);

/// Applies usage reports from the queue.
pub struct Worker {
    pub queue: Arc<dyn UsageQueue>,
    pub store: Arc<dyn MeteringStore>,
    pub counters: Arc<dyn MoneyCounters>,
    pub pricer: Arc<Pricer>,
    pub calendar: Calendar,
    pub clock: Arc<dyn Clock>,
    pub settings: WorkerSettings,
    pub metrics: MeteringMetrics,
}

/// A committed batch: what the counters must take, and the entries to acknowledge after.
struct Committed {
    charges: Vec<Charge>,
    recorded: Vec<Recorded>,
    acks: Vec<String>,
}

impl Worker {
    /// Runs one worker named `consumer` until `shutdown`.
    ///
    /// While the counters of one batch are brought up to date and it is acknowledged (Redis),
    /// the next batch is priced and committed (Postgres): at most one batch per worker is
    /// between its commit and its acknowledgement.
    pub async fn run(self: Arc<Self>, consumer: String, shutdown: CancellationToken) {
        let mut delays = backoff(MAX_BACKOFF);
        let mut finishing: Option<JoinHandle<Result<(), Retry>>> = None;
        while !shutdown.is_cancelled() {
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.queue.receive(&consumer, self.settings.batch_size, self.settings.poll_wait) => received,
            };
            let batch = match received {
                Ok(batch) if batch.is_empty() => continue,
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "usage queue unavailable; retrying");
                    if !wait(&mut delays, MAX_BACKOFF, &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            match self.commit(&batch, &shutdown).await {
                Ok(committed) => {
                    delays = backoff(MAX_BACKOFF);
                    if let Some(previous) = finishing.take() {
                        log_finish(previous.await);
                    }
                    finishing = Some(tokio::spawn(self.clone().finish(committed, shutdown.clone())));
                }
                Err(Retry(reason)) => {
                    self.metrics.retry("commit");
                    tracing::warn!(%reason, entries = batch.len(), "usage batch not applied; it will be retried");
                    if !wait(&mut delays, MAX_BACKOFF, &shutdown).await {
                        break;
                    }
                }
            }
        }
        if let Some(previous) = finishing {
            log_finish(previous.await);
        }
    }

    /// Prices and commits a batch. Entries that cannot be priced are set aside or left for
    /// later; in-batch duplicates are acknowledged with it.
    #[tracing::instrument(name = "usage batch", level = "debug", skip_all, fields(entries = batch.len()))]
    async fn commit(&self, batch: &[QueuedReport], shutdown: &CancellationToken) -> Result<Committed, Retry> {
        let started = std::time::Instant::now();
        let mut acks = Vec::new();
        let charges = self.price(batch, &mut acks).await?;
        let recorded = if charges.is_empty() { Vec::new() } else { self.charge(&charges, shutdown).await? };
        acks.extend(charges.iter().map(|c| c.entry_id.clone()));
        tracing::debug!(entries = batch.len(), charged = charges.len(), elapsed = ?started.elapsed(), "usage batch committed");
        Ok(Committed { charges, recorded, acks })
    }

    /// Prices what can be priced; entries that cannot are set aside or left for later.
    async fn price(&self, batch: &[QueuedReport], acks: &mut Vec<String>) -> Result<Vec<Charge>, Retry> {
        let now = self.clock.now_micros();
        let reports: Vec<Option<UsageReport>> =
            batch.iter().map(|entry| payload::decode(&entry.payload, now)).collect();
        // Every key of the batch once, those not cached in one call of the keys service.
        let mut ids: Vec<(String, String)> =
            reports.iter().flatten().map(|r| (r.account_id.clone(), r.key_id.clone())).collect();
        ids.sort_unstable();
        ids.dedup();
        let found = self.pricer.keys(&ids).await.map_err(|e| Retry(e.to_string()))?;
        let keys: HashMap<(String, String), Option<Arc<PricedKey>>> = ids.into_iter().zip(found).collect();
        let catalog = self.pricer.catalog().await.map_err(|e| Retry(e.to_string()))?;
        let mut calendar = WindowsCache::new(&self.calendar);
        // The same call twice in one batch: the first one charges it.
        let mut seen = HashSet::default();
        let mut charges = Vec::with_capacity(batch.len());
        for (entry, report) in batch.iter().zip(reports) {
            let Some(report) = report else {
                self.dead_letter(entry, "the entry is not a usage report").await?;
                continue;
            };
            if !seen.insert((report.account_id.clone(), report.request_id.clone())) {
                acks.push(entry.id.clone());
                self.metrics.duplicates.inc();
                continue;
            }
            // Cached keys exist; the others were just read from the keys service, so a key it
            // does not have is final.
            let Some(Some(key)) = keys.get(&(report.account_id.clone(), report.key_id.clone())) else {
                self.dead_letter(entry, &format!("unknown key {}", report.key_name())).await?;
                continue;
            };
            let prices = match catalog.catalog.price(&report.model) {
                Some(price) => price.token_prices(),
                // Maybe a model added since the catalog was read: read it again (at most once
                // a second; a report that comes back reads it now, so its verdict is final).
                None => match if entry.deliveries > 1 {
                    self.pricer.model_now(&report.model).await
                } else {
                    self.pricer.model(&report.model).await
                } {
                    Ok(ModelLookup::Priced(price)) => price.token_prices(),
                    Ok(ModelLookup::Unknown) => {
                        self.dead_letter(entry, &format!("unknown model {:?}", report.model)).await?;
                        continue;
                    }
                    Ok(ModelLookup::NotYetKnown) => {
                        self.failed(entry, &format!("unknown model {:?}", report.model)).await?;
                        continue;
                    }
                    Err(error) => return Err(Retry(error.to_string())),
                },
            };
            let windows = calendar.windows(report.end_time);
            let usage = UsageEntry {
                // An upstream error is charged for the tokens it used, which may be none.
                credits: usage_cost(report.tokens, prices, key.multiplier_micros),
                application_id: key.application_id.clone(),
                day: windows.day.clone(),
                month: windows.month.clone(),
                input_tokens: report.tokens.input,
                output_tokens: report.tokens.output,
                cached_input_tokens: report.tokens.cached_input,
                outcome: report.outcome,
                start_time: report.start_time,
                end_time: report.end_time,
                account_id: report.account_id,
                key_id: report.key_id,
                model: report.model,
                request_id: report.request_id,
            };
            charges.push(Charge { entry_id: entry.id.clone(), enqueued_at: entry.enqueued_at, usage });
        }
        Ok(charges)
    }

    /// Charges the batch; waits out database outages (the entries stay in hand, so an outage
    /// does not count against them) until shutdown.
    async fn charge(&self, charges: &[Charge], shutdown: &CancellationToken) -> Result<Vec<Recorded>, Retry> {
        let entries: Vec<UsageEntry> = charges.iter().map(|c| c.usage.clone()).collect();
        let mut delays = backoff(MAX_DATABASE_BACKOFF);
        loop {
            match self.store.apply_usage(&entries, self.clock.now_micros()).await {
                Ok(recorded) => return Ok(recorded),
                Err(StoreError::Unavailable(cause)) => {
                    tracing::warn!(error = %cause, "database unavailable; holding the usage batch");
                    if !wait(&mut delays, MAX_DATABASE_BACKOFF, shutdown).await {
                        return Err(Retry("shutting down".into()));
                    }
                }
                Err(error) => return Err(Retry(error.to_string())),
            }
        }
    }

    /// Brings the counters authz reads up to date with a committed batch, then acknowledges
    /// it. If either fails the entries stay pending and come back: the ledger skips them then,
    /// and the counters' markers skip what was settled.
    #[tracing::instrument(name = "usage batch settle", level = "debug", skip_all, fields(charges = committed.charges.len()))]
    async fn finish(self: Arc<Self>, committed: Committed, shutdown: CancellationToken) -> Result<(), Retry> {
        let started = std::time::Instant::now();
        let Committed { charges, recorded, acks } = committed;
        // A call committed long ago was settled then; its settled marker may be gone, so
        // settling it again could count it twice. (If it never was, every worker was down for
        // that long: `tollgate metering reconcile` puts the counters right.)
        let now = self.clock.now_micros();
        let settlements: Vec<Settlement<'_>> = charges
            .iter()
            .zip(&recorded)
            .filter(|(_, r)| r.new || now - r.apply_time < SETTLE_AGAIN_WITHIN_MS * 1000)
            .map(|(charge, r)| {
                // A duplicate's stored values win over the report's.
                let (day, month) = if r.new { (&charge.usage.day, &charge.usage.month) } else { (&r.day, &r.month) };
                Settlement {
                    account_id: &r.account_id,
                    key_id: &r.key_id,
                    request_id: &r.request_id,
                    cost: r.credits,
                    day,
                    month,
                    commit_id: r.commit_id,
                    // The calls this worker's commit charged are all here; redelivered ones are not.
                    whole_commit: r.new,
                }
            })
            .collect();
        let done = async {
            self.settle_when_not_paused(&settlements, &shutdown).await?;
            self.queue.ack(&acks).await.map_err(|e| Retry(format!("ack: {e}")))
        };
        if let Err(retry) = done.await {
            self.metrics.retry("settle");
            return Err(retry);
        }
        let new = recorded.iter().filter(|r| r.new).count() as u64;
        self.metrics.applied.inc_by(new);
        self.metrics.duplicates.inc_by(settlements.len() as u64 - new);
        self.metrics.batches.inc();
        // The lag of the reports this batch applied, from acceptance to acknowledgement.
        let acknowledged = self.clock.now_micros();
        let applied = charges.iter().zip(&recorded).filter(|(_, r)| r.new).map(|(charge, _)| charge);
        for enqueued_at in applied.filter_map(|charge| charge.enqueued_at) {
            self.metrics.lag((acknowledged - enqueued_at).max(0) as f64 / 1e6);
        }
        tracing::debug!(settled = settlements.len(), elapsed = ?started.elapsed(), "usage batch settled and acknowledged");
        Ok(())
    }

    /// Settles, waiting while `tollgate metering reconcile` rewrites an account's counters
    /// (the groups settled before the pause are remembered and skipped by the next try). Past
    /// the pause's own limit, or on shutdown, the entries are left to come back.
    async fn settle_when_not_paused(
        &self,
        settlements: &[Settlement<'_>],
        shutdown: &CancellationToken,
    ) -> Result<(), Retry> {
        let give_up = tokio::time::Instant::now() + Duration::from_millis(RECONCILE_PAUSE_MS.unsigned_abs());
        loop {
            match self.counters.settle_batch(settlements).await {
                Ok(_) => return Ok(()),
                Err(StateError::Reconciling) if tokio::time::Instant::now() < give_up => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(Retry("shutting down while reconcile runs".into())),
                        _ = tokio::time::sleep(RECONCILE_POLL) => {}
                    }
                }
                Err(error) => return Err(Retry(format!("counters: {error}"))),
            }
        }
    }

    /// Sets an entry aside when it has failed often enough; otherwise leaves it for a later
    /// delivery.
    async fn failed(&self, entry: &QueuedReport, reason: &str) -> Result<(), Retry> {
        if entry.deliveries < self.settings.max_deliveries {
            tracing::info!(entry = %entry.id, deliveries = entry.deliveries, %reason, "usage report not applicable yet");
            return Ok(());
        }
        self.dead_letter(entry, reason).await
    }

    async fn dead_letter(&self, entry: &QueuedReport, reason: &str) -> Result<(), Retry> {
        tracing::warn!(entry = %entry.id, %reason, "usage report moved to the dead letters");
        self.queue.dead_letter(entry, reason, self.clock.now_micros()).await.map_err(|e| Retry(e.to_string()))?;
        self.metrics.dead_lettered.inc();
        Ok(())
    }
}

fn log_finish(finished: Result<Result<(), Retry>, tokio::task::JoinError>) {
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(Retry(reason))) => {
            tracing::warn!(%reason, "committed usage not yet settled or acknowledged; it will come back")
        }
        Err(error) => tracing::error!(%error, "a batch's settlement task failed"),
    }
}
