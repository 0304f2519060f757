//! Logs and traces. Logs: `RUST_LOG` filters, text or JSON lines on stderr; one INFO line per
//! RPC goes to the `tollgate::access` target (`RUST_LOG=info,tollgate::access=off` silences
//! it). Traces: OpenTelemetry over OTLP/gRPC when the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the rest of the `OTEL_*` variables
//! (service name, resource attributes, sampler, batch sizes, headers, timeout, CA file) mean
//! what the specification says.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber, span};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{self, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What is logged when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,sqlx=warn,h2=warn,hyper=warn,tower=warn";

/// What becomes a span or span event in a trace: Tollgate's own spans down to DEBUG (the
/// key-state look-up, the counter script, metering batches), other crates' warnings, and not
/// the access log (the RPC's span already says all it does).
const TRACE_FILTER: &str = "warn,tollgate=debug,tollgate::access=off";

/// Calls without a `traceparent` that start a trace when `OTEL_TRACES_SAMPLER` is unset: 1 in
/// 100, so an authz replica answering tens of thousands of calls a second does not export as
/// many spans. A call with one follows the caller's decision (its sampled flag).
pub const DEFAULT_ROOT_SAMPLE_RATIO: f64 = 0.01;

/// The share of calls without a `traceparent` that start a trace; unset while traces are
/// not exported.
static ROOT_SAMPLE_RATIO: OnceLock<f64> = OnceLock::new();

/// What `OTEL_TRACES_SAMPLER` (and `…_ARG`) make of calls that arrive without a trace, and the
/// sampler the SDK keeps for everything else. Calls are sampled here, before any span is
/// built, because building spans a sampler then drops is most of what tracing costs; a
/// caller's sampled flag is always followed (every sampler is taken as its parent-based
/// form).
fn samplers() -> (f64, Sampler) {
    let arg = || std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().and_then(|a| a.trim().parse::<f64>().ok());
    let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let ratio = match name.trim() {
        "" => DEFAULT_ROOT_SAMPLE_RATIO,
        "always_off" | "parentbased_always_off" => 0.0,
        "traceidratio" | "parentbased_traceidratio" => arg().unwrap_or(1.0).clamp(0.0, 1.0),
        _ => 1.0,
    };
    let sdk = if ratio == 0.0 { Sampler::AlwaysOff } else { Sampler::ParentBased(Box::new(Sampler::AlwaysOn)) };
    (ratio, sdk)
}

/// Whether traces are exported (the trace exporter's filter is installed).
pub(crate) fn exporting() -> bool {
    ROOT_SAMPLE_RATIO.get().is_some()
}

/// Whether a call that arrived without a trace starts one.
pub(crate) fn sample_root() -> bool {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), std::time::Instant::now()) | 1,
        );
    }
    let Some(ratio) = ROOT_SAMPLE_RATIO.get() else { return false };
    // xorshift64*: a uniform draw without a system call.
    let draw = STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    });
    ((draw >> 11) as f64 / (1u64 << 53) as f64) < *ratio
}

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// The collector's OTLP/gRPC endpoint (`http://collector:4317`, or `https://…`).
    pub endpoint: String,
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: String,
    /// A PEM CA the collector's certificate chains to (`OTEL_EXPORTER_OTLP_CERTIFICATE`);
    /// the system roots otherwise.
    pub ca: Option<Vec<u8>>,
}

