//! Authorize over real gRPC on both backends: every deny reason, their order, the counters,
//! rotation, expiry at the boundary, ExplainAuthorize and request validation.

use tollgate_core::clock::ManualClock;
use tollgate_core::time::now_micros;
use tollgate_proto::authz::v1 as authz;
use tollgate_proto::keys::v1 as pb;
use tollgate_tests::fixtures::{create_key, mask, postpaid_world, world};
use tollgate_tests::{Harness, Options};
use tonic::Code;

use crate::assert_code;

// Each check on every backend, with a manual clock at the present.
tollgate_tests::backend_suite!(
    setup: {
        let clock = tollgate_core::clock::ManualClock::new(tollgate_core::time::now_micros());
        (tollgate_tests::Options { clock: Some(clock.clone()), ..Default::default() }, clock)
    },
    checks: [
        malformed_and_unknown_keys_are_denied_without_a_lookup,
        static_rules_deny_in_order,
        the_models_capability_is_checked_not_only_the_claimed_one,
        ip_allowlists_match_v4_v6_cidr_and_mapped_addresses,
        expiry_is_exact_at_the_boundary,
        rotated_secrets_work_until_their_grace_ends,
        money_limits_deny_with_their_reasons,
        a_denial_takes_nothing_from_later_counters,
        rates_refill_over_time,
        limits_come_from_key_then_group_then_cap,
        concurrent_calls_get_exactly_the_rpm,
        concurrent_holds_never_exceed_the_budget,
        explain_reports_every_rule_and_takes_nothing,
        bad_requests_name_the_field,
    ]
);

async fn authorize(h: &Harness, request: authz::AuthorizeRequest) -> authz::AuthorizeResponse {
    h.authz().authorize(request).await.expect("authorize answers").into_inner()
}

#[track_caller]
fn assert_denied(response: &authz::AuthorizeResponse, reason: authz::DenyReason) {
    assert_eq!(response.decision(), authz::Decision::Deny, "{response:?}");
    assert_eq!(response.reason(), reason, "{response:?}");
    assert!(!response.message.is_empty());
}

#[track_caller]
fn assert_allowed(response: &authz::AuthorizeResponse) {
    assert_eq!(response.decision(), authz::Decision::Allow, "{response:?}");
}

async fn update(h: &Harness, key: pb::Key, paths: &[&str]) -> pb::Key {
    let request = pb::UpdateKeyRequest { key: Some(key), update_mask: mask(paths), expire_after: None };
    h.keys().update_key(request).await.unwrap().into_inner().key.unwrap()
}

async fn malformed_and_unknown_keys_are_denied_without_a_lookup(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "who").await;
    let (key, secret) = create_key(h, &w, w.key("Real")).await;
    let mut typo = secret.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    for bad in ["", "sk-", "pk-abc", &secret[..secret.len() - 1], &String::from_utf8(typo).unwrap()] {
        let response = authorize(h, w.call(bad)).await;
        assert_denied(&response, authz::DenyReason::KeyMalformed);
        assert!(response.identity.is_none());
    }
    let unknown = tollgate_core::key_format::ApiKeySecret::generate();
    assert_denied(&authorize(h, w.call(unknown.expose())).await, authz::DenyReason::KeyNotFound);

    let allowed = authorize(h, w.call(&secret)).await;
    assert_allowed(&allowed);
    let identity = allowed.identity.unwrap();
    assert_eq!(identity.key, key.name);
    assert_eq!((identity.account.as_str(), identity.group.as_str()), ("accounts/who", "groups/g-who"));
    assert_eq!((identity.application, identity.price_multiplier), (w.application.clone(), "1.5".to_owned()));

    // A deleted key is unknown at once.
    h.keys().delete_key(pb::DeleteKeyRequest { name: key.name }).await.unwrap();
    assert_denied(&authorize(h, w.call(&secret)).await, authz::DenyReason::KeyNotFound);
}

