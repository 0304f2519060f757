//! Metering over real gRPC on both backends: usage charged exactly once at the stated
//! rounding, holds settled and expired, quota and balance enforced through authz, calendar
//! windows in a non-UTC zone, dead letters, the key holder's view, and bad input.

use std::time::Duration;

use tollgate_core::clock::{Clock, ManualClock};
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as pb;
use tollgate_proto::metering::v1 as metering;
use tollgate_proto::time::timestamp;
use tollgate_tests::Harness;
use tollgate_tests::fixtures::{World, create_key, mask, world};
use tonic::Code;

use crate::{assert_code, violated_fields};

/// Options of every check: a manual clock at [`start`], budgets and windows in Tokyo, and
/// workers that retry and dead-letter quickly.
fn options(clock: &ManualClock) -> tollgate_tests::Options {
    let zone = "Asia/Tokyo".to_owned();
    tollgate_tests::Options {
        clock: Some(clock.clone()),
        authz: tollgate::AuthzSettings { time_zone: zone.clone(), ..Default::default() },
        metering: tollgate::MeteringSettings {
            claim_idle: Duration::from_millis(300),
            max_deliveries: 2,
            time_zone: zone,
            key_balance_per_minute: KEY_BALANCE_PER_MINUTE,
            ..Default::default()
        },
        ..Default::default()
    }
}

tollgate_tests::backend_suite!(
    setup: {
        let clock = tollgate_core::clock::ManualClock::new(super::start());
        (super::options(&clock), clock)
    },
    checks: [
        usage_is_charged_once_at_the_stated_rounding,
        used_up_quota_denies_and_lists_the_key_exhausted,
        a_prepaid_account_at_zero_denies_its_unlimited_keys,
        holds_are_settled_by_usage_and_expire_without_it,
        day_and_month_windows_follow_the_zone,
        a_poison_report_is_dead_lettered_and_replayed,
        usage_lists_page_and_filter,
        the_key_holder_sees_its_own_key_but_never_a_deleted_one,
        the_key_holder_asks_a_few_times_a_minute,
        bad_input_names_the_field,
        what_does_not_exist_is_refused_or_not_found,
    ]
);

/// `GetKeyBalance` calls a key may make per minute in these tests.
const KEY_BALANCE_PER_MINUTE: u32 = 3;

/// One in the morning of the next month's first day in Tokyo: an hour into a day and a
/// month there, and ahead of the real clock, which Redis expires window counters by.
fn start() -> i64 {
    let tokyo = tollgate_core::windows::Calendar::new("Asia/Tokyo").unwrap();
    tokyo.windows(tollgate_core::time::now_micros()).month_end + 60 * MINUTE
}

const MINUTE: i64 = 60_000_000;
const SECOND: i64 = 1_000_000;

fn report(w: &World, key: &pb::Key, request_id: &str, input: i64, output: i64, cached: i64) -> metering::UsageReport {
    let start = start();
    metering::UsageReport {
        request_id: request_id.into(),
        key: key.name.clone(),
        model: w.model.clone(),
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
        outcome: metering::UsageOutcome::Success as i32,
        start_time: Some(timestamp(start - MINUTE)),
        end_time: Some(timestamp(start - MINUTE / 2)),
    }
}

async fn record(h: &Harness, report: metering::UsageReport) {
    h.metering().record_usage(metering::RecordUsageRequest { report: Some(report) }).await.expect("record usage");
}

async fn usage(h: &Harness, w: &World) -> Vec<metering::UsageRecord> {
    let request = metering::ListUsageRequest { parent: w.account.clone(), page_size: 1000, ..Default::default() };
    h.metering().list_usage(request).await.expect("list usage").into_inner().records
}

/// Polls until the account's ledger holds `count` rows, then returns them.
pub(crate) async fn applied(h: &Harness, w: &World, count: usize) -> Vec<metering::UsageRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let records = usage(h, w).await;
        if records.len() >= count {
            assert_eq!(records.len(), count, "more rows than reports: {records:?}");
            return records;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {count} reports applied", records.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn add_credits(h: &Harness, w: &World, credits: i64, request_id: &str) -> metering::AccountBalance {
    let request = metering::AddCreditsRequest {
        account: w.account.clone(),
        credits,
        reason: "test top-up".into(),
        request_id: request_id.into(),
    };
    h.metering().add_credits(request).await.expect("add credits").into_inner().balance.expect("balance")
}

