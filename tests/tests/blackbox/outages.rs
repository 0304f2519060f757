//! How long answers take while a dependency is down: every call is answered within its
//! configured bound (a Redis call's timeout, the database's acquire timeout), and the service
//! recovers by itself when the dependency is back.

use std::time::{Duration, Instant};

use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as pb;
use tollgate_proto::metering::v1 as metering;
use tollgate_test_support::{PrivatePostgres, PrivateRedis};
use tollgate_tests::fixtures::{create_key, postpaid_world};
use tollgate_tests::{Harness, Options};
use tonic::Code;

/// The authz replicas' Redis call timeout in the harness.
const AUTHZ_REDIS_TIMEOUT: Duration = Duration::from_millis(200);
const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(250);

/// The `q`-quantile of `samples`.
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_answers_within_twice_the_redis_timeout_while_redis_is_down() {
    let Some(redis) = PrivateRedis::start().await else { return };
    let mut redis = redis;
    let Some(h) = Harness::production(Options { redis_url: Some(redis.url()), ..Default::default() }).await else {
        return;
    };
    let w = postpaid_world(&h, "slowredis").await;
    let free = create_key(&h, &w, w.key("Free")).await.1;
    let paid = create_key(&h, &w, pb::Key { quota: Some(1_000_000), ..w.key("Paid") }).await.1;
    let client = h.authz();
    for secret in [&free, &paid] {
        assert_eq!(
            client.clone().authorize(w.call(secret)).await.unwrap().get_ref().decision(),
            authz::Decision::Allow
        );
    }
    redis.kill();
    // Long enough for the invalidation subscriber to fail and retry several times.
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for secret in [&free, &paid] {
            let started = Instant::now();
            let answer = client.clone().authorize(w.call(secret)).await;
            latencies.push(started.elapsed());
            match answer {
                Ok(response) => assert_eq!(response.get_ref().decision(), authz::Decision::Allow, "{secret:?}"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "money fails closed: {status:?}");
                    let message = status.message().to_lowercase();
                    assert!(!message.contains("redis") && !message.contains("refused"), "a cause leaked: {status:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The HTTP door fails closed the same way: 503 in OpenAI's shape for the key with money
    // limits, an allow for the key without.
    let forward_auth = |secret: &str| {
        let bearer = format!("Bearer {secret}");
        let body = format!(r#"{{"model": "{}", "messages": []}}"#, w.model);
        let token = h.admin_token.clone();
        let address = h.authz_server().http;
        async move {
            let headers = [
                ("Authorization", bearer.as_str()),
                ("X-Tollgate-Gateway-Token", token.as_str()),
                ("X-Forwarded-Uri", "/v1/chat/completions"),
            ];
            tollgate_tests::http::post(address, "/v1/forward-auth", &headers, &body).await
        }
    };
    let closed = forward_auth(&paid).await;
    assert_eq!((closed.status, closed.error_code()), (503, "service_unavailable".to_owned()), "{}", closed.body);
    assert_eq!(closed.header("retry-after"), Some("1"));
    assert!(!closed.body.to_lowercase().contains("redis"), "a cause leaked: {}", closed.body);
    assert_eq!(forward_auth(&free).await.status, 200);
    // Authz answers from its caches: it keeps saying SERVING while Redis is away.
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.authz_channel());
    let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(check.get_ref().status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    let p99 = quantile(&mut latencies, 0.99);
    eprintln!("{} calls while Redis was down: p50 {:?}, p99 {p99:?}", latencies.len(), quantile(&mut latencies, 0.5));
    assert!(p99 <= 2 * AUTHZ_REDIS_TIMEOUT, "p99 {p99:?} over twice the Redis timeout");
    // A change made meanwhile waits in the key-state outbox, and its depth says so.
    create_key(&h, &w, w.key("Made while Redis was down")).await;
    let outbox_depth = async || {
        let text = h.server.as_ref().expect("the keys service").scrape_metrics().await;
        crate::metrics::sample(&text, "tollgate_keys_state_outbox_depth", &[])
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while outbox_depth().await < 1.0 {
        assert!(Instant::now() < deadline, "the outbox depth never showed the change waiting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    redis.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.clone().authorize(w.call(&paid)).await.is_err() {
        assert!(Instant::now() < deadline, "authz did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while outbox_depth().await > 0.0 {
        assert!(Instant::now() < deadline, "the outbox was not pushed once Redis was back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_calls_fail_within_the_acquire_timeout_while_postgres_is_down() {
    let Some(mut postgres) = PrivatePostgres::start().await else { return };
    let options = Options {
        database_url: Some(postgres.url()),
        db_acquire_timeout: Some(DB_ACQUIRE_TIMEOUT),
        ..Default::default()
    };
    let Some(h) = Harness::production(options).await else { return };
    let w = postpaid_world(&h, "nodb").await;
    let get = async || h.accounts().get_account(pb::GetAccountRequest { name: w.account.clone() }).await;
    get().await.expect("the account is there");
    postgres.stop();
    // Pooled connections find out they are dead on first use.
    for _ in 0..8 {
        let _ = get().await;
    }
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let status = get().await.expect_err("no database");
        latencies.push(started.elapsed());
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let p90 = quantile(&mut latencies, 0.9);
    eprintln!("GetAccount without Postgres: p90 {p90:?}, max {:?}", latencies.last().unwrap());
    assert!(p90 <= DB_ACQUIRE_TIMEOUT + Duration::from_millis(150), "p90 {p90:?}");
    assert!(*latencies.last().unwrap() <= Duration::from_secs(1), "max {:?}", latencies.last());
    postgres.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get().await.is_err() {
        assert!(Instant::now() < deadline, "the keys service did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_and_metering_started_while_redis_is_down_wait_and_then_serve() {
    let Some(mut redis) = PrivateRedis::start().await else { return };
    let Some(mut h) = Harness::production(Options { redis_url: Some(redis.url()), ..Default::default() }).await else {
        return;
    };
    let w = postpaid_world(&h, "latestart").await;
    let secret = create_key(&h, &w, pb::Key { quota: Some(1_000_000), ..w.key("Late") }).await.1;
    redis.kill();
    let down_for = Duration::from_secs(2);
    let started = Instant::now();
    let restart = tokio::spawn(async move {
        tokio::time::sleep(down_for).await;
        redis.restart().await.unwrap();
        redis
    });
    // Each waits for SERVING and fails the test if its server stops.
    let authz_channel = h.start_authz_replica().await;
    let metering_channel = h.start_metering().await;
    assert!(started.elapsed() >= down_for, "SERVING before Redis answered: {:?}", started.elapsed());
    let _redis = restart.await.unwrap();
    let response = h.authz_on(authz_channel).authorize(w.call(&secret)).await.expect("authorize");
    assert_eq!(response.get_ref().decision(), authz::Decision::Allow);
    let mut health = tonic_health::pb::health_client::HealthClient::new(metering_channel);
    let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(check.get_ref().status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    h.stop().await;
}

/// A cluster primary fails and its replica is promoted: calls for the accounts on its slots
/// fail meanwhile (money closed, within the timeout) and succeed again once the replica has
/// taken over, with nobody restarting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_failing_over_is_survived() {
    let Some(mut cluster) = tollgate_test_support::PrivateRedisCluster::start(3, 1).await else { return };
    let Some(h) = Harness::production(Options { redis_url: Some(cluster.url()), ..Default::default() }).await else {
        return;
    };
    let w = postpaid_world(&h, "failover").await;
    let (key, paid) = create_key(&h, &w, pb::Key { quota: Some(1_000_000), ..w.key("Paid") }).await;
    let client = h.authz();
    assert_eq!(client.clone().authorize(w.call(&paid)).await.unwrap().get_ref().decision(), authz::Decision::Allow);
    let primary = cluster.primary_of("{failover}").expect("a primary serves the account's slot");
    cluster.kill(primary);
    let killed = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let started = Instant::now();
        let answer = client.clone().authorize(w.call(&paid)).await;
        slowest = slowest.max(started.elapsed());
        match answer {
            Ok(response) if response.get_ref().decision() == authz::Decision::Allow => break,
            Ok(response) => panic!("denied during a failover: {response:?}"),
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "authz did not recover after the failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("recovered {:?} after the primary died; slowest answer {slowest:?}", killed.elapsed());
    assert!(slowest <= 2 * AUTHZ_REDIS_TIMEOUT + Duration::from_millis(100), "slowest answer {slowest:?}");
    assert_ne!(cluster.primary_of("{failover}"), Some(primary), "a replica was promoted");
    // Changes still reach authz, and usage is still taken.
    h.keys()
        .update_key(pb::UpdateKeyRequest {
            key: Some(pb::Key { name: key.name.clone(), enabled: Some(false), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
            expire_after: None,
        })
        .await
        .expect("the keys service writes through the new primary");
    // The invalidation subscriber may still be waiting out its back-off (at most 2 s) from the
    // failover; once subscribed again it drops everything it cached.
    let deadline = Instant::now() + Duration::from_secs(4);
    while client.clone().authorize(w.call(&paid)).await.map(|r| r.get_ref().reason()).ok()
        != Some(authz::DenyReason::KeyDisabled)
    {
        assert!(Instant::now() < deadline, "the disabled key was not obeyed within the subscriber's back-off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = w.report(&key, "after-failover", 10);
    // Metering's own connection is made again after its first failures and reads the new
    // slot map: a gateway retries an UNAVAILABLE report.
    let retried = Instant::now();
    loop {
        let request = metering::RecordUsageRequest { report: Some(report.clone()) };
        match h.metering().record_usage(request).await {
            Ok(_) => break,
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(retried.elapsed() < Duration::from_secs(10), "usage reports were not taken again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("usage reports taken again after {:?}", retried.elapsed());
    h.stop().await;
}

/// Redis restarts empty in the middle of a day: the counters read as untouched, but the lost
/// markers make every money check unknown (closed) until metering has rebuilt them from the
/// ledger, by itself, within seconds; then a key gets exactly the room it had left, and a
/// funded account's keys work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_grants_nothing_extra_and_heals_by_itself() {
    let Some(mut redis) = PrivateRedis::start().await else { return };
    let Some(h) = Harness::production(Options { redis_url: Some(redis.url()), ..Default::default() }).await else {
        return;
    };
    let _redis = losing_data_grants_nothing_extra(&h, async move {
        redis.restart().await.unwrap();
        redis
    })
    .await;
    h.stop().await;
}

/// The same on a Redis Cluster whose every node is flushed: the rebuild (a reconcile across
/// slots) runs on the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_losing_its_data_grants_nothing_extra_and_heals_by_itself() {
    let Some(cluster) = tollgate_test_support::PrivateRedisCluster::start(3, 0).await else { return };
    let Some(h) = Harness::production(Options { redis_url: Some(cluster.url()), ..Default::default() }).await else {
        return;
    };
    let _cluster = losing_data_grants_nothing_extra(&h, async move {
        for port in &cluster.ports {
            let flushed = std::process::Command::new("redis-cli").args(["-p", &port.to_string(), "FLUSHALL"]).output();
            assert!(flushed.is_ok_and(|o| o.status.success()), "FLUSHALL on {port}");
        }
        cluster
    })
    .await;
    h.stop().await;
}

/// Spends 2,400 of a key's 3,000 quota, lets `lose` make Redis forget everything, then checks
/// that exactly the room left is allowed once the counters are rebuilt by themselves.
async fn losing_data_grants_nothing_extra<T>(h: &Harness, lose: impl Future<Output = T>) -> T {
    let w = tollgate_tests::fixtures::world(h, "amnesia").await;
    let credits = metering::AddCreditsRequest {
        account: w.account.clone(),
        credits: 100_000,
        reason: "top-up".into(),
        request_id: "top-up-1".into(),
    };
    h.metering().add_credits(credits).await.expect("add credits");
    // 300 credits held per call (100 tokens at the dearer price, × 1.5); 2,400 spent of 3,000.
    let (limited, limited_secret) = create_key(h, &w, pb::Key { quota: Some(3_000), ..w.key("Limited") }).await;
    let unlimited = create_key(h, &w, w.key("Unlimited")).await.1;
    for i in 0..8 {
        let report = w.report(&limited, &format!("spent-{i}"), 200);
        h.metering().record_usage(metering::RecordUsageRequest { report: Some(report) }).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let key = h.keys().get_key(pb::GetKeyRequest { name: limited.name.clone() }).await.unwrap().into_inner();
        if key.key.map(|k| k.credits_used) == Some(2_400) {
            break;
        }
        assert!(Instant::now() < deadline, "the usage was not settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let kept = lose.await;
    let lost = Instant::now();
    let client = h.authz();
    let (mut allowed, mut unavailable) = (0, 0);
    let denied = loop {
        match client.clone().authorize(w.call(&limited_secret)).await {
            Ok(response) if response.get_ref().decision() == authz::Decision::Allow => allowed += 1,
            Ok(response) => break response.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                unavailable += 1;
            }
        }
        assert!(allowed <= 2, "allowed past the quota after Redis lost its data");
        assert!(lost.elapsed() < Duration::from_secs(15), "the counters were not rebuilt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("rebuilt within {:?}: {unavailable} calls unavailable meanwhile", lost.elapsed());
    assert_eq!(allowed, 2, "exactly the room that was left");
    assert_eq!(denied.reason(), authz::DenyReason::QuotaExhausted);
    let funded = client.clone().authorize(w.call(&unlimited)).await.expect("the balance is back");
    assert_eq!(funded.get_ref().decision(), authz::Decision::Allow, "{funded:?}");
    kept
}

/// Postgres is down when the keys and metering services start: they start anyway, report
/// NOT_SERVING, migrate and prepare once it answers, then serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_metering_started_while_postgres_is_down_wait_and_then_serve() {
    let Some(mut postgres) = PrivatePostgres::start().await else { return };
    let url = postgres.url();
    postgres.stop();
    let down_for = Duration::from_secs(2);
    let started = Instant::now();
    let restart = tokio::spawn(async move {
        tokio::time::sleep(down_for).await;
        postgres.restart().await.unwrap();
        postgres
    });
    // Each server is waited for until SERVING, and the test fails if one stops.
    let Some(h) = Harness::production(Options { database_url: Some(url), ..Default::default() }).await else {
        return;
    };
    assert!(started.elapsed() >= down_for, "SERVING before Postgres answered: {:?}", started.elapsed());
    let _postgres = restart.await.unwrap();
    let w = postpaid_world(&h, "latedb").await;
    let secret = create_key(&h, &w, w.key("Late")).await.1;
    let response = h.authz().authorize(w.call(&secret)).await.expect("authorize");
    assert_eq!(response.get_ref().decision(), authz::Decision::Allow);
    h.stop().await;
}

/// RecordUsage checks a report's key and model with the keys service, but never loses a report
/// to it: with the keys service gone, reports are taken at once and wait for the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_taken_while_the_keys_service_is_down() {
    let Some(mut h) = Harness::production(Options::default()).await else { return };
    let w = postpaid_world(&h, "nokeysvc").await;
    let (key, _) = create_key(&h, &w, w.key("Reporting")).await;
    let metering = h.metering();
    h.stop_keys_service().await;
    let report = w.report(&key, "while-keys-is-down", 10);
    let started = Instant::now();
    metering
        .clone()
        .record_usage(metering::RecordUsageRequest { report: Some(report) })
        .await
        .expect("taken without the keys service");
    assert!(started.elapsed() < Duration::from_secs(1), "held up {:?}", started.elapsed());
    h.stop().await;
}

/// Readiness tells the truth: the keys and metering services go NOT_SERVING when Postgres has
/// not answered for longer than the readiness grace, and SERVING again by themselves once it
/// answers; authz keeps SERVING, answering from its caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_postgres_and_authz_keeps_serving() {
    let Some(mut postgres) = PrivatePostgres::start().await else { return };
    let grace = Duration::from_millis(500);
    let options = Options {
        database_url: Some(postgres.url()),
        keys: tollgate::KeysSettings { readiness_grace: grace, ..Default::default() },
        metering: tollgate::MeteringSettings { readiness_grace: grace, ..Default::default() },
        ..Default::default()
    };
    let Some(h) = Harness::production(options).await else { return };
    let status = |channel: tonic::transport::Channel| async move {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
        health.check(request).await.map(|r| r.get_ref().status).unwrap_or(-1)
    };
    let (serving, not_serving) = (1, 2);
    let wait_for = |expected: i32, what: &'static str| {
        let keys = h.channel.clone();
        let metering = h.metering_server().channel.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let now = (status(keys.clone()).await, status(metering.clone()).await);
                if now == (expected, expected) {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: keys and metering report {now:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    postgres.stop();
    let stopped = Instant::now();
    wait_for(not_serving, "Postgres stopped").await;
    assert!(stopped.elapsed() >= grace, "NOT_SERVING before the grace: {:?}", stopped.elapsed());
    assert_eq!(status(h.authz_server().channel.clone()).await, serving, "authz keeps serving");
    postgres.restart().await.unwrap();
    wait_for(serving, "Postgres back").await;
    h.stop().await;
}
