//! Accounts, applications, groups and models through their RPCs.

use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{create_key, mask, world};
use tollgate_tests::{Harness, on_both_backends};
use tonic::Code;

use crate::assert_code;

on_both_backends!(accounts_crud_and_pages, applications_crud, groups_crud, models_crud, audit_lists_by_account);

async fn accounts_crud_and_pages(h: &Harness) {
    let mut accounts = h.accounts();
    let created = accounts
        .create_account(pb::CreateAccountRequest {
            account_id: "postpaid".into(),
            account: Some(pb::Account { display_name: "Big Co".into(), unlimited_credit: true, ..Default::default() }),
            initial_key: None,
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(created.name, "accounts/postpaid");
    assert!(created.unlimited_credit);
    assert_eq!(created.credit_limit, 0);
    let duplicate = accounts
        .create_account(pb::CreateAccountRequest {
            account_id: "postpaid".into(),
            account: Some(pb::Account { display_name: "Again".into(), ..Default::default() }),
            initial_key: None,
        })
        .await;
    assert_code(duplicate, Code::AlreadyExists);
    let generated = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account { display_name: "Anon".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert!(tollgate_core::names::parse_account(&generated.name).is_some());

    let updated = accounts
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account {
                name: "accounts/postpaid".into(),
                display_name: "Bigger Co".into(),
                credit_limit: 5_000,
                unlimited_credit: false,
                ..Default::default()
            }),
            update_mask: mask(&["credit_limit", "unlimited_credit"]),
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(
        (updated.display_name.as_str(), updated.credit_limit, updated.unlimited_credit),
        ("Big Co", 5_000, false)
    );
    let seconds = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(seconds(&updated.update_time) >= seconds(&created.update_time));
    let got = accounts.get_account(pb::GetAccountRequest { name: "accounts/postpaid".into() }).await.unwrap();
    assert_eq!(got.into_inner().account.unwrap(), updated);
    assert_code(accounts.get_account(pb::GetAccountRequest { name: "accounts/nobody".into() }).await, Code::NotFound);

    for i in 0..5 {
        accounts
            .create_account(pb::CreateAccountRequest {
                account_id: format!("page-{i}"),
                account: Some(pb::Account { display_name: format!("Page {i}"), ..Default::default() }),
                initial_key: None,
            })
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = accounts
            .list_accounts(pb::ListAccountsRequest { page_size: 2, page_token: token })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.accounts.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names.len(), 7);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "ordered by id");
}

async fn applications_crud(h: &Harness) {
    let w = world(h, "apps").await;
    let mut apps = h.applications();
    let updated = apps
        .update_application(pb::UpdateApplicationRequest {
            application: Some(pb::Application {
                name: w.application.clone(),
                display_name: "Renamed".into(),
                description: "What it is for".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name", "description"]),
        })
        .await
        .unwrap()
        .into_inner()
        .application
        .unwrap();
    assert_eq!((updated.display_name.as_str(), updated.description.as_str()), ("Renamed", "What it is for"));
    let listed = apps
        .list_applications(pb::ListApplicationsRequest { parent: w.account.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.applications, std::slice::from_ref(&updated));
    let (key, _) = create_key(h, &w, w.key("Blocks delete")).await;
    let refused = apps.delete_application(pb::DeleteApplicationRequest { name: w.application.clone() }).await;
    assert_code(refused, Code::FailedPrecondition);
    h.keys().delete_key(pb::DeleteKeyRequest { name: key.name }).await.unwrap();
    apps.delete_application(pb::DeleteApplicationRequest { name: w.application.clone() }).await.unwrap();
    assert_code(apps.get_application(pb::GetApplicationRequest { name: w.application.clone() }).await, Code::NotFound);
    // A key cannot be issued to a deleted application.
    assert_code(h.keys().create_key(w.create(w.key("Orphan"))).await, Code::NotFound);
    let unknown_parent = pb::ListApplicationsRequest { parent: "accounts/ghost".into(), ..Default::default() };
    assert_code(apps.list_applications(unknown_parent).await, Code::NotFound);
}

async fn groups_crud(h: &Harness) {
    let w = world(h, "groups").await;
    let mut groups = h.groups();
    let group =
        groups.get_group(pb::GetGroupRequest { name: w.group.clone() }).await.unwrap().into_inner().group.unwrap();
    assert_eq!(group.price_multiplier, "1.5");
    assert_eq!(group.default_rpm_limit, Some(60));
    let updated = groups
        .update_group(pb::UpdateGroupRequest {
            group: Some(pb::Group {
                name: w.group.clone(),
                price_multiplier: "0.75".into(),
                allowed_models: vec![w.model.clone()],
                default_tpm_limit: Some(9_000),
                ..Default::default()
            }),
            update_mask: mask(&["price_multiplier", "allowed_models", "default_rpm_limit", "default_tpm_limit"]),
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    assert_eq!(updated.price_multiplier, "0.75");
    assert_eq!(updated.allowed_models, std::slice::from_ref(&w.model));
    assert_eq!((updated.default_rpm_limit, updated.default_tpm_limit), (None, Some(9_000)));
    let listed = groups.list_groups(pb::ListGroupsRequest::default()).await.unwrap().into_inner().groups;
    assert!(listed.contains(&updated));

    let (key, _) = create_key(h, &w, w.key("Member")).await;
    assert_code(groups.delete_group(pb::DeleteGroupRequest { name: w.group.clone() }).await, Code::FailedPrecondition);
    h.keys().delete_key(pb::DeleteKeyRequest { name: key.name }).await.unwrap();
    groups.delete_group(pb::DeleteGroupRequest { name: w.group.clone() }).await.unwrap();
    assert_code(groups.get_group(pb::GetGroupRequest { name: w.group.clone() }).await, Code::NotFound);
    let status = assert_code(h.keys().create_key(w.create(w.key("No group"))).await, Code::InvalidArgument);
    assert_eq!(crate::violated_fields(&status), ["key.group"]);
}

async fn models_crud(h: &Harness) {
    let mut models = h.models();
    let model = models
        .create_model(pb::CreateModelRequest {
            model_id: "openai/gpt-4o-mini".into(),
            model: Some(pb::Model {
                capability: pb::Capability::Text as i32,
                input_price: 75_000,
                output_price: 300_000,
                cached_input_price: Some(37_500),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(model.name, "models/openai/gpt-4o-mini");
    assert_eq!(model.display_name, "openai/gpt-4o-mini");
    assert_eq!((model.input_price_usd.as_str(), model.output_price_usd.as_str()), ("0.15", "0.6"));
    let got = models.get_model(pb::GetModelRequest { name: model.name.clone() }).await.unwrap().into_inner().model;
    assert_eq!(got.as_ref(), Some(&model));
    let updated = models
        .update_model(pb::UpdateModelRequest {
            model: Some(pb::Model {
                name: model.name.clone(),
                capability: pb::Capability::WebSearch as i32,
                output_price: 400_000,
                ..Default::default()
            }),
            update_mask: mask(&["capability", "output_price", "cached_input_price"]),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(updated.capability, pb::Capability::WebSearch as i32);
    assert_eq!((updated.output_price, updated.cached_input_price), (400_000, None));
    let catalog = h.key_state().get_model_catalog(pb::GetModelCatalogRequest {}).await.unwrap().into_inner();
    let entry = catalog.models.iter().find(|m| m.model_id == "openai/gpt-4o-mini").unwrap();
    assert_eq!(entry.cached_input_price, 75_000, "no cached price: the input price");
    let dup = pb::CreateModelRequest {
        model_id: "openai/gpt-4o-mini".into(),
        model: Some(pb::Model { capability: pb::Capability::Text as i32, ..Default::default() }),
    };
    assert_code(models.create_model(dup).await, Code::AlreadyExists);
    models.delete_model(pb::DeleteModelRequest { name: model.name.clone() }).await.unwrap();
    assert_code(models.get_model(pb::GetModelRequest { name: model.name.clone() }).await, Code::NotFound);
    let listed = models.list_models(pb::ListModelsRequest::default()).await.unwrap().into_inner().models;
    assert!(listed.iter().all(|m| m.name != model.name));
}

async fn audit_lists_by_account(h: &Harness) {
    let a = world(h, "audit-a").await;
    world(h, "audit-b").await;
    create_key(h, &a, a.key("Audited")).await;
    let events = h
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest { parent: a.account.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["CreateKey", "CreateApplication", "CreateAccount"]);
    assert!(events.iter().all(|e| e.account == a.account));
    let first = h
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest { page_size: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.events.len(), 2);
    let second = h
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(second.events[0].id < first.events[1].id, "the next page continues with older events");
    let groups_and_models: Vec<_> = h
        .audit()
        .list_audit_events(pb::ListAuditEventsRequest { resource: "groups/g-audit-a".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(groups_and_models[0].action, "CreateGroup");
    assert_eq!(groups_and_models[0].account, "");
}
