//! Command-line flags. Every flag has a `TOLLGATE_…` environment variable; `--help` shows both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::telemetry::LogFormat;

/// Tollgate: the API-key control plane of an LLM API platform.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log line format. Filter with RUST_LOG (default: info).
    #[arg(long, global = true, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs every service on one port over embedded SQLite files and in-process state.
    Dev(DevArgs),
    /// Runs one service against Postgres and Redis, as in production.
    Serve(ServeArgs),
    /// Applies database migrations (run it as a Kubernetes Job before rolling out).
    Migrate(MigrateArgs),
    /// Metering maintenance.
    #[command(subcommand)]
    Metering(MeteringCommand),
}

impl Command {
    /// The `service.name` its traces carry unless `OTEL_SERVICE_NAME` says otherwise.
    pub fn service_name(&self) -> &'static str {
        match self {
            Command::Dev(_) => "tollgate",
            Command::Serve(args) => match args.service {
                ServiceKind::Keys => "tollgate-keys",
                ServiceKind::Authz => "tollgate-authz",
                ServiceKind::Metering => "tollgate-metering",
            },
            Command::Migrate(_) => "tollgate-migrate",
            Command::Metering(_) => "tollgate-reconcile",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum MeteringCommand {
    /// Rebuilds the Redis counters authz reads (balances, each key's spend today, this month
    /// and in its life) from the ledger in Postgres: the way back after Redis lost its data.
    /// Workers may keep running: settling waits for each account while it is rebuilt.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Postgres URL.
    #[arg(long, env = "TOLLGATE_DATABASE_URL")]
    pub database_url: String,
    /// Redis URL, e.g. redis://redis:6379; for a Redis Cluster, seed nodes separated by
    /// commas (redis://node-1:6379,redis://node-2:6379).
    #[arg(long, env = "TOLLGATE_REDIS_URL")]
    pub redis_url: String,
    /// The URL is a Redis Cluster's seed node (implied by more than one URL).
    #[arg(long, env = "TOLLGATE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "TOLLGATE_REDIS_PREFIX", default_value = "tollgate")]
    pub redis_prefix: String,
    /// IANA time zone of daily and monthly budgets (the same for authz and metering).
    #[arg(long, env = "TOLLGATE_TIME_ZONE", default_value = "UTC")]
    pub time_zone: String,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the HTTP listener (`GET /metrics`).
    #[arg(long, env = "TOLLGATE_HTTP_LISTEN", default_value = "127.0.0.1:9464")]
    pub http_listen: SocketAddr,
    /// Directory of the SQLite file and of the generated admin token and key pepper.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = ".tollgate")]
    pub data_dir: PathBuf,
    /// How long health reports NOT_SERVING before the server stops on SIGTERM.
    #[arg(long, env = "TOLLGATE_SHUTDOWN_DRAIN", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_drain: Duration,
    #[command(flatten)]
    pub secrets: SecretArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub keys: KeysArgs,
    #[command(flatten)]
    pub authz: AuthzArgs,
    #[command(flatten)]
    pub metering: MeteringArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service to run.
    #[arg(value_enum)]
    pub service: ServiceKind,
    /// Address to listen on.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Address of the HTTP listener (`GET /metrics`).
    #[arg(long, env = "TOLLGATE_HTTP_LISTEN", default_value = "0.0.0.0:9464")]
    pub http_listen: SocketAddr,
    /// Postgres URL, e.g. postgres://tollgate@db:5432/tollgate (keys).
    #[arg(long, env = "TOLLGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Most Postgres connections this process opens.
    #[arg(long, env = "TOLLGATE_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Longest a call waits for a Postgres connection before it is UNAVAILABLE: how fast calls
    /// fail while the database is unreachable (or every connection is busy).
    #[arg(long, env = "TOLLGATE_DB_ACQUIRE_TIMEOUT", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub db_acquire_timeout: Duration,
    /// Apply migrations at start-up (otherwise run `tollgate migrate` first).
    #[arg(long, env = "TOLLGATE_MIGRATE_ON_START")]
    pub migrate_on_start: bool,
    /// Redis URL, e.g. redis://redis:6379; for a Redis Cluster, seed nodes separated by
    /// commas (redis://node-1:6379,redis://node-2:6379).
    #[arg(long, env = "TOLLGATE_REDIS_URL")]
    pub redis_url: String,
    /// The URL is a Redis Cluster's seed node (implied by more than one URL).
    #[arg(long, env = "TOLLGATE_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "TOLLGATE_REDIS_PREFIX", default_value = "tollgate")]
    pub redis_prefix: String,
    /// Upper bound of each Redis call [default: 1s for keys, 50ms for authz, well below a
    /// gateway's authorization timeout].
    #[arg(long, env = "TOLLGATE_REDIS_TIMEOUT", value_parser = humantime::parse_duration)]
    pub redis_timeout: Option<Duration>,
    /// The keys service, for authz's cache misses and metering's key and price look-ups,
    /// e.g. http://tollgate-keys:50051 (authz, metering).
    #[arg(long, env = "TOLLGATE_KEYS_URL")]
    pub keys_url: Option<String>,
    /// CA certificate (PEM) an `https://` keys service's certificate must chain to, besides
    /// the system roots (authz, metering).
    #[arg(long, env = "TOLLGATE_KEYS_CA_FILE")]
    pub keys_ca: Option<PathBuf>,
    /// How long health reports NOT_SERVING before the server stops on SIGTERM.
    #[arg(long, env = "TOLLGATE_SHUTDOWN_DRAIN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_drain: Duration,
    /// How long Postgres (keys, metering) or Redis (metering) may not answer before readiness
    /// says NOT_SERVING; it says SERVING again as soon as they answer. Authz stays SERVING,
    /// answering from its caches.
    #[arg(long, env = "TOLLGATE_READINESS_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub readiness_grace: Duration,
    #[command(flatten)]
    pub secrets: SecretArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub keys: KeysArgs,
    #[command(flatten)]
    pub authz: AuthzArgs,
    #[command(flatten)]
    pub metering: MeteringArgs,
}

/// The services `tollgate serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceKind {
    /// Accounts, applications, groups, models, keys, audit log (Postgres + Redis).
    Keys,
    /// Authorize, the hot path (Redis; the keys service for cache misses; no database).
    Authz,
    /// Usage reports, charging, balances, usage queries, and the stream workers (Postgres +
    /// Redis; the keys service for key and price look-ups).
    Metering,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Postgres URL.
    #[arg(long, env = "TOLLGATE_DATABASE_URL")]
    pub database_url: String,
}

/// TLS of the gRPC listener.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM) the gRPC listener serves TLS with; with `--tls-key`. Without
    /// both, the listener speaks plaintext HTTP/2.
    #[arg(long, env = "TOLLGATE_TLS_CERT_FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "TOLLGATE_TLS_KEY_FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) clients must present a certificate from (mutual TLS).
    #[arg(long, env = "TOLLGATE_TLS_CLIENT_CA_FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    pub fn server_tls(&self) -> Option<crate::server::ServerTls> {
        Some(crate::server::ServerTls {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    /// Bearer token of every management RPC. `dev` generates one if unset.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (a mounted Kubernetes Secret), instead of the value.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// Secret (at least 32 bytes) that keys every stored key hash. Changing it invalidates
    /// every key. `dev` generates one if unset.
    #[arg(long, env = "TOLLGATE_KEY_PEPPER", hide_env_values = true)]
    pub key_pepper: Option<String>,
    /// A file holding the key pepper, instead of the value.
    #[arg(long, env = "TOLLGATE_KEY_PEPPER_FILE", conflicts_with = "key_pepper")]
    pub key_pepper_file: Option<PathBuf>,
    /// Internal token (16+ characters): the keys service accepts it for `KeyStateService`
    /// only, and authz and metering call it with it. Without one they use the admin token.
    #[arg(long, env = "TOLLGATE_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// A file holding the service token, instead of the value.
    #[arg(long, env = "TOLLGATE_SERVICE_TOKEN_FILE", conflicts_with = "service_token")]
    pub service_token_file: Option<PathBuf>,
}

/// Fills `value` from `file` when one is given: its content without the trailing newline
/// that `echo` and editors leave.
pub fn secret_from_file(value: &mut Option<String>, file: Option<&Path>, variable: &str) -> anyhow::Result<()> {
    let Some(file) = file else { return Ok(()) };
    let content = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{variable}: cannot read {}: {e}", file.display()))?;
    let secret = content.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&content);
    anyhow::ensure!(!secret.is_empty(), "{variable}: {} is empty", file.display());
    *value = Some(secret.to_owned());
    Ok(())
}

impl AuthzArgs {
    /// Reads the gateway token when given as a file.
    pub fn load_files(&mut self) -> anyhow::Result<()> {
        secret_from_file(&mut self.gateway_token, self.gateway_token_file.as_deref(), "TOLLGATE_GATEWAY_TOKEN_FILE")
    }
}

impl Cli {
    /// Reads every secret given as a file (`TOLLGATE_…_FILE`) into its flag.
    pub fn load_secret_files(&mut self) -> anyhow::Result<()> {
        match &mut self.command {
            Command::Dev(args) => {
                args.secrets.load_files()?;
                args.authz.load_files()
            }
            Command::Serve(args) => {
                args.secrets.load_files()?;
                args.authz.load_files()
            }
            _ => Ok(()),
        }
    }
}

impl SecretArgs {
    /// Reads the secrets given as files.
    pub fn load_files(&mut self) -> anyhow::Result<()> {
        secret_from_file(&mut self.admin_token, self.admin_token_file.as_deref(), "TOLLGATE_ADMIN_TOKEN_FILE")?;
        secret_from_file(&mut self.key_pepper, self.key_pepper_file.as_deref(), "TOLLGATE_KEY_PEPPER_FILE")?;
        secret_from_file(&mut self.service_token, self.service_token_file.as_deref(), "TOLLGATE_SERVICE_TOKEN_FILE")
    }
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// System cap on any key's requests per minute; higher settings are clamped.
    #[arg(long, env = "TOLLGATE_MAX_RPM", value_parser = clap::value_parser!(i64).range(1..))]
    pub max_rpm: Option<i64>,
    /// System cap on any key's tokens per minute; higher settings are clamped.
    #[arg(long, env = "TOLLGATE_MAX_TPM", value_parser = clap::value_parser!(i64).range(1..))]
    pub max_tpm: Option<i64>,
    /// Credits per US dollar: the USD prices the catalog shows (keys) and the USD the key
    /// holder's HTTP API shows (metering).
    #[arg(
        long,
        env = "TOLLGATE_CREDITS_PER_USD",
        default_value_t = tollgate_core::money::DEFAULT_CREDITS_PER_USD,
        value_parser = clap::value_parser!(i64).range(1..)
    )]
    pub credits_per_usd: i64,
    /// How long a rotated-out secret keeps working when RotateKey gives no grace period.
    #[arg(long, env = "TOLLGATE_ROTATION_GRACE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub rotation_grace: Duration,
}

