//! API keys: creation (single, batch, idempotent), reads, updates, deletion and rotation.

use std::collections::HashMap;

use tollgate_core::capability::Capability;
use tollgate_core::ids::new_id;
use tollgate_core::key_format::ApiKeySecret;
use tollgate_core::limits::{Clamp, clamp};
use tollgate_core::names;
use tollgate_core::resources::{Group, Key, KeySettings, KeyStatus};
use tollgate_core::time::Micros;
use tollgate_store::keys::{AuditEntry, IdempotencyRecord, KeyFilter, NewKey, Rotation};
use tollgate_store::{Page, PageRequest, StoreError};

use super::{Actor, KeysService};
use crate::error::{KeysError, KeysResult};

/// How long a create request id is remembered.
const IDEMPOTENCY_WINDOW: Micros = 24 * 3600 * 1_000_000;
/// Longest grace a rotation may give the old secret.
pub const MAX_ROTATION_GRACE: Micros = 30 * 24 * 3600 * 1_000_000;

/// A key's settings checked from a request; references (group, models) not yet resolved.
#[derive(Debug, Clone)]
pub struct KeyDraft {
    pub application_id: String,
    pub settings: KeySettings,
}

/// A key with the group its effective limits derive from.
#[derive(Debug, Clone)]
pub struct KeyView {
    pub key: Key,
    pub group: Group,
    /// Credits the key has spent, as the counters metering maintains say.
    pub used: i64,
}

/// Keys just made, each with its secret, shown this once.
#[derive(Debug)]
pub struct CreatedKeys {
    pub keys: Vec<(KeyView, ApiKeySecret)>,
    pub clamps: Vec<Clamp>,
}

/// Changes to a key; `None` leaves a field as it is, `Some(None)` clears an optional one.
#[derive(Debug, Default)]
pub struct KeyPatch {
    pub display_name: Option<String>,
    pub group_id: Option<String>,
    pub expire_time: Option<Option<Micros>>,
    pub quota: Option<Option<i64>>,
    pub daily_budget: Option<Option<i64>>,
    pub monthly_budget: Option<Option<i64>>,
    pub rpm_limit: Option<Option<i64>>,
    pub tpm_limit: Option<Option<i64>>,
    pub allowed_models: Option<Vec<String>>,
    pub capabilities: Option<Vec<Capability>>,
    pub ip_allowlist: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

impl KeyPatch {
    fn apply(&self, s: &mut KeySettings) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut s.display_name, &self.display_name);
        set(&mut s.group_id, &self.group_id);
        set(&mut s.expire_time, &self.expire_time);
        set(&mut s.quota, &self.quota);
        set(&mut s.daily_budget, &self.daily_budget);
        set(&mut s.monthly_budget, &self.monthly_budget);
        set(&mut s.rpm_limit, &self.rpm_limit);
        set(&mut s.tpm_limit, &self.tpm_limit);
        set(&mut s.allowed_models, &self.allowed_models);
        set(&mut s.capabilities, &self.capabilities);
        set(&mut s.ip_allowlist, &self.ip_allowlist);
        set(&mut s.enabled, &self.enabled);
    }
}

/// The settings a request set, as update-mask paths, for the audit log.
fn set_fields(s: &KeySettings) -> Vec<String> {
    let mut fields = vec!["application", "display_name", "group", "enabled"];
    let optional = [
        ("expire_time", s.expire_time.is_some()),
        ("quota", s.quota.is_some()),
        ("daily_budget", s.daily_budget.is_some()),
        ("monthly_budget", s.monthly_budget.is_some()),
        ("rpm_limit", s.rpm_limit.is_some()),
        ("tpm_limit", s.tpm_limit.is_some()),
        ("allowed_models", !s.allowed_models.is_empty()),
        ("capabilities", !s.capabilities.is_empty()),
        ("ip_allowlist", !s.ip_allowlist.is_empty()),
    ];
    fields.extend(optional.iter().filter(|(_, set)| *set).map(|(name, _)| *name));
    fields.into_iter().map(str::to_owned).collect()
}

