//! The counter conformance suite: the same cases on the in-process counters and on the Redis
//! script (a private key prefix on the shared Redis; skipped without one unless `CI=true`).

use std::sync::Arc;
use std::time::Duration;

use tollgate_core::counters::{CounterCheck, CounterLimits, CounterRequest};
use tollgate_core::windows::{Calendar, Windows};
use tollgate_ports::StateError;
use tollgate_ports::counters::{
    CallCounters, CounterCall, CounterRebuild, CounterRestore, Counters, KeySpend, Settlement,
};
use tollgate_state::memory_counters::MemoryCounters;
use tollgate_state::rebuild::RebuildMarkers;
use tollgate_state::redis::{RedisConfig, RedisState};
use tollgate_state::redis_counters::RedisCounters;
use tollgate_test_support::TestRedis;

/// Adds credits to an account's balance (a grant of its own each time).
async fn credit(counters: &dyn Counters, account_id: &str, credits: i64) {
    let grant = format!("grant-{}", tollgate_core::ids::new_id());
    assert!(counters.credit_once(account_id, &grant, credits).await.unwrap());
}

async fn redis_counters(redis: Option<TestRedis>) -> Option<(Arc<dyn Counters>, TestRedis)> {
    let redis = redis?;
    let config = RedisConfig::new(&redis.url, &redis.prefix, Duration::from_secs(2));
    let state = RedisState::connect(&config).await.unwrap();
    let counters = RedisCounters::new(&state, Duration::from_secs(2));
    // As metering's watch does on a fresh prefix: the counters count once rebuilt.
    counters.mark_rebuilt().await.unwrap();
    Some((Arc::new(counters), redis))
}

tollgate_test_support::conformance_suite!(
    checks: [
        rpm_allows_its_burst_then_one_per_interval,
        concurrent_calls_get_exactly_the_rpm,
        tpm_counts_estimated_tokens,
        a_denied_call_takes_nothing,
        concurrent_holds_never_exceed_the_budget,
        holds_expire_when_no_usage_arrives,
        a_retried_request_replaces_its_hold,
        account_balance_bounds_keys_without_quota,
        settlement_moves_holds_to_spend_once,
        a_batch_settles_each_call_once_across_keys_accounts_and_days,
        a_commit_settles_once_whether_its_redelivery_comes_first_or_after,
        budgets_start_over_in_a_new_window,
        peek_takes_nothing,
        a_restore_overwrites_spend_and_counts_its_commits_and_grants_once,
    ],
    adapters: {
        memory => async { Some((std::sync::Arc::new(tollgate_state::memory_counters::MemoryCounters::new()) as std::sync::Arc<dyn tollgate_ports::counters::Counters>, ())) },
        redis => super::redis_counters(tollgate_test_support::TestRedis::create().await),
        redis_cluster => super::redis_counters(tollgate_test_support::TestRedis::on_cluster().await),
    }
);

/// Real time (Redis expires spend windows by wall clock), rounded to a whole second.
fn now() -> f64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as f64;
    (ms / 1000.0).floor() * 1000.0
}

fn windows(at_ms: f64) -> Windows {
    Calendar::utc().windows((at_ms * 1000.0) as i64)
}

struct Call {
    account: &'static str,
    key: &'static str,
    request_id: String,
    limits: CounterLimits,
    now: f64,
    tokens: i64,
    cost: i64,
    windows: Windows,
}

fn call(limits: CounterLimits) -> Call {
    let t = now();
    Call {
        account: "acme",
        key: "k1",
        request_id: "r".into(),
        limits,
        now: t,
        tokens: 10,
        cost: 0,
        windows: windows(t),
    }
}

impl Call {
    fn as_call(&self) -> CounterCall<'_> {
        CounterCall {
            account_id: self.account,
            key_id: self.key,
            request_id: &self.request_id,
            request: CounterRequest { limits: self.limits, now_ms: self.now, tokens: self.tokens, cost: self.cost },
            windows: &self.windows,
            hold_ttl_ms: 1_000,
        }
    }
}

fn rpm(limit: i64) -> CounterLimits {
    CounterLimits { rpm: Some(limit), ..Default::default() }
}

