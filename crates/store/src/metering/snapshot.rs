//! The ledger as of one moment, for `tollgate metering reconcile`: balances, key spend, and
//! the recent commits and credit grants a worker or a retried AddCredits may still try to
//! settle or credit — all in one transaction, so in one snapshot.

use sqlx::Row;
use tollgate_core::time::Micros;

use super::{LedgerSnapshot, balances, totals};
use crate::db::{Backend, Database};
use crate::error::StoreResult;

pub(super) async fn ledger_snapshot(
    db: &Database,
    day: &str,
    month: &str,
    commits_since: Micros,
    grants_since: Micros,
) -> StoreResult<LedgerSnapshot> {
    let mut tx = db.pool.begin().await?;
    // One snapshot for every statement below (SQLite's read transaction already is one).
    if db.backend() == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    }
    let balances = balances::all_balances(&mut *tx).await?;
    let keys = totals::all_key_totals(&mut *tx, day, month).await?;
    let commits = sqlx::query(
        "SELECT DISTINCT account_id, commit_id, day FROM usage_ledger WHERE apply_time >= $1 AND commit_id <> 0 \
         ORDER BY account_id, commit_id, day",
    )
    .bind(commits_since)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| Ok((row.try_get("account_id")?, row.try_get("commit_id")?, row.try_get("day")?)))
    .collect::<StoreResult<Vec<_>>>()?;
    let grants = sqlx::query(
        "SELECT account_id, request_id FROM credit_grants WHERE time >= $1 ORDER BY account_id, request_id",
    )
    .bind(grants_since)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| Ok((row.try_get("account_id")?, row.try_get("request_id")?)))
    .collect::<StoreResult<Vec<_>>>()?;
    tx.commit().await?;
    Ok(LedgerSnapshot { balances, keys, commits, grants })
}
