//! The table of validation rules: each bad input is INVALID_ARGUMENT with a BadRequest field
//! violation naming the offending field, and never a panic or INTERNAL.

use prost_types::{Duration, Timestamp};
use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{World, create_key, mask, world};
use tollgate_tests::{Harness, on_both_backends};
use tonic::{Code, Status};

on_both_backends!(every_rule_names_its_field);

/// One request of any keys.v1 RPC.
enum Call {
    CreateAccount(pb::CreateAccountRequest),
    UpdateAccount(pb::UpdateAccountRequest),
    ListAccounts(pb::ListAccountsRequest),
    CreateApplication(pb::CreateApplicationRequest),
    CreateGroup(pb::CreateGroupRequest),
    UpdateGroup(pb::UpdateGroupRequest),
    CreateModel(pb::CreateModelRequest),
    UpdateModel(pb::UpdateModelRequest),
    CreateKey(pb::CreateKeyRequest),
    BatchCreateKeys(pb::BatchCreateKeysRequest),
    GetKey(pb::GetKeyRequest),
    ListKeys(pb::ListKeysRequest),
    UpdateKey(pb::UpdateKeyRequest),
    RotateKey(pb::RotateKeyRequest),
    GetKeyState(pb::GetKeyStateRequest),
    ListAuditEvents(pb::ListAuditEventsRequest),
}

async fn run(h: &Harness, call: Call) -> Result<(), Status> {
    match call {
        Call::CreateAccount(r) => h.accounts().create_account(r).await.map(drop),
        Call::UpdateAccount(r) => h.accounts().update_account(r).await.map(drop),
        Call::ListAccounts(r) => h.accounts().list_accounts(r).await.map(drop),
        Call::CreateApplication(r) => h.applications().create_application(r).await.map(drop),
        Call::CreateGroup(r) => h.groups().create_group(r).await.map(drop),
        Call::UpdateGroup(r) => h.groups().update_group(r).await.map(drop),
        Call::CreateModel(r) => h.models().create_model(r).await.map(drop),
        Call::UpdateModel(r) => h.models().update_model(r).await.map(drop),
        Call::CreateKey(r) => h.keys().create_key(r).await.map(drop),
        Call::BatchCreateKeys(r) => h.keys().batch_create_keys(r).await.map(drop),
        Call::GetKey(r) => h.keys().get_key(r).await.map(drop),
        Call::ListKeys(r) => h.keys().list_keys(r).await.map(drop),
        Call::UpdateKey(r) => h.keys().update_key(r).await.map(drop),
        Call::RotateKey(r) => h.keys().rotate_key(r).await.map(drop),
        Call::GetKeyState(r) => h.key_state().get_key_state(r).await.map(drop),
        Call::ListAuditEvents(r) => h.audit().list_audit_events(r).await.map(drop),
    }
}

fn past() -> Timestamp {
    Timestamp { seconds: 946_684_800, nanos: 0 } // 2000-01-01
}

