//! Metering's HTTP API on its HTTP listener, with plain HTTP/1.1 requests as `curl` sends
//! them: the key holder's `/v1/key`, new-api's `/api/usage/token`, one-api's
//! `/v1/dashboard/billing/*` (CORS included), and gateways' `POST /v1/usage`.

use std::time::Duration;

use tollgate_core::clock::{Clock, ManualClock};
use tollgate_proto::keys::v1 as pb;
use tollgate_proto::metering::v1 as metering;
use tollgate_tests::Harness;
use tollgate_tests::fixtures::{World, create_key, mask, postpaid_world, world};
use tollgate_tests::http::{Answer, get, post, request};

use crate::metering::applied;

const GATEWAY_TOKEN: &str = "gateway-token-for-http-usage";
/// Key-holder calls a key may make per minute in these tests.
const PER_MINUTE: u32 = 8;
const CREDITS_PER_USD: f64 = 500_000.0;

fn options(clock: &ManualClock) -> tollgate_tests::Options {
    tollgate_tests::Options {
        clock: Some(clock.clone()),
        authz: tollgate::AuthzSettings { gateway_token: Some(GATEWAY_TOKEN.into()), ..Default::default() },
        metering: tollgate::MeteringSettings {
            gateway_token: Some(GATEWAY_TOKEN.into()),
            key_balance_per_minute: PER_MINUTE,
            ..Default::default()
        },
        ..Default::default()
    }
}

tollgate_tests::backend_suite!(
    setup: {
        let clock = tollgate_core::clock::ManualClock::new(tollgate_core::time::now_micros());
        (super::options(&clock), clock)
    },
    checks: [
        a_key_reads_its_balance_in_every_shape,
        a_key_without_quota_sees_what_its_account_can_spend,
        disabled_expired_and_exhausted_keys_read_their_status_and_a_deleted_key_is_refused,
        browsers_may_ask_from_any_origin,
        a_key_asks_a_few_times_a_minute,
        gateways_report_usage_over_http_as_over_grpc,
    ]
);

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

async fn ask(h: &Harness, path: &str, secret: &str) -> Answer {
    get(h.metering_server().http, path, &[("Authorization", &bearer(secret))]).await
}

/// Reports usage over `POST /v1/usage` with the gateway token.
async fn report(h: &Harness, body: serde_json::Value) -> Answer {
    let auth = bearer(GATEWAY_TOKEN);
    post(h.metering_server().http, "/v1/usage", &[("Authorization", &auth)], &body.to_string()).await
}

/// A report of `input` tokens of the world's model (1 credit each, × 1.5).
fn usage(w: &World, key: &pb::Key, request_id: &str, input: i64) -> serde_json::Value {
    serde_json::json!({
        "request_id": request_id,
        "key": key.name,
        "model": w.model,
        "input_tokens": input,
        "outcome": "USAGE_OUTCOME_SUCCESS",
    })
}

async fn add_credits(h: &Harness, w: &World, credits: i64) {
    let request = metering::AddCreditsRequest {
        account: w.account.clone(),
        credits,
        reason: "top-up".into(),
        request_id: format!("top-up-{credits}"),
    };
    h.metering().add_credits(request).await.expect("add credits");
}

fn usd(credits: i64) -> f64 {
    credits as f64 / CREDITS_PER_USD
}

