//! The metering benchmark: how fast workers apply usage reports against a raw batched INSERT
//! of the same rows into the same Postgres (interleaved rounds), Postgres statements and Redis
//! round trips per report on the consumer side, and the lag from an accepted report to
//! updated counters at a steady report rate while Authorize runs at half its maximum.
//!
//! It runs a Postgres of its own (with `pg_stat_statements`, to count statements), a Redis of
//! its own, and `tollgate` processes: keys, authz, an ingest-only metering server, and a
//! metering worker process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::metering::v1 as metering;
use tollgate_proto::time::timestamp;

use crate::load::{Pool, Scenario, Target, closed_loop, open_loop, quantile};
use crate::processes::{self, Process, cpu_micros, free_port};
use crate::seed::{Admin, Authed, MODEL, counted_key};
use crate::{ADMIN_TOKEN, Deployment, HOLD_TTL, PEPPER, calls, channel, median};

#[derive(Debug, clap::Args)]
pub struct MeteringArgs {
    /// Interleaved rounds of the throughput comparison.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Reports applied per round (enough that a drain lasts a second or more, so the 20 ms
    /// between progress reads stay small against it).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Stream workers of the worker process (the service's default).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Connection counts the raw baseline runs with each round; the fastest is the baseline
    /// (on two cores the raw INSERT is fastest with two).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    raw_connections: Vec<usize>,
    /// Reports per batch (and rows per raw INSERT).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Reports per second during the lag measurement.
    #[arg(long, default_value_t = 5_000)]
    rate: usize,
    /// Seconds of the lag measurement.
    #[arg(long, default_value_t = 15)]
    lag_secs: u64,
    /// Authorize every report's call first, under its request id, so that settling also
    /// finds and releases a hold per report, as in production. (The raw baseline has no such
    /// work; off, the reports have no holds.)
    #[arg(long)]
    holds: bool,
}

/// Keys the reports are for, spread over accounts.
const ACCOUNTS: usize = 10;
const KEYS_PER_ACCOUNT: usize = 100;

type MeteringClient = metering::metering_service_client::MeteringServiceClient<Authed>;

fn client(port: u16) -> anyhow::Result<MeteringClient> {
    let bearer = crate::seed::Bearer::token(ADMIN_TOKEN);
    Ok(metering::metering_service_client::MeteringServiceClient::with_interceptor(channel(port)?, bearer))
}

fn report(key: &str, request_id: String, end_time: i64) -> metering::UsageReport {
    metering::UsageReport {
        request_id,
        key: key.to_owned(),
        model: MODEL.into(),
        input_tokens: 800,
        output_tokens: 200,
        cached_input_tokens: 0,
        outcome: metering::UsageOutcome::Success as i32,
        start_time: Some(timestamp(end_time - 1_000_000)),
        end_time: Some(timestamp(end_time)),
    }
}

/// A `tollgate serve metering` process with `workers` workers.
async fn metering_process(d: &Deployment, workers: usize, batch_size: usize) -> anyhow::Result<(Process, u16)> {
    let port = free_port();
    let env = vec![
        ("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("TOLLGATE_KEY_PEPPER", PEPPER.to_owned()),
        ("TOLLGATE_REDIS_URL", format!("redis://127.0.0.1:{}", d.redis_port)),
        ("TOLLGATE_DATABASE_URL", d.database.url.clone()),
        ("TOLLGATE_KEYS_URL", format!("http://127.0.0.1:{}", d.keys_port)),
        ("TOLLGATE_LISTEN", format!("127.0.0.1:{port}")),
        ("TOLLGATE_METERING_WORKERS", workers.to_string()),
        ("TOLLGATE_METERING_BATCH_SIZE", batch_size.to_string()),
        ("TOLLGATE_SHUTDOWN_DRAIN", "0s".to_owned()),
    ];
    let process = processes::tollgate(&["serve", "metering", "--migrate-on-start"], &env, port).await?;
    Ok((process, port))
}

async fn scalar(db: &mut PgConnection, sql: &str) -> anyhow::Result<i64> {
    let row: (i64,) = sqlx::query_as(AssertSqlSafe(sql.to_owned())).fetch_one(db).await?;
    Ok(row.0)
}

/// Statements Postgres ran in the benchmark's database, the benchmark's own reads excluded.
async fn statements(db: &mut PgConnection) -> anyhow::Result<i64> {
    scalar(
        db,
        "SELECT COALESCE(SUM(calls), 0)::BIGINT FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%count(*)%' \
         AND query NOT ILIKE '%state_outbox%' AND query NOT ILIKE '%raw_ledger%'",
    )
    .await
}

/// Execution time (ms) of each kind of statement the workers run, by its first words.
async fn statement_times(db: &mut PgConnection) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT query, total_exec_time FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(db)
    .await?;
    let mut times = std::collections::HashMap::new();
    for (query, ms) in rows {
        let words: Vec<&str> = query.split_whitespace().take(3).collect();
        *times.entry(words.join(" ")).or_insert(0.0) += ms;
    }
    Ok(times)
}

