//! What Authorize decides, in the domain's own terms: the gRPC `Authorize` (and any other front
//! door) turns it into its protocol's answer, so every door says the same.

use std::sync::Arc;
use std::time::Duration;

/// Why a call is denied: one rule, in the order Authorize checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    KeyMalformed,
    KeyNotFound,
    KeyDisabled,
    KeyExpired,
    IpNotAllowed,
    CapabilityNotAllowed,
    ModelNotAllowed,
    QuotaExhausted,
    AccountBalanceExhausted,
    DailyBudgetExhausted,
    MonthlyBudgetExhausted,
    RpmLimited,
    TpmLimited,
}

/// Who a call is charged to, as resource names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub key: String,
    pub application: String,
    pub account: String,
    pub group: String,
    /// The group's price multiplier, as configured (`1.5`).
    pub price_multiplier: String,
}

/// A rate limit after the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateStatus {
    pub limit: i64,
    pub remaining: i64,
    /// When the limit is whole again, in milliseconds since the epoch.
    pub reset_at_ms: f64,
    /// How long after the decision that is, in milliseconds (on the service's clock, which
    /// the proxy's client does not share).
    pub reset_after_ms: f64,
}

/// What is left after the call (a denied call takes nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Headroom {
    pub rpm: Option<RateStatus>,
    pub tpm: Option<RateStatus>,
    pub quota_remaining: Option<i64>,
    pub daily_remaining: Option<i64>,
    pub monthly_remaining: Option<i64>,
    pub account_remaining: Option<i64>,
    /// The largest `max_tokens` the money left pays for at the model's dearest price.
    pub max_tokens: Option<i64>,
}

/// A call may go ahead.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    pub identity: Arc<Identity>,
    /// `None` when nothing was counted (a key without limits, or counters unreachable and
    /// allowed by the fail-open setting).
    pub headroom: Option<Headroom>,
    /// Credits held for the call until its usage report settles it.
    pub held_credits: i64,
}

/// A call may not go ahead.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    pub reason: Reason,
    /// For the caller: what to change. Never names another account's data.
    pub message: &'static str,
    /// `None` while the key is not known.
    pub identity: Option<Arc<Identity>>,
    pub headroom: Option<Headroom>,
    /// When a rate limit will admit the call.
    pub retry_after: Option<Duration>,
}

/// Authorize's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denied),
}

/// One rule as ExplainAuthorize reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    pub rule: Reason,
    pub passed: bool,
    pub message: String,
}

/// Every rule of a call, evaluated without taking anything.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// In the order Authorize checks them; the first that failed is the reason.
    pub rules: Vec<RuleResult>,
    pub identity: Option<Arc<Identity>>,
    pub headroom: Option<Headroom>,
}

impl Explanation {
    /// The rule a call would be denied by; `None`: it would be allowed.
    pub fn reason(&self) -> Option<Reason> {
        self.rules.iter().find(|r| !r.passed).map(|r| r.rule)
    }
}