async fn a_key_reads_its_balance_in_every_shape(h: &Harness, _clock: &ManualClock) {
    let w = world(h, "http-holder").await;
    let settings = pb::Key { quota: Some(500), daily_budget: Some(100), ..w.key("Mine") };
    let (key, secret) = create_key(h, &w, settings).await;
    let answer = report(h, serde_json::json!({ "report": usage(&w, &key, "h-1", 2) })).await;
    assert_eq!((answer.status, answer.json()["accepted"].as_i64()), (200, Some(1)), "{answer:?}");
    applied(h, &w, 1).await; // 3 credits

    let own = ask(h, "/v1/key?days=2", &secret).await;
    assert_eq!(own.status, 200, "{own:?}");
    assert_eq!(own.header("content-type"), Some("application/json"));
    let own = own.json();
    assert_eq!(own["key"], key.name.as_str());
    assert_eq!(own["status"], "enabled");
    assert_eq!(own["quota"], serde_json::json!({ "limit": 500, "used": 3, "remaining": 497 }));
    assert_eq!(own["daily_budget"], serde_json::json!({ "limit": 100, "used": 3, "remaining": 97 }));
    assert_eq!(own["monthly_budget"], serde_json::json!({ "limit": null, "used": 3, "remaining": null }));
    assert_eq!(own["account"], serde_json::Value::Null, "a key with a quota is bounded by it, not the account");
    assert_eq!(own["expire_time"], serde_json::Value::Null);
    let days = own["daily"].as_array().expect("daily");
    assert_eq!(days.len(), 1, "{days:?}");
    assert_eq!((days[0]["model"].as_str(), days[0]["credits"].as_i64()), (Some(w.model.as_str()), Some(3)));
    assert_eq!((days[0]["requests"].as_i64(), days[0]["input_tokens"].as_i64()), (Some(1), Some(2)));

    let token = ask(h, "/api/usage/token", &secret).await;
    assert_eq!(token.status, 200, "{token:?}");
    let token = token.json();
    assert_eq!((&token["code"], &token["message"]), (&serde_json::json!(true), &serde_json::json!("ok")));
    let data = &token["data"];
    assert_eq!(data["object"], "token_usage");
    assert_eq!((data["total_granted"].as_i64(), data["total_used"].as_i64()), (Some(500), Some(3)));
    assert_eq!((data["total_available"].as_i64(), data["unlimited_quota"].as_bool()), (Some(497), Some(false)));
    assert_eq!(data["expires_at"].as_i64(), Some(0));

    let subscription = ask(h, "/v1/dashboard/billing/subscription", &secret).await.json();
    assert_eq!(subscription["object"], "billing_subscription");
    assert_eq!(subscription["hard_limit_usd"].as_f64(), Some(usd(500)));
    assert_eq!(subscription["access_until"].as_i64(), Some(0));
    let spent = ask(h, "/dashboard/billing/usage", &secret).await.json();
    assert_eq!(spent["total_usage"].as_f64(), Some(usd(3) * 100.0), "cents of a dollar");

    // The key in x-api-key, and new-api's form without `sk-`.
    let by_header = get(h.metering_server().http, "/v1/key", &[("x-api-key", &secret)]).await;
    assert_eq!(by_header.json()["key"], key.name.as_str());
    let bare = secret.strip_prefix("sk-").expect("an sk- key");
    assert_eq!(ask(h, "/api/usage/token", bare).await.json()["data"]["total_used"].as_i64(), Some(3));
    let wrong_days = ask(h, "/v1/key?days=91", &secret).await;
    assert_eq!((wrong_days.status, wrong_days.json()["error"]["param"].as_str()), (400, Some("days")));
}

async fn a_key_without_quota_sees_what_its_account_can_spend(h: &Harness, _clock: &ManualClock) {
    let w = world(h, "http-funds").await;
    add_credits(h, &w, 1_000).await;
    let (key, secret) = create_key(h, &w, w.key("Unbounded")).await;
    assert_eq!(report(h, serde_json::json!({ "report": usage(&w, &key, "f-1", 2) })).await.status, 200);
    applied(h, &w, 1).await;

    let own = ask(h, "/v1/key", &secret).await.json();
    assert_eq!(own["account"], serde_json::json!({ "balance": 997, "spendable": 997 }));
    assert_eq!(own["quota"]["limit"], serde_json::Value::Null);
    let mut holder = h.key_holder(&secret);
    let balance = holder.get_key_balance(metering::GetKeyBalanceRequest::default()).await.unwrap().into_inner();
    let funds = balance.account_funds.expect("GetKeyBalance shows the account's funds too");
    assert_eq!((funds.balance, funds.spendable), (997, Some(997)));
    let data = ask(h, "/api/usage/token", &secret).await.json()["data"].clone();
    assert_eq!(data["unlimited_quota"].as_bool(), Some(true));
    assert_eq!((data["total_used"].as_i64(), data["total_available"].as_i64()), (Some(3), Some(997)));
    assert_eq!(data["total_granted"].as_i64(), Some(1_000), "what it used and what it can still spend");
    let subscription = ask(h, "/v1/dashboard/billing/subscription", &secret).await.json();
    assert_eq!(subscription["hard_limit_usd"].as_f64(), Some(usd(1_000)));

    // A postpaid account without a limit: nothing bounds the key.
    let p = postpaid_world(h, "http-postpaid").await;
    let (_, open) = create_key(h, &p, p.key("Open")).await;
    let own = ask(h, "/v1/key", &open).await.json();
    assert_eq!(own["account"], serde_json::json!({ "balance": 0, "spendable": null }));
    let subscription = ask(h, "/v1/dashboard/billing/subscription", &open).await.json();
    assert_eq!(subscription["hard_limit_usd"].as_f64(), Some(100_000_000.0), "new-api's figure for no limit");
}

