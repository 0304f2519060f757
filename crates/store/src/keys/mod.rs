//! The keys service's configuration store: accounts, applications, groups, the model
//! catalog, keys and their secrets, the audit log, idempotency records and the key-state
//! outbox. Postgres schema `keys`; SQLite file `keys.db`.

mod accounts;
mod api_keys;
mod applications;
mod audit;
mod catalog;
mod rows;
mod state_outbox;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use tollgate_core::SecretHash;
use tollgate_core::resources::{Account, Application, Group, Key, KeyStatus, Model};
use tollgate_core::time::Micros;

use crate::db::Database;
use crate::error::StoreResult;
use crate::{Page, PageRequest};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/keys/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/keys/sqlite");

/// One audited change, written in the same transaction as the change itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub account_id: Option<String>,
    pub changed_fields: Vec<String>,
    pub time: Micros,
}

/// An audit entry as listed, with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    pub entry: AuditEntry,
}

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub account_id: Option<String>,
    pub resource: Option<String>,
    /// Only events with a smaller id (newest first pagination).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// A key to insert with the hash of its first secret.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: Key,
    pub secret_hash: SecretHash,
}

/// A new secret for a key.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub new_secret: SecretHash,
    pub new_hint: String,
    /// When the secrets that were current stop working (`now` for no grace).
    pub old_secret_expire_time: Micros,
    pub now: Micros,
}

/// What a create-keys request stored so that a retry can get the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub account_id: String,
    pub request_id: String,
    /// Hash of the request's settings; a retry with other settings is refused.
    pub fingerprint: String,
    pub key_ids: Vec<String>,
    /// The secrets, encrypted under a key derived from the pepper; never in clear.
    pub sealed_secrets: String,
    pub create_time: Micros,
}

/// Which keys to list.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub application_id: Option<String>,
    pub group_id: Option<String>,
    pub status: Option<KeyStatus>,
}

/// A secret of a key and when it stops working (`None`: it is the current one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub hash: SecretHash,
    pub expire_time: Option<Micros>,
}

/// Everything a key-state snapshot is derived from.
#[derive(Debug, Clone)]
pub struct KeyStateSource {
    pub key: Key,
    pub deleted: bool,
    pub group: Group,
    /// The account's limit; `None` for postpaid accounts.
    pub account_credit_limit: Option<i64>,
    pub secrets: Vec<SecretRecord>,
}

/// A change whose key state must be pushed to the key-state cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    Key(String),
    Catalog,
}

/// An outbox row: a change to push, with the id to acknowledge once pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub change: StateChange,
}

/// Accounts.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Inserts an account and, for an initial key, its application and key, atomically.
    async fn create_account(
        &self,
        account: &Account,
        initial: Option<(&Application, &NewKey)>,
        audit: &[AuditEntry],
    ) -> StoreResult<()>;
    async fn get_account(&self, id: &str) -> StoreResult<Option<Account>>;
    async fn list_accounts(&self, page: &PageRequest) -> StoreResult<Page<Account>>;
    /// Writes `account` if its stored revision is still `account.revision` (the one it was
    /// read at) and bumps it; every key of the account is queued for a state push (the credit
    /// limit is part of key state).
    async fn update_account(&self, account: &Account, audit: &AuditEntry) -> StoreResult<()>;
}

/// Applications of an account.
#[async_trait]
pub trait ApplicationStore: Send + Sync {
    async fn create_application(&self, application: &Application, audit: &AuditEntry) -> StoreResult<()>;
    async fn get_application(&self, account_id: &str, id: &str) -> StoreResult<Option<Application>>;
    async fn list_applications(&self, account_id: &str, page: &PageRequest) -> StoreResult<Page<Application>>;
    async fn update_application(&self, application: &Application, audit: &AuditEntry) -> StoreResult<()>;
    /// Deletes an application without live keys; `FailedPrecondition` otherwise.
    async fn delete_application(&self, account_id: &str, id: &str, audit: &AuditEntry) -> StoreResult<()>;
}

