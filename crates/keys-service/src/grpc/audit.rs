use tollgate_core::{Violations, names, page_token};
use tollgate_proto::keys::v1 as pb;
use tollgate_store::keys::AuditFilter;
use tonic::{Request, Response, Status};

use super::{KeysGrpc, check};
use crate::convert;
use crate::validate;

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for KeysGrpc {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let account_id = (!req.parent.is_empty()).then(|| validate::account_name(&mut v, "parent", &req.parent));
        let page = validate::page(&mut v, req.page_size, &req.page_token, "audit");
        let before_id = match page.after.as_deref().map(str::parse::<i64>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                v.add("page_token", "is not a token this list returned");
                None
            }
        };
        check(v)?;
        let filter = AuditFilter {
            account_id,
            resource: (!req.resource.is_empty()).then_some(req.resource),
            before_id,
            limit: page.limit,
        };
        let events = self.service.list_audit_events(&filter).await?;
        let next_page_token = match events.last() {
            Some(last) if events.len() == page.limit as usize => page_token::encode("audit", &last.id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events
                .into_iter()
                .map(|event| pb::AuditEvent {
                    id: event.id,
                    actor: event.entry.actor,
                    action: event.entry.action,
                    resource: event.entry.resource,
                    account: event.entry.account_id.as_deref().map(names::account).unwrap_or_default(),
                    changed_fields: event.entry.changed_fields,
                    time: Some(convert::timestamp(event.entry.time)),
                })
                .collect(),
            next_page_token,
        }))
    }
}
