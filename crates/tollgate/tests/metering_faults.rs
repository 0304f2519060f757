//! Metering under failure, in production shape (Postgres, Redis, separate processes): a
//! worker process killed with SIGKILL mid-batch under load, Postgres stopped and started under
//! load, the counters rebuilt after Redis lost them and while workers apply. Every way, every
//! distinct report is charged exactly once: the ledger's count and sum, the key's counter and
//! the account's balance all match what was sent.

mod common;

use std::process::Stdio;
use std::time::Duration;

use sqlx::Connection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate::{KeysServeConfig, KeysSettings, MeteringServeConfig, MeteringSettings, Secrets};
use tollgate_core::clock::SystemClock;
use tollgate_core::time::{Micros, now_micros};
use tollgate_core::windows::Calendar;
use tollgate_metering_service::reconcile::reconcile;
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::metering::v1 as metering;
use tollgate_state::redis::RedisConfig;
use tollgate_state::redis::RedisState;
use tollgate_state::redis_counters::RedisCounters;
use tollgate_store::StoreResult;
use tollgate_store::metering::{
    Balance, BucketRow, CreditGrant, KeyTotals, LedgerSnapshot, MeteringStore, Recorded, SqlMeteringStore, UsageCursor,
    UsageEntry, UsageFilter, UsageScope,
};
use tollgate_store::{Database, DatabaseConfig};

use tollgate_test_support::seed::Bearer;
use tollgate_test_support::{PrivatePostgres, TestDatabase, TestRedis};
use tonic::transport::Channel;

