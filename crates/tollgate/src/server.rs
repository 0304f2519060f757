//! Serving a set of gRPC services on one listener, with health, reflection and a graceful
//! shutdown: on the signal every service reports NOT_SERVING, the server keeps answering for
//! the drain period (so load balancers and Kubernetes stop sending traffic), then stops
//! accepting and lets in-flight calls finish.

use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// Upper bound of any one call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a dependency answers now.
pub type Probe = Box<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The files of the gRPC listener's TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain, PEM.
    pub cert: std::path::PathBuf,
    /// Its private key, PEM.
    pub key: std::path::PathBuf,
    /// When set, clients must present a certificate this CA (PEM) signed.
    pub client_ca: Option<std::path::PathBuf>,
}

impl ServerTls {
    fn config(&self) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).with_context(|| format!("{what}: reading {}", path.display()))
        };
        let identity = tonic::transport::Identity::from_pem(
            read(&self.cert, "TOLLGATE_TLS_CERT_FILE")?,
            read(&self.key, "TOLLGATE_TLS_KEY_FILE")?,
        );
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(read(ca, "TOLLGATE_TLS_CLIENT_CA_FILE")?));
        }
        Ok(config)
    }
}

/// What one process serves.
#[derive(Default)]
pub struct Services {
    pub routes: RoutesBuilder,
    /// Every service's metrics, served on the HTTP listener.
    pub registry: prometheus_client::registry::Registry,
    /// Descriptors reflection serves besides Tollgate's own (Envoy's, where `Check` is served).
    pub descriptor_sets: Vec<&'static [u8]>,
    /// Routes served on the HTTP listener beside `/metrics` (authz's forward-auth).
    pub http_routes: axum::Router,
    /// Dependencies watched once serving: when one fails to answer for longer than
    /// `readiness_grace`, health says NOT_SERVING until it answers again.
    pub watched: Vec<(&'static str, Probe)>,
    pub readiness_grace: Duration,
    /// Serve without the gRPC metrics layer and access log (benchmarks of their cost).
    pub grpc_metrics_off: bool,
    /// Fully-qualified names reported by the health service.
    pub names: Vec<&'static str>,
    /// What must answer once before health says SERVING, by name (e.g. `redis`). The process
    /// starts and serves anyway, so a pod started during an outage waits instead of
    /// crash-looping; once SERVING it stays so (a later outage of a shared dependency is
    /// handled per call, and taking every replica out of rotation would make it total).
    pub dependencies: Vec<(&'static str, Probe)>,
}

/// Runs `step` once a second until it succeeds (start-up work in a database that may not be
/// there yet), logging failures at most every 10 s; the probe says whether it has.
pub fn retry_until_done<F, Fut>(what: &'static str, step: F, shutdown: CancellationToken) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    tokio::spawn(async move {
        let mut last_warning: Option<std::time::Instant> = None;
        loop {
            match step().await {
                Ok(()) => {
                    flag.store(true, std::sync::atomic::Ordering::Release);
                    if last_warning.is_some() {
                        tracing::info!(what, "done after all");
                    }
                    return;
                }
                Err(error) => {
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(what, error = format!("{error:#}"), "cannot do this yet; retrying");
                        last_warning = Some(std::time::Instant::now());
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    Box::new(move || {
        let done = done.load(std::sync::atomic::Ordering::Acquire);
        Box::pin(async move { done })
    })
}

/// How often a dependency not yet reached is tried.
const DEPENDENCY_RETRY: Duration = Duration::from_millis(50);

/// Reports SERVING once every dependency has answered, unless shutdown came first.
/// How often watched dependencies are probed once serving.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Longest one probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn answers(probe: &Probe) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe()).await.unwrap_or(false)
}

async fn set_status(health: &tonic_health::server::HealthReporter, names: &[&'static str], status: ServingStatus) {
    for name in names.iter().copied().chain([""]) {
        health.set_service_status(name, status).await;
    }
}

/// Once serving: NOT_SERVING after a watched dependency failed to answer for longer than
/// `grace`, SERVING again as soon as every one answers. Returns on shutdown.
async fn watch(
    health: &tonic_health::server::HealthReporter,
    names: &[&'static str],
    watched: &[(&'static str, Probe)],
    grace: Duration,
    shutdown: &CancellationToken,
) {
    if watched.is_empty() {
        return;
    }
    let mut failing_since: Option<std::time::Instant> = None;
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let mut down = None;
        for (name, probe) in watched {
            if !answers(probe).await {
                down = Some(*name);
                break;
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        match down {
            None => {
                failing_since = None;
                if !serving {
                    set_status(health, names, ServingStatus::Serving).await;
                    serving = true;
                    tracing::info!("every watched dependency answers again: serving");
                }
            }
            Some(dependency) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if serving && since.elapsed() >= grace {
                    set_status(health, names, ServingStatus::NotServing).await;
                    serving = false;
                    tracing::warn!(dependency, down_for = ?since.elapsed(), "a dependency does not answer: NOT_SERVING until it does");
                }
            }
        }
    }
}

async fn serve_when_ready(
    health: tonic_health::server::HealthReporter,
    names: Vec<&'static str>,
    dependencies: Vec<(&'static str, Probe)>,
    watched: (Vec<(&'static str, Probe)>, Duration),
    shutdown: CancellationToken,
) {
    let started = std::time::Instant::now();
    let mut last_warning: Option<std::time::Instant> = None;
    for (name, probe) in &dependencies {
        while !probe().await {
            // A moment is normal (migrations, a first rebuild); longer is worth saying.
            if started.elapsed() >= Duration::from_secs(1)
                && last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
            {
                tracing::warn!(dependency = name, waited = ?started.elapsed(), "not serving yet: cannot reach a dependency");
                last_warning = Some(std::time::Instant::now());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(DEPENDENCY_RETRY) => {}
            }
        }
    }
    if shutdown.is_cancelled() {
        return;
    }
    set_status(&health, &names, ServingStatus::Serving).await;
    if last_warning.is_some() {
        tracing::info!(waited = ?started.elapsed(), "every dependency answers: serving");
    }
    watch(&health, &names, &watched.0, watched.1, &shutdown).await;
}

/// Serves until `shutdown` is cancelled, then drains for `drain` and stops.
pub async fn serve(
    listener: TcpListener,
    http_listen: Option<std::net::SocketAddr>,
    tls: Option<&ServerTls>,
    mut services: Services,
    drain: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in services.names.iter().copied().chain([""]) {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
    let ready = tokio::spawn(serve_when_ready(
        health.clone(),
        services.names.clone(),
        std::mem::take(&mut services.dependencies),
        (std::mem::take(&mut services.watched), services.readiness_grace),
        shutdown.clone(),
    ));
    // v1 for current grpcurl and Postman, v1alpha for older clients such as evans.
    let extra_descriptors = std::mem::take(&mut services.descriptor_sets);
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tollgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        extra_descriptors.iter().fold(builder, |builder, set| builder.register_encoded_file_descriptor_set(set))
    };
    services
        .routes
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);

    let served = services.names.iter().map(|name| name.to_string()).chain(
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
            .map(String::from),
    );
    let grpc_metrics = crate::metrics::GrpcMetrics::new(&mut services.registry, served);
    if let Some(address) = http_listen {
        let http = TcpListener::bind(address).await.with_context(|| format!("binding the HTTP listener {address}"))?;
        tracing::info!(address = %http.local_addr()?, "serving HTTP (/metrics and the services' routes)");
        let registry = std::sync::Arc::new(std::mem::take(&mut services.registry));
        let routes = std::mem::take(&mut services.http_routes);
        tokio::spawn(crate::metrics::serve_http(http, registry, routes, shutdown.child_token()));
    }
    let names = services.names.clone();
    let signal = async move {
        shutdown.cancelled().await;
        // It reports SERVING only if shutdown has not begun; wait so it cannot do so after.
        let _ = ready.await;
        for name in names.iter().copied().chain([""]) {
            health.set_service_status(name, ServingStatus::NotServing).await;
        }
        if !drain.is_zero() {
            tracing::info!(?drain, "draining: health reports NOT_SERVING");
            tokio::time::sleep(drain).await;
        }
        tracing::info!("stopping: finishing in-flight calls");
    };
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.config()?).context("the gRPC listener's TLS")?;
    }
    builder
        .layer(crate::observe::ObserveLayer { metrics: grpc_metrics, enabled: !services.grpc_metrics_off })
        .layer(crate::decode_errors::DecodeErrorsLayer)
        .timeout(REQUEST_TIMEOUT)
        .add_routes(services.routes.routes())
        .serve_with_incoming_shutdown(incoming(listener), signal)
        .await?;
    Ok(())
}

/// Accepted connections with Nagle's algorithm off and TCP keepalive on. With Nagle on, a
/// response's last small frame (the gRPC trailers) can wait for the client's delayed ACK:
/// 40 ms stalls on some responses (measured: an RPM denial took 43 ms instead of 0.3 ms).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60)))
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupted"),
            _ = term => tracing::info!("SIGTERM received"),
        }
        token.cancel();
    });
}
