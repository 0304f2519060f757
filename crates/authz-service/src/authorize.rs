//! Authorize and ExplainAuthorize: parse the key, resolve its state, run the static checks,
//! then one counter step, and say what is left.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use tollgate_core::clock::Clock;
use tollgate_core::counters::{CounterCheck, CounterOutcome, CounterRequest, RateOutcome};
use tollgate_core::money::cost_credits;
use tollgate_core::throttle::{Throttle, WARN_EVERY};
use tollgate_core::windows::{Calendar, Windows};
use tollgate_core::{Capability, KeyPepper, key_format};
use tollgate_ports::counters::{CallCounters, CounterCall};

use crate::compiled::CompiledKey;
use crate::decision::{Allowed, Decision, Denied, Explanation, Headroom, RateStatus, Reason, RuleResult};
use crate::error::AuthzError;
use crate::failure::RedisErrorPolicy;
use crate::metrics::AuthzMetrics;
use crate::policy::{self, Call, STATIC_RULES};
use crate::resolver::{KeyResolver, Lookup};
use tollgate_keys_client::catalog::{Loaded, ModelCatalog, Price};

/// A checked Authorize request.
#[derive(Debug, Clone)]
pub struct AuthorizeInput {
    pub api_key: String,
    pub model: String,
    pub capability: Capability,
    pub client_ip: Option<IpAddr>,
    pub estimated_tokens: i64,
    pub request_id: String,
}

/// Decides on calls.
pub struct Authorizer {
    pub(crate) resolver: KeyResolver,
    pub(crate) catalog: ModelCatalog,
    counters: Arc<dyn CallCounters>,
    pepper: KeyPepper,
    clock: Arc<dyn Clock>,
    calendar: Calendar,
    windows: ArcSwap<Windows>,
    hold_ttl_ms: i64,
    on_redis_error: RedisErrorPolicy,
    metrics: AuthzMetrics,
}

/// The settings an [`Authorizer`] needs besides its adapters.
#[derive(Debug, Clone)]
pub struct AuthorizerSettings {
    pub pepper: KeyPepper,
    pub clock: Arc<dyn Clock>,
    pub calendar: Calendar,
    pub hold_ttl_ms: i64,
    pub on_redis_error: RedisErrorPolicy,
}

fn deny(reason: Reason, message: &'static str) -> Denied {
    Denied { reason, message, identity: None, headroom: None, retry_after: None }
}

fn counter_reason(check: CounterCheck) -> Reason {
    match check {
        CounterCheck::Quota => Reason::QuotaExhausted,
        CounterCheck::AccountBalance => Reason::AccountBalanceExhausted,
        CounterCheck::DailyBudget => Reason::DailyBudgetExhausted,
        CounterCheck::MonthlyBudget => Reason::MonthlyBudgetExhausted,
        CounterCheck::Rpm => Reason::RpmLimited,
        CounterCheck::Tpm => Reason::TpmLimited,
    }
}

fn counter_message(check: CounterCheck, outcome: &CounterOutcome) -> &'static str {
    match check {
        CounterCheck::Quota => "the key's credit quota is used up",
        CounterCheck::AccountBalance => "the account's balance is used up",
        CounterCheck::DailyBudget => "the key's budget for today is used up",
        CounterCheck::MonthlyBudget => "the key's budget for this month is used up",
        CounterCheck::Rpm => "the key's requests per minute are used up",
        CounterCheck::Tpm if outcome.tpm.as_ref().is_some_and(|t| t.retry_after_ms.is_none()) => {
            "the call's estimated tokens exceed the key's tokens per minute"
        }
        CounterCheck::Tpm => "the key's tokens per minute are used up",
    }
}

/// A rate's state; `now_ms` is the decision's instant, on the service's clock.
fn rate_status(rate: &RateOutcome, now_ms: f64) -> RateStatus {
    RateStatus {
        limit: rate.limit,
        remaining: rate.remaining,
        reset_at_ms: rate.reset_at_ms,
        reset_after_ms: (rate.reset_at_ms - now_ms).max(0.0),
    }
}

