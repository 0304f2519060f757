//! Charging a batch in one transaction: its ledger rows (each with the commit's random id,
//! which tells a redelivered call which commit charged it), and one row of what it adds to
//! the running totals of its keys, applications and accounts (see `totals`): two statements
//! per 1,000 reports, and no row that another batch writes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use foldhash::{HashMap, HashSet};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use tollgate_core::ids::new_commit_id;
use tollgate_core::time::Micros;

use super::totals::{self, Deltas, KeyDeltas};
use super::{Recorded, SqlMeteringStore, Totals, UsageEntry, placeholders};
use crate::error::{StoreError, StoreResult};

/// Rows per statement: a whole default batch, and below SQLite's 32,766 bound parameters at
/// 16 columns a row.
const ROWS_PER_STATEMENT: usize = 1000;

const LEDGER_COLUMNS: usize = 16;

/// The INSERT of `rows` ledger rows. The full-size ones (nearly every batch's under load) are
/// built once: numbering 16,000 placeholders showed up in profiles of the worker.
fn ledger_insert_sql(rows: usize, skip_duplicates: bool) -> Cow<'static, str> {
    fn build(rows: usize, skip_duplicates: bool) -> String {
        format!(
            "INSERT INTO usage_ledger (request_id, account_id, application_id, key_id, model, input_tokens, \
             output_tokens, cached_input_tokens, credits, outcome, start_time, end_time, day, month, apply_time, \
             commit_id) VALUES {}{}",
            placeholders(rows, LEDGER_COLUMNS, 1),
            if skip_duplicates { " ON CONFLICT (account_id, request_id) DO NOTHING" } else { "" }
        )
    }
    static FULL: OnceLock<[String; 2]> = OnceLock::new();
    if rows == ROWS_PER_STATEMENT {
        let full = FULL.get_or_init(|| [build(rows, false), build(rows, true)]);
        return Cow::Borrowed(&full[usize::from(skip_duplicates)]);
    }
    Cow::Owned(build(rows, skip_duplicates))
}

/// Inserts ledger rows; returns how many it inserted. With `skip_duplicates`, (account,
/// request id) pairs already there are skipped; without, one fails the statement with
/// [`StoreError::AlreadyExists`] (and costs Postgres far less per row when there is none).
async fn insert_ledger(
    tx: &mut Transaction<'static, Any>,
    entries: &[&UsageEntry],
    now: Micros,
    commit_id: i64,
    skip_duplicates: bool,
) -> StoreResult<u64> {
    let mut inserted = 0;
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let mut query = sqlx::query(AssertSqlSafe(ledger_insert_sql(chunk.len(), skip_duplicates)));
        for e in chunk {
            query = query
                .bind(&e.request_id)
                .bind(&e.account_id)
                .bind(&e.application_id)
                .bind(&e.key_id)
                .bind(&e.model)
                .bind(e.input_tokens)
                .bind(e.output_tokens)
                .bind(e.cached_input_tokens)
                .bind(e.credits)
                .bind(e.outcome.as_str())
                .bind(e.start_time)
                .bind(e.end_time)
                .bind(&e.day)
                .bind(&e.month)
                .bind(now)
                .bind(commit_id);
        }
        inserted += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(inserted)
}

/// The stored rows of the given calls, by (account, request id).
async fn stored_charges(
    tx: &mut Transaction<'static, Any>,
    pairs: &[(&str, &str)],
) -> StoreResult<HashMap<(String, String), Recorded>> {
    let mut found = HashMap::default();
    for chunk in pairs.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT account_id, request_id, key_id, credits, end_time, day, month, apply_time, commit_id FROM usage_ledger \
             WHERE (account_id, request_id) IN (VALUES {})",
            placeholders(chunk.len(), 2, 1)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (account_id, request_id) in chunk {
            query = query.bind(*account_id).bind(*request_id);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let charge = stored_charge(&row)?;
            found.insert((charge.account_id.clone(), charge.request_id.clone()), charge);
        }
    }
    Ok(found)
}

