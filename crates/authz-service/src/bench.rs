//! The benchmark's baselines (`tollgate.bench.v1.BenchService`), served only with
//! `tollgate serve authz --bench-endpoints`: a no-op with Authorize-sized messages, and a
//! probe that does only the key hash and the one counter round trip an allowed Authorize
//! makes, with the same script and the same kind of limits as the benchmark's keys.

use std::sync::Arc;

use tollgate_core::KeyPepper;
use tollgate_core::clock::Clock;
use tollgate_core::counters::{CounterLimits, CounterRequest};
use tollgate_core::windows::Calendar;
use tollgate_ports::counters::{CallCounters, CounterCall};
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::bench::v1 as pb;
use tonic::{Request, Response, Status};

/// The limits of the benchmark's counted keys: everything on, nothing ever reached.
pub fn probe_limits() -> CounterLimits {
    CounterLimits {
        quota: Some(1_000_000_000_000_000),
        account_floor: None,
        daily: Some(1_000_000_000_000_000),
        monthly: Some(1_000_000_000_000_000),
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000_000),
    }
}

/// `tollgate.bench.v1.BenchService`.
#[derive(Clone)]
pub struct BenchGrpc {
    pepper: KeyPepper,
    counters: Arc<dyn CallCounters>,
    clock: Arc<dyn Clock>,
    calendar: Calendar,
    response: authz::AuthorizeResponse,
}

impl BenchGrpc {
    pub fn new(pepper: KeyPepper, counters: Arc<dyn CallCounters>, clock: Arc<dyn Clock>, calendar: Calendar) -> Self {
        let response = authz::AuthorizeResponse {
            decision: authz::Decision::Allow as i32,
            message: "allowed".into(),
            identity: Some(authz::KeyIdentity {
                key: "accounts/bench-00/keys/06h0aaaaaaaaaaaa".into(),
                application: "accounts/bench-00/applications/bench".into(),
                account: "accounts/bench-00".into(),
                group: "groups/bench".into(),
                price_multiplier: "1".into(),
            }),
            held_credits: 300,
            ..Default::default()
        };
        Self { pepper, counters, clock, calendar, response }
    }
}

#[tonic::async_trait]
impl pb::bench_service_server::BenchService for BenchGrpc {
    async fn noop(&self, _request: Request<pb::NoopRequest>) -> Result<Response<pb::NoopResponse>, Status> {
        Ok(Response::new(pb::NoopResponse { response: Some(self.response.clone()) }))
    }

    async fn probe(&self, request: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let call = request.into_inner().request.unwrap_or_default();
        let hash = self.pepper.hash(&call.api_key);
        let key_id = format!("{:02x}{:02x}{:02x}{:02x}", hash.0[0], hash.0[1], hash.0[2], hash.0[3]);
        let account_id = format!("probe-{:02}", hash.0[4] % 100);
        let now = self.clock.now_micros();
        let windows = self.calendar.windows(now);
        let counter_call = CounterCall {
            account_id: &account_id,
            key_id: &key_id,
            request_id: &call.request_id,
            request: CounterRequest { limits: probe_limits(), now_ms: now as f64 / 1000.0, tokens: 100, cost: 300 },
            windows: &windows,
            hold_ttl_ms: 10_000,
        };
        self.counters.authorize(&counter_call).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::ProbeResponse { response: Some(self.response.clone()) }))
    }
}
