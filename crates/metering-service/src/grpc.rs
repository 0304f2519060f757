//! The gRPC adapter: authenticates, checks and converts each request, calls the
//! [`Recorder`], [`Credits`] or [`Queries`], converts the answer.

use std::sync::Arc;

use tollgate_auth::{AnyBearer, BearerAuth, actor, bearer_token};
use tollgate_core::Violations;
use tollgate_core::clock::Clock;
use tollgate_proto::metering::v1 as pb;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::credits::Credits;
use crate::error::MeteringError;
use crate::queries::Queries;
use crate::recorder::Recorder;
use crate::validate;

/// `tollgate.metering.v1.MeteringService`. Every RPC takes the admin token; usage reports
/// also take the gateway's token when one is configured, so the gateway needs no admin power.
#[derive(Clone)]
pub struct MeteringGrpc {
    recorder: Arc<Recorder>,
    credits: Arc<Credits>,
    queries: Arc<Queries>,
    /// Gives a report without end time the time it arrived.
    clock: Arc<dyn Clock>,
    admin: BearerAuth,
    /// Usage reports: the admin token, or the gateway's.
    reporters: AnyBearer,
}

impl MeteringGrpc {
    pub fn new(
        recorder: Arc<Recorder>,
        credits: Arc<Credits>,
        queries: Arc<Queries>,
        clock: Arc<dyn Clock>,
        admin: BearerAuth,
        gateway: Option<BearerAuth>,
    ) -> Self {
        let reporters = AnyBearer::new([admin.clone()].into_iter().chain(gateway));
        Self { recorder, credits, queries, clock, admin, reporters }
    }

    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.admin.check(request.metadata())
    }

    fn reporter<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.reporters.check(request.metadata())
    }

    /// Whether a presented token may report usage (the HTTP adapter's check).
    pub(crate) fn accepts_reporter(&self, presented: &str) -> bool {
        self.reporters.accepts(presented)
    }

    /// Checks reports, each named by `field`, and records them all or none: the one path of
    /// `RecordUsage`, `BatchRecordUsage` and HTTP `POST /v1/usage`.
    pub(crate) async fn record(
        &self,
        reports: &[pb::UsageReport],
        field: impl Fn(usize) -> String,
    ) -> Result<usize, MeteringError> {
        let now = self.clock.now_micros();
        let mut v = Violations::new();
        let checked: Vec<_> =
            reports.iter().enumerate().filter_map(|(i, r)| validate::report(&mut v, &field(i), r, now)).collect();
        v.into_result()?;
        self.recorder.record(&checked, field).await
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
        self.record(&[report], |_| "report".to_owned()).await?;
        Ok(Response::new(pb::RecordUsageResponse {}))
    }

    async fn batch_record_usage(
        &self,
        request: Request<pb::BatchRecordUsageRequest>,
    ) -> Result<Response<pb::BatchRecordUsageResponse>, Status> {
        self.reporter(&request)?;
        let reports = request.into_inner().reports;
        validate::batch_size(reports.len())?;
        let accepted = self.record(&reports, |i| format!("reports[{i}]")).await?;
        Ok(Response::new(pb::BatchRecordUsageResponse { accepted: accepted as i32 }))
    }

    async fn list_usage(
        &self,
        request: Request<pb::ListUsageRequest>,
    ) -> Result<Response<pb::ListUsageResponse>, Status> {
        self.admin(&request)?;
        let (filter, after, limit) = validate::list_usage(request.get_ref())?;
        let (entries, more) = self.queries.list_usage(&filter, after.as_ref(), limit).await?;
        let last = entries.last().map(|e| (e.end_time, e.request_id.as_str()));
        let next_page_token = validate::next_page_token("usage", more, last);
        Ok(Response::new(pb::ListUsageResponse {
            records: entries.into_iter().map(convert::record).collect(),
            next_page_token,
        }))
    }

    async fn get_usage_summary(
        &self,
        request: Request<pb::GetUsageSummaryRequest>,
    ) -> Result<Response<pb::GetUsageSummaryResponse>, Status> {
        self.admin(&request)?;
        let (scope, start, end, granularity) =
            validate::usage_summary(request.get_ref()).map_err(MeteringError::from)?;
        let summary =
            self.queries.usage_summary(&scope, start, end, granularity, request.get_ref().split_by_model).await?;
        Ok(Response::new(convert::summary(summary)))
    }

    async fn add_credits(
        &self,
        request: Request<pb::AddCreditsRequest>,
    ) -> Result<Response<pb::AddCreditsResponse>, Status> {
        self.admin(&request)?;
        let actor = actor(request.metadata());
        let grant = validate::grant(request.into_inner(), actor).map_err(MeteringError::from)?;
        let balance = self.credits.add(grant).await?;
        Ok(Response::new(pb::AddCreditsResponse { balance: Some(convert::account_balance(balance)) }))
    }

    async fn get_account_balance(
        &self,
        request: Request<pb::GetAccountBalanceRequest>,
    ) -> Result<Response<pb::GetAccountBalanceResponse>, Status> {
        self.admin(&request)?;
        let mut v = Violations::new();
        let account_id = validate::account(&mut v, "account", &request.get_ref().account);
        v.into_result().map_err(MeteringError::from)?;
        let balance = self.queries.account_balance(&account_id).await?;
        Ok(Response::new(pb::GetAccountBalanceResponse { balance: Some(convert::account_balance(balance)) }))
    }

    async fn list_credit_grants(
        &self,
        request: Request<pb::ListCreditGrantsRequest>,
    ) -> Result<Response<pb::ListCreditGrantsResponse>, Status> {
        self.admin(&request)?;
        let request = request.get_ref();
        let mut v = Violations::new();
        let account_id = validate::account(&mut v, "account", &request.account);
        let limit = validate::page_size(&mut v, request.page_size);
        let after = validate::after_token(&mut v, "creditGrants", &request.page_token, validate::time_and_id);
        v.into_result().map_err(MeteringError::from)?;
        let (grants, more) = self.queries.credit_grants(&account_id, after, limit).await?;
        let last = grants.last().map(|g| (g.time, g.request_id.as_str()));
        let next_page_token = validate::next_page_token("creditGrants", more, last);
        Ok(Response::new(pb::ListCreditGrantsResponse {
            grants: grants.into_iter().map(convert::credit_grant).collect(),
            next_page_token,
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.admin(&request)?;
        let request = request.get_ref();
        let mut v = Violations::new();
        let limit = validate::page_size(&mut v, request.page_size);
        let after = validate::after_token(&mut v, "deadLetters", &request.page_token, |id| Some(id.to_owned()));
        v.into_result().map_err(MeteringError::from)?;
        let (letters, more) = self.queries.dead_letters(after.as_deref(), limit).await?;
        let next_page_token = match (more, letters.last()) {
            (true, Some(last)) => tollgate_core::page_token::encode("deadLetters", &last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.into_iter().map(convert::dead_letter).collect(),
            next_page_token,
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        self.admin(&request)?;
        let ids = &request.get_ref().ids;
        validate::dead_letter_ids(ids).map_err(MeteringError::from)?;
        let replayed = self.recorder.replay(ids).await?;
        Ok(Response::new(pb::ReplayDeadLettersResponse { replayed: replayed as i32 }))
    }
}

/// `tollgate.metering.v1.KeyHolderService`: authenticated by the API key itself.
#[derive(Clone)]
pub struct KeyHolderGrpc {
    queries: Arc<Queries>,
}

impl KeyHolderGrpc {
    pub fn new(queries: Arc<Queries>) -> Self {
        Self { queries }
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
            .and_then(bearer_token)
            .ok_or(MeteringError::Unauthenticated("missing `authorization: Bearer sk-…` metadata"))?;
        let days = validate::balance_days(request.get_ref().days).map_err(MeteringError::from)?;
        Ok(Response::new(convert::key_balance(self.queries.key_balance(secret, days).await?)))
    }
}