fn stored_charge(row: &AnyRow) -> StoreResult<Recorded> {
    Ok(Recorded {
        account_id: row.try_get("account_id")?,
        request_id: row.try_get("request_id")?,
        key_id: row.try_get("key_id")?,
        credits: row.try_get("credits")?,
        end_time: row.try_get("end_time")?,
        day: row.try_get("day")?,
        month: row.try_get("month")?,
        apply_time: row.try_get("apply_time")?,
        commit_id: row.try_get("commit_id")?,
        new: false,
    })
}

/// An application's totals, `a/{account}/{application}`, or (no application) an account's,
/// `c/{account}`: what it spent.
type Scope<'a> = (&'a str, Option<&'a str>);

fn scope_name((account, application): &Scope<'_>) -> String {
    match application {
        Some(application) => format!("a/{account}/{application}"),
        None => format!("c/{account}"),
    }
}

/// What a set of new ledger rows adds: per key, and per application and account.
fn totals_of<'a>(entries: impl Iterator<Item = &'a UsageEntry>) -> (KeyDeltas<'a>, BTreeMap<String, Totals>) {
    let mut keys: KeyDeltas<'a> = BTreeMap::new();
    let mut scopes: HashMap<Scope<'a>, Totals> = HashMap::default();
    for e in entries {
        let call = Totals {
            requests: 1,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            cached_input_tokens: e.cached_input_tokens,
            credits: e.credits,
        };
        keys.entry((&e.account_id, &e.key_id)).or_default().add_call(e, &call);
        scopes.entry((&e.account_id, Some(&e.application_id))).or_default().add(&call);
        scopes.entry((&e.account_id, None)).or_default().add(&call);
    }
    (keys, scopes.iter().map(|(scope, totals)| (scope_name(scope), *totals)).collect())
}

impl SqlMeteringStore {
    /// Every few batches, folds pending totals into their rows. The batch is committed
    /// already: a failed fold is left for the next one.
    async fn fold_now_and_then(&self) {
        if self.batches_since_fold.fetch_add(1, Ordering::Relaxed) + 1 < totals::FOLD_EVERY {
            return;
        }
        self.batches_since_fold.store(0, Ordering::Relaxed);
        if let Err(error) = totals::fold(&self.db).await {
            tracing::warn!(%error, "cannot fold pending totals; the next batches will");
        }
    }
}