async fn balance(h: &Harness, w: &World) -> metering::AccountBalance {
    let request = metering::GetAccountBalanceRequest { account: w.account.clone() };
    h.metering().get_account_balance(request).await.expect("balance").into_inner().balance.expect("balance")
}

async fn get_key(h: &Harness, key: &pb::Key) -> pb::Key {
    let request = pb::GetKeyRequest { name: key.name.clone() };
    h.keys().get_key(request).await.expect("get key").into_inner().key.expect("key")
}

/// Polls until the counters say the key spent `used` (they follow the ledger's commit), then
/// returns the key.
async fn spent(h: &Harness, key: &pb::Key, used: i64) -> pb::Key {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = get_key(h, key).await;
        if current.credits_used == used {
            return current;
        }
        assert!(tokio::time::Instant::now() < deadline, "the key shows {} used, not {used}", current.credits_used);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn call(w: &World, secret: &str, request_id: &str) -> authz::AuthorizeRequest {
    authz::AuthorizeRequest { request_id: request_id.into(), ..w.call(secret) }
}

async fn authorize(h: &Harness, request: authz::AuthorizeRequest) -> authz::AuthorizeResponse {
    h.authz().authorize(request).await.expect("authorize answers").into_inner()
}

/// What ExplainAuthorize says is left after a call of 100 estimated tokens, i.e. after that
/// call's own hold of 300 credits.
async fn headroom(h: &Harness, w: &World, secret: &str) -> authz::Headroom {
    let request = authz::ExplainAuthorizeRequest { request: Some(call(w, secret, "explain")) };
    h.authz().explain_authorize(request).await.expect("explain").into_inner().headroom.expect("headroom")
}

/// The world's group multiplies by 1.5; its model costs 1 credit per input (and cached
/// input) token and 2 per output token. A call costs ceil((in + 2·out + cached) × 1.5).
async fn usage_is_charged_once_at_the_stated_rounding(h: &Harness, clock: &ManualClock) {
    let now = clock.now_micros();
    let w = world(h, "round").await;
    add_credits(h, &w, 1_000, "seed").await;
    let (key, _) = create_key(h, &w, pb::Key { quota: Some(10_000), ..w.key("Rounding") }).await;
    // (3 + 2 + 1) × 1.5 = 9, sent ten times at once; 1 × 1.5 = 1.5 rounds up to 2.
    let first = report(&w, &key, "call-1", 3, 1, 1);
    let sends = (0..10).map(|_| record(h, first.clone()));
    futures::future::join_all(sends).await;
    let batch = vec![first.clone(), report(&w, &key, "call-2", 1, 0, 0)];
    h.metering().batch_record_usage(metering::BatchRecordUsageRequest { reports: batch }).await.expect("batch");
    let records = applied(h, &w, 2).await;
    let mut credits: Vec<(String, i64)> = records.iter().map(|r| (r.request_id.clone(), r.credits)).collect();
    credits.sort();
    assert_eq!(credits, [("call-1".to_owned(), 9), ("call-2".to_owned(), 2)]);
    // Late duplicates change nothing either.
    record(h, first).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(usage(h, &w).await.len(), 2);
    let balance = balance(h, &w).await;
    assert_eq!((balance.balance, balance.credits_added, balance.credits_spent), (989, 1_000, 11));
    let key = spent(h, &key, 11).await;
    assert_eq!(key.quota_remaining, Some(9_989));
    let summary = h
        .metering()
        .get_usage_summary(metering::GetUsageSummaryRequest {
            scope: w.account.clone(),
            start_time: Some(timestamp(now - 60 * MINUTE)),
            end_time: Some(timestamp(now)),
            granularity: metering::Granularity::Hour as i32,
            split_by_model: false,
        })
        .await
        .expect("summary")
        .into_inner();
    let totals = summary.totals.expect("totals");
    assert_eq!((totals.requests, totals.input_tokens, totals.output_tokens, totals.credits), (2, 4, 1, 11));
    assert_eq!(summary.buckets.iter().map(|b| b.totals.as_ref().unwrap().credits).sum::<i64>(), 11);
}

async fn used_up_quota_denies_and_lists_the_key_exhausted(h: &Harness, _clock: &ManualClock) {
    let w = world(h, "quota").await;
    let (key, secret) = create_key(h, &w, pb::Key { quota: Some(10), ..w.key("Small quota") }).await;
    assert_eq!(authorize(h, call(&w, &secret, "q-1")).await.decision(), authz::Decision::Allow);
    record(h, report(&w, &key, "q-1", 10, 0, 0)).await; // 15 credits: past the quota
    applied(h, &w, 1).await;
    spent(h, &key, 15).await;
    let denied = authorize(h, call(&w, &secret, "q-2")).await;
    assert_eq!(denied.reason(), authz::DenyReason::QuotaExhausted, "{denied:?}");
    let listed = get_key(h, &key).await;
    assert_eq!(listed.status(), pb::KeyStatus::Exhausted);
    assert_eq!((listed.credits_used, listed.quota_remaining), (15, Some(0)));
    let list = |status: pb::KeyStatus| pb::ListKeysRequest {
        parent: w.account.clone(),
        status: status as i32,
        ..Default::default()
    };
    let exhausted = h.keys().list_keys(list(pb::KeyStatus::Exhausted)).await.unwrap().into_inner().keys;
    assert_eq!(exhausted.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), [key.name.as_str()]);
    let enabled = h.keys().list_keys(list(pb::KeyStatus::Enabled)).await.unwrap().into_inner().keys;
    assert!(enabled.is_empty(), "{enabled:?}");
    // More quota makes the key usable again.
    let update = pb::UpdateKeyRequest {
        key: Some(pb::Key { name: key.name.clone(), quota: Some(1_000), ..Default::default() }),
        update_mask: mask(&["quota"]),
        expire_after: None,
    };
    h.keys().update_key(update).await.expect("raise the quota");
    assert_eq!(authorize(h, call(&w, &secret, "q-3")).await.decision(), authz::Decision::Allow);
    assert_eq!(get_key(h, &key).await.status(), pb::KeyStatus::Enabled);
}

