//! Key-state snapshots: what authz needs to decide on a secret, derived from the key, its
//! group, its account and the system caps. Pure functions, no I/O.

use tollgate_core::limits::{SystemCaps, effective};
use tollgate_core::resources::{AllowedModels, Model, allowed_models};
use tollgate_core::time::Micros;
use tollgate_ports::key_state::KeyStateWrite;
use tollgate_proto::keys::v1 as pb;
use tollgate_store::keys::KeyStateSource;

use crate::convert::timestamp;

/// How long a tombstone or a rotated-out secret's snapshot stays after it stopped working,
/// so authz can still say "expired" rather than "not found".
const RETAIN_AFTER_END: Micros = 7 * 24 * 3600 * 1_000_000;

/// The snapshot for one secret of a key.
pub fn key_state(source: &KeyStateSource, secret_expire_time: Option<Micros>, caps: &SystemCaps) -> pb::KeyState {
    let key = &source.key;
    let s = &key.settings;
    let (any_model, models) = match allowed_models(&s.allowed_models, &source.group.allowed_models) {
        AllowedModels::Any => (true, Vec::new()),
        AllowedModels::Only(models) => (false, models),
    };
    pb::KeyState {
        key_id: key.id.clone(),
        application_id: key.application_id.clone(),
        account_id: key.account_id.clone(),
        group_id: s.group_id.clone(),
        price_multiplier: source.group.price_multiplier.to_string(),
        enabled: s.enabled,
        deleted: source.deleted,
        expire_time: s.expire_time.map(timestamp),
        secret_expire_time: secret_expire_time.map(timestamp),
        allowed_models: models,
        any_model,
        capabilities: s.capabilities.iter().map(|c| *c as i32).collect(),
        ip_allowlist: s.ip_allowlist.clone(),
        quota: s.quota,
        daily_budget: s.daily_budget,
        monthly_budget: s.monthly_budget,
        rpm_limit: effective(s.rpm_limit, source.group.default_rpm_limit, caps.max_rpm),
        tpm_limit: effective(s.tpm_limit, source.group.default_tpm_limit, caps.max_tpm),
        account_credit_limit: source.account_credit_limit,
        version: key.revision,
    }
}

/// Cache writes for every secret of a key, with expiries for what no longer works.
pub fn key_state_writes(source: &KeyStateSource, caps: &SystemCaps, now: Micros) -> Vec<KeyStateWrite> {
    use prost::Message;
    source
        .secrets
        .iter()
        .map(|secret| {
            let ends = if source.deleted { Some(now) } else { secret.expire_time };
            KeyStateWrite {
                hash: secret.hash,
                version: source.key.revision,
                encoded: key_state(source, secret.expire_time, caps).encode_to_vec(),
                expire_at: ends.map(|t| t.max(now) + RETAIN_AFTER_END),
            }
        })
        .collect()
}

/// The catalog as authz prices it.
pub fn catalog(models: &[Model], update_time: Micros) -> pb::GetModelCatalogResponse {
    pb::GetModelCatalogResponse {
        models: models
            .iter()
            .map(|m| pb::CatalogModel {
                model_id: m.id.clone(),
                capability: m.capability as i32,
                input_price: m.input_price,
                output_price: m.output_price,
                cached_input_price: m.cached_input_price.unwrap_or(m.input_price),
            })
            .collect(),
        update_time: Some(timestamp(update_time)),
    }
}