async fn disabled_expired_and_exhausted_keys_read_their_status_and_a_deleted_key_is_refused(
    h: &Harness,
    clock: &ManualClock,
) {
    let w = world(h, "http-states").await;
    let (disabled, disabled_secret) = create_key(h, &w, w.key("Disabled")).await;
    let disable = pb::UpdateKeyRequest {
        key: Some(pb::Key { name: disabled.name.clone(), enabled: Some(false), ..Default::default() }),
        update_mask: mask(&["enabled"]),
        expire_after: None,
    };
    h.keys().update_key(disable).await.expect("disable");
    assert_eq!(ask(h, "/v1/key", &disabled_secret).await.json()["status"], "disabled");

    let (exhausted, exhausted_secret) = create_key(h, &w, pb::Key { quota: Some(2), ..w.key("Exhausted") }).await;
    assert_eq!(report(h, serde_json::json!({ "report": usage(&w, &exhausted, "e-1", 2) })).await.status, 200);
    applied(h, &w, 1).await;
    let own = ask(h, "/v1/key", &exhausted_secret).await.json();
    assert_eq!((&own["status"], own["quota"]["remaining"].as_i64()), (&serde_json::json!("exhausted"), Some(0)));
    let data = ask(h, "/api/usage/token", &exhausted_secret).await.json()["data"].clone();
    assert_eq!((data["total_used"].as_i64(), data["total_available"].as_i64()), (Some(3), Some(0)));

    let request = pb::CreateKeyRequest {
        expire_after: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        ..w.create(w.key("Expiring"))
    };
    let created = h.keys().create_key(request).await.expect("create").into_inner().created.expect("created");
    let expiring = created.secret;
    let expire_at = clock.now_micros() / 1_000_000 + 60;
    let own = ask(h, "/v1/key", &expiring).await.json();
    assert_eq!(own["status"], "enabled");
    let subscription = ask(h, "/v1/dashboard/billing/subscription", &expiring).await.json();
    let until = subscription["access_until"].as_i64().expect("access_until");
    // The keys service may run on the real clock (production), a little ahead of the test's.
    assert!((expire_at - 1..=expire_at + 30).contains(&until), "{until} vs {expire_at}");
    clock.advance(120 * 1_000_000);
    assert_eq!(ask(h, "/v1/key", &expiring).await.json()["status"], "expired");

    let (deleted, deleted_secret) = create_key(h, &w, w.key("Deleted")).await;
    h.keys().delete_key(pb::DeleteKeyRequest { name: deleted.name.clone() }).await.expect("delete");
    let refused = ask(h, "/v1/key", &deleted_secret).await;
    assert_eq!((refused.status, refused.error_code()), (401, "invalid_api_key".to_owned()), "{refused:?}");
    assert!(!refused.body.contains(&deleted_secret));
    let new_api = ask(h, "/api/usage/token", &deleted_secret).await;
    assert_eq!((new_api.status, new_api.json()["success"].as_bool()), (401, Some(false)), "{new_api:?}");
    for wrong in ["sk-nope", "not a key"] {
        assert_eq!(ask(h, "/v1/dashboard/billing/usage", wrong).await.status, 401, "{wrong}");
    }
    let anonymous = get(h.metering_server().http, "/v1/key", &[]).await;
    assert_eq!((anonymous.status, anonymous.error_code()), (401, "invalid_api_key".to_owned()));
}

async fn browsers_may_ask_from_any_origin(h: &Harness, _clock: &ManualClock) {
    let w = world(h, "http-cors").await;
    let (_, secret) = create_key(h, &w, w.key("Browser")).await;
    let origin = ("Origin", "https://chat.example.com");
    for path in ["/v1/key", "/api/usage/token", "/v1/dashboard/billing/subscription"] {
        let headers =
            [origin, ("Access-Control-Request-Method", "GET"), ("Access-Control-Request-Headers", "authorization")];
        let preflight = request(h.metering_server().http, "OPTIONS", path, &headers, None).await;
        assert!((200..300).contains(&preflight.status), "{path}: {preflight:?}");
        assert_eq!(preflight.header("access-control-allow-origin"), Some("*"), "{path}");
        let allowed = preflight.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{path}: {allowed}");
        assert!(preflight.header("access-control-allow-methods").unwrap_or_default().contains("GET"));
    }
    let answer = get(h.metering_server().http, "/v1/key", &[origin, ("Authorization", &bearer(&secret))]).await;
    assert_eq!((answer.status, answer.header("access-control-allow-origin")), (200, Some("*")));
}

