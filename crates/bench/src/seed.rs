//! The benchmark's data, made with the shared seeding fixture through the keys service's own
//! API.

use tollgate_proto::keys::v1 as pb;
use tollgate_test_support::seed::Seeder;
pub use tollgate_test_support::seed::{Authed, Bearer};
use tonic::transport::Channel;

/// The model every benchmark call asks for.
pub const MODEL: &str = "bench-model";

/// The benchmark's seeding steps.
#[derive(Clone)]
pub struct Admin {
    seed: Seeder,
}

impl Admin {
    pub fn new(channel: Channel, admin_token: &str) -> Self {
        Self { seed: Seeder::new(channel, Bearer::token(admin_token)) }
    }

    pub fn keys(&self) -> pb::key_service_client::KeyServiceClient<Authed> {
        self.seed.keys()
    }

    /// The catalog model and two groups: `bench` (no defaults) and `free` (no defaults, for
    /// keys with nothing to count).
    pub async fn catalog(&self) -> anyhow::Result<()> {
        self.seed.model(MODEL, 1_000_000, 3_000_000).await?;
        self.seed.model("other-model", 0, 0).await?;
        for id in ["bench", "free"] {
            self.seed.group(id, "", None).await?;
        }
        Ok(())
    }

    /// An account with one application; postpaid accounts have no balance limit.
    pub async fn account(&self, id: &str, postpaid: bool) -> anyhow::Result<String> {
        self.seed.account(id, postpaid).await?;
        Ok(self.seed.application(id, "bench").await?)
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
        let key = pb::Key { application: application.into(), ..key };
        Ok(self.seed.keys_like(account, key, quantity).await?)
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
