//! Assembling the metering service.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tollgate_core::KeyPepper;
use tollgate_core::clock::Clock;
use tollgate_core::windows::Calendar;
use tollgate_metering_service::{MeteringAdapters, MeteringConfig, MeteringServer, WorkerSettings};

use crate::Secrets;
use crate::server::Services;

/// Settings of the metering service.
#[derive(Debug, Clone)]
pub struct MeteringSettings {
    /// Stream workers in this process.
    pub workers: usize,
    /// Most reports per batch (one database transaction).
    pub batch_size: usize,
    /// How long an unacknowledged report waits before another worker takes it over.
    pub claim_idle: Duration,
    /// Deliveries after which a report that cannot be applied is dead-lettered.
    pub max_deliveries: u32,
    /// IANA zone of the day and month windows (the same as authz's).
    pub time_zone: String,
    /// When set, usage reports may come with this bearer token instead of the admin token.
    pub gateway_token: Option<String>,
    /// `GetKeyBalance` calls each key may make per minute on one replica (0: no limit).
    pub key_balance_per_minute: u32,
    /// Credits per US dollar, for the USD the key holder's HTTP API shows (the keys service's).
    pub credits_per_usd: i64,
    /// Redis Streams the usage queue spreads over (production); only ever raise it.
    pub usage_streams: usize,
    /// How long Postgres or Redis may not answer before readiness says NOT_SERVING (`serve`).
    pub readiness_grace: Duration,
}

impl Default for MeteringSettings {
    fn default() -> Self {
        Self {
            workers: 4,
            batch_size: 1000,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            time_zone: "UTC".into(),
            gateway_token: None,
            key_balance_per_minute: 60,
            credits_per_usd: tollgate_core::money::DEFAULT_CREDITS_PER_USD,
            usage_streams: 1,
            readiness_grace: crate::DEFAULT_READINESS_GRACE,
        }
    }
}

/// Builds the metering service, adds it to `services` and starts its workers.
pub(crate) fn add(
    services: &mut Services,
    adapters: MeteringAdapters,
    secrets: &Secrets,
    settings: &MeteringSettings,
    clock: Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<MeteringServer>> {
    let config = MeteringConfig {
        calendar: Calendar::new(&settings.time_zone).context("TOLLGATE_TIME_ZONE")?,
        clock,
        pepper: KeyPepper::new(secrets.key_pepper.as_bytes().to_vec()).context("TOLLGATE_KEY_PEPPER")?,
        admin_token: secrets.admin_token.clone(),
        gateway_token: settings.gateway_token.clone(),
        workers: WorkerSettings {
            batch_size: settings.batch_size.clamp(1, 1000),
            max_deliveries: settings.max_deliveries.max(1),
            ..WorkerSettings::default()
        },
        key_balance_per_minute: settings.key_balance_per_minute,
        credits_per_usd: settings.credits_per_usd,
    };
    let server = Arc::new(MeteringServer::new(config, adapters));
    server.add_services(&mut services.routes);
    services.names.extend(MeteringServer::service_names());
    services.http_routes = std::mem::take(&mut services.http_routes).merge(server.http_routes());
    server.register_metrics(&mut services.registry);
    let name = format!("worker-{}", tollgate_core::ids::new_id());
    server.spawn_workers(&name, settings.workers, shutdown);
    Ok(server)
}
