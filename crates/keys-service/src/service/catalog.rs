//! Groups and the model catalog (admin-made, shared by every account).

use tollgate_core::capability::Capability;
use tollgate_core::limits::{Clamp, clamp};
use tollgate_core::money::PriceMultiplier;
use tollgate_core::names;
use tollgate_core::resources::{Group, Model};
use tollgate_store::{Page, PageRequest};

use super::{Actor, KeysService};
use crate::error::{KeysError, KeysResult};

/// Changes to a group; `None` leaves a field as it is, `Some(None)` clears a default.
#[derive(Debug, Default)]
pub struct GroupPatch {
    pub display_name: Option<String>,
    pub price_multiplier: Option<PriceMultiplier>,
    pub allowed_models: Option<Vec<String>>,
    pub default_rpm_limit: Option<Option<i64>>,
    pub default_tpm_limit: Option<Option<i64>>,
}

/// Changes to a model; `None` leaves a field as it is, `Some(None)` clears the cached price.
#[derive(Debug, Default)]
pub struct ModelPatch {
    pub display_name: Option<String>,
    pub capability: Option<Capability>,
    pub input_price: Option<i64>,
    pub output_price: Option<i64>,
    pub cached_input_price: Option<Option<i64>>,
}

impl KeysService {
    /// The clamps the system caps apply to a group's defaults.
    fn group_clamps(&self, group: &Group) -> Vec<Clamp> {
        let caps = &self.config.caps;
        [
            clamp("default_rpm_limit", group.default_rpm_limit, caps.max_rpm).1,
            clamp("default_tpm_limit", group.default_tpm_limit, caps.max_tpm).1,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Fails with the offending index for models not in the catalog.
    pub(super) async fn check_models_exist(&self, field: &str, models: &[String]) -> KeysResult<()> {
        if models.is_empty() {
            return Ok(());
        }
        let known = self.store.existing_models(models).await.map_err(KeysError::from_store("model"))?;
        let mut violations = tollgate_core::Violations::new();
        for (i, model) in models.iter().enumerate() {
            violations.check(known.contains(model), format!("{field}[{i}]"), "is not in the model catalog");
        }
        violations.into_result().map_err(KeysError::InvalidArgument)
    }

    pub async fn create_group(&self, actor: &Actor, mut group: Group) -> KeysResult<(Group, Vec<Clamp>)> {
        self.check_models_exist("group.allowed_models", &group.allowed_models).await?;
        let now = self.now();
        group.revision = 1;
        group.create_time = now;
        group.update_time = now;
        let fields = ["display_name", "price_multiplier", "allowed_models", "default_rpm_limit", "default_tpm_limit"];
        let audit = self.audit(
            actor,
            "CreateGroup",
            names::group(&group.id),
            None,
            fields.iter().map(|f| f.to_string()).collect(),
            now,
        );
        self.store.create_group(&group, &audit).await.map_err(KeysError::from_store("group"))?;
        let clamps = self.group_clamps(&group);
        Ok((group, clamps))
    }

    pub async fn get_group(&self, id: &str) -> KeysResult<Group> {
        self.store.get_group(id).await.map_err(KeysError::from_store("group"))?.ok_or(KeysError::NotFound("group"))
    }

    pub async fn list_groups(&self, page: &PageRequest) -> KeysResult<Page<Group>> {
        self.store.list_groups(page).await.map_err(KeysError::from_store("group"))
    }

    pub async fn update_group(
        &self,
        actor: &Actor,
        id: &str,
        patch: &GroupPatch,
        paths: Vec<String>,
    ) -> KeysResult<(Group, Vec<Clamp>)> {
        if let Some(models) = &patch.allowed_models {
            self.check_models_exist("group.allowed_models", models).await?;
        }
        let group = Self::with_retries(|| async {
            let mut group = self.get_group(id).await?;
            let now = self.now();
            if let Some(name) = &patch.display_name {
                group.display_name = name.clone();
            }
            if let Some(multiplier) = patch.price_multiplier {
                group.price_multiplier = multiplier;
            }
            if let Some(models) = &patch.allowed_models {
                group.allowed_models = models.clone();
            }
            if let Some(rpm) = patch.default_rpm_limit {
                group.default_rpm_limit = rpm;
            }
            if let Some(tpm) = patch.default_tpm_limit {
                group.default_tpm_limit = tpm;
            }
            group.update_time = now;
            let audit = self.audit(actor, "UpdateGroup", names::group(id), None, paths.clone(), now);
            self.store.update_group(&group, &audit).await.map_err(KeysError::from_store("group"))?;
            group.revision += 1;
            Ok(group)
        })
        .await?;
        // Every key of the group derives its state from it.
        self.sync.flush_after_commit().await;
        let clamps = self.group_clamps(&group);
        Ok((group, clamps))
    }

    pub async fn delete_group(&self, actor: &Actor, id: &str) -> KeysResult<()> {
        let audit = self.audit(actor, "DeleteGroup", names::group(id), None, Vec::new(), self.now());
        self.store.delete_group(id, &audit).await.map_err(KeysError::from_store("group"))
    }

    pub async fn create_model(&self, actor: &Actor, mut model: Model) -> KeysResult<Model> {
        let now = self.now();
        model.revision = 1;
        model.create_time = now;
        model.update_time = now;
        if model.display_name.is_empty() {
            model.display_name = model.id.clone();
        }
        let fields = ["display_name", "capability", "input_price", "output_price", "cached_input_price"];
        let audit = self.audit(
            actor,
            "CreateModel",
            names::model(&model.id),
            None,
            fields.iter().map(|f| f.to_string()).collect(),
            now,
        );
        self.store.create_model(&model, &audit).await.map_err(KeysError::from_store("model"))?;
        self.sync.flush_after_commit().await;
        Ok(model)
    }

    pub async fn get_model(&self, id: &str) -> KeysResult<Model> {
        self.store.get_model(id).await.map_err(KeysError::from_store("model"))?.ok_or(KeysError::NotFound("model"))
    }

    pub async fn list_models(&self, page: &PageRequest) -> KeysResult<Page<Model>> {
        self.store.list_models(page).await.map_err(KeysError::from_store("model"))
    }

    pub async fn update_model(
        &self,
        actor: &Actor,
        id: &str,
        patch: &ModelPatch,
        paths: Vec<String>,
    ) -> KeysResult<Model> {
        let model = Self::with_retries(|| async {
            let mut model = self.get_model(id).await?;
            let now = self.now();
            if let Some(name) = &patch.display_name {
                model.display_name = if name.is_empty() { model.id.clone() } else { name.clone() };
            }
            if let Some(capability) = patch.capability {
                model.capability = capability;
            }
            if let Some(price) = patch.input_price {
                model.input_price = price;
            }
            if let Some(price) = patch.output_price {
                model.output_price = price;
            }
            if let Some(price) = patch.cached_input_price {
                model.cached_input_price = price;
            }
            model.update_time = now;
            let audit = self.audit(actor, "UpdateModel", names::model(id), None, paths.clone(), now);
            self.store.update_model(&model, &audit).await.map_err(KeysError::from_store("model"))?;
            model.revision += 1;
            Ok(model)
        })
        .await?;
        self.sync.flush_after_commit().await;
        Ok(model)
    }

    pub async fn delete_model(&self, actor: &Actor, id: &str) -> KeysResult<()> {
        let audit = self.audit(actor, "DeleteModel", names::model(id), None, Vec::new(), self.now());
        self.store.delete_model(id, &audit).await.map_err(KeysError::from_store("model"))?;
        self.sync.flush_after_commit().await;
        Ok(())
    }
}
