//! What the binary's integration tests share: a seeded key, made with the one seeding fixture.

use tollgate_proto::keys::v1 as keys;
use tollgate_test_support::seed::{Bearer, Seeder};
use tonic::transport::Channel;

/// Model `unit`: one credit per token in and out, in group `one` (multiplier 1).
pub const MODEL: &str = "unit";

/// A postpaid account `account` with application `app`, group `one` and model `unit` (made
/// once per server), and one key with `settings`; returns the key's name.
pub async fn seed(channel: &Channel, token: &str, account: &str, settings: keys::Key) -> String {
    let seed = Seeder::new(channel.clone(), Bearer::token(token));
    seed.account(account, true).await.unwrap();
    let application = seed.application(account, "app").await.unwrap();
    // Already there when a second account is seeded on the same server.
    let _ = seed.group("one", "1", None).await;
    let _ = seed.model(MODEL, 1_000_000, 1_000_000).await;
    let key = keys::Key { application, display_name: "Seeded key".into(), group: "groups/one".into(), ..settings };
    let mut created = seed.keys_like(&format!("accounts/{account}"), key, 1).await.unwrap();
    created.remove(0).0
}
