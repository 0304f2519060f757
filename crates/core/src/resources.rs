//! The resources the keys service manages, as plain data shared by its stores and handlers.

use crate::capability::Capability;
use crate::money::PriceMultiplier;
use crate::time::Micros;

/// A platform user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    /// Increases with every change; updates compare it to detect a concurrent change.
    pub revision: i64,
    pub display_name: String,
    /// How far below zero the balance may go; ignored when `unlimited_credit`.
    pub credit_limit: i64,
    pub unlimited_credit: bool,
    pub create_time: Micros,
    pub update_time: Micros,
}

impl Account {
    /// The credit limit as key state carries it: `None` for postpaid accounts.
    pub fn effective_credit_limit(&self) -> Option<i64> {
        (!self.unlimited_credit).then_some(self.credit_limit)
    }
}

/// A product of an account; keys are issued to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub id: String,
    /// Increases with every change; updates compare it to detect a concurrent change.
    pub revision: i64,
    pub account_id: String,
    pub display_name: String,
    pub description: String,
    pub create_time: Micros,
    pub update_time: Micros,
}

/// A pricing tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    /// Increases with every change; updates compare it to detect a concurrent change.
    pub revision: i64,
    pub display_name: String,
    pub price_multiplier: PriceMultiplier,
    /// Empty means every catalog model.
    pub allowed_models: Vec<String>,
    pub default_rpm_limit: Option<i64>,
    pub default_tpm_limit: Option<i64>,
    pub create_time: Micros,
    pub update_time: Micros,
}

/// A catalog entry; prices are credits per million tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub id: String,
    /// Increases with every change; updates compare it to detect a concurrent change.
    pub revision: i64,
    pub display_name: String,
    pub capability: Capability,
    pub input_price: i64,
    pub output_price: i64,
    pub cached_input_price: Option<i64>,
    pub create_time: Micros,
    pub update_time: Micros,
}

/// Everything an owner can set on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    pub display_name: String,
    pub group_id: String,
    pub expire_time: Option<Micros>,
    pub quota: Option<i64>,
    pub daily_budget: Option<i64>,
    pub monthly_budget: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    /// Empty means every model the group allows.
    pub allowed_models: Vec<String>,
    /// Empty means every capability.
    pub capabilities: Vec<Capability>,
    /// Canonical CIDR strings; empty means any address.
    pub ip_allowlist: Vec<String>,
    pub enabled: bool,
}

/// A key as stored: its settings and what the server derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    /// Increases with every change of the key or of what its state derives from (its group,
    /// its account); key-state snapshots carry it as their version.
    pub revision: i64,
    pub account_id: String,
    pub application_id: String,
    pub settings: KeySettings,
    /// Masked secret, `sk-AbCd…WxYz`.
    pub hint: String,
    /// When a rotated-out secret stops working, while it still does.
    pub previous_secret_expire_time: Option<Micros>,
    pub create_time: Micros,
    pub update_time: Micros,
}

/// A key's status as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    Enabled,
    Disabled,
    Expired,
    Exhausted,
}

impl KeyStatus {
    /// The stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Enabled => "enabled",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Expired => "expired",
            KeyStatus::Exhausted => "exhausted",
        }
    }
}

impl KeySettings {
    /// Whether the key is past its expiry at `now` (expiry is exclusive: at the instant itself
    /// the key is expired).
    pub fn is_expired(&self, now: Micros) -> bool {
        self.expire_time.is_some_and(|t| t <= now)
    }

    /// Status at `now` after spending `used` credits, in the order Authorize checks:
    /// disabled, expired, then exhausted (its quota reached).
    pub fn status(&self, now: Micros, used: i64) -> KeyStatus {
        if !self.enabled {
            KeyStatus::Disabled
        } else if self.is_expired(now) {
            KeyStatus::Expired
        } else if self.quota.is_some_and(|quota| used >= quota) {
            KeyStatus::Exhausted
        } else {
            KeyStatus::Enabled
        }
    }
}

/// Which models a key may call once its own list and its group's are combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedModels {
    /// Every model in the catalog.
    Any,
    /// Only these (possibly none).
    Only(Vec<String>),
}

/// Combines a key's list with its group's: an empty list means "no restriction at this
/// level"; two lists intersect, which may leave nothing allowed.
pub fn allowed_models(key: &[String], group: &[String]) -> AllowedModels {
    match (key.is_empty(), group.is_empty()) {
        (true, true) => AllowedModels::Any,
        (false, true) => AllowedModels::Only(key.to_vec()),
        (true, false) => AllowedModels::Only(group.to_vec()),
        (false, false) => AllowedModels::Only(key.iter().filter(|m| group.contains(m)).cloned().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn model_lists_intersect() {
        assert_eq!(allowed_models(&[], &[]), AllowedModels::Any);
        assert_eq!(allowed_models(&strings(&["a"]), &[]), AllowedModels::Only(strings(&["a"])));
        assert_eq!(allowed_models(&[], &strings(&["b"])), AllowedModels::Only(strings(&["b"])));
        assert_eq!(allowed_models(&strings(&["a", "b"]), &strings(&["b", "c"])), AllowedModels::Only(strings(&["b"])));
        assert_eq!(allowed_models(&strings(&["a"]), &strings(&["c"])), AllowedModels::Only(vec![]));
    }

    #[test]
    fn status_order_and_expiry_boundary() {
        let mut settings = KeySettings {
            display_name: "k".into(),
            group_id: "g".into(),
            expire_time: Some(100),
            quota: None,
            daily_budget: None,
            monthly_budget: None,
            rpm_limit: None,
            tpm_limit: None,
            allowed_models: vec![],
            capabilities: vec![],
            ip_allowlist: vec![],
            enabled: true,
        };
        assert_eq!(settings.status(99, 0), KeyStatus::Enabled);
        assert_eq!(settings.status(100, 0), KeyStatus::Expired);
        settings.enabled = false;
        assert_eq!(settings.status(100, 0), KeyStatus::Disabled);
    }
}