#[derive(Debug, Args)]
pub struct AuthzArgs {
    /// Bearer token the gateway sends with Authorize and usage reports; it can do nothing
    /// else. Authorize also takes the admin token.
    #[arg(long, env = "TOLLGATE_GATEWAY_TOKEN", hide_env_values = true)]
    pub gateway_token: Option<String>,
    /// A file holding the gateway token, instead of the value.
    #[arg(long, env = "TOLLGATE_GATEWAY_TOKEN_FILE", conflicts_with = "gateway_token")]
    pub gateway_token_file: Option<PathBuf>,
    /// Serve Authorize to callers without a token when no gateway token is set (anyone who
    /// reaches the port can then test whether a key is valid). `dev` on a loopback address
    /// is open regardless.
    #[arg(long, env = "TOLLGATE_ALLOW_UNAUTHENTICATED_AUTHORIZE")]
    pub allow_unauthenticated_authorize: bool,
    /// IANA time zone of daily and monthly budgets (the same for authz and metering).
    #[arg(long, env = "TOLLGATE_TIME_ZONE", default_value = "UTC")]
    pub time_zone: String,
    /// How long Authorize holds an estimated cost when no usage report settles it.
    #[arg(long, env = "TOLLGATE_HOLD_TTL", default_value = crate::DEFAULT_HOLD_TTL, value_parser = humantime::parse_duration)]
    pub hold_ttl: Duration,
    /// How long a key's state is cached in process; invalidations drop it at once, this
    /// bounds staleness if one is lost.
    #[arg(long, env = "TOLLGATE_KEY_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub key_cache_ttl: Duration,
    /// How long an unknown key is remembered as unknown (creating the key ends it at once).
    #[arg(long, env = "TOLLGATE_UNKNOWN_KEY_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub unknown_key_cache_ttl: Duration,
    /// Most secrets cached in process.
    #[arg(long, env = "TOLLGATE_KEY_CACHE_CAPACITY", default_value_t = 1_000_000)]
    pub key_cache_capacity: u64,
    /// What counter checks do when Redis is unreachable: `open` (allow), `closed`
    /// (UNAVAILABLE), or per kind, `rate=open,money=closed`.
    #[arg(long, env = "TOLLGATE_AUTHZ_ON_REDIS_ERROR", default_value = "rate=open,money=closed")]
    pub on_redis_error: tollgate_authz_service::RedisErrorPolicy,
    /// The header a proxied call may name its model in, when neither its JSON body nor its
    /// path does (Envoy's `Check`, forward-auth).
    #[arg(long, env = "TOLLGATE_MODEL_HEADER", default_value = "x-tollgate-model")]
    pub model_header: String,
    /// Tokens held for a proxied call nothing says the size of (no body, no
    /// `x-tollgate-estimated-tokens`).
    #[arg(long, env = "TOLLGATE_DEFAULT_ESTIMATED_TOKENS", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000))]
    pub default_estimated_tokens: i64,
    /// Proxies (CIDRs, comma-separated) whose `X-Forwarded-For` / `X-Real-IP` forward-auth
    /// believes; any other peer is the client itself.
    #[arg(long, env = "TOLLGATE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Let the client's key go upstream with an allowed proxied call (by default the proxy
    /// is told to remove it, so the model backend never sees a platform key).
    #[arg(long, env = "TOLLGATE_FORWARD_CLIENT_KEY")]
    pub forward_client_key: bool,
    /// Also serve the benchmark's baselines (`tollgate.bench.v1.BenchService`).
    #[arg(long, env = "TOLLGATE_BENCH_ENDPOINTS", hide = true)]
    pub bench_endpoints: bool,
    /// Serve without the gRPC metrics layer and access log (to measure their cost).
    #[arg(long, env = "TOLLGATE_NO_GRPC_METRICS", hide = true)]
    pub no_grpc_metrics: bool,
}

