use tollgate_core::Violations;
use tollgate_core::resources::Application;
use tollgate_proto::keys::v1 as pb;
use tonic::{Request, Response, Status};

use super::{KeysGrpc, actor, check, next_token};
use crate::convert;
use crate::service::ApplicationPatch;
use crate::validate;

const MASK: &[&str] = &["display_name", "description"];
/// Longest application description.
const MAX_DESCRIPTION: usize = 500;

#[tonic::async_trait]
impl pb::application_service_server::ApplicationService for KeysGrpc {
    async fn create_application(
        &self,
        request: Request<pb::CreateApplicationRequest>,
    ) -> Result<Response<pb::CreateApplicationResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let mut v = Violations::new();
        let account_id = validate::account_name(&mut v, "parent", &req.parent);
        let id = validate::optional_id(&mut v, "application_id", &req.application_id);
        let input = req.application.unwrap_or_default();
        let application = Application {
            id: String::new(),
            revision: 0,
            account_id: account_id.clone(),
            display_name: validate::display_name(&mut v, "application.display_name", &input.display_name),
            description: validate::text(&mut v, "application.description", &input.description, MAX_DESCRIPTION),
            create_time: 0,
            update_time: 0,
        };
        check(v)?;
        let application = self.service.create_application(&actor, &account_id, id, application).await?;
        Ok(Response::new(pb::CreateApplicationResponse { application: Some(convert::application(&application)) }))
    }

    async fn get_application(
        &self,
        request: Request<pb::GetApplicationRequest>,
    ) -> Result<Response<pb::GetApplicationResponse>, Status> {
        let mut v = Violations::new();
        let (account_id, id) = validate::child_name(&mut v, "name", &request.get_ref().name, "applications");
        check(v)?;
        let application = self.service.get_application(&account_id, &id).await?;
        Ok(Response::new(pb::GetApplicationResponse { application: Some(convert::application(&application)) }))
    }

    async fn list_applications(
        &self,
        request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let account_id = validate::account_name(&mut v, "parent", &req.parent);
        let page = validate::page(&mut v, req.page_size, &req.page_token, "applications");
        check(v)?;
        let page = self.service.list_applications(&account_id, &page).await?;
        Ok(Response::new(pb::ListApplicationsResponse {
            applications: page.items.iter().map(convert::application).collect(),
            next_page_token: next_token(&page, "applications"),
        }))
    }

    async fn update_application(
        &self,
        request: Request<pb::UpdateApplicationRequest>,
    ) -> Result<Response<pb::UpdateApplicationResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let input = req.application.unwrap_or_default();
        let mut v = Violations::new();
        let (account_id, id) = validate::child_name(&mut v, "application.name", &input.name, "applications");
        let paths = validate::update_mask(&mut v, req.update_mask.as_ref(), MASK);
        let mut patch = ApplicationPatch::default();
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    patch.display_name =
                        Some(validate::display_name(&mut v, "application.display_name", &input.display_name))
                }
                "description" => {
                    patch.description =
                        Some(validate::text(&mut v, "application.description", &input.description, MAX_DESCRIPTION))
                }
                _ => {} // update_mask admits only the paths above
            }
        }
        check(v)?;
        let application = self.service.update_application(&actor, &account_id, &id, &patch, paths).await?;
        Ok(Response::new(pb::UpdateApplicationResponse { application: Some(convert::application(&application)) }))
    }

    async fn delete_application(
        &self,
        request: Request<pb::DeleteApplicationRequest>,
    ) -> Result<Response<pb::DeleteApplicationResponse>, Status> {
        let actor = actor(request.metadata());
        let mut v = Violations::new();
        let (account_id, id) = validate::child_name(&mut v, "name", &request.get_ref().name, "applications");
        check(v)?;
        self.service.delete_application(&actor, &account_id, &id).await?;
        Ok(Response::new(pb::DeleteApplicationResponse {}))
    }
}