fn secrets() -> Secrets {
    Secrets {
        admin_token: format!("admin-{}", tollgate_core::ids::new_id()),
        key_pepper: format!("pepper-{}-{}", tollgate_core::ids::new_id(), tollgate_core::ids::new_id()),
        service_token: Some(format!("service-{}", tollgate_core::ids::new_id())),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `run` in this process on an ephemeral port; returns its channel and address.
async fn spawn_in_process<F, Fut>(run: F, shutdown: &CancellationToken) -> (Channel, String)
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(run(listener, shutdown.child_token()));
    (common::wait_serving(&address).await, address)
}

/// Report `i` of the load: distinct request ids, `i % 7 + 1` tokens, so `i % 7 + 1` credits.
fn report(key: &str, i: u64) -> metering::UsageReport {
    metering::UsageReport {
        request_id: format!("load-{i}"),
        key: key.into(),
        model: common::MODEL.into(),
        input_tokens: (i % 7 + 1) as i64,
        outcome: metering::UsageOutcome::Success as i32,
        ..Default::default()
    }
}

fn cost(i: u64) -> i64 {
    (i % 7 + 1) as i64
}

/// Sends reports `range` in batches of 50, each batch also repeating 5 reports of the one
/// before (a gateway retrying), pausing between batches so the load spans the fault.
async fn send(channel: &Channel, token: &str, key: &str, range: std::ops::Range<u64>) {
    let mut client = metering::metering_service_client::MeteringServiceClient::with_interceptor(
        channel.clone(),
        Bearer::token(token),
    );
    let ids: Vec<u64> = range.collect();
    for chunk in ids.chunks(50) {
        let mut reports: Vec<_> = chunk.iter().map(|i| report(key, *i)).collect();
        reports.extend(chunk.iter().take(5).map(|i| report(key, i.saturating_sub(50))));
        loop {
            match client.batch_record_usage(metering::BatchRecordUsageRequest { reports: reports.clone() }).await {
                Ok(_) => break,
                // Not accepted means not durable: the gateway retries, and so do we.
                Err(status) => {
                    eprintln!("retrying a batch: {status:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// Waits until the ledger and the counters hold exactly reports `0..n`.
async fn assert_exactly_once(metering_db: &str, redis: &TestRedis, key: &str, n: u64) {
    let expected: i64 = (0..n).map(cost).sum();
    let mut db = sqlx::PgConnection::connect(metering_db).await.unwrap();
    let topology = tollgate_state::redis_conn::Topology::parse(&redis.url, false).unwrap();
    let mut conn = topology.connect(Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    let key_id = key.rsplit('/').next().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (count, sum): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), CAST(SUM(credits) AS BIGINT) FROM metering.usage_ledger")
                .fetch_one(&mut db)
                .await
                .unwrap_or((0, None));
        let used: Option<i64> = redis::cmd("HGET")
            .arg(format!("{}:{{crash}}:k:{key_id}", redis.prefix))
            .arg("used")
            .query_async(&mut conn)
            .await
            .unwrap();
        if count as u64 == n && used == Some(expected) {
            assert_eq!(sum, Some(expected), "ledger sum = sum of the distinct reports");
            let balance: Option<i64> =
                redis::cmd("GET").arg(format!("{}:{{crash}}:bal", redis.prefix)).query_async(&mut conn).await.unwrap();
            assert_eq!(balance, Some(-expected), "the balance counter took each charge once");
            // The account's total: its row plus what batches recorded and no worker folded yet.
            let store = SqlMeteringStore::new(
                Database::connect(&DatabaseConfig::new(metering_db.to_owned(), "metering")).await.unwrap(),
            );
            assert_eq!(store.balance("crash").await.unwrap().credits_spent, expected);
            return;
        }
        assert!(count as u64 <= n, "{count} ledger rows for {n} distinct reports");
        assert!(
            tokio::time::Instant::now() < deadline,
            "not applied in time: {count} of {n} rows, key used {used:?} of {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `tollgate serve metering` process.
fn worker_process(config: &MeteringServeConfig, port: u16) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    if let Some(token) = &config.secrets.service_token {
        command.env("TOLLGATE_SERVICE_TOKEN", token);
    }
    command
        .args(["serve", "metering", "--listen", &format!("127.0.0.1:{port}"), "--http-listen", "127.0.0.1:0"])
        .env("TOLLGATE_DATABASE_URL", &config.database_url)
        .env("TOLLGATE_REDIS_URL", &config.redis.url)
        .env("TOLLGATE_REDIS_PREFIX", &config.redis.prefix)
        .env("TOLLGATE_KEYS_URL", &config.keys_url)
        .env("TOLLGATE_ADMIN_TOKEN", &config.secrets.admin_token)
        .env("TOLLGATE_KEY_PEPPER", &config.secrets.key_pepper)
        .env("TOLLGATE_METERING_WORKERS", "2")
        .env("TOLLGATE_METERING_USAGE_STREAMS", config.metering.usage_streams.to_string())
        .env("TOLLGATE_METERING_BATCH_SIZE", "100")
        .env("TOLLGATE_METERING_CLAIM_IDLE", "1s")
        .env("TOLLGATE_SHUTDOWN_DRAIN", "0s")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start tollgate serve metering")
}

/// The keys service and an ingest-only metering server (no workers) in this process.
struct Deployment {
    shutdown: CancellationToken,
    /// The ingest server.
    ingest: Channel,
    key: String,
    /// Settings for metering servers of this deployment.
    metering: MeteringServeConfig,
}

impl Deployment {
    /// Runs a metering server with `workers` stream workers in this process.
    async fn start_workers(&self, workers: usize) {
        let config = MeteringServeConfig {
            metering: MeteringSettings { workers, ..self.metering.metering.clone() },
            ..self.metering.clone()
        };
        spawn_in_process(|l, s| tollgate::run_metering(l, config, s), &self.shutdown).await;
    }

    /// Sends reports `range` through the ingest server in the background.
    fn spawn_load(&self, range: std::ops::Range<u64>) -> tokio::task::JoinHandle<()> {
        let (ingest, key, token) = (self.ingest.clone(), self.key.clone(), self.metering.secrets.admin_token.clone());
        tokio::spawn(async move { send(&ingest, &token, &key, range).await })
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn deploy(keys_db: &TestDatabase, metering_db: &str, redis: &TestRedis) -> Deployment {
    let secrets = secrets();
    let shutdown = CancellationToken::new();
    let redis_config = RedisConfig::new(&redis.url, &redis.prefix, Duration::from_secs(2));
    let keys_config = KeysServeConfig {
        database_url: keys_db.url.clone(),
        db_max_connections: 4,
        db_acquire_timeout: Duration::from_secs(1),
        migrate_on_start: true,
        redis: redis_config.clone(),
        secrets: secrets.clone(),
        keys: KeysSettings::default(),
        drain: Duration::ZERO,
        http_listen: None,
        tls: None,
    };
    let (keys_channel, keys_address) = spawn_in_process(|l, s| tollgate::run_keys(l, keys_config, s), &shutdown).await;
    let key = common::seed(&keys_channel, &secrets.admin_token, "crash", keys::Key::default()).await;
    let metering = MeteringServeConfig {
        database_url: metering_db.to_owned(),
        db_max_connections: 4,
        db_acquire_timeout: Duration::from_secs(1),
        migrate_on_start: true,
        redis: redis_config,
        keys_url: format!("http://{keys_address}"),
        secrets,
        metering: MeteringSettings {
            workers: 0,
            claim_idle: Duration::from_secs(1),
            batch_size: 100,
            // On a cluster, reports spread over streams in several slots.
            usage_streams: if redis.url.contains(',') { 3 } else { 1 },
            ..Default::default()
        },
        drain: Duration::ZERO,
        http_listen: None,
        tls: None,
        keys_ca: None,
        clock: std::sync::Arc::new(SystemClock),
    };
    let ingest_config = metering.clone();
    let (ingest, _) = spawn_in_process(|l, s| tollgate::run_metering(l, ingest_config, s), &shutdown).await;
    Deployment { shutdown, ingest, key, metering }
}

/// Waits until the ledger holds at least `rows` rows; `what` says what failed otherwise.
async fn wait_for_rows(url: &str, rows: i64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ledger_rows(url).await < rows {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ledger_rows(url: &str) -> i64 {
    let Ok(mut db) = sqlx::PgConnection::connect(url).await else { return 0 };
    sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM metering.usage_ledger")
        .fetch_one(&mut db)
        .await
        .map_or(0, |r| r.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_and_doubles_nothing() {
    a_worker_killed_mid_batch(TestRedis::create().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_and_doubles_nothing_on_a_redis_cluster() {
    a_worker_killed_mid_batch(TestRedis::on_cluster().await).await;
}

async fn a_worker_killed_mid_batch(redis: Option<TestRedis>) {
    let (Some(keys_db), Some(metering_db), Some(redis)) =
        (TestDatabase::create().await, TestDatabase::create().await, redis)
    else {
        return;
    };
    let d = deploy(&keys_db, &metering_db.url, &redis).await;
    let mut first = worker_process(&d.metering, free_port());
    const N: u64 = 3_000;
    let load = d.spawn_load(0..N);
    // Kill the worker process while it is busy with a stream of batches.
    wait_for_rows(&metering_db.url, 300, "the first worker applied nothing").await;
    first.start_kill().expect("SIGKILL the worker");
    first.wait().await.unwrap();
    let at_kill = ledger_rows(&metering_db.url).await;
    let mut second = worker_process(&d.metering, free_port());
    load.await.unwrap();
    assert_exactly_once(&metering_db.url, &redis, &d.key, N).await;
    assert!(at_kill < N as i64, "the kill came before the end of the load");
    second.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_load_loses_nothing() {
    let (Some(keys_db), Some(redis)) = (TestDatabase::create().await, TestRedis::create().await) else { return };
    let Some(mut postgres) = PrivatePostgres::start().await else { return };
    let metering_url = postgres.url();
    let d = deploy(&keys_db, &metering_url, &redis).await;
    d.start_workers(2).await;
    const N: u64 = 2_000;
    let load = d.spawn_load(0..N);
    wait_for_rows(&metering_url, 200, "nothing applied before the outage").await;
    postgres.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.restart().await.expect("Postgres starts again");
    load.await.unwrap();
    assert_exactly_once(&metering_url, &redis, &d.key, N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_rebuilds_the_counters_after_redis_lost_them() {
    let (Some(keys_db), Some(metering_db), Some(redis)) =
        (TestDatabase::create().await, TestDatabase::create().await, TestRedis::create().await)
    else {
        return;
    };
    let d = deploy(&keys_db, &metering_db.url, &redis).await;
    d.start_workers(1).await;
    const N: u64 = 200;
    send(&d.ingest, &d.metering.secrets.admin_token, &d.key, 0..N).await;
    assert_exactly_once(&metering_db.url, &redis, &d.key, N).await;
    // Redis loses the account's counters (a restart without persistence, say).
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let lost: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:{{crash}}:*", redis.prefix)).query_async(&mut conn).await.unwrap();
    assert!(!lost.is_empty());
    let _: () = redis::cmd("DEL").arg(&lost).query_async(&mut conn).await.unwrap();
    let done = tollgate::reconcile(tollgate::ReconcileConfig {
        database_url: metering_db.url.clone(),
        redis: d.metering.redis.clone(),
        time_zone: "UTC".into(),
    })
    .await
    .expect("reconcile");
    assert_eq!((done.accounts, done.keys), (1, 1));
    assert_exactly_once(&metering_db.url, &redis, &d.key, N).await;
    // The gateway retries reports applied before the loss: their settled markers went with
    // it, and reconcile put back those of the recent commits, so nothing counts twice.
    send(&d.ingest, &d.metering.secrets.admin_token, &d.key, 0..100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&metering_db.url, &redis, &d.key, N).await;
    let key_id = d.key.rsplit('/').next().unwrap();
    let today = tollgate_core::windows::Calendar::utc().windows(tollgate_core::time::now_micros()).day;
    let (day, day_spent): (Option<String>, Option<i64>) = redis::cmd("HMGET")
        .arg(format!("{}:{{crash}}:k:{key_id}", redis.prefix))
        .arg(&["d", "ds"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(day.as_deref(), Some(today.as_str()));
    assert_eq!(day_spent, Some((0..N).map(cost).sum::<i64>()), "today's spend is back too");
}

/// The metering store, with a pause after reading the ledger for a reconciliation: the
/// window in which workers would otherwise change the counters before reconcile writes them.
struct SlowSnapshot(SqlMeteringStore);

#[async_trait::async_trait]
impl MeteringStore for SlowSnapshot {
    async fn apply_usage(&self, entries: &[UsageEntry], now: Micros) -> StoreResult<Vec<Recorded>> {
        self.0.apply_usage(entries, now).await
    }
    async fn add_credits(&self, grant: &CreditGrant) -> StoreResult<(bool, Balance)> {
        self.0.add_credits(grant).await
    }
    async fn balance(&self, account_id: &str) -> StoreResult<Balance> {
        self.0.balance(account_id).await
    }
    async fn list_credit_grants(
        &self,
        account_id: &str,
        after: Option<(Micros, String)>,
        limit: u32,
    ) -> StoreResult<(Vec<CreditGrant>, bool)> {
        self.0.list_credit_grants(account_id, after, limit).await
    }
    async fn list_usage(
        &self,
        filter: &UsageFilter,
        after: Option<&UsageCursor>,
        limit: u32,
    ) -> StoreResult<(Vec<UsageEntry>, bool)> {
        self.0.list_usage(filter, after, limit).await
    }
    async fn usage_buckets(
        &self,
        scope: &UsageScope,
        start: Micros,
        end: Micros,
        width: Micros,
    ) -> StoreResult<Vec<BucketRow>> {
        self.0.usage_buckets(scope, start, end, width).await
    }
    async fn key_totals(&self, account_id: &str, key_id: &str, day: &str, month: &str) -> StoreResult<KeyTotals> {
        self.0.key_totals(account_id, key_id, day, month).await
    }
    async fn all_balances(&self) -> StoreResult<Vec<(String, Balance)>> {
        self.0.all_balances().await
    }
    async fn ledger_snapshot(
        &self,
        day: &str,
        month: &str,
        commits_since: Micros,
        grants_since: Micros,
    ) -> StoreResult<LedgerSnapshot> {
        let snapshot = self.0.ledger_snapshot(day, month, commits_since, grants_since).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        snapshot
    }
    async fn fold_pending(&self) -> StoreResult<usize> {
        self.0.fold_pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_while_workers_apply_counts_each_charge_once() {
    let (Some(keys_db), Some(metering_db), Some(redis)) =
        (TestDatabase::create().await, TestDatabase::create().await, TestRedis::create().await)
    else {
        return;
    };
    let d = deploy(&keys_db, &metering_db.url, &redis).await;
    d.start_workers(2).await;
    const N: u64 = 2_000;
    let load = d.spawn_load(0..N);
    wait_for_rows(&metering_db.url, 300, "nothing applied").await;
    // One reconciliation in the middle of the load, half a second between its read of the
    // ledger and its write of the counters: batches commit and come to settle meanwhile.
    let store = SlowSnapshot(SqlMeteringStore::new(
        Database::connect(&DatabaseConfig::new(metering_db.url.clone(), "metering")).await.unwrap(),
    ));
    let state = RedisState::connect(&d.metering.redis).await.unwrap();
    let counters = RedisCounters::new(&state, Duration::from_secs(2));
    let before = ledger_rows(&metering_db.url).await;
    let done = reconcile(&store, &counters, &Calendar::utc(), now_micros()).await.expect("reconcile");
    assert_eq!(done.accounts, 1);
    let after = ledger_rows(&metering_db.url).await;
    assert!(after > before, "batches were applied while it ran ({before} → {after} rows)");
    assert!(!load.is_finished(), "the load outlasted it");
    load.await.unwrap();
    assert_exactly_once(&metering_db.url, &redis, &d.key, N).await;
}
