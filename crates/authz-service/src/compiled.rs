//! A key-state snapshot compiled for the hot path: networks parsed, capabilities as bits,
//! models in a set, limits resolved, the response identity built once.

use std::collections::HashSet;

use ipnet::IpNet;
use tollgate_core::capability::to_bits;
use tollgate_core::counters::CounterLimits;
use tollgate_core::money::PriceMultiplier;
use tollgate_core::time::Micros;
use tollgate_core::{Capability, names};
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::time::timestamp_micros;

/// Everything Authorize needs about one secret of a key.
#[derive(Debug, Clone)]
pub struct CompiledKey {
    pub identity: authz::KeyIdentity,
    pub key_id: String,
    pub account_id: String,
    pub enabled: bool,
    pub expire_at: Option<Micros>,
    /// When this (rotated-out) secret stops working.
    pub secret_expire_at: Option<Micros>,
    pub ip_allowlist: Vec<IpNet>,
    /// Allowed capabilities as bits; 0 means all.
    pub capabilities: u8,
    /// `None`: any catalog model.
    pub models: Option<HashSet<String>>,
    pub limits: CounterLimits,
    pub multiplier_micros: i64,
}

impl CompiledKey {
    /// Compiles a snapshot; `None` for a deleted key (which is then unknown).
    pub fn compile(state: &keys::KeyState) -> Option<Self> {
        if state.deleted {
            return None;
        }
        let capabilities: Vec<Capability> =
            state.capabilities.iter().filter_map(|c| Capability::from_number(*c)).collect();
        let multiplier = PriceMultiplier::parse(&state.price_multiplier).unwrap_or(PriceMultiplier::ONE);
        Some(Self {
            identity: authz::KeyIdentity {
                key: names::key(&state.account_id, &state.key_id),
                application: names::application(&state.account_id, &state.application_id),
                account: names::account(&state.account_id),
                group: names::group(&state.group_id),
                price_multiplier: multiplier.to_string(),
            },
            key_id: state.key_id.clone(),
            account_id: state.account_id.clone(),
            enabled: state.enabled,
            expire_at: state.expire_time.as_ref().and_then(timestamp_micros),
            secret_expire_at: state.secret_expire_time.as_ref().and_then(timestamp_micros),
            // Entries were checked when stored; anything unreadable simply matches nothing.
            ip_allowlist: state.ip_allowlist.iter().filter_map(|e| e.parse().ok()).collect(),
            capabilities: to_bits(&capabilities),
            models: (!state.any_model).then(|| state.allowed_models.iter().cloned().collect()),
            limits: CounterLimits {
                quota: state.quota,
                // The account bounds only keys without a quota of their own.
                account_floor: if state.quota.is_none() { state.account_credit_limit } else { None },
                daily: state.daily_budget,
                monthly: state.monthly_budget,
                rpm: state.rpm_limit,
                tpm: state.tpm_limit,
            },
            multiplier_micros: multiplier.micros(),
        })
    }
}
