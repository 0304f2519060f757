//! The load generator: the same code drives every scenario, so their throughputs compare.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3 as envoy;
use prost::Message;
use tollgate_proto::authz::v1 as authz;

use crate::raw::{Answer, Http1Client, RawClient, Template, frame};

/// Which RPC a scenario calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Noop,
    Probe,
    Authorize,
    /// Envoy's `Check`, with the call as Envoy describes it (headers, path, source address).
    Check,
    /// HTTP forward-auth, with the call as nginx's njs script sends it (HTTP/1.1 keep-alive).
    ForwardAuth,
}

impl Target {
    fn path(self) -> &'static str {
        match self {
            Target::Noop => "/tollgate.bench.v1.BenchService/Noop",
            Target::Probe => "/tollgate.bench.v1.BenchService/Probe",
            Target::Authorize => "/tollgate.authz.v1.AuthzService/Authorize",
            Target::Check => "/envoy.service.auth.v3.Authorization/Check",
            Target::ForwardAuth => "/v1/forward-auth",
        }
    }
}

/// Where a Check or forward-auth request's `x-request-id` goes: a fixed-width placeholder, overwritten per
/// call, so a request is encoded once (as Authorize's are).
const REQUEST_ID_PLACEHOLDER: &[u8; 24] = b"@@@@@@@@@@@@@@@@@@@@@@@@";

/// The path of an OpenAI-style call of `capability`.
fn openai_path(capability: i32) -> &'static str {
    match capability {
        2 => "/v1/images/generations",
        3 => "/v1/embeddings",
        4 => "/v1/audio/speech",
        5 => "/v1/audio/transcriptions",
        _ => "/v1/chat/completions",
    }
}

/// The JSON body of an OpenAI-style call of `model`.
fn openai_body(model: &str) -> String {
    format!(r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}"#)
}

/// The forward-auth request nginx's njs script sends for an Authorize request: the client's
/// key, path, address (`X-Real-IP`, the proxy being trusted), estimate and body.
fn forward_auth_request(call: &authz::AuthorizeRequest) -> Vec<u8> {
    let body = openai_body(&call.model);
    format!(
        "POST /v1/forward-auth HTTP/1.1\r\nhost: tollgate\r\nauthorization: Bearer {}\r\n\
         x-forwarded-uri: {}\r\nx-real-ip: {}\r\nx-tollgate-estimated-tokens: {}\r\nx-request-id: {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        call.api_key,
        openai_path(call.capability),
        call.client_ip,
        call.estimated_tokens,
        String::from_utf8_lossy(REQUEST_ID_PLACEHOLDER),
        body.len(),
    )
    .into_bytes()
}

/// The Check request Envoy would send for an Authorize request: the key as a bearer, the
/// model in the body, the estimate in its header (so it is the same), the address as the
/// source, and the request id's placeholder.
fn check_request(call: &authz::AuthorizeRequest) -> envoy::CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
    let headers = [
        ("authorization", format!("Bearer {}", call.api_key)),
        ("content-type", "application/json".to_owned()),
        ("x-tollgate-estimated-tokens", call.estimated_tokens.to_string()),
        ("x-request-id", String::from_utf8_lossy(REQUEST_ID_PLACEHOLDER).into_owned()),
    ];
    let source = Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: call.client_ip.clone(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let http = HttpRequest {
        method: "POST".into(),
        path: openai_path(call.capability).into(),
        headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        raw_body: openai_body(&call.model).into_bytes(),
        ..Default::default()
    };
    envoy::CheckRequest {
        attributes: Some(envoy::AttributeContext {
            source: Some(source),
            request: Some(Request { http: Some(http), ..Default::default() }),
            ..Default::default()
        }),
    }
}

/// A group of request templates and how one is chosen from it.
pub struct Pool {
    pub weight: f64,
    pub requests: Vec<authz::AuthorizeRequest>,
    /// The requests encoded once, request id left out.
    encoded: Vec<Encoded>,
    /// Cumulative pick probabilities: Zipf (s = 1) over the templates, or uniform.
    cdf: Vec<f64>,
}

impl Pool {
    pub fn new(weight: f64, requests: Vec<authz::AuthorizeRequest>, zipf: bool) -> Self {
        let encoded = requests
            .iter()
            .map(|r| {
                let message = authz::AuthorizeRequest { request_id: String::new(), ..r.clone() }.encode_to_vec();
                Encoded { message: message.into(), id_at: 0 }
            })
            .collect();
        Self::with_encoded(weight, requests, encoded, zipf)
    }

