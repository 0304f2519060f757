//! Reading the ledger and the running totals: usage rows, time series, a key's spend.

use sqlx::Row;
use sqlx::any::AnyRow;
use tollgate_core::time::Micros;

use super::{BucketRow, Outcome, Totals, UsageCursor, UsageEntry, UsageFilter, UsageScope};
use crate::db::Database;
use crate::error::{StoreError, StoreResult};

fn usage_entry(row: &AnyRow) -> StoreResult<UsageEntry> {
    let outcome: String = row.try_get("outcome")?;
    Ok(UsageEntry {
        request_id: row.try_get("request_id")?,
        account_id: row.try_get("account_id")?,
        application_id: row.try_get("application_id")?,
        key_id: row.try_get("key_id")?,
        model: row.try_get("model")?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        cached_input_tokens: row.try_get("cached_input_tokens")?,
        credits: row.try_get("credits")?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| StoreError::Internal(format!("unknown outcome {outcome:?}")))?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        day: row.try_get("day")?,
        month: row.try_get("month")?,
    })
}

pub(super) async fn list_usage(
    db: &Database,
    filter: &UsageFilter,
    after: Option<&UsageCursor>,
    limit: u32,
) -> StoreResult<(Vec<UsageEntry>, bool)> {
    // No cursor is a cursor past every row: (i64::MAX, "").
    let (after_time, after_request) = after.map_or((Micros::MAX, ""), |c| (c.end_time, c.request_id.as_str()));
    let rows = sqlx::query(
        "SELECT request_id, account_id, application_id, key_id, model, input_tokens, output_tokens, \
         cached_input_tokens, credits, outcome, start_time, end_time, day, month FROM usage_ledger \
         WHERE account_id = $1 AND ($2 = '' OR application_id = $2) AND ($3 = '' OR key_id = $3) \
         AND ($4 = '' OR model = $4) AND end_time >= $5 AND end_time < $6 \
         AND (end_time < $7 OR (end_time = $7 AND request_id < $8)) \
         ORDER BY end_time DESC, request_id DESC LIMIT $9",
    )
    .bind(&filter.account_id)
    .bind(filter.application_id.as_deref().unwrap_or(""))
    .bind(filter.key_id.as_deref().unwrap_or(""))
    .bind(filter.model.as_deref().unwrap_or(""))
    .bind(filter.start_time.unwrap_or(Micros::MIN))
    .bind(filter.end_time.unwrap_or(Micros::MAX))
    .bind(after_time)
    .bind(after_request)
    .bind(i64::from(limit) + 1)
    .fetch_all(&db.pool)
    .await?;
    let mut entries = rows.iter().map(usage_entry).collect::<StoreResult<Vec<_>>>()?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    Ok((entries, more))
}

pub(super) async fn usage_buckets(
    db: &Database,
    scope: &UsageScope,
    start: Micros,
    end: Micros,
    width: Micros,
) -> StoreResult<Vec<BucketRow>> {
    let (account_id, application_id, key_id) = match scope {
        UsageScope::Account(a) => (a.as_str(), "", ""),
        UsageScope::Application(a, app) => (a.as_str(), app.as_str(), ""),
        UsageScope::Key(a, k) => (a.as_str(), "", k.as_str()),
    };
    // SUM of BIGINT is NUMERIC on Postgres: cast back.
    let rows = sqlx::query(
        "SELECT CAST(end_time - (end_time % $1) AS BIGINT) AS bucket, model, CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
         CAST(SUM(cached_input_tokens) AS BIGINT) AS cached_input_tokens, CAST(SUM(credits) AS BIGINT) AS credits \
         FROM usage_ledger WHERE account_id = $2 AND ($3 = '' OR application_id = $3) AND ($4 = '' OR key_id = $4) \
         AND end_time >= $5 AND end_time < $6 GROUP BY 1, model ORDER BY 1, model",
    )
    .bind(width)
    .bind(account_id)
    .bind(application_id)
    .bind(key_id)
    .bind(start)
    .bind(end)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(BucketRow {
                start: row.try_get("bucket")?,
                model: row.try_get("model")?,
                totals: Totals {
                    requests: row.try_get("requests")?,
                    input_tokens: row.try_get("input_tokens")?,
                    output_tokens: row.try_get("output_tokens")?,
                    cached_input_tokens: row.try_get("cached_input_tokens")?,
                    credits: row.try_get("credits")?,
                },
            })
        })
        .collect()
}
