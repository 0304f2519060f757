//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`), for Envoy,
//! Istio (`CUSTOM` AuthorizationPolicy) and Envoy Gateway: a thin adapter over the
//! [`front_door`](crate::front_door). Envoy authenticates itself like any gateway, with the
//! gateway token in the call's metadata (`initial_metadata` on its gRPC service).
//!
//! Allowed: `OK`, the identity headers added upstream, the client's key removed, OpenAI's
//! rate-limit headers added to the response. Denied: the gRPC status that says why
//! (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT`,
//! `UNAVAILABLE`) and the HTTP answer the client gets (status, OpenAI error body,
//! `Retry-After`).

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpResponse,
    HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::google::rpc;
use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use tonic::{Code, Request, Response, Status};

use crate::authorize::Authorizer;
use crate::front_door::{self, FrontDoorSettings, Verdict};
use crate::grpc::AuthorizeAccess;
use crate::llm_request::ProxiedCall;
use crate::openai::{self, ErrorAnswer};

/// `envoy.service.auth.v3.Authorization`.
#[derive(Clone)]
pub struct EnvoyCheck {
    authorizer: Arc<Authorizer>,
    access: AuthorizeAccess,
    settings: Arc<FrontDoorSettings>,
}

impl EnvoyCheck {
    pub fn new(authorizer: Arc<Authorizer>, access: AuthorizeAccess, settings: Arc<FrontDoorSettings>) -> Self {
        Self { authorizer, access, settings }
    }
}

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_owned(), value, ..Default::default() }),
        // Overwrite: a client must not be able to send its own identity headers upstream.
        append_action: 2,
        ..Default::default()
    }
}

/// The gRPC code Envoy logs for a denial of this HTTP status.
fn code_of(status: u16) -> Code {
    match status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        429 => Code::ResourceExhausted,
        _ => Code::Unavailable,
    }
}

fn denied(answer: ErrorAnswer) -> CheckResponse {
    let mut headers = vec![header("content-type", "application/json".into())];
    if let Some(seconds) = answer.retry_after {
        headers.push(header("retry-after", seconds.to_string()));
    }
    headers.extend(answer.rate_limit_headers.into_iter().map(|(name, value)| header(name, value)));
    CheckResponse {
        status: Some(rpc::Status { code: code_of(answer.status) as i32, ..Default::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(answer.status) }),
            headers,
            body: answer.body,
        })),
        ..Default::default()
    }
}

/// The headers Envoy sent with `encode_raw_headers: true` (a list of raw values instead of the
/// map), as a map: lower-case names, repeated ones joined with commas.
fn raw_headers(http: &HttpRequest) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = HashMap::new();
    for raw in http.header_map.iter().flat_map(|m| &m.headers) {
        let value = String::from_utf8_lossy(&raw.raw_value);
        map.entry(raw.key.to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}

/// The downstream client's address, as Envoy established it.
fn client_ip(request: &CheckRequest) -> Option<IpAddr> {
    let source = request.attributes.as_ref()?.source.as_ref()?;
    match source.address.as_ref()?.address.as_ref()? {
        Address::SocketAddress(socket) => socket.address.parse().ok(),
        _ => None,
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyCheck {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        self.access.check(request.metadata())?;
        let request = request.into_inner();
        let http = request.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let raw;
        let headers: &HashMap<String, String> = match http {
            Some(http) if http.headers.is_empty() && http.header_map.is_some() => {
                raw = raw_headers(http);
                &raw
            }
            Some(http) => &http.headers,
            None => {
                raw = HashMap::new();
                &raw
            }
        };
        let path = http.map_or("", |h| h.path.as_str());
        // `with_request_body`: bytes in `raw_body` (`pack_as_bytes`), else UTF-8 in `body`.
        let body = http.and_then(|h| match (h.raw_body.is_empty(), h.body.is_empty()) {
            (false, _) => Some(h.raw_body.as_slice()),
            (true, false) => Some(h.body.as_bytes()),
            (true, true) => None,
        });
        let call = ProxiedCall { path, headers, body, client_ip: client_ip(&request) };
        // Envoy marks a body it cut at `max_request_bytes`: the call cannot be read from it.
        if headers.get("x-envoy-auth-partial-body").is_some_and(|v| v == "true") {
            return Ok(Response::new(denied(openai::too_large())));
        }
        let response = match front_door::decide(&self.authorizer, &call, &self.settings).await {
            Verdict::Allow { upstream_headers, remove_headers, response_headers } => CheckResponse {
                status: Some(rpc::Status { code: Code::Ok as i32, ..Default::default() }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: upstream_headers.into_iter().map(|(name, value)| header(name, value)).collect(),
                    headers_to_remove: remove_headers.iter().map(|name| (*name).to_owned()).collect(),
                    response_headers_to_add: response_headers
                        .into_iter()
                        .map(|(name, value)| header(name, value))
                        .collect(),
                    ..Default::default()
                })),
                ..Default::default()
            },
            Verdict::Deny(answer) => denied(answer),
        };
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap as RawHeaderMap, HeaderValue};

    use super::*;

    #[test]
    fn raw_headers_read_as_the_map_envoy_would_send() {
        let raw = |key: &str, value: &str| HeaderValue {
            key: key.into(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        let http = HttpRequest {
            header_map: Some(RawHeaderMap {
                headers: vec![raw("Authorization", "Bearer sk-a"), raw("x-tag", "a"), raw("X-Tag", "b")],
            }),
            ..Default::default()
        };
        let map = raw_headers(&http);
        assert_eq!(map.get("authorization").map(String::as_str), Some("Bearer sk-a"));
        assert_eq!(map.get("x-tag").map(String::as_str), Some("a,b"));
    }
}
