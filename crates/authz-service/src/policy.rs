//! The static checks of Authorize (disabled, expired, IP, capability, model), in order, as
//! pure functions of the compiled key and the call. Messages are static: the hot path
//! allocates nothing here.

use std::net::IpAddr;

use tollgate_core::Capability;
use tollgate_core::ip_allowlist;
use tollgate_core::time::Micros;
use tollgate_proto::authz::v1::DenyReason;

use crate::catalog::Catalog;
use crate::compiled::CompiledKey;

/// The static checks, in the order Authorize runs them.
pub const STATIC_RULES: [DenyReason; 5] = [
    DenyReason::KeyDisabled,
    DenyReason::KeyExpired,
    DenyReason::IpNotAllowed,
    DenyReason::CapabilityNotAllowed,
    DenyReason::ModelNotAllowed,
];

/// The call as the static checks see it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub model: &'a str,
    pub capability: Capability,
    pub client_ip: Option<IpAddr>,
    pub now: Micros,
}

/// Evaluates one static rule: whether the call passes it, and why.
pub fn evaluate(rule: DenyReason, key: &CompiledKey, call: &Call<'_>, catalog: &Catalog) -> (bool, &'static str) {
    match rule {
        DenyReason::KeyDisabled if key.enabled => (true, "the key is enabled"),
        DenyReason::KeyDisabled => (false, "the key is disabled"),
        DenyReason::KeyExpired if key.expire_at.is_some_and(|at| at <= call.now) => (false, "the key has expired"),
        DenyReason::KeyExpired if key.secret_expire_at.is_some_and(|at| at <= call.now) => {
            (false, "this secret was rotated out and its grace period has ended")
        }
        DenyReason::KeyExpired => (true, "the key has not expired"),
        DenyReason::IpNotAllowed if key.ip_allowlist.is_empty() => (true, "the key allows any client address"),
        DenyReason::IpNotAllowed if ip_allowlist::allows(&key.ip_allowlist, call.client_ip) => {
            (true, "the client address is in the key's allowlist")
        }
        DenyReason::IpNotAllowed if call.client_ip.is_none() => {
            (false, "the key has an IP allowlist and the call gave no client address")
        }
        DenyReason::IpNotAllowed => (false, "the client address is outside the key's allowlist"),
        DenyReason::CapabilityNotAllowed if key.capabilities == 0 || key.capabilities & call.capability.bit() != 0 => {
            (true, "the key may use this capability")
        }
        DenyReason::CapabilityNotAllowed => (false, "the key may not use this capability"),
        DenyReason::ModelNotAllowed if catalog.price(call.model).is_none() => {
            (false, "the model is not in the catalog")
        }
        DenyReason::ModelNotAllowed if key.models.as_ref().is_none_or(|models| models.contains(call.model)) => {
            (true, "the key may call this model")
        }
        DenyReason::ModelNotAllowed => (false, "the key or its group may not call this model"),
        _ => (true, "not a static rule"),
    }
}

/// The first static rule the call fails.
pub fn first_failure(key: &CompiledKey, call: &Call<'_>, catalog: &Catalog) -> Option<(DenyReason, &'static str)> {
    STATIC_RULES.into_iter().find_map(|rule| match evaluate(rule, key, call, catalog) {
        (false, message) => Some((rule, message)),
        (true, _) => None,
    })
}
