//! The domain's decisions as authz.v1 protos.

use tollgate_proto::authz::v1 as pb;
use tollgate_proto::time::{duration, timestamp};

use crate::decision::{Decision, Explanation, Headroom, Identity, RateStatus, Reason};

pub fn reason(reason: Reason) -> pb::DenyReason {
    match reason {
        Reason::KeyMalformed => pb::DenyReason::KeyMalformed,
        Reason::KeyNotFound => pb::DenyReason::KeyNotFound,
        Reason::KeyDisabled => pb::DenyReason::KeyDisabled,
        Reason::KeyExpired => pb::DenyReason::KeyExpired,
        Reason::IpNotAllowed => pb::DenyReason::IpNotAllowed,
        Reason::CapabilityNotAllowed => pb::DenyReason::CapabilityNotAllowed,
        Reason::ModelNotAllowed => pb::DenyReason::ModelNotAllowed,
        Reason::QuotaExhausted => pb::DenyReason::QuotaExhausted,
        Reason::AccountBalanceExhausted => pb::DenyReason::AccountBalanceExhausted,
        Reason::DailyBudgetExhausted => pb::DenyReason::DailyBudgetExhausted,
        Reason::MonthlyBudgetExhausted => pb::DenyReason::MonthlyBudgetExhausted,
        Reason::RpmLimited => pb::DenyReason::RpmLimited,
        Reason::TpmLimited => pb::DenyReason::TpmLimited,
    }
}

fn identity(identity: &Identity) -> pb::KeyIdentity {
    pb::KeyIdentity {
        key: identity.key.clone(),
        application: identity.application.clone(),
        account: identity.account.clone(),
        group: identity.group.clone(),
        price_multiplier: identity.price_multiplier.clone(),
    }
}

fn rate(rate: &RateStatus) -> pb::RateLimitStatus {
    pb::RateLimitStatus {
        limit: rate.limit,
        remaining: rate.remaining,
        reset_time: Some(timestamp((rate.reset_at_ms * 1000.0) as i64)),
    }
}

fn headroom(headroom: &Headroom) -> pb::Headroom {
    pb::Headroom {
        rpm: headroom.rpm.as_ref().map(rate),
        tpm: headroom.tpm.as_ref().map(rate),
        quota_remaining: headroom.quota_remaining,
        daily_budget_remaining: headroom.daily_remaining,
        monthly_budget_remaining: headroom.monthly_remaining,
        account_remaining: headroom.account_remaining,
        max_tokens: headroom.max_tokens,
    }
}

pub fn decision(decision: &Decision) -> pb::AuthorizeResponse {
    match decision {
        Decision::Allow(allowed) => pb::AuthorizeResponse {
            decision: pb::Decision::Allow as i32,
            reason: pb::DenyReason::Unspecified as i32,
            message: String::new(),
            identity: Some(identity(&allowed.identity)),
            headroom: allowed.headroom.as_ref().map(headroom),
            retry_after: None,
            held_credits: allowed.held_credits,
        },
        Decision::Deny(denied) => pb::AuthorizeResponse {
            decision: pb::Decision::Deny as i32,
            reason: reason(denied.reason) as i32,
            message: denied.message.to_owned(),
            identity: denied.identity.as_deref().map(identity),
            headroom: denied.headroom.as_ref().map(headroom),
            retry_after: denied.retry_after.map(|after| duration(after.as_micros() as i64)),
            held_credits: 0,
        },
    }
}

pub fn explanation(explanation: &Explanation) -> pb::ExplainAuthorizeResponse {
    let first_failure = explanation.reason();
    pb::ExplainAuthorizeResponse {
        decision: if first_failure.is_some() { pb::Decision::Deny } else { pb::Decision::Allow } as i32,
        reason: first_failure.map_or(pb::DenyReason::Unspecified, reason) as i32,
        rules: explanation
            .rules
            .iter()
            .map(|r| pb::RuleResult { rule: reason(r.rule) as i32, passed: r.passed, message: r.message.clone() })
            .collect(),
        identity: explanation.identity.as_deref().map(identity),
        headroom: explanation.headroom.as_ref().map(headroom),
    }
}
