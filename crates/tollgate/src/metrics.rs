//! Prometheus metrics: one registry per server, served as `GET /metrics` on the HTTP
//! listener, and the gRPC server metrics of every service (counted by [`crate::observe`]),
//! with the names existing Grafana dashboards use (`grpc_server_started_total`,
//! `grpc_server_handled_total`, `grpc_server_handling_seconds`).
//!
//! Label values are bounded: a method outside the services this process serves is counted as
//! `unknown`, never by the path a caller sent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;

/// Which RPC.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub(crate) grpc_service: String,
    pub(crate) grpc_method: String,
    grpc_type: &'static str,
}

/// Which RPC and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_type: &'static str,
    grpc_code: &'static str,
}

fn latency_buckets() -> Histogram {
    // 100 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// Every code's number, for the per-method counters (tonic codes are 0 to 16).
const CODES: usize = 17;

/// One method's metrics, looked up once per path: a call then only counts, with no label
/// built, hashed or allocated.
pub(crate) struct MethodMetrics {
    pub(crate) labels: MethodLabels,
    /// `package.Service/Method`, the name of its spans.
    pub(crate) name: String,
    pub(crate) started: Counter,
    pub(crate) handling: Histogram,
    /// By code, made on first use so that only codes that happened are exported.
    handled: [OnceLock<Counter>; CODES],
}

/// The gRPC server metrics of one server.
#[derive(Clone)]
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: LatencyFamily,
    /// Fully-qualified names of the services served; anything else is `unknown`.
    services: Arc<HashSet<String>>,
    /// Served methods by path (only those: the map cannot grow with what callers send).
    by_path: Arc<RwLock<HashMap<String, Arc<MethodMetrics>>>>,
    unknown: Arc<MethodMetrics>,
}

impl GrpcMetrics {
    /// Registers the metrics for calls of `services` (fully-qualified names).
    pub fn new(registry: &mut Registry, services: impl IntoIterator<Item = String>) -> Self {
        let started = Family::default();
        let handling = LatencyFamily::new_with_constructor(latency_buckets);
        registry.register("grpc_server_started", "RPCs started on the server", started.clone());
        let handled = Family::default();
        registry.register("grpc_server_handled", "RPCs completed on the server, by code", handled.clone());
        registry.register("grpc_server_handling_seconds", "Time from an RPC's start to its answer", handling.clone());
        let unknown = Arc::new(MethodMetrics::new(&started, &handling, MethodLabels::unknown()));
        Self {
            started,
            handled,
            handling,
            services: Arc::new(services.into_iter().collect()),
            by_path: Arc::default(),
            unknown,
        }
    }

    /// The metrics of a request path `/package.Service/Method`.
    pub(crate) fn method(&self, path: &str) -> Arc<MethodMetrics> {
        if let Some(found) = self.by_path.read().expect("metrics lock").get(path) {
            return found.clone();
        }
        let known = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|(service, method)| self.services.contains(*service) && is_method_name(method));
        let Some((service, method)) = known else { return self.unknown.clone() };
        let labels =
            MethodLabels { grpc_service: service.to_owned(), grpc_method: method.to_owned(), grpc_type: "unary" };
        let made = Arc::new(MethodMetrics::new(&self.started, &self.handling, labels));
        self.by_path.write().expect("metrics lock").entry(path.to_owned()).or_insert(made).clone()
    }

    /// Counts a call of `method` that ended with `code`.
    pub(crate) fn handled(&self, method: &MethodMetrics, code: Code) {
        let counter = method.handled[(code as usize).min(CODES - 1)].get_or_init(|| {
            let labels = HandledLabels {
                grpc_service: method.labels.grpc_service.clone(),
                grpc_method: method.labels.grpc_method.clone(),
                grpc_type: method.labels.grpc_type,
                grpc_code: code_name(code),
            };
            self.handled.get_or_create(&labels).clone()
        });
        counter.inc();
    }
}

impl MethodMetrics {
    fn new(started: &Family<MethodLabels, Counter>, handling: &LatencyFamily, labels: MethodLabels) -> Self {
        MethodMetrics {
            started: started.get_or_create(&labels).clone(),
            handling: handling.get_or_create(&labels).clone(),
            handled: Default::default(),
            name: format!("{}/{}", labels.grpc_service, labels.grpc_method),
            labels,
        }
    }
}

impl MethodLabels {
    fn unknown() -> Self {
        MethodLabels { grpc_service: "unknown".into(), grpc_method: "unknown".into(), grpc_type: "unary" }
    }
}

/// A method name as protobuf allows it (a caller could otherwise invent unbounded values).
fn is_method_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The names dashboards use for gRPC codes.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Serves `GET /metrics` (OpenMetrics text) from `registry`, and `routes`, on `listener`
/// until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    routes: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use axum::routing::get;
    let metrics = move || {
        let registry = registry.clone();
        async move {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => {
                    ([(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                        .into_response()
                }
                Err(error) => {
                    tracing::error!(%error, "cannot encode the metrics");
                    http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .merge(routes)
        .layer(axum::middleware::from_fn(crate::observe::http_access));
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    Ok(())
}
