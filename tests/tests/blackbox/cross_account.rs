//! Account isolation: account A's resources named under account B are NOT_FOUND through
//! every RPC, and nothing of A changes.

use prost_types::FieldMask;
use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{create_key, world};
use tollgate_tests::{Harness, on_both_backends};
use tonic::{Code, Status};

on_both_backends!(another_accounts_resources_are_not_found);

fn key_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

async fn another_accounts_resources_are_not_found(h: &Harness) {
    let a = world(h, "tenant-a").await;
    let b = world(h, "tenant-b").await;
    let a_only = h
        .applications()
        .create_application(pb::CreateApplicationRequest {
            parent: a.account.clone(),
            application_id: "a-only".into(),
            application: Some(pb::Application { display_name: "A only".into(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    let (a_key, a_secret) = create_key(h, &a, a.key("A's key")).await;
    create_key(h, &b, b.key("B's key")).await;

    // A's key and application, addressed as if they were B's.
    let stolen_key = format!("{}/keys/{}", b.account, key_id(&a_key.name));
    let stolen_app = format!("{}/applications/a-only", b.account);
    let mask = |p: &str| Some(FieldMask { paths: vec![p.into()] });

    let attempts: Vec<(&str, Result<(), Status>)> = vec![
        ("GetKey", h.keys().get_key(pb::GetKeyRequest { name: stolen_key.clone() }).await.map(drop)),
        (
            "UpdateKey",
            h.keys()
                .update_key(pb::UpdateKeyRequest {
                    key: Some(pb::Key { name: stolen_key.clone(), enabled: Some(false), ..Default::default() }),
                    update_mask: mask("enabled"),
                    expire_after: None,
                })
                .await
                .map(drop),
        ),
        (
            "RotateKey",
            h.keys().rotate_key(pb::RotateKeyRequest { name: stolen_key.clone(), grace_period: None }).await.map(drop),
        ),
        ("DeleteKey", h.keys().delete_key(pb::DeleteKeyRequest { name: stolen_key.clone() }).await.map(drop)),
        (
            "GetApplication",
            h.applications().get_application(pb::GetApplicationRequest { name: stolen_app.clone() }).await.map(drop),
        ),
        (
            "UpdateApplication",
            h.applications()
                .update_application(pb::UpdateApplicationRequest {
                    application: Some(pb::Application {
                        name: stolen_app.clone(),
                        display_name: "Hijacked".into(),
                        ..Default::default()
                    }),
                    update_mask: mask("display_name"),
                })
                .await
                .map(drop),
        ),
        (
            "DeleteApplication",
            h.applications()
                .delete_application(pb::DeleteApplicationRequest { name: stolen_app.clone() })
                .await
                .map(drop),
        ),
        (
            "CreateKey with A's application under B",
            h.keys()
                .create_key(b.create(pb::Key { application: a.application.clone(), ..b.key("Sneaky") }))
                .await
                .map(drop),
        ),
        (
            "CreateKey with A's application id in B's name",
            h.keys()
                .create_key(b.create(pb::Key { application: stolen_app.clone(), ..b.key("Sneaky") }))
                .await
                .map(drop),
        ),
        (
            "BatchCreateKeys with A's application under B",
            h.keys()
                .batch_create_keys(pb::BatchCreateKeysRequest {
                    parent: b.account.clone(),
                    key: Some(pb::Key { application: a_only.name.clone(), ..b.key("Sneaky") }),
                    quantity: 2,
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "ListKeys filtered by A's application under B",
            h.keys()
                .list_keys(pb::ListKeysRequest {
                    parent: b.account.clone(),
                    application: a.application.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
    ];
    for (what, result) in attempts {
        match result {
            Err(status) if status.code() == Code::NotFound => {
                assert!(!status.message().contains("tenant-a"), "{what}: the error does not reveal A: {status:?}");
            }
            other => panic!("{what}: expected NOT_FOUND, got {other:?}"),
        }
    }

    // B's lists hold nothing of A.
    let b_keys = h.keys().list_keys(pb::ListKeysRequest { parent: b.account.clone(), ..Default::default() }).await;
    let b_keys = b_keys.unwrap().into_inner().keys;
    assert_eq!(b_keys.len(), 1);
    assert!(b_keys.iter().all(|k| k.name.starts_with(&b.account)));
    let b_apps = h
        .applications()
        .list_applications(pb::ListApplicationsRequest { parent: b.account.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert!(b_apps.iter().all(|app| app.name.starts_with(&b.account)));
    let b_events = h
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest { parent: b.account.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(b_events.iter().all(|e| e.resource.starts_with(&b.account) && e.account == b.account));

    // A is untouched.
    let key = h.keys().get_key(pb::GetKeyRequest { name: a_key.name.clone() }).await.unwrap().into_inner().key.unwrap();
    assert_eq!(key, a_key);
    let state = h.key_state().get_key_state(pb::GetKeyStateRequest { secret_hash: h.secret_hash(&a_secret) }).await;
    assert!(state.unwrap().into_inner().state.unwrap().enabled);
    let app = h.applications().get_application(pb::GetApplicationRequest { name: a_only.name.clone() }).await;
    assert_eq!(app.unwrap().into_inner().application.unwrap(), a_only);
}
