//! `tollgate-bench`: benchmarks that report ratios against baselines measured in the same run,
//! because the machine is shared and noisy.
//!
//!     cargo build --release -p tollgate -p tollgate-bench
//!     target/release/tollgate-bench authz
//!     target/release/tollgate-bench propagation
//!     target/release/tollgate-bench metering
//!
//! Each run starts its own Redis, Postgres database and `tollgate` processes, and removes them
//! when done. Results go to stdout as Markdown, ready for docs/BENCHMARKS.md.

mod load;
mod metering;
mod processes;
mod raw;
mod seed;
mod span_sink;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as pb;
use tonic::transport::{Channel, Endpoint};

use crate::load::{Clients, Counts, Pool, Scenario, Target, closed_loop, open_loop, quantile};
use crate::processes::{Database, Process, cpu_micros, free_port};
use crate::raw::RawClient;
use crate::seed::{Admin, MODEL, counted_key};

#[derive(Debug, Parser)]
#[command(name = "tollgate-bench", version)]
struct Cli {
    /// Postgres to create the benchmark's database on.
    #[arg(
        long,
        env = "TOLLGATE_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        global = true
    )]
    postgres: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Authorize throughput, latency, Redis and Postgres work and CPU per call, against a
    /// no-op RPC (E) and a hash-plus-one-EVALSHA probe (P) measured in the same rounds.
    Authz(AuthzArgs),
    /// How long until two authz replicas obey a key change made through the keys service.
    Propagation(PropagationArgs),
    /// Usage reports applied per second against a raw batched INSERT, statements and round
    /// trips per report, and the lag to updated counters while Authorize runs at half load.
    Metering(metering::MeteringArgs),
}

#[derive(Debug, clap::Args)]
struct AuthzArgs {
    /// Interleaved rounds of every scenario.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds each scenario runs per round.
    #[arg(long, default_value_t = 6)]
    round_secs: u64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Counted keys (Zipf popularity).
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Seconds of the latency measurement at half of P's rate.
    #[arg(long, default_value_t = 8)]
    latency_secs: u64,
    /// Runs only this scenario, without a report (for profiling the servers).
    #[arg(long)]
    only: Option<String>,
}

#[derive(Debug, clap::Args)]
struct PropagationArgs {
    /// Changes to time.
    #[arg(long, default_value_t = 200)]
    changes: usize,
}

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const PEPPER: &str = "bench-pepper-0123456789abcdef0123456789";
const SERVICE_TOKEN: &str = "bench-service-token-0123456789";

/// Redis, a database, the keys service and `authz_replicas` authz services.
struct Deployment {
    redis: Process,
    redis_port: u16,
    database: Database,
    keys: Process,
    keys_port: u16,
    authz: Vec<AuthzReplica>,
}

/// One authz process: its gRPC port and its HTTP listener's (forward-auth).
struct AuthzReplica {
    process: Process,
    port: u16,
    http_port: u16,
}

impl AuthzReplica {
    /// Load connections to it: `grpc` shared HTTP/2 connections, and its HTTP listener.
    async fn clients(&self, grpc: usize) -> anyhow::Result<Clients> {
        let mut clients = Vec::with_capacity(grpc);
        for _ in 0..grpc {
            clients.push(RawClient::connect(self.port).await?);
        }
        Ok(Clients { grpc: clients, http_port: self.http_port })
    }
}

