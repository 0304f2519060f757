//! The usage-queue conformance suite: the same checks on the SQL table (`tollgate dev`, on
//! SQLite and Postgres) and on the Redis Stream (production).

use std::time::Duration;

use tollgate_ports::usage_queue::{QueueDepth, QueuedReport, UsageQueue};
use tollgate_state::redis::{RedisConfig, RedisState};
use tollgate_state::redis_usage_queue::RedisUsageQueue;
use tollgate_store::metering::SqlMeteringStore;
use tollgate_store::{Database, DatabaseConfig};
use tollgate_test_support::{TestDatabase, TestRedis};

/// How long an unacknowledged entry stays with its consumer in these tests.
const CLAIM_IDLE: Duration = Duration::from_millis(300);

#[allow(dead_code)]
enum Guard {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
    Redis(TestRedis),
}

async fn sqlite_queue() -> Option<(Box<dyn UsageQueue>, Guard)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("metering.db").display());
    let store = SqlMeteringStore::new(Database::connect(&DatabaseConfig::new(url, "metering")).await.unwrap())
        .with_claim_idle(CLAIM_IDLE);
    store.migrate().await.unwrap();
    Some((Box::new(store), Guard::Sqlite(dir)))
}

async fn postgres_queue() -> Option<(Box<dyn UsageQueue>, Guard)> {
    let db = TestDatabase::create().await?;
    let store =
        SqlMeteringStore::new(Database::connect(&DatabaseConfig::new(db.url.clone(), "metering")).await.unwrap())
            .with_claim_idle(CLAIM_IDLE);
    store.migrate().await.unwrap();
    Some((Box::new(store), Guard::Postgres(db)))
}

async fn redis_queue(redis: Option<TestRedis>, shards: usize) -> Option<(Box<dyn UsageQueue>, Guard)> {
    let redis = redis?;
    let config = RedisConfig::new(&redis.url, &redis.prefix, Duration::from_secs(2));
    let state = RedisState::connect(&config).await.unwrap();
    let queue = RedisUsageQueue::new(&state, CLAIM_IDLE, Duration::from_secs(2), shards).await.unwrap();
    Some((Box::new(queue), Guard::Redis(redis)))
}

tollgate_test_support::conformance_suite!(
    checks: [
        entries_are_received_in_order_and_acked_once,
        unacknowledged_entries_come_back_with_their_delivery_count,
        dead_letters_list_and_replay,
        depth_counts_entries_pending_and_dead_letters,
    ],
    adapters: {
        sqlite => super::sqlite_queue(),
        postgres => super::postgres_queue(),
        redis => super::redis_queue(tollgate_test_support::TestRedis::create().await, 1),
        redis_sharded => super::redis_queue(tollgate_test_support::TestRedis::create().await, 3),
        redis_cluster_sharded => super::redis_queue(tollgate_test_support::TestRedis::on_cluster().await, 3),
    }
);

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("report-{i}").into_bytes()).collect()
}

async fn entries_are_received_in_order_and_acked_once(queue: Box<dyn UsageQueue>) {
    queue.enqueue(&payloads(5)).await.unwrap();
    let first = queue.receive("c1", 3, Duration::from_millis(100)).await.unwrap();
    assert_eq!(first.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), payloads(3));
    assert!(first.iter().all(|e| e.deliveries == 1));
    let rest = queue.receive("c2", 10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(rest.len(), 2, "another consumer gets what the first did not take");
    let ids: Vec<String> = first.iter().chain(&rest).map(|e| e.id.clone()).collect();
    queue.ack(&ids).await.unwrap();
    tokio::time::sleep(CLAIM_IDLE * 2).await;
    assert!(queue.receive("c1", 10, Duration::from_millis(100)).await.unwrap().is_empty(), "acked entries are gone");
}

async fn unacknowledged_entries_come_back_with_their_delivery_count(queue: Box<dyn UsageQueue>) {
    queue.enqueue(&payloads(2)).await.unwrap();
    let taken = queue.receive("crashed", 10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(queue.receive("other", 10, Duration::from_millis(50)).await.unwrap().is_empty(), "held while fresh");
    tokio::time::sleep(CLAIM_IDLE + Duration::from_millis(100)).await;
    let again = queue.receive("other", 10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(again.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), payloads(2));
    assert!(again.iter().all(|e| e.deliveries == 2), "{again:?}");
    queue.ack(&again.iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await.unwrap();
}

async fn depth_counts_entries_pending_and_dead_letters(queue: Box<dyn UsageQueue>) {
    let depth = |entries, pending, dead_letters| QueueDepth { entries, pending, dead_letters };
    assert_eq!(queue.depth().await.unwrap(), depth(0, 0, 0), "an empty queue");
    queue.enqueue(&payloads(3)).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), depth(3, 0, 0), "enqueued, not handed out");
    let taken = queue.receive("c1", 2, Duration::from_millis(100)).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert_eq!(queue.depth().await.unwrap(), depth(3, 2, 0), "two handed out");
    queue.dead_letter(&taken[0], "unknown key", 42).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), depth(2, 1, 1), "one moved to the dead letters");
}