async fn rpm_allows_its_burst_then_one_per_interval(counters: Arc<dyn Counters>) {
    let mut c = call(rpm(50));
    let t0 = c.now;
    for i in 0..50 {
        c.request_id = format!("r{i}");
        let out = counters.authorize(&c.as_call()).await.unwrap();
        assert!(out.allowed(), "call {i}");
        assert_eq!(out.rpm.as_ref().unwrap().remaining, 49 - i);
    }
    let denied = counters.authorize(&c.as_call()).await.unwrap();
    assert_eq!(denied.first_failure(), Some(CounterCheck::Rpm));
    let rate = denied.rpm.unwrap();
    assert_eq!((rate.remaining, rate.retry_after_ms), (0, Some(1200.0)));
    assert_eq!(rate.reset_at_ms, t0 + 60_000.0, "whole again a period after the burst");
    c.now = t0 + 1_199.0;
    assert!(!counters.authorize(&c.as_call()).await.unwrap().allowed());
    c.now = t0 + 1_200.0;
    assert!(counters.authorize(&c.as_call()).await.unwrap().allowed(), "one interval later, one more");
    assert!(!counters.authorize(&c.as_call()).await.unwrap().allowed());
    c.now = t0 + 61_200.0;
    let refilled = counters.authorize(&c.as_call()).await.unwrap();
    assert_eq!(refilled.rpm.unwrap().remaining, 49, "a full period later the burst is back");
}

async fn concurrent_calls_get_exactly_the_rpm(counters: Arc<dyn Counters>) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let counters = counters.clone();
            tokio::spawn(async move {
                let mut c = call(rpm(50));
                c.request_id = format!("r{i}");
                counters.authorize(&c.as_call()).await.unwrap().allowed()
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap());
    }
    assert_eq!(allowed, 50);
}

async fn tpm_counts_estimated_tokens(counters: Arc<dyn Counters>) {
    let mut c = call(CounterLimits { tpm: Some(1_000), ..Default::default() });
    c.tokens = 600;
    let first = counters.authorize(&c.as_call()).await.unwrap();
    assert!(first.allowed());
    assert_eq!(first.tpm.unwrap().remaining, 400);
    let second = counters.authorize(&c.as_call()).await.unwrap();
    assert_eq!(second.first_failure(), Some(CounterCheck::Tpm));
    assert_eq!(second.tpm.unwrap().retry_after_ms, Some(12_000.0), "200 tokens at 1000 per minute");
    c.tokens = 2_000;
    let never = counters.authorize(&c.as_call()).await.unwrap();
    assert_eq!(never.first_failure(), Some(CounterCheck::Tpm));
    assert_eq!(never.tpm.unwrap().retry_after_ms, None, "more tokens than the limit never fit");
}

async fn a_denied_call_takes_nothing(counters: Arc<dyn Counters>) {
    let limits = CounterLimits { quota: Some(100), rpm: Some(10), tpm: Some(1_000), ..Default::default() };
    let mut c = call(limits);
    c.cost = 100;
    assert_eq!(counters.authorize(&c.as_call()).await.unwrap().hold, 100);
    // The quota is held in full: the next call fails the quota check and takes no RPM or TPM.
    c.request_id = "r2".into();
    for _ in 0..5 {
        let denied = counters.authorize(&c.as_call()).await.unwrap();
        assert_eq!(denied.failures, [CounterCheck::Quota]);
    }
    let after = counters.peek(&c.as_call()).await.unwrap();
    // A peek reports what would be left if it were taken: 10 − the allowed call − this one.
    assert_eq!(after.rpm.unwrap().remaining, 8, "only the allowed call took a request");
    assert_eq!(after.tpm.unwrap().remaining, 980);
}

async fn concurrent_holds_never_exceed_the_budget(counters: Arc<dyn Counters>) {
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let counters = counters.clone();
            tokio::spawn(async move {
                let mut c = call(CounterLimits { daily: Some(1_000), ..Default::default() });
                c.request_id = format!("r{i}");
                c.cost = 30;
                let out = counters.authorize(&c.as_call()).await.unwrap();
                if out.allowed() { out.hold } else { 0 }
            })
        })
        .collect();
    let mut held = 0;
    let mut allowed = 0;
    for task in tasks {
        let hold = task.await.unwrap();
        held += hold;
        allowed += usize::from(hold > 0);
    }
    assert_eq!(held, 1_000, "holds fill the budget exactly, never more");
    assert_eq!(allowed, 34, "33 calls of 30 and one of the last 10");
}

