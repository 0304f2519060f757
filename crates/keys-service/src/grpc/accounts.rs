use tollgate_core::resources::Account;
use tollgate_proto::keys::v1 as pb;
use tonic::{Request, Response, Status};

use super::keys::key_draft;
use super::{KeysGrpc, actor, check, next_token};
use crate::convert;
use crate::service::AccountPatch;
use crate::validate;

const MASK: &[&str] = &["display_name", "credit_limit", "unlimited_credit"];

fn account_input(v: &mut tollgate_core::Violations, account: &pb::Account) -> Account {
    Account {
        id: String::new(),
        revision: 0,
        display_name: validate::display_name(v, "account.display_name", &account.display_name),
        credit_limit: validate::credits(v, "account.credit_limit", account.credit_limit),
        unlimited_credit: account.unlimited_credit,
        create_time: 0,
        update_time: 0,
    }
}

#[tonic::async_trait]
impl pb::account_service_server::AccountService for KeysGrpc {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let mut v = tollgate_core::Violations::new();
        let id = validate::optional_id(&mut v, "account_id", &req.account_id);
        let account = account_input(&mut v, &req.account.unwrap_or_default());
        let now = self.service.now();
        let initial = req.initial_key.map(|initial| {
            let name = if initial.application_display_name.is_empty() {
                "Default".to_owned()
            } else {
                validate::display_name(
                    &mut v,
                    "initial_key.application_display_name",
                    &initial.application_display_name,
                )
            };
            let key = initial.key.unwrap_or_default();
            (name, key_draft(&mut v, "initial_key.key", &key, None, now))
        });
        check(v)?;
        let created = self.service.create_account(&actor, id, account, initial).await?;
        let (application, initial_key) = match created.initial {
            Some((application, mut keys)) => {
                let (view, secret) = keys.keys.remove(0);
                let caps = &self.service.config().caps;
                let key = convert::key(&view.key, &view.group, view.used, caps, now);
                (
                    Some(convert::application(&application)),
                    Some(pb::CreatedKey { key: Some(key), secret: secret.expose().to_owned() }),
                )
            }
            None => (None, None),
        };
        Ok(Response::new(pb::CreateAccountResponse {
            account: Some(convert::account(&created.account)),
            application,
            initial_key,
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let mut v = tollgate_core::Violations::new();
        let id = validate::account_name(&mut v, "name", &request.get_ref().name);
        check(v)?;
        let account = self.service.get_account(&id).await?;
        Ok(Response::new(pb::GetAccountResponse { account: Some(convert::account(&account)) }))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let req = request.into_inner();
        let mut v = tollgate_core::Violations::new();
        let page = validate::page(&mut v, req.page_size, &req.page_token, "accounts");
        check(v)?;
        let page = self.service.list_accounts(&page).await?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: page.items.iter().map(convert::account).collect(),
            next_page_token: next_token(&page, "accounts"),
        }))
    }

    async fn update_account(
        &self,
        request: Request<pb::UpdateAccountRequest>,
    ) -> Result<Response<pb::UpdateAccountResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let mut v = tollgate_core::Violations::new();
        let account = req.account.unwrap_or_default();
        let id = validate::account_name(&mut v, "account.name", &account.name);
        let paths = validate::update_mask(&mut v, req.update_mask.as_ref(), MASK);
        let mut patch = AccountPatch::default();
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    patch.display_name =
                        Some(validate::display_name(&mut v, "account.display_name", &account.display_name))
                }
                "credit_limit" => {
                    patch.credit_limit = Some(validate::credits(&mut v, "account.credit_limit", account.credit_limit))
                }
                "unlimited_credit" => patch.unlimited_credit = Some(account.unlimited_credit),
                _ => {} // update_mask admits only the paths above
            }
        }
        check(v)?;
        let account = self.service.update_account(&actor, &id, &patch, paths).await?;
        Ok(Response::new(pb::UpdateAccountResponse { account: Some(convert::account(&account)) }))
    }
}