async fn a_prepaid_account_at_zero_denies_its_unlimited_keys(h: &Harness, clock: &ManualClock) {
    let w = world(h, "prepaid").await;
    let (key, secret) = create_key(h, &w, w.key("Unlimited")).await;
    let denied = authorize(h, call(&w, &secret, "p-1")).await;
    assert_eq!(denied.reason(), authz::DenyReason::AccountBalanceExhausted, "{denied:?}");
    // The same top-up twice adds once.
    assert_eq!(add_credits(h, &w, 100, "topup-1").await.balance, 100);
    assert_eq!(add_credits(h, &w, 100, "topup-1").await.balance, 100);
    let account = balance(h, &w).await;
    assert_eq!((account.balance, account.credit_limit), (100, Some(0)));
    assert_eq!(authorize(h, call(&w, &secret, "p-2")).await.decision(), authz::Decision::Allow);
    record(h, report(&w, &key, "p-2", 100, 0, 0)).await; // 150 credits: 50 below zero
    applied(h, &w, 1).await;
    spent(h, &key, 150).await;
    assert_eq!(balance(h, &w).await.balance, -50);
    let denied = authorize(h, call(&w, &secret, "p-3")).await;
    assert_eq!(denied.reason(), authz::DenyReason::AccountBalanceExhausted, "{denied:?}");
    // Taking credits back is a negative grant.
    clock.advance(1_000_000);
    assert_eq!(add_credits(h, &w, -10, "clawback-1").await.balance, -60);
    // Every grant is on record once, with its actor, newest first.
    let grants =
        |page_token: String| metering::ListCreditGrantsRequest { account: w.account.clone(), page_size: 1, page_token };
    let first = h.metering().list_credit_grants(grants(String::new())).await.unwrap().into_inner();
    let second = h.metering().list_credit_grants(grants(first.next_page_token.clone())).await.unwrap().into_inner();
    let listed: Vec<(String, i64, String)> =
        first.grants.iter().chain(&second.grants).map(|g| (g.request_id.clone(), g.credits, g.actor.clone())).collect();
    assert_eq!(listed, [("clawback-1".into(), -10, "test-suite".into()), ("topup-1".into(), 100, "test-suite".into())]);
    assert!(second.next_page_token.is_empty());
}