/// Enqueues reports `0..n` of round `round` through the ingest server, 1000 per call.
async fn enqueue(ingest: &MeteringClient, keys: &[String], round: usize, n: usize) -> anyhow::Result<()> {
    let now = tollgate_core::time::now_micros();
    let reports: Vec<_> =
        (0..n).map(|i| report(&keys[i % keys.len()], format!("t{round}-{i}"), now - 60_000_000)).collect();
    let mut sends = tokio::task::JoinSet::new();
    for chunk in reports.chunks(1000) {
        let mut client = ingest.clone();
        let chunk = chunk.to_vec();
        sends.spawn(
            async move { client.batch_record_usage(metering::BatchRecordUsageRequest { reports: chunk }).await },
        );
        if sends.len() >= 4 {
            sends.join_next().await.context("a send task")???;
        }
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    Ok(())
}

/// Takes the hold of each report `0..n` of round `round`: Authorize under the report's request
/// id, 64 calls at a time. Returns how many holds Redis has afterwards.
async fn take_holds(d: &Deployment, secrets: &[String], round: usize, n: usize) -> anyhow::Result<usize> {
    let calls = Arc::new(calls(secrets));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let channel = channel(d.authz[0].port)?;
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let mut client = authz::authz_service_client::AuthzServiceClient::new(channel.clone());
        let (calls, next) = (calls.clone(), next.clone());
        callers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let call =
                    authz::AuthorizeRequest { request_id: format!("t{round}-{i}"), ..calls[i % calls.len()].clone() };
                let decision = client.authorize(call).await?.into_inner().decision();
                anyhow::ensure!(decision == authz::Decision::Allow, "Authorize answered {decision:?}");
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    let redis = redis::Client::open(format!("redis://127.0.0.1:{}", d.redis_port))?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let mut holds = 0;
    for a in 0..ACCOUNTS {
        let key = format!("tollgate:{{meter-{a:02}}}:holds");
        holds += redis::cmd("HLEN").arg(key).query_async::<usize>(&mut conn).await?;
    }
    Ok(holds)
}

/// What one drain of the queue measured.
#[derive(Debug, Default, Clone)]
struct Drain {
    rate: f64,
    statements: f64,
    round_trips: f64,
    evalsha: f64,
    /// CPU µs per report of the worker process, Redis and Postgres.
    cpu_micros: f64,
    redis_cpu: f64,
    postgres_cpu: f64,
}

/// What one raw INSERT run measured.
#[derive(Debug, Default, Clone)]
struct Raw {
    rate: f64,
    connections: usize,
    /// Postgres CPU µs per row.
    postgres_cpu: f64,
}

/// The reports stream and its consumer group.
const STREAM: &str = "tollgate:{usage}:reports";

/// A stream entry id, `ms-seq`, as a pair that sorts as Redis does.
fn entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The consumer group's last delivered entry and how many entries it has pending.
async fn group_state(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<((u64, u64), usize)> {
    let reply: redis::streams::StreamInfoGroupsReply =
        redis::cmd("XINFO").arg("GROUPS").arg(STREAM).query_async(redis).await?;
    let group = reply.groups.iter().find(|g| g.name == "metering").context("no consumer group")?;
    Ok((entry_id(&group.last_delivered_id), group.pending))
}

/// Progress of a drain, read from Redis in O(1): of the round's entries (ids sorted), those up
/// to the group's last delivered one, minus those still pending, were committed, settled and
/// acknowledged. Counting the ledger's rows instead would make Postgres scan the whole table
/// every poll, work the baseline does not have.
struct Progress {
    ids: Vec<(u64, u64)>,
}

impl Progress {
    /// The entries queued after the last delivered one: the round's reports.
    async fn of_round(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Self> {
        let (last, _) = group_state(redis).await?;
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(STREAM).arg(format!("({}-{}", last.0, last.1)).arg("+").query_async(redis).await?;
        Ok(Self { ids: reply.ids.iter().map(|e| entry_id(&e.id)).collect() })
    }

    async fn applied(&self, redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
        let (last, pending) = group_state(redis).await?;
        Ok(self.ids.partition_point(|id| *id <= last) as i64 - pending as i64)
    }
}

/// Starts a worker process on a full queue and times it from 10 % to 90 % of `n` applied.
async fn drain(
    d: &Deployment,
    postmaster: u32,
    db: &mut PgConnection,
    args: &MeteringArgs,
    n: usize,
) -> anyhow::Result<Drain> {
    let ledger_before = scalar(db, "SELECT count(*) FROM metering.usage_ledger").await?;
    let mut redis =
        redis::Client::open(format!("redis://127.0.0.1:{}", d.redis_port))?.get_multiplexed_async_connection().await?;
    let progress = Progress::of_round(&mut redis).await?;
    anyhow::ensure!(progress.ids.len() == n, "{} entries queued for {n} reports", progress.ids.len());
    let before = 0;
    let statements_before = statements(db).await?;
    let postgres_before = statement_times(db).await?;
    let redis_before = d.redis_commands().await?;
    let redis_usec_before = processes::commandstats(d.redis_port, "usec").await?;
    let (worker, _) = metering_process(d, args.workers, args.batch_size).await?;
    let cpu_before = cpu_micros(worker.pid())?;
    let redis_cpu_before = cpu_micros(d.redis.pid())?;
    let postgres_cpu_before = processes::tree_cpu_micros(postmaster);
    let (low, high) = (before + n as i64 / 10, before + n as i64 * 9 / 10);
    let (mut t_low, mut t_high) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let count = progress.applied(&mut redis).await?;
        if t_low.is_none() && count >= low {
            t_low = Some((Instant::now(), count));
        }
        if t_high.is_none() && count >= high {
            t_high = Some((Instant::now(), count));
        }
        if count >= before + n as i64 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the queue did not drain: {} of {n}", count - before);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the last settlements and acknowledgements land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_micros(worker.pid())? - cpu_before;
    let redis_cpu = cpu_micros(d.redis.pid())? - redis_cpu_before;
    let postgres_cpu = processes::tree_cpu_micros(postmaster) - postgres_cpu_before;
    drop(worker);
    let ledger = scalar(db, "SELECT count(*) FROM metering.usage_ledger").await?;
    anyhow::ensure!(
        ledger == ledger_before + n as i64,
        "the ledger gained {} rows for {n} reports",
        ledger - ledger_before
    );
    let postgres_after = statement_times(db).await?;
    let mut by_statement: Vec<(String, f64)> = postgres_after
        .iter()
        .map(|(query, ms)| {
            (query.clone(), (ms - postgres_before.get(query).copied().unwrap_or(0.0)) * 1000.0 / n as f64)
        })
        .filter(|(_, usec)| *usec > 0.05)
        .collect();
    by_statement.sort_by(|a, b| b.1.total_cmp(&a.1));
    let breakdown: Vec<String> = by_statement.iter().map(|(query, usec)| format!("{query} {usec:.1} µs")).collect();
    eprintln!("  Postgres execution time per report by statement: {}", breakdown.join(", "));
    let ((t0, c0), (t1, c1)) = (t_low.context("10 %")?, t_high.context("90 %")?);
    let redis_after = d.redis_commands().await?;
    let redis_usec_after = processes::commandstats(d.redis_port, "usec").await?;
    let mut by_command: Vec<(String, f64)> = redis_usec_after
        .iter()
        .map(|(name, usec)| {
            (name.clone(), (usec - redis_usec_before.get(name).copied().unwrap_or(0)) as f64 / n as f64)
        })
        .filter(|(_, usec)| *usec > 0.05)
        .collect();
    by_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    let breakdown: Vec<String> = by_command.iter().map(|(name, usec)| format!("{name} {usec:.1} µs")).collect();
    eprintln!("  Redis time per report by command: {}", breakdown.join(", "));
    let delta = |name: &str| {
        redis_after.get(name).copied().unwrap_or(0) as f64 - redis_before.get(name).copied().unwrap_or(0) as f64
    };
    // A receive is an XREADGROUP, and a few times per claim time an XAUTOCLAIM (+ XPENDING when
    // it took something over) before it; a batch is one settle pipeline of EVALSHAs (one per
    // account, commit and day) and one XACK; once a second a trim is one MULTI (XINFO GROUPS +
    // XPENDING) and one XTRIM.
    let round_trips =
        delta("xautoclaim") + delta("xpending") + delta("xreadgroup") + 2.0 * delta("xack") + delta("xtrim");
    let statements = statements(db).await? - statements_before;
    Ok(Drain {
        rate: (c1 - c0) as f64 / (t1 - t0).as_secs_f64(),
        statements: statements as f64 / n as f64,
        round_trips: round_trips / n as f64,
        evalsha: delta("evalsha") / n as f64,
        cpu_micros: cpu as f64 / n as f64,
        redis_cpu: redis_cpu as f64 / n as f64,
        postgres_cpu: postgres_cpu as f64 / n as f64,
    })
}

/// The same rows the ledger gets, inserted raw: `connections` connections, `batch_size` rows
/// per INSERT, one transaction each; rows per second.
async fn raw_inserts(
    url: &str,
    postmaster: u32,
    keys: &[String],
    args: &MeteringArgs,
    connections: usize,
    round: usize,
    n: usize,
) -> anyhow::Result<Raw> {
    let postgres_cpu_before = processes::tree_cpu_micros(postmaster);
    let now = tollgate_core::time::now_micros();
    let rows: Arc<Vec<(String, String, String)>> = Arc::new(
        (0..n)
            .map(|i| {
                let (account, key) = keys[i % keys.len()].split_once("/keys/").unwrap_or_default();
                (format!("r{round}-{i}"), account.trim_start_matches("accounts/").to_owned(), key.to_owned())
            })
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let (rows, url, batch, workers) = (rows.clone(), url.to_owned(), args.batch_size, connections);
        tasks.spawn(async move {
            let mut conn = PgConnection::connect(&url).await?;
            for chunk in rows.chunks(batch).skip(worker).step_by(workers) {
                let commit_id = tollgate_core::ids::new_commit_id();
                let values: Vec<String> = (0..chunk.len())
                    .map(|r| format!("({})", (1..=16).map(|c| format!("${}", r * 16 + c)).collect::<Vec<_>>().join(", ")))
                    .collect();
                let sql = format!(
                    "INSERT INTO raw_ledger (request_id, account_id, application_id, key_id, model, input_tokens, \
                     output_tokens, cached_input_tokens, credits, outcome, start_time, end_time, day, month, apply_time, \
                     commit_id) VALUES {}",
                    values.join(", ")
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (request_id, account, key) in chunk {
                    query = query
                        .bind(request_id)
                        .bind(account)
                        .bind("bench")
                        .bind(key)
                        .bind(MODEL)
                        .bind(800_i64)
                        .bind(200_i64)
                        .bind(0_i64)
                        .bind(1_400_i64)
                        .bind("success")
                        .bind(now - 1_000_000)
                        .bind(now)
                        .bind("20270101")
                        .bind("202701")
                        .bind(now)
                        .bind(commit_id);
                }
                let mut tx = conn.begin().await?;
                query.execute(&mut *tx).await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    // The backends have exited; the postmaster has reaped their CPU time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let postgres_cpu = (processes::tree_cpu_micros(postmaster) - postgres_cpu_before) as f64 / n as f64;
    Ok(Raw { rate, connections, postgres_cpu })
}

/// What the lag phase measured.
struct Lag {
    /// Accepted → counters updated, microseconds, sorted.
    probes: Vec<u64>,
    /// Authorize latencies at half load, microseconds, sorted.
    authorize: Vec<u64>,
    authorize_rate: f64,
    reports_per_sec: f64,
}

/// A probe: reports for its own key, each timed from acceptance until the key's counter in
/// Redis shows it.
async fn probe(ingest: MeteringClient, redis_port: u16, key: String, until: Instant) -> anyhow::Result<Vec<u64>> {
    let (account, key_id) = key.trim_start_matches("accounts/").split_once("/keys/").context("key name")?;
    let counter = format!("tollgate:{{{account}}}:k:{key_id}");
    let redis = redis::Client::open(format!("redis://127.0.0.1:{redis_port}"))?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let mut ingest = ingest;
    let mut samples = Vec::new();
    let mut sequence = 0;
    while Instant::now() < until {
        let used = |conn: &mut redis::aio::MultiplexedConnection| {
            let mut conn = conn.clone();
            let counter = counter.clone();
            async move { redis::cmd("HGET").arg(counter).arg("used").query_async::<Option<i64>>(&mut conn).await }
        };
        let before = used(&mut conn).await?.unwrap_or(0);
        sequence += 1;
        let now = tollgate_core::time::now_micros();
        let report = report(&key, format!("probe-{key_id}-{sequence}"), now);
        ingest.record_usage(metering::RecordUsageRequest { report: Some(report) }).await?;
        let accepted = Instant::now();
        while used(&mut conn).await?.unwrap_or(0) == before {
            anyhow::ensure!(accepted.elapsed() < Duration::from_secs(30), "a probe report was never applied");
            tokio::time::sleep(Duration::from_micros(250)).await;
        }
        samples.push(accepted.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(samples)
}

/// Reports at `rate` per second for `duration`, 100 sends a second.
async fn steady_reports(
    ingest: MeteringClient,
    keys: Arc<Vec<String>>,
    rate: usize,
    duration: Duration,
) -> anyhow::Result<u64> {
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let end = Instant::now() + duration;
    let mut sent = 0u64;
    let mut sends = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tick.tick().await;
        let now = tollgate_core::time::now_micros();
        let reports: Vec<_> = (0..per_tick)
            .map(|i| report(&keys[(sent as usize + i) % keys.len()], format!("s-{}", sent + i as u64), now))
            .collect();
        sent += reports.len() as u64;
        let mut client = ingest.clone();
        sends.spawn(async move { client.batch_record_usage(metering::BatchRecordUsageRequest { reports }).await });
        while sends.len() > 16 {
            sends.join_next().await.context("send task")???;
        }
    }
    while let Some(done) = sends.join_next().await {
        done??;
    }
    Ok(sent)
}

async fn lag(
    d: &Deployment,
    args: &MeteringArgs,
    ingest: &MeteringClient,
    keys: Arc<Vec<String>>,
    probe_keys: &[String],
    authorize: Arc<Scenario>,
) -> anyhow::Result<Lag> {
    let (_worker, _) = metering_process(d, args.workers, args.batch_size).await?;
    let clients = Arc::new(d.authz[0].clients(4).await?);
    eprintln!("Authorize's maximum rate…");
    let max = closed_loop(authorize.clone(), &clients, 64, Duration::from_secs(4)).await;
    let authorize_rate = max.total() as f64 / 4.0 / 2.0;
    eprintln!("lag: {} reports/s with Authorize at {authorize_rate:.0} calls/s for {} s…", args.rate, args.lag_secs);
    let duration = Duration::from_secs(args.lag_secs);
    let until = Instant::now() + duration;
    let authz_load = tokio::spawn({
        let clients = clients.clone();
        async move { open_loop(authorize, &clients, 64, authorize_rate, duration).await }
    });
    let reports = tokio::spawn(steady_reports(ingest.clone(), keys, args.rate, duration));
    let probes: Vec<_> =
        probe_keys.iter().map(|key| tokio::spawn(probe(ingest.clone(), d.redis_port, key.clone(), until))).collect();
    let started = Instant::now();
    let sent = reports.await??;
    let reports_per_sec = sent as f64 / started.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for probe in probes {
        samples.extend(probe.await??);
    }
    samples.sort_unstable();
    let authorize = authz_load.await?;
    Ok(Lag { probes: samples, authorize, authorize_rate, reports_per_sec })
}

/// `tollgate-bench metering`.
pub async fn run(args: MeteringArgs) -> anyhow::Result<()> {
    eprintln!("starting a Postgres with pg_stat_statements, Redis, keys, authz and metering…");
    let postgres = tollgate_test_support::PrivatePostgres::start_with("-c shared_preload_libraries=pg_stat_statements")
        .await
        .context("a private Postgres (initdb and pg_ctl must be installed)")?;
    // Holds taken before a round must outlive the time to take them and drain the round.
    let d = Deployment::start(&postgres.url(), 1, if args.holds { "10m" } else { HOLD_TTL }, &[]).await?;
    let postmaster = postgres.postmaster_pid().context("the private Postgres's pid")?;
    let (_ingest_process, ingest_port) = metering_process(&d, 0, args.batch_size).await?;
    let ingest = client(ingest_port)?;
    let mut db = PgConnection::connect(&d.database.url).await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&mut db).await?;
    // The port opens before the migrations are done.
    for _ in 0..400 {
        if scalar(&mut db, "SELECT (to_regclass('metering.usage_totals') IS NOT NULL)::INT::BIGINT").await? == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    sqlx::query("CREATE TABLE raw_ledger (LIKE metering.usage_ledger INCLUDING ALL)").execute(&mut db).await?;

    let admin = Admin::new(channel(d.keys_port)?, ADMIN_TOKEN);
    admin.catalog().await?;
    let mut keys = Vec::new();
    let mut secrets = Vec::new();
    for a in 0..ACCOUNTS {
        let account = format!("meter-{a:02}");
        let app = admin.account(&account, true).await?;
        for (name, secret) in admin
            .named_keys_with(&format!("accounts/{account}"), &app, counted_key("Metered"), KEYS_PER_ACCOUNT)
            .await?
        {
            keys.push(name);
            secrets.push(secret);
        }
    }
    let mut probe_keys = Vec::new();
    for p in 0..4 {
        let account = format!("probe-{p}");
        let app = admin.account(&account, true).await?;
        let named = admin.named_keys_with(&format!("accounts/{account}"), &app, counted_key("Probe"), 1).await?;
        probe_keys.push(named[0].0.clone());
    }
    let keys = Arc::new(keys);

    let mut drains = Vec::new();
    let mut raws = Vec::new();
    for round in 1..=args.rounds {
        // The baseline at its best: the fastest of its connection counts.
        let mut raw: Option<Raw> = None;
        for &connections in &args.raw_connections {
            sqlx::query("TRUNCATE raw_ledger").execute(&mut db).await?;
            let run = raw_inserts(&d.database.url, postmaster, &keys, &args, connections, round, args.events).await?;
            eprintln!("round {round}: raw INSERT over {connections} connections: {:.0} rows/s", run.rate);
            if raw.as_ref().is_none_or(|best| run.rate > best.rate) {
                raw = Some(run);
            }
        }
        let raw = raw.context("--raw-connections is empty")?;
        if args.holds {
            let holds = take_holds(&d, &secrets, round, args.events).await?;
            eprintln!("round {round}: {holds} holds taken");
        }
        enqueue(&ingest, &keys, round, args.events).await?;
        let drained = drain(&d, postmaster, &mut db, &args, args.events).await?;
        eprintln!("round {round}: raw INSERT {:.0} rows/s, metering {:.0} reports/s", raw.rate, drained.rate);
        raws.push(raw);
        drains.push(drained);
    }
    let authorize =
        Arc::new(Scenario { name: "A", target: Target::Authorize, pools: vec![Pool::new(1.0, calls(&secrets), true)] });
    let lag = lag(&d, &args, &ingest, keys.clone(), &probe_keys, authorize).await?;
    print_report(&args, &raws, &drains, &lag);
    Ok(())
}

fn print_report(args: &MeteringArgs, raws: &[Raw], drains: &[Drain], lag: &Lag) {
    let med = |f: &dyn Fn(&Drain) -> f64| median(&mut drains.iter().map(f).collect::<Vec<_>>());
    let raw = median(&mut raws.iter().map(|r| r.rate).collect::<Vec<_>>());
    let raw_cpu = median(&mut raws.iter().map(|r| r.postgres_cpu).collect::<Vec<_>>());
    let applied = med(&|d| d.rate);
    let ratios: Vec<f64> = drains.iter().zip(raws).map(|(d, r)| d.rate / r.rate).collect();
    println!(
        "## Metering ({} rounds × {} reports{}, {} workers, batches of {}; raw INSERT over {:?} connections)\n",
        args.rounds,
        args.events,
        if args.holds { " each with its hold" } else { "" },
        args.workers,
        args.batch_size,
        args.raw_connections
    );
    println!("| round | raw INSERT rows/s (best) | reports applied/s | ratio |");
    println!("|---|---|---|---|");
    for (i, (d, r)) in drains.iter().zip(raws).enumerate() {
        println!(
            "| {} | {:.0} ({} connections) | {:.0} | {:.2} |",
            i + 1,
            r.rate,
            r.connections,
            d.rate,
            d.rate / r.rate
        );
    }
    println!(
        "\n| per report, consumer side (median of rounds) | measured | target |\n|---|---|---|\n\
         | Postgres statements | {:.4} | ≤ 0.01 |\n| Redis round trips | {:.4} | ≤ 0.05 |\n\
         | EVALSHA (inside the settle pipelines) | {:.3} | — |\n\
         | CPU: worker process | {:.1} µs | — |\n| CPU: Redis | {:.1} µs | — |\n\
         | CPU: Postgres | {:.1} µs (raw INSERT: {raw_cpu:.1} µs a row) | — |",
        med(&|d| d.statements),
        med(&|d| d.round_trips),
        med(&|d| d.evalsha),
        med(&|d| d.cpu_micros),
        med(&|d| d.redis_cpu),
        med(&|d| d.postgres_cpu),
    );
    let p = |sorted: &[u64], q: f64| quantile(sorted, q) as f64 / 1000.0;
    println!(
        "\nLag from an accepted report to updated counters, {} probe samples, at {:.0} reports/s \
         with Authorize at {:.0} calls/s (half its maximum): p50 {:.1} ms, p99 {:.1} ms. \
         Authorize meanwhile: p50 {:.2} ms, p99 {:.2} ms.",
        lag.probes.len(),
        lag.reports_per_sec,
        lag.authorize_rate,
        p(&lag.probes, 0.5),
        p(&lag.probes, 0.99),
        p(&lag.authorize, 0.5),
        p(&lag.authorize, 0.99),
    );
    let ratio = median(&mut ratios.clone());
    println!(
        "\nApplied / raw INSERT: median {ratio:.2} (raw {raw:.0} rows/s, applied {applied:.0} reports/s): {}.",
        if ratio >= 0.5 { "target ≥ 0.5 met" } else { "target ≥ 0.5 NOT met" }
    );
}
