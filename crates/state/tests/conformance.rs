//! The same checks against the in-process state and against Redis (a private key prefix on
//! the shared server; skipped without one unless `CI=true`).

use std::time::Duration;

use tollgate_core::SecretHash;
use tollgate_core::time::now_micros;
use tollgate_ports::key_state::{Invalidation, InvalidationBus, KeyStateCache, KeyStateWrite};
use tollgate_state::memory::MemoryState;
use tollgate_state::redis::{RedisConfig, RedisState};
use tollgate_test_support::TestRedis;

trait State: KeyStateCache + InvalidationBus {}
impl<T: KeyStateCache + InvalidationBus> State for T {}

async fn redis_state(redis: Option<TestRedis>) -> Option<(Box<dyn State>, TestRedis)> {
    let redis = redis?;
    let config = RedisConfig::new(&redis.url, &redis.prefix, Duration::from_secs(2));
    Some((Box::new(RedisState::connect(&config).await.unwrap()), redis))
}

tollgate_test_support::conformance_suite!(
    checks: [
        snapshots_keep_the_newest_version,
        expired_entries_vanish,
        catalog_round_trips,
        invalidations_reach_subscribers,
    ],
    adapters: {
        memory => async { Some((Box::new(tollgate_state::memory::MemoryState::new()) as Box<dyn super::State>, ())) },
        redis => super::redis_state(tollgate_test_support::TestRedis::create().await),
        redis_cluster => super::redis_state(tollgate_test_support::TestRedis::on_cluster().await),
    }
);

fn write(hash: u8, version: i64, body: &str) -> KeyStateWrite {
    KeyStateWrite { hash: SecretHash([hash; 32]), version, encoded: body.as_bytes().to_vec(), expire_at: None }
}

async fn snapshots_keep_the_newest_version(state: Box<dyn State>) {
    let hash = SecretHash([1; 32]);
    assert_eq!(state.get_key_state(&hash).await.unwrap(), None);
    state.put_key_states(&[write(1, 2, "v2"), write(2, 1, "other")]).await.unwrap();
    assert_eq!(state.get_key_state(&hash).await.unwrap().as_deref(), Some(&b"v2"[..]));
    // An older writer arriving late does not win.
    state.put_key_states(&[write(1, 1, "v1")]).await.unwrap();
    assert_eq!(state.get_key_state(&hash).await.unwrap().as_deref(), Some(&b"v2"[..]));
    // The same version may be rewritten (e.g. after a system cap change).
    state.put_key_states(&[write(1, 2, "v2b"), write(1, 3, "v3")]).await.unwrap();
    assert_eq!(state.get_key_state(&hash).await.unwrap().as_deref(), Some(&b"v3"[..]));
    assert_eq!(state.get_key_state(&SecretHash([2; 32])).await.unwrap().as_deref(), Some(&b"other"[..]));
    state.put_key_states(&[]).await.unwrap();
}

async fn expired_entries_vanish(state: Box<dyn State>) {
    let mut past = write(3, 1, "gone");
    past.expire_at = Some(now_micros() - 1_000_000);
    let mut future = write(4, 1, "kept");
    future.expire_at = Some(now_micros() + 60_000_000);
    state.put_key_states(&[past, future]).await.unwrap();
    assert_eq!(state.get_key_state(&SecretHash([3; 32])).await.unwrap(), None);
    assert_eq!(state.get_key_state(&SecretHash([4; 32])).await.unwrap().as_deref(), Some(&b"kept"[..]));
}

async fn catalog_round_trips(state: Box<dyn State>) {
    assert_eq!(state.get_catalog().await.unwrap(), None);
    state.put_catalog(b"catalog-1").await.unwrap();
    state.put_catalog(b"catalog-2").await.unwrap();
    assert_eq!(state.get_catalog().await.unwrap().as_deref(), Some(&b"catalog-2"[..]));
}

async fn invalidations_reach_subscribers(state: Box<dyn State>) {
    let mut receiver = state.subscribe();
    let wanted = Invalidation::Keys(vec![SecretHash([5; 32])]);
    // A Redis subscription takes a moment to be established; publish until it arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        state.publish(&wanted).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                match receiver.recv().await {
                    Ok(got) if got == wanted => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .await
        {
            Ok(true) => break,
            _ if tokio::time::Instant::now() > deadline => panic!("invalidation never arrived"),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn memory_state_is_shared_between_clones() {
    let state = MemoryState::new();
    let clone = state.clone();
    state.put_key_states(&[write(9, 1, "x")]).await.unwrap();
    assert!(clone.get_key_state(&SecretHash([9; 32])).await.unwrap().is_some());
}

/// `TOLLGATE_REDIS_CLUSTER` with one seed URL (a managed cluster's endpoint): the whole
/// cluster is used, snapshots spread over its slots read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_marked_as_a_cluster_reaches_every_slot() {
    let Some(redis) = TestRedis::on_cluster().await else { return };
    let seed = redis.url.split(',').next().unwrap();
    let config = RedisConfig { cluster: true, ..RedisConfig::new(seed, &redis.prefix, Duration::from_secs(2)) };
    let state = RedisState::connect(&config).await.unwrap();
    let writes: Vec<KeyStateWrite> = (0..32u8).map(|i| write(i, 1, &format!("body-{i}"))).collect();
    state.put_key_states(&writes).await.unwrap();
    for i in 0..32u8 {
        let stored = state.get_key_state(&SecretHash([i; 32])).await.unwrap();
        assert_eq!(stored.as_deref(), Some(format!("body-{i}").as_bytes()));
    }
}
