//! The key lifecycle: create, batch, idempotency, get, list, update, disable, rotate, delete.

use std::collections::HashSet;

use prost_types::{Duration, Timestamp};
use tollgate_core::key_format;
use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{create_key, mask, world};
use tollgate_tests::{Harness, on_both_backends};
use tonic::Code;

use crate::assert_code;

on_both_backends!(
    create_returns_the_secret_once_and_lists_show_the_hint,
    batch_create_makes_all_keys_or_none,
    request_ids_make_creation_idempotent,
    list_filters_and_paginates,
    update_changes_every_editable_setting,
    expired_keys_are_not_re_enabled_until_their_expiry_moves,
    rotation_keeps_the_old_secret_for_its_grace,
    delete_is_immediate_and_final,
    initial_key_comes_with_the_account,
);

async fn create_returns_the_secret_once_and_lists_show_the_hint(h: &Harness) {
    let w = world(h, "acme").await;
    let (key, secret) = create_key(h, &w, w.key("Production")).await;
    assert!(key_format::validate(&secret).is_ok(), "a well-formed sk- key");
    assert!(key.name.starts_with("accounts/acme/keys/"));
    assert_eq!(key.application, w.application);
    assert_eq!(key.status, pb::KeyStatus::Enabled as i32);
    assert_eq!(key.enabled, Some(true));
    assert_eq!(key.effective_rpm_limit, Some(60), "the group's default");
    assert_eq!(key.hint, format!("sk-{}…{}", &secret[3..7], &secret[secret.len() - 4..]));

    let got = h.keys().get_key(pb::GetKeyRequest { name: key.name.clone() }).await.unwrap().into_inner().key.unwrap();
    assert_eq!(got, key);
    let listed = h.keys().list_keys(pb::ListKeysRequest { parent: w.account.clone(), ..Default::default() }).await;
    let listed = listed.unwrap().into_inner();
    assert_eq!(listed.keys, std::slice::from_ref(&key));
    let everything = format!("{got:?}{listed:?}");
    assert!(!everything.contains(&secret[3..]), "reads never show the secret");
}

