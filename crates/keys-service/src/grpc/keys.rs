use prost::Message;
use sha2::{Digest, Sha256};
use tollgate_core::Violations;
use tollgate_core::resources::{KeySettings, KeyStatus};
use tollgate_core::time::Micros;
use tollgate_proto::keys::v1 as pb;
use tollgate_store::keys::KeyFilter;
use tonic::{Request, Response, Status};

use super::{KeysGrpc, actor, check, next_token};
use crate::convert;
use crate::error::KeysError;
use crate::service::{CreatedKeys, KeyDraft, KeyPatch, KeyView};
use crate::validate;

const MASK: &[&str] = &[
    "display_name",
    "group",
    "expire_time",
    "quota",
    "daily_budget",
    "monthly_budget",
    "rpm_limit",
    "tpm_limit",
    "allowed_models",
    "capabilities",
    "ip_allowlist",
    "enabled",
];

/// Largest BatchCreateKeys.
const MAX_QUANTITY: i32 = 100;

/// Checks a key's settings under `prefix` (`key`, `initial_key.key`). The application is
/// taken as given; the caller resolves it against the parent account.
pub(super) fn key_draft(
    v: &mut Violations,
    prefix: &str,
    key: &pb::Key,
    expire_after: Option<&prost_types::Duration>,
    now: Micros,
) -> KeyDraft {
    let field = |name: &str| format!("{prefix}.{name}");
    let group_id = if key.group.is_empty() {
        v.add(field("group"), "is required");
        String::new()
    } else {
        validate::group_name(v, &field("group"), &key.group)
    };
    let settings = KeySettings {
        display_name: validate::display_name(v, &field("display_name"), &key.display_name),
        group_id,
        expire_time: validate::expiry(
            v,
            (&field("expire_time"), key.expire_time.as_ref()),
            ("expire_after", expire_after),
            now,
        ),
        quota: validate::optional_credits(v, &field("quota"), key.quota),
        daily_budget: validate::optional_credits(v, &field("daily_budget"), key.daily_budget),
        monthly_budget: validate::optional_credits(v, &field("monthly_budget"), key.monthly_budget),
        rpm_limit: validate::optional_rate(v, &field("rpm_limit"), key.rpm_limit),
        tpm_limit: validate::optional_rate(v, &field("tpm_limit"), key.tpm_limit),
        allowed_models: validate::model_ids(v, &field("allowed_models"), &key.allowed_models),
        capabilities: validate::capabilities(v, &field("capabilities"), &key.capabilities),
        ip_allowlist: validate::ip_allowlist(v, &field("ip_allowlist"), &key.ip_allowlist),
        enabled: key.enabled.unwrap_or(true),
    };
    KeyDraft { application_id: String::new(), settings }
}

/// The application id of `key.application`, which must belong to `account_id`.
fn application_of(v: &mut Violations, key: &pb::Key, account_id: &str) -> Result<String, KeysError> {
    if key.application.is_empty() {
        v.add("key.application", "is required");
        return Ok(String::new());
    }
    let (owner, application_id) = validate::child_name(v, "key.application", &key.application, "applications");
    if !owner.is_empty() && !account_id.is_empty() && owner != account_id {
        // Another account's application is as invisible as a missing one.
        return Err(KeysError::NotFound("application"));
    }
    Ok(application_id)
}

/// Identifies a create request's settings, so a reused request id with other settings is
/// caught. The request id itself is left out.
fn fingerprint(rpc: &str, message: &impl Message) -> String {
    let mut hasher = Sha256::new();
    hasher.update(rpc.as_bytes());
    hasher.update(message.encode_to_vec());
    hex::encode(hasher.finalize())
}

impl KeysGrpc {
    fn key_proto(&self, view: &KeyView, now: Micros) -> pb::Key {
        convert::key(&view.key, &view.group, view.used, &self.service.config().caps, now)
    }

    fn created_protos(&self, created: &CreatedKeys, now: Micros) -> Vec<pb::CreatedKey> {
        created
            .keys
            .iter()
            .map(|(view, secret)| pb::CreatedKey {
                key: Some(self.key_proto(view, now)),
                secret: secret.expose().to_owned(),
            })
            .collect()
    }

