//! The counter decision of Authorize, as a pure function: quota, account balance, daily and
//! monthly budgets, RPM and TPM, checked in that order, and what an allowed call takes.
//!
//! This is the specification both counter adapters follow: the in-process one calls it, the
//! Redis one runs a Lua port of it (`crates/state/src/lua/authorize.lua`) so that the check
//! and the take are one atomic step. The conformance suite runs the same cases on both.
//!
//! Rates use GCRA over a 60 s period: a limit of N allows a burst of N, then one more every
//! 60/N s. There is no window edge, so no double burst.
//!
//! Money: a call is allowed while every applicable remainder is positive (at least one
//! credit); it then holds its estimated cost, capped by the smallest remainder, until
//! metering settles it. Holds count against quota and budgets like spend, so concurrent calls
//! cannot hold more than a budget, and what a key can spend past a limit is bounded by one
//! call's actual cost above its hold.

/// The rate-limit period, in milliseconds.
pub const PERIOD_MS: f64 = 60_000.0;
/// Slack for float rounding of accumulated GCRA intervals (milliseconds).
pub const EPSILON_MS: f64 = 0.01;

/// One counter check, in evaluation order; the numbers are the Lua script's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CounterCheck {
    Quota = 1,
    AccountBalance = 2,
    DailyBudget = 3,
    MonthlyBudget = 4,
    Rpm = 5,
    Tpm = 6,
}

impl CounterCheck {
    pub const ALL: [CounterCheck; 6] = [
        CounterCheck::Quota,
        CounterCheck::AccountBalance,
        CounterCheck::DailyBudget,
        CounterCheck::MonthlyBudget,
        CounterCheck::Rpm,
        CounterCheck::Tpm,
    ];

    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as i64 == code)
    }
}

/// The limits that apply to one call; `None` means no such limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterLimits {
    pub quota: Option<i64>,
    /// How far below zero the account may go; set only for keys without a quota on accounts
    /// with a credit limit (prepaid or overdraft).
    pub account_floor: Option<i64>,
    pub daily: Option<i64>,
    pub monthly: Option<i64>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
}

impl CounterLimits {
    /// Whether any money limit applies (then an allowed call takes a hold).
    pub fn has_money(&self) -> bool {
        self.quota.is_some() || self.account_floor.is_some() || self.daily.is_some() || self.monthly.is_some()
    }

    /// Whether there is anything to count at all.
    pub fn is_empty(&self) -> bool {
        !self.has_money() && self.rpm.is_none() && self.tpm.is_none()
    }
}

/// What the counters hold for one key and its account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterState {
    /// Credits the key has spent in its life.
    pub used: i64,
    /// Credits the key has spent today.
    pub day_spent: i64,
    /// Credits the key has spent this month.
    pub month_spent: i64,
    /// Credits held by the key's open calls.
    pub key_held: i64,
    /// The account's balance.
    pub balance: i64,
    /// Credits held by all open calls of the account.
    pub account_held: i64,
    /// GCRA theoretical arrival times, in Unix milliseconds.
    pub rpm_tat: Option<f64>,
    pub tpm_tat: Option<f64>,
}

/// One call's request to the counters.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterRequest {
    pub limits: CounterLimits,
    pub now_ms: f64,
    /// Estimated tokens (for TPM).
    pub tokens: i64,
    /// Estimated cost in credits (for the hold).
    pub cost: i64,
}

/// A rate limit's state after the call.
#[derive(Debug, Clone, PartialEq)]
pub struct RateOutcome {
    pub limit: i64,
    pub remaining: i64,
    /// When the limit is whole again (Unix ms).
    pub reset_at_ms: f64,
    /// When a denied call may be retried; `None` when allowed, or when the call can never
    /// fit (its cost exceeds the limit).
    pub retry_after_ms: Option<f64>,
    /// The theoretical arrival time to store if the call is taken.
    pub new_tat: f64,
    pub passed: bool,
}

