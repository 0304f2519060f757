//! Applications of an account.

use tollgate_core::ids::new_id;
use tollgate_core::names;
use tollgate_core::resources::Application;
use tollgate_store::{Page, PageRequest};

use super::{Actor, KeysService};
use crate::error::{KeysError, KeysResult};

/// Changes to an application; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ApplicationPatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
}

impl KeysService {
    pub async fn create_application(
        &self,
        actor: &Actor,
        account_id: &str,
        id: Option<String>,
        mut application: Application,
    ) -> KeysResult<Application> {
        self.get_account(account_id).await?;
        let now = self.now();
        application.id = id.unwrap_or_else(new_id);
        application.account_id = account_id.to_owned();
        application.revision = 1;
        application.create_time = now;
        application.update_time = now;
        let audit = self.audit(
            actor,
            "CreateApplication",
            names::application(account_id, &application.id),
            Some(account_id),
            vec!["display_name".into(), "description".into()],
            now,
        );
        self.store.create_application(&application, &audit).await.map_err(KeysError::from_store("application"))?;
        Ok(application)
    }

    pub async fn get_application(&self, account_id: &str, id: &str) -> KeysResult<Application> {
        self.store
            .get_application(account_id, id)
            .await
            .map_err(KeysError::from_store("application"))?
            .ok_or(KeysError::NotFound("application"))
    }

    pub async fn list_applications(&self, account_id: &str, page: &PageRequest) -> KeysResult<Page<Application>> {
        self.get_account(account_id).await?;
        self.store.list_applications(account_id, page).await.map_err(KeysError::from_store("application"))
    }

    pub async fn update_application(
        &self,
        actor: &Actor,
        account_id: &str,
        id: &str,
        patch: &ApplicationPatch,
        paths: Vec<String>,
    ) -> KeysResult<Application> {
        Self::with_retries(|| async {
            let mut application = self.get_application(account_id, id).await?;
            let now = self.now();
            if let Some(name) = &patch.display_name {
                application.display_name = name.clone();
            }
            if let Some(description) = &patch.description {
                application.description = description.clone();
            }
            application.update_time = now;
            let resource = names::application(account_id, id);
            let audit = self.audit(actor, "UpdateApplication", resource, Some(account_id), paths.clone(), now);
            self.store.update_application(&application, &audit).await.map_err(KeysError::from_store("application"))?;
            application.revision += 1;
            Ok(application)
        })
        .await
    }

    pub async fn delete_application(&self, actor: &Actor, account_id: &str, id: &str) -> KeysResult<()> {
        let audit = self.audit(
            actor,
            "DeleteApplication",
            names::application(account_id, id),
            Some(account_id),
            Vec::new(),
            self.now(),
        );
        self.store.delete_application(account_id, id, &audit).await.map_err(KeysError::from_store("application"))
    }
}
