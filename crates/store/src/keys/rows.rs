//! Decoding rows into domain types, and the writes every change shares (audit, outbox).

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};
use tollgate_core::Capability;
use tollgate_core::money::PriceMultiplier;
use tollgate_core::resources::{Account, Application, Group, Key, KeySettings, Model};

use super::AuditEntry;
use crate::error::{StoreError, StoreResult};

/// Columns the decoder below reads by name, for `concat!` into static SQL.
macro_rules! account_columns {
    () => {
        "id, display_name, credit_limit, unlimited_credit, revision, create_time, update_time"
    };
}
pub(super) use account_columns;

pub(super) fn account(row: &AnyRow) -> StoreResult<Account> {
    Ok(Account {
        id: row.try_get("id")?,
        revision: row.try_get("revision")?,
        display_name: row.try_get("display_name")?,
        credit_limit: row.try_get("credit_limit")?,
        unlimited_credit: boolean(row, "unlimited_credit")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Columns the decoder below reads by name, for `concat!` into static SQL.
macro_rules! application_columns {
    () => {
        "account_id, id, display_name, description, revision, create_time, update_time"
    };
}
pub(super) use application_columns;

pub(super) fn application(row: &AnyRow) -> StoreResult<Application> {
    Ok(Application {
        id: row.try_get("id")?,
        revision: row.try_get("revision")?,
        account_id: row.try_get("account_id")?,
        display_name: row.try_get("display_name")?,
        description: row.try_get("description")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Columns the decoder below reads by name, for `concat!` into static SQL.
macro_rules! group_columns {
    () => {
        "id, display_name, price_multiplier, allowed_models, default_rpm_limit, \
     default_tpm_limit, revision, create_time, update_time"
    };
}
pub(super) use group_columns;

pub(super) fn group(row: &AnyRow) -> StoreResult<Group> {
    let multiplier: String = row.try_get("price_multiplier")?;
    Ok(Group {
        id: row.try_get("id")?,
        revision: row.try_get("revision")?,
        display_name: row.try_get("display_name")?,
        price_multiplier: PriceMultiplier::parse(&multiplier)
            .map_err(|e| StoreError::Internal(format!("stored multiplier {multiplier:?}: {e}")))?,
        allowed_models: strings(row, "allowed_models")?,
        default_rpm_limit: row.try_get("default_rpm_limit")?,
        default_tpm_limit: row.try_get("default_tpm_limit")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Columns the decoder below reads by name, for `concat!` into static SQL.
macro_rules! model_columns {
    () => {
        "id, display_name, capability, input_price, output_price, cached_input_price, revision, create_time, update_time"
    };
}
pub(super) use model_columns;

pub(super) fn model(row: &AnyRow) -> StoreResult<Model> {
    let capability: String = row.try_get("capability")?;
    Ok(Model {
        id: row.try_get("id")?,
        revision: row.try_get("revision")?,
        display_name: row.try_get("display_name")?,
        capability: Capability::from_name(&capability)
            .ok_or_else(|| StoreError::Internal(format!("stored capability {capability:?}")))?,
        input_price: row.try_get("input_price")?,
        output_price: row.try_get("output_price")?,
        cached_input_price: row.try_get("cached_input_price")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Columns the decoder below reads by name, for `concat!` into static SQL.
macro_rules! key_columns {
    () => {
        "id, account_id, application_id, group_id, display_name, expire_time, quota, \
     daily_budget, monthly_budget, rpm_limit, tpm_limit, allowed_models, capabilities, ip_allowlist, enabled, hint, \
     previous_secret_expire_time, revision, create_time, update_time"
    };
}
pub(super) use key_columns;

pub(super) fn key(row: &AnyRow) -> StoreResult<Key> {
    let capabilities = strings(row, "capabilities")?
        .iter()
        .map(|name| {
            Capability::from_name(name).ok_or_else(|| StoreError::Internal(format!("stored capability {name:?}")))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Key {
        id: row.try_get("id")?,
        revision: row.try_get("revision")?,
        account_id: row.try_get("account_id")?,
        application_id: row.try_get("application_id")?,
        settings: KeySettings {
            display_name: row.try_get("display_name")?,
            group_id: row.try_get("group_id")?,
            expire_time: row.try_get("expire_time")?,
            quota: row.try_get("quota")?,
            daily_budget: row.try_get("daily_budget")?,
            monthly_budget: row.try_get("monthly_budget")?,
            rpm_limit: row.try_get("rpm_limit")?,
            tpm_limit: row.try_get("tpm_limit")?,
            allowed_models: strings(row, "allowed_models")?,
            capabilities,
            ip_allowlist: strings(row, "ip_allowlist")?,
            enabled: boolean(row, "enabled")?,
        },
        hint: row.try_get("hint")?,
        previous_secret_expire_time: row.try_get("previous_secret_expire_time")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// A boolean column: BOOLEAN on Postgres, INTEGER 0/1 on SQLite.
pub(super) fn boolean(row: &AnyRow, column: &str) -> StoreResult<bool> {
    match row.try_get::<bool, _>(column) {
        Ok(value) => Ok(value),
        Err(_) => Ok(row.try_get::<i64, _>(column)? != 0),
    }
}

/// A JSON array of strings stored as TEXT.
pub(super) fn strings(row: &AnyRow, column: &str) -> StoreResult<Vec<String>> {
    let text: String = row.try_get(column)?;
    Ok(serde_json::from_str(&text)?)
}

/// Encodes a list for a TEXT column.
pub(super) fn json<T: AsRef<str>>(items: &[T]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&items).expect("lists of strings always serialise")
}

/// Capabilities by their storage names.
pub(super) fn capability_names(capabilities: &[Capability]) -> String {
    json(&capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>())
}

/// Records the change's audit entries and commits it: a change and its audit trail are one
/// transaction.
pub(super) async fn commit_audited(mut tx: Transaction<'_, Any>, entries: &[AuditEntry]) -> StoreResult<()> {
    insert_audit(&mut tx, entries).await?;
    tx.commit().await?;
    Ok(())
}

/// Appends audit entries inside the caller's transaction.
pub(super) async fn insert_audit(conn: &mut AnyConnection, entries: &[AuditEntry]) -> StoreResult<()> {
    for entry in entries {
        sqlx::query(
            "INSERT INTO audit_events (actor, action, resource, account_id, changed_fields, time) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.resource)
        .bind(entry.account_id.as_deref())
        .bind(json(&entry.changed_fields))
        .bind(entry.time)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Queues one key for a state push inside the caller's transaction.
pub(super) async fn enqueue_key(conn: &mut AnyConnection, key_id: &str) -> StoreResult<()> {
    sqlx::query("INSERT INTO state_outbox (kind, ref_id) VALUES ('key', $1)").bind(key_id).execute(&mut *conn).await?;
    Ok(())
}

/// Queues a catalog push inside the caller's transaction.
pub(super) async fn enqueue_catalog(conn: &mut AnyConnection) -> StoreResult<()> {
    sqlx::query("INSERT INTO state_outbox (kind, ref_id) VALUES ('catalog', '')").execute(&mut *conn).await?;
    Ok(())
}

/// Explains why an update or delete touched no row: the row is gone (`NotFound`), or it is
/// there at another revision (`Conflict`). `exists` selects the row by id.
pub(super) async fn conflict_or_not_found(
    conn: &mut AnyConnection,
    exists: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
) -> StoreError {
    match exists.fetch_optional(&mut *conn).await {
        Ok(Some(_)) => StoreError::Conflict,
        Ok(None) => StoreError::NotFound,
        Err(e) => e.into(),
    }
}