async fn the_models_capability_is_checked_not_only_the_claimed_one(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "claims").await;
    let image_model = format!("{}-image", w.model);
    h.models()
        .create_model(pb::CreateModelRequest {
            model_id: image_model.clone(),
            model: Some(pb::Model { capability: pb::Capability::Image as i32, ..Default::default() }),
        })
        .await
        .unwrap();
    let (_, text_only) =
        create_key(h, &w, pb::Key { capabilities: vec![pb::Capability::Text as i32], ..w.key("Text only") }).await;
    let (_, any) = create_key(h, &w, w.key("Anything")).await;
    let claims_text = |secret: &str| authz::AuthorizeRequest { model: image_model.clone(), ..w.call(secret) };
    // Claiming text does not open an image model to a text-only key.
    assert_denied(&authorize(h, claims_text(&text_only)).await, authz::DenyReason::CapabilityNotAllowed);
    assert_allowed(&authorize(h, claims_text(&any)).await);
    assert_allowed(&authorize(h, w.call(&text_only)).await);
}

async fn static_rules_deny_in_order(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "rules").await;
    let other_model = format!("{}-other", w.model);
    h.models()
        .create_model(pb::CreateModelRequest {
            model_id: other_model.clone(),
            model: Some(pb::Model { capability: pb::Capability::Text as i32, ..Default::default() }),
        })
        .await
        .unwrap();
    let (key, secret) = create_key(
        h,
        &w,
        pb::Key {
            allowed_models: vec![w.model.clone()],
            capabilities: vec![pb::Capability::Text as i32],
            ip_allowlist: vec!["203.0.113.0/24".into()],
            ..w.key("Strict")
        },
    )
    .await;
    assert_allowed(&authorize(h, w.call(&secret)).await);
    let with = |edit: &dyn Fn(&mut authz::AuthorizeRequest)| {
        let mut request = w.call(&secret);
        edit(&mut request);
        request
    };
    assert_denied(
        &authorize(h, with(&|r| r.model = "not-in-catalog".into())).await,
        authz::DenyReason::ModelNotAllowed,
    );
    assert_denied(&authorize(h, with(&|r| r.model = other_model.clone())).await, authz::DenyReason::ModelNotAllowed);
    let image = |r: &mut authz::AuthorizeRequest| r.capability = pb::Capability::Image as i32;
    assert_denied(&authorize(h, with(&image)).await, authz::DenyReason::CapabilityNotAllowed);
    // IP comes before capability, which comes before model.
    let everything_wrong = |r: &mut authz::AuthorizeRequest| {
        r.client_ip = "198.51.100.1".into();
        r.capability = pb::Capability::Image as i32;
        r.model = other_model.clone();
    };
    assert_denied(&authorize(h, with(&everything_wrong)).await, authz::DenyReason::IpNotAllowed);
    let disabled =
        update(h, pb::Key { name: key.name.clone(), enabled: Some(false), ..Default::default() }, &["enabled"]).await;
    assert_eq!(disabled.enabled, Some(false));
    assert_denied(&authorize(h, with(&everything_wrong)).await, authz::DenyReason::KeyDisabled);

    // The group's whitelist intersects the key's list.
    update(h, pb::Key { name: key.name.clone(), enabled: Some(true), ..Default::default() }, &["enabled"]).await;
    h.groups()
        .update_group(pb::UpdateGroupRequest {
            group: Some(pb::Group {
                name: w.group.clone(),
                allowed_models: vec![other_model.clone()],
                ..Default::default()
            }),
            update_mask: mask(&["allowed_models"]),
        })
        .await
        .unwrap();
    assert_denied(&authorize(h, w.call(&secret)).await, authz::DenyReason::ModelNotAllowed);
}

