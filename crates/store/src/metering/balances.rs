//! Account balances and the credit grants that fund them.

use sqlx::{Any, Executor, Row};

use super::{Balance, CreditGrant};
use crate::db::Database;
use crate::error::StoreResult;

pub(super) async fn balance<'e>(executor: impl Executor<'e, Database = Any>, account_id: &str) -> StoreResult<Balance> {
    let row = sqlx::query("SELECT credits_added, credits_spent FROM account_balances WHERE account_id = $1")
        .bind(account_id)
        .fetch_optional(executor)
        .await?;
    match row {
        Some(row) => {
            Ok(Balance { credits_added: row.try_get("credits_added")?, credits_spent: row.try_get("credits_spent")? })
        }
        None => Ok(Balance::default()),
    }
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
            "INSERT INTO account_balances (account_id, credits_added, credits_spent) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE SET credits_added = account_balances.credits_added + excluded.credits_added",
        )
        .bind(&grant.account_id)
        .bind(grant.credits)
        .bind(0_i64)
        .execute(&mut *tx)
        .await?;
    }
    let after = balance(&mut *tx, &grant.account_id).await?;
    tx.commit().await?;
    Ok((inserted, after))
}

pub(super) async fn all_balances(db: &Database) -> StoreResult<Vec<(String, Balance)>> {
    let rows = sqlx::query("SELECT account_id, credits_added, credits_spent FROM account_balances ORDER BY account_id")
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("account_id")?,
                Balance { credits_added: row.try_get("credits_added")?, credits_spent: row.try_get("credits_spent")? },
            ))
        })
        .collect()
}
