//! Envoy's `Check` (`envoy.service.auth.v3.Authorization`) on every backend, through a client
//! generated from Envoy's protos (`envoy-types`), as Envoy calls it: the headers, path and
//! body of the client's request in, an allow with headers to add and remove or a denial with
//! the HTTP answer out.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{World, create_key, postpaid_world};
use tollgate_tests::{Bearer, Harness, on_both_backends};
use tonic::Code;

on_both_backends!(check_allows_with_identity_headers_and_denies_like_openai);

/// A call as Envoy describes it: from 203.0.113.9, `POST path` with `headers` and `body`.
fn call(path: &str, headers: &[(&str, &str)], body: Option<&str>) -> CheckRequest {
    let headers: HashMap<String, String> = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let source = Peer {
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: "203.0.113.9".into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let http = HttpRequest {
        method: "POST".into(),
        path: path.into(),
        headers,
        raw_body: body.map(|b| b.as_bytes().to_vec()).unwrap_or_default(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            request: Some(Request { http: Some(http), ..Default::default() }),
            ..Default::default()
        }),
    }
}

async fn check(h: &Harness, request: CheckRequest) -> CheckResponse {
    let mut client = AuthorizationClient::with_interceptor(h.authz_channel(), Bearer::token(&h.admin_token));
    client.check(request).await.expect("Check answers").into_inner()
}

/// An OpenAI chat call for `model` with `max_tokens`, and the client's key.
fn chat(w: &World, secret: &str, max_tokens: i64) -> (String, Vec<(String, String)>) {
    let body = format!(r#"{{"model": "{}", "max_tokens": {max_tokens}, "messages": []}}"#, w.model);
    (body, vec![("authorization".into(), format!("Bearer {secret}"))])
}

fn chat_call(w: &World, secret: &str, max_tokens: i64) -> CheckRequest {
    let (body, headers) = chat(w, secret, max_tokens);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    call("/v1/chat/completions", &headers, Some(&body))
}

/// The denial's HTTP status, its headers and its OpenAI error `code`.
#[track_caller]
fn denied(response: &CheckResponse) -> (i32, i32, HashMap<String, String>, String) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not denied: {response:?}");
    };
    let headers = denied.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone()));
    let body: serde_json::Value = serde_json::from_str(&denied.body).expect("a JSON error body");
    let code = body["error"]["code"].as_str().expect("an error code").to_owned();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    (response.status.as_ref().unwrap().code, denied.status.as_ref().unwrap().code, headers.collect(), code)
}

