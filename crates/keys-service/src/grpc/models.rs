use tollgate_core::Violations;
use tollgate_core::resources::Model;
use tollgate_proto::keys::v1 as pb;
use tonic::{Request, Response, Status};

use super::{KeysGrpc, actor, check, next_token};
use crate::convert;
use crate::service::ModelPatch;
use crate::validate;

const MASK: &[&str] = &["display_name", "capability", "input_price", "output_price", "cached_input_price"];
/// Longest model display name.
const MAX_DISPLAY_NAME: usize = 100;

impl KeysGrpc {
    fn model_proto(&self, model: &Model) -> pb::Model {
        convert::model(model, self.service.config().credits_per_usd)
    }
}

#[tonic::async_trait]
impl pb::model_service_server::ModelService for KeysGrpc {
    async fn create_model(
        &self,
        request: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::CreateModelResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let input = req.model.unwrap_or_default();
        let mut v = Violations::new();
        let model = Model {
            id: validate::model_id(&mut v, "model_id", &req.model_id),
            revision: 0,
            display_name: validate::text(&mut v, "model.display_name", &input.display_name, MAX_DISPLAY_NAME),
            capability: validate::capability(&mut v, "model.capability", input.capability),
            input_price: validate::credits(&mut v, "model.input_price", input.input_price),
            output_price: validate::credits(&mut v, "model.output_price", input.output_price),
            cached_input_price: validate::optional_credits(
                &mut v,
                "model.cached_input_price",
                input.cached_input_price,
            ),
            create_time: 0,
            update_time: 0,
        };
        check(v)?;
        let model = self.service.create_model(&actor, model).await?;
        Ok(Response::new(pb::CreateModelResponse { model: Some(self.model_proto(&model)) }))
    }

    async fn get_model(&self, request: Request<pb::GetModelRequest>) -> Result<Response<pb::GetModelResponse>, Status> {
        let mut v = Violations::new();
        let id = validate::model_name(&mut v, "name", &request.get_ref().name);
        check(v)?;
        let model = self.service.get_model(&id).await?;
        Ok(Response::new(pb::GetModelResponse { model: Some(self.model_proto(&model)) }))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let page = validate::page(&mut v, req.page_size, &req.page_token, "models");
        check(v)?;
        let page = self.service.list_models(&page).await?;
        Ok(Response::new(pb::ListModelsResponse {
            models: page.items.iter().map(|m| self.model_proto(m)).collect(),
            next_page_token: next_token(&page, "models"),
        }))
    }

    async fn update_model(
        &self,
        request: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::UpdateModelResponse>, Status> {
        let actor = actor(request.metadata());
        let req = request.into_inner();
        let input = req.model.unwrap_or_default();
        let mut v = Violations::new();
        let id = validate::model_name(&mut v, "model.name", &input.name);
        let paths = validate::update_mask(&mut v, req.update_mask.as_ref(), MASK);
        let mut patch = ModelPatch::default();
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    patch.display_name =
                        Some(validate::text(&mut v, "model.display_name", &input.display_name, MAX_DISPLAY_NAME))
                }
                "capability" => {
                    patch.capability = Some(validate::capability(&mut v, "model.capability", input.capability))
                }
                "input_price" => {
                    patch.input_price = Some(validate::credits(&mut v, "model.input_price", input.input_price))
                }
                "output_price" => {
                    patch.output_price = Some(validate::credits(&mut v, "model.output_price", input.output_price))
                }
                "cached_input_price" => {
                    patch.cached_input_price =
                        Some(validate::optional_credits(&mut v, "model.cached_input_price", input.cached_input_price))
                }
                _ => {} // update_mask admits only the paths above
            }
        }
        check(v)?;
        let model = self.service.update_model(&actor, &id, &patch, paths).await?;
        Ok(Response::new(pb::UpdateModelResponse { model: Some(self.model_proto(&model)) }))
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let actor = actor(request.metadata());
        let mut v = Violations::new();
        let id = validate::model_name(&mut v, "name", &request.get_ref().name);
        check(v)?;
        self.service.delete_model(&actor, &id).await?;
        Ok(Response::new(pb::DeleteModelResponse {}))
    }
}