#[async_trait]
impl super::MeteringStore for SqlMeteringStore {
    async fn apply_usage(&self, entries: &[UsageEntry], now: Micros) -> StoreResult<Vec<Recorded>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let commit_id = new_commit_id();
        // Rows in one order in every batch, so two workers inserting the same calls (a
        // redelivery) wait for each other instead of deadlocking.
        let mut ordered: Vec<&UsageEntry> = entries.iter().collect();
        ordered.sort_unstable_by(|a, b| (&a.account_id, &a.request_id).cmp(&(&b.account_id, &b.request_id)));
        // Almost every batch is all new: insert plainly, and only after a duplicate (or while
        // they keep coming) skip them row by row.
        let careful = self.duplicates_seen.load(Ordering::Relaxed);
        let mut tx = self.db.pool.begin().await?;
        let inserted = match insert_ledger(&mut tx, &ordered, now, commit_id, careful).await {
            Err(StoreError::AlreadyExists) if !careful => {
                tx.rollback().await?;
                self.duplicates_seen.store(true, Ordering::Relaxed);
                tx = self.db.pool.begin().await?;
                insert_ledger(&mut tx, &ordered, now, commit_id, true).await?
            }
            inserted => inserted?,
        };
        if careful && inserted == entries.len() as u64 {
            self.duplicates_seen.store(false, Ordering::Relaxed);
        }
        // Some were charged before (a redelivery, or the same call reported twice): read back
        // every row; those of this commit are the new ones.
        let stored = if inserted == entries.len() as u64 {
            None
        } else {
            let pairs: Vec<(&str, &str)> =
                ordered.iter().map(|e| (e.account_id.as_str(), e.request_id.as_str())).collect();
            Some(stored_charges(&mut tx, &pairs).await?)
        };
        let mut charges = Vec::with_capacity(entries.len());
        let mut charged_now = HashSet::default();
        for e in entries {
            let earlier = match &stored {
                None => None,
                Some(stored) => {
                    let charge = stored.get(&(e.account_id.clone(), e.request_id.clone())).ok_or_else(|| {
                        StoreError::Internal(format!("ledger row of request {:?} vanished", e.request_id))
                    })?;
                    // A call twice in one batch is new once.
                    let first = charged_now.insert((e.account_id.as_str(), e.request_id.as_str()));
                    (charge.commit_id != commit_id || !first).then_some(charge)
                }
            };
            charges.push(match earlier {
                Some(charge) => Recorded { new: false, ..charge.clone() },
                None => Recorded {
                    request_id: e.request_id.clone(),
                    account_id: e.account_id.clone(),
                    key_id: e.key_id.clone(),
                    credits: e.credits,
                    end_time: e.end_time,
                    day: e.day.clone(),
                    month: e.month.clone(),
                    apply_time: now,
                    commit_id,
                    new: true,
                },
            });
        }
        let (keys, scopes) = totals_of(entries.iter().zip(&charges).filter(|(_, c)| c.new).map(|(e, _)| e));
        totals::record(&mut tx, &Deltas { keys, scopes: scopes.iter().map(|(s, t)| (s.as_str(), *t)).collect() })
            .await?;
        tx.commit().await?;
        self.fold_now_and_then().await;
        Ok(charges)
    }

    async fn add_credits(&self, grant: &super::CreditGrant) -> StoreResult<(bool, super::Balance)> {
        super::balances::add_credits(&self.db, grant).await
    }

    async fn balance(&self, account_id: &str) -> StoreResult<super::Balance> {
        super::balances::balance(&self.db.pool, account_id).await
    }

    async fn list_credit_grants(
        &self,
        account_id: &str,
        after: Option<(Micros, String)>,
        limit: u32,
    ) -> StoreResult<(Vec<super::CreditGrant>, bool)> {
        super::balances::list_credit_grants(&self.db, account_id, after, limit).await
    }

    async fn list_usage(
        &self,
        filter: &super::UsageFilter,
        after: Option<&super::UsageCursor>,
        limit: u32,
    ) -> StoreResult<(Vec<UsageEntry>, bool)> {
        super::queries::list_usage(&self.db, filter, after, limit).await
    }

    async fn usage_buckets(
        &self,
        scope: &super::UsageScope,
        start: Micros,
        end: Micros,
        width: Micros,
    ) -> StoreResult<Vec<super::BucketRow>> {
        super::queries::usage_buckets(&self.db, scope, start, end, width).await
    }

    async fn key_totals(
        &self,
        account_id: &str,
        key_id: &str,
        day: &str,
        month: &str,
    ) -> StoreResult<super::KeyTotals> {
        totals::key_totals(&self.db, account_id, key_id, day, month).await
    }

    async fn all_balances(&self) -> StoreResult<Vec<(String, super::Balance)>> {
        super::balances::all_balances(&self.db.pool).await
    }

    async fn ledger_snapshot(
        &self,
        day: &str,
        month: &str,
        commits_since: Micros,
        grants_since: Micros,
    ) -> StoreResult<super::LedgerSnapshot> {
        super::snapshot::ledger_snapshot(&self.db, day, month, commits_since, grants_since).await
    }

    async fn fold_pending(&self) -> StoreResult<usize> {
        totals::fold(&self.db).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_size_insert_is_built_once_and_numbers_every_value() {
        for skip_duplicates in [false, true] {
            let full = ledger_insert_sql(ROWS_PER_STATEMENT, skip_duplicates);
            assert!(matches!(full, Cow::Borrowed(_)));
            let last = format!("${})", ROWS_PER_STATEMENT * LEDGER_COLUMNS);
            assert!(full.contains(&last), "{last} missing");
            assert_eq!(full.ends_with("DO NOTHING"), skip_duplicates);
            let short = ledger_insert_sql(2, skip_duplicates);
            assert!(matches!(short, Cow::Owned(_)));
            assert_eq!(short.ends_with("DO NOTHING"), skip_duplicates);
        }
    }
}