async fn holds_expire_when_no_usage_arrives(counters: Arc<dyn Counters>) {
    let mut c = call(CounterLimits { quota: Some(100), ..Default::default() });
    let t0 = c.now;
    c.cost = 100;
    assert!(counters.authorize(&c.as_call()).await.unwrap().allowed());
    c.request_id = "r2".into();
    assert!(!counters.authorize(&c.as_call()).await.unwrap().allowed());
    c.now = t0 + 1_000.0; // the hold lifetime
    let after = counters.authorize(&c.as_call()).await.unwrap();
    assert!(after.allowed(), "the expired hold was released");
    assert_eq!(after.after_hold().quota_remaining, Some(0));
}

async fn a_retried_request_replaces_its_hold(counters: Arc<dyn Counters>) {
    let mut c = call(CounterLimits { quota: Some(1_000), ..Default::default() });
    c.cost = 300;
    for _ in 0..3 {
        assert_eq!(counters.authorize(&c.as_call()).await.unwrap().after_hold().quota_remaining, Some(700));
    }
}

async fn account_balance_bounds_keys_without_quota(counters: Arc<dyn Counters>) {
    let mut c = call(CounterLimits { account_floor: Some(0), ..Default::default() });
    c.cost = 40;
    assert_eq!(counters.authorize(&c.as_call()).await.unwrap().failures, [CounterCheck::AccountBalance]);
    credit(&*counters, "acme", 100).await;
    assert_eq!(counters.authorize(&c.as_call()).await.unwrap().hold, 40);
    // Another key of the same account shares the balance and sees the first key's hold.
    c.key = "k2";
    c.request_id = "r2".into();
    c.cost = 80;
    let second = counters.authorize(&c.as_call()).await.unwrap();
    assert_eq!((second.hold, second.after_hold().account_remaining), (60, Some(0)));
    c.request_id = "r3".into();
    assert_eq!(counters.authorize(&c.as_call()).await.unwrap().failures, [CounterCheck::AccountBalance]);
    // Another account is untouched.
    c.account = "other";
    credit(&*counters, "other", 10).await;
    assert!(counters.authorize(&c.as_call()).await.unwrap().allowed());
}

async fn settlement_moves_holds_to_spend_once(counters: Arc<dyn Counters>) {
    let limits = CounterLimits { quota: Some(1_000), daily: Some(500), account_floor: None, ..Default::default() };
    let mut c = call(limits);
    c.cost = 200;
    assert_eq!(counters.authorize(&c.as_call()).await.unwrap().hold, 200);
    let settlement = settled_alone("acme", "k1", "r", 120, &c.windows);
    assert!(counters.settle(&settlement).await.unwrap());
    assert!(!counters.settle(&settlement).await.unwrap(), "a repeated settlement is ignored");
    let after = counters.peek(&c.as_call()).await.unwrap();
    assert_eq!(
        (after.quota_remaining, after.daily_remaining),
        (Some(880), Some(380)),
        "hold released, spend added once"
    );
    credit(&*counters, "acme", 1_000).await;
    let floor = CounterLimits { account_floor: Some(0), ..Default::default() };
    let balance = counters.peek(&Call { limits: floor, ..call(CounterLimits::default()) }.as_call()).await.unwrap();
    assert_eq!(balance.account_remaining, Some(880), "the cost left the balance");
}

async fn a_batch_settles_each_call_once_across_keys_accounts_and_days(counters: Arc<dyn Counters>) {
    let limits = CounterLimits { quota: Some(1_000), daily: Some(1_000), account_floor: None, ..Default::default() };
    let mut c = call(limits);
    c.cost = 100;
    hold_h1_on_k1_and_h2_on_k2(counters.as_ref(), &mut c).await;
    let today = c.windows.clone();
    let yesterday = windows(c.now - 86_400_000.0);
    let settle = settled_alone;
    let batch = [
        settle("acme", "k1", "h1", 10, &today),
        settle("acme", "k2", "h2", 20, &today),
        settle("acme", "k1", "r3", 5, &today),
        settle("acme", "k1", "h1", 10, &today), // the same call twice in one batch
        settle("acme", "k1", "late", 7, &yesterday),
        settle("other", "k1", "h1", 30, &today), // another account's call of the same id
    ];
    let applied = counters.settle_batch(&batch).await.unwrap();
    assert_eq!(applied, [true, true, true, false, true, true]);
    assert_eq!(counters.settle_batch(&batch).await.unwrap(), [false; 6], "a repeated batch changes nothing");
    let spend = counters.key_spend("acme", &["k1".into(), "k2".into()], &today).await.unwrap();
    let got: Vec<(i64, i64, i64)> = spend.iter().map(|s| (s.used, s.day, s.month)).collect();
    let late_month = if yesterday.month == today.month { 7 } else { 0 };
    assert_eq!(got, [(22, 15, 15 + late_month), (20, 20, 20)], "spend once per call, in its own day");
    c.key = "k1";
    c.request_id = "peek".into();
    let after = counters.peek(&c.as_call()).await.unwrap();
    assert_eq!((after.quota_remaining, after.daily_remaining), (Some(978), Some(985)), "both holds released");
    let other = counters.key_spend("other", &["k1".into()], &today).await.unwrap();
    assert_eq!(other[0].used, 30);
    credit(&*counters, "acme", 100).await;
    let floor = CounterLimits { account_floor: Some(0), ..Default::default() };
    let balance = counters.peek(&Call { limits: floor, ..call(CounterLimits::default()) }.as_call()).await.unwrap();
    assert_eq!(balance.account_remaining, Some(100 - 42), "the batch's sum left the balance");
}

