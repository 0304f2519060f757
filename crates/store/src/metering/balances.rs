//! Account balances and the credit grants that fund them.

use std::collections::BTreeMap;

use sqlx::{Any, Executor, Row};

use super::totals::{ScopeDeltas, add_pending_scopes, pending_pattern};
use super::{Balance, CreditGrant};
use tollgate_core::time::Micros;

use crate::db::Database;
use crate::error::StoreResult;

/// Credits added and spent, and the pending totals that name the account (what recent
/// batches spent), in one statement: one snapshot.
pub(super) async fn balance<'e>(executor: impl Executor<'e, Database = Any>, account_id: &str) -> StoreResult<Balance> {
    let scope = format!("c/{account_id}");
    let rows = sqlx::query(
        "SELECT 'added' AS part, credits_added AS credits, NULL AS deltas FROM account_balances WHERE account_id = $1 \
         UNION ALL SELECT 'spent', credits, NULL FROM usage_totals WHERE scope = $2 \
         UNION ALL SELECT 'pending', 0, deltas FROM totals_pending WHERE deltas LIKE $3",
    )
    .bind(account_id)
    .bind(&scope)
    .bind(pending_pattern(&format!("@{scope}\t")))
    .fetch_all(executor)
    .await?;
    let mut balance = Balance::default();
    let mut texts = Vec::new();
    for row in &rows {
        match row.try_get::<String, _>("part")?.as_str() {
            "added" => balance.credits_added = row.try_get("credits")?,
            "spent" => balance.credits_spent += row.try_get::<i64, _>("credits")?,
            _ => texts.push(row.try_get::<String, _>("deltas")?),
        }
    }
    let mut pending = ScopeDeltas::new();
    for text in &texts {
        add_pending_scopes(text, |s| s == scope, &mut pending)?;
    }
    balance.credits_spent += pending.values().map(|t| t.credits).sum::<i64>();
    Ok(balance)
}

pub(super) async fn add_credits(db: &Database, grant: &CreditGrant) -> StoreResult<(bool, Balance)> {
    let mut tx = db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO credit_grants (account_id, request_id, credits, reason, actor, time) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id, request_id) DO NOTHING RETURNING request_id",
    )
    .bind(&grant.account_id)
    .bind(&grant.request_id)
    .bind(grant.credits)
    .bind(&grant.reason)
    .bind(&grant.actor)
    .bind(grant.time)
    .fetch_optional(&mut *tx)
    .await?
    .is_some();
    if inserted {
        sqlx::query(
            "INSERT INTO account_balances (account_id, credits_added) VALUES ($1, $2) \
             ON CONFLICT (account_id) DO UPDATE SET credits_added = account_balances.credits_added + excluded.credits_added",
        )
        .bind(&grant.account_id)
        .bind(grant.credits)
        .execute(&mut *tx)
        .await?;
    }
    let after = balance(&mut *tx, &grant.account_id).await?;
    tx.commit().await?;
    Ok((inserted, after))
}

pub(super) async fn all_balances<'e>(
    executor: impl Executor<'e, Database = Any>,
) -> StoreResult<Vec<(String, Balance)>> {
    let rows = sqlx::query(
        "SELECT 'added' AS part, account_id AS name, credits_added AS credits, NULL AS deltas FROM account_balances \
         UNION ALL SELECT 'spent', scope, credits, NULL FROM usage_totals WHERE scope LIKE 'c/%' \
         UNION ALL SELECT 'pending', '', 0, deltas FROM totals_pending",
    )
    .fetch_all(executor)
    .await?;
    let mut balances: BTreeMap<String, Balance> = BTreeMap::new();
    let mut texts = Vec::new();
    for row in &rows {
        let name: String = row.try_get("name")?;
        match row.try_get::<String, _>("part")?.as_str() {
            "added" => balances.entry(name).or_default().credits_added = row.try_get("credits")?,
            "spent" => {
                let account_id = name.trim_start_matches("c/").to_owned();
                balances.entry(account_id).or_default().credits_spent += row.try_get::<i64, _>("credits")?;
            }
            _ => texts.push(row.try_get::<String, _>("deltas")?),
        }
    }
    let mut pending = ScopeDeltas::new();
    for text in &texts {
        add_pending_scopes(text, |scope| scope.starts_with("c/"), &mut pending)?;
    }
    for (scope, totals) in pending {
        balances.entry(scope.trim_start_matches("c/").to_owned()).or_default().credits_spent += totals.credits;
    }
    Ok(balances.into_iter().collect())
}

pub(super) async fn list_credit_grants(
    db: &Database,
    account_id: &str,
    after: Option<(Micros, String)>,
    limit: u32,
) -> StoreResult<(Vec<CreditGrant>, bool)> {
    // No cursor is a cursor past every row.
    let (after_time, after_request) = after.unwrap_or((Micros::MAX, String::new()));
    let rows = sqlx::query(
        "SELECT account_id, request_id, credits, reason, actor, time FROM credit_grants WHERE account_id = $1 \
         AND (time < $2 OR (time = $2 AND request_id < $3)) ORDER BY time DESC, request_id DESC LIMIT $4",
    )
    .bind(account_id)
    .bind(after_time)
    .bind(&after_request)
    .bind(i64::from(limit) + 1)
    .fetch_all(&db.pool)
    .await?;
    let mut grants = rows
        .iter()
        .map(|row| {
            Ok(CreditGrant {
                account_id: row.try_get("account_id")?,
                request_id: row.try_get("request_id")?,
                credits: row.try_get("credits")?,
                reason: row.try_get("reason")?,
                actor: row.try_get("actor")?,
                time: row.try_get("time")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let more = grants.len() > limit as usize;
    grants.truncate(limit as usize);
    Ok((grants, more))
}