async fn check_allows_with_identity_headers_and_denies_like_openai(h: &Harness) {
    let w = postpaid_world(h, "envoy").await;
    // TPM 1000, so the remaining tokens show the estimate the body made.
    let (key, secret) = create_key(h, &w, pb::Key { tpm_limit: Some(1000), ..w.key("Envoy") }).await;
    let allowed = check(h, chat_call(&w, &secret, 50)).await;
    assert_eq!(allowed.status.as_ref().unwrap().code, Code::Ok as i32, "{allowed:?}");
    let Some(HttpResponse::OkResponse(ok)) = &allowed.http_response else { panic!("{allowed:?}") };
    let upstream: HashMap<&str, &str> =
        ok.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.as_str(), h.value.as_str())).collect();
    assert_eq!(upstream["x-tollgate-key"], key.name);
    assert_eq!(upstream["x-tollgate-application"], w.application);
    assert_eq!(upstream["x-tollgate-account"], w.account);
    assert!(!upstream["x-tollgate-request-id"].is_empty());
    assert!(ok.headers_to_remove.iter().any(|h| h == "authorization"), "the key does not go upstream");
    let response: HashMap<&str, &str> = ok
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    // The group's default RPM is 60; the estimate is max_tokens plus the body's size / 4.
    assert_eq!(response["x-ratelimit-limit-requests"], "60");
    assert_eq!(response["x-ratelimit-remaining-requests"], "59");
    let (body, _) = chat(&w, &secret, 50);
    let estimate = 50 + body.len() as i64 / 4;
    assert_eq!(response["x-ratelimit-remaining-tokens"], (1000 - estimate).to_string());

    // Unknown, missing and disabled keys: 401, as OpenAI answers a bad key.
    let unknown = check(h, chat_call(&w, "sk-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH", 1)).await;
    assert_eq!(denied(&unknown), (Code::Unauthenticated as i32, 401, denied(&unknown).2, "invalid_api_key".into()));
    let missing = check(h, call("/v1/chat/completions", &[], Some(&chat(&w, "", 1).0))).await;
    assert_eq!(denied(&missing).1, 401);
    let (_, disabled) = create_key(h, &w, pb::Key { enabled: Some(false), ..w.key("Disabled") }).await;
    assert_eq!(denied(&check(h, chat_call(&w, &disabled, 1)).await).3, "api_key_disabled");

    // IP, capability and model: 403.
    let (_, fenced) = create_key(h, &w, pb::Key { ip_allowlist: vec!["10.0.0.0/8".into()], ..w.key("Fenced") }).await;
    let ip = denied(&check(h, chat_call(&w, &fenced, 1)).await);
    assert_eq!((ip.0, ip.1, ip.3.as_str()), (Code::PermissionDenied as i32, 403, "ip_not_allowed"));
    let text_only = pb::Key { capabilities: vec![pb::Capability::Text as i32], ..w.key("Text only") };
    let (_, text_only) = create_key(h, &w, text_only).await;
    let image = r#"{"model": "m-envoy", "prompt": "a cat"}"#;
    let text_bearer = format!("Bearer {text_only}");
    let capability = check(h, call("/v1/images/generations", &[("authorization", &text_bearer)], Some(image))).await;
    assert_eq!(denied(&capability).3, "capability_not_allowed");
    let bearer = format!("Bearer {secret}");
    let unknown_model = r#"{"model": "not-in-the-catalog"}"#;
    let model = check(h, call("/v1/chat/completions", &[("authorization", &bearer)], Some(unknown_model))).await;
    assert_eq!(denied(&model).3, "model_not_allowed");

    // RPM used up: 429 with Retry-After; quota used up: 429 insufficient_quota.
    let (_, once) = create_key(h, &w, pb::Key { rpm_limit: Some(1), ..w.key("Once a minute") }).await;
    assert!(matches!(check(h, chat_call(&w, &once, 1)).await.http_response, Some(HttpResponse::OkResponse(_))));
    let limited = denied(&check(h, chat_call(&w, &once, 1)).await);
    assert_eq!(
        (limited.0, limited.1, limited.3.as_str()),
        (Code::ResourceExhausted as i32, 429, "rate_limit_exceeded")
    );
    assert!(limited.2["retry-after"].parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)), "{:?}", limited.2);
    assert_eq!(limited.2["x-ratelimit-remaining-requests"], "0");
    // The first call holds what the quota has left; the next finds none.
    let (_, poor) = create_key(h, &w, pb::Key { quota: Some(1), ..w.key("Poor") }).await;
    assert!(matches!(check(h, chat_call(&w, &poor, 10)).await.http_response, Some(HttpResponse::OkResponse(_))));
    let quota = denied(&check(h, chat_call(&w, &poor, 10)).await);
    assert_eq!((quota.1, quota.3.as_str()), (429, "insufficient_quota"));

    // What cannot be read is a 400, never an allow: no model, a body that is not JSON.
    let no_model = check(h, call("/v1/chat/completions", &[("authorization", &bearer)], Some("{}"))).await;
    assert_eq!(denied(&no_model), (Code::InvalidArgument as i32, 400, denied(&no_model).2, "invalid_request".into()));
    let not_json = check(h, call("/v1/chat/completions", &[("authorization", &bearer)], Some("model=x"))).await;
    assert_eq!(denied(&not_json).1, 400);
    // A body Envoy cut short (`allow_partial_message`) cannot be checked: 413.
    let partial = [("authorization", bearer.as_str()), ("x-envoy-auth-partial-body", "true")];
    let cut = check(h, call("/v1/chat/completions", &partial, Some(r#"{"model": "m-env"#))).await;
    assert_eq!(denied(&cut).1, 413);
    // Without a body, the model comes from the path or the model header.
    let gemini = format!("/v1beta/models/{}:generateContent", w.model);
    let by_path =
        check(h, call(&gemini, &[("x-goog-api-key", &secret), ("x-tollgate-estimated-tokens", "10")], None)).await;
    assert!(matches!(by_path.http_response, Some(HttpResponse::OkResponse(_))), "{by_path:?}");

    // Reflection lists Envoy's service and describes it, as grpcurl asks.
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1 as reflection;
    let mut client = reflection::server_reflection_client::ServerReflectionClient::new(h.authz_channel());
    let requests = [
        reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
        reflection::server_reflection_request::MessageRequest::FileContainingSymbol(
            "envoy.service.auth.v3.Authorization".into(),
        ),
    ]
    .map(|message| reflection::ServerReflectionRequest { host: String::new(), message_request: Some(message) });
    let mut answers = client.server_reflection_info(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let Some(Ok(listed)) = answers.next().await else { panic!("no reflection answer") };
    let Some(reflection::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        listed.message_response
    else {
        panic!("{listed:?}")
    };
    assert!(list.service.iter().any(|s| s.name == "envoy.service.auth.v3.Authorization"), "{list:?}");
    let Some(Ok(described)) = answers.next().await else { panic!("no reflection answer") };
    assert!(
        matches!(described.message_response,
            Some(reflection::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files))
                if !files.file_descriptor_proto.is_empty()),
        "{described:?}"
    );

    // Envoy must authenticate itself: without the token the call is refused.
    let mut anonymous = AuthorizationClient::new(h.authz_channel());
    if h.backend != tollgate_tests::Backend::Embedded {
        let refused = anonymous.check(chat_call(&w, &secret, 1)).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
}

/// Reset headers on a service clock a day ahead of the real one.
mod service_clock {
    use super::*;

    tollgate_tests::backend_suite!(
        setup: {
            // A day ahead of the real clock: the reset headers must follow the service's clock.
            let day = 24 * 3600 * 1_000_000;
            let clock = tollgate_core::clock::ManualClock::new(tollgate_core::time::now_micros() + day);
            (tollgate_tests::Options { clock: Some(clock.clone()), ..Default::default() }, clock)
        },
        checks: [reset_headers_count_from_the_decision_on_the_service_clock]
    );

    /// The allowed call's `x-ratelimit-*` response headers.
    fn rate_headers(response: &CheckResponse) -> HashMap<String, String> {
        let Some(HttpResponse::OkResponse(ok)) = &response.http_response else { panic!("{response:?}") };
        ok.response_headers_to_add
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    }

    async fn reset_headers_count_from_the_decision_on_the_service_clock(
        h: &Harness,
        _clock: &tollgate_core::clock::ManualClock,
    ) {
        let w = postpaid_world(h, "envoy-reset").await;
        let (_, secret) = create_key(h, &w, pb::Key { rpm_limit: Some(6), ..w.key("Reset") }).await;
        // RPM 6: each call takes 10 s of the minute, so after two the limit is whole in 20 s.
        check(h, chat_call(&w, &secret, 1)).await;
        let headers = rate_headers(&check(h, chat_call(&w, &secret, 1)).await);
        assert_eq!(headers["x-ratelimit-remaining-requests"], "4");
        assert_eq!(headers["x-ratelimit-reset-requests"], "20s", "{headers:?}");
    }
}