async fn a_key_asks_a_few_times_a_minute(h: &Harness, clock: &ManualClock) {
    let w = world(h, "http-asker").await;
    let (_, secret) = create_key(h, &w, w.key("Asker")).await;
    let (_, other) = create_key(h, &w, w.key("Other")).await;
    let paths = ["/v1/key", "/api/usage/token", "/v1/dashboard/billing/subscription", "/v1/dashboard/billing/usage"];
    for i in 0..PER_MINUTE as usize {
        assert_eq!(ask(h, paths[i % paths.len()], &secret).await.status, 200);
    }
    clock.advance(20 * 1_000_000);
    let refused = ask(h, "/v1/dashboard/billing/usage", &secret).await;
    assert_eq!((refused.status, refused.error_code()), (429, "rate_limit_exceeded".to_owned()), "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("40"), "until the key's minute is over");
    let mut holder = h.key_holder(&secret);
    let grpc = holder.get_key_balance(metering::GetKeyBalanceRequest::default()).await;
    assert_eq!(grpc.map(|_| ()).unwrap_err().code(), tonic::Code::ResourceExhausted, "one limit for gRPC and HTTP");
    assert_eq!(ask(h, "/v1/key", &other).await.status, 200, "another key has its own minute");
    clock.advance(40 * 1_000_000);
    assert_eq!(ask(h, "/v1/key", &secret).await.status, 200, "a new minute");
}

async fn gateways_report_usage_over_http_as_over_grpc(h: &Harness, _clock: &ManualClock) {
    let w = world(h, "http-usage").await;
    let (key, _) = create_key(h, &w, w.key("Reported")).await;
    let http = h.metering_server().http;
    let batch = serde_json::json!({ "reports": [usage(&w, &key, "u-1", 2), usage(&w, &key, "u-2", 4)] });

    let anonymous = post(http, "/v1/usage", &[], &batch.to_string()).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let stranger = post(http, "/v1/usage", &[("Authorization", "Bearer not-the-token")], &batch.to_string()).await;
    assert_eq!(stranger.status, 401);

    let accepted = report(h, batch.clone()).await;
    assert_eq!((accepted.status, accepted.json()["accepted"].as_i64()), (200, Some(2)), "{accepted:?}");
    // A retry of the same reports, with the token in the forward-auth header, charges nothing more.
    let retried = post(http, "/v1/usage", &[("X-Tollgate-Gateway-Token", GATEWAY_TOKEN)], &batch.to_string()).await;
    assert_eq!(retried.status, 200, "{retried:?}");
    let admin = bearer(&h.admin_token);
    let one = serde_json::json!({ "report": usage(&w, &key, "u-1", 2) });
    assert_eq!(post(http, "/v1/usage", &[("Authorization", &admin)], &one.to_string()).await.status, 200);
    let rows = applied(h, &w, 2).await;
    assert_eq!(rows.iter().map(|r| r.credits).sum::<i64>(), 3 + 6);
    tokio::time::sleep(Duration::from_millis(300)).await;
    applied(h, &w, 2).await;

    // Refused as RecordUsage refuses, naming the field; nothing of a refused batch is taken.
    let cases = [
        ("not json".to_owned(), "body"),
        (serde_json::json!({ "reports": [] }).to_string(), "reports"),
        (serde_json::json!({ "reports": [usage(&w, &key, "u-3", 1), usage(&w, &key, "u-4", -1)] }).to_string(), "reports[1].input_tokens"),
        (serde_json::json!({ "report": { "request_id": "u-5", "key": "keys/x", "model": w.model, "outcome": "success" } }).to_string(), "report.key"),
        (serde_json::json!({ "report": { "request_id": "u-6", "key": key.name, "model": w.model } }).to_string(), "report.outcome"),
        (serde_json::json!({ "report": { "request_id": "u-7", "key": key.name, "model": w.model, "outcome": "success", "end_time": "soon" } }).to_string(), "report.end_time"),
        (serde_json::json!({ "report": usage(&w, &key, "u-8", 1), "colour": "red" }).to_string(), "colour"),
    ];
    for (body, field) in cases {
        let refused = post(http, "/v1/usage", &[("Authorization", &bearer(GATEWAY_TOKEN))], &body).await;
        assert_eq!(refused.status, 400, "{body}: {refused:?}");
        assert_eq!(refused.json()["error"]["param"].as_str(), Some(field), "{body}: {refused:?}");
        assert_eq!(refused.error_code(), "invalid_argument");
    }
    let huge = format!(r#"{{"reports": [{}]}}"#, vec![usage(&w, &key, "u-10", 1).to_string(); 40_000].join(","));
    let refused = post(http, "/v1/usage", &[("Authorization", &bearer(GATEWAY_TOKEN))], &huge).await;
    assert_eq!((refused.status, refused.error_code()), (413, "request_too_large".to_owned()), "{}", refused.body);
    let unknown = serde_json::json!({ "report": { "request_id": "u-9", "key": format!("{}/keys/nope", w.account), "model": w.model, "outcome": "success" } });
    let refused = report(h, unknown).await;
    assert_eq!((refused.status, refused.json()["error"]["param"].as_str()), (400, Some("report.key")), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    applied(h, &w, 2).await;
}