impl TraceExport {
    /// From the standard variables, or `None` when no endpoint is set or the SDK is disabled
    /// (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
    pub fn from_env(service_name: &str) -> anyhow::Result<Option<Self>> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let Some(endpoint) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(protocol) = protocol {
            anyhow::ensure!(
                protocol == "grpc",
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: Tollgate exports traces over OTLP/gRPC only (set grpc)"
            );
        }
        let ca = match var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE").or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE")) {
            Some(path) => Some(std::fs::read(&path).with_context(|| format!("reading the OTLP CA file {path}"))?),
            None => None,
        };
        Ok(Some(TraceExport { endpoint, service_name: service_name.to_owned(), ca }))
    }

    /// A tracer provider exporting in batches from a thread of its own. Call inside a Tokio
    /// runtime (the exporter's channel runs on it); shut it down to flush what is pending.
    pub fn provider(&self) -> anyhow::Result<SdkTracerProvider> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&self.endpoint);
        if self.endpoint.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter.build().context("building the OTLP span exporter")?;
        let service_name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| self.service_name.clone());
        let resource = Resource::builder_empty()
            .with_detectors(&[Box::new(TelemetryResourceDetector), Box::new(EnvResourceDetector::new())])
            .with_service_name(service_name)
            .build();
        let (root_ratio, sampler) = samplers();
        let _ = ROOT_SAMPLE_RATIO.set(root_ratio);
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .with_sampler(sampler)
            .build();
        Ok(provider)
    }
}

/// The layer that turns Tollgate's spans into OpenTelemetry spans of `provider`.
pub fn trace_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tollgate"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_level(false)
        .with_target(false)
        // The keys client reads the trace from the current span, not from an attached
        // OpenTelemetry context: attaching one on every poll of every span costs for nothing.
        .with_context_activation(false)
        .with_filter(SampledRequestsOnly(EnvFilter::new(TRACE_FILTER)))
}

tokio::task_local! {
    /// Set while a request whose trace is not sampled is served.
    static UNSAMPLED: ();
}

/// Runs `request` (a request's future) so that the spans and events inside it are not built
/// for the trace exporter: its trace was not sampled, and most are not.
pub(crate) async fn unsampled<F: Future>(request: F) -> F::Output {
    UNSAMPLED.scope((), request).await
}

/// The trace exporter's filter: `TRACE_FILTER`, and nothing inside a request whose trace was
/// not sampled (building spans the sampler then drops costs most of what tracing costs).
struct SampledRequestsOnly(EnvFilter);

impl<S: Subscriber + for<'span> LookupSpan<'span>> Filter<S> for SampledRequestsOnly {
    fn enabled(&self, meta: &Metadata<'_>, cx: &layer::Context<'_, S>) -> bool {
        UNSAMPLED.try_with(|_| ()).is_err() && Filter::<S>::enabled(&self.0, meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Asked again for every span: whether it is inside an unsampled request changes.
        if Filter::<S>::callsite_enabled(&self.0, meta).is_never() { Interest::never() } else { Interest::sometimes() }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Filter::<S>::max_level_hint(&self.0)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: layer::Context<'_, S>) {
        Filter::<S>::on_new_span(&self.0, attrs, id, cx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: layer::Context<'_, S>) {
        Filter::<S>::on_record(&self.0, id, values, cx);
    }

    fn on_enter(&self, id: &span::Id, cx: layer::Context<'_, S>) {
        Filter::<S>::on_enter(&self.0, id, cx);
    }

    fn on_exit(&self, id: &span::Id, cx: layer::Context<'_, S>) {
        Filter::<S>::on_exit(&self.0, id, cx);
    }

    fn on_close(&self, id: span::Id, cx: layer::Context<'_, S>) {
        Filter::<S>::on_close(&self.0, id, cx);
    }
}

/// What must outlive the server: the tracer provider, flushed when this is shut down.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (bounded: a collector that is
    /// away does not hold the shutdown).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        let flushed =
            tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || provider.shutdown()))
                .await;
        match flushed {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the last spans could not be exported"),
            Ok(Err(_)) | Err(_) => tracing::warn!("the last spans could not be exported in 5 s"),
        }
    }
}

/// Installs the global subscriber: logs on stderr, and traces when `OTEL_*` asks for them.
/// `service_name` is the default `service.name` (`tollgate-authz`, …).
pub fn init(format: LogFormat, service_name: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colour only on a terminal: collectors would store the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).boxed(),
    };
    let provider = match TraceExport::from_env(service_name)? {
        Some(export) => Some(export.provider()?),
        None => None,
    };
    let traces = provider.as_ref().map(trace_layer);
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces).init();
    Ok(Telemetry { provider })
}
