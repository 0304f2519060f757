//! Traces, through the real binaries: `tollgate serve keys` and `tollgate serve authz`, both
//! exporting to a test OTLP collector (a tonic server of the collector's `TraceService`),
//! configured only by the standard `OTEL_*` variables. A gateway's `traceparent` continues
//! through authz's Authorize, its key-state look-up and counter script, into the keys
//! service's look-up; the spans reach the collector only because both processes flush on
//! SIGTERM (the batch delay is set far beyond the test). Forward-auth on the HTTP listener
//! continues a caller's trace as well.

mod common;

use common::MODEL;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tollgate_core::key_format::ApiKeySecret;
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as keys;
use tollgate_test_support::seed::{Bearer, Seeder};
use tollgate_test_support::{TestDatabase, TestRedis};

/// A span as the collector received it, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                received.push(Received {
                    service: service.clone(),
                    attributes: attributes(&span.attributes),
                    name: span.name,
                    kind: span.kind,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attributes(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// Sends SIGTERM and waits for a clean exit.
async fn terminate(mut child: tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let sent = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("it stops").unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_trace_continues_through_authz_into_keys_and_is_flushed_on_shutdown() {
    let Some(database) = TestDatabase::create().await else { return };
    let Some(redis) = TestRedis::create().await else { return };
    let collector = Collector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let admin_token = format!("admin-{}", tollgate_core::ids::new_id());
    let service_token = format!("service-{}", tollgate_core::ids::new_id());
    let gateway_token = format!("gateway-{}", tollgate_core::ids::new_id());
    // Held together until all three are picked, so no two are the same.
    let probes: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = probes.iter().map(|p| p.local_addr().unwrap().port()).collect();
    drop(probes);
    let (keys_port, authz_port, authz_http) = (ports[0], ports[1], ports[2]);
    let start = |service: &str, port: u16, http: u16| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .args([
                "serve",
                service,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--http-listen",
                &format!("127.0.0.1:{http}"),
            ])
            .env("TOLLGATE_DATABASE_URL", &database.url)
            .env("TOLLGATE_MIGRATE_ON_START", "true")
            .env("TOLLGATE_REDIS_URL", &redis.url)
            .env("TOLLGATE_REDIS_PREFIX", &redis.prefix)
            .env("TOLLGATE_KEYS_URL", format!("http://127.0.0.1:{keys_port}"))
            .env("TOLLGATE_ADMIN_TOKEN", &admin_token)
            .env("TOLLGATE_SERVICE_TOKEN", &service_token)
            .env("TOLLGATE_GATEWAY_TOKEN", &gateway_token)
            .env("TOLLGATE_KEY_PEPPER", "a-pepper-for-the-trace-test-at-least-32-bytes")
            .env("TOLLGATE_SHUTDOWN_DRAIN", "0s")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_address}"))
            // Nothing is exported on a timer while the test runs: only the flush on shutdown.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate")
    };
    let keys_process = start("keys", keys_port, 0);
    let keys_channel = common::wait_serving(&format!("127.0.0.1:{keys_port}")).await;
    let authz_process = start("authz", authz_port, authz_http);
    let authz_channel = common::wait_serving(&format!("127.0.0.1:{authz_port}")).await;

    let seed = Seeder::new(keys_channel, Bearer::token(&admin_token));
    seed.account("traced", true).await.unwrap();
    let application = seed.application("traced", "app").await.unwrap();
    let group = seed.group("traced", "1", None).await.unwrap();
    seed.model(MODEL, 1, 1).await.unwrap();
    // A limit, so that Authorize runs the counter script.
    let key = keys::Key {
        application,
        display_name: "Traced".into(),
        group: group.name,
        rpm_limit: Some(100),
        ..Default::default()
    };
    let secret = seed.keys_like("accounts/traced", key, 1).await.unwrap().remove(0).1;

    // The gateway's trace: sampled, so every hop records it whatever its sampler.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let gateway_span = "00f067aa0ba902b7";
    let mut authz =
        authz::authz_service_client::AuthzServiceClient::with_interceptor(authz_channel, Bearer::token(&gateway_token));
    // A known key (answered from Redis: the counter script runs), then a key nobody has
    // (the key-state look-up asks the keys service).
    for (api_key, expected) in
        [(secret, authz::Decision::Allow), (ApiKeySecret::generate().expose().to_owned(), authz::Decision::Deny)]
    {
        let mut request = tonic::Request::new(authz::AuthorizeRequest {
            api_key,
            model: MODEL.into(),
            capability: keys::Capability::Text as i32,
            client_ip: "203.0.113.9".into(),
            estimated_tokens: 10,
            request_id: format!("req-{}", tollgate_core::ids::new_id()),
        });
        request.metadata_mut().insert("traceparent", format!("00-{trace_id}-{gateway_span}-01").parse().unwrap());
        assert_eq!(authz.authorize(request).await.unwrap().into_inner().decision(), expected);
    }
    // A trace the gateway did not sample: followed, so nothing of it is recorded anywhere.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut request = tonic::Request::new(authz::AuthorizeRequest {
        api_key: ApiKeySecret::generate().expose().to_owned(),
        model: MODEL.into(),
        capability: keys::Capability::Text as i32,
        estimated_tokens: 10,
        request_id: "unsampled".into(),
        ..Default::default()
    });
    request.metadata_mut().insert("traceparent", format!("00-{unsampled_trace}-b7ad6b7169203331-00").parse().unwrap());
    authz.authorize(request).await.unwrap();
    // Forward-auth on the HTTP listener continues the trace too.
    let http_span = "a3ce929d0e0e4736";
    let forward_auth = format!(
        "POST /v1/forward-auth/v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nX-Tollgate-Gateway-Token: {gateway_token}\r\n\
         traceparent: 00-{trace_id}-{http_span}-01\r\nContent-Length: 2\r\n\r\n{{}}",
        ApiKeySecret::generate().expose()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", authz_http)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, forward_auth.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "no model: {answer}");
    assert!(collector.0.lock().unwrap().iter().all(|span| hex::encode(&span.trace_id) != trace_id), "not yet sent");

    terminate(authz_process).await;
    terminate(keys_process).await;

    let received = collector.0.lock().unwrap().clone();
    assert!(received.iter().all(|span| hex::encode(&span.trace_id) != unsampled_trace), "{received:?}");
    let spans: Vec<Received> =
        received.iter().filter(|span| hex::encode(&span.trace_id) == trace_id).cloned().collect();
    let named = |service: &str, name: &str| -> Vec<Received> {
        spans.iter().filter(|s| s.service == service && s.name == name).cloned().collect()
    };
    let summary: Vec<(String, String)> = spans.iter().map(|s| (s.service.clone(), s.name.clone())).collect();

    let authorizes = named("tollgate-authz", "tollgate.authz.v1.AuthzService/Authorize");
    assert_eq!(authorizes.len(), 2, "{summary:?}");
    for authorize in &authorizes {
        assert_eq!(hex::encode(&authorize.parent_span_id), gateway_span, "Authorize continues the gateway's span");
        assert_eq!(authorize.kind, SpanKind::Server as i32);
        assert_eq!(authorize.attributes.get("rpc.system").map(String::as_str), Some("grpc"));
        assert_eq!(authorize.attributes.get("rpc.grpc.status_code").map(String::as_str), Some("0"));
    }
    let child_of = |span: &Received, parent: &Received| span.parent_span_id == parent.span_id;
    let scripts = named("tollgate-authz", "counter script");
    assert!(scripts.iter().any(|s| authorizes.iter().any(|a| child_of(s, a))), "{summary:?}");
    let lookups = named("tollgate-authz", "key-state look-up");
    assert!(lookups.iter().any(|l| authorizes.iter().any(|a| child_of(l, a))), "{summary:?}");
    let in_keys = named("tollgate-keys", "tollgate.keys.v1.KeyStateService/GetKeyState");
    assert_eq!(in_keys.len(), 1, "{summary:?}");
    assert!(lookups.iter().any(|l| child_of(&in_keys[0], l)), "the keys service continues authz's look-up");
    assert_eq!(in_keys[0].attributes.get("rpc.grpc.status_code").map(String::as_str), Some("5"), "NOT_FOUND");
    let http = named("tollgate-authz", "POST /v1/forward-auth/v1/chat/completions");
    assert_eq!(http.len(), 1, "{summary:?}");
    assert_eq!(hex::encode(&http[0].parent_span_id), http_span, "forward-auth continues the caller's span");
    assert_eq!(http[0].attributes.get("http.response.status_code").map(String::as_str), Some("400"));
    // Nothing secret rides on a span.
    let gateway_or_admin = |text: &str| text.contains(&gateway_token) || text.contains(&admin_token);
    assert!(spans.iter().all(|s| !s.attributes.values().any(|v| gateway_or_admin(v) || v.starts_with("sk-"))));
}
