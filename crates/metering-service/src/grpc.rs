//! Thin gRPC handlers: authentication and conversion around [`crate::MeteringCore`].

use std::sync::Arc;

use tollgate_auth::BearerAuth;
use tollgate_proto::metering::v1 as pb;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::MeteringCore;
use crate::error::MeteringError;

/// Optional metadata naming the person behind an admin call, for the audit trail.
const ACTOR_HEADER: &str = "x-tollgate-actor";

fn actor(metadata: &MetadataMap) -> String {
    metadata
        .get(ACTOR_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|name| !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .unwrap_or("admin")
        .to_owned()
}

/// `tollgate.metering.v1.MeteringService`. Every RPC takes the admin token; usage reports
/// also take the gateway's token when one is configured, so the gateway needs no admin power.
#[derive(Clone)]
pub struct MeteringGrpc {
    core: Arc<MeteringCore>,
    admin: BearerAuth,
    gateway: Option<BearerAuth>,
}

impl MeteringGrpc {
    pub fn new(core: Arc<MeteringCore>, admin: BearerAuth, gateway: Option<BearerAuth>) -> Self {
        Self { core, admin, gateway }
    }

    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.admin.check(request.metadata())
    }

    /// The admin token, or the gateway's.
    fn reporter<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match (self.admin.check(request.metadata()), &self.gateway) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(gateway)) => gateway.check(request.metadata()),
            (Err(status), None) => Err(status),
        }
    }
}

#[tonic::async_trait]
impl pb::metering_service_server::MeteringService for MeteringGrpc {
    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        self.reporter(&request)?;
        let report = request.into_inner().report.ok_or_else(|| MeteringError::invalid("report", "is required"))?;
        self.core.record(vec![report], "report").await?;
        Ok(Response::new(pb::RecordUsageResponse {}))
    }

    async fn batch_record_usage(
        &self,
        request: Request<pb::BatchRecordUsageRequest>,
    ) -> Result<Response<pb::BatchRecordUsageResponse>, Status> {
        self.reporter(&request)?;
        let accepted = self.core.record(request.into_inner().reports, "reports").await?;
        Ok(Response::new(pb::BatchRecordUsageResponse { accepted: accepted as i32 }))
    }

    async fn list_usage(
        &self,
        request: Request<pb::ListUsageRequest>,
    ) -> Result<Response<pb::ListUsageResponse>, Status> {
        self.admin(&request)?;
        Ok(Response::new(self.core.list_usage(request.get_ref()).await?))
    }

    async fn get_usage_summary(
        &self,
        request: Request<pb::GetUsageSummaryRequest>,
    ) -> Result<Response<pb::GetUsageSummaryResponse>, Status> {
        self.admin(&request)?;
        Ok(Response::new(self.core.usage_summary(request.get_ref()).await?))
    }

    async fn add_credits(
        &self,
        request: Request<pb::AddCreditsRequest>,
    ) -> Result<Response<pb::AddCreditsResponse>, Status> {
        self.admin(&request)?;
        let actor = actor(request.metadata());
        let balance = self.core.add_credits(request.into_inner(), &actor).await?;
        Ok(Response::new(pb::AddCreditsResponse { balance: Some(balance) }))
    }

    async fn get_account_balance(
        &self,
        request: Request<pb::GetAccountBalanceRequest>,
    ) -> Result<Response<pb::GetAccountBalanceResponse>, Status> {
        self.admin(&request)?;
        let balance = self.core.account_balance(&request.get_ref().account).await?;
        Ok(Response::new(pb::GetAccountBalanceResponse { balance: Some(balance) }))
    }

    async fn list_credit_grants(
        &self,
        request: Request<pb::ListCreditGrantsRequest>,
    ) -> Result<Response<pb::ListCreditGrantsResponse>, Status> {
        self.admin(&request)?;
        Ok(Response::new(self.core.credit_grants(request.get_ref()).await?))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.admin(&request)?;
        Ok(Response::new(self.core.dead_letters(request.get_ref()).await?))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        self.admin(&request)?;
        let replayed = self.core.replay(&request.get_ref().ids).await?;
        Ok(Response::new(pb::ReplayDeadLettersResponse { replayed: replayed as i32 }))
    }
}

/// `tollgate.metering.v1.KeyHolderService`: authenticated by the API key itself.
#[derive(Clone)]
pub struct KeyHolderGrpc {
    core: Arc<MeteringCore>,
}

impl KeyHolderGrpc {
    pub fn new(core: Arc<MeteringCore>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl pb::key_holder_service_server::KeyHolderService for KeyHolderGrpc {
    async fn get_key_balance(
        &self,
        request: Request<pb::GetKeyBalanceRequest>,
    ) -> Result<Response<pb::GetKeyBalanceResponse>, Status> {
        let secret = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(MeteringError::Unauthenticated("missing `authorization: Bearer sk-…` metadata"))?
            .to_owned();
        Ok(Response::new(self.core.key_balance(&secret, request.get_ref().days).await?))
    }
}