    /// The same calls as Envoy's Check requests: whole gRPC frames, with where the request id
    /// goes found once.
    pub fn checks(weight: f64, requests: Vec<authz::AuthorizeRequest>, zipf: bool) -> Self {
        let encoded = requests
            .iter()
            .map(|r| {
                let message = check_request(r).encode_to_vec();
                let mut frame = Vec::with_capacity(5 + message.len());
                frame.push(0);
                frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
                frame.extend_from_slice(&message);
                Encoded::with_placeholder(frame)
            })
            .collect();
        Self::with_encoded(weight, requests, encoded, zipf)
    }

    /// The same calls as forward-auth requests: whole HTTP/1.1 requests.
    pub fn forward_auths(weight: f64, requests: Vec<authz::AuthorizeRequest>, zipf: bool) -> Self {
        let encoded = requests.iter().map(|r| Encoded::with_placeholder(forward_auth_request(r))).collect();
        Self::with_encoded(weight, requests, encoded, zipf)
    }

    fn with_encoded(weight: f64, requests: Vec<authz::AuthorizeRequest>, encoded: Vec<Encoded>, zipf: bool) -> Self {
        let mut cdf = Vec::with_capacity(requests.len());
        let mut total = 0.0;
        for rank in 1..=requests.len() {
            total += if zipf { 1.0 / rank as f64 } else { 1.0 };
            cdf.push(total);
        }
        cdf.iter_mut().for_each(|c| *c /= total);
        Self { weight, requests, encoded, cdf }
    }

    fn pick(&self, rng: &mut Rng) -> &Encoded {
        let u = rng.unit();
        let index = self.cdf.partition_point(|c| *c < u).min(self.encoded.len() - 1);
        &self.encoded[index]
    }
}

/// One benchmark scenario.
pub struct Scenario {
    pub name: &'static str,
    pub target: Target,
    pub pools: Vec<Pool>,
}

impl Scenario {
    /// The next call's gRPC frame (or HTTP request); every call gets its own request id.
    fn next(&self, rng: &mut Rng, request_id: &[u8]) -> Bytes {
        if matches!(self.target, Target::Check | Target::ForwardAuth) {
            return with_request_id(self.pick(rng), request_id);
        }
        let template = Template { message: self.pick(rng).message.clone(), wrapped: self.target != Target::Authorize };
        frame(&template, request_id)
    }

    fn pick(&self, rng: &mut Rng) -> &Encoded {
        let total: f64 = self.pools.iter().map(|p| p.weight).sum();
        let mut u = rng.unit() * total;
        for pool in &self.pools {
            if u < pool.weight {
                return pool.pick(rng);
            }
            u -= pool.weight;
        }
        self.pools[0].pick(rng)
    }
}

/// A request encoded once: an Authorize message, or a whole Check frame or forward-auth request
/// and where its request id's placeholder is.
struct Encoded {
    message: Bytes,
    id_at: usize,
}

impl Encoded {
    fn with_placeholder(message: Vec<u8>) -> Self {
        let id_at = message
            .windows(REQUEST_ID_PLACEHOLDER.len())
            .position(|w| w == REQUEST_ID_PLACEHOLDER)
            .expect("a placeholder");
        Self { message: message.into(), id_at }
    }
}

/// An encoded Check frame or forward-auth request with `request_id` (at most 24 bytes,
/// padded) written over the placeholder.
fn with_request_id(encoded: &Encoded, request_id: &[u8]) -> Bytes {
    let mut buf = bytes::BytesMut::from(&encoded.message[..]);
    let at = encoded.id_at;
    let id = &request_id[..request_id.len().min(REQUEST_ID_PLACEHOLDER.len())];
    let padding = REQUEST_ID_PLACEHOLDER.len() - id.len();
    buf[at..at + padding].fill(b'0');
    buf[at + padding..at + REQUEST_ID_PLACEHOLDER.len()].copy_from_slice(id);
    buf.freeze()
}

/// xorshift64*: fast, and good enough to pick keys.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where the load goes: gRPC connections the callers share, and the HTTP listener each
/// forward-auth caller keeps a connection of its own to.
pub struct Clients {
    pub grpc: Vec<RawClient>,
    pub http_port: u16,
}

/// One caller's connection.
enum Caller {
    Grpc(RawClient),
    Http(Http1Client),
}