/// Authorizes request h1 on key k1 and h2 on k2, each holding `c.cost`.
async fn hold_h1_on_k1_and_h2_on_k2(counters: &dyn Counters, c: &mut Call) {
    for (key, request) in [("k1", "h1"), ("k2", "h2")] {
        c.key = key;
        c.request_id = request.into();
        assert_eq!(counters.authorize(&c.as_call()).await.unwrap().hold, c.cost);
    }
}

/// A call settled on its own (no commit known).
fn settled_alone<'a>(
    account_id: &'a str,
    key_id: &'a str,
    request_id: &'a str,
    cost: i64,
    windows: &'a Windows,
) -> Settlement<'a> {
    Settlement {
        account_id,
        key_id,
        request_id,
        cost,
        day: &windows.day,
        month: &windows.month,
        commit_id: 0,
        whole_commit: false,
    }
}

/// The committing worker settles its commit's calls together; a redelivery settles calls one
/// by one. Whichever comes first, and however often, each call counts once.
async fn a_commit_settles_once_whether_its_redelivery_comes_first_or_after(counters: Arc<dyn Counters>) {
    let limits = CounterLimits { quota: Some(1_000), account_floor: None, ..Default::default() };
    let mut c = call(limits);
    c.cost = 100;
    hold_h1_on_k1_and_h2_on_k2(counters.as_ref(), &mut c).await;
    let today = c.windows.clone();
    let settle = |key_id, request_id, cost, commit_id, whole_commit| Settlement {
        account_id: "acme",
        key_id,
        request_id,
        cost,
        day: &today.day,
        month: &today.month,
        commit_id,
        whole_commit,
    };
    // Commit 7: a redelivery of h2 is settled before the committing worker gets to it.
    let early = [settle("k2", "h2", 20, 7, false)];
    assert_eq!(counters.settle_batch(&early).await.unwrap(), [true]);
    let whole = [settle("k1", "h1", 10, 7, true), settle("k2", "h2", 20, 7, true), settle("k1", "r3", 5, 7, true)];
    assert_eq!(counters.settle_batch(&whole).await.unwrap(), [true, false, true], "h2 was settled already");
    assert_eq!(counters.settle_batch(&whole).await.unwrap(), [false; 3]);
    let late = [settle("k1", "r3", 5, 7, false), settle("k1", "h1", 10, 7, false)];
    assert_eq!(counters.settle_batch(&late).await.unwrap(), [false; 2]);
    // Commit 8: the committing worker first, then a redelivery, then the worker again.
    let whole = [settle("k1", "r4", 4, 8, true), settle("k2", "r5", 6, 8, true)];
    assert_eq!(counters.settle_batch(&whole).await.unwrap(), [true, true]);
    assert_eq!(counters.settle_batch(&[settle("k2", "r5", 6, 8, false)]).await.unwrap(), [false]);
    assert_eq!(counters.settle_batch(&whole).await.unwrap(), [false, false]);

    let spend = counters.key_spend("acme", &["k1".into(), "k2".into()], &today).await.unwrap();
    let used: Vec<i64> = spend.iter().map(|s| s.used).collect();
    assert_eq!(used, [10 + 5 + 4, 20 + 6], "each call counted once");
    c.key = "k1";
    c.request_id = "peek".into();
    assert_eq!(counters.peek(&c.as_call()).await.unwrap().quota_remaining, Some(1_000 - 19), "holds released");
    credit(&*counters, "acme", 100).await;
    let floor = CounterLimits { account_floor: Some(0), ..Default::default() };
    let balance = counters.peek(&Call { limits: floor, ..call(CounterLimits::default()) }.as_call()).await.unwrap();
    assert_eq!(balance.account_remaining, Some(100 - 45), "the balance paid each call once");
}