impl KeysService {
    fn key_clamps(&self, settings: &KeySettings) -> Vec<Clamp> {
        let caps = &self.config.caps;
        [clamp("rpm_limit", settings.rpm_limit, caps.max_rpm).1, clamp("tpm_limit", settings.tpm_limit, caps.max_tpm).1]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Resolves a draft's group and checks its models are in the catalog; both are the
    /// caller's input, so failures are INVALID_ARGUMENT on `{prefix}.group` and friends.
    pub(super) async fn check_key_references(&self, draft: &KeyDraft, prefix: &str) -> KeysResult<Group> {
        let group = self.store.get_group(&draft.settings.group_id).await.map_err(KeysError::from_store("group"))?;
        let group = group.ok_or_else(|| KeysError::invalid(format!("{prefix}.group"), "unknown group"))?;
        self.check_models_exist(&format!("{prefix}.allowed_models"), &draft.settings.allowed_models).await?;
        Ok(group)
    }

    /// Makes `quantity` keys from a draft: ids, secrets, hashes and hints.
    pub(super) fn prepare_keys(
        &self,
        account_id: &str,
        draft: &KeyDraft,
        group: &Group,
        quantity: usize,
        now: Micros,
    ) -> (Vec<NewKey>, CreatedKeys) {
        let mut new_keys = Vec::with_capacity(quantity);
        let mut created = Vec::with_capacity(quantity);
        for _ in 0..quantity {
            let secret = ApiKeySecret::generate();
            let key = Key {
                id: new_id(),
                revision: 1,
                account_id: account_id.to_owned(),
                application_id: draft.application_id.clone(),
                settings: draft.settings.clone(),
                hint: secret.hint(),
                previous_secret_expire_time: None,
                create_time: now,
                update_time: now,
            };
            new_keys.push(NewKey { key: key.clone(), secret_hash: self.config.pepper.hash(secret.expose()) });
            created.push((KeyView { key, group: group.clone(), used: 0 }, secret));
        }
        let clamps = self.key_clamps(&draft.settings);
        (new_keys, CreatedKeys { keys: created, clamps })
    }

    pub(super) fn key_creation_audit(
        &self,
        actor: &Actor,
        action: &str,
        keys: &[NewKey],
        now: Micros,
    ) -> Vec<AuditEntry> {
        keys.iter()
            .map(|new| {
                let key = &new.key;
                let resource = names::key(&key.account_id, &key.id);
                self.audit(actor, action, resource, Some(&key.account_id), set_fields(&key.settings), now)
            })
            .collect()
    }

    /// Creates `quantity` keys, all or none. With a request id, a retry within a day returns
    /// the same keys and secrets; `fingerprint` identifies the request's settings.
    pub async fn create_keys(
        &self,
        actor: &Actor,
        account_id: &str,
        draft: &KeyDraft,
        quantity: usize,
        idempotency: Option<(&str, &str)>,
        action: &str,
    ) -> KeysResult<CreatedKeys> {
        self.get_account(account_id).await?;
        self.get_application(account_id, &draft.application_id).await?;
        let now = self.now();
        if let Some((request_id, fingerprint)) = idempotency
            && let Some(replayed) = self.replay(account_id, request_id, fingerprint, now).await?
        {
            return Ok(replayed);
        }
        let group = self.check_key_references(draft, "key").await?;
        let (new_keys, created) = self.prepare_keys(account_id, draft, &group, quantity, now);
        let record = idempotency.map(|(request_id, fingerprint)| {
            let secrets: Vec<&str> = created.keys.iter().map(|(_, secret)| secret.expose()).collect();
            IdempotencyRecord {
                account_id: account_id.to_owned(),
                request_id: request_id.to_owned(),
                fingerprint: fingerprint.to_owned(),
                key_ids: new_keys.iter().map(|k| k.key.id.clone()).collect(),
                sealed_secrets: self.sealer.seal(&seal_context(account_id, request_id), &secrets),
                create_time: now,
            }
        });
        let audit = self.key_creation_audit(actor, action, &new_keys, now);
        match self.store.create_keys(&new_keys, record.as_ref(), &audit).await {
            Ok(()) => {}
            // A concurrent retry with the same request id committed first: answer as it did.
            Err(StoreError::AlreadyExists) if let Some((request_id, fingerprint)) = idempotency => {
                return self
                    .replay(account_id, request_id, fingerprint, now)
                    .await?
                    .ok_or_else(|| KeysError::Internal("idempotency record vanished".into()));
            }
            Err(error) => return Err(KeysError::from_store("key")(error)),
        }
        self.sync.flush_after_commit().await;
        Ok(created)
    }

    async fn replay(
        &self,
        account_id: &str,
        request_id: &str,
        fingerprint: &str,
        now: Micros,
    ) -> KeysResult<Option<CreatedKeys>> {
        let record = self
            .store
            .find_idempotency_record(account_id, request_id, now - IDEMPOTENCY_WINDOW)
            .await
            .map_err(KeysError::from_store("key"))?;
        let Some(record) = record else {
            return Ok(None);
        };
        if record.fingerprint != fingerprint {
            return Err(KeysError::invalid("request_id", "was already used for a request with other settings"));
        }
        let secrets = self
            .sealer
            .open(&seal_context(account_id, request_id), &record.sealed_secrets)
            .ok_or_else(|| KeysError::Internal("sealed secrets do not open (was the key pepper changed?)".into()))?;
        let keys =
            self.store.get_keys_by_id(account_id, &record.key_ids).await.map_err(KeysError::from_store("key"))?;
        let mut views = self.views(keys).await?;
        if views.len() != secrets.len() {
            return Err(KeysError::Internal("idempotency record does not match its keys".into()));
        }
        let mut created = Vec::with_capacity(views.len());
        for (view, secret) in views.drain(..).zip(secrets) {
            let secret = ApiKeySecret::parse(&secret).map_err(|e| KeysError::Internal(e.to_string()))?;
            created.push((view, secret));
        }
        let clamps = created.first().map(|(view, _)| self.key_clamps(&view.key.settings)).unwrap_or_default();
        Ok(Some(CreatedKeys { keys: created, clamps }))
    }

    /// Pairs keys with their groups, loading each group once.
    async fn views(&self, keys: Vec<Key>) -> KeysResult<Vec<KeyView>> {
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut views = Vec::with_capacity(keys.len());
        for key in keys {
            let group = match groups.get(&key.settings.group_id) {
                Some(group) => group.clone(),
                None => {
                    let group = self.group_of(&key).await?;
                    groups.insert(group.id.clone(), group.clone());
                    group
                }
            };
            views.push(KeyView { key, group, used: 0 });
        }
        self.fill_spend(&mut views).await;
        Ok(views)
    }

    /// One key's view, with its spend.
    async fn view(&self, key: Key, group: Group) -> KeyView {
        let mut views = [KeyView { key, group, used: 0 }];
        self.fill_spend(&mut views).await;
        let [view] = views;
        view
    }

    /// Reads what each key has spent; when the counters cannot be read the keys show 0 used
    /// (and so not exhausted) rather than failing the read.
    async fn fill_spend(&self, views: &mut [KeyView]) {
        let Some(account_id) = views.first().map(|v| v.key.account_id.clone()) else { return };
        let ids: Vec<String> = views.iter().map(|v| v.key.id.clone()).collect();
        let windows = tollgate_core::windows::Calendar::utc().windows(self.now());
        match self.counters.key_spend(&account_id, &ids, &windows).await {
            Ok(spend) => {
                for (view, spend) in views.iter_mut().zip(spend) {
                    view.used = spend.used;
                }
            }
            Err(error) => tracing::warn!(%error, "key spend unavailable; showing keys as unspent"),
        }
    }

    async fn group_of(&self, key: &Key) -> KeysResult<Group> {
        match self.store.get_group(&key.settings.group_id).await.map_err(KeysError::from_store("group"))? {
            Some(group) => Ok(group),
            // Only a deleted key can name a deleted group; its state still needs one.
            None => self
                .store
                .load_key_states(std::slice::from_ref(&key.id))
                .await
                .map_err(KeysError::from_store("key"))?
                .pop()
                .map(|source| source.group)
                .ok_or(KeysError::NotFound("group")),
        }
    }

    pub async fn get_key(&self, account_id: &str, id: &str) -> KeysResult<KeyView> {
        let key = self.store.get_key(account_id, id).await.map_err(KeysError::from_store("key"))?;
        let key = key.ok_or(KeysError::NotFound("key"))?;
        let group = self.group_of(&key).await?;
        Ok(self.view(key, group).await)
    }

    pub async fn list_keys(
        &self,
        account_id: &str,
        filter: &KeyFilter,
        page: &PageRequest,
    ) -> KeysResult<Page<KeyView>> {
        self.get_account(account_id).await?;
        // Exhausted is an enabled key whose spend reached its quota: the store knows enabled,
        // the counters know spend, so both filters are finished here (pages may come short).
        let wanted = filter.status;
        let mut store_filter = filter.clone();
        if wanted == Some(KeyStatus::Exhausted) {
            store_filter.status = Some(KeyStatus::Enabled);
        }
        let page = self
            .store
            .list_keys(account_id, &store_filter, page, self.now())
            .await
            .map_err(KeysError::from_store("key"))?;
        let mut views = self.views(page.items).await?;
        if let Some(wanted @ (KeyStatus::Enabled | KeyStatus::Exhausted)) = wanted {
            let now = self.now();
            views.retain(|v| v.key.settings.status(now, v.used) == wanted);
        }
        Ok(Page { items: views, next_after: page.next_after })
    }

    pub async fn update_key(
        &self,
        actor: &Actor,
        account_id: &str,
        id: &str,
        patch: &KeyPatch,
        paths: Vec<String>,
    ) -> KeysResult<(KeyView, Vec<Clamp>)> {
        if let Some(group_id) = &patch.group_id {
            let group = self.store.get_group(group_id).await.map_err(KeysError::from_store("group"))?;
            if group.is_none() {
                return Err(KeysError::invalid("key.group", "unknown group"));
            }
        }
        if let Some(models) = &patch.allowed_models {
            self.check_models_exist("key.allowed_models", models).await?;
        }
        let key = Self::with_retries(|| async {
            let mut key = self.store.get_key(account_id, id).await.map_err(KeysError::from_store("key"))?;
            let key = key.as_mut().ok_or(KeysError::NotFound("key"))?;
            let now = self.now();
            patch.apply(&mut key.settings);
            if patch.enabled == Some(true) && key.settings.is_expired(now) {
                return Err(KeysError::FailedPrecondition(
                    "the key has expired; give it a new expire_time to enable it".into(),
                ));
            }
            key.update_time = now;
            let audit =
                self.audit(actor, "UpdateKey", names::key(account_id, id), Some(account_id), paths.clone(), now);
            self.store.update_key(key, &audit).await.map_err(KeysError::from_store("key"))?;
            key.revision += 1;
            Ok(key.clone())
        })
        .await?;
        self.sync.flush_after_commit().await;
        let clamps = self.key_clamps(&key.settings);
        let group = self.group_of(&key).await?;
        Ok((self.view(key, group).await, clamps))
    }

    pub async fn delete_key(&self, actor: &Actor, account_id: &str, id: &str) -> KeysResult<()> {
        let now = self.now();
        let audit = self.audit(actor, "DeleteKey", names::key(account_id, id), Some(account_id), Vec::new(), now);
        self.store.delete_key(account_id, id, now, &audit).await.map_err(KeysError::from_store("key"))?;
        self.sync.flush_after_commit().await;
        Ok(())
    }

    /// Issues a new secret; the current ones keep working for `grace` (the configured default
    /// when `None`; zero ends them now).
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        account_id: &str,
        id: &str,
        grace: Option<Micros>,
    ) -> KeysResult<(KeyView, ApiKeySecret)> {
        let grace = grace.unwrap_or(self.config.default_rotation_grace);
        let secret = ApiKeySecret::generate();
        let now = self.now();
        let audit =
            self.audit(actor, "RotateKey", names::key(account_id, id), Some(account_id), vec!["secret".into()], now);
        let rotation = Rotation {
            new_secret: self.config.pepper.hash(secret.expose()),
            new_hint: secret.hint(),
            old_secret_expire_time: now + grace,
            now,
        };
        let key =
            self.store.rotate_key(account_id, id, &rotation, &audit).await.map_err(KeysError::from_store("key"))?;
        self.sync.flush_after_commit().await;
        let group = self.group_of(&key).await?;
        Ok((self.view(key, group).await, secret))
    }
}

fn seal_context(account_id: &str, request_id: &str) -> String {
    format!("{account_id}/{request_id}")
}
