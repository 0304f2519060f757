use tollgate_core::Violations;
use tollgate_core::resources::Group;
use tollgate_proto::keys::v1 as pb;
use tonic::{Request, Response, Status};

use super::{KeysGrpc, actor, check, next_token};
use crate::convert;
use crate::service::GroupPatch;
use crate::validate;

const MASK: &[&str] = &["display_name", "price_multiplier", "allowed_models", "default_rpm_limit", "default_tpm_limit"];

#[tonic::async_trait]
impl pb::group_service_server::GroupService for KeysGrpc {
    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::CreateGroupResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let input = req.group.unwrap_or_default();
        let mut v = Violations::new();
        let group = Group {
            id: validate::required_id(&mut v, "group_id", &req.group_id),
            revision: 0,
            display_name: validate::display_name(&mut v, "group.display_name", &input.display_name),
            price_multiplier: validate::multiplier(&mut v, "group.price_multiplier", &input.price_multiplier),
            allowed_models: validate::model_ids(&mut v, "group.allowed_models", &input.allowed_models),
            default_rpm_limit: validate::optional_rate(&mut v, "group.default_rpm_limit", input.default_rpm_limit),
            default_tpm_limit: validate::optional_rate(&mut v, "group.default_tpm_limit", input.default_tpm_limit),
            create_time: 0,
            update_time: 0,
        };
        check(v)?;
        let (group, clamps) = self.service.create_group(&actor, group).await?;
        Ok(Response::new(pb::CreateGroupResponse {
            group: Some(convert::group(&group, &self.service.config().caps)),
            clamped: convert::clamps(&clamps),
        }))
    }

    async fn get_group(&self, request: Request<pb::GetGroupRequest>) -> Result<Response<pb::GetGroupResponse>, Status> {
        let mut v = Violations::new();
        let id = validate::group_name(&mut v, "name", &request.get_ref().name);
        check(v)?;
        let group = self.service.get_group(&id).await?;
        Ok(Response::new(pb::GetGroupResponse { group: Some(convert::group(&group, &self.service.config().caps)) }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let page = validate::page(&mut v, req.page_size, &req.page_token, "groups");
        check(v)?;
        let page = self.service.list_groups(&page).await?;
        let caps = &self.service.config().caps;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: page.items.iter().map(|g| convert::group(g, caps)).collect(),
            next_page_token: next_token(&page, "groups"),
        }))
    }

    async fn update_group(
        &self,
        request: Request<pb::UpdateGroupRequest>,
    ) -> Result<Response<pb::UpdateGroupResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let input = req.group.unwrap_or_default();
        let mut v = Violations::new();
        let id = validate::group_name(&mut v, "group.name", &input.name);
        let paths = validate::update_mask(&mut v, req.update_mask.as_ref(), MASK);
        let mut patch = GroupPatch::default();
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    patch.display_name = Some(validate::display_name(&mut v, "group.display_name", &input.display_name))
                }
                "price_multiplier" => {
                    if input.price_multiplier.is_empty() {
                        v.add("group.price_multiplier", "is required when in update_mask");
                    }
                    patch.price_multiplier =
                        Some(validate::multiplier(&mut v, "group.price_multiplier", &input.price_multiplier))
                }
                "allowed_models" => {
                    patch.allowed_models =
                        Some(validate::model_ids(&mut v, "group.allowed_models", &input.allowed_models))
                }
                "default_rpm_limit" => {
                    patch.default_rpm_limit =
                        Some(validate::optional_rate(&mut v, "group.default_rpm_limit", input.default_rpm_limit))
                }
                "default_tpm_limit" => {
                    patch.default_tpm_limit =
                        Some(validate::optional_rate(&mut v, "group.default_tpm_limit", input.default_tpm_limit))
                }
                _ => {} // update_mask admits only the paths above
            }
        }
        check(v)?;
        let (group, clamps) = self.service.update_group(&actor, &id, &patch, paths).await?;
        Ok(Response::new(pb::UpdateGroupResponse {
            group: Some(convert::group(&group, &self.service.config().caps)),
            clamped: convert::clamps(&clamps),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let actor = actor(request.metadata());
        let mut v = Violations::new();
        let id = validate::group_name(&mut v, "name", &request.get_ref().name);
        check(v)?;
        self.service.delete_group(&actor, &id).await?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }
}
