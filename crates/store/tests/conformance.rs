//! The keys-store conformance suite: every check runs against SQLite and against Postgres
//! (a private database on the shared server; skipped without one unless `CI=true`).

use tollgate_core::KeyPepper;
use tollgate_core::capability::Capability;
use tollgate_core::money::PriceMultiplier;
use tollgate_core::resources::{Account, Application, Group, Key, KeySettings, KeyStatus, Model};
use tollgate_store::keys::{
    AccountStore, ApplicationStore, AuditEntry, AuditFilter, AuditLog, CatalogStore, IdempotencyRecord, KeyFilter,
    KeyStore, NewKey, Rotation, SqlKeysStore, StateChange, StateOutbox,
};
use tollgate_store::{Database, DatabaseConfig, PageRequest, StoreError};
use tollgate_test_support::TestDatabase;

/// Keeps whatever backs a store alive for the length of a test.
#[allow(dead_code)]
enum Guard {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

async fn sqlite_store() -> (SqlKeysStore, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let store = SqlKeysStore::new(Database::connect(&DatabaseConfig::new(url, "keys")).await.unwrap());
    store.migrate().await.unwrap();
    (store, Guard::Sqlite(dir))
}

async fn postgres_store() -> Option<(SqlKeysStore, Guard)> {
    let db = TestDatabase::create().await?;
    let store = SqlKeysStore::new(Database::connect(&DatabaseConfig::new(db.url.clone(), "keys")).await.unwrap());
    store.migrate().await.unwrap();
    // Migrating twice is a no-op.
    store.migrate().await.unwrap();
    Some((store, Guard::Postgres(db)))
}

tollgate_test_support::conformance_suite!(
    checks: [
        accounts_round_trip_and_paginate,
        stale_revisions_conflict_and_missing_rows_are_not_found,
        applications_belong_to_their_account,
        groups_soft_delete_and_revive,
        models_and_catalog,
        keys_create_get_list_filter,
        batch_create_is_all_or_nothing,
        update_delete_and_rotate_keys,
        idempotency_records,
        outbox_follows_every_state_change,
        audit_log_filters_and_orders,
        settings_round_trip,
    ],
    adapters: {
        sqlite => async { Some(super::sqlite_store().await) },
        postgres => super::postgres_store(),
    }
);

const NOW: i64 = 1_700_000_000_000_000;

fn audit(action: &str, resource: &str, account: Option<&str>) -> AuditEntry {
    AuditEntry {
        actor: "tester".into(),
        action: action.into(),
        resource: resource.into(),
        account_id: account.map(str::to_owned),
        changed_fields: vec!["display_name".into()],
        time: NOW,
    }
}

fn account(id: &str) -> Account {
    Account {
        id: id.into(),
        revision: 1,
        display_name: format!("Account {id}"),
        credit_limit: 0,
        unlimited_credit: false,
        create_time: NOW,
        update_time: NOW,
    }
}

fn application(account_id: &str, id: &str) -> Application {
    Application {
        id: id.into(),
        revision: 1,
        account_id: account_id.into(),
        display_name: format!("App {id}"),
        description: String::new(),
        create_time: NOW,
        update_time: NOW,
    }
}

fn group(id: &str) -> Group {
    Group {
        id: id.into(),
        revision: 1,
        display_name: format!("Group {id}"),
        price_multiplier: PriceMultiplier::parse("1.25").unwrap(),
        allowed_models: vec!["gpt-4o".into()],
        default_rpm_limit: Some(60),
        default_tpm_limit: None,
        create_time: NOW,
        update_time: NOW,
    }
}

fn model(id: &str) -> Model {
    Model {
        id: id.into(),
        revision: 1,
        display_name: id.into(),
        capability: Capability::Text,
        input_price: 1_250_000,
        output_price: 5_000_000,
        cached_input_price: None,
        create_time: NOW,
        update_time: NOW,
    }
}

fn new_key(account_id: &str, application_id: &str, group_id: &str, id: &str) -> NewKey {
    let pepper = KeyPepper::new(vec![9u8; 32]).unwrap();
    NewKey {
        key: Key {
            id: id.into(),
            revision: 1,
            account_id: account_id.into(),
            application_id: application_id.into(),
            settings: KeySettings {
                display_name: format!("Key {id}"),
                group_id: group_id.into(),
                expire_time: None,
                quota: Some(1_000),
                daily_budget: None,
                monthly_budget: Some(500),
                rpm_limit: None,
                tpm_limit: Some(10_000),
                allowed_models: vec!["gpt-4o".into()],
                capabilities: vec![Capability::Text, Capability::Embeddings],
                ip_allowlist: vec!["10.0.0.0/8".into()],
                enabled: true,
            },
            hint: "sk-AbCd…WxYz".into(),
            previous_secret_expire_time: None,
            create_time: NOW,
            update_time: NOW,
        },
        secret_hash: pepper.hash(&format!("secret-of-{id}")),
    }
}

fn rotation(new_secret: tollgate_core::SecretHash, hint: &str, deadline: i64, now: i64) -> Rotation {
    Rotation { new_secret, new_hint: hint.into(), old_secret_expire_time: deadline, now }
}

/// An account `acme` with application `web`, group `pro` and model `gpt-4o`.
async fn seed(store: &SqlKeysStore) {
    store.create_account(&account("acme"), None, &[]).await.unwrap();
    store.create_application(&application("acme", "web"), &audit("CreateApplication", "a", None)).await.unwrap();
    store.create_group(&group("pro"), &audit("CreateGroup", "groups/pro", None)).await.unwrap();
    store.create_model(&model("gpt-4o"), &audit("CreateModel", "models/gpt-4o", None)).await.unwrap();
}

async fn accounts_round_trip_and_paginate(store: SqlKeysStore) {
    for id in ["c", "a", "b"] {
        store.create_account(&account(id), None, &[]).await.unwrap();
    }
    assert!(matches!(store.create_account(&account("a"), None, &[]).await, Err(StoreError::AlreadyExists)));
    assert_eq!(store.get_account("a").await.unwrap(), Some(account("a")));
    assert_eq!(store.get_account("zzz").await.unwrap(), None);

    let first = store.list_accounts(&PageRequest { after: None, limit: 2 }).await.unwrap();
    assert_eq!(first.items.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let second = store.list_accounts(&PageRequest { after: first.next_after.clone(), limit: 2 }).await.unwrap();
    assert_eq!(second.items.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(second.next_after, None);

    let mut changed = account("a");
    changed.unlimited_credit = true;
    changed.update_time = NOW + 1;
    store.update_account(&changed, &audit("UpdateAccount", "accounts/a", Some("a"))).await.unwrap();
    let stored = store.get_account("a").await.unwrap().unwrap();
    assert!(stored.unlimited_credit);
    assert_eq!(stored.revision, 2);
    assert_eq!(stored.update_time, NOW + 1);
}

async fn stale_revisions_conflict_and_missing_rows_are_not_found(store: SqlKeysStore) {
    seed(&store).await;
    let stale = account("acme");
    store.update_account(&stale, &audit("UpdateAccount", "x", None)).await.unwrap();
    assert!(matches!(
        store.update_account(&stale, &audit("UpdateAccount", "x", None)).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store.update_account(&account("ghost"), &audit("UpdateAccount", "x", None)).await,
        Err(StoreError::NotFound)
    ));
    let stale_group = group("pro");
    store.update_group(&stale_group, &audit("UpdateGroup", "x", None)).await.unwrap();
    assert!(matches!(
        store.update_group(&stale_group, &audit("UpdateGroup", "x", None)).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store.update_model(&model("nope"), &audit("UpdateModel", "x", None)).await,
        Err(StoreError::NotFound)
    ));
}

async fn applications_belong_to_their_account(store: SqlKeysStore) {
    seed(&store).await;
    store.create_account(&account("other"), None, &[]).await.unwrap();
    assert_eq!(store.get_application("other", "web").await.unwrap(), None);
    assert!(store.get_application("acme", "web").await.unwrap().is_some());
    // The same id may exist under another account.
    store.create_application(&application("other", "web"), &audit("CreateApplication", "x", None)).await.unwrap();
    assert!(matches!(
        store.create_application(&application("acme", "web"), &audit("CreateApplication", "x", None)).await,
        Err(StoreError::AlreadyExists)
    ));
    // An application of an unknown account is refused by the foreign key.
    assert!(
        store.create_application(&application("ghost", "web"), &audit("CreateApplication", "x", None)).await.is_err()
    );

    store.create_keys(&[new_key("acme", "web", "pro", "k1")], None, &[]).await.unwrap();
    assert!(matches!(
        store.delete_application("acme", "web", &audit("DeleteApplication", "x", None)).await,
        Err(StoreError::FailedPrecondition(_))
    ));
    assert!(store.get_application("acme", "web").await.unwrap().is_some(), "a refused delete changes nothing");
    store.delete_key("acme", "k1", NOW, &audit("DeleteKey", "x", None)).await.unwrap();
    store.delete_application("acme", "web", &audit("DeleteApplication", "x", None)).await.unwrap();
    assert_eq!(store.get_application("acme", "web").await.unwrap(), None);
    let listed = store.list_applications("acme", &PageRequest { after: None, limit: 10 }).await.unwrap();
    assert!(listed.items.is_empty());
    assert!(matches!(
        store.delete_application("acme", "web", &audit("DeleteApplication", "x", None)).await,
        Err(StoreError::NotFound)
    ));
}

async fn groups_soft_delete_and_revive(store: SqlKeysStore) {
    seed(&store).await;
    assert!(matches!(
        store.create_group(&group("pro"), &audit("CreateGroup", "x", None)).await,
        Err(StoreError::AlreadyExists)
    ));
    store.create_keys(&[new_key("acme", "web", "pro", "k1")], None, &[]).await.unwrap();
    assert!(matches!(
        store.delete_group("pro", &audit("DeleteGroup", "x", None)).await,
        Err(StoreError::FailedPrecondition(_))
    ));
    store.delete_key("acme", "k1", NOW, &audit("DeleteKey", "x", None)).await.unwrap();
    store.delete_group("pro", &audit("DeleteGroup", "x", None)).await.unwrap();
    assert_eq!(store.get_group("pro").await.unwrap(), None);
    assert!(store.list_groups(&PageRequest { after: None, limit: 10 }).await.unwrap().items.is_empty());
    // The deleted key's state still resolves its (deleted) group.
    let states = store.load_key_states(&["k1".into()]).await.unwrap();
    assert!(states[0].deleted);
    assert_eq!(states[0].group.id, "pro");

    let mut revived = group("pro");
    revived.display_name = "Pro again".into();
    store.create_group(&revived, &audit("CreateGroup", "x", None)).await.unwrap();
    assert_eq!(store.get_group("pro").await.unwrap().unwrap().display_name, "Pro again");
}

async fn models_and_catalog(store: SqlKeysStore) {
    seed(&store).await;
    store.create_model(&model("openai/gpt-4o-mini"), &audit("CreateModel", "x", None)).await.unwrap();
    assert!(matches!(
        store.create_model(&model("gpt-4o"), &audit("CreateModel", "x", None)).await,
        Err(StoreError::AlreadyExists)
    ));
    let mut changed = model("gpt-4o");
    changed.cached_input_price = Some(600_000);
    changed.capability = Capability::Image;
    store.update_model(&changed, &audit("UpdateModel", "x", None)).await.unwrap();
    let stored = store.get_model("gpt-4o").await.unwrap().unwrap();
    assert_eq!((stored.cached_input_price, stored.capability, stored.revision), (Some(600_000), Capability::Image, 2));

    let wanted = vec!["gpt-4o".to_string(), "nope".into(), "openai/gpt-4o-mini".into()];
    assert_eq!(store.existing_models(&wanted).await.unwrap(), ["gpt-4o", "openai/gpt-4o-mini"]);
    assert_eq!(store.all_models().await.unwrap().len(), 2);
    let page = store.list_models(&PageRequest { after: None, limit: 1 }).await.unwrap();
    assert_eq!(page.items[0].id, "gpt-4o");
    assert_eq!(page.next_after.as_deref(), Some("gpt-4o"));

    store.delete_model("gpt-4o", &audit("DeleteModel", "x", None)).await.unwrap();
    assert!(matches!(store.delete_model("gpt-4o", &audit("DeleteModel", "x", None)).await, Err(StoreError::NotFound)));
    assert_eq!(store.existing_models(&wanted).await.unwrap(), ["openai/gpt-4o-mini"]);
}

async fn keys_create_get_list_filter(store: SqlKeysStore) {
    seed(&store).await;
    store.create_application(&application("acme", "mobile"), &audit("CreateApplication", "x", None)).await.unwrap();
    store.create_group(&group("free"), &audit("CreateGroup", "x", None)).await.unwrap();
    let mut disabled = new_key("acme", "mobile", "free", "k2");
    disabled.key.settings.enabled = false;
    let mut expired = new_key("acme", "web", "pro", "k3");
    expired.key.settings.expire_time = Some(NOW);
    let keys = [new_key("acme", "web", "pro", "k1"), disabled, expired];
    store.create_keys(&keys, None, &[]).await.unwrap();

    let stored = store.get_key("acme", "k1").await.unwrap().unwrap();
    assert_eq!(stored, keys[0].key, "every setting round-trips");
    assert_eq!(store.get_key("other", "k1").await.unwrap(), None, "keys are scoped to their account");

    let list = |filter: KeyFilter| {
        let store = &store;
        async move {
            let page = store.list_keys("acme", &filter, &PageRequest { after: None, limit: 10 }, NOW).await.unwrap();
            page.items.into_iter().map(|k| k.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(KeyFilter::default()).await, ["k1", "k2", "k3"]);
    assert_eq!(list(KeyFilter { application_id: Some("web".into()), ..Default::default() }).await, ["k1", "k3"]);
    assert_eq!(list(KeyFilter { group_id: Some("free".into()), ..Default::default() }).await, ["k2"]);
    let by_status = |status| KeyFilter { status: Some(status), ..Default::default() };
    assert_eq!(list(by_status(KeyStatus::Enabled)).await, ["k1"]);
    assert_eq!(list(by_status(KeyStatus::Disabled)).await, ["k2"]);
    assert_eq!(list(by_status(KeyStatus::Expired)).await, ["k3"], "expiry is exclusive: at the instant it is expired");

    let page =
        store.list_keys("acme", &KeyFilter::default(), &PageRequest { after: None, limit: 2 }, NOW).await.unwrap();
    assert_eq!(page.next_after.as_deref(), Some("k2"));
    let rest = store
        .list_keys("acme", &KeyFilter::default(), &PageRequest { after: page.next_after, limit: 2 }, NOW)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);

    assert_eq!(store.key_id_for_secret(&keys[1].secret_hash).await.unwrap().as_deref(), Some("k2"));
    let unknown = KeyPepper::new(vec![1u8; 32]).unwrap().hash("unknown");
    assert_eq!(store.key_id_for_secret(&unknown).await.unwrap(), None);
}

async fn batch_create_is_all_or_nothing(store: SqlKeysStore) {
    seed(&store).await;
    // The second key reuses the first one's id: the whole batch must fail.
    let batch = [new_key("acme", "web", "pro", "k1"), new_key("acme", "web", "pro", "k1")];
    assert!(store.create_keys(&batch, None, &[audit("BatchCreateKeys", "x", None)]).await.is_err());
    assert_eq!(store.get_key("acme", "k1").await.unwrap(), None);
    assert!(store.pending_state_changes(100).await.unwrap().iter().all(|e| e.change == StateChange::Catalog));
    // A key naming another account's application is refused.
    store.create_account(&account("other"), None, &[]).await.unwrap();
    assert!(store.create_keys(&[new_key("other", "web", "pro", "k9")], None, &[]).await.is_err());
}

async fn update_delete_and_rotate_keys(store: SqlKeysStore) {
    seed(&store).await;
    let created = new_key("acme", "web", "pro", "k1");
    store.create_keys(std::slice::from_ref(&created), None, &[]).await.unwrap();

    let mut changed = created.key.clone();
    changed.settings.quota = None;
    changed.settings.ip_allowlist = vec!["2001:db8::/32".into()];
    changed.update_time = NOW + 5;
    store.update_key(&changed, &audit("UpdateKey", "x", Some("acme"))).await.unwrap();
    let stored = store.get_key("acme", "k1").await.unwrap().unwrap();
    assert_eq!(stored.settings, changed.settings);
    assert_eq!(stored.revision, 2);
    assert!(matches!(store.update_key(&changed, &audit("UpdateKey", "x", None)).await, Err(StoreError::Conflict)));

    let pepper = KeyPepper::new(vec![3u8; 32]).unwrap();
    let second = pepper.hash("second");
    let rotated = store
        .rotate_key(
            "acme",
            "k1",
            &rotation(second, "sk-Newh…int1", NOW + 100, NOW + 10),
            &audit("RotateKey", "x", None),
        )
        .await
        .unwrap();
    assert_eq!(rotated.hint, "sk-Newh…int1");
    assert_eq!(rotated.previous_secret_expire_time, Some(NOW + 100));
    let third = pepper.hash("third");
    store
        .rotate_key("acme", "k1", &rotation(third, "sk-Thrd…int2", NOW + 200, NOW + 20), &audit("RotateKey", "x", None))
        .await
        .unwrap();
    let secrets = &store.load_key_states(&["k1".into()]).await.unwrap()[0].secrets;
    let expiry_of = |hash| secrets.iter().find(|s| s.hash == hash).unwrap().expire_time;
    assert_eq!(expiry_of(created.secret_hash), Some(NOW + 100), "an earlier deadline is kept");
    assert_eq!(expiry_of(second), Some(NOW + 200));
    assert_eq!(expiry_of(third), None, "the newest secret is current");

    // Rotation with no grace ends the old secrets at once.
    let fourth = pepper.hash("fourth");
    let key = store
        .rotate_key("acme", "k1", &rotation(fourth, "sk-Four…int3", NOW + 30, NOW + 30), &audit("RotateKey", "x", None))
        .await
        .unwrap();
    assert_eq!(key.previous_secret_expire_time, None);

    store.delete_key("acme", "k1", NOW + 40, &audit("DeleteKey", "x", None)).await.unwrap();
    assert_eq!(store.get_key("acme", "k1").await.unwrap(), None);
    assert!(matches!(
        store.delete_key("acme", "k1", NOW + 41, &audit("DeleteKey", "x", None)).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .rotate_key("acme", "k1", &rotation(pepper.hash("fifth"), "h", NOW, NOW), &audit("RotateKey", "x", None))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(
        store
            .list_keys("acme", &KeyFilter::default(), &PageRequest { after: None, limit: 10 }, NOW)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The tombstone still maps its secrets, so caches can learn the key is gone.
    assert_eq!(store.key_id_for_secret(&fourth).await.unwrap().as_deref(), Some("k1"));
    assert_eq!(store.get_keys_by_id("acme", &["k1".into()]).await.unwrap().len(), 1);
}

async fn idempotency_records(store: SqlKeysStore) {
    seed(&store).await;
    let record = IdempotencyRecord {
        account_id: "acme".into(),
        request_id: "req-1".into(),
        fingerprint: "f1".into(),
        key_ids: vec!["k1".into()],
        sealed_secrets: "sealed".into(),
        create_time: NOW,
    };
    store.create_keys(&[new_key("acme", "web", "pro", "k1")], Some(&record), &[]).await.unwrap();
    assert_eq!(store.find_idempotency_record("acme", "req-1", NOW - 1).await.unwrap(), Some(record.clone()));
    assert_eq!(store.find_idempotency_record("acme", "req-1", NOW + 1).await.unwrap(), None, "outside the window");
    assert_eq!(store.find_idempotency_record("other", "req-1", 0).await.unwrap(), None);
    // A concurrent duplicate loses on the unique request id and inserts no key.
    let duplicate = store.create_keys(&[new_key("acme", "web", "pro", "k2")], Some(&record), &[]).await;
    assert!(matches!(duplicate, Err(StoreError::AlreadyExists)));
    assert_eq!(store.get_key("acme", "k2").await.unwrap(), None);
}

async fn outbox_follows_every_state_change(store: SqlKeysStore) {
    seed(&store).await;
    let drain = |store: &SqlKeysStore| {
        let store = store.clone();
        async move {
            let entries = store.pending_state_changes(1000).await.unwrap();
            store.ack_state_changes(&entries.iter().map(|e| e.id).collect::<Vec<_>>()).await.unwrap();
            entries.into_iter().map(|e| e.change).collect::<Vec<_>>()
        }
    };
    assert_eq!(drain(&store).await, [StateChange::Catalog]);
    assert!(drain(&store).await.is_empty(), "acknowledged entries are gone");

    store
        .create_keys(&[new_key("acme", "web", "pro", "k1"), new_key("acme", "web", "pro", "k2")], None, &[])
        .await
        .unwrap();
    assert_eq!(drain(&store).await, [StateChange::Key("k1".into()), StateChange::Key("k2".into())]);

    let mut changed_group = store.get_group("pro").await.unwrap().unwrap();
    changed_group.price_multiplier = PriceMultiplier::parse("2").unwrap();
    store.update_group(&changed_group, &audit("UpdateGroup", "x", None)).await.unwrap();
    let mut changes = drain(&store).await;
    changes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(changes, [StateChange::Key("k1".into()), StateChange::Key("k2".into())]);

    let mut changed_account = store.get_account("acme").await.unwrap().unwrap();
    changed_account.credit_limit = 5_000;
    store.update_account(&changed_account, &audit("UpdateAccount", "x", None)).await.unwrap();
    assert_eq!(drain(&store).await.len(), 2);

    store.delete_key("acme", "k2", NOW, &audit("DeleteKey", "x", None)).await.unwrap();
    assert_eq!(drain(&store).await, [StateChange::Key("k2".into())]);
    store.update_model(&model("gpt-4o"), &audit("UpdateModel", "x", None)).await.unwrap();
    assert_eq!(drain(&store).await, [StateChange::Catalog]);

    store.enqueue_everything().await.unwrap();
    assert_eq!(drain(&store).await, [StateChange::Key("k1".into()), StateChange::Catalog], "only live keys");

    let states = store.load_key_states(&["k1".into(), "k2".into(), "missing".into()]).await.unwrap();
    assert_eq!(states.len(), 2);
    let k1 = states.iter().find(|s| s.key.id == "k1").unwrap();
    assert!(!k1.deleted);
    assert_eq!(k1.group.price_multiplier.to_string(), "2");
    assert_eq!(k1.account_credit_limit, Some(5_000));
    assert_eq!(k1.secrets.len(), 1);
    assert_eq!(k1.key.revision, 3, "group and account changes bump the key's revision");
    assert!(states.iter().find(|s| s.key.id == "k2").unwrap().deleted);
}

async fn audit_log_filters_and_orders(store: SqlKeysStore) {
    seed(&store).await;
    store
        .create_account(&account("other"), None, &[audit("CreateAccount", "accounts/other", Some("other"))])
        .await
        .unwrap();
    store
        .create_keys(
            &[new_key("acme", "web", "pro", "k1")],
            None,
            &[audit("CreateKey", "accounts/acme/keys/k1", Some("acme"))],
        )
        .await
        .unwrap();
    let all = store.list_audit_events(&AuditFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(all[0].entry.action, "CreateKey");
    assert_eq!(all[0].entry.changed_fields, ["display_name"]);

    let acme = store
        .list_audit_events(&AuditFilter { account_id: Some("acme".into()), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(acme.len(), 1);
    let by_resource = store
        .list_audit_events(&AuditFilter { resource: Some("accounts/other".into()), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(by_resource[0].entry.action, "CreateAccount");
    let older = store
        .list_audit_events(&AuditFilter { before_id: Some(all[0].id), limit: 1, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(older[0].id, all[1].id);
}

async fn settings_round_trip(store: SqlKeysStore) {
    assert_eq!(store.get_setting("caps").await.unwrap(), None);
    store.put_setting("caps", "a").await.unwrap();
    store.put_setting("caps", "b").await.unwrap();
    assert_eq!(store.get_setting("caps").await.unwrap().as_deref(), Some("b"));
}
