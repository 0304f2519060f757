//! Assembling the authz service.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tollgate_authz_service::bench::BenchGrpc;
use tollgate_authz_service::{
    AuthorizerSettings, AuthzConfig, AuthzServer, CacheTtls, FrontDoorSettings, RedisErrorPolicy,
};
use tollgate_core::KeyPepper;
use tollgate_core::clock::Clock;
use tollgate_core::windows::Calendar;
use tollgate_keys_client::KeyStateApi;
use tollgate_ports::counters::CallCounters;
use tollgate_ports::key_state::{InvalidationBus, KeyStateCache};
use tollgate_proto::bench::v1::bench_service_server::BenchServiceServer;

use crate::Secrets;
use crate::server::Services;

/// Settings of the authz service.
#[derive(Debug, Clone)]
pub struct AuthzSettings {
    /// A token Authorize accepts (`authorization: Bearer <gateway token>`) besides the admin
    /// token; the gateway's, which can do nothing else.
    pub gateway_token: Option<String>,
    /// With no gateway token set, Authorize needs no token at all. `tollgate dev` on a
    /// loopback address is open regardless.
    pub allow_unauthenticated: bool,
    /// IANA zone of the daily and monthly budget windows.
    pub time_zone: String,
    /// How long a hold lasts when no usage report settles it.
    pub hold_ttl: Duration,
    /// How long a known key's state is cached in process (invalidations drop it sooner).
    pub cache_ttl: Duration,
    /// How long an unknown key is remembered as unknown.
    pub negative_cache_ttl: Duration,
    /// Most secrets cached in process.
    pub cache_capacity: u64,
    pub on_redis_error: RedisErrorPolicy,
    /// Also serve `tollgate.bench.v1.BenchService`, the benchmark's baselines.
    pub bench_endpoints: bool,
    /// Count and log every RPC (the gRPC metrics layer and the access log); off only to
    /// measure what they cost (`tollgate-bench authz`).
    pub grpc_metrics: bool,
    /// How Envoy's `Check` and forward-auth read calls and answer.
    pub front_door: FrontDoorSettings,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` forward-auth believes.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// How long a hold lasts when no usage report settles it, unless configured: the one source
/// of `--hold-ttl`'s default.
pub const DEFAULT_HOLD_TTL: &str = "10m";

impl Default for AuthzSettings {
    fn default() -> Self {
        Self {
            gateway_token: None,
            allow_unauthenticated: false,
            time_zone: "UTC".into(),
            hold_ttl: humantime::parse_duration(DEFAULT_HOLD_TTL).expect("a valid duration"),
            cache_ttl: Duration::from_secs(30),
            negative_cache_ttl: Duration::from_secs(30),
            cache_capacity: 1_000_000,
            on_redis_error: RedisErrorPolicy::default(),
            bench_endpoints: false,
            grpc_metrics: true,
            front_door: FrontDoorSettings::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Builds the authz service over its adapters and adds it to `services`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn add(
    services: &mut Services,
    shared: Arc<dyn KeyStateCache>,
    bus: Arc<dyn InvalidationBus>,
    counters: Arc<dyn CallCounters>,
    keys: Arc<dyn KeyStateApi>,
    secrets: &Secrets,
    settings: &AuthzSettings,
    clock: Arc<dyn Clock>,
    open_authorize: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<AuthzServer>> {
    let pepper = KeyPepper::new(secrets.key_pepper.as_bytes().to_vec()).context("TOLLGATE_KEY_PEPPER")?;
    let calendar = Calendar::new(&settings.time_zone).context("TOLLGATE_TIME_ZONE")?;
    services.grpc_metrics_off = !settings.grpc_metrics;
    if settings.bench_endpoints {
        let bench = BenchGrpc::new(pepper.clone(), counters.clone(), clock.clone(), calendar.clone());
        services.routes.add_service(BenchServiceServer::new(bench));
    }
    let config = AuthzConfig {
        settings: AuthorizerSettings {
            pepper,
            clock,
            calendar,
            hold_ttl_ms: settings.hold_ttl.as_millis() as i64,
            on_redis_error: settings.on_redis_error,
        },
        cache_capacity: settings.cache_capacity,
        cache_ttls: CacheTtls {
            known: settings.cache_ttl,
            unknown: settings.negative_cache_ttl,
            unsettled: Duration::from_millis(200),
        },
        gateway_token: settings.gateway_token.clone(),
        open_authorize: open_authorize || settings.allow_unauthenticated,
        admin_token: secrets.admin_token.clone(),
        front_door: settings.front_door.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
    };
    let authz = Arc::new(AuthzServer::new(config, shared, bus, counters, keys).await);
    authz.add_services(&mut services.routes);
    services.descriptor_sets.push(tollgate_proto::ENVOY_FILE_DESCRIPTOR_SET);
    services.http_routes = std::mem::take(&mut services.http_routes).merge(authz.http_routes());
    services.names.extend(AuthzServer::service_names());
    authz.register_metrics(&mut services.registry);
    authz.spawn_background(shutdown.child_token());
    Ok(authz)
}