async fn holds_are_settled_by_usage_and_expire_without_it(h: &Harness, clock: &ManualClock) {
    let w = world(h, "holds").await;
    let (key, secret) = create_key(h, &w, pb::Key { quota: Some(1_000), ..w.key("Held") }).await;
    // 100 estimated tokens at the dearer price (2) × 1.5 = 300 held.
    let allowed = authorize(h, call(&w, &secret, "h-1")).await;
    assert_eq!(allowed.held_credits, 300, "{allowed:?}");
    assert_eq!(headroom(h, &w, &secret).await.quota_remaining, Some(1_000 - 300 - 300));
    record(h, report(&w, &key, "h-1", 10, 0, 0)).await; // 15 credits
    applied(h, &w, 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while headroom(h, &w, &secret).await.quota_remaining != Some(1_000 - 15 - 300) {
        assert!(tokio::time::Instant::now() < deadline, "the hold was not settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A call whose usage never comes holds until the hold's lifetime (10 min) ends.
    authorize(h, call(&w, &secret, "h-2")).await;
    assert_eq!(headroom(h, &w, &secret).await.quota_remaining, Some(1_000 - 15 - 300 - 300));
    clock.advance(10 * MINUTE + 1_000_000);
    assert_eq!(headroom(h, &w, &secret).await.quota_remaining, Some(1_000 - 15 - 300));
}

async fn day_and_month_windows_follow_the_zone(h: &Harness, clock: &ManualClock) {
    let now = clock.now_micros();
    let w = world(h, "windows").await;
    let key =
        pb::Key { quota: Some(100_000), daily_budget: Some(1_000), monthly_budget: Some(5_000), ..w.key("Budgets") };
    let (key, secret) = create_key(h, &w, key).await;
    // 23:30 on the month's last day in Tokyo, then 00:30 on the next: a day and a month apart.
    let at = |micros: i64| metering::UsageReport {
        start_time: Some(timestamp(micros)),
        end_time: Some(timestamp(micros)),
        ..Default::default()
    };
    let before = now - 90 * MINUTE;
    let after = now - 30 * MINUTE;
    let batch = vec![
        metering::UsageReport { ..merge(report(&w, &key, "w-1", 10, 0, 0), at(before)) }, // 15
        metering::UsageReport { ..merge(report(&w, &key, "w-2", 20, 0, 0), at(after)) },  // 30
    ];
    h.metering().batch_record_usage(metering::BatchRecordUsageRequest { reports: batch }).await.expect("batch");
    applied(h, &w, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let room = headroom(h, &w, &secret).await;
        if room.daily_budget_remaining == Some(1_000 - 30 - 300) {
            assert_eq!(room.monthly_budget_remaining, Some(5_000 - 30 - 300), "the new month has only the second call");
            assert_eq!(room.quota_remaining, Some(100_000 - 45 - 300));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "budgets not updated: {room:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let own = h.key_holder(&secret).get_key_balance(metering::GetKeyBalanceRequest { days: 2 }).await.unwrap();
    let own = own.into_inner();
    assert_eq!((own.quota_used, own.daily_used, own.monthly_used), (45, 30, 30));
    assert_eq!(
        (own.daily_remaining, own.monthly_remaining, own.quota_remaining),
        (Some(970), Some(4_970), Some(99_955))
    );
    let days: Vec<(i64, i64)> = own
        .daily
        .iter()
        .map(|b| (b.start_time.as_ref().unwrap().seconds, b.totals.as_ref().unwrap().credits))
        .collect();
    let tokyo = tollgate_core::windows::Calendar::new("Asia/Tokyo").unwrap();
    let (last_day, first_day) = (tokyo.windows(before).day_start, tokyo.windows(after).day_start);
    assert_eq!(first_day - last_day, 24 * 60 * MINUTE, "local midnights");
    assert_eq!(days, [(last_day / 1_000_000, 15), (first_day / 1_000_000, 30)]);
    let summary = h
        .metering()
        .get_usage_summary(metering::GetUsageSummaryRequest {
            scope: key.name.clone(),
            start_time: Some(timestamp(last_day)),
            end_time: Some(timestamp(now + 24 * 60 * MINUTE)),
            granularity: metering::Granularity::Day as i32,
            split_by_model: false,
        })
        .await
        .unwrap()
        .into_inner();
    let series: Vec<i64> = summary.buckets.iter().map(|b| b.totals.as_ref().unwrap().credits).collect();
    assert_eq!(series, [15, 30, 0]);
}

/// `base` with the times of `times`.
fn merge(base: metering::UsageReport, times: metering::UsageReport) -> metering::UsageReport {
    metering::UsageReport { start_time: times.start_time, end_time: times.end_time, ..base }
}

async fn a_poison_report_is_dead_lettered_and_replayed(h: &Harness, _clock: &ManualClock) {
    let w = world(h, "poison").await;
    let (key, _) = create_key(h, &w, pb::Key { quota: Some(10_000), ..w.key("Poisoned") }).await;
    let later = format!("later-{}", w.account_id);
    let poison = metering::UsageReport { model: later.clone(), ..report(&w, &key, "d-2", 5, 5, 0) };
    let batch = vec![report(&w, &key, "d-1", 1, 0, 0), poison, report(&w, &key, "d-3", 2, 0, 0)];
    h.metering().batch_record_usage(metering::BatchRecordUsageRequest { reports: batch }).await.expect("batch");
    applied(h, &w, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let letters = loop {
        let request = metering::ListDeadLettersRequest::default();
        let letters = h.metering().list_dead_letters(request).await.unwrap().into_inner().dead_letters;
        let ours: Vec<_> =
            letters.into_iter().filter(|l| l.report.as_ref().is_some_and(|r| r.key == key.name)).collect();
        if !ours.is_empty() {
            break ours;
        }
        assert!(tokio::time::Instant::now() < deadline, "the poison report was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 1);
    assert!(letters[0].reason.contains("unknown model"), "{:?}", letters[0]);
    assert!(letters[0].attempts >= 2, "{:?}", letters[0]);
    // Once the model exists, a replay charges it.
    h.models()
        .create_model(pb::CreateModelRequest {
            model_id: later,
            model: Some(pb::Model {
                capability: pb::Capability::Text as i32,
                input_price: 1_000_000,
                output_price: 1_000_000,
                ..Default::default()
            }),
        })
        .await
        .expect("create the model");
    let replay = metering::ReplayDeadLettersRequest { ids: vec![letters[0].id.clone()] };
    assert_eq!(h.metering().replay_dead_letters(replay).await.unwrap().into_inner().replayed, 1);
    let records = applied(h, &w, 3).await;
    let replayed = records.iter().find(|r| r.request_id == "d-2").expect("the replayed report");
    assert_eq!(replayed.credits, 15); // (5 + 5) × 1.5
}

async fn usage_lists_page_and_filter(h: &Harness, clock: &ManualClock) {
    let now = clock.now_micros();
    let w = world(h, "lists").await;
    let (a, _) = create_key(h, &w, pb::Key { quota: Some(10_000), ..w.key("Key A") }).await;
    let (b, _) = create_key(h, &w, pb::Key { quota: Some(10_000), ..w.key("Key B") }).await;
    let mut reports = Vec::new();
    for i in 0..5_i64 {
        let key = if i % 2 == 0 { &a } else { &b };
        let at = now - (10 - i) * MINUTE;
        reports.push(merge(
            report(&w, key, &format!("l-{i}"), 1, 0, 0),
            metering::UsageReport {
                start_time: Some(timestamp(at)),
                end_time: Some(timestamp(at)),
                ..Default::default()
            },
        ));
    }
    h.metering().batch_record_usage(metering::BatchRecordUsageRequest { reports }).await.expect("batch");
    applied(h, &w, 5).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request = metering::ListUsageRequest {
            parent: w.account.clone(),
            page_size: 2,
            page_token: token.clone(),
            ..Default::default()
        };
        let page = h.metering().list_usage(request).await.unwrap().into_inner();
        assert!(page.records.len() <= 2);
        seen.extend(page.records.into_iter().map(|r| r.request_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["l-4", "l-3", "l-2", "l-1", "l-0"], "newest first, each once");
    let only_b = metering::ListUsageRequest { parent: w.account.clone(), key: b.name.clone(), ..Default::default() };
    let rows = h.metering().list_usage(only_b).await.unwrap().into_inner().records;
    assert_eq!(rows.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(), ["l-3", "l-1"]);
    let window = metering::ListUsageRequest {
        parent: w.account.clone(),
        start_time: Some(timestamp(now - 8 * MINUTE)),
        end_time: Some(timestamp(now - 6 * MINUTE)),
        ..Default::default()
    };
    let rows = h.metering().list_usage(window).await.unwrap().into_inner().records;
    assert_eq!(rows.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(), ["l-3", "l-2"]);
    assert_eq!(rows[0].application, w.application);
    // Another account sees none of it.
    let other = world(h, "lists-other").await;
    assert!(usage(h, &other).await.is_empty());
    let foreign =
        metering::ListUsageRequest { parent: other.account.clone(), key: a.name.clone(), ..Default::default() };
    assert_code(h.metering().list_usage(foreign).await, Code::NotFound);
}

async fn the_key_holder_sees_its_own_key_but_never_a_deleted_one(h: &Harness, _clock: &ManualClock) {
    let w = world(h, "holder").await;
    let (key, secret) = create_key(h, &w, pb::Key { quota: Some(500), ..w.key("Mine") }).await;
    record(h, report(&w, &key, "k-1", 2, 0, 0)).await; // 3 credits
    applied(h, &w, 1).await;
    let own = h.key_holder(&secret).get_key_balance(metering::GetKeyBalanceRequest::default()).await.unwrap();
    let own = own.into_inner();
    assert_eq!(own.key, key.name);
    assert_eq!(own.status(), pb::KeyStatus::Enabled);
    assert_eq!((own.quota, own.quota_used, own.quota_remaining), (Some(500), 3, Some(497)));
    assert_eq!(own.daily.iter().map(|b| b.model.as_str()).collect::<Vec<_>>(), [w.model.as_str()]);
    // A disabled key still reads its own balance.
    let disable = pb::UpdateKeyRequest {
        key: Some(pb::Key { name: key.name.clone(), enabled: Some(false), ..Default::default() }),
        update_mask: mask(&["enabled"]),
        expire_after: None,
    };
    h.keys().update_key(disable).await.unwrap();
    let own = h.key_holder(&secret).get_key_balance(metering::GetKeyBalanceRequest::default()).await.unwrap();
    assert_eq!(own.into_inner().status(), pb::KeyStatus::Disabled);
    h.keys().delete_key(pb::DeleteKeyRequest { name: key.name.clone() }).await.unwrap();
    let status = assert_code(
        h.key_holder(&secret).get_key_balance(metering::GetKeyBalanceRequest::default()).await,
        Code::Unauthenticated,
    );
    assert!(!status.message().contains(&secret));
    for wrong in ["sk-nope", "not a key"] {
        assert_code(
            h.key_holder(wrong).get_key_balance(metering::GetKeyBalanceRequest::default()).await,
            Code::Unauthenticated,
        );
    }
}

async fn the_key_holder_asks_a_few_times_a_minute(h: &Harness, clock: &ManualClock) {
    use tonic_types::StatusExt;
    let w = world(h, "asker").await;
    let (_, secret) = create_key(h, &w, w.key("Asker")).await;
    let (_, other) = create_key(h, &w, w.key("Other")).await;
    let ask = |secret: &str| {
        let mut holder = h.key_holder(secret);
        async move { holder.get_key_balance(metering::GetKeyBalanceRequest::default()).await }
    };
    for _ in 0..KEY_BALANCE_PER_MINUTE {
        ask(&secret).await.unwrap();
    }
    clock.advance(20 * SECOND);
    let refused = assert_code(ask(&secret).await, Code::ResourceExhausted);
    assert!(!refused.message().contains(&secret));
    let retry = refused.get_details_retry_info().and_then(|r| r.retry_delay).expect("a retry delay");
    assert_eq!(retry, Duration::from_secs(40), "until the key's minute is over");
    ask(&other).await.expect("another key has its own minute");
    clock.advance(40 * SECOND);
    ask(&secret).await.expect("a new minute");
}

async fn bad_input_names_the_field(h: &Harness, clock: &ManualClock) {
    let now = clock.now_micros();
    let w = world(h, "badinput").await;
    let (key, secret) = create_key(h, &w, w.key("Checked")).await;
    let good = report(&w, &key, "b-1", 1, 1, 0);
    let m = h.metering();
    let fields = |result: Result<tonic::Response<_>, tonic::Status>| {
        let status = assert_code::<tonic::Response<metering::RecordUsageResponse>>(result, Code::InvalidArgument);
        violated_fields(&status)
    };
    assert_eq!(fields(m.clone().record_usage(metering::RecordUsageRequest { report: None }).await), ["report"]);
    let cases: Vec<(metering::UsageReport, &str)> = vec![
        (metering::UsageReport { request_id: String::new(), ..good.clone() }, "report.request_id"),
        (metering::UsageReport { key: "keys/x".into(), ..good.clone() }, "report.key"),
        (metering::UsageReport { model: String::new(), ..good.clone() }, "report.model"),
        (metering::UsageReport { input_tokens: -1, ..good.clone() }, "report.input_tokens"),
        (metering::UsageReport { outcome: 0, ..good.clone() }, "report.outcome"),
        (metering::UsageReport { end_time: Some(timestamp(now + 60 * MINUTE)), ..good.clone() }, "report.end_time"),
    ];
    for (bad, field) in cases {
        let got = fields(m.clone().record_usage(metering::RecordUsageRequest { report: Some(bad) }).await);
        assert_eq!(got, [field]);
    }
    let batch = |reports| metering::BatchRecordUsageRequest { reports };
    let status = assert_code(m.clone().batch_record_usage(batch(vec![])).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["reports"]);
    let status =
        assert_code(m.clone().batch_record_usage(batch(vec![good.clone(); 1001])).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["reports"]);
    let second_bad = vec![good.clone(), metering::UsageReport { output_tokens: -3, ..good.clone() }];
    let status = assert_code(m.clone().batch_record_usage(batch(second_bad)).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["reports[1].output_tokens"]);

    let credits = |account: &str, credits: i64, reason: &str, request_id: &str| metering::AddCreditsRequest {
        account: account.into(),
        credits,
        reason: reason.into(),
        request_id: request_id.into(),
    };
    let status = assert_code(m.clone().add_credits(credits("acme", 0, "", "")).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["account", "credits", "reason", "request_id"]);
    assert_code(m.clone().add_credits(credits("accounts/nobody", 5, "gift", "g-1")).await, Code::NotFound);
    let grants = metering::ListCreditGrantsRequest { account: "acme".into(), page_size: 5000, page_token: "x".into() };
    let status = assert_code(m.clone().list_credit_grants(grants).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["account", "page_size", "page_token"]);
    assert_code(
        m.clone().get_account_balance(metering::GetAccountBalanceRequest { account: "accounts/nobody".into() }).await,
        Code::NotFound,
    );

    let list = |parent: &str, page_size: i32, page_token: &str| metering::ListUsageRequest {
        parent: parent.into(),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    };
    let status = assert_code(m.clone().list_usage(list("acme", -1, "junk")).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["parent", "page_size", "page_token"]);
    let summary = |scope: &str, granularity: i32, span: i64| metering::GetUsageSummaryRequest {
        scope: scope.into(),
        start_time: Some(timestamp(now - span)),
        end_time: Some(timestamp(now)),
        granularity,
        split_by_model: false,
    };
    let status = assert_code(m.clone().get_usage_summary(summary("nope", 0, MINUTE)).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["scope", "granularity"]);
    let too_long = summary(&w.account, metering::Granularity::Hour as i32, 40 * 24 * 60 * MINUTE);
    let status = assert_code(m.clone().get_usage_summary(too_long).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["end_time"]);
    let status = assert_code(
        m.clone().replay_dead_letters(metering::ReplayDeadLettersRequest { ids: vec!["x".into()] }).await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), ["ids[0]"]);
    let status = assert_code(
        h.key_holder(&secret).get_key_balance(metering::GetKeyBalanceRequest { days: 91 }).await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), ["days"]);
    // Without the admin token nothing is answered.
    let anonymous = metering::metering_service_client::MeteringServiceClient::new(h.metering_channel());
    assert_code(anonymous.clone().list_usage(list(&w.account, 0, "")).await, Code::Unauthenticated);
}

/// Reports naming a model or key that does not exist are refused at once, and usage of an
/// account, application or key that does not exist is NOT_FOUND, not an empty answer.
async fn what_does_not_exist_is_refused_or_not_found(h: &Harness, clock: &ManualClock) {
    let now = clock.now_micros();
    let w = world(h, "real").await;
    let other = world(h, "other").await;
    let (key, _) = create_key(h, &w, w.key("Real")).await;
    let (foreign, _) = create_key(h, &other, other.key("Foreign")).await;
    let m = h.metering();
    let refused = |result: Result<tonic::Response<metering::RecordUsageResponse>, tonic::Status>| {
        violated_fields(&assert_code(result, Code::InvalidArgument))
    };
    let unknown_model = metering::UsageReport { model: "no-such-model".into(), ..report(&w, &key, "n-1", 1, 1, 0) };
    let got = refused(m.clone().record_usage(metering::RecordUsageRequest { report: Some(unknown_model) }).await);
    assert_eq!(got, ["report.model"]);
    let foreign_id = foreign.name.rsplit('/').next().unwrap();
    let misnamed = pb::Key { name: format!("{}/keys/{foreign_id}", w.account), ..key.clone() };
    let got = refused(
        m.clone()
            .record_usage(metering::RecordUsageRequest { report: Some(report(&w, &misnamed, "n-2", 1, 1, 0)) })
            .await,
    );
    assert_eq!(got, ["report.key"]);
    // Nothing of either reached the ledger; a good report still does.
    record(h, report(&w, &key, "n-3", 1, 1, 0)).await;
    assert_eq!(applied(h, &w, 1).await[0].request_id, "n-3");

    let list = |parent: &str, application: &str, key: &str| metering::ListUsageRequest {
        parent: parent.into(),
        application: application.into(),
        key: key.into(),
        ..Default::default()
    };
    assert_code(m.clone().list_usage(list("accounts/nobody", "", "")).await, Code::NotFound);
    let no_app = format!("{}/applications/nope", w.account);
    assert_code(m.clone().list_usage(list(&w.account, &no_app, "")).await, Code::NotFound);
    assert_code(m.clone().list_usage(list(&w.account, "", &misnamed.name)).await, Code::NotFound);
    let summary = |scope: &str| metering::GetUsageSummaryRequest {
        scope: scope.into(),
        start_time: Some(timestamp(now - 60 * MINUTE)),
        end_time: Some(timestamp(now)),
        granularity: metering::Granularity::Hour as i32,
        split_by_model: false,
    };
    for scope in ["accounts/nobody", no_app.as_str(), misnamed.name.as_str()] {
        assert_code(m.clone().get_usage_summary(summary(scope)).await, Code::NotFound);
    }
    for scope in [w.account.as_str(), w.application.as_str(), key.name.as_str()] {
        m.clone().get_usage_summary(summary(scope)).await.unwrap_or_else(|e| panic!("{scope}: {e:?}"));
    }
}

/// With a gateway token configured, the gateway reports usage with it, and it opens nothing
/// else.
async fn the_gateway_token_reports_usage_and_nothing_else(h: &Harness) {
    let w = world(h, "gateway").await;
    let (key, _) = create_key(h, &w, pb::Key { quota: Some(1_000), ..w.key("Reported") }).await;
    let gateway = tollgate_tests::Bearer::token(GATEWAY_TOKEN);
    let mut client =
        metering::metering_service_client::MeteringServiceClient::with_interceptor(h.metering_channel(), gateway);
    let now = tollgate_core::time::now_micros();
    let at = |report| {
        merge(
            report,
            metering::UsageReport {
                start_time: Some(timestamp(now)),
                end_time: Some(timestamp(now)),
                ..Default::default()
            },
        )
    };
    let first = at(report(&w, &key, "g-1", 2, 0, 0));
    client.record_usage(metering::RecordUsageRequest { report: Some(first.clone()) }).await.expect("reported");
    client
        .batch_record_usage(metering::BatchRecordUsageRequest { reports: vec![first] })
        .await
        .expect("reported in a batch");
    applied(h, &w, 1).await;
    let list = metering::ListUsageRequest { parent: w.account.clone(), ..Default::default() };
    assert_code(client.list_usage(list).await, Code::Unauthenticated);
    let credits = metering::AddCreditsRequest {
        account: w.account.clone(),
        credits: 5,
        reason: "no".into(),
        request_id: "g".into(),
    };
    assert_code(client.add_credits(credits).await, Code::Unauthenticated);
    let wrong = tollgate_tests::Bearer::token("not-the-gateway-token");
    let mut stranger =
        metering::metering_service_client::MeteringServiceClient::with_interceptor(h.metering_channel(), wrong);
    let report = report(&w, &key, "g-2", 1, 0, 0);
    assert_code(
        stranger.record_usage(metering::RecordUsageRequest { report: Some(report) }).await,
        Code::Unauthenticated,
    );
}

const GATEWAY_TOKEN: &str = "gateway-token-for-usage-reports";

fn gateway_options() -> tollgate_tests::Options {
    tollgate_tests::Options {
        authz: tollgate::AuthzSettings { gateway_token: Some(GATEWAY_TOKEN.into()), ..Default::default() },
        metering: tollgate::MeteringSettings { gateway_token: Some(GATEWAY_TOKEN.into()), ..Default::default() },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_token_reports_usage_and_nothing_else_embedded() {
    let h = Harness::embedded(gateway_options()).await;
    the_gateway_token_reports_usage_and_nothing_else(&h).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_token_reports_usage_and_nothing_else_production() {
    if let Some(h) = Harness::production(gateway_options()).await {
        the_gateway_token_reports_usage_and_nothing_else(&h).await;
        h.stop().await;
    }
}