/// Groups and the model catalog.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    async fn create_group(&self, group: &Group, audit: &AuditEntry) -> StoreResult<()>;
    async fn get_group(&self, id: &str) -> StoreResult<Option<Group>>;
    async fn list_groups(&self, page: &PageRequest) -> StoreResult<Page<Group>>;
    /// Writes `group` if unchanged since read; every key of the group is queued for a push.
    async fn update_group(&self, group: &Group, audit: &AuditEntry) -> StoreResult<()>;
    /// Deletes a group no live key uses; `FailedPrecondition` otherwise.
    async fn delete_group(&self, id: &str, audit: &AuditEntry) -> StoreResult<()>;

    async fn create_model(&self, model: &Model, audit: &AuditEntry) -> StoreResult<()>;
    async fn get_model(&self, id: &str) -> StoreResult<Option<Model>>;
    async fn list_models(&self, page: &PageRequest) -> StoreResult<Page<Model>>;
    async fn update_model(&self, model: &Model, audit: &AuditEntry) -> StoreResult<()>;
    async fn delete_model(&self, id: &str, audit: &AuditEntry) -> StoreResult<()>;
    /// Which of `ids` are in the catalog.
    async fn existing_models(&self, ids: &[String]) -> StoreResult<Vec<String>>;
    /// The whole catalog.
    async fn all_models(&self) -> StoreResult<Vec<Model>>;
}

/// Keys and their secrets.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Inserts keys (all or none) with an optional idempotency record; `AlreadyExists` when a
    /// record for the same request id was written concurrently.
    async fn create_keys(
        &self,
        keys: &[NewKey],
        idempotency: Option<&IdempotencyRecord>,
        audit: &[AuditEntry],
    ) -> StoreResult<()>;
    /// The idempotency record of a request, if one was stored at or after `not_before`.
    async fn find_idempotency_record(
        &self,
        account_id: &str,
        request_id: &str,
        not_before: Micros,
    ) -> StoreResult<Option<IdempotencyRecord>>;
    /// A live (not deleted) key of the account.
    async fn get_key(&self, account_id: &str, id: &str) -> StoreResult<Option<Key>>;
    /// Several keys of the account by id, deleted ones included, in the order given.
    async fn get_keys_by_id(&self, account_id: &str, ids: &[String]) -> StoreResult<Vec<Key>>;
    async fn list_keys(
        &self,
        account_id: &str,
        filter: &KeyFilter,
        page: &PageRequest,
        now: Micros,
    ) -> StoreResult<Page<Key>>;
    /// Writes `key` if unchanged since read (`key.revision`), bumps it and queues a state push.
    async fn update_key(&self, key: &Key, audit: &AuditEntry) -> StoreResult<()>;
    /// Marks a key deleted; its secrets stop working at once. `NotFound` if already gone.
    async fn delete_key(&self, account_id: &str, id: &str, now: Micros, audit: &AuditEntry) -> StoreResult<()>;
    /// Adds a new current secret; secrets that were current stop at the rotation's deadline.
    /// Returns the key as it now is.
    async fn rotate_key(&self, account_id: &str, id: &str, rotation: &Rotation, audit: &AuditEntry)
    -> StoreResult<Key>;
    /// The id of the key a secret belongs to, deleted keys included.
    async fn key_id_for_secret(&self, hash: &SecretHash) -> StoreResult<Option<String>>;
}

/// The key-state outbox: changes committed to the store but perhaps not yet pushed to the
/// key-state cache. Written in the same transaction as the change.
#[async_trait]
pub trait StateOutbox: Send + Sync {
    /// The oldest pending changes.
    async fn pending_state_changes(&self, limit: u32) -> StoreResult<Vec<OutboxEntry>>;
    /// How many changes wait to be pushed.
    async fn state_outbox_depth(&self) -> StoreResult<i64>;
    /// Removes pushed changes.
    async fn ack_state_changes(&self, ids: &[i64]) -> StoreResult<()>;
    /// Queues every live key and the catalog, e.g. after the system caps changed.
    async fn enqueue_everything(&self) -> StoreResult<()>;
    /// Loads what the snapshots of these keys derive from; unknown ids are skipped.
    async fn load_key_states(&self, key_ids: &[String]) -> StoreResult<Vec<KeyStateSource>>;
    /// A stored setting of the service itself.
    async fn get_setting(&self, name: &str) -> StoreResult<Option<String>>;
    async fn put_setting(&self, name: &str, value: &str) -> StoreResult<()>;
}

/// The audit log.
#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn list_audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>>;
}

/// Everything the keys service stores.
pub trait KeysStore: AccountStore + ApplicationStore + CatalogStore + KeyStore + StateOutbox + AuditLog {}

impl<T> KeysStore for T where T: AccountStore + ApplicationStore + CatalogStore + KeyStore + StateOutbox + AuditLog {}

/// The keys store over a Postgres or SQLite database.
#[derive(Debug, Clone)]
pub struct SqlKeysStore {
    db: Database,
}

impl SqlKeysStore {
    /// Wraps a connected database (schema `keys` on Postgres).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Applies the keys migrations.
    pub async fn migrate(&self) -> StoreResult<()> {
        self.db.migrate(&POSTGRES_MIGRATIONS, &SQLITE_MIGRATIONS).await
    }

    /// The database behind the store.
    pub fn database(&self) -> &Database {
        &self.db
    }
}
