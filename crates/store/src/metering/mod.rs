//! The metering service's money store: the usage ledger, running totals, account balances,
//! credit grants, and `tollgate dev`'s usage queue. Postgres schema `metering`; SQLite file
//! `metering.db`.

mod balances;
mod inbox;
mod ledger;
mod queries;
mod snapshot;
mod totals;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tollgate_core::time::Micros;

use crate::db::Database;
use crate::error::StoreResult;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/metering/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/metering/sqlite");

/// How a charged call ended, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    UpstreamError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::UpstreamError => "upstream_error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "success" => Some(Outcome::Success),
            "upstream_error" => Some(Outcome::UpstreamError),
            _ => None,
        }
    }
}

/// One priced call, ready to be charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEntry {
    pub request_id: String,
    pub account_id: String,
    pub application_id: String,
    pub key_id: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub credits: i64,
    pub outcome: Outcome,
    pub start_time: Micros,
    pub end_time: Micros,
    /// The windows the call counts in, `YYYYMMDD` and `YYYYMM`.
    pub day: String,
    pub month: String,
}

/// A call as the ledger holds it after a batch: charged now, or charged before (a
/// duplicate, whose stored values win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub request_id: String,
    pub account_id: String,
    pub key_id: String,
    pub credits: i64,
    pub end_time: Micros,
    /// The windows it counts in, `YYYYMMDD` and `YYYYMM`.
    pub day: String,
    pub month: String,
    /// When the ledger took the call.
    pub apply_time: Micros,
    /// The commit that charged it: every call of one `apply_usage` shares one.
    pub commit_id: i64,
    /// False for a duplicate of a call charged before.
    pub new: bool,
}

/// An account's money.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    pub credits_added: i64,
    pub credits_spent: i64,
}

impl Balance {
    pub fn balance(&self) -> i64 {
        self.credits_added - self.credits_spent
    }
}

/// A credit change an admin made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditGrant {
    pub account_id: String,
    /// The idempotency id.
    pub request_id: String,
    pub credits: i64,
    pub reason: String,
    pub actor: String,
    pub time: Micros,
}

/// Which ledger rows to list.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub account_id: String,
    pub application_id: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    /// Calls that ended at or after this time.
    pub start_time: Option<Micros>,
    /// Calls that ended before this time.
    pub end_time: Option<Micros>,
}

/// Where a page of the ledger continues: after this (end time, request id), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCursor {
    pub end_time: Micros,
    pub request_id: String,
}

/// Usage added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub credits: i64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.credits += other.credits;
    }
}

/// What a summary adds up: an account, one of its applications or one of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageScope {
    Account(String),
    Application(String, String),
    Key(String, String),
}

/// The ledger summed per fixed-width bucket of end time and per model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    /// Start of the bucket (a multiple of the width since the epoch).
    pub start: Micros,
    pub model: String,
    pub totals: Totals,
}

/// A key's spend from the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyTotals {
    pub used: i64,
    pub day: i64,
    pub month: i64,
}

/// What the counters of one key should hold, rebuilt from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCounterRow {
    pub account_id: String,
    pub key_id: String,
    pub totals: KeyTotals,
}

/// The ledger as of one moment, for rebuilding the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerSnapshot {
    /// By account.
    pub balances: Vec<(String, Balance)>,
    /// By account and key.
    pub keys: Vec<KeyCounterRow>,
    /// (account, commit id, day of its calls) of the recent commits.
    pub commits: Vec<(String, i64, String)>,
    /// (account, grant request id) of the recent credit grants.
    pub grants: Vec<(String, String)>,
}

