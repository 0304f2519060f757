//! HTTP forward-auth on the HTTP listener: the endpoint nginx (`auth_request`, or the njs
//! script the docs ship), Caddy `forward_auth`, Traefik `ForwardAuth` and Envoy's HTTP
//! ext_authz call before they send a call upstream. A thin adapter over the
//! [`front_door`](crate::front_door), like Envoy's `Check`.
//!
//! - `/v1/forward-auth`, any method. The client's path comes from `X-Forwarded-Uri` (Caddy,
//!   Traefik), else `X-Original-URI` (nginx), else what follows `/v1/forward-auth` (Envoy's
//!   HTTP mode appends it); its headers are the request's own; its body, when the proxy sends
//!   one (nginx with njs, Envoy with `with_request_body`).
//! - The proxy proves itself with `X-Tollgate-Gateway-Token` (the gateway token), since
//!   `Authorization` carries the client's key.
//! - The client's address is the TCP peer's, unless the peer is inside `--trusted-proxies`:
//!   then `X-Real-IP`, else the right-most `X-Forwarded-For` address that is not a trusted
//!   proxy.
//! - Allowed: 200 with `X-Tollgate-Key`, `-Application`, `-Account`, `-Request-Id` and
//!   OpenAI's `x-ratelimit-*` headers, for the proxy to copy. Denied: the status, `Retry-After`
//!   and OpenAI error body the client should get, which Caddy, Traefik and Envoy return as is.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use ipnet::IpNet;

use crate::authorize::Authorizer;
use crate::front_door::{self, FrontDoorSettings, Verdict};
use crate::grpc::AuthorizeAccess;
use crate::llm_request::ProxiedCall;
use crate::openai::{self, ErrorAnswer};

/// The header a proxy sends the gateway token in.
pub const GATEWAY_TOKEN_HEADER: &str = "x-tollgate-gateway-token";
/// Where forward-auth is served.
pub const PATH: &str = "/v1/forward-auth";
/// The largest body read: an LLM call with images inlined runs to megabytes. Beyond it the
/// call is 413 in OpenAI's shape, as a body Envoy cut short is.
pub const MAX_BODY: usize = 32 << 20;

/// The forward-auth endpoint's state.
pub struct ForwardAuth {
    authorizer: Arc<Authorizer>,
    access: AuthorizeAccess,
    settings: Arc<FrontDoorSettings>,
    trusted_proxies: Vec<IpNet>,
}

impl ForwardAuth {
    pub fn new(
        authorizer: Arc<Authorizer>,
        access: AuthorizeAccess,
        settings: Arc<FrontDoorSettings>,
        trusted_proxies: Vec<IpNet>,
    ) -> Self {
        Self { authorizer, access, settings, trusted_proxies }
    }

    /// The routes, for the HTTP listener (served with `ConnectInfo<SocketAddr>`).
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route(PATH, any(forward_auth))
            .route(&format!("{PATH}/{{*path}}"), any(forward_auth))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, what it says.
fn client_ip(trusted_proxies: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|net| net.contains(&ip));
    let peer = canonical(peer);
    if !trusted(peer) {
        return peer;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(real) = header("x-real-ip").and_then(|v| v.trim().parse().ok()) {
        return canonical(real);
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<IpAddr> = forwarded.flat_map(|v| v.split(',')).filter_map(|a| a.trim().parse().ok()).collect();
    hops.into_iter().rev().map(canonical).find(|ip| !trusted(*ip)).unwrap_or(peer)
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's path and query, as the proxy passed it on.
fn client_path(uri: &Uri, headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    if let Some(path) = header("x-forwarded-uri").or_else(|| header("x-original-uri")) {
        return path.to_owned();
    }
    let appended = uri.path().strip_prefix(PATH).filter(|rest| !rest.is_empty()).unwrap_or("/");
    match uri.query() {
        Some(query) => format!("{appended}?{query}"),
        None => appended.to_owned(),
    }
}

fn error_response(answer: ErrorAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, [(http::header::CONTENT_TYPE, "application/json")], answer.body).into_response();
    let headers = response.headers_mut();
    if let Some(seconds) = answer.retry_after {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    for (name, value) in answer.rate_limit_headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

async fn forward_auth(
    State(door): State<Arc<ForwardAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let token = headers.get(GATEWAY_TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if !door.access.accepts(token) {
        return error_response(openai::proxy_not_authenticated());
    }
    // Too large, or cut off mid-way: either way the call cannot be read whole.
    let Ok(body) = body else { return error_response(openai::too_large()) };
    let path = client_path(&uri, &headers);
    let call = ProxiedCall {
        path: &path,
        headers: &headers,
        body: (!body.is_empty()).then_some(&body[..]),
        client_ip: Some(client_ip(&door.trusted_proxies, peer.ip(), &headers)),
    };
    match front_door::decide(&door.authorizer, &call, &door.settings).await {
        Verdict::Allow { upstream_headers, response_headers, .. } => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            for (name, value) in upstream_headers.into_iter().chain(response_headers) {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            response
        }
        Verdict::Deny(answer) => error_response(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_a_trusted_proxy_says_who_the_client_is() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.9, 10.9.9.9")]);
        assert_eq!(client_ip(&trusted, proxy, &forwarded), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&trusted, stranger, &forwarded), stranger, "an untrusted peer cannot claim an address");
        let real = headers(&[("x-real-ip", "192.0.2.1"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(&trusted, proxy, &real), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&trusted, proxy, &headers(&[])), proxy);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_ip(&trusted, mapped, &forwarded), "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_path_comes_from_what_each_proxy_sends() {
        let uri: Uri = "/v1/forward-auth/v1/embeddings?x=1".parse().unwrap();
        assert_eq!(client_path(&uri, &headers(&[])), "/v1/embeddings?x=1");
        assert_eq!(client_path(&uri, &headers(&[("x-forwarded-uri", "/v1/chat/completions")])), "/v1/chat/completions");
        assert_eq!(client_path(&uri, &headers(&[("x-original-uri", "/v1/messages")])), "/v1/messages");
        assert_eq!(client_path(&"/v1/forward-auth".parse().unwrap(), &headers(&[])), "/");
    }
}
