//! Authz in production shape (its own process role, Redis, the keys service behind it):
//! Redis commands per call, Redis and keys-service outages, and how fast every replica obeys
//! a change. Each test uses a Redis of its own where it counts or kills it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as pb;
use tollgate_test_support::PrivateRedis;
use tollgate_tests::fixtures::{World, create_key, mask, postpaid_world};
use tollgate_tests::{Harness, Options};
use tonic::Code;

type Client = authz::authz_service_client::AuthzServiceClient<tollgate_tests::Authed>;

async fn authorize_on(mut client: Client, request: authz::AuthorizeRequest) -> authz::AuthorizeResponse {
    client.authorize(request).await.unwrap().into_inner()
}

/// A key in a group without default limits, so only its own settings count.
async fn key_without_defaults(h: &Harness, w: &World, key: pb::Key) -> String {
    let group_id = format!("bare-{}", w.account_id);
    let _ = h
        .groups()
        .create_group(pb::CreateGroupRequest {
            group_id: group_id.clone(),
            group: Some(pb::Group { display_name: "Bare".into(), ..Default::default() }),
        })
        .await;
    create_key(h, w, pb::Key { group: format!("groups/{group_id}"), ..key }).await.1
}

/// Client commands Redis receives while `work` runs (commands run inside scripts excluded),
/// read with `redis-cli monitor`.
async fn commands_during<F: Future<Output = ()>>(redis: &PrivateRedis, work: F) -> Vec<String> {
    let mut monitor = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-cli is installed with redis-server");
    let mut lines = BufReader::new(monitor.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("OK"));
    work.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor.kill().await.unwrap();
    let mut commands = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        // `1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" …`; scripts' own calls say `[0 lua]`.
        // The metering workers' polls of the usage stream (`{usage}` keys), its watch of the
        // counters' rebuilt markers and its readiness probe (PING) are not authz's.
        let watch = line.contains("\"EXISTS\"") && (line.contains(":rebuilt") || line.contains("{rebuild}"));
        let probe = line.contains("\"PING\"");
        if !line.contains(" lua] ") && !line.contains("{usage}") && !watch && !probe {
            commands.push(line.split_whitespace().nth(3).unwrap_or_default().trim_matches('"').to_uppercase());
        }
    }
    commands
}