async fn budgets_start_over_in_a_new_window(counters: Arc<dyn Counters>) {
    let limits = CounterLimits { daily: Some(100), monthly: Some(150), ..Default::default() };
    let mut c = call(limits);
    let day_end = c.windows.day_end as f64 / 1000.0;
    c.now = day_end - 1.0;
    c.windows = windows(c.now);
    c.cost = 100;
    assert!(counters.authorize(&c.as_call()).await.unwrap().allowed());
    let settlement = settled_alone("acme", "k1", "r", 100, &c.windows);
    counters.settle(&settlement).await.unwrap();
    c.request_id = "r2".into();
    assert_eq!(counters.authorize(&c.as_call()).await.unwrap().failures, [CounterCheck::DailyBudget]);
    // A millisecond later it is another day: the daily budget is whole, the month is not.
    c.now = day_end;
    c.windows = windows(c.now);
    let next_day = counters.authorize(&c.as_call()).await.unwrap();
    assert!(next_day.allowed());
    assert_eq!(next_day.daily_remaining, Some(100));
    let same_month = c.windows.month == windows(day_end - 1.0).month;
    assert_eq!(next_day.monthly_remaining, Some(if same_month { 50 } else { 150 }));
}

async fn peek_takes_nothing(counters: Arc<dyn Counters>) {
    let limits = CounterLimits { quota: Some(100), rpm: Some(2), tpm: Some(100), ..Default::default() };
    let mut c = call(limits);
    c.cost = 60;
    for _ in 0..5 {
        let out = counters.peek(&c.as_call()).await.unwrap();
        assert!(out.allowed());
        assert_eq!(out.hold, 60);
    }
    let taken = counters.authorize(&c.as_call()).await.unwrap().after_hold();
    assert_eq!((taken.quota_remaining, taken.rpm.unwrap().remaining), (Some(40), 1));
}

/// What a reconciliation writes: spend and balance as the ledger has them, and the commits and
/// grants the ledger holds, which a late settlement or credit must not count again.
async fn a_restore_overwrites_spend_and_counts_its_commits_and_grants_once(counters: Arc<dyn Counters>) {
    let c = call(CounterLimits::default());
    let today = c.windows.clone();
    let settle = |request_id, commit_id| Settlement {
        account_id: "acme",
        key_id: "k1",
        request_id,
        cost: 7,
        day: &today.day,
        month: &today.month,
        commit_id,
        whole_commit: true,
    };
    // Drifted counters, and a grant applied before.
    counters.settle_batch(&[settle("old", 1)]).await.unwrap();
    counters.credit_once("acme", "grant:g0", 1_000).await.unwrap();
    counters.pause_for_restore(&["acme".to_owned()]).await.unwrap();
    let restore = CounterRestore {
        account_id: "acme",
        balance: 500,
        keys: vec![("k1".into(), KeySpend { used: 100, day: 40, month: 60 })],
        windows: &today,
        commits: vec![(2, today.day.clone())],
        grants: vec!["grant:g1".into()],
    };
    counters.restore(&restore).await.unwrap();
    let spend = counters.key_spend("acme", &["k1".into()], &today).await.unwrap();
    assert_eq!(spend, [KeySpend { used: 100, day: 40, month: 60 }]);
    assert_eq!(counters.settle_batch(&[settle("in-ledger", 2)]).await.unwrap(), [false], "commit 2 is counted");
    assert_eq!(counters.settle_batch(&[settle("later", 3)]).await.unwrap(), [true], "commit 3 came after");
    assert!(!counters.credit_once("acme", "grant:g1", 50).await.unwrap(), "grant g1 is counted");
    assert!(counters.credit_once("acme", "grant:g2", 50).await.unwrap());
    let spend = counters.key_spend("acme", &["k1".into()], &today).await.unwrap();
    assert_eq!(spend[0].used, 107);
    let floor = CounterLimits { account_floor: Some(0), ..Default::default() };
    let balance = counters.peek(&Call { limits: floor, ..call(CounterLimits::default()) }.as_call()).await.unwrap();
    assert_eq!(balance.account_remaining, Some(500 - 7 + 50));
}