async fn dead_letters_list_and_replay(queue: Box<dyn UsageQueue>) {
    queue.enqueue(&payloads(3)).await.unwrap();
    let taken = queue.receive("c1", 10, Duration::from_millis(100)).await.unwrap();
    queue.dead_letter(&taken[0], "unknown key", 42).await.unwrap();
    queue.dead_letter(&taken[2], "unknown model", 43).await.unwrap();
    queue.ack(&[taken[1].id.clone()]).await.unwrap();
    let letters = queue.dead_letters(None, 10).await.unwrap();
    let summary: Vec<(Vec<u8>, &str, u32, i64)> =
        letters.iter().map(|l| (l.payload.clone(), l.reason.as_str(), l.attempts, l.time)).collect();
    assert_eq!(
        summary,
        [(payloads(1)[0].clone(), "unknown key", 1, 42), (payloads(3)[2].clone(), "unknown model", 1, 43)]
    );
    let after_first = queue.dead_letters(Some(&letters[0].id), 10).await.unwrap();
    assert_eq!(after_first.len(), 1);
    tokio::time::sleep(CLAIM_IDLE * 2).await;
    assert!(
        queue.receive("c1", 10, Duration::from_millis(50)).await.unwrap().is_empty(),
        "dead letters are off the queue"
    );
    assert_eq!(queue.replay(&[letters[1].id.clone()]).await.unwrap(), 1);
    let back = queue.receive("c1", 10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(back.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), [payloads(3)[2].clone()]);
    assert_eq!(queue.replay(&[]).await.unwrap(), 1, "replaying all puts back the rest");
    assert!(queue.dead_letters(None, 10).await.unwrap().is_empty());
}

/// Acknowledged entries leave the Redis stream (trimmed off its head), while pending and
/// undelivered ones stay.
#[tokio::test]
async fn redis_trims_acknowledged_entries_and_keeps_the_rest() {
    let Some(redis) = TestRedis::create().await else { return };
    let config = RedisConfig::new(&redis.url, &redis.prefix, Duration::from_secs(2));
    let state = RedisState::connect(&config).await.unwrap();
    let queue = RedisUsageQueue::new(&state, CLAIM_IDLE, Duration::from_secs(2), 1).await.unwrap();
    let stream = format!("{}:{{usage}}:reports", redis.prefix);
    let conn = ::redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let length = |mut conn: ::redis::aio::MultiplexedConnection| {
        let stream = stream.clone();
        async move { ::redis::cmd("XLEN").arg(&stream).query_async::<usize>(&mut conn).await.unwrap() }
    };

    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i]).collect();
    queue.enqueue(&payloads).await.unwrap();
    let taken = queue.receive("w1", 4, Duration::from_millis(10)).await.unwrap();
    assert_eq!(taken.len(), 4);
    // The second and fourth stay pending; the fifth was never delivered.
    queue.ack(&[taken[0].id.clone(), taken[2].id.clone()]).await.unwrap();
    assert_eq!(length(conn.clone()).await, 4, "only what precedes the oldest pending entry is trimmed");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    queue.ack(&[taken[1].id.clone(), taken[3].id.clone()]).await.unwrap();
    assert_eq!(length(conn.clone()).await, 1, "the undelivered entry stays");
    let last = queue.receive("w1", 4, Duration::from_millis(10)).await.unwrap();
    assert_eq!(last.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), [vec![4u8]]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    queue.ack(&[last[0].id.clone()]).await.unwrap();
    assert_eq!(length(conn).await, 0);
}