impl Caller {
    /// Caller `task`'s connection for `target`.
    async fn new(target: Target, clients: &Clients, task: usize) -> Caller {
        if target == Target::ForwardAuth {
            match Http1Client::connect(clients.http_port).await {
                Ok(client) => return Caller::Http(client),
                Err(error) => panic!("cannot connect to the HTTP listener: {error}"),
            }
        }
        Caller::Grpc(clients.grpc[task % clients.grpc.len()].clone())
    }

    async fn call(&mut self, target: Target, body: Bytes) -> Answer {
        match self {
            Caller::Grpc(client) => client.call(target.path(), body).await,
            Caller::Http(client) => client.call(&body).await,
        }
    }
}

/// Counts of a closed-loop round.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub allowed: u64,
    pub denied: u64,
    pub failed: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.allowed + self.denied + self.failed
    }
}

/// `concurrency` callers, each sending its next call as soon as the last returns, for
/// `duration`.
pub async fn closed_loop(scenario: Arc<Scenario>, clients: &Clients, concurrency: usize, duration: Duration) -> Counts {
    let counters: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let mut callers = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        callers.push(Caller::new(scenario.target, clients, task).await);
    }
    let end = Instant::now() + duration;
    let tasks: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(task, mut client)| {
            let scenario = scenario.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
                let mut sequence = 0u64;
                while Instant::now() < end {
                    sequence += 1;
                    let body = scenario.next(&mut rng, format!("b{task}-{sequence}").as_bytes());
                    let slot = match client.call(scenario.target, body).await {
                        Answer::Allowed => 0,
                        Answer::Denied => 1,
                        Answer::Failed => 2,
                    };
                    counters[slot].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    Counts {
        allowed: counters[0].load(Ordering::Relaxed),
        denied: counters[1].load(Ordering::Relaxed),
        failed: counters[2].load(Ordering::Relaxed),
    }
}

/// Calls at a fixed total `rate` for `duration`; returns each call's latency in microseconds.
pub async fn open_loop(
    scenario: Arc<Scenario>,
    clients: &Clients,
    concurrency: usize,
    rate: f64,
    duration: Duration,
) -> Vec<u64> {
    let interval = Duration::from_secs_f64(concurrency as f64 / rate);
    let mut callers = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        callers.push(Caller::new(scenario.target, clients, task).await);
    }
    let end = Instant::now() + duration;
    let tasks: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(task, mut client)| {
            let scenario = scenario.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (task as u64 + 7).wrapping_mul(0x9E37_79B9));
                let mut latencies = Vec::new();
                // Spread the callers' phases over one interval.
                let mut next = tokio::time::Instant::now() + interval.mul_f64(task as f64 / concurrency as f64);
                let mut sequence = 0u64;
                while Instant::now() < end {
                    tokio::time::sleep_until(next).await;
                    next += interval;
                    sequence += 1;
                    let body = scenario.next(&mut rng, format!("l{task}-{sequence}").as_bytes());
                    let sent = Instant::now();
                    if client.call(scenario.target, body).await != Answer::Failed {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    all.sort_unstable();
    all
}

/// The `q` quantile (0–1) of sorted samples.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_frames_carry_each_call_s_request_id() {
        let call = authz::AuthorizeRequest {
            api_key: "sk-x".into(),
            model: "m".into(),
            capability: 1,
            client_ip: "203.0.113.9".into(),
            estimated_tokens: 100,
            request_id: String::new(),
        };
        let pool = Pool::checks(1.0, vec![call], false);
        let framed = with_request_id(&pool.encoded[0], b"b3-17");
        assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, framed.len() - 5);
        let decoded = envoy::CheckRequest::decode(&framed[5..]).unwrap();
        let http = decoded.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.headers["x-request-id"], format!("{:0>24}", "b3-17"));
        assert_eq!(http.headers["authorization"], "Bearer sk-x");
        assert_eq!(http.path, "/v1/chat/completions");
    }

    #[test]
    fn forward_auth_requests_are_whole_http_requests_with_each_call_s_id() {
        let call = authz::AuthorizeRequest {
            api_key: "sk-x".into(),
            model: "m".into(),
            capability: 3,
            client_ip: "203.0.113.9".into(),
            estimated_tokens: 100,
            request_id: String::new(),
        };
        let pool = Pool::forward_auths(1.0, vec![call], false);
        let request = with_request_id(&pool.encoded[0], b"b3-17");
        let text = std::str::from_utf8(&request).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/forward-auth HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nx-forwarded-uri: /v1/embeddings\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: 0000000000000000000b3-17\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
        assert!(body.starts_with(r#"{"model": "m","#), "{body}");
    }
}
