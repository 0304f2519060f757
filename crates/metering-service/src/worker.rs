//! The stream workers: read a batch of usage reports, price them, charge them in one
//! database transaction, bring the counters authz reads up to date, then acknowledge.
//!
//! Exactly once: the ledger skips a request id the account already has and says which commit
//! charged it, and the counters remember each commit's settlement (or, after a redelivery,
//! each call's) for longer than a redelivery can take, so a batch applied twice (a worker died
//! after the commit, before the acknowledgement) changes nothing the second time.
//! Acknowledging only after both makes every accepted report applied at least once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use foldhash::{HashMap, HashSet};
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_core::money::{TokenUsage, usage_cost};
use tollgate_core::names;
use tollgate_core::windows::WindowsCache;
use tollgate_ports::StateError;
use tollgate_ports::counters::{RECONCILE_PAUSE_MS, SETTLE_AGAIN_WITHIN_MS, Settlement};
use tollgate_ports::usage_queue::QueuedReport;
use tollgate_proto::metering::v1 as pb;
use tollgate_proto::time::timestamp_micros;
use tollgate_store::StoreError;
use tollgate_store::metering::{Charge, Outcome, UsageEntry};

use crate::MeteringCore;
use crate::pricing::{ModelLookup, PricedKey};

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

/// What the workers of a process have done, logged every minute.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
}

