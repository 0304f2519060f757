//! The Redis script (`src/lua/authorize.lua`, `settle.lua`, `credit.lua`) and the core's rule
//! (`tollgate_core::counters::evaluate`, which the in-process counters run) must be the same
//! rule. This runs random sequences of calls, settlements and credits on both and compares
//! every answer: decision, each failing check, remainders, hold, rate remaining, reset and
//! retry. A divergence fails with the sequence that shows it (proptest shrinks it).
//!
//! The script stores arrival times to 0.1 µs where the core keeps them exact; rates of 1–99
//! (intervals like 60 000 / 7 ms) and a few larger ones are drawn so a rounding that changed a
//! decision would show (none did in 10,000 sequences). Sequences hold at most 16 calls, so
//! the script's sweep of expired holds (16 a call) is never behind the core's.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tollgate_core::counters::{CounterLimits, CounterOutcome, CounterRequest};
use tollgate_core::windows::Calendar;
use tollgate_ports::counters::{CounterCall, CounterRebuild, Counters, Settlement};
use tollgate_state::memory_counters::MemoryCounters;
use tollgate_state::redis::{RedisConfig, RedisState};
use tollgate_state::redis_counters::RedisCounters;
use tollgate_test_support::TestRedis;

/// Larger rates, besides 1–99.
const RATES: [i64; 4] = [120, 997, 1000, 60_000];

#[derive(Debug, Clone)]
enum Step {
    /// Authorize (or only look, `take` false) a call of key 0 or 1, `advance_ms` after the
    /// step before.
    Call { key: usize, limits: CounterLimits, tokens: i64, cost: i64, take: bool, advance_ms: u32 },
    /// Settle the `call`-th call made so far (if any) at `cost`.
    Settle { call: usize, cost: i64 },
    /// Add credits to the account.
    Credit { credits: i64 },
}

fn limits() -> impl Strategy<Value = CounterLimits> {
    let money = || prop::option::weighted(0.5, 0i64..60);
    let rate = || prop::option::weighted(0.5, prop_oneof![1i64..100, prop::sample::select(&RATES[..])]);
    (money(), prop::option::weighted(0.4, 0i64..60), money(), money(), rate(), rate()).prop_map(
        |(quota, account_floor, daily, monthly, rpm, tpm)| CounterLimits {
            quota,
            // The keys service gives an account floor only to keys without a quota.
            account_floor: if quota.is_some() { None } else { account_floor },
            daily,
            monthly,
            rpm,
            tpm,
        },
    )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..2, limits(), 0i64..30, 0i64..25, prop::bool::weighted(0.85), 0u32..4_000).prop_map(
            |(key, limits, tokens, cost, take, advance_ms)| Step::Call { key, limits, tokens, cost, take, advance_ms }
        ),
        2 => (0usize..40, 0i64..25).prop_map(|(call, cost)| Step::Settle { call, cost }),
        1 => (1i64..40).prop_map(|credits| Step::Credit { credits }),
    ]
}

/// What both must agree on; the script reports times in whole milliseconds (rounded up).
fn comparable(outcome: CounterOutcome) -> CounterOutcome {
    let round = |rate: Option<tollgate_core::counters::RateOutcome>| {
        rate.map(|mut r| {
            r.reset_at_ms = r.reset_at_ms.ceil();
            r.new_tat = r.reset_at_ms;
            r.retry_after_ms = r.retry_after_ms.map(f64::ceil);
            r
        })
    };
    CounterOutcome { rpm: round(outcome.rpm), tpm: round(outcome.tpm), ..outcome }
}

async fn redis_counters(redis: &TestRedis) -> RedisCounters {
    let config = RedisConfig::new(&redis.url, &redis.prefix, Duration::from_secs(2));
    let state = RedisState::connect(&config).await.unwrap();
    let counters = RedisCounters::new(&state, Duration::from_secs(2));
    counters.mark_rebuilt().await.unwrap();
    counters
}

/// Runs `steps` on both, on a fresh account, and fails at the first answer they differ in.
async fn run(redis: &RedisCounters, steps: &[Step]) -> Result<(), TestCaseError> {
    let memory = MemoryCounters::new();
    let both: [&dyn Counters; 2] = [&memory, redis];
    let account = format!("a{}", tollgate_core::ids::new_id());
    // Whole seconds of today, so the windows do not change under the run.
    let mut now = (tollgate_core::time::now_micros() / 1_000_000 * 1_000) as f64;
    let windows = Calendar::utc().windows((now * 1000.0) as i64);
    let mut calls: Vec<(String, String)> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Call { key, limits, tokens, cost, take, advance_ms } => {
                now += f64::from(*advance_ms);
                let key_id = format!("k{key}");
                let request_id = format!("r{i}");
                let call = CounterCall {
                    account_id: &account,
                    key_id: &key_id,
                    request_id: &request_id,
                    request: CounterRequest { limits: *limits, now_ms: now, tokens: *tokens, cost: *cost },
                    windows: &windows,
                    hold_ttl_ms: 5_000,
                };
                let mut answers = Vec::new();
                for counters in both {
                    let answer = if *take { counters.authorize(&call).await } else { counters.peek(&call).await };
                    answers.push(comparable(answer.map_err(|e| TestCaseError::fail(e.to_string()))?));
                }
                prop_assert_eq!(&answers[0], &answers[1], "step {}: {:?}", i, step);
                if *take {
                    calls.push((key_id, request_id));
                }
            }
            Step::Settle { call, cost } => {
                let Some((key_id, request_id)) = calls.get(*call) else { continue };
                let settlement = Settlement {
                    account_id: &account,
                    key_id,
                    request_id,
                    cost: *cost,
                    day: &windows.day,
                    month: &windows.month,
                    commit_id: 0,
                    whole_commit: false,
                };
                let mut answers = Vec::new();
                for counters in both {
                    answers.push(counters.settle(&settlement).await.map_err(|e| TestCaseError::fail(e.to_string()))?);
                }
                prop_assert_eq!(answers[0], answers[1], "step {}: {:?}", i, step);
            }
            Step::Credit { credits } => {
                let grant = format!("g{i}");
                for counters in both {
                    counters
                        .credit_once(&account, &grant, *credits)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_script_and_the_core_rule_answer_alike() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let Some(redis) = runtime.block_on(TestRedis::create()) else { return };
    let counters = Arc::new(runtime.block_on(redis_counters(&redis)));
    let config = ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() };
    // At most 16 holds, so the script's sweep (16 expired holds a call) never falls behind.
    proptest!(config, |(steps in prop::collection::vec(step(), 1..17))| {
        runtime.block_on(run(&counters, &steps))?;
    });
}