fn cases(w: &World, key_name: &str) -> Vec<(&'static str, Call)> {
    let key = |edit: &dyn Fn(&mut pb::Key)| {
        let mut key = w.key("Valid name");
        edit(&mut key);
        Call::CreateKey(w.create(key))
    };
    let update = |edit: &dyn Fn(&mut pb::Key), paths: &[&str]| {
        let mut key = pb::Key { name: key_name.into(), ..Default::default() };
        edit(&mut key);
        Call::UpdateKey(pb::UpdateKeyRequest { key: Some(key), update_mask: mask(paths), expire_after: None })
    };
    let group = |group_id: &str, edit: &dyn Fn(&mut pb::Group)| {
        let mut group = pb::Group { display_name: "Group".into(), ..Default::default() };
        edit(&mut group);
        Call::CreateGroup(pb::CreateGroupRequest { group_id: group_id.into(), group: Some(group) })
    };
    let model = |model_id: &str, edit: &dyn Fn(&mut pb::Model)| {
        let mut model = pb::Model { capability: pb::Capability::Text as i32, ..Default::default() };
        edit(&mut model);
        Call::CreateModel(pb::CreateModelRequest { model_id: model_id.into(), model: Some(model) })
    };
    let many = |n: usize, item: &str| (0..n).map(|i| format!("{item}{i}")).collect::<Vec<_>>();
    vec![
        // Names: 2–50 characters.
        ("key.display_name", key(&|k| k.display_name = "x".into())),
        ("key.display_name", key(&|k| k.display_name = "x".repeat(51))),
        ("key.display_name", key(&|k| k.display_name = "tab\there".into())),
        ("account.display_name", Call::CreateAccount(pb::CreateAccountRequest::default())),
        (
            "application.display_name",
            Call::CreateApplication(pb::CreateApplicationRequest { parent: w.account.clone(), ..Default::default() }),
        ),
        ("group.display_name", group("vg1", &|g| g.display_name = "y".repeat(60))),
        // IPs and CIDRs.
        ("key.ip_allowlist[1]", key(&|k| k.ip_allowlist = vec!["10.0.0.1".into(), "10.0.0.0/33".into()])),
        ("key.ip_allowlist[0]", key(&|k| k.ip_allowlist = vec!["999.1.1.1".into()])),
        ("key.ip_allowlist[0]", key(&|k| k.ip_allowlist = vec!["example.com".into()])),
        (
            "key.ip_allowlist",
            key(&|k| k.ip_allowlist = many(101, "10.0.0.").iter().map(|_| "10.0.0.1".into()).collect()),
        ),
        ("key.ip_allowlist[0]", update(&|k| k.ip_allowlist = vec!["::g".into()], &["ip_allowlist"])),
        // Unknown references.
        ("key.group", key(&|k| k.group = "groups/missing".into())),
        ("key.group", key(&|k| k.group = "pro".into())),
        ("key.group", key(&|k| k.group = String::new())),
        ("key.allowed_models[0]", key(&|k| k.allowed_models = vec!["unknown-model".into()])),
        ("key.allowed_models[0]", key(&|k| k.allowed_models = vec!["bad model".into()])),
        ("key.allowed_models", key(&|k| k.allowed_models = many(501, "m"))),
        ("key.group", update(&|k| k.group = "groups/missing".into(), &["group"])),
        ("group.allowed_models[0]", group("vg2", &|g| g.allowed_models = vec!["nope".into()])),
        // Capabilities.
        ("key.capabilities[0]", key(&|k| k.capabilities = vec![0])),
        ("key.capabilities[1]", key(&|k| k.capabilities = vec![1, 42])),
        ("model.capability", model("vm1", &|m| m.capability = 0)),
        ("model.capability", model("vm2", &|m| m.capability = 9)),
        // Money and limits.
        ("key.quota", key(&|k| k.quota = Some(-1))),
        ("key.daily_budget", key(&|k| k.daily_budget = Some(-5))),
        ("key.monthly_budget", key(&|k| k.monthly_budget = Some(i64::MAX))),
        ("key.rpm_limit", key(&|k| k.rpm_limit = Some(0))),
        ("key.tpm_limit", key(&|k| k.tpm_limit = Some(-1))),
        ("key.quota", update(&|k| k.quota = Some(-1), &["quota"])),
        ("group.price_multiplier", group("vg3", &|g| g.price_multiplier = "-1".into())),
        ("group.price_multiplier", group("vg4", &|g| g.price_multiplier = "abc".into())),
        ("group.price_multiplier", group("vg5", &|g| g.price_multiplier = "0.0000001".into())),
        ("group.default_rpm_limit", group("vg6", &|g| g.default_rpm_limit = Some(0))),
        ("model.input_price", model("vm3", &|m| m.input_price = -1)),
        ("model.output_price", model("vm4", &|m| m.output_price = -1)),
        ("model.cached_input_price", model("vm5", &|m| m.cached_input_price = Some(-1))),
        (
            "account.credit_limit",
            Call::CreateAccount(pb::CreateAccountRequest {
                account: Some(pb::Account { display_name: "Neg".into(), credit_limit: -1, ..Default::default() }),
                ..Default::default()
            }),
        ),
        // Quantity.
        (
            "quantity",
            Call::BatchCreateKeys(pb::BatchCreateKeysRequest {
                parent: w.account.clone(),
                key: Some(w.key("Batch")),
                quantity: 0,
                ..Default::default()
            }),
        ),
        (
            "quantity",
            Call::BatchCreateKeys(pb::BatchCreateKeysRequest {
                parent: w.account.clone(),
                key: Some(w.key("Batch")),
                quantity: 101,
                ..Default::default()
            }),
        ),
        // Expiry.
        ("key.expire_time", key(&|k| k.expire_time = Some(past()))),
        ("key.expire_time", key(&|k| k.expire_time = Some(Timestamp { seconds: 1, nanos: -5 }))),
        ("key.expire_time", update(&|k| k.expire_time = Some(past()), &["expire_time"])),
        (
            "expire_after",
            Call::CreateKey(pb::CreateKeyRequest {
                expire_after: Some(Duration { seconds: -60, nanos: 0 }),
                ..w.create(w.key("Neg duration"))
            }),
        ),
        (
            "expire_after",
            Call::CreateKey(pb::CreateKeyRequest {
                expire_after: Some(Duration { seconds: 60, nanos: 0 }),
                ..w.create(pb::Key {
                    expire_time: Some(Timestamp { seconds: 4_102_444_800, nanos: 0 }),
                    ..w.key("Both")
                })
            }),
        ),
        // Update masks.
        ("update_mask.paths[1]", update(&|k| k.display_name = "Fine".into(), &["display_name", "secret"])),
        ("update_mask", update(&|_| {}, &[])),
        (
            "update_mask.paths[0]",
            Call::UpdateAccount(pb::UpdateAccountRequest {
                account: Some(pb::Account { name: w.account.clone(), ..Default::default() }),
                update_mask: mask(&["name"]),
            }),
        ),
        (
            "update_mask.paths[0]",
            Call::UpdateGroup(pb::UpdateGroupRequest {
                group: Some(pb::Group { name: w.group.clone(), ..Default::default() }),
                update_mask: mask(&["create_time"]),
            }),
        ),
        (
            "update_mask.paths[0]",
            Call::UpdateModel(pb::UpdateModelRequest {
                model: Some(pb::Model { name: format!("models/{}", w.model), ..Default::default() }),
                update_mask: mask(&["model_id"]),
            }),
        ),
        ("key.enabled", update(&|_| {}, &["enabled"])),
        // Names and ids.
        ("parent", Call::CreateKey(pb::CreateKeyRequest { parent: "acme".into(), ..w.create(w.key("Ok name")) })),
        ("name", Call::GetKey(pb::GetKeyRequest { name: "accounts/a/applications/b".into() })),
        ("key.name", update(&|k| k.name = "keys/x".into(), &["display_name"])),
        ("key.application", key(&|k| k.application = "apps/web".into())),
        ("key.application", key(&|k| k.application = String::new())),
        (
            "account_id",
            Call::CreateAccount(pb::CreateAccountRequest {
                account_id: "Not_Valid".into(),
                account: Some(pb::Account { display_name: "Fine".into(), ..Default::default() }),
                initial_key: None,
            }),
        ),
        ("group_id", group("", &|_| {})),
        ("model_id", model("bad//id", &|_| {})),
        (
            "request_id",
            Call::CreateKey(pb::CreateKeyRequest { request_id: "x".repeat(101), ..w.create(w.key("Ok name")) }),
        ),
        (
            "initial_key.key.group",
            Call::CreateAccount(pb::CreateAccountRequest {
                account: Some(pb::Account { display_name: "With key".into(), ..Default::default() }),
                initial_key: Some(pb::InitialKey {
                    key: Some(pb::Key { display_name: "Key".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        // Pagination.
        ("page_size", Call::ListAccounts(pb::ListAccountsRequest { page_size: -1, ..Default::default() })),
        (
            "page_size",
            Call::ListKeys(pb::ListKeysRequest { parent: w.account.clone(), page_size: 5000, ..Default::default() }),
        ),
        (
            "page_token",
            Call::ListAuditEvents(pb::ListAuditEventsRequest { page_token: "%%%".into(), ..Default::default() }),
        ),
        ("status", Call::ListKeys(pb::ListKeysRequest { parent: w.account.clone(), status: 77, ..Default::default() })),
        // Rotation and internal reads.
        (
            "grace_period",
            Call::RotateKey(pb::RotateKeyRequest {
                name: key_name.into(),
                grace_period: Some(Duration { seconds: -1, nanos: 0 }),
            }),
        ),
        ("secret_hash", Call::GetKeyState(pb::GetKeyStateRequest { secret_hash: vec![1, 2, 3] })),
    ]
}

async fn every_rule_names_its_field(h: &Harness) {
    let w = world(h, "valid").await;
    let (key, _) = create_key(h, &w, w.key("Target")).await;
    let table = cases(&w, &key.name);
    assert!(table.len() > 60);
    for (expected_field, call) in table {
        let status = match run(h, call).await {
            Ok(()) => panic!("{expected_field}: accepted"),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{expected_field}: {status:?}");
        let fields = crate::violated_fields(&status);
        assert!(fields.iter().any(|f| f == expected_field), "{expected_field}: violations were {fields:?}");
        assert!(status.message().contains(expected_field), "{expected_field}: message {:?}", status.message());
    }
    // Nothing of the refused requests was stored.
    let keys = h.keys().list_keys(pb::ListKeysRequest { parent: w.account.clone(), ..Default::default() }).await;
    assert_eq!(keys.unwrap().into_inner().keys, [key]);
}
