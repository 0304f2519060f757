//! Running totals: each key's (with its spend in the latest day and month it was used in),
//! and each application's and account's (`a/{account}/{application}`, `c/{account}`: what
//! the account spent).
//!
//! A batch may touch one key row per call, and every batch touches its accounts' rows:
//! upserting them cost Postgres as much as the ledger rows, and made concurrent batches wait
//! for each other's commits on the same account rows. So a batch's transaction records what it
//! adds as one row of `totals_pending` (a line per key and per scope), and every
//! [`FOLD_EVERY`] batches (and once a second, from metering's housekeeping) the store folds
//! pending rows into `key_totals` and `usage_totals`: one upsert per key and scope for many
//! batches. A total is its row plus the pending lines that name it, read in one statement (one
//! snapshot), so reads are exact whenever a fold runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use super::{KeyCounterRow, KeyTotals, Totals, UsageEntry, placeholders};
use crate::db::{Backend, Database};
use crate::error::{StoreError, StoreResult};

/// A worker folds pending rows after this many of its own batches.
pub(super) const FOLD_EVERY: u32 = 16;

/// Most pending rows one fold takes.
const FOLD_ROWS: usize = 64;

/// What some calls added to one key: totals, and spend in the latest day and month among them
/// (calls of earlier windows count in the totals only; their windows are past).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct KeyDelta {
    pub totals: Totals,
    /// `YYYYMMDD`; empty before any call.
    pub day: String,
    pub day_credits: i64,
    /// `YYYYMM`; empty before any call.
    pub month: String,
    pub month_credits: i64,
}

/// Moves a (window, spend) pair to a newer window, or adds to it if it is the same one; an
/// older window is past and changes nothing. `YYYYMMDD` and `YYYYMM` compare as strings.
fn add_in_window(window: &mut String, spend: &mut i64, other: &str, credits: i64) {
    if other > window.as_str() {
        other.clone_into(window);
        *spend = credits;
    } else if other == window.as_str() {
        *spend += credits;
    }
}

impl KeyDelta {
    pub fn add_call(&mut self, e: &UsageEntry, call: &Totals) {
        self.totals.add(call);
        add_in_window(&mut self.day, &mut self.day_credits, &e.day, e.credits);
        add_in_window(&mut self.month, &mut self.month_credits, &e.month, e.credits);
    }

    pub fn merge(&mut self, other: &KeyDelta) {
        self.totals.add(&other.totals);
        add_in_window(&mut self.day, &mut self.day_credits, &other.day, other.day_credits);
        add_in_window(&mut self.month, &mut self.month_credits, &other.month, other.month_credits);
    }

    /// The key's spend, counting its windows only when they are the ones asked for.
    fn spend(&self, day: &str, month: &str) -> KeyTotals {
        KeyTotals {
            used: self.totals.credits,
            day: if self.day == day { self.day_credits } else { 0 },
            month: if self.month == month { self.month_credits } else { 0 },
        }
    }
}

/// Keys by (account, key id).
pub(super) type KeyDeltas<'a> = BTreeMap<(&'a str, &'a str), KeyDelta>;

/// Application and account scopes by name.
pub(super) type ScopeDeltas<'a> = BTreeMap<&'a str, Totals>;

/// What pending rows (or a batch) add.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Deltas<'a> {
    pub keys: KeyDeltas<'a>,
    pub scopes: ScopeDeltas<'a>,
}

/// One pending row's text, a line per key and per scope, tab-separated. A key's: account,
/// key, requests, input, output and cached input tokens, credits, day, its credits, month, its
/// credits. A scope's: `@` and its name, requests, the three token counts, credits. (Ids,
/// scopes and windows hold no tabs, newlines or `@`.) Readable with `psql`, cheap to write.
fn encode(deltas: &Deltas<'_>) -> String {
    let mut text = String::new();
    for (scope, t) in &deltas.scopes {
        let _ = writeln!(
            text,
            "@{scope}\t{}\t{}\t{}\t{}\t{}",
            t.requests, t.input_tokens, t.output_tokens, t.cached_input_tokens, t.credits
        );
    }
    for ((account_id, key_id), d) in &deltas.keys {
        let t = &d.totals;
        let _ = writeln!(
            text,
            "{account_id}\t{key_id}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.requests,
            t.input_tokens,
            t.output_tokens,
            t.cached_input_tokens,
            t.credits,
            d.day,
            d.day_credits,
            d.month,
            d.month_credits
        );
    }
    text
}