/// The settings every service process of a deployment shares, and `extra`.
fn service_env(redis_port: u16, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("TOLLGATE_KEY_PEPPER", PEPPER.to_owned()),
        ("TOLLGATE_SERVICE_TOKEN", SERVICE_TOKEN.to_owned()),
        ("TOLLGATE_REDIS_URL", format!("redis://127.0.0.1:{redis_port}")),
        ("TOLLGATE_SHUTDOWN_DRAIN", "0s".to_owned()),
        // The load calls Authorize without a token, as the no-op baseline is called, so the
        // ratio compares like with like.
        ("TOLLGATE_ALLOW_UNAUTHENTICATED_AUTHORIZE", "true".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

impl Deployment {
    /// `hold_ttl`: how long authz keeps a hold no usage report settles.
    /// `authz_extra`: settings of the authz replicas started here.
    async fn start(
        postgres: &str,
        authz_replicas: usize,
        hold_ttl: &str,
        authz_extra: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        let (redis, redis_port) = processes::redis().await?;
        let database = Database::create(postgres).await?;
        let env = |extra: &[(&'static str, String)]| service_env(redis_port, extra);
        let keys_port = free_port();
        let keys = processes::tollgate(
            &["serve", "keys", "--migrate-on-start"],
            &env(&[
                ("TOLLGATE_DATABASE_URL", database.url.clone()),
                ("TOLLGATE_LISTEN", format!("127.0.0.1:{keys_port}")),
            ]),
            keys_port,
        )
        .await?;
        // No metering runs here: build the counters (and their rebuilt markers) once, as its
        // watch would, so Authorize counts.
        let database_env = env(&[("TOLLGATE_DATABASE_URL", database.url.clone())]);
        processes::tollgate_once(&["migrate"], &database_env)?;
        processes::tollgate_once(&["metering", "reconcile"], &database_env)?;
        let mut deployment = Self { redis, redis_port, database, keys, keys_port, authz: Vec::new() };
        for _ in 0..authz_replicas {
            let replica = deployment.spawn_authz(hold_ttl, authz_extra).await?;
            deployment.authz.push(replica);
        }
        Ok(deployment)
    }

    /// Starts another authz process with `extra` settings.
    async fn spawn_authz(&self, hold_ttl: &str, extra: &[(&'static str, String)]) -> anyhow::Result<AuthzReplica> {
        let (port, http_port) = (free_port(), free_port());
        let mut env = service_env(
            self.redis_port,
            &[
                ("TOLLGATE_KEYS_URL", format!("http://127.0.0.1:{}", self.keys_port)),
                ("TOLLGATE_LISTEN", format!("127.0.0.1:{port}")),
                ("TOLLGATE_HTTP_LISTEN", format!("127.0.0.1:{http_port}")),
                // The load generator stands in for a proxy on this machine.
                ("TOLLGATE_TRUSTED_PROXIES", "127.0.0.0/8".to_owned()),
                ("TOLLGATE_HOLD_TTL", hold_ttl.to_owned()),
            ],
        );
        env.extend(extra.iter().cloned());
        let process = processes::tollgate(&["serve", "authz", "--bench-endpoints"], &env, port).await?;
        Ok(AuthzReplica { process, port, http_port })
    }

    fn admin(&self) -> anyhow::Result<Admin> {
        Ok(Admin::new(channel(self.keys_port)?, ADMIN_TOKEN))
    }

    async fn redis_commands(&self) -> anyhow::Result<HashMap<String, u64>> {
        processes::commandstats(self.redis_port, "calls").await
    }
}

/// Scenario A against an authz without the per-RPC layer (gRPC metrics, spans, access log)
/// and without traces exported.
const UNMETERED: &str = "A (unobserved)";

/// Holds of the authz benchmark's calls, which no usage report settles: short, so they do not
/// pile up.
const HOLD_TTL: &str = "10s";

fn channel(port: u16) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?.tcp_nodelay(true).connect_lazy())
}

fn request(secret: &str, model: &str, ip: &str, capability: pb::Capability) -> authz::AuthorizeRequest {
    authz::AuthorizeRequest {
        api_key: secret.into(),
        model: model.into(),
        capability: capability as i32,
        client_ip: ip.into(),
        estimated_tokens: 100,
        request_id: String::new(),
    }
}

fn calls(secrets: &[String]) -> Vec<authz::AuthorizeRequest> {
    secrets.iter().map(|s| request(s, MODEL, "203.0.113.9", pb::Capability::Text)).collect()
}

/// The scenarios of the authz benchmark and their data.
async fn scenarios(admin: &Admin, keys: usize) -> anyhow::Result<Vec<Arc<Scenario>>> {
    admin.catalog().await?;
    // Counted keys spread over 100 prepaid accounts; their quotas bound them, not balances.
    let accounts = 100.min(keys.max(1));
    let mut counted = Vec::with_capacity(keys);
    for a in 0..accounts {
        let account = format!("bench-{a:02}");
        let app = admin.account(&account, false).await?;
        let n = keys / accounts + usize::from(a < keys % accounts);
        counted.extend(admin.keys_with(&format!("accounts/{account}"), &app, counted_key("Counted"), n).await?);
    }
    let app = admin.account("denials", false).await?;
    let denials = "accounts/denials";
    let app = &app;
    let one = |key: pb::Key| async move { admin.keys_with(denials, app, key, 1).await.map(|mut s| s.remove(0)) };
    let disabled = one(pb::Key { enabled: Some(false), ..counted_key("Disabled") }).await?;
    let fenced = one(pb::Key { ip_allowlist: vec!["10.0.0.0/8".into()], ..counted_key("Fenced") }).await?;
    let text_only =
        one(pb::Key { capabilities: vec![pb::Capability::Text as i32], ..counted_key("Text only") }).await?;
    let one_model = one(pb::Key { allowed_models: vec!["other-model".into()], ..counted_key("One model") }).await?;
    let slow = one(pb::Key { rpm_limit: Some(1), ..counted_key("Slow") }).await?;
    let broke = one(pb::Key { quota: Some(1), ..counted_key("Broke") }).await?;
    let deny_calls = vec![
        request(&disabled, MODEL, "203.0.113.9", pb::Capability::Text),
        request(&fenced, MODEL, "203.0.113.9", pb::Capability::Text),
        request(&text_only, MODEL, "203.0.113.9", pb::Capability::Image),
        request(&one_model, MODEL, "203.0.113.9", pb::Capability::Text),
        request(&slow, MODEL, "203.0.113.9", pb::Capability::Text),
        request(&broke, MODEL, "203.0.113.9", pb::Capability::Text),
    ];
    let postpaid_app = admin.account("postpaid", true).await?;
    let free_key = pb::Key { display_name: "Free".into(), group: "groups/free".into(), ..Default::default() };
    let free = admin.keys_with("accounts/postpaid", &postpaid_app, free_key, 1_000).await?;
    let unknown: Vec<String> =
        (0..1_000).map(|_| tollgate_core::key_format::ApiKeySecret::generate().expose().to_owned()).collect();
    let malformed: Vec<String> = (0..100).map(|i| format!("sk-not-a-real-key-{i}")).collect();

    // Popular keys are spread over the accounts (the probe spreads its calls by key hash):
    // otherwise the Zipf head would all land in the first account's hash slot.
    shuffle(&mut counted);
    let counted_calls = calls(&counted);
    let e = Scenario { name: "E", target: Target::Noop, pools: vec![Pool::new(1.0, counted_calls.clone(), true)] };
    let p = Scenario { name: "P", target: Target::Probe, pools: vec![Pool::new(1.0, counted_calls.clone(), true)] };
    let c = Scenario {
        name: "C",
        target: Target::Check,
        pools: vec![Pool::checks(0.95, counted_calls.clone(), true), Pool::checks(0.05, deny_calls.clone(), false)],
    };
    let f = Scenario {
        name: "F",
        target: Target::ForwardAuth,
        pools: vec![
            Pool::forward_auths(0.95, counted_calls.clone(), true),
            Pool::forward_auths(0.05, deny_calls.clone(), false),
        ],
    };
    let a = Scenario {
        name: "A",
        target: Target::Authorize,
        pools: vec![Pool::new(0.95, counted_calls, true), Pool::new(0.05, deny_calls, false)],
    };
    let a0 = Scenario { name: "A0", target: Target::Authorize, pools: vec![Pool::new(1.0, calls(&free), true)] };
    let d = Scenario {
        name: "D",
        target: Target::Authorize,
        pools: vec![
            Pool::new(1.0, calls(&unknown), false),
            Pool::new(1.0, calls(&malformed), false),
            Pool::new(1.0, calls(std::slice::from_ref(&disabled)), false),
        ],
    };
    // C and F right after A, as A runs right after P: each then meets as many of its
    // predecessor's expiring holds (every counter script sweeps them), so their Redis work
    // compares.
    Ok([e, p, a, c, f, a0, d].into_iter().map(Arc::new).collect())
}

/// A deterministic Fisher–Yates shuffle.
fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// What one scenario's round measured.
#[derive(Debug, Clone, Default)]
struct Round {
    counts: Counts,
    seconds: f64,
    cpu: HashMap<&'static str, u64>,
    evalsha: u64,
    redis_calls: u64,
    pg_transactions: i64,
}

impl Round {
    fn rate(&self) -> f64 {
        self.counts.total() as f64 / self.seconds
    }
}

/// Calls Authorize once with every template of an Authorize scenario, so its keys are cached.
async fn warm(scenario: &Scenario, channel: &Channel) -> anyhow::Result<()> {
    // Check's and forward-auth's keys are A's: warmed by A's rounds.
    if scenario.target != Target::Authorize {
        return Ok(());
    }
    let mut client = authz::authz_service_client::AuthzServiceClient::new(channel.clone());
    for pool in &scenario.pools {
        for (i, call) in pool.requests.iter().enumerate() {
            client.authorize(authz::AuthorizeRequest { request_id: format!("warm-{i}"), ..call.clone() }).await?;
        }
    }
    Ok(())
}

/// Postgres publishes an idle backend's statistics up to 10 s late, so the count is read
/// once it has stopped moving: the transactions of one phase are not blamed on the next.
async fn settled_transactions(database: &Database) -> anyhow::Result<i64> {
    let mut last = database.transactions().await?;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        // Each read is a transaction of its own.
        let now = database.transactions().await? - 1;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

async fn measure(
    deployment: &Deployment,
    authz_pid: u32,
    scenario: Arc<Scenario>,
    channels: &Clients,
    warm_channel: &Channel,
    args: &AuthzArgs,
) -> anyhow::Result<Round> {
    warm(&scenario, warm_channel).await?;
    let pids: Vec<(&'static str, u32)> = vec![
        ("authz", authz_pid),
        ("keys", deployment.keys.pid()),
        ("redis", deployment.redis.pid()),
        ("load generator", std::process::id()),
    ];
    let pg_before = settled_transactions(&deployment.database).await?;
    let cpu_before: Vec<u64> = pids.iter().map(|(_, pid)| cpu_micros(*pid).unwrap_or(0)).collect();
    let redis_before = deployment.redis_commands().await?;
    let started = Instant::now();
    let counts = closed_loop(scenario, channels, args.concurrency, Duration::from_secs(args.round_secs)).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = pids
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| (*name, cpu_micros(*pid).unwrap_or(before).saturating_sub(before)))
        .collect();
    let redis_after = deployment.redis_commands().await?;
    let pg_after = settled_transactions(&deployment.database).await?;
    let delta = |name: &str| redis_after.get(name).copied().unwrap_or(0) - redis_before.get(name).copied().unwrap_or(0);
    let redis_calls = redis_after.keys().filter(|name| name.as_str() != "info").map(|name| delta(name)).sum();
    Ok(Round { counts, seconds, cpu, evalsha: delta("evalsha"), redis_calls, pg_transactions: pg_after - pg_before })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn authz_bench(postgres: &str, args: AuthzArgs) -> anyhow::Result<()> {
    eprintln!("starting Redis, Postgres database, keys and authz…");
    // The measured authz exports traces as in production: OTLP to a collector, sampled at the
    // default ratio.
    let (spans, otlp_endpoint) = span_sink::SpanSink::start().await?;
    let deployment =
        Deployment::start(postgres, 1, HOLD_TTL, &[("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)]).await?;
    let result = async {
        let admin = deployment.admin()?;
        eprintln!("seeding {} counted keys…", args.keys);
        let scenarios = scenarios(&admin, args.keys).await?;
        let measured_authz = &deployment.authz[0];
        let channels = measured_authz.clients(args.connections).await?;
        let warm_channel = channel(measured_authz.port)?;
        let authz_pid = measured_authz.process.pid();
        // The same authz without the per-RPC layer and traces: what observing costs.
        let unmetered = deployment.spawn_authz(HOLD_TTL, &[("TOLLGATE_NO_GRPC_METRICS", "true".to_owned())]).await?;
        let unmetered_channels = unmetered.clients(args.connections).await?;
        let unmetered_warm = channel(unmetered.port)?;
        if let Some(only) = &args.only {
            let scenario = scenarios.iter().find(|s| s.name == only).context("no such scenario")?;
            let measured = measure(&deployment, authz_pid, scenario.clone(), &channels, &warm_channel, &args).await?;
            eprintln!("{only}: {:.0} calls/s; CPU µs/call: {:?}", measured.rate(), measured.cpu);
            return Ok(());
        }
        let mut rounds: HashMap<&'static str, Vec<Round>> = HashMap::new();
        for round in 1..=args.rounds {
            for scenario in &scenarios {
                let measured =
                    measure(&deployment, authz_pid, scenario.clone(), &channels, &warm_channel, &args).await?;
                eprintln!(
                    "round {round} {:>2}: {:>8.0} calls/s ({} failed)",
                    scenario.name,
                    measured.rate(),
                    measured.counts.failed
                );
                rounds.entry(scenario.name).or_default().push(measured);
            }
            let a = scenarios.iter().find(|s| s.name == "A").context("scenario A")?;
            let measured =
                measure(&deployment, unmetered.process.pid(), a.clone(), &unmetered_channels, &unmetered_warm, &args)
                    .await?;
            eprintln!("round {round} A unobserved: {:>8.0} calls/s", measured.rate());
            rounds.entry(UNMETERED).or_default().push(measured);
        }
        let rate = |name: &str| median(&mut rounds[name].iter().map(Round::rate).collect::<Vec<_>>());
        let p_max = rate("P");
        eprintln!("latency at half of P's rate ({:.0} calls/s)…", p_max / 2.0);
        let latency = |scenario: Arc<Scenario>| {
            open_loop(scenario, &channels, args.concurrency, p_max / 2.0, Duration::from_secs(args.latency_secs))
        };
        // Interleaved as the throughput rounds are; each scenario's p50 and p99 is the median
        // of its rounds'.
        let mut latencies: HashMap<&'static str, Vec<(u64, u64)>> = HashMap::new();
        for _ in 0..args.rounds {
            for scenario in &scenarios[..5] {
                warm(scenario, &warm_channel).await?;
                let sorted = latency(scenario.clone()).await;
                latencies.entry(scenario.name).or_default().push((quantile(&sorted, 0.5), quantile(&sorted, 0.99)));
            }
        }
        report(&rounds, &args, &latencies);
        // Proof the measured authz traced: spans reach the collector at the default ratio.
        println!("Spans the measured authz exported during the run: {}.", spans.spans());
        anyhow::Ok(())
    }
    .await;
    deployment.database.drop_now().await;
    result
}

fn report(
    rounds: &HashMap<&'static str, Vec<Round>>,
    args: &AuthzArgs,
    latencies: &HashMap<&'static str, Vec<(u64, u64)>>,
) {
    let latency = |name: &str| {
        let mut p50: Vec<f64> = latencies[name].iter().map(|(p50, _)| *p50 as f64 / 1000.0).collect();
        let mut p99: Vec<f64> = latencies[name].iter().map(|(_, p99)| *p99 as f64 / 1000.0).collect();
        (median(&mut p50), median(&mut p99))
    };
    let order = ["E", "P", "A", "C", "F", "A0", "D"];
    let rate = |name: &str| median(&mut rounds[name].iter().map(Round::rate).collect::<Vec<_>>());
    let per_call = |name: &str, f: &dyn Fn(&Round) -> f64| {
        median(&mut rounds[name].iter().map(|r| f(r) / r.counts.total().max(1) as f64).collect::<Vec<_>>())
    };
    println!(
        "## Authorize ({} rounds × {} s, {} callers on {} connections, {} Zipf keys)\n",
        args.rounds, args.round_secs, args.concurrency, args.connections, args.keys
    );
    println!(
        "| scenario | calls/s (median) | vs E | allowed | EVALSHA / call | Redis commands / call¹ | Postgres xacts / call | CPU µs / call: authz | redis | keys | load generator |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let e = rate("E");
    for name in order {
        let allowed = per_call(name, &|r| r.counts.allowed as f64);
        let cpu = |process: &str| per_call(name, &|r| r.cpu.get(process).copied().unwrap_or(0) as f64);
        println!(
            "| {name} | {:.0} | {:.2} | {:.1} % | {:.3} | {:.2} | {:.5} | {:.1} | {:.1} | {:.1} | {:.1} |",
            rate(name),
            rate(name) / e,
            allowed * 100.0,
            per_call(name, &|r| r.evalsha as f64),
            per_call(name, &|r| r.redis_calls as f64),
            per_call(name, &|r| r.pg_transactions as f64),
            cpu("authz"),
            cpu("redis"),
            cpu("keys"),
            cpu("load generator"),
        );
    }
    println!("\n¹ Counted by Redis's INFO commandstats, which includes the commands a script runs.\n");
    let (p, a, a0, d) = (rate("P"), rate("A"), rate("A0"), rate("D"));
    let ((e50, e99), (p50, p99_p), (a50, p99_a)) = (latency("E"), latency("P"), latency("A"));
    println!("| target | measured | verdict |");
    println!("|---|---|---|");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("| A ≥ 0.90 × P | A/P = {:.2} | {} |", a / p, verdict(a / p >= 0.90));
    println!("| A0 ≥ 0.85 × E | A0/E = {:.2} | {} |", a0 / e, verdict(a0 / e >= 0.85));
    println!("| D/E | {:.2} | — |", d / e);
    let unmetered = rate(UNMETERED);
    let cpu_a = per_call("A", &|r| r.cpu.get("authz").copied().unwrap_or(0) as f64);
    let cpu_unmetered = per_call(UNMETERED, &|r| r.cpu.get("authz").copied().unwrap_or(0) as f64);
    println!(
        "| gRPC metrics, spans, exported traces and access log cost ≤ 3 % of A | A {a:.0} vs {unmetered:.0} calls/s without: {:.1} %; authz CPU {cpu_a:.1} vs {cpu_unmetered:.1} µs a call | {} |",
        (1.0 - a / unmetered) * 100.0,
        verdict(a >= 0.97 * unmetered)
    );
    let c = rate("C");
    let (_, p99_c) = latency("C");
    println!("| C (Envoy's Check on A's calls) ≥ 0.90 × A | C/A = {:.2} | {} |", c / a, verdict(c / a >= 0.90));
    println!(
        "| p99 at half of P's rate: C ≤ A + 0.3 ms | C p99 {p99_c:.2} ms, A p99 {p99_a:.2} ms | {} |",
        verdict(p99_c <= p99_a + 0.3)
    );
    let f = rate("F");
    let (_, p99_f) = latency("F");
    println!("| F (HTTP forward-auth on A's calls) ≥ 0.90 × A | F/A = {:.2} | {} |", f / a, verdict(f / a >= 0.90));
    println!(
        "| p99 at half of P's rate: F ≤ A + 0.3 ms | F p99 {p99_f:.2} ms, A p99 {p99_a:.2} ms | {} |",
        verdict(p99_f <= p99_a + 0.3)
    );
    let evalsha_a0 = per_call("A0", &|r| r.evalsha as f64);
    let redis_d = per_call("D", &|r| r.redis_calls as f64);
    let pg_d = per_call("D", &|r| r.pg_transactions as f64);
    println!("| A0: zero Redis commands | {evalsha_a0:.5} EVALSHA / call | {} |", verdict(evalsha_a0 < 0.001));
    println!(
        "| D: zero Redis, zero Postgres once cached | {redis_d:.5} Redis, {pg_d:.5} Postgres / call | {} |",
        verdict(redis_d < 0.001 && pg_d < 0.001)
    );
    println!(
        "| p99 at half of P's rate: A ≤ P + 0.3 ms | E p50 {e50:.2} ms, p99 {e99:.2} ms; P p50 {p50:.2} ms, p99 {p99_p:.2} ms; A p50 {a50:.2} ms, p99 {p99_a:.2} ms | {} |",
        verdict(p99_a <= p99_p + 0.3)
    );
    println!(
        "\nRatios: A/P = {:.2}, A/E = {:.2}, A0/E = {:.2}, D/E = {:.2}, P/E = {:.2}.",
        a / p,
        a / e,
        a0 / e,
        d / e,
        p / e
    );
}

async fn propagation(postgres: &str, args: PropagationArgs) -> anyhow::Result<()> {
    let deployment = Deployment::start(postgres, 2, HOLD_TTL, &[]).await?;
    let result = async {
        let admin = deployment.admin()?;
        admin.catalog().await?;
        let app = admin.account("watched", true).await?;
        let key = pb::Key { display_name: "Watched".into(), group: "groups/free".into(), ..Default::default() };
        let secret = admin.keys_with("accounts/watched", &app, key, 1).await?.remove(0);
        let name = admin
            .keys()
            .list_keys(pb::ListKeysRequest { parent: "accounts/watched".into(), ..Default::default() })
            .await?
            .into_inner()
            .keys
            .remove(0)
            .name;
        let replicas: Vec<Channel> =
            deployment.authz.iter().map(|replica| channel(replica.port)).collect::<Result<_, _>>()?;
        let decide = |channel: Channel| {
            let request = request(&secret, MODEL, "203.0.113.9", pb::Capability::Text);
            async move {
                let mut client = authz::authz_service_client::AuthzServiceClient::new(channel);
                let request = authz::AuthorizeRequest { request_id: "p".into(), ..request };
                client.authorize(request).await.map(|r| r.into_inner().decision())
            }
        };
        let mut delays = Vec::with_capacity(args.changes);
        for change in 0..args.changes {
            let enable = change % 2 == 1;
            let wanted = if enable { authz::Decision::Allow } else { authz::Decision::Deny };
            for replica in &replicas {
                decide(replica.clone()).await?; // cached on every replica before the change
            }
            let started = Instant::now();
            admin
                .keys()
                .update_key(pb::UpdateKeyRequest {
                    key: Some(pb::Key { name: name.clone(), enabled: Some(enable), ..Default::default() }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
                    expire_after: None,
                })
                .await?;
            for replica in &replicas {
                while decide(replica.clone()).await? != wanted {
                    anyhow::ensure!(started.elapsed() < Duration::from_secs(5), "a replica never obeyed");
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            delays.push(started.elapsed().as_micros() as u64);
        }
        delays.sort_unstable();
        println!("## Propagation of a key change to 2 authz replicas ({} changes)\n", args.changes);
        println!("Time from sending UpdateKey until both replicas answer the new way:\n");
        println!("| p50 | p99 | max |");
        println!("|---|---|---|");
        println!(
            "| {:.1} ms | {:.1} ms | {:.1} ms |",
            quantile(&delays, 0.5) as f64 / 1000.0,
            quantile(&delays, 0.99) as f64 / 1000.0,
            quantile(&delays, 1.0) as f64 / 1000.0
        );
        anyhow::Ok(())
    }
    .await;
    deployment.database.drop_now().await;
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Authz(args) => authz_bench(&cli.postgres, args).await,
        Command::Propagation(args) => propagation(&cli.postgres, args).await,
        Command::Metering(args) => metering::run(args).await,
    }
    .context("benchmark failed")
}
