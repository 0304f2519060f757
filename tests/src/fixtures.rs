//! Building blocks for tests: an account with an application, a group and a model.

use prost_types::FieldMask;
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as pb;
use tollgate_proto::metering::v1 as metering;

use crate::Harness;

/// An account and what a key needs, all made fresh for one test.
#[derive(Debug, Clone)]
pub struct World {
    pub account_id: String,
    /// `accounts/{account}`.
    pub account: String,
    /// `accounts/{account}/applications/web`.
    pub application: String,
    /// `groups/g-{account}`.
    pub group: String,
    /// A catalog model id, `m-{account}`.
    pub model: String,
}

/// Makes an account `account_id` with application `web`, group `g-{account_id}` (multiplier
/// 1.5, default RPM 60) and text model `m-{account_id}`.
pub async fn world(h: &Harness, account_id: &str) -> World {
    let seed = h.seeder();
    seed.account(account_id, false).await.expect("create account");
    let application = seed.application(account_id, "web").await.expect("create application");
    let model = format!("m-{account_id}");
    seed.model(&model, 1_000_000, 2_000_000).await.expect("create model");
    let group = seed.group(&format!("g-{account_id}"), "1.5", Some(60)).await.expect("create group");
    World {
        account_id: account_id.into(),
        account: format!("accounts/{account_id}"),
        application,
        group: group.name,
        model,
    }
}

impl World {
    /// Settings of a plain key of this world.
    pub fn key(&self, display_name: &str) -> pb::Key {
        pb::Key {
            application: self.application.clone(),
            display_name: display_name.into(),
            group: self.group.clone(),
            ..Default::default()
        }
    }

    /// An Authorize request of `secret` for this world's model: text, from 203.0.113.9, 100
    /// estimated tokens, a fresh request id.
    pub fn call(&self, secret: &str) -> authz::AuthorizeRequest {
        authz::AuthorizeRequest {
            api_key: secret.into(),
            model: self.model.clone(),
            capability: pb::Capability::Text as i32,
            client_ip: "203.0.113.9".into(),
            estimated_tokens: 100,
            request_id: format!("req-{}", tollgate_core::ids::new_id()),
        }
    }

    /// A successful call's usage report for `key` and this world's model: `input_tokens` in,
    /// nothing out, ended when it arrives.
    pub fn report(&self, key: &pb::Key, request_id: &str, input_tokens: i64) -> metering::UsageReport {
        metering::UsageReport {
            request_id: request_id.into(),
            key: key.name.clone(),
            model: self.model.clone(),
            input_tokens,
            outcome: metering::UsageOutcome::Success as i32,
            ..Default::default()
        }
    }

    /// A CreateKey request for `key` under this world's account.
    pub fn create(&self, key: pb::Key) -> pb::CreateKeyRequest {
        pb::CreateKeyRequest { parent: self.account.clone(), key: Some(key), ..Default::default() }
    }
}

/// Creates a key and returns it with its secret.
pub async fn create_key(h: &Harness, world: &World, key: pb::Key) -> (pb::Key, String) {
    let created = h.keys().create_key(world.create(key)).await.expect("create key").into_inner();
    let created = created.created.expect("created");
    (created.key.expect("key"), created.secret)
}

/// An update mask of these paths.
pub fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

/// [`world`] with a postpaid account (no balance limit), so keys without a quota are not
/// bounded by money.
pub async fn postpaid_world(h: &Harness, account_id: &str) -> World {
    let w = world(h, account_id).await;
    h.accounts()
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account { name: w.account.clone(), unlimited_credit: true, ..Default::default() }),
            update_mask: mask(&["unlimited_credit"]),
        })
        .await
        .expect("make the account postpaid");
    w
}
