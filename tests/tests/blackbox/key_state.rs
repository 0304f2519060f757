//! Key-state snapshots: written through on every change, versioned, readable by secret hash,
//! announced to authz replicas, and pushed later when the cache was down.

use std::time::Duration;

use prost::Message;
use redis::AsyncCommands;
use tokio_stream::StreamExt;
use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{create_key, mask, world};
use tollgate_tests::{Harness, on_both_backends};

on_both_backends!(snapshots_follow_key_group_and_account_changes);

async fn state_of(h: &Harness, secret: &str) -> pb::KeyState {
    let response = h.key_state().get_key_state(pb::GetKeyStateRequest { secret_hash: h.secret_hash(secret) }).await;
    response.unwrap().into_inner().state.unwrap()
}

/// The snapshot Redis holds for a secret (production only).
async fn cached_state(h: &Harness, secret: &str) -> Option<pb::KeyState> {
    let (_, prefix) = h.redis.as_ref()?;
    let mut conn = h.redis_connection()?;
    let key = format!("{prefix}:ks:{}", hex::encode(h.secret_hash(secret)));
    let bytes: Option<Vec<u8>> = conn.hget(key, "s").await.unwrap();
    bytes.map(|b| pb::KeyState::decode(b.as_slice()).unwrap())
}

async fn snapshots_follow_key_group_and_account_changes(h: &Harness) {
    let w = world(h, "snap").await;
    let (key, secret) = create_key(
        h,
        &w,
        pb::Key {
            quota: Some(5_000),
            ip_allowlist: vec!["10.0.0.0/8".into()],
            capabilities: vec![pb::Capability::Text as i32],
            ..w.key("Snapshotted")
        },
    )
    .await;
    let state = state_of(h, &secret).await;
    assert_eq!(state.key_id, key.name.rsplit('/').next().unwrap());
    assert_eq!((state.account_id.as_str(), state.application_id.as_str()), ("snap", "web"));
    assert_eq!((state.group_id.as_str(), state.price_multiplier.as_str()), ("g-snap", "1.5"));
    assert!(state.enabled && !state.deleted && state.any_model);
    assert_eq!(state.quota, Some(5_000));
    assert_eq!(state.rpm_limit, Some(60));
    assert_eq!(state.ip_allowlist, ["10.0.0.0/8"]);
    assert_eq!(state.account_credit_limit, Some(0), "prepaid by default");
    if h.redis.is_some() {
        assert_eq!(cached_state(h, &secret).await.as_ref(), Some(&state), "written through at creation");
    }

    // A key change is in the cache by the time UpdateKey returns.
    h.keys()
        .update_key(pb::UpdateKeyRequest {
            key: Some(pb::Key { name: key.name.clone(), enabled: Some(false), ..Default::default() }),
            update_mask: mask(&["enabled"]),
            expire_after: None,
        })
        .await
        .unwrap();
    let disabled = state_of(h, &secret).await;
    assert!(!disabled.enabled);
    assert!(disabled.version > state.version);
    if h.redis.is_some() {
        assert!(!cached_state(h, &secret).await.unwrap().enabled);
    }

    // Group and account changes reach every key of theirs.
    h.groups()
        .update_group(pb::UpdateGroupRequest {
            group: Some(pb::Group {
                name: w.group.clone(),
                price_multiplier: "2".into(),
                allowed_models: vec![w.model.clone()],
                ..Default::default()
            }),
            update_mask: mask(&["price_multiplier", "allowed_models"]),
        })
        .await
        .unwrap();
    h.accounts()
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account { name: w.account.clone(), unlimited_credit: true, ..Default::default() }),
            update_mask: mask(&["unlimited_credit"]),
        })
        .await
        .unwrap();
    let after = state_of(h, &secret).await;
    assert_eq!(after.price_multiplier, "2");
    assert!(!after.any_model);
    assert_eq!(after.allowed_models, std::slice::from_ref(&w.model));
    assert_eq!(after.account_credit_limit, None, "postpaid");
    assert!(after.version > disabled.version);
    if h.redis.is_some() {
        assert_eq!(cached_state(h, &secret).await.as_ref(), Some(&after));
    }
}

mod production_only {
    use super::*;
    use tollgate_tests::Options;

    /// Invalidations go out on the Redis channel; a lost snapshot is repaired on read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalidations_are_published_and_reads_repair_the_cache() {
        let Some(h) = Harness::production(Options::default()).await else { return };
        let w = world(&h, "inval").await;
        let (key, secret) = create_key(&h, &w, w.key("Watched")).await;
        let (url, prefix) = h.redis.clone().unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(format!("{prefix}:invalidations")).await.unwrap();
        h.keys()
            .update_key(pb::UpdateKeyRequest {
                key: Some(pb::Key { name: key.name.clone(), display_name: "Renamed".into(), ..Default::default() }),
                update_mask: mask(&["display_name"]),
                expire_after: None,
            })
            .await
            .unwrap();
        let mut messages = pubsub.on_message();
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next()).await.unwrap().unwrap();
        let payload: String = message.get_payload().unwrap();
        assert_eq!(payload, format!("k:{}", hex::encode(h.secret_hash(&secret))));
        drop(messages);

        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let cache_key = format!("{prefix}:ks:{}", hex::encode(h.secret_hash(&secret)));
        let _: () = conn.del(&cache_key).await.unwrap();
        assert!(cached_state(&h, &secret).await.is_none());
        state_of(&h, &secret).await;
        assert!(cached_state(&h, &secret).await.is_some(), "GetKeyState put the snapshot back");
        h.stop().await;
    }

    /// Changes committed while Redis is down are pushed once it is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_made_while_redis_is_down_are_pushed_when_it_returns() {
        let Some(mut redis) = tollgate_test_support::PrivateRedis::start().await else { return };
        let options = Options { redis_url: Some(redis.url()), ..Default::default() };
        let Some(h) = Harness::production(options).await else { return };
        let w = world(&h, "outage").await;
        let (key, secret) = create_key(&h, &w, w.key("Survivor")).await;
        assert!(cached_state(&h, &secret).await.unwrap().enabled);

        redis.kill();
        h.keys()
            .update_key(pb::UpdateKeyRequest {
                key: Some(pb::Key { name: key.name.clone(), enabled: Some(false), ..Default::default() }),
                update_mask: mask(&["enabled"]),
                expire_after: None,
            })
            .await
            .expect("the change commits even while the cache is down");
        redis.restart().await.unwrap();
        // The restarted Redis is empty; the background loop pushes the pending change.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(state) = cached_state(&h, &secret).await {
                assert!(!state.enabled);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the pending change was never pushed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        h.stop().await;
    }
}
