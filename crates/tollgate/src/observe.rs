//! What every RPC of a server leaves behind, from one tower layer: a span continuing the
//! caller's W3C trace (`traceparent`), the gRPC server metrics, and one access line; and, for
//! the HTTP listener's requests (forward-auth), the span and the access line.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{GrpcMetrics, code_name};

/// The tower layer that traces, counts and logs every RPC of a server.
#[derive(Clone)]
pub struct ObserveLayer {
    pub metrics: GrpcMetrics,
    /// Off only to measure what observing costs.
    pub enabled: bool,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner, metrics: self.metrics.clone(), enabled: self.enabled }
    }
}

#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: GrpcMetrics,
    enabled: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Observed<S>
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
        if !self.enabled {
            return Box::pin(self.inner.call(request));
        }
        let method = self.metrics.method(request.uri().path());
        let request_id = request_id(request.headers());
        let (span, trace) = request_span(request.headers(), || {
            tracing::debug_span!(
                "rpc",
                otel.name = %method.name,
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = %method.labels.grpc_service,
                rpc.method = %method.labels.grpc_method,
                rpc.grpc.status_code = Empty,
                request_id = request_id.as_deref().unwrap_or_default(),
            )
        });
        let RequestTrace { trace_id, sampled } = trace;
        method.started.inc();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let answer = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            let answer = answer.instrument(span.clone());
            let response = if sampled || !crate::telemetry::exporting() {
                answer.await
            } else {
                crate::telemetry::unsampled(answer).await
            };
            // Every RPC here is unary: tonic sends an error as a trailers-only response (the
            // status in the headers), and a success's status (0) in the trailers after it.
            let code = match &response {
                Ok(response) => {
                    response.headers().get("grpc-status").map_or(Code::Ok, |status| Code::from_bytes(status.as_bytes()))
                }
                Err(_) => Code::Unknown,
            };
            let elapsed = started.elapsed();
            method.handling.observe(elapsed.as_secs_f64());
            metrics.handled(&method, code);
            span.record("rpc.grpc.status_code", code as i64);
            if is_server_error(code) {
                span.record("otel.status_code", "ERROR");
            }
            // The access log: what was called and how it ended, never a header's secret.
            tracing::info!(
                target: "tollgate::access",
                service = %method.labels.grpc_service,
                method = %method.labels.grpc_method,
                code = code_name(code),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = request_id.as_deref().unwrap_or("-"),
                trace_id = %TraceIdField(trace_id),
                "rpc"
            );
            response
        })
    }
}

/// The caller's `x-request-id`, when it is at most 128 printable characters.
fn request_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
}

/// A request's span, continuing the caller's `traceparent`, and the trace its access line
/// names. A request the caller traces follows the caller's decision; one without a trace is
/// sampled here, and when it is not, `make` is never called: building spans the sampler then
/// drops is most of what tracing costs. (The spans are DEBUG: with traces off and logs at
/// INFO they are never built either.)
fn request_span(headers: &http::HeaderMap, make: impl FnOnce() -> tracing::Span) -> (tracing::Span, RequestTrace) {
    let caller = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let caller_trace = caller.span().span_context().clone();
    let traced = caller_trace.is_valid() || crate::telemetry::sample_root();
    let span = if traced { make() } else { tracing::Span::none() };
    let _ = span.set_parent(caller);
    let context = span.context();
    let own = context.span().span_context().clone();
    // This span's trace when traces are exported, else the caller's, so a gateway's logs and
    // ours still meet.
    let trace_id = if own.trace_id() == TraceId::INVALID { caller_trace.trace_id() } else { own.trace_id() };
    (span, RequestTrace { trace_id, sampled: own.is_sampled() })
}

/// What a request's span says of its trace.
struct RequestTrace {
    trace_id: TraceId,
    sampled: bool,
}

/// The codes OpenTelemetry's conventions count as a server's failure (the others are the
/// caller's: a denied or invalid call is not an error of the service).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A trace id as W3C writes it, `-` when there is none.
struct TraceIdField(TraceId);

impl std::fmt::Display for TraceIdField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            TraceId::INVALID => f.write_str("-"),
            id => write!(f, "{id}"),
        }
    }
}

/// Reads `traceparent` and `tracestate` from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The HTTP listener's middleware: a span continuing the caller's trace and one access line
/// per request (`/metrics` scrapes included).
pub async fn http_access(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_id = request_id(request.headers());
    let (span, trace) = request_span(request.headers(), || {
        tracing::debug_span!(
            "http",
            otel.name = %format_args!("{method} {path}"),
            otel.kind = "server",
            http.request.method = %method,
            url.path = %path,
            http.response.status_code = Empty,
        )
    });
    let trace_id = trace.trace_id;
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    tracing::info!(
        target: "tollgate::access",
        method = %method,
        path = %path,
        status,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id = request_id.as_deref().unwrap_or("-"),
        trace_id = %TraceIdField(trace_id),
        "http"
    );
    response
}
