//! Domain answers as metering.v1 protos.

use tollgate_core::names;
use tollgate_ports::usage_queue::DeadLetter;
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::metering::v1 as pb;
use tollgate_proto::time::timestamp;
use tollgate_store::metering::{CreditGrant, Totals, UsageEntry};

use crate::payload;
use crate::queries::{AccountBalance, KeyBalance, KeyStatus, Summary};
use crate::series::Bucket;

pub fn totals(t: &Totals) -> pb::UsageTotals {
    pb::UsageTotals {
        requests: t.requests,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        cached_input_tokens: t.cached_input_tokens,
        credits: t.credits,
    }
}

pub fn bucket(bucket: Bucket) -> pb::UsageBucket {
    pb::UsageBucket {
        start_time: Some(timestamp(bucket.start)),
        model: bucket.model,
        totals: Some(totals(&bucket.totals)),
    }
}

pub fn summary(summary: Summary) -> pb::GetUsageSummaryResponse {
    pb::GetUsageSummaryResponse {
        totals: Some(totals(&summary.totals)),
        buckets: summary.buckets.into_iter().map(bucket).collect(),
    }
}

pub fn record(e: UsageEntry) -> pb::UsageRecord {
    pb::UsageRecord {
        time: Some(timestamp(e.end_time)),
        key: names::key(&e.account_id, &e.key_id),
        application: names::application(&e.account_id, &e.application_id),
        model: e.model,
        input_tokens: e.input_tokens,
        output_tokens: e.output_tokens,
        cached_input_tokens: e.cached_input_tokens,
        credits: e.credits,
        outcome: payload::outcome_proto(e.outcome) as i32,
        request_id: e.request_id,
    }
}

pub fn account_balance(b: AccountBalance) -> pb::AccountBalance {
    pb::AccountBalance {
        account: names::account(&b.account_id),
        balance: b.balance.balance(),
        credits_added: b.balance.credits_added,
        credits_spent: b.balance.credits_spent,
        credit_limit: b.credit_limit,
    }
}

pub fn credit_grant(g: CreditGrant) -> pb::CreditGrant {
    pb::CreditGrant {
        account: names::account(&g.account_id),
        request_id: g.request_id,
        credits: g.credits,
        reason: g.reason,
        actor: g.actor,
        time: Some(timestamp(g.time)),
    }
}

pub fn dead_letter(letter: DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        // As queued: a report that does not decode is shown without it.
        report: prost::Message::decode(letter.payload.as_slice()).ok(),
        id: letter.id,
        reason: letter.reason,
        attempts: letter.attempts as i32,
        time: Some(timestamp(letter.time)),
    }
}

pub fn key_balance(b: KeyBalance) -> pb::GetKeyBalanceResponse {
    let left = |limit: Option<i64>, used: i64| limit.map(|l| (l - used).max(0));
    let status = match b.status {
        KeyStatus::Enabled => keys::KeyStatus::Enabled,
        KeyStatus::Disabled => keys::KeyStatus::Disabled,
        KeyStatus::Expired => keys::KeyStatus::Expired,
        KeyStatus::Exhausted => keys::KeyStatus::Exhausted,
    };
    pb::GetKeyBalanceResponse {
        key: names::key(&b.account_id, &b.key_id),
        status: status as i32,
        expire_time: b.expire_time.map(timestamp),
        quota: b.quota,
        quota_used: b.spend.used,
        quota_remaining: left(b.quota, b.spend.used),
        daily_budget: b.daily_budget,
        daily_used: b.spend.day,
        daily_remaining: left(b.daily_budget, b.spend.day),
        monthly_budget: b.monthly_budget,
        monthly_used: b.spend.month,
        monthly_remaining: left(b.monthly_budget, b.spend.month),
        daily: b.daily.into_iter().map(bucket).collect(),
        account_funds: b.account.map(|funds| pb::AccountFunds { balance: funds.balance, spendable: funds.spendable }),
    }
}
