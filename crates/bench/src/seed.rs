//! The benchmark's data, made through the keys service's own API.

use tollgate_proto::keys::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Authed = InterceptedService<Channel, Bearer>;

/// Adds the admin token.
#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Admin clients of the keys service.
#[derive(Clone)]
pub struct Admin {
    channel: Channel,
    bearer: Bearer,
}

/// The model every benchmark call asks for.
pub const MODEL: &str = "bench-model";

impl Admin {
    pub fn new(channel: Channel, admin_token: &str) -> Self {
        Self { channel, bearer: Bearer(format!("Bearer {admin_token}").parse().expect("ascii token")) }
    }

    pub fn keys(&self) -> pb::key_service_client::KeyServiceClient<Authed> {
        pb::key_service_client::KeyServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// The catalog model and two groups: `bench` (no defaults) and `free` (no defaults, for
    /// keys with nothing to count).
    pub async fn catalog(&self) -> anyhow::Result<()> {
        let mut models =
            pb::model_service_client::ModelServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone());
        models
            .create_model(pb::CreateModelRequest {
                model_id: MODEL.into(),
                model: Some(pb::Model {
                    capability: pb::Capability::Text as i32,
                    input_price: 1_000_000,
                    output_price: 3_000_000,
                    ..Default::default()
                }),
            })
            .await?;
        models
            .create_model(pb::CreateModelRequest {
                model_id: "other-model".into(),
                model: Some(pb::Model { capability: pb::Capability::Text as i32, ..Default::default() }),
            })
            .await?;
        let mut groups =
            pb::group_service_client::GroupServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone());
        for id in ["bench", "free"] {
            groups
                .create_group(pb::CreateGroupRequest {
                    group_id: id.into(),
                    group: Some(pb::Group { display_name: format!("Group {id}"), ..Default::default() }),
                })
                .await?;
        }
        Ok(())
    }

    /// An account with one application; postpaid accounts have no balance limit.
    pub async fn account(&self, id: &str, postpaid: bool) -> anyhow::Result<String> {
        let mut accounts = pb::account_service_client::AccountServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        );
        accounts
            .create_account(pb::CreateAccountRequest {
                account_id: id.into(),
                account: Some(pb::Account {
                    display_name: format!("Bench {id}"),
                    unlimited_credit: postpaid,
                    ..Default::default()
                }),
                initial_key: None,
            })
            .await?;
        let mut apps = pb::application_service_client::ApplicationServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        );
        apps.create_application(pb::CreateApplicationRequest {
            parent: format!("accounts/{id}"),
            application_id: "bench".into(),
            application: Some(pb::Application { display_name: "Bench".into(), ..Default::default() }),
        })
        .await?;
        Ok(format!("accounts/{id}/applications/bench"))
    }

    /// `quantity` keys with these settings; returns their secrets.
    pub async fn keys_with(
        &self,
        account: &str,
        application: &str,
        key: pb::Key,
        quantity: usize,
    ) -> anyhow::Result<Vec<String>> {
        let named = self.named_keys_with(account, application, key, quantity).await?;
        Ok(named.into_iter().map(|(_, secret)| secret).collect())
    }

    /// `quantity` keys with these settings; returns their names and secrets.
    pub async fn named_keys_with(
        &self,
        account: &str,
        application: &str,
        key: pb::Key,
        quantity: usize,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut secrets = Vec::with_capacity(quantity);
        let mut left = quantity;
        while left > 0 {
            let batch = left.min(100);
            let response = self
                .keys()
                .batch_create_keys(pb::BatchCreateKeysRequest {
                    parent: account.into(),
                    key: Some(pb::Key { application: application.into(), ..key.clone() }),
                    quantity: batch as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            secrets.extend(response.created.into_iter().map(|c| (c.key.map(|k| k.name).unwrap_or_default(), c.secret)));
            left -= batch;
        }
        Ok(secrets)
    }
}

/// Settings of a key with every counter on and never reached.
pub fn counted_key(name: &str) -> pb::Key {
    pb::Key {
        display_name: name.into(),
        group: "groups/bench".into(),
        quota: Some(1_000_000_000_000_000),
        daily_budget: Some(1_000_000_000_000_000),
        monthly_budget: Some(1_000_000_000_000_000),
        rpm_limit: Some(1_000_000_000),
        tpm_limit: Some(1_000_000_000_000),
        ..Default::default()
    }
}
