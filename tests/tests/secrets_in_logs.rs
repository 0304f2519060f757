//! No secret reaches a log line: with every Tollgate log at TRACE and every dependency at
//! DEBUG, a full key lifecycle, failing calls included, writes neither a key secret, nor the
//! admin token, nor the key pepper. Its own test binary, because it installs the global
//! subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};

use prost_types::FieldMask;
use tollgate_proto::keys::v1 as pb;
use tollgate_proto::metering::v1 as metering;
use tollgate_tests::fixtures::{create_key, postpaid_world};
use tollgate_tests::{Harness, Options, http};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(
            "debug,tollgate=trace,tollgate_keys_service=trace,tollgate_store=trace,tollgate_metering_service=trace,\
             tollgate_authz_service=trace,tollgate_state=trace,tollgate_keys_client=trace,tollgate_auth=trace",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let mut secrets = Vec::new();
    let mut harnesses = vec![Harness::embedded(Options::default()).await];
    if let Some(production) = Harness::production(Options::default()).await {
        harnesses.push(production);
    }
    for h in harnesses {
        let w = postpaid_world(&h, "logged").await;
        let (key, secret) = create_key(&h, &w, w.key("Logged")).await;
        secrets.push(secret.clone());
        // Authorize with the key (allowed, then a near miss), and its usage applied.
        let allowed = h.authz().authorize(w.call(&secret)).await.unwrap().into_inner();
        assert_eq!(allowed.decision(), tollgate_proto::authz::v1::Decision::Allow);
        let _ = h.authz().authorize(w.call(&format!("{secret}x"))).await;
        let report = w.report(&key, "logged-call", 10);
        h.metering().record_usage(metering::RecordUsageRequest { report: Some(report) }).await.unwrap();
        let rotated = h.keys().rotate_key(pb::RotateKeyRequest { name: key.name.clone(), grace_period: None }).await;
        secrets.push(rotated.unwrap().into_inner().created.unwrap().secret);
        let update = pb::UpdateKeyRequest {
            key: Some(pb::Key { name: key.name.clone(), enabled: Some(false), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["enabled".into()] }),
            expire_after: None,
        };
        h.keys().update_key(update).await.unwrap();
        h.key_state().get_key_state(pb::GetKeyStateRequest { secret_hash: h.secret_hash(&secret) }).await.unwrap();
        // The key holder's own balance, by the secret, and usage reports that name it wrongly.
        let own = metering::GetKeyBalanceRequest::default();
        h.key_holder(&secret).get_key_balance(own).await.unwrap();
        let _ = h.key_holder(&format!("{secret}x")).get_key_balance(own).await;
        let report = metering::UsageReport { request_id: secret.clone(), key: secret.clone(), ..Default::default() };
        let _ = h.metering().record_usage(metering::RecordUsageRequest { report: Some(report) }).await;
        // The HTTP doors: forward-auth with the key, the key holder's endpoints, and a usage
        // report over HTTP naming the secret where a key name belongs.
        let bearer = format!("Bearer {secret}");
        let proxied = [
            ("Authorization", bearer.as_str()),
            ("X-Tollgate-Gateway-Token", h.admin_token.as_str()),
            ("X-Forwarded-Uri", "/v1/chat/completions"),
        ];
        let body = format!(r#"{{"model": "{}", "messages": []}}"#, w.model);
        http::post(h.authz_server().http, "/v1/forward-auth", &proxied, &body).await;
        for path in ["/v1/key", "/api/usage/token", "/v1/dashboard/billing/subscription"] {
            http::get(h.metering_server().http, path, &[("Authorization", bearer.as_str())]).await;
        }
        let report = format!(r#"{{"report": {{"request_id": "{secret}", "key": "{secret}"}}}}"#);
        let admin = format!("Bearer {}", h.admin_token);
        http::post(h.metering_server().http, "/v1/usage", &[("Authorization", admin.as_str())], &report).await;
        // Failing calls carrying the secret where it does not belong.
        let _ = h.keys().create_key(w.create(pb::Key { ip_allowlist: vec![secret.clone()], ..w.key("Bad") })).await;
        let _ = h.keys().get_key(pb::GetKeyRequest { name: secret.clone() }).await;
        let unauthenticated = pb::account_service_client::AccountServiceClient::new(h.channel.clone());
        let _ = unauthenticated.clone().list_accounts(pb::ListAccountsRequest::default()).await;
        let admin_token = h.admin_token.clone();
        let pepper = h.key_pepper.clone();
        let service_token = h.secrets.service_token.clone();
        h.stop().await;
        secrets.push(admin_token);
        secrets.push(pepper);
        secrets.extend(service_token);
    }

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("CreateKey"), "the capture is real: it holds the request log");
    assert!(logs.contains("/v1/forward-auth"), "and the HTTP listener's access lines");
    for secret in &secrets {
        let needle = secret.strip_prefix("sk-").unwrap_or(secret);
        assert!(!logs.contains(needle), "a secret reached the logs");
    }
}
