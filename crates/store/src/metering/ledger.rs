//! Charging a batch: ledger rows, each key's totals and windows, and application and account
//! totals (an account's spend among them) in one transaction, with three multi-row statements
//! per 500 reports.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};
use tollgate_core::time::Micros;

use super::{Charge, SqlMeteringStore, Totals, UsageEntry, placeholders};
use crate::error::{StoreError, StoreResult};

/// Rows per statement: far below SQLite's 32,766 bound parameters at 15 columns a row.
const ROWS_PER_STATEMENT: usize = 500;

const LEDGER_COLUMNS: usize = 15;

/// Inserts ledger rows, skipping (account, request id) pairs already there; returns the
/// pairs inserted.
async fn insert_ledger(
    tx: &mut Transaction<'static, Any>,
    entries: &[&UsageEntry],
    now: Micros,
) -> StoreResult<HashSet<(String, String)>> {
    let mut inserted = HashSet::new();
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO usage_ledger (request_id, account_id, application_id, key_id, model, input_tokens, \
             output_tokens, cached_input_tokens, credits, outcome, start_time, end_time, day, month, apply_time) \
             VALUES {} ON CONFLICT (account_id, request_id) DO NOTHING RETURNING account_id, request_id",
            placeholders(chunk.len(), LEDGER_COLUMNS, 1)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
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
                .bind(now);
        }
        for row in query.fetch_all(&mut **tx).await? {
            inserted.insert((row.try_get("account_id")?, row.try_get("request_id")?));
        }
    }
    Ok(inserted)
}

