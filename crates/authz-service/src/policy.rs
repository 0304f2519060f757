//! The static checks of Authorize (disabled, expired, IP, capability, model), in order, as
//! pure functions of the compiled key and the call. Messages are static: the hot path
//! allocates nothing here.

use std::net::IpAddr;

use tollgate_core::Capability;
use tollgate_core::ip_allowlist;
use tollgate_core::time::Micros;

use crate::compiled::CompiledKey;
use crate::decision::Reason;
use tollgate_keys_client::catalog::Price;

/// A check of the key and the call alone, before any counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticRule {
    KeyDisabled,
    KeyExpired,
    IpNotAllowed,
    CapabilityNotAllowed,
    ModelNotAllowed,
}

impl StaticRule {
    /// The reason a call failing the rule is denied with.
    pub fn reason(self) -> Reason {
        match self {
            StaticRule::KeyDisabled => Reason::KeyDisabled,
            StaticRule::KeyExpired => Reason::KeyExpired,
            StaticRule::IpNotAllowed => Reason::IpNotAllowed,
            StaticRule::CapabilityNotAllowed => Reason::CapabilityNotAllowed,
            StaticRule::ModelNotAllowed => Reason::ModelNotAllowed,
        }
    }
}

/// The static checks, in the order Authorize runs them.
pub const STATIC_RULES: [StaticRule; 5] = [
    StaticRule::KeyDisabled,
    StaticRule::KeyExpired,
    StaticRule::IpNotAllowed,
    StaticRule::CapabilityNotAllowed,
    StaticRule::ModelNotAllowed,
];

/// The call as the static checks see it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub model: &'a str,
    /// The model's catalog entry; `None` when the catalog does not have it.
    pub price: Option<&'a Price>,
    pub capability: Capability,
    pub client_ip: Option<IpAddr>,
    pub now: Micros,
}

/// Evaluates one static rule: whether the call passes it, and why.
pub fn evaluate(rule: StaticRule, key: &CompiledKey, call: &Call<'_>) -> (bool, &'static str) {
    match rule {
        StaticRule::KeyDisabled if key.unreadable.is_some() => {
            (false, "the key's stored settings cannot be read, so it is refused until they are saved again")
        }
        StaticRule::KeyDisabled if key.enabled => (true, "the key is enabled"),
        StaticRule::KeyDisabled => (false, "the key is disabled"),
        StaticRule::KeyExpired if key.expire_at.is_some_and(|at| at <= call.now) => (false, "the key has expired"),
        StaticRule::KeyExpired if key.secret_expire_at.is_some_and(|at| at <= call.now) => {
            (false, "this secret was rotated out and its grace period has ended")
        }
        StaticRule::KeyExpired => (true, "the key has not expired"),
        StaticRule::IpNotAllowed if key.ip_allowlist.is_empty() => (true, "the key allows any client address"),
        StaticRule::IpNotAllowed if ip_allowlist::allows(&key.ip_allowlist, call.client_ip) => {
            (true, "the client address is in the key's allowlist")
        }
        StaticRule::IpNotAllowed if call.client_ip.is_none() => {
            (false, "the key has an IP allowlist and the call gave no client address")
        }
        StaticRule::IpNotAllowed => (false, "the client address is outside the key's allowlist"),
        StaticRule::CapabilityNotAllowed if !key.allows_capability(call.capability) => {
            (false, "the key may not use this capability")
        }
        // The caller names the capability; the catalog says what the model does. Both must be
        // allowed, or a text-only key could call an image model by claiming text.
        StaticRule::CapabilityNotAllowed
            if call.price.is_some_and(|price| !key.allows_capability(price.capability)) =>
        {
            (false, "the key may not use the capability of this model")
        }
        StaticRule::CapabilityNotAllowed => (true, "the key may use this capability"),
        StaticRule::ModelNotAllowed if call.price.is_none() => (false, "the model is not in the catalog"),
        StaticRule::ModelNotAllowed if key.models.as_ref().is_none_or(|models| models.contains(call.model)) => {
            (true, "the key may call this model")
        }
        StaticRule::ModelNotAllowed => (false, "the key or its group may not call this model"),
    }
}

/// The first static rule the call fails.
pub fn first_failure(key: &CompiledKey, call: &Call<'_>) -> Option<(StaticRule, &'static str)> {
    STATIC_RULES.into_iter().find_map(|rule| match evaluate(rule, key, call) {
        (false, message) => Some((rule, message)),
        (true, _) => None,
    })
}

#[cfg(test)]
mod tests {
    use tollgate_proto::keys::v1 as keys;

    use super::*;
    use tollgate_keys_client::catalog::Catalog;

    fn catalog() -> Catalog {
        let model = |id: &str, capability: keys::Capability| keys::CatalogModel {
            model_id: id.into(),
            capability: capability as i32,
            ..Default::default()
        };
        Catalog::from_proto(&keys::GetModelCatalogResponse {
            models: vec![model("chat", keys::Capability::Text), model("draw", keys::Capability::Image)],
            ..Default::default()
        })
    }

    fn key(edit: impl FnOnce(&mut keys::KeyState)) -> CompiledKey {
        let mut state = keys::KeyState {
            enabled: true,
            any_model: true,
            price_multiplier: "1".into(),
            capabilities: vec![keys::Capability::Text as i32],
            ..Default::default()
        };
        edit(&mut state);
        CompiledKey::compile(&state).expect("not deleted")
    }

    fn call<'a>(catalog: &'a Catalog, model: &'a str) -> Call<'a> {
        Call { model, price: catalog.price(model), capability: Capability::Text, client_ip: None, now: 0 }
    }

    #[test]
    fn a_model_of_another_capability_is_refused_whatever_the_call_claims() {
        let catalog = catalog();
        let text_only = key(|_| {});
        assert_eq!(first_failure(&text_only, &call(&catalog, "chat")), None);
        let denied = first_failure(&text_only, &call(&catalog, "draw")).map(|(rule, _)| rule);
        assert_eq!(denied, Some(StaticRule::CapabilityNotAllowed));
        let anything = key(|s| s.capabilities.clear());
        assert_eq!(first_failure(&anything, &call(&catalog, "draw")), None);
    }

    #[test]
    fn a_key_with_unreadable_settings_is_refused_first() {
        let catalog = catalog();
        let unreadable = key(|s| s.ip_allowlist = vec!["10.0.0.0/99".into()]);
        let denied = first_failure(&unreadable, &call(&catalog, "chat")).map(|(rule, _)| rule);
        assert_eq!(denied, Some(StaticRule::KeyDisabled));
    }
}
