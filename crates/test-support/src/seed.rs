//! Seeding a running Tollgate through the keys service's own API: the one fixture the
//! black-box tests, the fault tests and the benchmark make their catalog, accounts and keys
//! with.

use tollgate_proto::keys::v1 as pb;
use tonic::Status;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` (and optionally an actor) to every call.
#[derive(Clone)]
pub struct Bearer {
    token: String,
    actor: Option<String>,
}

impl Bearer {
    /// Just this token, no actor.
    pub fn token(token: &str) -> Self {
        Self { token: token.to_owned(), actor: None }
    }

    /// This token, and `actor` named for the audit log.
    pub fn acting(token: &str, actor: &str) -> Self {
        Self { token: token.to_owned(), actor: Some(actor.to_owned()) }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().expect("ascii token"));
        if let Some(actor) = &self.actor {
            request.metadata_mut().insert("x-tollgate-actor", actor.parse().expect("ascii actor"));
        }
        Ok(request)
    }
}

/// A channel whose calls carry a bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Admin clients of the keys service, and the seeding steps made of them.
#[derive(Clone)]
pub struct Seeder {
    channel: Channel,
    bearer: Bearer,
}

impl Seeder {
    pub fn new(channel: Channel, bearer: Bearer) -> Self {
        Self { channel, bearer }
    }

    pub fn accounts(&self) -> pb::account_service_client::AccountServiceClient<Authed> {
        pb::account_service_client::AccountServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn applications(&self) -> pb::application_service_client::ApplicationServiceClient<Authed> {
        pb::application_service_client::ApplicationServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    pub fn groups(&self) -> pb::group_service_client::GroupServiceClient<Authed> {
        pb::group_service_client::GroupServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn models(&self) -> pb::model_service_client::ModelServiceClient<Authed> {
        pb::model_service_client::ModelServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn keys(&self) -> pb::key_service_client::KeyServiceClient<Authed> {
        pb::key_service_client::KeyServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// A text model priced per million tokens in and out.
    pub async fn model(&self, id: &str, input_price: i64, output_price: i64) -> Result<pb::Model, Status> {
        let model =
            pb::Model { capability: pb::Capability::Text as i32, input_price, output_price, ..Default::default() };
        let request = pb::CreateModelRequest { model_id: id.into(), model: Some(model) };
        Ok(self.models().create_model(request).await?.into_inner().model.unwrap_or_default())
    }

    /// A group with a price multiplier (`"1"`, `"1.5"`) and optional default RPM.
    pub async fn group(&self, id: &str, multiplier: &str, default_rpm_limit: Option<i64>) -> Result<pb::Group, Status> {
        let group = pb::Group {
            display_name: format!("Group {id}"),
            price_multiplier: multiplier.into(),
            default_rpm_limit,
            ..Default::default()
        };
        let request = pb::CreateGroupRequest { group_id: id.into(), group: Some(group) };
        Ok(self.groups().create_group(request).await?.into_inner().group.unwrap_or_default())
    }

    /// An account; a postpaid one has no balance limit.
    pub async fn account(&self, id: &str, postpaid: bool) -> Result<(), Status> {
        let account =
            pb::Account { display_name: format!("Account {id}"), unlimited_credit: postpaid, ..Default::default() };
        let request = pb::CreateAccountRequest { account_id: id.into(), account: Some(account), initial_key: None };
        self.accounts().create_account(request).await?;
        Ok(())
    }

    /// An application of an account; returns its name.
    pub async fn application(&self, account_id: &str, id: &str) -> Result<String, Status> {
        let request = pb::CreateApplicationRequest {
            parent: format!("accounts/{account_id}"),
            application_id: id.into(),
            application: Some(pb::Application { display_name: format!("Application {id}"), ..Default::default() }),
        };
        let created = self.applications().create_application(request).await?.into_inner();
        Ok(created.application.unwrap_or_default().name)
    }

    /// `quantity` keys of `account` (`accounts/{id}`) with the settings of `key` (its
    /// application and group included); returns each one's name and secret.
    pub async fn keys_like(
        &self,
        account: &str,
        key: pb::Key,
        quantity: usize,
    ) -> Result<Vec<(String, String)>, Status> {
        let mut created = Vec::with_capacity(quantity);
        let mut left = quantity;
        while left > 0 {
            let batch = left.min(100);
            let request = pb::BatchCreateKeysRequest {
                parent: account.into(),
                key: Some(key.clone()),
                quantity: batch as i32,
                ..Default::default()
            };
            let response = self.keys().batch_create_keys(request).await?.into_inner();
            created.extend(response.created.into_iter().map(|c| (c.key.map(|k| k.name).unwrap_or_default(), c.secret)));
            left -= batch;
        }
        Ok(created)
    }
}