async fn ip_allowlists_match_v4_v6_cidr_and_mapped_addresses(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "ips").await;
    let allowlist = vec!["198.51.100.7".into(), "10.0.0.0/8".into(), "2001:db8::/32".into()];
    let (_, secret) = create_key(h, &w, pb::Key { ip_allowlist: allowlist, ..w.key("Fenced") }).await;
    let from = |ip: &str| authz::AuthorizeRequest { client_ip: ip.into(), ..w.call(&secret) };
    for ip in ["198.51.100.7", "10.200.3.4", "2001:db8:ffff::1", "::ffff:10.1.1.1", "::ffff:198.51.100.7"] {
        assert_allowed(&authorize(h, from(ip)).await);
    }
    for ip in ["198.51.100.8", "11.0.0.1", "2001:db9::1", "::ffff:11.0.0.1", ""] {
        assert_denied(&authorize(h, from(ip)).await, authz::DenyReason::IpNotAllowed);
    }
}

async fn expiry_is_exact_at_the_boundary(h: &Harness, clock: &ManualClock) {
    let w = postpaid_world(h, "edge").await;
    let (key, secret) = create_key(h, &w, w.key("Ending")).await;
    let expire_at = now_micros() + 3_600_000_000;
    let ts = tollgate_proto::time::timestamp(expire_at);
    update(h, pb::Key { name: key.name.clone(), expire_time: Some(ts), ..Default::default() }, &["expire_time"]).await;
    clock.set(expire_at - 1);
    assert_allowed(&authorize(h, w.call(&secret)).await);
    clock.set(expire_at);
    assert_denied(&authorize(h, w.call(&secret)).await, authz::DenyReason::KeyExpired);
}

async fn rotated_secrets_work_until_their_grace_ends(h: &Harness, clock: &ManualClock) {
    let w = postpaid_world(h, "rot").await;
    let (key, old) = create_key(h, &w, w.key("Rotating")).await;
    let rotated = h
        .keys()
        .rotate_key(pb::RotateKeyRequest {
            name: key.name.clone(),
            grace_period: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
        })
        .await
        .unwrap()
        .into_inner()
        .created
        .unwrap();
    let grace_end =
        tollgate_proto::time::timestamp_micros(&rotated.key.unwrap().previous_secret_expire_time.unwrap()).unwrap();
    clock.set(grace_end - 1);
    assert_allowed(&authorize(h, w.call(&old)).await);
    assert_allowed(&authorize(h, w.call(&rotated.secret)).await);
    clock.set(grace_end);
    let denied = authorize(h, w.call(&old)).await;
    assert_denied(&denied, authz::DenyReason::KeyExpired);
    assert!(denied.message.contains("rotated"), "{}", denied.message);
    assert_allowed(&authorize(h, w.call(&rotated.secret)).await);
}

async fn money_limits_deny_with_their_reasons(h: &Harness, _: &ManualClock) {
    let w = world(h, "money").await;
    // The world's model costs 2 credits per output token, times 1.5: 100 tokens hold 300.
    let cases = [
        (pb::Key { quota: Some(300), ..w.key("Quota") }, authz::DenyReason::QuotaExhausted),
        (
            pb::Key { quota: Some(10_000), daily_budget: Some(300), ..w.key("Daily") },
            authz::DenyReason::DailyBudgetExhausted,
        ),
        (
            pb::Key { quota: Some(10_000), monthly_budget: Some(300), ..w.key("Monthly") },
            authz::DenyReason::MonthlyBudgetExhausted,
        ),
    ];
    for (settings, reason) in cases {
        let (_, secret) = create_key(h, &w, settings).await;
        let first = authorize(h, w.call(&secret)).await;
        assert_allowed(&first);
        assert_eq!(first.held_credits, 300);
        assert_denied(&authorize(h, w.call(&secret)).await, reason);
    }
    // Without a quota, the prepaid account's balance bounds the key; it has no credits. (A
    // fresh account: the holds above count against their account's balance too.)
    let w = world(h, "money-prepaid").await;
    let (_, unlimited) = create_key(h, &w, w.key("Unlimited")).await;
    assert_denied(&authorize(h, w.call(&unlimited)).await, authz::DenyReason::AccountBalanceExhausted);
    // An overdraft lets it spend up to the limit.
    h.accounts()
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account { name: w.account.clone(), credit_limit: 450, ..Default::default() }),
            update_mask: mask(&["credit_limit"]),
        })
        .await
        .unwrap();
    // Every authz replica obeys an account change within a second (usually at once).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let first = loop {
        let response = authorize(h, w.call(&unlimited)).await;
        if response.decision() == authz::Decision::Allow || std::time::Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_allowed(&first);
    let headroom = first.headroom.unwrap();
    assert_eq!((first.held_credits, headroom.account_remaining), (300, Some(150)));
    assert_eq!(headroom.max_tokens, Some(150), "450 credits at 3 credits per token");
    let second = authorize(h, w.call(&unlimited)).await;
    assert_eq!(second.held_credits, 150, "the hold is capped by what is left");
    assert_denied(&authorize(h, w.call(&unlimited)).await, authz::DenyReason::AccountBalanceExhausted);
    // Postpaid accounts are not bounded: nothing is held.
    h.accounts()
        .update_account(pb::UpdateAccountRequest {
            account: Some(pb::Account { name: w.account.clone(), unlimited_credit: true, ..Default::default() }),
            update_mask: mask(&["unlimited_credit"]),
        })
        .await
        .unwrap();
    let (_, postpaid) = create_key(h, &w, w.key("Postpaid")).await;
    let free = authorize(h, w.call(&postpaid)).await;
    assert_allowed(&free);
    assert_eq!(free.held_credits, 0);
}