/// The decision and everything a response reports.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterOutcome {
    /// Every failing check, in order; the first is the deny reason.
    pub failures: Vec<CounterCheck>,
    pub quota_remaining: Option<i64>,
    pub account_remaining: Option<i64>,
    pub daily_remaining: Option<i64>,
    pub monthly_remaining: Option<i64>,
    pub rpm: Option<RateOutcome>,
    pub tpm: Option<RateOutcome>,
    /// Credits an allowed call holds.
    pub hold: i64,
}

impl CounterOutcome {
    pub fn allowed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn first_failure(&self) -> Option<CounterCheck> {
        self.failures.first().copied()
    }

    /// The remainders as an allowed call leaves them (the hold taken).
    pub fn after_hold(mut self) -> Self {
        if self.allowed() {
            let hold = self.hold;
            for remaining in [
                &mut self.quota_remaining,
                &mut self.account_remaining,
                &mut self.daily_remaining,
                &mut self.monthly_remaining,
            ] {
                if let Some(r) = remaining.as_mut() {
                    *r -= hold;
                }
            }
        }
        self
    }
}

/// GCRA for one call of `cost` units against `limit` per period.
pub fn gcra(limit: i64, cost: i64, tat: Option<f64>, now: f64) -> RateOutcome {
    let limit_f = limit.max(1) as f64;
    let interval = PERIOD_MS / limit_f;
    let tat = tat.map_or(now, |t| t.max(now));
    let new_tat = tat + cost.max(0) as f64 * interval;
    let allow_at = new_tat - PERIOD_MS;
    if cost > limit {
        let remaining = ((now + PERIOD_MS - tat) / interval + 1e-9).floor().max(0.0) as i64;
        return RateOutcome { limit, remaining, reset_at_ms: tat, retry_after_ms: None, new_tat: tat, passed: false };
    }
    if allow_at > now + EPSILON_MS {
        let remaining = ((now + PERIOD_MS - tat) / interval + 1e-9).floor().max(0.0) as i64;
        return RateOutcome {
            limit,
            remaining,
            reset_at_ms: tat,
            retry_after_ms: Some(allow_at - now),
            new_tat: tat,
            passed: false,
        };
    }
    let remaining = (((now - allow_at) / interval) + 1e-9).floor().max(0.0) as i64;
    RateOutcome { limit, remaining, reset_at_ms: new_tat, retry_after_ms: None, new_tat, passed: true }
}

