//! What the binary's integration tests share: a bearer token interceptor and a seeded key.

use tollgate_proto::keys::v1 as keys;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Bearer(pub String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", format!("Bearer {}", self.0).parse().unwrap());
        Ok(request)
    }
}

/// Model `unit`: one credit per token in and out, in group `one` (multiplier 1).
pub const MODEL: &str = "unit";

/// A postpaid account `account` with application `app`, group `one` and model `unit` (made
/// once per server), and one key with `settings`; returns the key's name.
pub async fn seed(channel: &Channel, token: &str, account: &str, settings: keys::Key) -> String {
    let auth = Bearer(token.to_owned());
    keys::account_service_client::AccountServiceClient::with_interceptor(channel.clone(), auth.clone())
        .create_account(keys::CreateAccountRequest {
            account_id: account.into(),
            account: Some(keys::Account {
                display_name: "Seeded".into(),
                unlimited_credit: true,
                ..Default::default()
            }),
            initial_key: None,
        })
        .await
        .unwrap();
    keys::application_service_client::ApplicationServiceClient::with_interceptor(channel.clone(), auth.clone())
        .create_application(keys::CreateApplicationRequest {
            parent: format!("accounts/{account}"),
            application_id: "app".into(),
            application: Some(keys::Application { display_name: "App".into(), ..Default::default() }),
        })
        .await
        .unwrap();
    let _ = keys::group_service_client::GroupServiceClient::with_interceptor(channel.clone(), auth.clone())
        .create_group(keys::CreateGroupRequest {
            group_id: "one".into(),
            group: Some(keys::Group { display_name: "One".into(), price_multiplier: "1".into(), ..Default::default() }),
        })
        .await;
    let _ = keys::model_service_client::ModelServiceClient::with_interceptor(channel.clone(), auth.clone())
        .create_model(keys::CreateModelRequest {
            model_id: MODEL.into(),
            model: Some(keys::Model {
                capability: keys::Capability::Text as i32,
                input_price: 1_000_000,
                output_price: 1_000_000,
                ..Default::default()
            }),
        })
        .await;
    let created = keys::key_service_client::KeyServiceClient::with_interceptor(channel.clone(), auth)
        .create_key(keys::CreateKeyRequest {
            parent: format!("accounts/{account}"),
            key: Some(keys::Key {
                application: format!("accounts/{account}/applications/app"),
                display_name: "Seeded key".into(),
                group: "groups/one".into(),
                ..settings
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    created.created.unwrap().key.unwrap().name
}
