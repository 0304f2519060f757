//! Domain → proto conversions, and proto time types ↔ microseconds.

use tollgate_core::limits::{Clamp, SystemCaps, effective};
use tollgate_core::money::credits_to_usd;
use tollgate_core::names;
use tollgate_core::resources::{Account, Application, Group, Key, KeyStatus, Model};
use tollgate_core::time::Micros;
use tollgate_proto::keys::v1 as pb;

pub use tollgate_proto::time::{duration_micros, timestamp, timestamp_micros};

/// A proto status of a domain status.
pub fn status(status: KeyStatus) -> pb::KeyStatus {
    match status {
        KeyStatus::Enabled => pb::KeyStatus::Enabled,
        KeyStatus::Disabled => pb::KeyStatus::Disabled,
        KeyStatus::Expired => pb::KeyStatus::Expired,
        KeyStatus::Exhausted => pb::KeyStatus::Exhausted,
    }
}

pub fn account(account: &Account) -> pb::Account {
    pb::Account {
        name: names::account(&account.id),
        display_name: account.display_name.clone(),
        credit_limit: account.credit_limit,
        unlimited_credit: account.unlimited_credit,
        create_time: Some(timestamp(account.create_time)),
        update_time: Some(timestamp(account.update_time)),
    }
}

pub fn application(application: &Application) -> pb::Application {
    pb::Application {
        name: names::application(&application.account_id, &application.id),
        display_name: application.display_name.clone(),
        description: application.description.clone(),
        create_time: Some(timestamp(application.create_time)),
        update_time: Some(timestamp(application.update_time)),
    }
}

pub fn group(group: &Group, caps: &SystemCaps) -> pb::Group {
    pb::Group {
        name: names::group(&group.id),
        display_name: group.display_name.clone(),
        price_multiplier: group.price_multiplier.to_string(),
        allowed_models: group.allowed_models.clone(),
        default_rpm_limit: group.default_rpm_limit,
        default_tpm_limit: group.default_tpm_limit,
        effective_default_rpm_limit: effective(group.default_rpm_limit, None, caps.max_rpm),
        effective_default_tpm_limit: effective(group.default_tpm_limit, None, caps.max_tpm),
        create_time: Some(timestamp(group.create_time)),
        update_time: Some(timestamp(group.update_time)),
    }
}

pub fn model(model: &Model, credits_per_usd: i64) -> pb::Model {
    pb::Model {
        name: names::model(&model.id),
        display_name: model.display_name.clone(),
        capability: model.capability as i32,
        input_price: model.input_price,
        output_price: model.output_price,
        cached_input_price: model.cached_input_price,
        input_price_usd: credits_to_usd(model.input_price, credits_per_usd),
        output_price_usd: credits_to_usd(model.output_price, credits_per_usd),
        create_time: Some(timestamp(model.create_time)),
        update_time: Some(timestamp(model.update_time)),
    }
}

/// A key as its owner sees it; `group` supplies the defaults behind the effective limits,
/// `used` is its spend (an enabled key whose spend reached its quota is exhausted).
pub fn key(key: &Key, group: &Group, used: i64, caps: &SystemCaps, now: Micros) -> pb::Key {
    let s = &key.settings;
    pb::Key {
        name: names::key(&key.account_id, &key.id),
        application: names::application(&key.account_id, &key.application_id),
        display_name: s.display_name.clone(),
        group: names::group(&s.group_id),
        expire_time: s.expire_time.map(timestamp),
        quota: s.quota,
        daily_budget: s.daily_budget,
        monthly_budget: s.monthly_budget,
        rpm_limit: s.rpm_limit,
        tpm_limit: s.tpm_limit,
        allowed_models: s.allowed_models.clone(),
        capabilities: s.capabilities.iter().map(|c| *c as i32).collect(),
        ip_allowlist: s.ip_allowlist.clone(),
        enabled: Some(s.enabled),
        status: status(s.status(now, used)) as i32,
        hint: key.hint.clone(),
        effective_rpm_limit: effective(s.rpm_limit, group.default_rpm_limit, caps.max_rpm),
        effective_tpm_limit: effective(s.tpm_limit, group.default_tpm_limit, caps.max_tpm),
        previous_secret_expire_time: key.previous_secret_expire_time.filter(|t| *t > now).map(timestamp),
        create_time: Some(timestamp(key.create_time)),
        update_time: Some(timestamp(key.update_time)),
        credits_used: used,
        quota_remaining: s.quota.map(|quota| (quota - used).max(0)),
    }
}

pub fn clamps(clamps: &[Clamp]) -> Vec<pb::LimitClamp> {
    clamps
        .iter()
        .map(|c| pb::LimitClamp { field: c.field.to_owned(), requested: c.requested, applied: c.applied })
        .collect()
}