async fn batch_create_makes_all_keys_or_none(h: &Harness) {
    let w = world(h, "batch").await;
    let created = h
        .keys()
        .batch_create_keys(pb::BatchCreateKeysRequest {
            parent: w.account.clone(),
            key: Some(pb::Key { quota: Some(1000), ..w.key("Batch") }),
            quantity: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.created.len(), 3);
    let secrets: HashSet<_> = created.created.iter().map(|c| c.secret.clone()).collect();
    let names: HashSet<_> = created.created.iter().map(|c| c.key.as_ref().unwrap().name.clone()).collect();
    assert_eq!((secrets.len(), names.len()), (3, 3), "distinct keys and secrets");
    assert!(created.created.iter().all(|c| c.key.as_ref().unwrap().quota == Some(1000)));

    // An unknown model fails the whole batch: nothing is created.
    let failed = h
        .keys()
        .batch_create_keys(pb::BatchCreateKeysRequest {
            parent: w.account.clone(),
            key: Some(pb::Key { allowed_models: vec!["no-such-model".into()], ..w.key("Batch") }),
            quantity: 5,
            ..Default::default()
        })
        .await;
    assert_code(failed, Code::InvalidArgument);
    let listed = h.keys().list_keys(pb::ListKeysRequest { parent: w.account.clone(), ..Default::default() }).await;
    assert_eq!(listed.unwrap().into_inner().keys.len(), 3);
}

async fn request_ids_make_creation_idempotent(h: &Harness) {
    let w = world(h, "idem").await;
    let request = pb::CreateKeyRequest {
        parent: w.account.clone(),
        key: Some(w.key("Retried")),
        expire_after: Some(Duration { seconds: 3600, nanos: 0 }),
        request_id: "req-42".into(),
    };
    let first = h.keys().create_key(request.clone()).await.unwrap().into_inner().created.unwrap();
    let second = h.keys().create_key(request.clone()).await.unwrap().into_inner().created.unwrap();
    assert_eq!(first.key.as_ref().unwrap().name, second.key.as_ref().unwrap().name);
    assert_eq!(first.secret, second.secret, "a retry gets the same secret back");

    let concurrent: Vec<_> = (0..5)
        .map(|_| {
            let mut keys = h.keys();
            let request = pb::CreateKeyRequest { request_id: "req-race".into(), ..request.clone() };
            tokio::spawn(async move { keys.create_key(request).await.unwrap().into_inner().created.unwrap() })
        })
        .collect();
    let mut names = HashSet::new();
    for task in concurrent {
        names.insert(task.await.unwrap().key.unwrap().name);
    }
    assert_eq!(names.len(), 1, "concurrent retries make one key");

    let reused = pb::CreateKeyRequest { key: Some(w.key("Different")), ..request };
    let status = assert_code(h.keys().create_key(reused).await, Code::InvalidArgument);
    assert_eq!(crate::violated_fields(&status), ["request_id"]);

    let batch = pb::BatchCreateKeysRequest {
        parent: w.account.clone(),
        key: Some(w.key("Batch")),
        quantity: 2,
        request_id: "req-batch".into(),
        ..Default::default()
    };
    let a = h.keys().batch_create_keys(batch.clone()).await.unwrap().into_inner();
    let b = h.keys().batch_create_keys(batch).await.unwrap().into_inner();
    assert_eq!(a.created, b.created);
    let listed = h.keys().list_keys(pb::ListKeysRequest { parent: w.account.clone(), ..Default::default() }).await;
    assert_eq!(listed.unwrap().into_inner().keys.len(), 4, "req-42, req-race and two from req-batch");
}

async fn list_filters_and_paginates(h: &Harness) {
    let w = world(h, "lists").await;
    let other_app = h
        .applications()
        .create_application(pb::CreateApplicationRequest {
            parent: w.account.clone(),
            application_id: "mobile".into(),
            application: Some(pb::Application { display_name: "Mobile".into(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    let (enabled, _) = create_key(h, &w, w.key("Enabled")).await;
    let (disabled, _) = create_key(h, &w, pb::Key { enabled: Some(false), ..w.key("Disabled") }).await;
    let (mobile, _) = create_key(h, &w, pb::Key { application: other_app.name.clone(), ..w.key("Mobile") }).await;
    let (soon, _) = create_key(h, &w, w.key("Expiring")).await;
    // Expire one key by moving its expiry to a moment from now.
    h.keys()
        .update_key(pb::UpdateKeyRequest {
            key: Some(pb::Key { name: soon.name.clone(), ..Default::default() }),
            update_mask: mask(&["expire_time"]),
            expire_after: Some(Duration { seconds: 1, nanos: 0 }),
        })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let list = |request: pb::ListKeysRequest| {
        let mut keys = h.keys();
        async move {
            let response = keys.list_keys(request).await.unwrap().into_inner();
            response.keys.into_iter().map(|k| k.name).collect::<Vec<_>>()
        }
    };
    let base = pb::ListKeysRequest { parent: w.account.clone(), ..Default::default() };
    assert_eq!(
        list(base.clone()).await,
        [enabled.name.as_str(), disabled.name.as_str(), mobile.name.as_str(), soon.name.as_str()]
    );
    let by_app = pb::ListKeysRequest { application: other_app.name.clone(), ..base.clone() };
    assert_eq!(list(by_app).await, [mobile.name.as_str()]);
    let by_status = |status: pb::KeyStatus| pb::ListKeysRequest { status: status as i32, ..base.clone() };
    assert_eq!(list(by_status(pb::KeyStatus::Enabled)).await, [enabled.name.as_str(), mobile.name.as_str()]);
    assert_eq!(list(by_status(pb::KeyStatus::Disabled)).await, [disabled.name.as_str()]);
    assert_eq!(list(by_status(pb::KeyStatus::Expired)).await, [soon.name.as_str()]);
    assert!(list(by_status(pb::KeyStatus::Exhausted)).await.is_empty());
    let by_group = pb::ListKeysRequest { group: w.group.clone(), ..base.clone() };
    assert_eq!(list(by_group).await.len(), 4);
    let other_group = pb::ListKeysRequest { group: "groups/none".into(), ..base.clone() };
    assert!(list(other_group).await.is_empty());

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .keys()
            .list_keys(pb::ListKeysRequest { page_size: 3, page_token: token.clone(), ..base.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 3);
        seen.extend(page.keys.into_iter().map(|k| k.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, list(base).await, "pages join up to the full list");
    let status = assert_code(
        h.keys()
            .list_keys(pb::ListKeysRequest {
                parent: w.account.clone(),
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(crate::violated_fields(&status), ["page_token"]);
}

async fn update_changes_every_editable_setting(h: &Harness) {
    let w = world(h, "updates").await;
    h.groups()
        .create_group(pb::CreateGroupRequest {
            group_id: "updates-pro".into(),
            group: Some(pb::Group { display_name: "Pro".into(), ..Default::default() }),
        })
        .await
        .unwrap();
    let (key, _) = create_key(h, &w, pb::Key { quota: Some(10), ..w.key("Before") }).await;
    let expire = Timestamp { seconds: 4_102_444_800, nanos: 0 }; // 2100-01-01
    let changes = pb::Key {
        name: key.name.clone(),
        display_name: "After".into(),
        group: "groups/updates-pro".into(),
        expire_time: Some(expire),
        quota: None,
        daily_budget: Some(500),
        monthly_budget: Some(9_000),
        rpm_limit: Some(30),
        tpm_limit: Some(40_000),
        allowed_models: vec![w.model.clone()],
        capabilities: vec![pb::Capability::Embeddings as i32, pb::Capability::Text as i32],
        ip_allowlist: vec!["203.0.113.7".into(), "10.1.0.0/16".into(), "2001:db8::/32".into()],
        enabled: Some(false),
        ..Default::default()
    };
    let all = [
        "display_name",
        "group",
        "expire_time",
        "quota",
        "daily_budget",
        "monthly_budget",
        "rpm_limit",
        "tpm_limit",
        "allowed_models",
        "capabilities",
        "ip_allowlist",
        "enabled",
    ];
    let updated = h
        .keys()
        .update_key(pb::UpdateKeyRequest { key: Some(changes), update_mask: mask(&all), expire_after: None })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(updated.display_name, "After");
    assert_eq!(updated.group, "groups/updates-pro");
    assert_eq!(updated.expire_time, Some(expire));
    assert_eq!(updated.quota, None, "quota in the mask without a value means unlimited");
    assert_eq!((updated.daily_budget, updated.monthly_budget), (Some(500), Some(9_000)));
    assert_eq!((updated.rpm_limit, updated.tpm_limit), (Some(30), Some(40_000)));
    assert_eq!((updated.effective_rpm_limit, updated.effective_tpm_limit), (Some(30), Some(40_000)));
    assert_eq!(updated.allowed_models, std::slice::from_ref(&w.model));
    assert_eq!(updated.capabilities, [pb::Capability::Text as i32, pb::Capability::Embeddings as i32]);
    assert_eq!(updated.ip_allowlist, ["203.0.113.7/32", "10.1.0.0/16", "2001:db8::/32"]);
    assert_eq!((updated.enabled, updated.status), (Some(false), pb::KeyStatus::Disabled as i32));
    let fetched = h.keys().get_key(pb::GetKeyRequest { name: key.name.clone() }).await.unwrap().into_inner().key;
    assert_eq!(fetched.as_ref(), Some(&updated), "the change is stored");

    // Fields outside the mask stay; clearing optional ones restores defaults.
    let cleared = h
        .keys()
        .update_key(pb::UpdateKeyRequest {
            key: Some(pb::Key { name: key.name.clone(), display_name: "ignored".into(), ..Default::default() }),
            update_mask: mask(&["rpm_limit", "expire_time", "allowed_models", "enabled"]),
            expire_after: None,
        })
        .await;
    assert_code(cleared, Code::InvalidArgument); // `enabled` in the mask needs a value
    let cleared = h
        .keys()
        .update_key(pb::UpdateKeyRequest {
            key: Some(pb::Key {
                name: key.name.clone(),
                display_name: "ignored".into(),
                enabled: Some(true),
                ..Default::default()
            }),
            update_mask: mask(&["rpm_limit", "expire_time", "allowed_models", "enabled"]),
            expire_after: None,
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(cleared.display_name, "After");
    assert_eq!(cleared.rpm_limit, None);
    assert_eq!(cleared.effective_rpm_limit, None, "the new group has no default");
    assert_eq!(cleared.expire_time, None);
    assert!(cleared.allowed_models.is_empty());
    assert_eq!(cleared.status, pb::KeyStatus::Enabled as i32);

    let events = h
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest { resource: key.name.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["UpdateKey", "UpdateKey", "CreateKey"], "newest first; the refused update left nothing");
    assert_eq!(events[0].actor, "test-suite");
    assert_eq!(events[0].account, w.account);
    assert_eq!(events[0].changed_fields, ["rpm_limit", "expire_time", "allowed_models", "enabled"]);
}

async fn expired_keys_are_not_re_enabled_until_their_expiry_moves(h: &Harness) {
    let w = world(h, "expiry").await;
    let (key, _) = create_key(h, &w, pb::Key { enabled: Some(false), ..w.key("Old") }).await;
    h.keys()
        .update_key(pb::UpdateKeyRequest {
            key: Some(pb::Key { name: key.name.clone(), ..Default::default() }),
            update_mask: mask(&["expire_time"]),
            expire_after: Some(Duration { seconds: 1, nanos: 0 }),
        })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let enable = |extra: &[&str], expire_after: Option<Duration>| pb::UpdateKeyRequest {
        key: Some(pb::Key { name: key.name.clone(), enabled: Some(true), ..Default::default() }),
        update_mask: mask(&[&["enabled"], extra].concat()),
        expire_after,
    };
    assert_code(h.keys().update_key(enable(&[], None)).await, Code::FailedPrecondition);
    let got = h.keys().get_key(pb::GetKeyRequest { name: key.name.clone() }).await.unwrap().into_inner().key.unwrap();
    assert_eq!(got.enabled, Some(false), "the refused change left the key as it was");
    let enabled = h
        .keys()
        .update_key(enable(&["expire_time"], Some(Duration { seconds: 86_400, nanos: 0 })))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(enabled.status, pb::KeyStatus::Enabled as i32);
}

async fn rotation_keeps_the_old_secret_for_its_grace(h: &Harness) {
    let w = world(h, "rotate").await;
    let (key, old_secret) = create_key(h, &w, w.key("Rotating")).await;
    let rotated = h
        .keys()
        .rotate_key(pb::RotateKeyRequest { name: key.name.clone(), grace_period: None })
        .await
        .unwrap()
        .into_inner()
        .created
        .unwrap();
    let new_key = rotated.key.unwrap();
    assert_ne!(rotated.secret, old_secret);
    assert_eq!(new_key.name, key.name, "the key keeps its name");
    assert_ne!(new_key.hint, key.hint);
    let grace_end = new_key.previous_secret_expire_time.expect("old secret still works");
    let day_from_now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 86_400;
    assert!((grace_end.seconds - day_from_now).abs() < 60, "default grace of 24 h");

    let state = |secret: &str| {
        let hash = h.secret_hash(secret);
        let mut client = h.key_state();
        async move { client.get_key_state(pb::GetKeyStateRequest { secret_hash: hash }).await }
    };
    let old_state = state(&old_secret).await.unwrap().into_inner().state.unwrap();
    assert_eq!(old_state.secret_expire_time, Some(grace_end));
    let new_state = state(&rotated.secret).await.unwrap().into_inner().state.unwrap();
    assert_eq!(new_state.secret_expire_time, None);

    // Zero grace ends the previous secrets now.
    let again = h
        .keys()
        .rotate_key(pb::RotateKeyRequest { name: key.name.clone(), grace_period: Some(Duration::default()) })
        .await
        .unwrap()
        .into_inner()
        .created
        .unwrap();
    assert_eq!(again.key.unwrap().previous_secret_expire_time, None);
    let ended = state(&rotated.secret).await.unwrap().into_inner().state.unwrap().secret_expire_time.unwrap();
    assert!(ended.seconds <= day_from_now - 86_400 + 5);
    let too_long = pb::RotateKeyRequest {
        name: key.name.clone(),
        grace_period: Some(Duration { seconds: 31 * 86_400, nanos: 0 }),
    };
    assert_code(h.keys().rotate_key(too_long).await, Code::InvalidArgument);
}

async fn delete_is_immediate_and_final(h: &Harness) {
    let w = world(h, "deletes").await;
    let (key, secret) = create_key(h, &w, w.key("Doomed")).await;
    h.keys().delete_key(pb::DeleteKeyRequest { name: key.name.clone() }).await.unwrap();
    assert_code(h.keys().get_key(pb::GetKeyRequest { name: key.name.clone() }).await, Code::NotFound);
    assert_code(h.keys().delete_key(pb::DeleteKeyRequest { name: key.name.clone() }).await, Code::NotFound);
    let update = pb::UpdateKeyRequest {
        key: Some(pb::Key { name: key.name.clone(), enabled: Some(true), ..Default::default() }),
        update_mask: mask(&["enabled"]),
        expire_after: None,
    };
    assert_code(h.keys().update_key(update).await, Code::NotFound);
    assert_code(
        h.keys().rotate_key(pb::RotateKeyRequest { name: key.name.clone(), grace_period: None }).await,
        Code::NotFound,
    );
    let listed = h.keys().list_keys(pb::ListKeysRequest { parent: w.account.clone(), ..Default::default() }).await;
    assert!(listed.unwrap().into_inner().keys.is_empty());
    let state = h.key_state().get_key_state(pb::GetKeyStateRequest { secret_hash: h.secret_hash(&secret) }).await;
    assert_code(state, Code::NotFound);
    // The audit trail keeps the key's whole life.
    let events = h
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest { resource: key.name.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["DeleteKey", "CreateKey"]);
}

async fn initial_key_comes_with_the_account(h: &Harness) {
    let w = world(h, "seed").await;
    let created = h
        .accounts()
        .create_account(pb::CreateAccountRequest {
            account_id: String::new(),
            account: Some(pb::Account { display_name: "Newcomer".into(), credit_limit: 1000, ..Default::default() }),
            initial_key: Some(pb::InitialKey {
                application_display_name: String::new(),
                key: Some(pb::Key { display_name: "First key".into(), group: w.group.clone(), ..Default::default() }),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let account = created.account.unwrap();
    let application = created.application.unwrap();
    let initial = created.initial_key.unwrap();
    let key = initial.key.unwrap();
    assert_eq!(account.credit_limit, 1000);
    assert_eq!(application.display_name, "Default");
    assert!(application.name.starts_with(&format!("{}/applications/", account.name)));
    assert_eq!(key.application, application.name);
    assert!(key_format::validate(&initial.secret).is_ok());
    let state =
        h.key_state().get_key_state(pb::GetKeyStateRequest { secret_hash: h.secret_hash(&initial.secret) }).await;
    assert_eq!(state.unwrap().into_inner().state.unwrap().account_credit_limit, Some(1000));
}

/// Limits above the system cap apply at the cap, and responses say so. Needs a server with
/// caps, so it builds its own harness on each backend.
mod capped {
    use super::*;

    async fn capped(h: Harness) {
        let w = world(&h, "caps").await;
        let (key, _) = create_key(&h, &w, w.key("Uncapped")).await;
        assert_eq!(key.effective_rpm_limit, Some(60), "group default below the cap");
        assert_eq!(key.effective_tpm_limit, Some(1000), "no setting: the cap");
        let response = h
            .keys()
            .create_key(w.create(pb::Key { rpm_limit: Some(500), tpm_limit: Some(10), ..w.key("Greedy") }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.clamped,
            [pb::LimitClamp { field: "rpm_limit".into(), requested: 500, applied: 100 }],
            "the response says what was clamped"
        );
        let key = response.created.unwrap().key.unwrap();
        assert_eq!((key.rpm_limit, key.effective_rpm_limit), (Some(500), Some(100)));
        assert_eq!(key.effective_tpm_limit, Some(10));
        let group = h
            .groups()
            .update_group(pb::UpdateGroupRequest {
                group: Some(pb::Group { name: w.group.clone(), default_rpm_limit: Some(1_000), ..Default::default() }),
                update_mask: mask(&["default_rpm_limit"]),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(group.clamped.len(), 1);
        assert_eq!(group.group.unwrap().effective_default_rpm_limit, Some(100));
        h.stop().await;
    }

    fn options() -> tollgate_tests::Options {
        let keys = tollgate::KeysSettings { max_rpm: Some(100), max_tpm: Some(1000), ..Default::default() };
        tollgate_tests::Options { keys, ..Default::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        capped(Harness::embedded(options()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn production() {
        if let Some(h) = Harness::production(options()).await {
            capped(h).await;
        }
    }
}