/// Logs, once a minute when anything happened, what the workers applied, skipped as
/// duplicates and set aside.
pub async fn log_stats(core: Arc<MeteringCore>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    let mut last = [0u64; 4];
    loop {
        tokio::select! { _ = shutdown.cancelled() => return, _ = tick.tick() => {} }
        let stats = &core.stats;
        let now = [
            stats.applied.load(Ordering::Relaxed),
            stats.duplicates.load(Ordering::Relaxed),
            stats.dead_lettered.load(Ordering::Relaxed),
            stats.batches.load(Ordering::Relaxed),
        ];
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

/// Reports ready to charge, and the queue entries they came from.
#[derive(Default)]
struct Priced {
    entry_ids: Vec<String>,
    usage: Vec<UsageEntry>,
}

/// Runs one worker until `shutdown`.
///
/// While the counters of one batch are brought up to date and it is acknowledged (Redis), the
/// next batch is priced and committed (Postgres): at most one batch per worker is between its
/// commit and its acknowledgement.
pub async fn run(core: Arc<MeteringCore>, consumer: String, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut finishing: Option<JoinHandle<Result<(), Retry>>> = None;
    while !shutdown.is_cancelled() {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = core.queue.receive(&consumer, core.workers.batch_size, core.workers.poll_wait) => received,
        };
        let batch = match received {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "usage queue unavailable; retrying");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if batch.is_empty() {
            // Nothing to apply: a good time to fold what the last batches left pending.
            if let Err(error) = core.store.fold_when_idle().await {
                tracing::warn!(%error, "cannot fold pending totals; the next batches will");
            }
            continue;
        }
        match commit(&core, &batch, &shutdown).await {
            Ok(committed) => {
                backoff = Duration::from_millis(100);
                if let Some(previous) = finishing.take() {
                    log_finish(previous.await);
                }
                finishing = Some(tokio::spawn(finish(core.clone(), committed, shutdown.clone())));
            }
            Err(Retry(reason)) => {
                tracing::warn!(%reason, entries = batch.len(), "usage batch not applied; it will be retried");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    if let Some(previous) = finishing {
        log_finish(previous.await);
    }
}

/// How long a worker waits between tries while a reconciliation pauses settling.
const RECONCILE_POLL: Duration = Duration::from_millis(100);

/// Settles, waiting while `tollgate metering reconcile` rewrites an account's counters (the
/// groups settled before the pause are remembered and skipped by the next try). Past the
/// pause's own limit, or on shutdown, the entries are left to come back.
async fn settle_when_not_paused(
    core: &MeteringCore,
    settlements: &[Settlement<'_>],
    shutdown: &CancellationToken,
) -> Result<(), Retry> {
    let give_up = tokio::time::Instant::now() + Duration::from_millis(RECONCILE_PAUSE_MS.unsigned_abs());
    loop {
        match core.counters.settle_batch(settlements).await {
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

fn log_finish(finished: Result<Result<(), Retry>, tokio::task::JoinError>) {
    match finished {
        Ok(Ok(())) => {}
        Ok(Err(Retry(reason))) => {
            tracing::warn!(%reason, "committed usage not yet settled or acknowledged; it will come back")
        }
        Err(error) => tracing::error!(%error, "a batch's settlement task failed"),
    }
}

/// Sets an entry aside when it has failed often enough; otherwise leaves it for a later
/// delivery.
async fn failed(core: &MeteringCore, entry: &QueuedReport, reason: &str) -> Result<(), Retry> {
    if entry.deliveries < core.workers.max_deliveries {
        tracing::info!(entry = %entry.id, deliveries = entry.deliveries, %reason, "usage report not applicable yet");
        return Ok(());
    }
    dead_letter(core, entry, reason).await
}

async fn dead_letter(core: &MeteringCore, entry: &QueuedReport, reason: &str) -> Result<(), Retry> {
    tracing::warn!(entry = %entry.id, %reason, "usage report moved to the dead letters");
    core.queue.dead_letter(entry, reason, core.clock.now_micros()).await.map_err(|e| Retry(e.to_string()))?;
    core.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Prices what can be priced; entries that cannot are set aside or left for later.
async fn price(core: &MeteringCore, batch: &[QueuedReport], acks: &mut Vec<String>) -> Result<Priced, Retry> {
    let mut priced = Priced::default();
    let mut calendar = WindowsCache::new(&core.calendar);
    let reports: Vec<Option<pb::UsageReport>> =
        batch.iter().map(|entry| pb::UsageReport::decode(entry.payload.as_slice()).ok()).collect();
    // Every key of the batch once, those not cached in one call of the keys service.
    let mut key_names: Vec<&str> = reports.iter().flatten().map(|r| r.key.as_str()).collect();
    key_names.sort_unstable();
    key_names.dedup();
    let (key_names, ids): (Vec<&str>, Vec<(String, String)>) = key_names
        .into_iter()
        .filter_map(|name| names::parse_key(name).map(|(account, key)| (name, (account.to_owned(), key.to_owned()))))
        .unzip();
    let found = core.pricer.keys(&ids).await.map_err(|e| Retry(e.to_string()))?;
    let keys: HashMap<String, Option<Arc<PricedKey>>> = key_names.into_iter().map(str::to_owned).zip(found).collect();
    let catalog = core.pricer.catalog().await.map_err(|e| Retry(e.to_string()))?;
    // The same call twice in one batch: the first one charges it.
    let mut seen = HashSet::default();
    let repeated: Vec<bool> = reports
        .iter()
        .map(|r| {
            r.as_ref().is_some_and(|r| !seen.insert((names::parse_key(&r.key).map(|k| k.0), r.request_id.as_str())))
        })
        .collect();
    for ((entry, report), repeated) in batch.iter().zip(reports).zip(repeated) {
        let Some(report) = report else {
            dead_letter(core, entry, "the entry is not a usage report").await?;
            continue;
        };
        let Some((account_id, key_id)) = names::parse_key(&report.key) else {
            dead_letter(core, entry, "the report's key is not a key name").await?;
            continue;
        };
        if repeated {
            acks.push(entry.id.clone());
            core.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Cached keys exist; the others were just read from the keys service, so a key it
        // does not have is final.
        let Some(Some(key)) = keys.get(report.key.as_str()) else {
            dead_letter(core, entry, &format!("unknown key {}", report.key)).await?;
            continue;
        };
        let prices = match catalog.get(&report.model) {
            Some(prices) => *prices,
            // Maybe a model added since the catalog was read: read it again (at most once a
            // second).
            None => match if entry.deliveries > 1 {
                core.pricer.model_now(&report.model).await
            } else {
                core.pricer.model(&report.model).await
            } {
                Ok(ModelLookup::Priced(prices)) => prices,
                // The keys service says so now: no later delivery will know it either.
                Ok(ModelLookup::Unknown) => {
                    dead_letter(core, entry, &format!("unknown model {:?}", report.model)).await?;
                    continue;
                }
                Ok(ModelLookup::NotYetKnown) => {
                    failed(core, entry, &format!("unknown model {:?}", report.model)).await?;
                    continue;
                }
                Err(error) => return Err(Retry(error.to_string())),
            },
        };
        let end = report.end_time.as_ref().and_then(timestamp_micros).unwrap_or_else(|| core.clock.now_micros());
        let start = report.start_time.as_ref().and_then(timestamp_micros).unwrap_or(end);
        let tokens = TokenUsage {
            input: report.input_tokens,
            output: report.output_tokens,
            cached_input: report.cached_input_tokens,
        };
        let outcome = match pb::UsageOutcome::try_from(report.outcome) {
            Ok(pb::UsageOutcome::UpstreamError) => Outcome::UpstreamError,
            _ => Outcome::Success,
        };
        let windows = calendar.windows(end);
        priced.entry_ids.push(entry.id.clone());
        priced.usage.push(UsageEntry {
            account_id: account_id.to_owned(),
            key_id: key_id.to_owned(),
            application_id: key.application_id.clone(),
            model: report.model,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cached_input_tokens: tokens.cached_input,
            // An upstream error is charged for the tokens it used, which may be none.
            credits: usage_cost(tokens, prices, key.multiplier_micros),
            outcome,
            start_time: start,
            end_time: end,
            day: windows.day.clone(),
            month: windows.month.clone(),
            request_id: report.request_id,
        });
    }
    Ok(priced)
}

/// Charges the batch; waits out database outages (the entries stay in hand, so an outage
/// does not count against them) until shutdown.
async fn charge(
    core: &MeteringCore,
    entries: &[UsageEntry],
    shutdown: &CancellationToken,
) -> Result<Vec<Charge>, Retry> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match core.store.apply_usage(entries, core.clock.now_micros()).await {
            Ok(charges) => return Ok(charges),
            Err(StoreError::Unavailable(cause)) => {
                tracing::warn!(error = %cause, "database unavailable; holding the usage batch");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Retry("shutting down".into())),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(Retry(error.to_string())),
        }
    }
}

/// A committed batch: what the counters must take, and the entries to acknowledge after.
struct Committed {
    charges: Vec<Charge>,
    acks: Vec<String>,
}

/// Prices and commits a batch. Entries that cannot be priced are set aside or left for later;
/// in-batch duplicates are acknowledged with it.
async fn commit(core: &MeteringCore, batch: &[QueuedReport], shutdown: &CancellationToken) -> Result<Committed, Retry> {
    let started = std::time::Instant::now();
    let mut acks = Vec::new();
    let priced = price(core, batch, &mut acks).await?;
    let charges = if priced.usage.is_empty() { Vec::new() } else { charge(core, &priced.usage, shutdown).await? };
    acks.extend(priced.entry_ids);
    tracing::debug!(entries = batch.len(), charged = charges.len(), elapsed = ?started.elapsed(), "usage batch committed");
    Ok(Committed { charges, acks })
}

/// Brings the counters authz reads up to date with a committed batch, then acknowledges it.
/// If either fails the entries stay pending and come back: the ledger skips them then, and the
/// counters' markers skip what was settled.
async fn finish(core: Arc<MeteringCore>, committed: Committed, shutdown: CancellationToken) -> Result<(), Retry> {
    let started = std::time::Instant::now();
    let Committed { mut charges, acks } = committed;
    // A call committed long ago was settled then; its settled marker may be gone, so settling
    // it again could count it twice. (If it never was, every worker was down for that long:
    // `tollgate metering reconcile` puts the counters right.)
    let now = core.clock.now_micros();
    charges.retain(|c| c.new || now - c.apply_time < SETTLE_AGAIN_WITHIN_MS * 1000);
    let mut calendar = WindowsCache::new(&core.calendar);
    let windows: Vec<_> = charges.iter().map(|c| calendar.windows(c.end_time).clone()).collect();
    let settlements: Vec<Settlement<'_>> = charges
        .iter()
        .zip(&windows)
        .map(|(c, w)| Settlement {
            account_id: &c.account_id,
            key_id: &c.key_id,
            request_id: &c.request_id,
            cost: c.credits,
            windows: w,
            commit_id: c.commit_id,
            // The calls this worker's commit charged are all here; redelivered ones are not.
            whole_commit: c.new,
        })
        .collect();
    settle_when_not_paused(&core, &settlements, &shutdown).await?;
    let new = charges.iter().filter(|c| c.new).count() as u64;
    core.stats.applied.fetch_add(new, Ordering::Relaxed);
    core.stats.duplicates.fetch_add(charges.len() as u64 - new, Ordering::Relaxed);
    core.stats.batches.fetch_add(1, Ordering::Relaxed);
    core.queue.ack(&acks).await.map_err(|e| Retry(format!("ack: {e}")))?;
    tracing::debug!(settled = charges.len(), elapsed = ?started.elapsed(), "usage batch settled and acknowledged");
    Ok(())
}
