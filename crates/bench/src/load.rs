//! The load generator: the same code drives every scenario, so their throughputs compare.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3 as envoy;
use prost::Message;
use tollgate_proto::authz::v1 as authz;

use crate::raw::{Answer, RawClient, Template, frame};

/// Which RPC a scenario calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Noop,
    Probe,
    Authorize,
    /// Envoy's `Check`, with the call as Envoy describes it (headers, path, source address).
    Check,
}

impl Target {
    fn path(self) -> &'static str {
        match self {
            Target::Noop => "/tollgate.bench.v1.BenchService/Noop",
            Target::Probe => "/tollgate.bench.v1.BenchService/Probe",
            Target::Authorize => "/tollgate.authz.v1.AuthzService/Authorize",
            Target::Check => "/envoy.service.auth.v3.Authorization/Check",
        }
    }
}

/// Where a Check request's `x-request-id` goes: a fixed-width placeholder, overwritten per
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
        raw_body: format!(r#"{{"model": "{}", "messages": [{{"role": "user", "content": "hi"}}]}}"#, call.model)
            .into_bytes(),
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
                let id_at = frame
                    .windows(REQUEST_ID_PLACEHOLDER.len())
                    .position(|w| w == REQUEST_ID_PLACEHOLDER)
                    .expect("a placeholder");
                Encoded { message: frame.into(), id_at }
            })
            .collect();
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
    /// The next call's gRPC frame; every call gets its own request id.
    fn next(&self, rng: &mut Rng, request_id: &[u8]) -> Bytes {
        if self.target == Target::Check {
            return check_frame(self.pick(rng), request_id);
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

/// A request encoded once: an Authorize message, or a whole Check frame and where its request
/// id's placeholder is.
struct Encoded {
    message: Bytes,
    id_at: usize,
}

/// The gRPC frame of an encoded Check request with `request_id` (at most 24 bytes, padded)
/// written over the placeholder.
fn check_frame(encoded: &Encoded, request_id: &[u8]) -> Bytes {
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
pub async fn closed_loop(
    scenario: Arc<Scenario>,
    clients: &[RawClient],
    concurrency: usize,
    duration: Duration,
) -> Counts {
    let counters: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let scenario = scenario.clone();
            let mut client = clients[task % clients.len()].clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
                let mut sequence = 0u64;
                while Instant::now() < end {
                    sequence += 1;
                    let body = scenario.next(&mut rng, format!("b{task}-{sequence}").as_bytes());
                    let slot = match client.call(scenario.target.path(), body).await {
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
    clients: &[RawClient],
    concurrency: usize,
    rate: f64,
    duration: Duration,
) -> Vec<u64> {
    let interval = Duration::from_secs_f64(concurrency as f64 / rate);
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let scenario = scenario.clone();
            let mut client = clients[task % clients.len()].clone();
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
                    if client.call(scenario.target.path(), body).await != Answer::Failed {
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
        let framed = check_frame(&pool.encoded[0], b"b3-17");
        assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, framed.len() - 5);
        let decoded = envoy::CheckRequest::decode(&framed[5..]).unwrap();
        let http = decoded.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.headers["x-request-id"], format!("{:0>24}", "b3-17"));
        assert_eq!(http.headers["authorization"], "Bearer sk-x");
        assert_eq!(http.path, "/v1/chat/completions");
    }
}
