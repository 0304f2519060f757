//! Server plumbing: admin authentication, health, reflection (v1 and v1alpha), graceful drain.

use std::time::Duration;

use tokio_stream::StreamExt;
use tollgate_proto::keys::v1 as pb;
use tollgate_tests::{Harness, Options, on_both_backends};
use tonic::Code;

on_both_backends!(management_rpcs_need_the_admin_token, health_and_reflection_are_open);

async fn management_rpcs_need_the_admin_token(h: &Harness) {
    let anonymous = pb::account_service_client::AccountServiceClient::new(h.channel.clone());
    let status = crate::assert_code(
        anonymous.clone().list_accounts(pb::ListAccountsRequest::default()).await,
        Code::Unauthenticated,
    );
    assert!(!status.message().contains(&h.admin_token));

    let mut wrong =
        pb::key_service_client::KeyServiceClient::with_interceptor(h.channel.clone(), |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", "Bearer not-the-token".parse().unwrap());
            Ok(r)
        });
    crate::assert_code(
        wrong.get_key(pb::GetKeyRequest { name: "accounts/a/keys/b".into() }).await,
        Code::Unauthenticated,
    );
    let mut internal = pb::key_state_service_client::KeyStateServiceClient::new(h.channel.clone());
    crate::assert_code(internal.get_model_catalog(pb::GetModelCatalogRequest {}).await, Code::Unauthenticated);
    let mut audit = pb::audit_service_client::AuditServiceClient::new(h.channel.clone());
    crate::assert_code(audit.list_audit_events(pb::ListAuditEventsRequest::default()).await, Code::Unauthenticated);
    // With the token it works.
    h.accounts().list_accounts(pb::ListAccountsRequest::default()).await.unwrap();
}

async fn health_and_reflection_are_open(h: &Harness) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    for service in ["", "tollgate.keys.v1.KeyService", "tollgate.keys.v1.AccountService"] {
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }

    use tonic_reflection::pb::v1 as reflection;
    let mut client = reflection::server_reflection_client::ServerReflectionClient::new(h.channel.clone());
    let request = reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(reflection::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(reflection::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "tollgate.keys.v1.AccountService",
        "tollgate.keys.v1.ApplicationService",
        "tollgate.keys.v1.GroupService",
        "tollgate.keys.v1.ModelService",
        "tollgate.keys.v1.KeyService",
        "tollgate.keys.v1.AuditService",
        "tollgate.keys.v1.KeyStateService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }

    // Older clients (evans) speak v1alpha; describing a symbol works there too.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut old = alpha::server_reflection_client::ServerReflectionClient::new(h.channel.clone());
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "tollgate.keys.v1.KeyService".into(),
        )),
    };
    let mut stream = old.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = stream.next().await.unwrap().unwrap();
    assert!(matches!(
        response.message_response,
        Some(alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()
    ));
}

/// On shutdown, health turns NOT_SERVING while the server still answers for the drain period,
/// then the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_with_health_not_serving() {
    let h = Harness::embedded(Options { drain: Duration::from_millis(1500), ..Default::default() }).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    h.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "tollgate.keys.v1.KeyService".into() })
        .await
        .expect("still answering while draining")
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
    h.accounts().list_accounts(pb::ListAccountsRequest::default()).await.expect("in-drain calls are served");
    assert!(!h.stopped());
    h.stop().await;
}