    /// Shared by CreateKey and BatchCreateKeys.
    async fn create(
        &self,
        actor: crate::service::Actor,
        rpc: &str,
        (parent, key, expire_after, quantity, request_id): (&str, pb::Key, Option<prost_types::Duration>, i32, &str),
        fingerprint_of: String,
    ) -> Result<CreatedKeys, KeysError> {
        let mut v = Violations::new();
        let account_id = validate::account_name(&mut v, "parent", parent);
        let now = self.service.now();
        let application_id = application_of(&mut v, &key, &account_id)?;
        let mut draft = key_draft(&mut v, "key", &key, expire_after.as_ref(), now);
        draft.application_id = application_id;
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            v.add("quantity", format!("must be 1 to {MAX_QUANTITY}"));
        }
        let request_id = validate::request_id(&mut v, "request_id", request_id);
        check(v)?;
        let idempotency = request_id.as_deref().map(|id| (id, fingerprint_of.as_str()));
        self.service.create_keys(&actor, &account_id, &draft, quantity as usize, idempotency, rpc).await
    }
}

#[tonic::async_trait]
impl pb::key_service_server::KeyService for KeysGrpc {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let fingerprint = fingerprint("CreateKey", &pb::CreateKeyRequest { request_id: String::new(), ..req.clone() });
        let key = req.key.unwrap_or_default();
        let created = self
            .create(actor, "CreateKey", (&req.parent, key, req.expire_after, 1, &req.request_id), fingerprint)
            .await?;
        let now = self.service.now();
        Ok(Response::new(pb::CreateKeyResponse {
            created: self.created_protos(&created, now).pop(),
            clamped: convert::clamps(&created.clamps),
        }))
    }

    async fn batch_create_keys(
        &self,
        request: Request<pb::BatchCreateKeysRequest>,
    ) -> Result<Response<pb::BatchCreateKeysResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let fingerprint =
            fingerprint("BatchCreateKeys", &pb::BatchCreateKeysRequest { request_id: String::new(), ..req.clone() });
        let key = req.key.unwrap_or_default();
        let created = self
            .create(
                actor,
                "BatchCreateKeys",
                (&req.parent, key, req.expire_after, req.quantity, &req.request_id),
                fingerprint,
            )
            .await?;
        Ok(Response::new(pb::BatchCreateKeysResponse {
            created: self.created_protos(&created, self.service.now()),
            clamped: convert::clamps(&created.clamps),
        }))
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> Result<Response<pb::GetKeyResponse>, Status> {
        let mut v = Violations::new();
        let (account_id, key_id) = validate::child_name(&mut v, "name", &request.get_ref().name, "keys");
        check(v)?;
        let view = self.service.get_key(&account_id, &key_id).await?;
        Ok(Response::new(pb::GetKeyResponse { key: Some(self.key_proto(&view, self.service.now())) }))
    }

    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let account_id = validate::account_name(&mut v, "parent", &req.parent);
        let page = validate::page(&mut v, req.page_size, &req.page_token, "keys");
        let mut filter = KeyFilter::default();
        if !req.application.is_empty() {
            let (owner, application_id) = validate::child_name(&mut v, "application", &req.application, "applications");
            if !owner.is_empty() && !account_id.is_empty() && owner != account_id {
                return Err(KeysError::NotFound("application").into());
            }
            filter.application_id = Some(application_id);
        }
        if !req.group.is_empty() {
            filter.group_id = Some(validate::group_name(&mut v, "group", &req.group));
        }
        filter.status = match pb::KeyStatus::try_from(req.status) {
            Ok(pb::KeyStatus::Unspecified) => None,
            Ok(pb::KeyStatus::Enabled) => Some(KeyStatus::Enabled),
            Ok(pb::KeyStatus::Disabled) => Some(KeyStatus::Disabled),
            Ok(pb::KeyStatus::Expired) => Some(KeyStatus::Expired),
            Ok(pb::KeyStatus::Exhausted) => Some(KeyStatus::Exhausted),
            Err(_) => {
                v.add("status", "is not a known key status");
                None
            }
        };
        check(v)?;
        let page = self.service.list_keys(&account_id, &filter, &page).await?;
        let now = self.service.now();
        Ok(Response::new(pb::ListKeysResponse {
            keys: page.items.iter().map(|view| self.key_proto(view, now)).collect(),
            next_page_token: next_token(&page, "keys"),
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::UpdateKeyResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let key = req.key.unwrap_or_default();
        let mut v = Violations::new();
        let (account_id, key_id) = validate::child_name(&mut v, "key.name", &key.name, "keys");
        let paths = validate::update_mask(&mut v, req.update_mask.as_ref(), MASK);
        let now = self.service.now();
        if req.expire_after.is_some() && !paths.iter().any(|p| p == "expire_time") {
            v.add("expire_after", "needs `expire_time` in update_mask");
        }
        let mut patch = KeyPatch::default();
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    patch.display_name = Some(validate::display_name(&mut v, "key.display_name", &key.display_name))
                }
                "group" => patch.group_id = Some(validate::group_name(&mut v, "key.group", &key.group)),
                "expire_time" => {
                    patch.expire_time = Some(validate::expiry(
                        &mut v,
                        ("key.expire_time", key.expire_time.as_ref()),
                        ("expire_after", req.expire_after.as_ref()),
                        now,
                    ))
                }
                "quota" => patch.quota = Some(validate::optional_credits(&mut v, "key.quota", key.quota)),
                "daily_budget" => {
                    patch.daily_budget = Some(validate::optional_credits(&mut v, "key.daily_budget", key.daily_budget))
                }
                "monthly_budget" => {
                    patch.monthly_budget =
                        Some(validate::optional_credits(&mut v, "key.monthly_budget", key.monthly_budget))
                }
                "rpm_limit" => patch.rpm_limit = Some(validate::optional_rate(&mut v, "key.rpm_limit", key.rpm_limit)),
                "tpm_limit" => patch.tpm_limit = Some(validate::optional_rate(&mut v, "key.tpm_limit", key.tpm_limit)),
                "allowed_models" => {
                    patch.allowed_models = Some(validate::model_ids(&mut v, "key.allowed_models", &key.allowed_models))
                }
                "capabilities" => {
                    patch.capabilities = Some(validate::capabilities(&mut v, "key.capabilities", &key.capabilities))
                }
                "ip_allowlist" => {
                    patch.ip_allowlist = Some(validate::ip_allowlist(&mut v, "key.ip_allowlist", &key.ip_allowlist))
                }
                "enabled" => match key.enabled {
                    Some(enabled) => patch.enabled = Some(enabled),
                    None => v.add("key.enabled", "must be set when `enabled` is in update_mask"),
                },
                _ => {} // update_mask admits only the paths above
            }
        }
        check(v)?;
        let (view, clamps) = self.service.update_key(&actor, &account_id, &key_id, &patch, paths).await?;
        Ok(Response::new(pb::UpdateKeyResponse {
            key: Some(self.key_proto(&view, self.service.now())),
            clamped: convert::clamps(&clamps),
        }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::DeleteKeyResponse>, Status> {
        let actor = actor(request.metadata());
        let mut v = Violations::new();
        let (account_id, key_id) = validate::child_name(&mut v, "name", &request.get_ref().name, "keys");
        check(v)?;
        self.service.delete_key(&actor, &account_id, &key_id).await?;
        Ok(Response::new(pb::DeleteKeyResponse {}))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let mut v = Violations::new();
        let (account_id, key_id) = validate::child_name(&mut v, "name", &req.name, "keys");
        let grace = match req.grace_period.as_ref().map(convert::duration_micros) {
            None => None,
            Some(Some(grace)) if (0..=crate::service::MAX_ROTATION_GRACE).contains(&grace) => Some(grace),
            Some(_) => {
                v.add("grace_period", "must be between 0 and 30 days");
                None
            }
        };
        check(v)?;
        let (view, secret) = self.service.rotate_key(&actor, &account_id, &key_id, grace).await?;
        Ok(Response::new(pb::RotateKeyResponse {
            created: Some(pb::CreatedKey {
                key: Some(self.key_proto(&view, self.service.now())),
                secret: secret.expose().to_owned(),
            }),
        }))
    }
}