async fn a_denial_takes_nothing_from_later_counters(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "order").await;
    let (_, secret) = create_key(
        h,
        &w,
        pb::Key {
            quota: Some(1_000_000),
            rpm_limit: Some(3),
            ip_allowlist: vec!["203.0.113.0/24".into()],
            ..w.key("Ordered")
        },
    )
    .await;
    let outsider = authz::AuthorizeRequest { client_ip: "198.51.100.1".into(), ..w.call(&secret) };
    for _ in 0..10 {
        assert_denied(&authorize(h, outsider.clone()).await, authz::DenyReason::IpNotAllowed);
    }
    for remaining in [2, 1, 0] {
        let response = authorize(h, w.call(&secret)).await;
        assert_allowed(&response);
        assert_eq!(response.headroom.unwrap().rpm.unwrap().remaining, remaining, "IP denials took no RPM");
    }
    let limited = authorize(h, w.call(&secret)).await;
    assert_denied(&limited, authz::DenyReason::RpmLimited);
    let retry = limited.retry_after.unwrap();
    assert!(retry.seconds >= 19 && retry.seconds <= 20, "{retry:?}");
}

async fn rates_refill_over_time(h: &Harness, clock: &ManualClock) {
    let w = postpaid_world(h, "refill").await;
    let (_, secret) = create_key(
        h,
        &w,
        pb::Key { quota: Some(1_000_000), rpm_limit: Some(50), tpm_limit: Some(1_000), ..w.key("Paced") },
    )
    .await;
    for _ in 0..10 {
        assert_allowed(&authorize(h, w.call(&secret)).await);
    }
    // TPM: 10 calls of 100 tokens used it up.
    let limited = authorize(h, w.call(&secret)).await;
    assert_denied(&limited, authz::DenyReason::TpmLimited);
    assert_eq!(limited.retry_after.unwrap().seconds, 6, "100 tokens at 1000 per minute");
    clock.advance(6_000_000);
    let refilled = authorize(h, w.call(&secret)).await;
    assert_allowed(&refilled);
    let tpm = refilled.headroom.unwrap().tpm.unwrap();
    assert_eq!((tpm.limit, tpm.remaining), (1_000, 0));
    let too_big = authz::AuthorizeRequest { estimated_tokens: 1_001, ..w.call(&secret) };
    let never = authorize(h, too_big).await;
    assert_denied(&never, authz::DenyReason::TpmLimited);
    assert!(never.retry_after.is_none() && never.message.contains("exceed"));
}

