//! Accounts, optionally created with a first application and key.

use tollgate_core::ids::new_id;
use tollgate_core::names;
use tollgate_core::resources::{Account, Application};
use tollgate_store::keys::NewKey;
use tollgate_store::{Page, PageRequest};

use super::keys::{CreatedKeys, KeyDraft};
use super::{Actor, KeysService};
use crate::error::{KeysError, KeysResult};

/// Changes to an account; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct AccountPatch {
    pub display_name: Option<String>,
    pub credit_limit: Option<i64>,
    pub unlimited_credit: Option<bool>,
}

/// What CreateAccount made.
#[derive(Debug)]
pub struct CreatedAccount {
    pub account: Account,
    pub initial: Option<(Application, CreatedKeys)>,
}

impl KeysService {
    /// Creates an account; with `initial`, also an application named by the given display
    /// name and a key from the draft, in one transaction.
    pub async fn create_account(
        &self,
        actor: &Actor,
        id: Option<String>,
        mut account: Account,
        initial: Option<(String, KeyDraft)>,
    ) -> KeysResult<CreatedAccount> {
        let now = self.now();
        account.id = id.unwrap_or_else(new_id);
        account.revision = 1;
        account.create_time = now;
        account.update_time = now;
        let mut audit = vec![self.audit(
            actor,
            "CreateAccount",
            names::account(&account.id),
            Some(&account.id),
            vec!["display_name".into(), "credit_limit".into(), "unlimited_credit".into()],
            now,
        )];
        let initial = match initial {
            None => None,
            Some((application_name, mut draft)) => {
                let application = Application {
                    id: new_id(),
                    revision: 1,
                    account_id: account.id.clone(),
                    display_name: application_name,
                    description: String::new(),
                    create_time: now,
                    update_time: now,
                };
                draft.application_id = application.id.clone();
                let group = self.check_key_references(&draft, "initial_key.key").await?;
                audit.push(self.audit(
                    actor,
                    "CreateApplication",
                    names::application(&account.id, &application.id),
                    Some(&account.id),
                    vec!["display_name".into()],
                    now,
                ));
                let (new_keys, created) = self.prepare_keys(&account.id, &draft, &group, 1, now);
                audit.extend(self.key_creation_audit(actor, "CreateAccount", &new_keys, now));
                Some((application, new_keys, created))
            }
        };
        let initial_refs: Option<(&Application, &NewKey)> =
            initial.as_ref().map(|(application, new_keys, _)| (application, &new_keys[0]));
        self.store.create_account(&account, initial_refs, &audit).await.map_err(KeysError::from_store("account"))?;
        if initial.is_some() {
            self.sync.flush_after_commit().await;
        }
        Ok(CreatedAccount { account, initial: initial.map(|(application, _, created)| (application, created)) })
    }

    pub async fn get_account(&self, id: &str) -> KeysResult<Account> {
        self.store
            .get_account(id)
            .await
            .map_err(KeysError::from_store("account"))?
            .ok_or(KeysError::NotFound("account"))
    }

    pub async fn list_accounts(&self, page: &PageRequest) -> KeysResult<Page<Account>> {
        self.store.list_accounts(page).await.map_err(KeysError::from_store("account"))
    }

    pub async fn update_account(
        &self,
        actor: &Actor,
        id: &str,
        patch: &AccountPatch,
        paths: Vec<String>,
    ) -> KeysResult<Account> {
        let account = Self::with_retries(|| async {
            let mut account = self.get_account(id).await?;
            let now = self.now();
            if let Some(name) = &patch.display_name {
                account.display_name = name.clone();
            }
            if let Some(limit) = patch.credit_limit {
                account.credit_limit = limit;
            }
            if let Some(unlimited) = patch.unlimited_credit {
                account.unlimited_credit = unlimited;
            }
            account.update_time = now;
            let audit = self.audit(actor, "UpdateAccount", names::account(id), Some(id), paths.clone(), now);
            self.store.update_account(&account, &audit).await.map_err(KeysError::from_store("account"))?;
            account.revision += 1;
            Ok(account)
        })
        .await?;
        // The credit limit is part of every key's state.
        self.sync.flush_after_commit().await;
        Ok(account)
    }
}