/// While a reconciliation rewrites an account, settling and crediting it wait (Redis only:
/// `dev` rebuilds its counters before its workers start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_and_crediting_wait_for_a_reconciliation() {
    let Some((counters, _guard)) = redis_counters(TestRedis::create().await).await else { return };
    let c = call(CounterLimits::default());
    let settle = |account_id, request_id| Settlement {
        account_id,
        key_id: "k1",
        request_id,
        cost: 7,
        day: &c.windows.day,
        month: &c.windows.month,
        commit_id: 9,
        whole_commit: true,
    };
    counters.pause_for_restore(&["acme".to_owned(), "other".to_owned()]).await.unwrap();
    let paused = counters.settle_batch(&[settle("acme", "r1"), settle("free", "r2")]).await;
    assert!(matches!(paused, Err(StateError::Reconciling)), "{paused:?}");
    assert!(matches!(counters.credit_once("acme", "grant:g", 5).await, Err(StateError::Reconciling)));
    let restore = CounterRestore {
        account_id: "acme",
        balance: 0,
        keys: Vec::new(),
        windows: &c.windows,
        commits: Vec::new(),
        grants: Vec::new(),
    };
    counters.restore(&restore).await.unwrap();
    counters.resume(&["other".to_owned()]).await.unwrap();
    // The account not paused settled in the first try; the retry skips it.
    assert_eq!(counters.settle_batch(&[settle("acme", "r1"), settle("free", "r2")]).await.unwrap(), [true, false]);
    assert!(counters.credit_once("acme", "grant:g", 5).await.unwrap());
    assert_eq!(counters.settle_batch(&[settle("other", "r3")]).await.unwrap(), [true]);
}

#[tokio::test]
async fn memory_counters_start_empty() {
    let counters = MemoryCounters::new();
    let out = counters.peek(&call(CounterLimits { quota: Some(5), ..Default::default() }).as_call()).await.unwrap();
    assert_eq!(out.quota_remaining, Some(5));
}

/// Without its slot's rebuilt marker (Redis lost its data), a script counts nothing: Authorize
/// gets `CountersLost`, settling and crediting wait as for a reconciliation; once the markers
/// are written again everything counts. Runs on a standalone Redis and on a cluster.
async fn lost_markers_stop_counting_until_rebuilt(redis: Option<TestRedis>) {
    let Some((counters, guard)) = redis_counters(redis).await else { return };
    assert!(counters.counters_intact().await.unwrap());
    let paid = call(CounterLimits { quota: Some(1_000), ..Default::default() });
    counters.authorize(&paid.as_call()).await.unwrap();
    // Lose one slot's marker, as a restarted cluster node would.
    let state =
        RedisState::connect(&RedisConfig::new(&guard.url, &guard.prefix, Duration::from_secs(2))).await.unwrap();
    let marker = RebuildMarkers::new(&guard.prefix).for_account("acme");
    let mut conn = state.connection();
    ::redis::cmd("DEL").arg(&marker).query_async::<()>(&mut conn).await.unwrap();
    assert!(matches!(counters.authorize(&paid.as_call()).await, Err(StateError::CountersLost)));
    assert!(matches!(counters.peek(&paid.as_call()).await, Err(StateError::CountersLost)));
    // The refusing call asked for a rebuild, whether or not the health check samples its slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while counters.counters_intact().await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "no rebuild was asked for");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settle = Settlement {
        account_id: "acme",
        key_id: "k1",
        request_id: "r-lost",
        cost: 7,
        day: &paid.windows.day,
        month: &paid.windows.month,
        commit_id: 3,
        whole_commit: true,
    };
    assert!(matches!(counters.settle(&settle).await, Err(StateError::Reconciling)));
    assert!(matches!(counters.credit_once("acme", "grant:lost", 5).await, Err(StateError::Reconciling)));
    // Another account's slot kept its marker and counts on.
    if tollgate_state::rebuild::slot_of("other") != tollgate_state::rebuild::slot_of("acme") {
        let other = Call { account: "other", ..call(CounterLimits { quota: Some(1_000), ..Default::default() }) };
        counters.authorize(&other.as_call()).await.unwrap();
    }
    counters.mark_rebuilt().await.unwrap();
    assert!(counters.counters_intact().await.unwrap());
    counters.authorize(&paid.as_call()).await.unwrap();
    assert!(counters.settle(&settle).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_markers_stop_counting_until_rebuilt_on_redis() {
    lost_markers_stop_counting_until_rebuilt(TestRedis::create().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_markers_stop_counting_until_rebuilt_on_a_redis_cluster() {
    lost_markers_stop_counting_until_rebuilt(TestRedis::on_cluster().await).await;
}