async fn limits_come_from_key_then_group_then_cap(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "layers").await;
    let (_, group_default) = create_key(h, &w, pb::Key { quota: Some(1_000_000), ..w.key("Default") }).await;
    let (_, own) = create_key(h, &w, pb::Key { quota: Some(1_000_000), rpm_limit: Some(7), ..w.key("Own") }).await;
    let rpm = |response: authz::AuthorizeResponse| response.headroom.unwrap().rpm.unwrap().limit;
    assert_eq!(rpm(authorize(h, w.call(&group_default)).await), 60);
    assert_eq!(rpm(authorize(h, w.call(&own)).await), 7);
}

async fn concurrent_calls_get_exactly_the_rpm(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "burst").await;
    let (_, secret) =
        create_key(h, &w, pb::Key { quota: Some(1_000_000), rpm_limit: Some(50), ..w.key("Burst") }).await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let mut client = h.authz();
            let request = w.call(&secret);
            tokio::spawn(async move { client.authorize(request).await.unwrap().into_inner() })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        let response = task.await.unwrap();
        if response.decision() == authz::Decision::Allow {
            allowed += 1;
        } else {
            assert_eq!(response.reason(), authz::DenyReason::RpmLimited);
        }
    }
    assert_eq!(allowed, 50);
}

async fn concurrent_holds_never_exceed_the_budget(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "brink").await;
    let (_, secret) =
        create_key(h, &w, pb::Key { daily_budget: Some(10_000), quota: Some(1_000_000), ..w.key("Brink") }).await;
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let mut client = h.authz();
            let request = w.call(&secret);
            tokio::spawn(async move { client.authorize(request).await.unwrap().into_inner() })
        })
        .collect();
    let mut held = 0;
    for task in tasks {
        held += task.await.unwrap().held_credits;
    }
    assert_eq!(held, 10_000, "34 holds of 300 would be 10,200: holds stop at the budget");
}

async fn explain_reports_every_rule_and_takes_nothing(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "explain").await;
    let (key, secret) = create_key(
        h,
        &w,
        pb::Key {
            quota: Some(1_000),
            rpm_limit: Some(2),
            ip_allowlist: vec!["10.0.0.0/8".into()],
            ..w.key("Explained")
        },
    )
    .await;
    update(h, pb::Key { name: key.name.clone(), enabled: Some(false), ..Default::default() }, &["enabled"]).await;
    let explain = |request: authz::AuthorizeRequest| {
        let mut client = h.authz();
        async move {
            client
                .explain_authorize(authz::ExplainAuthorizeRequest { request: Some(request) })
                .await
                .unwrap()
                .into_inner()
        }
    };
    for _ in 0..3 {
        let response = explain(w.call(&secret)).await;
        assert_eq!(response.decision(), authz::Decision::Deny);
        assert_eq!(response.reason(), authz::DenyReason::KeyDisabled);
        let failed: Vec<_> = response.rules.iter().filter(|r| !r.passed).map(|r| r.rule()).collect();
        assert_eq!(failed, [authz::DenyReason::KeyDisabled, authz::DenyReason::IpNotAllowed]);
        assert_eq!(response.rules.len(), 13, "every rule, malformed through TPM");
        let headroom = response.headroom.unwrap();
        assert_eq!(headroom.rpm.unwrap().remaining, 1, "what one call would leave: nothing was taken");
        assert_eq!(headroom.quota_remaining, Some(700));
        assert!(response.rules.iter().all(|r| !r.message.is_empty()));
    }
    let unknown = explain(w.call(tollgate_core::key_format::ApiKeySecret::generate().expose())).await;
    assert_eq!(unknown.reason(), authz::DenyReason::KeyNotFound);
    assert_eq!(unknown.rules.len(), 2);
    // Explain needs the admin token.
    let mut anonymous = authz::authz_service_client::AuthzServiceClient::new(h.authz_channel());
    let request = authz::ExplainAuthorizeRequest { request: Some(w.call(&secret)) };
    assert_code(anonymous.explain_authorize(request).await, Code::Unauthenticated);
}