/// The money store.
#[async_trait]
pub trait MeteringStore: Send + Sync {
    /// Charges a batch in one transaction: a ledger row per call (a request id the account
    /// already has is skipped), totals per key, application and account, the key's day and
    /// month windows, and the account balances. Returns every call as the ledger now holds
    /// it, in the order given; entries must have distinct (account, request id).
    async fn apply_usage(&self, entries: &[UsageEntry], now: Micros) -> StoreResult<Vec<Recorded>>;
    /// Records a credit grant and changes the balance, once per (account, request id).
    /// Returns whether this call applied it, and the balance after.
    async fn add_credits(&self, grant: &CreditGrant) -> StoreResult<(bool, Balance)>;
    /// The account's balance (zeros for an account without money yet).
    async fn balance(&self, account_id: &str) -> StoreResult<Balance>;
    /// The account's credit grants, newest first, after `after` (time, request id); at most
    /// `limit`, plus whether more follow.
    async fn list_credit_grants(
        &self,
        account_id: &str,
        after: Option<(Micros, String)>,
        limit: u32,
    ) -> StoreResult<(Vec<CreditGrant>, bool)>;
    /// Ledger rows, newest first, after `after`; at most `limit`, plus whether more follow.
    async fn list_usage(
        &self,
        filter: &UsageFilter,
        after: Option<&UsageCursor>,
        limit: u32,
    ) -> StoreResult<(Vec<UsageEntry>, bool)>;
    /// The ledger of a scope in [start, end), summed per `width` of end time and per model.
    async fn usage_buckets(
        &self,
        scope: &UsageScope,
        start: Micros,
        end: Micros,
        width: Micros,
    ) -> StoreResult<Vec<BucketRow>>;
    /// A key's lifetime spend and its spend in a day and a month window.
    async fn key_totals(&self, account_id: &str, key_id: &str, day: &str, month: &str) -> StoreResult<KeyTotals>;
    /// Every account's balance.
    async fn all_balances(&self) -> StoreResult<Vec<(String, Balance)>>;
    /// What the counters should hold, read in one snapshot: every balance, every key's spend
    /// (with its spend in `day` and `month`), the commits applied since `commits_since` and
    /// the credit grants made since `grants_since`.
    async fn ledger_snapshot(
        &self,
        day: &str,
        month: &str,
        commits_since: Micros,
        grants_since: Micros,
    ) -> StoreResult<LedgerSnapshot>;
    /// Folds what batches left pending into the running totals' rows (up to 64 batches'
    /// worth; see `totals`); returns how many batches' worth it folded. Charging folds every
    /// few batches by itself; this is for a process with time on its hands, so reads find few
    /// pending rows.
    async fn fold_pending(&self) -> StoreResult<usize>;
}

/// The metering store (and `dev`'s usage queue) over a Postgres or SQLite database.
#[derive(Debug, Clone)]
pub struct SqlMeteringStore {
    db: Database,
    /// Wakes a waiting `receive` when `enqueue` adds entries (same process only).
    arrivals: Arc<Notify>,
    /// How long a received queue entry stays invisible before another worker may take it.
    claim_idle: Duration,
    /// Whether the last batch charged had a call charged before: the next one then skips
    /// duplicates row by row from the start instead of inserting plainly and retrying.
    duplicates_seen: Arc<AtomicBool>,
    /// Batches this store charged since it last folded the keys' pending totals.
    batches_since_fold: Arc<AtomicU32>,
}

impl SqlMeteringStore {
    /// Wraps a connected database (schema `metering` on Postgres).
    pub fn new(db: Database) -> Self {
        Self {
            db,
            arrivals: Arc::new(Notify::new()),
            claim_idle: Duration::from_secs(30),
            duplicates_seen: Arc::new(AtomicBool::new(false)),
            batches_since_fold: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Sets how long a received queue entry stays invisible to other workers.
    pub fn with_claim_idle(mut self, claim_idle: Duration) -> Self {
        self.claim_idle = claim_idle;
        self
    }

    /// Applies the metering migrations.
    pub async fn migrate(&self) -> StoreResult<()> {
        self.db.migrate(&POSTGRES_MIGRATIONS, &SQLITE_MIGRATIONS).await
    }

    /// The database behind the store.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

/// `($1, $2, …), (…)` for `rows` rows of `columns` values, numbered from `$first`.
pub(crate) fn placeholders(rows: usize, columns: usize, first: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", first + row * columns + column);
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_number_every_value() {
        assert_eq!(super::placeholders(2, 3, 1), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::placeholders(1, 2, 5), "($5, $6)");
    }
}