/// Requests, input, output and cached input tokens, and credits.
fn decode_totals(fields: &[&str]) -> Option<Totals> {
    let number = |text: &str| text.parse::<i64>().ok();
    let [requests, input, output, cached, credits] = fields else { return None };
    Some(Totals {
        requests: number(requests)?,
        input_tokens: number(input)?,
        output_tokens: number(output)?,
        cached_input_tokens: number(cached)?,
        credits: number(credits)?,
    })
}

fn decode_line(line: &str) -> Option<((&str, &str), KeyDelta)> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [account_id, key_id, totals @ .., day, day_credits, month, month_credits] = fields.as_slice() else {
        return None;
    };
    let delta = KeyDelta {
        totals: decode_totals(totals)?,
        day: (*day).to_owned(),
        day_credits: day_credits.parse().ok()?,
        month: (*month).to_owned(),
        month_credits: month_credits.parse().ok()?,
    };
    Some(((account_id, key_id), delta))
}

fn decode_scope_line(line: &str) -> Option<(&str, Totals)> {
    let fields: Vec<&str> = line.strip_prefix('@')?.split('\t').collect();
    let [scope, totals @ ..] = fields.as_slice() else { return None };
    Some((scope, decode_totals(totals)?))
}

fn malformed(line: &str) -> StoreError {
    StoreError::Internal(format!("malformed pending totals: {line:?}"))
}

/// Adds one line of a pending row to `deltas`.
fn merge_line<'a>(line: &'a str, deltas: &mut Deltas<'a>) -> StoreResult<()> {
    if line.starts_with('@') {
        let (scope, totals) = decode_scope_line(line).ok_or_else(|| malformed(line))?;
        deltas.scopes.entry(scope).or_default().add(&totals);
    } else {
        let (key, delta) = decode_line(line).ok_or_else(|| malformed(line))?;
        deltas.keys.entry(key).or_default().merge(&delta);
    }
    Ok(())
}

/// Adds each line of a pending row to `deltas`.
fn merge_pending<'a>(text: &'a str, deltas: &mut Deltas<'a>) -> StoreResult<()> {
    text.lines().try_for_each(|line| merge_line(line, deltas))
}

/// Records what a batch adds: one row, in the batch's transaction.
pub(super) async fn record(tx: &mut Transaction<'static, Any>, deltas: &Deltas<'_>) -> StoreResult<()> {
    if deltas.keys.is_empty() && deltas.scopes.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO totals_pending (deltas) VALUES ($1)").bind(encode(deltas)).execute(&mut **tx).await?;
    Ok(())
}