#[derive(Debug, Args)]
pub struct MeteringArgs {
    /// Stream workers applying usage reports in this process (0: serve the RPCs only). Each
    /// has one batch committing and one settling, so a few per core keep Postgres and Redis
    /// busy at once.
    #[arg(long, env = "TOLLGATE_METERING_WORKERS", default_value_t = crate::MeteringSettings::default().workers)]
    pub workers: usize,
    /// Most usage reports per batch, i.e. per database transaction (1–1000).
    #[arg(long, env = "TOLLGATE_METERING_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// How long a report a worker received but did not acknowledge (it crashed) waits before
    /// another worker takes it over.
    #[arg(long, env = "TOLLGATE_METERING_CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub claim_idle: Duration,
    /// Deliveries after which a report that still cannot be applied moves to the dead letters.
    /// A key or model the keys service says does not exist moves there at once; a model a
    /// catalog read a moment ago lacked is checked again, against a fresh one, when it comes
    /// back.
    #[arg(long, env = "TOLLGATE_METERING_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,
    /// `KeyHolderService/GetKeyBalance` and key-holder HTTP calls (`/v1/key`,
    /// `/api/usage/token`, `/v1/dashboard/billing/*`) each key may make per minute on one
    /// replica (0: no limit); more are RESOURCE_EXHAUSTED (HTTP 429) with a retry delay. Each
    /// reads the ledger.
    #[arg(long, env = "TOLLGATE_KEY_BALANCE_RPM", default_value_t = 60)]
    pub key_balance_rpm: u32,
    /// Redis Streams the usage queue spreads over, each in a slot of its own (on a Redis
    /// Cluster, a few per primary). Only ever raise it: reports waiting in a stream beyond a
    /// lowered count are not read. The same on every metering process.
    #[arg(long, env = "TOLLGATE_METERING_USAGE_STREAMS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub usage_streams: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_gives_its_content_without_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for (content, expected) in
            [("s3cret\n", "s3cret"), ("s3cret", "s3cret"), ("s3cret\r\n", "s3cret"), (" a b \n", " a b ")]
        {
            std::fs::write(&path, content).unwrap();
            let mut value = None;
            secret_from_file(&mut value, Some(&path), "X_FILE").unwrap();
            assert_eq!(value.as_deref(), Some(expected), "{content:?}");
        }
        let mut kept = Some("given".to_owned());
        secret_from_file(&mut kept, None, "X_FILE").unwrap();
        assert_eq!(kept.as_deref(), Some("given"), "no file: the value stays");
    }

    #[test]
    fn a_missing_or_empty_secret_file_fails_naming_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = secret_from_file(&mut None, Some(&missing), "TOLLGATE_ADMIN_TOKEN_FILE").unwrap_err();
        assert!(error.to_string().starts_with("TOLLGATE_ADMIN_TOKEN_FILE: cannot read"), "{error}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let error = secret_from_file(&mut None, Some(&empty), "TOLLGATE_KEY_PEPPER_FILE").unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
    }

    #[test]
    fn a_secret_and_its_file_together_are_refused() {
        let parsed =
            Cli::try_parse_from(["tollgate", "serve", "keys", "--admin-token", "x", "--admin-token-file", "/f"]);
        assert!(parsed.is_err());
    }
}