/// Adds to running totals, one upsert per chunk of scopes.
async fn add_totals(tx: &mut Transaction<'static, Any>, totals: &BTreeMap<String, Totals>) -> StoreResult<()> {
    let totals: Vec<(&String, &Totals)> = totals.iter().collect();
    for chunk in totals.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO usage_totals (scope, requests, input_tokens, output_tokens, cached_input_tokens, credits) \
             VALUES {} ON CONFLICT (scope) DO UPDATE SET \
             requests = usage_totals.requests + excluded.requests, \
             input_tokens = usage_totals.input_tokens + excluded.input_tokens, \
             output_tokens = usage_totals.output_tokens + excluded.output_tokens, \
             cached_input_tokens = usage_totals.cached_input_tokens + excluded.cached_input_tokens, \
             credits = usage_totals.credits + excluded.credits",
            placeholders(chunk.len(), 6, 1)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (scope, t) in chunk {
            query = query
                .bind(scope.as_str())
                .bind(t.requests)
                .bind(t.input_tokens)
                .bind(t.output_tokens)
                .bind(t.cached_input_tokens)
                .bind(t.credits);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The stored rows of calls charged before (duplicates), by (account, request id).
async fn stored_charges(
    tx: &mut Transaction<'static, Any>,
    pairs: &[(&str, &str)],
) -> StoreResult<HashMap<(String, String), Charge>> {
    let mut found = HashMap::new();
    for chunk in pairs.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT account_id, request_id, key_id, credits, end_time, apply_time FROM usage_ledger \
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

fn stored_charge(row: &AnyRow) -> StoreResult<Charge> {
    Ok(Charge {
        account_id: row.try_get("account_id")?,
        request_id: row.try_get("request_id")?,
        key_id: row.try_get("key_id")?,
        credits: row.try_get("credits")?,
        end_time: row.try_get("end_time")?,
        apply_time: row.try_get("apply_time")?,
        new: false,
    })
}

/// What a batch adds to one key: totals, and spend in the latest day and month of its calls
/// (calls of earlier windows count in the totals only; their windows are past).
#[derive(Debug, Default)]
struct KeyDelta {
    totals: Totals,
    day: String,
    day_credits: i64,
    month: String,
    month_credits: i64,
}

impl KeyDelta {
    fn add(&mut self, e: &UsageEntry, call: &Totals) {
        self.totals.add(call);
        if e.day > self.day {
            (self.day, self.day_credits) = (e.day.clone(), 0);
        }
        if e.day == self.day {
            self.day_credits += e.credits;
        }
        if e.month > self.month {
            (self.month, self.month_credits) = (e.month.clone(), 0);
        }
        if e.month == self.month {
            self.month_credits += e.credits;
        }
    }
}

type KeyDeltas = BTreeMap<(String, String), KeyDelta>;

/// What a set of new ledger rows adds: per key, and per application and account scope
/// (`c/{account}` is what the account spent).
fn totals_of<'a>(entries: impl Iterator<Item = &'a UsageEntry>) -> (KeyDeltas, BTreeMap<String, Totals>) {
    let mut keys: KeyDeltas = BTreeMap::new();
    let mut scopes: BTreeMap<String, Totals> = BTreeMap::new();
    for e in entries {
        let call = Totals {
            requests: 1,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
            cached_input_tokens: e.cached_input_tokens,
            credits: e.credits,
        };
        keys.entry((e.account_id.clone(), e.key_id.clone())).or_default().add(e, &call);
        let a = &e.account_id;
        for scope in [format!("a/{a}/{}", e.application_id), format!("c/{a}")] {
            scopes.entry(scope).or_default().add(&call);
        }
    }
    (keys, scopes)
}

/// Adds to each key's row. A window newer than the stored one replaces it; an older one
/// (a late report) adds to the totals only.
async fn add_key_totals(tx: &mut Transaction<'static, Any>, keys: &KeyDeltas) -> StoreResult<()> {
    let keys: Vec<(&(String, String), &KeyDelta)> = keys.iter().collect();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO key_totals (account_id, key_id, requests, input_tokens, output_tokens, cached_input_tokens, \
             credits, day, day_credits, month, month_credits) VALUES {} ON CONFLICT (account_id, key_id) DO UPDATE SET \
             requests = key_totals.requests + excluded.requests, \
             input_tokens = key_totals.input_tokens + excluded.input_tokens, \
             output_tokens = key_totals.output_tokens + excluded.output_tokens, \
             cached_input_tokens = key_totals.cached_input_tokens + excluded.cached_input_tokens, \
             credits = key_totals.credits + excluded.credits, \
             day_credits = CASE WHEN excluded.day > key_totals.day THEN excluded.day_credits \
                 WHEN excluded.day = key_totals.day THEN key_totals.day_credits + excluded.day_credits \
                 ELSE key_totals.day_credits END, \
             day = CASE WHEN excluded.day > key_totals.day THEN excluded.day ELSE key_totals.day END, \
             month_credits = CASE WHEN excluded.month > key_totals.month THEN excluded.month_credits \
                 WHEN excluded.month = key_totals.month THEN key_totals.month_credits + excluded.month_credits \
                 ELSE key_totals.month_credits END, \
             month = CASE WHEN excluded.month > key_totals.month THEN excluded.month ELSE key_totals.month END",
            placeholders(chunk.len(), 11, 1)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for ((account_id, key_id), d) in chunk {
            query = query
                .bind(account_id.as_str())
                .bind(key_id.as_str())
                .bind(d.totals.requests)
                .bind(d.totals.input_tokens)
                .bind(d.totals.output_tokens)
                .bind(d.totals.cached_input_tokens)
                .bind(d.totals.credits)
                .bind(d.day.as_str())
                .bind(d.day_credits)
                .bind(d.month.as_str())
                .bind(d.month_credits);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

#[async_trait]
impl super::MeteringStore for SqlMeteringStore {
    async fn apply_usage(&self, entries: &[UsageEntry], now: Micros) -> StoreResult<Vec<Charge>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Rows in one order in every batch, so two workers inserting the same calls (a
        // redelivery) wait for each other instead of deadlocking.
        let mut ordered: Vec<&UsageEntry> = entries.iter().collect();
        ordered.sort_by(|a, b| (&a.account_id, &a.request_id).cmp(&(&b.account_id, &b.request_id)));
        let mut tx = self.db.pool.begin().await?;
        let inserted = insert_ledger(&mut tx, &ordered, now).await?;
        let is_new = |e: &UsageEntry| inserted.contains(&(e.account_id.clone(), e.request_id.clone()));
        let (keys, scopes) = totals_of(entries.iter().filter(|e| is_new(e)));
        add_key_totals(&mut tx, &keys).await?;
        add_totals(&mut tx, &scopes).await?;
        let duplicates: Vec<(&str, &str)> =
            entries.iter().filter(|e| !is_new(e)).map(|e| (e.account_id.as_str(), e.request_id.as_str())).collect();
        let stored = if duplicates.is_empty() { HashMap::new() } else { stored_charges(&mut tx, &duplicates).await? };
        tx.commit().await?;
        entries
            .iter()
            .map(|e| {
                if is_new(e) {
                    return Ok(Charge {
                        request_id: e.request_id.clone(),
                        account_id: e.account_id.clone(),
                        key_id: e.key_id.clone(),
                        credits: e.credits,
                        end_time: e.end_time,
                        apply_time: now,
                        new: true,
                    });
                }
                stored
                    .get(&(e.account_id.clone(), e.request_id.clone()))
                    .cloned()
                    .ok_or_else(|| StoreError::Internal(format!("ledger row of request {:?} vanished", e.request_id)))
            })
            .collect()
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
        super::queries::key_totals(&self.db, account_id, key_id, day, month).await
    }

    async fn all_balances(&self) -> StoreResult<Vec<(String, super::Balance)>> {
        super::balances::all_balances(&self.db).await
    }

    async fn all_key_totals(&self, day: &str, month: &str) -> StoreResult<Vec<super::KeyCounterRow>> {
        super::queries::all_key_totals(&self.db, day, month).await
    }
}