async fn bad_requests_name_the_field(h: &Harness, _: &ManualClock) {
    let w = postpaid_world(h, "badreq").await;
    let (_, secret) = create_key(h, &w, w.key("Fine")).await;
    type Edit = dyn Fn(&mut authz::AuthorizeRequest);
    let cases: [(&str, &Edit); 7] = [
        ("model", &|r| r.model = String::new()),
        ("model", &|r| r.model = "m".repeat(129)),
        ("capability", &|r| r.capability = 0),
        ("client_ip", &|r| r.client_ip = "300.1.1.1".into()),
        ("estimated_tokens", &|r| r.estimated_tokens = -1),
        ("request_id", &|r| r.request_id = String::new()),
        ("request_id", &|r| r.request_id = "has space".into()),
    ];
    for (field, edit) in cases {
        let mut request = w.call(&secret);
        edit(&mut request);
        let status = assert_code(h.authz().authorize(request).await, Code::InvalidArgument);
        assert_eq!(crate::violated_fields(&status), [field]);
    }
}

/// Servers with settings of their own.
mod configured {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn authorize_needs_the_gateway_token_when_one_is_set() {
        let authz_settings =
            tollgate::AuthzSettings { gateway_token: Some("gw-token-123".into()), ..Default::default() };
        let h = Harness::embedded(Options { authz: authz_settings, ..Default::default() }).await;
        let w = world(&h, "gw").await;
        let (_, secret) = create_key(&h, &w, w.key("Gated")).await;
        let mut anonymous = authz::authz_service_client::AuthzServiceClient::new(h.authz_channel());
        assert_code(anonymous.authorize(w.call(&secret)).await, Code::Unauthenticated);
        let mut gateway = authz::authz_service_client::AuthzServiceClient::with_interceptor(
            h.authz_channel(),
            |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", "Bearer gw-token-123".parse().unwrap());
                Ok(r)
            },
        );
        let response = gateway.authorize(w.call(&secret)).await.unwrap().into_inner();
        assert_eq!(response.reason(), authz::DenyReason::AccountBalanceExhausted, "prepaid without credits");
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_needs_a_token_for_authorize_unless_told_otherwise() {
        async fn anonymous_answer(h: &Harness, account: &str) -> Result<authz::AuthorizeResponse, tonic::Status> {
            let w = world(h, account).await;
            let (_, secret) = create_key(h, &w, w.key("Anyone")).await;
            // The admin token is always accepted.
            assert_eq!(authorize(h, w.call(&secret)).await.reason(), authz::DenyReason::AccountBalanceExhausted);
            let mut anonymous = authz::authz_service_client::AuthzServiceClient::new(h.authz_channel());
            anonymous.authorize(w.call(&secret)).await.map(tonic::Response::into_inner)
        }
        // `tollgate dev` on loopback: only this machine can reach it.
        let h = Harness::embedded(Options::default()).await;
        anonymous_answer(&h, "dev-open").await.expect("dev on loopback is open");
        h.stop().await;
        let Some(h) = Harness::production(Options::default()).await else { return };
        assert_code(anonymous_answer(&h, "closed").await, Code::Unauthenticated);
        h.stop().await;
        let open = tollgate::AuthzSettings { allow_unauthenticated: true, ..Default::default() };
        let Some(h) = Harness::production(Options { authz: open, ..Default::default() }).await else { return };
        anonymous_answer(&h, "opened").await.expect("--allow-unauthenticated-authorize");
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_system_cap_bounds_key_and_group_limits() {
        let keys = tollgate::KeysSettings { max_rpm: Some(5), ..Default::default() };
        let h = Harness::embedded(Options { keys, ..Default::default() }).await;
        let w = postpaid_world(&h, "capped").await;
        let (_, secret) =
            create_key(&h, &w, pb::Key { quota: Some(1_000_000), rpm_limit: Some(500), ..w.key("Greedy") }).await;
        let response = authorize(&h, w.call(&secret)).await;
        assert_eq!(response.headroom.unwrap().rpm.unwrap().limit, 5, "the key asked for 500, the group for 60");
        for _ in 0..4 {
            assert_allowed(&authorize(&h, w.call(&secret)).await);
        }
        assert_denied(&authorize(&h, w.call(&secret)).await, authz::DenyReason::RpmLimited);
        h.stop().await;
    }
}
