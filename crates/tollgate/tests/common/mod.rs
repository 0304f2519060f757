//! What the binary's integration tests share: a seeded key, made with the one seeding
//! fixture, and waiting for a server to say SERVING. Each test binary uses part of it.
#![allow(dead_code)]

use tollgate_proto::keys::v1 as keys;
use tollgate_test_support::seed::{Bearer, Seeder};
use tonic::transport::Channel;

/// A channel to the server at `address` (`host:port`), once its health says SERVING.
pub async fn wait_serving(address: &str) -> Channel {
    let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..600 {
        let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        if check.is_ok_and(|r| r.get_ref().status == 1) {
            return channel;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{address} did not become ready");
}

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