/// Evaluates every check without changing anything.
pub fn evaluate(state: &CounterState, request: &CounterRequest) -> CounterOutcome {
    let l = &request.limits;
    let mut failures = Vec::new();
    let mut money_floor: Option<i64> = None;
    let mut money = |check: CounterCheck, remaining: Option<i64>, failures: &mut Vec<CounterCheck>| {
        if let Some(r) = remaining {
            if r <= 0 {
                failures.push(check);
            }
            money_floor = Some(money_floor.map_or(r, |m: i64| m.min(r)));
        }
        remaining
    };
    let quota_remaining = money(CounterCheck::Quota, l.quota.map(|q| q - state.used - state.key_held), &mut failures);
    let account_remaining = money(
        CounterCheck::AccountBalance,
        l.account_floor.map(|floor| state.balance + floor - state.account_held),
        &mut failures,
    );
    let daily_remaining =
        money(CounterCheck::DailyBudget, l.daily.map(|d| d - state.day_spent - state.key_held), &mut failures);
    let monthly_remaining =
        money(CounterCheck::MonthlyBudget, l.monthly.map(|m| m - state.month_spent - state.key_held), &mut failures);
    let rpm = l.rpm.map(|limit| gcra(limit, 1, state.rpm_tat, request.now_ms));
    if rpm.as_ref().is_some_and(|r| !r.passed) {
        failures.push(CounterCheck::Rpm);
    }
    let tpm = l.tpm.map(|limit| gcra(limit, request.tokens, state.tpm_tat, request.now_ms));
    if tpm.as_ref().is_some_and(|t| !t.passed) {
        failures.push(CounterCheck::Tpm);
    }
    let hold = money_floor.map_or(0, |floor| request.cost.max(0).min(floor.max(0)));
    CounterOutcome { failures, quota_remaining, account_remaining, daily_remaining, monthly_remaining, rpm, tpm, hold }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(limits: CounterLimits, cost: i64) -> CounterRequest {
        CounterRequest { limits, now_ms: 1_700_000_000_000.0, tokens: 100, cost }
    }

    #[test]
    fn nothing_to_count_allows_and_holds_nothing() {
        let out = evaluate(&CounterState::default(), &request(CounterLimits::default(), 50));
        assert!(out.allowed());
        assert_eq!(out.hold, 0);
    }

    #[test]
    fn money_checks_report_in_order_and_the_hold_is_capped() {
        let limits = CounterLimits { quota: Some(100), daily: Some(30), monthly: Some(1000), ..Default::default() };
        let state = CounterState { used: 10, day_spent: 5, key_held: 5, ..Default::default() };
        let out = evaluate(&state, &request(limits, 500));
        assert!(out.allowed());
        assert_eq!((out.quota_remaining, out.daily_remaining, out.monthly_remaining), (Some(85), Some(20), Some(995)));
        assert_eq!(out.hold, 20, "capped by the smallest remainder");
        assert_eq!(out.after_hold().daily_remaining, Some(0));

        let spent = CounterState { used: 100, day_spent: 30, ..Default::default() };
        let out = evaluate(&spent, &request(limits, 1));
        assert_eq!(out.failures, [CounterCheck::Quota, CounterCheck::DailyBudget]);
        assert_eq!(out.first_failure(), Some(CounterCheck::Quota));
    }

    #[test]
    fn account_balance_counts_the_credit_limit_and_the_account_holds() {
        let limits = CounterLimits { account_floor: Some(0), ..Default::default() };
        let broke = evaluate(&CounterState::default(), &request(limits, 10));
        assert_eq!(broke.failures, [CounterCheck::AccountBalance]);
        let funded = CounterState { balance: 50, account_held: 45, ..Default::default() };
        let out = evaluate(&funded, &request(limits, 10));
        assert_eq!((out.account_remaining, out.hold), (Some(5), 5));
        let overdraft = CounterLimits { account_floor: Some(100), ..Default::default() };
        assert!(evaluate(&CounterState { balance: -99, ..Default::default() }, &request(overdraft, 1)).allowed());
    }

    #[test]
    fn gcra_allows_a_burst_of_the_limit_then_one_per_interval() {
        let now = 1_700_000_000_000.0;
        let mut tat = None;
        for i in 0..50 {
            let out = gcra(50, 1, tat, now);
            assert!(out.passed, "call {i}");
            assert_eq!(out.remaining, 49 - i);
            tat = Some(out.new_tat);
        }
        let denied = gcra(50, 1, tat, now);
        assert!(!denied.passed);
        assert!((denied.retry_after_ms.unwrap() - 1200.0).abs() < 1e-6);
        assert!(!gcra(50, 1, tat, now + 1199.0).passed);
        let later = gcra(50, 1, tat, now + 1200.0);
        assert!(later.passed && later.remaining == 0);
    }

    #[test]
    fn gcra_survives_intervals_that_are_not_whole() {
        for limit in [7, 13, 999, 1_000_003] {
            let now = 1_799_999_999_999.0;
            let mut tat = None;
            for _ in 0..limit.min(2000) {
                let out = gcra(limit, 1, tat, now);
                assert!(out.passed, "limit {limit}");
                tat = Some(out.new_tat);
            }
            if limit <= 2000 {
                assert!(!gcra(limit, 1, tat, now).passed, "limit {limit}: one past the burst");
            }
        }
    }

    #[test]
    fn tokens_beyond_the_limit_never_fit() {
        let out = gcra(1000, 1001, None, 0.0);
        assert!(!out.passed);
        assert_eq!(out.retry_after_ms, None);
        assert!(gcra(1000, 0, None, 0.0).passed);
    }
}