/// The smallest money remainder, i.e. the credits this call may spend.
fn spendable(outcome: &CounterOutcome) -> Option<i64> {
    [outcome.quota_remaining, outcome.account_remaining, outcome.daily_remaining, outcome.monthly_remaining]
        .into_iter()
        .flatten()
        .min()
}

/// The largest `max_tokens` that `credits` pay for at this model's dearest price.
fn affordable_tokens(credits: i64, price: &Price, multiplier_micros: i64) -> Option<i64> {
    let per_token = i128::from(price.estimate_per_mtok()) * i128::from(multiplier_micros);
    if per_token <= 0 {
        return None;
    }
    let tokens = i128::from(credits.max(0)) * 1_000_000_000_000 / per_token;
    Some(i64::try_from(tokens).unwrap_or(i64::MAX))
}

/// What is left, as a response reports it. `outcome` holds the remainders before the hold,
/// decided at `now_ms`.
fn headroom(outcome: CounterOutcome, price: Option<&Price>, multiplier_micros: i64, now_ms: f64) -> Headroom {
    let max_tokens = spendable(&outcome).zip(price).and_then(|(c, p)| affordable_tokens(c, p, multiplier_micros));
    let after = outcome.after_hold();
    Headroom {
        rpm: after.rpm.as_ref().map(|rate| rate_status(rate, now_ms)),
        tpm: after.tpm.as_ref().map(|rate| rate_status(rate, now_ms)),
        quota_remaining: after.quota_remaining,
        daily_remaining: after.daily_remaining,
        monthly_remaining: after.monthly_remaining,
        account_remaining: after.account_remaining,
        max_tokens,
    }
}

impl Authorizer {
    pub fn new(
        resolver: KeyResolver,
        catalog: ModelCatalog,
        counters: Arc<dyn CallCounters>,
        settings: AuthorizerSettings,
        metrics: AuthzMetrics,
    ) -> Self {
        let now = settings.clock.now_micros();
        Self {
            resolver,
            catalog,
            counters,
            windows: ArcSwap::from_pointee(settings.calendar.windows(now)),
            pepper: settings.pepper,
            clock: settings.clock,
            calendar: settings.calendar,
            hold_ttl_ms: settings.hold_ttl_ms,
            on_redis_error: settings.on_redis_error,
            metrics,
        }
    }

    /// The day and month of `now`, recomputed only when a day boundary passes.
    fn windows(&self, now: i64) -> Arc<Windows> {
        let current = self.windows.load_full();
        if Calendar::contains(&current, now) {
            return current;
        }
        let fresh = Arc::new(self.calendar.windows(now));
        self.windows.store(fresh.clone());
        fresh
    }

    /// Resolves the key, or the response that ends the call before any counter.
    async fn key_of(&self, api_key: &str) -> Result<Result<Arc<CompiledKey>, Denied>, AuthzError> {
        if let Err(malformed) = key_format::validate(api_key) {
            let message = match malformed {
                key_format::MalformedKey::WrongPrefix => "the key does not start with sk-",
                key_format::MalformedKey::WrongLength => "the key has the wrong length",
                key_format::MalformedKey::BadCharacter => "the key holds a character outside base62",
                key_format::MalformedKey::BadChecksum => "the key's checksum does not match (a typo?)",
            };
            return Ok(Err(deny(Reason::KeyMalformed, message)));
        }
        let hash = self.pepper.hash(api_key);
        match self.resolver.resolve(hash).await.map_err(|e| AuthzError::Unavailable(e.to_string()))? {
            Lookup::Found(key) => Ok(Ok(key)),
            Lookup::Unknown => Ok(Err(deny(Reason::KeyNotFound, "no such key"))),
        }
    }