/// With several streams, batches go to each in turn, every worker reads them all, and ids find
/// their stream when acknowledged, dead-lettered, listed page by page and replayed. On one
/// Redis and on a cluster, where the streams live in different slots.
async fn batches_spread_over_streams_and_ids_find_theirs(redis: Option<TestRedis>) {
    let Some((queue, _guard)) = redis_queue(redis, 3).await else { return };
    let batches: Vec<Vec<Vec<u8>>> = (0..3u8).map(|b| (0..2u8).map(|i| vec![b, i]).collect()).collect();
    for batch in &batches {
        queue.enqueue(batch).await.unwrap();
    }
    let mut taken = Vec::new();
    while taken.len() < 6 {
        let got = queue.receive("w", 10, Duration::from_millis(60)).await.unwrap();
        assert!(!got.is_empty(), "only {} of 6 entries received", taken.len());
        taken.extend(got);
    }
    let mut payloads: Vec<Vec<u8>> = taken.iter().map(|e| e.payload.clone()).collect();
    payloads.sort();
    assert_eq!(payloads, batches.concat());
    let shards: std::collections::BTreeSet<&str> =
        taken.iter().map(|e| e.id.split_once(':').map_or("0", |(shard, _)| shard)).collect();
    assert_eq!(shards.len(), 3, "each batch went to a stream of its own: {taken:?}");
    // One entry of each stream becomes a dead letter; the rest are applied.
    let (mut dead, mut applied) = (Vec::new(), Vec::new());
    for entry in &taken {
        let shard = entry.id.split_once(':').map_or("0", |(shard, _)| shard);
        if dead.iter().all(|d: &QueuedReport| d.id.split_once(':').map_or("0", |(s, _)| s) != shard) {
            queue.dead_letter(entry, "unknown model", 7).await.unwrap();
            dead.push(entry.clone());
        } else {
            applied.push(entry.id.clone());
        }
    }
    queue.ack(&applied).await.unwrap();
    let first_page = queue.dead_letters(None, 2).await.unwrap();
    let second_page = queue.dead_letters(Some(&first_page[1].id), 2).await.unwrap();
    assert_eq!((first_page.len(), second_page.len()), (2, 1));
    let mut listed: Vec<Vec<u8>> = first_page.iter().chain(&second_page).map(|l| l.payload.clone()).collect();
    let mut expected: Vec<Vec<u8>> = dead.iter().map(|d| d.payload.clone()).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(queue.replay(&[second_page[0].id.clone()]).await.unwrap(), 1);
    let back = queue.receive("w", 10, Duration::from_millis(150)).await.unwrap();
    assert_eq!(back.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), [second_page[0].payload.clone()]);
    queue.ack(&[back[0].id.clone()]).await.unwrap();
    assert_eq!(queue.replay(&[]).await.unwrap(), 2, "replaying all takes every stream's");
}

#[tokio::test]
async fn batches_spread_over_streams_on_redis() {
    batches_spread_over_streams_and_ids_find_theirs(TestRedis::create().await).await;
}

#[tokio::test]
async fn batches_spread_over_streams_on_a_redis_cluster() {
    batches_spread_over_streams_and_ids_find_theirs(TestRedis::on_cluster().await).await;
}

/// Consumers that are gone (a restarted process names its workers afresh) leave the group
/// once they have nothing pending and have not read for four claim times. (A live one that
/// found nothing to read may go too, and comes back with its next read.)
#[tokio::test]
async fn redis_forgets_consumers_that_are_gone() {
    let Some(redis) = TestRedis::create().await else { return };
    let config = RedisConfig::new(&redis.url, &redis.prefix, Duration::from_secs(2));
    let state = RedisState::connect(&config).await.unwrap();
    let queue = RedisUsageQueue::new(&state, CLAIM_IDLE, Duration::from_secs(2), 1).await.unwrap();
    queue.enqueue(&[b"r".to_vec()]).await.unwrap();
    let taken = queue.receive("gone", 10, Duration::from_millis(50)).await.unwrap();
    queue.ack(&[taken[0].id.clone()]).await.unwrap();
    let consumers = || async {
        let mut conn = state.connection();
        let stream = format!("{}:{{usage}}:reports", redis.prefix);
        let reply: Vec<Vec<::redis::Value>> =
            ::redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg("metering").query_async(&mut conn).await.unwrap();
        let mut names: Vec<String> = reply
            .iter()
            .filter_map(|fields| match fields.get(1) {
                Some(::redis::Value::BulkString(name)) => Some(String::from_utf8_lossy(name).into_owned()),
                _ => None,
            })
            .collect();
        names.sort();
        names
    };
    assert_eq!(consumers().await, ["gone"]);
    // "live" keeps reading; "gone" does not, for longer than four claim times.
    let deadline = std::time::Instant::now() + CLAIM_IDLE * 12;
    while consumers().await.contains(&"gone".to_owned()) {
        assert!(std::time::Instant::now() < deadline, "still there: {:?}", consumers().await);
        queue.receive("live", 10, Duration::from_millis(50)).await.unwrap();
    }
    queue.enqueue(&[b"s".to_vec()]).await.unwrap();
    let taken = queue.receive("live", 10, Duration::from_millis(50)).await.unwrap();
    assert_eq!(taken.len(), 1, "the queue works on");
    assert_eq!(consumers().await, ["live"]);
}
