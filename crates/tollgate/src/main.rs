use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate::cli::{
    AuthzArgs, Cli, Command, KeysArgs, MeteringArgs, MeteringCommand, SecretArgs, ServeArgs, ServiceKind,
};
use tollgate::{
    AuthzServeConfig, AuthzSettings, DevConfig, KeysServeConfig, KeysSettings, MeteringServeConfig, MeteringSettings,
    ReconcileConfig, Secrets, dev, server, telemetry,
};
use tollgate_authz_service::FrontDoorSettings;
use tollgate_authz_service::llm_request::ReadSettings;
use tollgate_core::clock::SystemClock;
use tollgate_state::redis::RedisConfig;

/// mimalloc: the request path allocates many small, short-lived buffers, which it serves
/// markedly faster than the system allocator (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format, cli.command.service_name())?;
    let outcome = run(cli).await;
    telemetry.shutdown().await;
    outcome
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    cli.load_secret_files()?;
    let shutdown = CancellationToken::new();
    server::cancel_on_signal(shutdown.clone());
    match cli.command {
        Command::Dev(args) => {
            let secrets = Secrets {
                admin_token: match args.secrets.admin_token.clone() {
                    Some(token) => token,
                    None => dev::load_or_generate(&args.data_dir, "admin-token")?,
                },
                key_pepper: match args.secrets.key_pepper.clone() {
                    Some(pepper) => pepper,
                    None => dev::load_or_generate(&args.data_dir, "key-pepper")?,
                },
                // Every service is in this process: none calls the keys service over gRPC.
                service_token: args.secrets.service_token.clone(),
            };
            let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
            let address = listener.local_addr()?;
            println!("Tollgate dev: every service on {address} (SQLite in {})", args.data_dir.display());
            println!("admin token: {}", secrets.admin_token);
            println!("try: grpcurl -plaintext -H 'authorization: Bearer {}' {address} list", secrets.admin_token);
            let config = DevConfig {
                data_dir: args.data_dir,
                secrets,
                keys: keys_settings(&args.keys),
                authz: dev_authz_settings(&args.authz),
                metering: metering_settings(&args.metering, &args.authz, &args.keys),
                drain: args.shutdown_drain,
                http_listen: Some(args.http_listen),
                tls: args.tls.server_tls(),
                clock: Arc::new(SystemClock),
            };
            tollgate::run_dev(listener, config, shutdown).await
        }
        Command::Serve(args) => serve(args, shutdown).await,
        Command::Migrate(args) => {
            tollgate::migrate(&args.database_url).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Metering(MeteringCommand::Reconcile(args)) => {
            let config = ReconcileConfig {
                database_url: args.database_url,
                redis: RedisConfig {
                    url: args.redis_url,
                    prefix: args.redis_prefix,
                    cluster: args.redis_cluster,
                    op_timeout: Duration::from_secs(5),
                },
                time_zone: args.time_zone,
            };
            let done = tollgate::reconcile(config).await?;
            tracing::info!(accounts = done.accounts, keys = done.keys, "counters rebuilt from the ledger");
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let secrets = required_secrets(&args.secrets)?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, service = ?args.service, "serving");
    let redis = |default_timeout: Duration| RedisConfig {
        url: args.redis_url.clone(),
        prefix: args.redis_prefix.clone(),
        cluster: args.redis_cluster,
        op_timeout: args.redis_timeout.unwrap_or(default_timeout),
    };
    match args.service {
        ServiceKind::Keys => {
            let config = KeysServeConfig {
                database_url: args
                    .database_url
                    .clone()
                    .context("TOLLGATE_DATABASE_URL (--database-url) is required")?,
                db_max_connections: args.db_max_connections,
                db_acquire_timeout: args.db_acquire_timeout,
                migrate_on_start: args.migrate_on_start,
                redis: redis(Duration::from_secs(1)),
                secrets,
                keys: KeysSettings { readiness_grace: args.readiness_grace, ..keys_settings(&args.keys) },
                drain: args.shutdown_drain,
                http_listen: Some(args.http_listen),
                tls: args.tls.server_tls(),
            };
            tollgate::run_keys(listener, config, shutdown).await
        }
        ServiceKind::Authz => {
            let config = AuthzServeConfig {
                redis: redis(Duration::from_millis(50)),
                keys_url: args.keys_url.clone().context("TOLLGATE_KEYS_URL (--keys-url) is required")?,
                secrets,
                authz: authz_settings(&args.authz),
                drain: args.shutdown_drain,
                http_listen: Some(args.http_listen),
                tls: args.tls.server_tls(),
                keys_ca: args.keys_ca.clone(),
                clock: Arc::new(SystemClock),
            };
            tollgate::run_authz(listener, config, shutdown).await
        }
        ServiceKind::Metering => {
            let config = MeteringServeConfig {
                database_url: args
                    .database_url
                    .clone()
                    .context("TOLLGATE_DATABASE_URL (--database-url) is required")?,
                db_max_connections: args.db_max_connections,
                db_acquire_timeout: args.db_acquire_timeout,
                migrate_on_start: args.migrate_on_start,
                redis: redis(Duration::from_secs(2)),
                keys_url: args.keys_url.clone().context("TOLLGATE_KEYS_URL (--keys-url) is required")?,
                secrets,
                metering: MeteringSettings {
                    readiness_grace: args.readiness_grace,
                    ..metering_settings(&args.metering, &args.authz, &args.keys)
                },
                drain: args.shutdown_drain,
                http_listen: Some(args.http_listen),
                tls: args.tls.server_tls(),
                keys_ca: args.keys_ca.clone(),
                clock: Arc::new(SystemClock),
            };
            tollgate::run_metering(listener, config, shutdown).await
        }
    }
}

fn required_secrets(secrets: &SecretArgs) -> anyhow::Result<Secrets> {
    let admin_token = secrets.admin_token.clone().context("TOLLGATE_ADMIN_TOKEN (--admin-token) is required")?;
    anyhow::ensure!(admin_token.len() >= 16, "TOLLGATE_ADMIN_TOKEN must be at least 16 characters");
    let key_pepper = secrets.key_pepper.clone().context("TOLLGATE_KEY_PEPPER (--key-pepper) is required")?;
    let service_token = secrets.service_token.clone();
    if let Some(token) = &service_token {
        anyhow::ensure!(token.len() >= 16, "TOLLGATE_SERVICE_TOKEN must be at least 16 characters");
        anyhow::ensure!(*token != admin_token, "TOLLGATE_SERVICE_TOKEN must differ from the admin token");
    }
    Ok(Secrets { admin_token, key_pepper, service_token })
}

fn keys_settings(args: &KeysArgs) -> KeysSettings {
    KeysSettings {
        max_rpm: args.max_rpm,
        max_tpm: args.max_tpm,
        credits_per_usd: args.credits_per_usd,
        rotation_grace: args.rotation_grace,
        ..KeysSettings::default()
    }
}

fn metering_settings(args: &MeteringArgs, authz: &AuthzArgs, keys: &KeysArgs) -> MeteringSettings {
    MeteringSettings {
        workers: args.workers,
        batch_size: usize::from(args.batch_size),
        claim_idle: args.claim_idle,
        max_deliveries: args.max_deliveries,
        time_zone: authz.time_zone.clone(),
        gateway_token: authz.gateway_token.clone(),
        key_balance_per_minute: args.key_balance_rpm,
        credits_per_usd: keys.credits_per_usd,
        usage_streams: usize::from(args.usage_streams),
        ..MeteringSettings::default()
    }
}

/// `dev`'s proxies run on the same machine: unless told otherwise, forward-auth believes the
/// client address a loopback proxy passes on.
fn dev_authz_settings(args: &AuthzArgs) -> AuthzSettings {
    let mut settings = authz_settings(args);
    if settings.trusted_proxies.is_empty() {
        settings.trusted_proxies = ["127.0.0.0/8", "::1/128"].iter().filter_map(|net| net.parse().ok()).collect();
    }
    settings
}

fn authz_settings(args: &AuthzArgs) -> AuthzSettings {
    AuthzSettings {
        gateway_token: args.gateway_token.clone(),
        allow_unauthenticated: args.allow_unauthenticated_authorize,
        time_zone: args.time_zone.clone(),
        hold_ttl: args.hold_ttl,
        cache_ttl: args.key_cache_ttl,
        negative_cache_ttl: args.unknown_key_cache_ttl,
        cache_capacity: args.key_cache_capacity,
        on_redis_error: args.on_redis_error,
        bench_endpoints: args.bench_endpoints,
        grpc_metrics: !args.no_grpc_metrics,
        front_door: FrontDoorSettings {
            read: ReadSettings {
                model_header: args.model_header.to_ascii_lowercase(),
                default_estimated_tokens: args.default_estimated_tokens,
            },
            strip_key: !args.forward_client_key,
        },
        trusted_proxies: args.trusted_proxies.clone(),
    }
}
