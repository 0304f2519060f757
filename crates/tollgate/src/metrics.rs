//! Prometheus metrics: one registry per server, served as `GET /metrics` on the HTTP
//! listener, and the gRPC server metrics of every service from one tower layer, with the names
//! existing Grafana dashboards use (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`).
//!
//! Label values are bounded: a method outside the services this process serves is counted as
//! `unknown`, never by the path a caller sent.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Code;

/// Which RPC.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: String,
    grpc_method: String,
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

/// The gRPC server metrics of one server.
#[derive(Clone)]
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: LatencyFamily,
    /// Fully-qualified names of the services served; anything else is `unknown`.
    services: Arc<HashSet<String>>,
}

impl GrpcMetrics {
    /// Registers the metrics for calls of `services` (fully-qualified names).
    pub fn new(registry: &mut Registry, services: impl IntoIterator<Item = String>) -> Self {
        let metrics = Self {
            started: Family::default(),
            handled: Family::default(),
            handling: LatencyFamily::new_with_constructor(latency_buckets),
            services: Arc::new(services.into_iter().collect()),
        };
        registry.register("grpc_server_started", "RPCs started on the server", metrics.started.clone());
        registry.register("grpc_server_handled", "RPCs completed on the server, by code", metrics.handled.clone());
        registry.register(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its answer",
            metrics.handling.clone(),
        );
        metrics
    }

    /// The labels of a request path `/package.Service/Method`.
    fn labels(&self, path: &str) -> MethodLabels {
        let known = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|(service, method)| self.services.contains(*service) && is_method_name(method));
        let (service, method) = known.unwrap_or(("unknown", "unknown"));
        MethodLabels { grpc_service: service.to_owned(), grpc_method: method.to_owned(), grpc_type: "unary" }
    }
}

/// A method name as protobuf allows it (a caller could otherwise invent unbounded values).
fn is_method_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The names dashboards use for gRPC codes.
fn code_name(code: Code) -> &'static str {
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

/// The tower layer that counts every RPC of a server.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub GrpcMetrics);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let labels = self.metrics.labels(request.uri().path());
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .filter(|id| id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned);
        self.metrics.started.get_or_create(&labels).inc();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            // Every RPC here is unary: tonic sends an error as a trailers-only response (the
            // status in the headers), and a success's status (0) in the trailers after it.
            let code = match &response {
                Ok(response) => {
                    response.headers().get("grpc-status").map_or(Code::Ok, |status| Code::from_bytes(status.as_bytes()))
                }
                Err(_) => Code::Unknown,
            };
            metrics.handling.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            let handled = HandledLabels {
                grpc_service: labels.grpc_service,
                grpc_method: labels.grpc_method,
                grpc_type: labels.grpc_type,
                grpc_code: code_name(code),
            };
            metrics.handled.get_or_create(&handled).inc();
            // The access log: what was called and how it ended, never a header's secret.
            tracing::info!(
                target: "tollgate::access",
                service = %handled.grpc_service,
                method = %handled.grpc_method,
                code = handled.grpc_code,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                request_id = request_id.as_deref().unwrap_or("-"),
                "rpc"
            );
            response
        })
    }
}

/// Serves `GET /metrics` (OpenMetrics text) from `registry` on `listener` until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
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
    let app = axum::Router::new().route("/metrics", get(metrics));
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    Ok(())
}

use axum::response::IntoResponse;
