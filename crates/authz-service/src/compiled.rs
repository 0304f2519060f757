//! A key-state snapshot compiled for the hot path: networks parsed, capabilities as bits,
//! models in a set, limits resolved, the response identity built once.
//!
//! A field that does not read (an allowlist entry, a capability this build does not know, a
//! price multiplier, an expiry) never drops out silently — that would widen the key — but
//! marks the key [`CompiledKey::unreadable`], and every call with it is denied.

use std::collections::HashSet;
use std::sync::Arc;

use ipnet::IpNet;
use tollgate_core::capability::to_bits;
use tollgate_core::counters::CounterLimits;
use tollgate_core::money::PriceMultiplier;
use tollgate_core::time::Micros;
use tollgate_core::{Capability, ip_allowlist, names};
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::time::timestamp_micros;

use crate::decision::Identity;

/// Everything Authorize needs about one secret of a key.
#[derive(Debug, Clone)]
pub struct CompiledKey {
    pub identity: Arc<Identity>,
    pub key_id: String,
    pub account_id: String,
    pub enabled: bool,
    pub expire_at: Option<Micros>,
    /// When this (rotated-out) secret stops working.
    pub secret_expire_at: Option<Micros>,
    pub ip_allowlist: Vec<IpNet>,
    /// Allowed capabilities as bits; 0 means all.
    pub capabilities: u8,
    /// The first field of the snapshot that did not read; such a key is denied.
    pub unreadable: Option<&'static str>,
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
        let mut unreadable = None;
        let mut note = |field: &'static str| {
            unreadable.get_or_insert(field);
        };
        let capabilities: Vec<Capability> = state
            .capabilities
            .iter()
            .filter_map(|c| {
                Capability::from_number(*c).or_else(|| {
                    note("capabilities");
                    None
                })
            })
            .collect();
        let ip_allowlist: Vec<IpNet> = state
            .ip_allowlist
            .iter()
            .filter_map(|entry| {
                ip_allowlist::parse_entry(entry).or_else(|| {
                    note("ip_allowlist");
                    None
                })
            })
            .collect();
        let multiplier = PriceMultiplier::parse(&state.price_multiplier).unwrap_or_else(|_| {
            note("price_multiplier");
            PriceMultiplier::ONE
        });
        let mut time = |field: &'static str, ts: Option<&prost_types::Timestamp>| match ts {
            None => None,
            Some(ts) => timestamp_micros(ts).or_else(|| {
                note(field);
                Some(0)
            }),
        };
        let expire_at = time("expire_time", state.expire_time.as_ref());
        let secret_expire_at = time("secret_expire_time", state.secret_expire_time.as_ref());
        if let Some(field) = unreadable {
            tracing::error!(
                key = %names::key(&state.account_id, &state.key_id),
                field,
                "a key's stored state holds a value authz cannot read; every call with it is denied"
            );
        }
        Some(Self {
            identity: Arc::new(Identity {
                key: names::key(&state.account_id, &state.key_id),
                application: names::application(&state.account_id, &state.application_id),
                account: names::account(&state.account_id),
                group: names::group(&state.group_id),
                price_multiplier: multiplier.to_string(),
            }),
            key_id: state.key_id.clone(),
            account_id: state.account_id.clone(),
            enabled: state.enabled,
            expire_at,
            secret_expire_at,
            ip_allowlist,
            capabilities: to_bits(&capabilities),
            unreadable,
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

    /// Whether the key may use `capability`.
    pub fn allows_capability(&self, capability: Capability) -> bool {
        self.capabilities == 0 || self.capabilities & capability.bit() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> keys::KeyState {
        keys::KeyState {
            account_id: "acme".into(),
            key_id: "k1".into(),
            enabled: true,
            price_multiplier: "1.5".into(),
            ip_allowlist: vec!["203.0.113.0/24".into(), "2001:db8::1".into()],
            capabilities: vec![keys::Capability::Text as i32],
            ..Default::default()
        }
    }

    #[test]
    fn a_readable_snapshot_compiles_whole() {
        let key = CompiledKey::compile(&state()).expect("not deleted");
        assert_eq!(key.unreadable, None);
        assert_eq!(key.ip_allowlist.len(), 2);
        assert!(key.allows_capability(Capability::Text));
        assert!(!key.allows_capability(Capability::Image));
    }

    #[test]
    fn anything_unreadable_marks_the_key_instead_of_widening_it() {
        type Spoil = fn(&mut keys::KeyState);
        let cases: [(&str, Spoil); 5] = [
            ("ip_allowlist", |s| s.ip_allowlist = vec!["not-an-address".into()]),
            ("capabilities", |s| s.capabilities = vec![99]),
            ("price_multiplier", |s| s.price_multiplier = "lots".into()),
            ("expire_time", |s| s.expire_time = Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 })),
            ("secret_expire_time", |s| s.secret_expire_time = Some(prost_types::Timestamp { seconds: 0, nanos: -5 })),
        ];
        for (field, spoil) in cases {
            let mut state = state();
            spoil(&mut state);
            let key = CompiledKey::compile(&state).expect("not deleted");
            assert_eq!(key.unreadable, Some(field));
        }
    }
}
