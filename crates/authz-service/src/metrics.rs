//! What authz counts, for `/metrics`. Label values come from fixed sets only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::decision::{Decision, Reason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The label of a deny reason.
pub fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::KeyMalformed => "key_malformed",
        Reason::KeyNotFound => "key_not_found",
        Reason::KeyDisabled => "key_disabled",
        Reason::KeyExpired => "key_expired",
        Reason::IpNotAllowed => "ip_not_allowed",
        Reason::CapabilityNotAllowed => "capability_not_allowed",
        Reason::ModelNotAllowed => "model_not_allowed",
        Reason::QuotaExhausted => "quota_exhausted",
        Reason::AccountBalanceExhausted => "account_balance_exhausted",
        Reason::DailyBudgetExhausted => "daily_budget_exhausted",
        Reason::MonthlyBudgetExhausted => "monthly_budget_exhausted",
        Reason::RpmLimited => "rpm_limited",
        Reason::TpmLimited => "tpm_limited",
    }
}

/// Authz's metrics (cheap to clone: every family is shared).
#[derive(Clone)]
pub struct AuthzMetrics {
    decisions: Family<DecisionLabels, Counter>,
    /// The decisions' series, made once: a call only counts.
    allowed: Counter,
    denied: [Counter; REASONS.len()],
    counters_unavailable: Family<OutcomeLabels, Counter>,
    key_cache: Family<OutcomeLabels, Counter>,
    /// `hit`, `negative_hit`, `miss`: counted on every call, so made once.
    cache_outcomes: [Counter; 3],
    keys_lookups: Family<OutcomeLabels, Counter>,
    invalidations: Counter,
    counter_seconds: Histogram,
}

/// What the in-process key cache had for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    NegativeHit,
    Miss,
}

/// Labels of [`CacheOutcome`], in its order.
const CACHE_OUTCOMES: [&str; 3] = ["hit", "negative_hit", "miss"];

/// Every deny reason, in declaration order (`Reason as usize` indexes it).
const REASONS: [Reason; 13] = [
    Reason::KeyMalformed,
    Reason::KeyNotFound,
    Reason::KeyDisabled,
    Reason::KeyExpired,
    Reason::IpNotAllowed,
    Reason::CapabilityNotAllowed,
    Reason::ModelNotAllowed,
    Reason::QuotaExhausted,
    Reason::AccountBalanceExhausted,
    Reason::DailyBudgetExhausted,
    Reason::MonthlyBudgetExhausted,
    Reason::RpmLimited,
    Reason::TpmLimited,
];

impl Default for AuthzMetrics {
    fn default() -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        let allowed = decisions.get_or_create(&DecisionLabels { decision: "allow", reason: "none" }).clone();
        let denied = REASONS.map(|reason| {
            decisions.get_or_create(&DecisionLabels { decision: "deny", reason: reason_label(reason) }).clone()
        });
        let key_cache = Family::<OutcomeLabels, Counter>::default();
        let cache_outcomes = CACHE_OUTCOMES.map(|outcome| key_cache.get_or_create(&OutcomeLabels { outcome }).clone());
        Self {
            decisions,
            allowed,
            denied,
            key_cache,
            cache_outcomes,
            counters_unavailable: Family::default(),
            keys_lookups: Family::default(),
            invalidations: Counter::default(),
            // 50 µs to about 1.6 s.
            counter_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        }
    }
}

impl AuthzMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("tollgate_authz");
        registry.register("decisions", "Authorize decisions, by decision and deny reason", self.decisions.clone());
        registry.register(
            "counters_unavailable",
            "Counted calls decided while the counters could not be reached, by what the on-Redis-error setting made of them (allowed, unavailable)",
            self.counters_unavailable.clone(),
        );
        registry.register(
            "key_cache",
            "In-process key cache look-ups: hit, negative_hit (a key known not to exist) or miss",
            self.key_cache.clone(),
        );
        registry.register(
            "keys_lookups",
            "Look-ups that reached the keys service (the shared cache did not have the key): found, not_found, error",
            self.keys_lookups.clone(),
        );
        registry.register("invalidations", "Invalidations received from the keys service", self.invalidations.clone());
        registry.register(
            "counter_script_seconds",
            "Time of the one counter step (a Redis script) of a counted Authorize",
            self.counter_seconds.clone(),
        );
    }

    pub(crate) fn decided(&self, decision: &Decision) {
        match decision {
            Decision::Allow(_) => self.allowed.inc(),
            Decision::Deny(denied) => self.denied[denied.reason as usize].inc(),
        };
    }

    pub(crate) fn counters_unavailable(&self, allowed: bool) {
        let outcome = if allowed { "allowed" } else { "unavailable" };
        self.counters_unavailable.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn key_cache(&self, outcome: CacheOutcome) {
        self.cache_outcomes[outcome as usize].inc();
    }

    pub(crate) fn keys_lookup(&self, outcome: &'static str) {
        self.keys_lookups.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn invalidation(&self) {
        self.invalidations.inc();
    }

    pub(crate) fn counter_step(&self, seconds: f64) {
        self.counter_seconds.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_counts_in_its_own_series() {
        for (i, reason) in REASONS.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "REASONS follows the enum's order");
        }
    }
}