/// Adds to each key's row, in key order (so concurrent folds wait instead of deadlocking). A
/// window newer than the stored one replaces it; an older one adds to the totals only.
async fn upsert_keys(tx: &mut Transaction<'static, Any>, keys: &KeyDeltas<'_>) -> StoreResult<()> {
    let keys: Vec<(&(&str, &str), &KeyDelta)> = keys.iter().collect();
    for chunk in keys.chunks(1000) {
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
                .bind(*account_id)
                .bind(*key_id)
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

/// Adds to each scope's row, in name order.
async fn upsert_scopes(tx: &mut Transaction<'static, Any>, scopes: &ScopeDeltas<'_>) -> StoreResult<()> {
    let scopes: Vec<(&&str, &Totals)> = scopes.iter().collect();
    for chunk in scopes.chunks(1000) {
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
                .bind(**scope)
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

/// Folds up to [`FOLD_ROWS`] pending rows into `key_totals` and `usage_totals` in one
/// transaction; returns how many it folded. On Postgres concurrent folds take different rows
/// (SKIP LOCKED).
pub(super) async fn fold(db: &Database) -> StoreResult<usize> {
    let mut tx = db.pool.begin().await?;
    let lock = match db.backend() {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, deltas FROM totals_pending ORDER BY id LIMIT {FOLD_ROWS}{lock}"
    )))
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut texts = Vec::with_capacity(rows.len());
    for row in &rows {
        ids.push(row.try_get::<i64, _>("id")?);
        texts.push(row.try_get::<String, _>("deltas")?);
    }
    let mut deltas = Deltas::default();
    for text in &texts {
        merge_pending(text, &mut deltas)?;
    }
    upsert_keys(&mut tx, &deltas.keys).await?;
    upsert_scopes(&mut tx, &deltas.scopes).await?;
    let sql = format!("DELETE FROM totals_pending WHERE id IN {}", placeholders(1, ids.len(), 1));
    let mut delete = sqlx::query(AssertSqlSafe(sql));
    for id in &ids {
        delete = delete.bind(*id);
    }
    delete.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// Key rows (`deltas` null) and every pending row (`deltas` set) in one statement, so in one
/// snapshot: a fold running meanwhile can neither hide nor double what it moves.
fn rows_and_pending(key_filter: &str, pending_filter: &str) -> String {
    format!(
        "SELECT account_id, key_id, credits, day, day_credits, month, month_credits, NULL AS deltas \
         FROM key_totals {key_filter} \
         UNION ALL SELECT '', '', 0, '', 0, '', 0, deltas FROM totals_pending {pending_filter}"
    )
}

/// A LIKE pattern matching the pending rows that may hold a line of the key or scope whose
/// line starts with `prefix` (ids and scopes hold no `%`, `_` or backslash; a row it matches
/// by chance is filtered out line by line after).
pub(super) fn pending_pattern(prefix: &str) -> String {
    format!("%{prefix}%")
}

/// Merges what [`rows_and_pending`] read into spend per key.
fn spend_by_key(
    rows: &[sqlx::any::AnyRow],
    only: Option<(&str, &str)>,
    day: &str,
    month: &str,
) -> StoreResult<Vec<KeyCounterRow>> {
    let mut stored = Vec::new();
    let mut texts = Vec::new();
    for row in rows {
        match row.try_get::<Option<String>, _>("deltas")? {
            Some(text) => texts.push(text),
            None => stored.push((
                row.try_get::<String, _>("account_id")?,
                row.try_get::<String, _>("key_id")?,
                KeyDelta {
                    totals: Totals { credits: row.try_get("credits")?, ..Totals::default() },
                    day: row.try_get("day")?,
                    day_credits: row.try_get("day_credits")?,
                    month: row.try_get("month")?,
                    month_credits: row.try_get("month_credits")?,
                },
            )),
        }
    }
    let mut deltas = Deltas {
        keys: stored
            .iter()
            .map(|(account_id, key_id, d)| ((account_id.as_str(), key_id.as_str()), d.clone()))
            .collect(),
        scopes: BTreeMap::new(),
    };
    let prefix = only.map(|(account_id, key_id)| format!("{account_id}\t{key_id}\t"));
    for text in &texts {
        // One key: only its lines, found without decoding the others.
        for line in text.lines().filter(|line| prefix.as_ref().map_or(!line.starts_with('@'), |p| line.starts_with(p)))
        {
            merge_line(line, &mut deltas)?;
        }
    }
    Ok(deltas
        .keys
        .into_iter()
        .map(|((account_id, key_id), d)| KeyCounterRow {
            account_id: account_id.to_owned(),
            key_id: key_id.to_owned(),
            totals: d.spend(day, month),
        })
        .collect())
}

/// One key's spend: its row and the pending rows that name it.
pub(super) async fn key_totals(
    db: &Database,
    account_id: &str,
    key_id: &str,
    day: &str,
    month: &str,
) -> StoreResult<KeyTotals> {
    // Only the pending rows that name the key leave the database.
    let sql = rows_and_pending("WHERE account_id = $1 AND key_id = $2", "WHERE deltas LIKE $3");
    let pattern = pending_pattern(&format!("{account_id}\t{key_id}\t"));
    let rows = sqlx::query(AssertSqlSafe(sql)).bind(account_id).bind(key_id).bind(pattern).fetch_all(&db.pool).await?;
    let spend = spend_by_key(&rows, Some((account_id, key_id)), day, month)?;
    Ok(spend.first().map(|row| row.totals).unwrap_or_default())
}

/// Every key's spend, sorted by account and key (for rebuilding the counters).
pub(super) async fn all_key_totals<'e>(
    executor: impl sqlx::Executor<'e, Database = Any>,
    day: &str,
    month: &str,
) -> StoreResult<Vec<KeyCounterRow>> {
    let rows = sqlx::query(AssertSqlSafe(rows_and_pending("", ""))).fetch_all(executor).await?;
    spend_by_key(&rows, None, day, month)
}

/// Adds to `scopes` the lines of a pending row for the scopes `wanted` accepts.
pub(super) fn add_pending_scopes<'a>(
    text: &'a str,
    wanted: impl Fn(&str) -> bool,
    scopes: &mut ScopeDeltas<'a>,
) -> StoreResult<()> {
    for line in text.lines().filter(|line| line.starts_with('@')) {
        let (scope, totals) = decode_scope_line(line).ok_or_else(|| malformed(line))?;
        if wanted(scope) {
            scopes.entry(scope).or_default().add(&totals);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(credits: i64, day: &str, day_credits: i64, month: &str, month_credits: i64) -> KeyDelta {
        KeyDelta {
            totals: Totals { requests: 2, input_tokens: 3, output_tokens: 4, cached_input_tokens: 5, credits },
            day: day.into(),
            day_credits,
            month: month.into(),
            month_credits,
        }
    }

    #[test]
    fn pending_rows_read_back_as_written() {
        let mut deltas = Deltas::default();
        deltas.keys.insert(("acme", "k1"), delta(10, "20270131", 4, "202701", 10));
        deltas.keys.insert(("acme", "k2"), delta(7, "20270201", 7, "202702", 7));
        let totals = Totals { requests: 2, input_tokens: 30, output_tokens: 4, cached_input_tokens: 0, credits: 17 };
        deltas.scopes.insert("c/acme", totals);
        deltas.scopes.insert("a/acme/app", totals);
        let text = encode(&deltas);
        let mut read = Deltas::default();
        merge_pending(&text, &mut read).unwrap();
        assert_eq!(read, deltas);
        let mut accounts = ScopeDeltas::new();
        add_pending_scopes(&text, |scope| scope.starts_with("c/"), &mut accounts).unwrap();
        assert_eq!(accounts.into_iter().collect::<Vec<_>>(), [("c/acme", totals)]);
        assert!(merge_pending("acme\tk1\t1\t2", &mut read).is_err(), "a short line is an error, not a zero");
        assert!(merge_pending("@c/acme\t1", &mut read).is_err());
    }

    #[test]
    fn merging_keeps_the_latest_windows_whatever_the_order() {
        let parts = [
            delta(5, "20270131", 5, "202701", 5),
            delta(3, "20270201", 3, "202702", 3),
            delta(2, "20270201", 2, "202702", 2),
            delta(1, "20270130", 1, "202701", 1),
        ];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let mut sum = KeyDelta::default();
            order.iter().for_each(|&i| sum.merge(&parts[i]));
            assert_eq!(sum.spend("20270201", "202702"), KeyTotals { used: 11, day: 5, month: 5 });
            assert_eq!(sum.spend("20270131", "202701"), KeyTotals { used: 11, day: 0, month: 0 }, "past windows");
        }
    }
}