async fn production_with_private_redis(options: Options) -> Option<(Harness, PrivateRedis)> {
    let redis = PrivateRedis::start().await?;
    let h = Harness::production(Options { redis_url: Some(redis.url()), ..options }).await?;
    Some((h, redis))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_per_authorize() {
    let Some((h, redis)) = production_with_private_redis(Options::default()).await else { return };
    let w = postpaid_world(&h, "cmds").await;
    let free = key_without_defaults(&h, &w, w.key("Nothing to count")).await;
    let counted =
        key_without_defaults(&h, &w, pb::Key { quota: Some(1_000_000), rpm_limit: Some(1_000), ..w.key("Counted") })
            .await;
    let unknown = tollgate_core::key_format::ApiKeySecret::generate().expose().to_owned();
    let channel = h.authz_on(h.authz_channel());
    // Warm the in-process caches (the first lookup of each key reads Redis).
    for secret in [&free, &counted, &unknown] {
        authorize_on(channel.clone(), w.call(secret)).await;
    }

    let commands = commands_during(&redis, async {
        for _ in 0..20 {
            assert_eq!(authorize_on(channel.clone(), w.call(&free)).await.decision(), authz::Decision::Allow);
        }
    })
    .await;
    assert!(commands.is_empty(), "a key with nothing to count needs no Redis: {commands:?}");

    let commands = commands_during(&redis, async {
        for _ in 0..20 {
            assert_eq!(authorize_on(channel.clone(), w.call(&counted)).await.decision(), authz::Decision::Allow);
        }
    })
    .await;
    assert_eq!(commands, vec!["EVALSHA".to_owned(); 20], "exactly one round trip per counted call");

    let commands = commands_during(&redis, async {
        for _ in 0..20 {
            let response = authorize_on(channel.clone(), w.call(&unknown)).await;
            assert_eq!(response.reason(), authz::DenyReason::KeyNotFound);
            let response = authorize_on(channel.clone(), w.call("sk-malformed")).await;
            assert_eq!(response.reason(), authz::DenyReason::KeyMalformed);
        }
    })
    .await;
    assert!(commands.is_empty(), "unknown and malformed keys cost nothing once cached: {commands:?}");

    // Concurrent first calls of a key nobody has looked up make one lookup.
    let fresh = key_without_defaults(&h, &w, w.key("Fresh")).await;
    let commands = commands_during(&redis, async {
        let calls: Vec<_> = (0..50).map(|_| tokio::spawn(authorize_on(channel.clone(), w.call(&fresh)))).collect();
        for task in calls {
            assert_eq!(task.await.unwrap().decision(), authz::Decision::Allow);
        }
    })
    .await;
    assert_eq!(commands, ["HGET"], "one snapshot read for 50 concurrent misses");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_follows_the_policy_and_recovers() {
    let Some((h, mut redis)) = production_with_private_redis(Options::default()).await else { return };
    let w = postpaid_world(&h, "outage").await;
    let free = key_without_defaults(&h, &w, w.key("Free")).await;
    let rated = key_without_defaults(&h, &w, pb::Key { rpm_limit: Some(100), ..w.key("Rated") }).await;
    let paid = key_without_defaults(&h, &w, pb::Key { quota: Some(1_000_000), ..w.key("Paid") }).await;
    let channel = h.authz_on(h.authz_channel());
    for secret in [&free, &rated, &paid] {
        assert_eq!(authorize_on(channel.clone(), w.call(secret)).await.decision(), authz::Decision::Allow);
    }

    redis.kill();
    let started = Instant::now();
    assert_eq!(authorize_on(channel.clone(), w.call(&free)).await.decision(), authz::Decision::Allow);
    let rated_response = authorize_on(channel.clone(), w.call(&rated)).await;
    assert_eq!(rated_response.decision(), authz::Decision::Allow, "rate limits fail open by default");
    assert!(rated_response.headroom.is_none(), "nothing is known of the counters");
    let mut client = channel.clone();
    let status = client.authorize(w.call(&paid)).await.expect_err("money checks fail closed by default");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(2), "calls fail fast: {:?}", started.elapsed());

    redis.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.authorize(w.call(&paid)).await {
            Ok(response) if response.get_ref().decision() == authz::Decision::Allow => break,
            other => assert!(Instant::now() < deadline, "authz did not recover: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rated_again = authorize_on(channel.clone(), w.call(&rated)).await;
    assert!(rated_again.headroom.is_some(), "counters are back");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_errors_can_fail_everything_open_or_closed() {
    let closed = tollgate::AuthzSettings { on_redis_error: "closed".parse().unwrap(), ..Default::default() };
    let Some((h, mut redis)) = production_with_private_redis(Options { authz: closed, ..Default::default() }).await
    else {
        return;
    };
    let w = postpaid_world(&h, "strict").await;
    let rated = key_without_defaults(&h, &w, pb::Key { rpm_limit: Some(100), ..w.key("Rated") }).await;
    let free = key_without_defaults(&h, &w, w.key("Free")).await;
    let channel = h.authz_on(h.authz_channel());
    authorize_on(channel.clone(), w.call(&rated)).await;
    authorize_on(channel.clone(), w.call(&free)).await;
    redis.kill();
    let mut client = channel.clone();
    assert_eq!(client.authorize(w.call(&rated)).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(authorize_on(channel, w.call(&free)).await.decision(), authz::Decision::Allow, "no counters, no Redis");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_obeys_a_change_within_a_second() {
    let Some(mut h) = Harness::production(Options::default()).await else { return };
    let second = h.start_authz_replica().await;
    let second = h.authz_on(second);
    let first = h.authz_on(h.authz_channel());
    let w = postpaid_world(&h, "replicas").await;
    let (key, secret) = create_key(&h, &w, w.key("Watched")).await;
    let mut delays = Vec::new();
    for round in 0..10 {
        let enabled = round % 2 == 1;
        for channel in [&first, &second] {
            // Both replicas have the key cached before the change.
            let expected = if enabled { authz::Decision::Deny } else { authz::Decision::Allow };
            assert_eq!(authorize_on(channel.clone(), w.call(&secret)).await.decision(), expected);
        }
        let changed = Instant::now();
        h.keys()
            .update_key(pb::UpdateKeyRequest {
                key: Some(pb::Key { name: key.name.clone(), enabled: Some(enabled), ..Default::default() }),
                update_mask: mask(&["enabled"]),
                expire_after: None,
            })
            .await
            .unwrap();
        let wanted = if enabled { authz::Decision::Allow } else { authz::Decision::Deny };
        for channel in [&first, &second] {
            loop {
                if authorize_on(channel.clone(), w.call(&secret)).await.decision() == wanted {
                    break;
                }
                assert!(changed.elapsed() < Duration::from_secs(1), "a replica still answered the old way after 1 s");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        delays.push(changed.elapsed());
    }
    delays.sort();
    eprintln!(
        "change obeyed by both replicas: median {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_outlive_a_keys_service_outage_and_unknown_keys_are_unavailable() {
    let Some(mut h) = Harness::production(Options::default()).await else { return };
    let w = postpaid_world(&h, "nokeys").await;
    let (_, secret) = create_key(&h, &w, w.key("Cached")).await;
    let channel = h.authz_on(h.authz_channel());
    assert_eq!(authorize_on(channel.clone(), w.call(&secret)).await.decision(), authz::Decision::Allow);
    h.stop_keys_service().await;
    assert_eq!(authorize_on(channel.clone(), w.call(&secret)).await.decision(), authz::Decision::Allow);
    // A key neither cached nor in Redis: only the keys service could tell, and it is down.
    let unknown = tollgate_core::key_format::ApiKeySecret::generate();
    let mut client = channel;
    let status = client.authorize(w.call(unknown.expose())).await.expect_err("never ALLOW an unknown key");
    assert_eq!(status.code(), Code::Unavailable);
    h.stop().await;
}