    /// The catalog, reloaded first if it does not know `model` (a model added a moment ago).
    async fn catalog(&self, model: &str) -> Result<Guard<Option<Arc<Loaded>>>, AuthzError> {
        let mut loaded = self.catalog.load();
        let knows = |l: &Option<Arc<Loaded>>| l.as_ref().is_some_and(|l| l.catalog.price(model).is_some());
        if !knows(&loaded) && self.catalog.reload_for_unknown_model().await {
            loaded = self.catalog.load();
        }
        if loaded.is_none() {
            return Err(AuthzError::Unavailable("the model catalog is not loaded yet".into()));
        }
        Ok(loaded)
    }

    fn counter_call<'a>(
        &self,
        key: &'a CompiledKey,
        input: &'a AuthorizeInput,
        price: Option<&Price>,
        now: i64,
        windows: &'a Windows,
    ) -> CounterCall<'a> {
        let cost =
            price.map_or(0, |p| cost_credits(input.estimated_tokens, p.estimate_per_mtok(), key.multiplier_micros));
        CounterCall {
            account_id: &key.account_id,
            key_id: &key.key_id,
            request_id: &input.request_id,
            request: CounterRequest {
                limits: key.limits,
                now_ms: now as f64 / 1000.0,
                tokens: input.estimated_tokens,
                cost,
            },
            windows,
            hold_ttl_ms: self.hold_ttl_ms,
        }
    }

    /// Decides on one call, taking its counters if it is allowed.
    pub async fn authorize(&self, input: &AuthorizeInput) -> Result<Decision, AuthzError> {
        let decision = self.decide(input).await?;
        self.metrics.decided(&decision);
        Ok(decision)
    }

    async fn decide(&self, input: &AuthorizeInput) -> Result<Decision, AuthzError> {
        let key = match self.key_of(&input.api_key).await? {
            Ok(key) => key,
            Err(denied) => return Ok(Decision::Deny(denied)),
        };
        let loaded = self.catalog(&input.model).await?;
        let catalog = &loaded.as_ref().expect("checked by catalog()").catalog;
        let now = self.clock.now_micros();
        // The model's price (and capability), looked up once for the rules and the counters.
        let price = catalog.price(&input.model);
        let call = Call { model: &input.model, price, capability: input.capability, client_ip: input.client_ip, now };
        if let Some((rule, message)) = policy::first_failure(&key, &call) {
            let denied = Denied { identity: Some(key.identity.clone()), ..deny(rule.reason(), message) };
            return Ok(Decision::Deny(denied));
        }
        let allowed = |headroom: Option<Headroom>, held_credits: i64| {
            Decision::Allow(Allowed { identity: key.identity.clone(), headroom, held_credits })
        };
        if key.limits.is_empty() {
            // Nothing to count: no Redis round trip at all.
            return Ok(allowed(None, 0));
        }
        let windows = self.windows(now);
        let counter_call = self.counter_call(&key, input, price, now, &windows);
        let started = std::time::Instant::now();
        let counted = self.counters.authorize(&counter_call).await;
        self.metrics.counter_step(started.elapsed().as_secs_f64());
        let outcome = match counted {
            Ok(outcome) => outcome,
            Err(error) => {
                let limits = &key.limits;
                let closed =
                    self.on_redis_error.fails_closed(limits.has_money(), limits.rpm.is_some() || limits.tpm.is_some());
                self.metrics.counters_unavailable(!closed);
                if closed {
                    return Err(AuthzError::Unavailable(format!("counters unavailable: {error}")));
                }
                static FAILED_OPEN: Throttle = Throttle::new();
                if let Some(held_back) = FAILED_OPEN.now(WARN_EVERY) {
                    tracing::warn!(%error, held_back, "counters unavailable; allowing as TOLLGATE_AUTHZ_ON_REDIS_ERROR says");
                }
                return Ok(allowed(None, 0));
            }
        };
        match outcome.first_failure() {
            None => {
                let hold = outcome.hold;
                Ok(allowed(Some(headroom(outcome, price, key.multiplier_micros, now as f64 / 1000.0)), hold))
            }
            Some(check) => {
                let retry_after_ms = match check {
                    CounterCheck::Rpm => outcome.rpm.as_ref().and_then(|r| r.retry_after_ms),
                    CounterCheck::Tpm => outcome.tpm.as_ref().and_then(|t| t.retry_after_ms),
                    _ => None,
                };
                let denied = deny(counter_reason(check), counter_message(check, &outcome));
                Ok(Decision::Deny(Denied {
                    identity: Some(key.identity.clone()),
                    headroom: Some(headroom(outcome, price, key.multiplier_micros, now as f64 / 1000.0)),
                    retry_after: retry_after_ms.map(|ms| Duration::from_micros((ms * 1000.0).max(0.0) as u64)),
                    ..denied
                }))
            }
        }
    }

    /// Evaluates every rule for a call without taking anything.
    pub async fn explain(&self, input: &AuthorizeInput) -> Result<Explanation, AuthzError> {
        let rule = |rule: Reason, passed: bool, message: String| RuleResult { rule, passed, message };
        let key = match self.key_of(&input.api_key).await? {
            Ok(key) => key,
            Err(denied) => {
                let mut rules = Vec::new();
                if denied.reason == Reason::KeyNotFound {
                    rules.push(rule(Reason::KeyMalformed, true, "the key is well-formed".into()));
                }
                rules.push(rule(denied.reason, false, denied.message.into()));
                return Ok(Explanation { rules, identity: None, headroom: None });
            }
        };
        let loaded = self.catalog(&input.model).await?;
        let catalog = &loaded.as_ref().expect("checked by catalog()").catalog;
        let now = self.clock.now_micros();
        let price = catalog.price(&input.model);
        let call = Call { model: &input.model, price, capability: input.capability, client_ip: input.client_ip, now };
        let mut rules = vec![
            rule(Reason::KeyMalformed, true, "the key is well-formed".into()),
            rule(Reason::KeyNotFound, true, "the key exists".into()),
        ];
        for static_rule in STATIC_RULES {
            let (passed, message) = policy::evaluate(static_rule, &key, &call);
            rules.push(rule(static_rule.reason(), passed, message.into()));
        }
        let windows = self.windows(now);
        let outcome = self
            .counters
            .peek(&self.counter_call(&key, input, price, now, &windows))
            .await
            .map_err(|e| AuthzError::Unavailable(format!("counters unavailable: {e}")))?;
        let money = |remaining: Option<i64>, what: &str| match remaining {
            None => format!("no {what}"),
            Some(r) if r > 0 => format!("{r} credits left of the {what}"),
            Some(_) => format!("the {what} is used up"),
        };
        let rate = |status: Option<&RateOutcome>, what: &str| match status {
            None => format!("no {what} limit"),
            Some(r) if r.passed => format!("{} of {} {what} left after this call", r.remaining, r.limit),
            Some(r) => match r.retry_after_ms {
                Some(ms) => format!("{what} used up; retry in {:.1} s", ms / 1000.0),
                None => format!("the call needs more than the {what} limit of {}", r.limit),
            },
        };
        for check in CounterCheck::ALL {
            let message = match check {
                CounterCheck::Quota => money(outcome.quota_remaining, "quota"),
                CounterCheck::AccountBalance => money(outcome.account_remaining, "account balance"),
                CounterCheck::DailyBudget => money(outcome.daily_remaining, "daily budget"),
                CounterCheck::MonthlyBudget => money(outcome.monthly_remaining, "monthly budget"),
                CounterCheck::Rpm => rate(outcome.rpm.as_ref(), "requests per minute"),
                CounterCheck::Tpm => rate(outcome.tpm.as_ref(), "tokens per minute"),
            };
            rules.push(rule(counter_reason(check), !outcome.failures.contains(&check), message));
        }
        Ok(Explanation {
            rules,
            identity: Some(key.identity.clone()),
            headroom: Some(headroom(outcome, price, key.multiplier_micros, now as f64 / 1000.0)),
        })
    }
}
