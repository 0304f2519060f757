//! `GET /metrics` on every backend: after a scripted workload, the counters moved by exactly
//! what the workload did — decisions by reason, gRPC calls by code, reports accepted and
//! applied — and no label carries a key, account or request id.

use std::time::Duration;

use tollgate_proto::authz::v1 as authz;
use tollgate_proto::metering::v1 as metering;
use tollgate_tests::fixtures::{create_key, postpaid_world};
use tollgate_tests::{Harness, Server, on_both_backends};
use tonic::Code;

on_both_backends!(a_workload_moves_the_counters_by_what_it_did);

/// The sum of the samples of `name` whose labels include all of `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let set = rest.strip_suffix('}')?;
            let found =
                labels.iter().all(|(key, value)| set.split(',').any(|pair| pair == format!("{key}=\"{value}\"")));
            (metric == name && found).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// How much each of `series` moved between two scrapes.
async fn moved<F, Fut>(server: &Server, series: &[(&str, &[(&str, &str)])], workload: F) -> Vec<f64>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let before = server.scrape_metrics().await;
    workload().await;
    let after = server.scrape_metrics().await;
    series.iter().map(|(name, labels)| sample(&after, name, labels) - sample(&before, name, labels)).collect()
}

const AUTHORIZE: [(&str, &str); 2] = [("grpc_service", "tollgate.authz.v1.AuthzService"), ("grpc_method", "Authorize")];

async fn a_workload_moves_the_counters_by_what_it_did(h: &Harness) {
    let w = postpaid_world(h, "metrics").await;
    let (key, secret) = create_key(h, &w, w.key("Measured")).await;
    let ok = [AUTHORIZE[0], AUTHORIZE[1], ("grpc_code", "OK")];
    let invalid = [AUTHORIZE[0], AUTHORIZE[1], ("grpc_code", "InvalidArgument")];
    let series: [(&str, &[(&str, &str)]); 5] = [
        ("tollgate_authz_decisions_total", &[("decision", "allow"), ("reason", "none")]),
        ("tollgate_authz_decisions_total", &[("decision", "deny"), ("reason", "key_malformed")]),
        ("grpc_server_handled_total", &ok),
        ("grpc_server_handled_total", &invalid),
        ("grpc_server_started_total", &AUTHORIZE),
    ];
    let deltas = moved(h.authz_server(), &series, || async {
        let mut client = h.authz();
        for _ in 0..3 {
            let allowed = client.authorize(w.call(&secret)).await.expect("authorize").into_inner();
            assert_eq!(allowed.decision(), authz::Decision::Allow);
        }
        for _ in 0..2 {
            let denied = client.authorize(w.call("sk-not-a-key")).await.expect("authorize").into_inner();
            assert_eq!(denied.reason(), authz::DenyReason::KeyMalformed);
        }
        let bad = authz::AuthorizeRequest { request_id: String::new(), ..w.call(&secret) };
        assert_eq!(client.authorize(bad).await.expect_err("no request id").code(), Code::InvalidArgument);
    })
    .await;
    assert_eq!(deltas, [3.0, 2.0, 5.0, 1.0, 6.0], "allowed, denied malformed, OK, invalid, started");

    let series: [(&str, &[(&str, &str)]); 2] =
        [("tollgate_metering_reports_accepted_total", &[]), ("tollgate_metering_reports_applied_total", &[])];
    let metering_server = h.metering_server();
    let before = metering_server.scrape_metrics().await;
    let reports: Vec<_> = (0..4).map(|i| w.report(&key, &format!("metrics-{i}"), 10)).collect();
    h.metering().batch_record_usage(metering::BatchRecordUsageRequest { reports }).await.expect("record");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let deltas = loop {
        let after = metering_server.scrape_metrics().await;
        let deltas: Vec<f64> =
            series.iter().map(|(name, labels)| sample(&after, name, labels) - sample(&before, name, labels)).collect();
        if deltas[1] >= 4.0 || tokio::time::Instant::now() > deadline {
            break deltas;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(deltas, [4.0, 4.0], "accepted, applied");

    let text = h.authz_server().scrape_metrics().await + &metering_server.scrape_metrics().await;
    for gauge in
        ["tollgate_metering_queue_entries", "tollgate_metering_queue_pending", "tollgate_metering_dead_letters"]
    {
        assert!(text.contains(&format!("# TYPE {gauge} gauge")), "{gauge} is exported");
    }
    for id in [key.name.as_str(), w.account_id.as_str(), "metrics-0"] {
        assert!(!text.contains(id), "a label carries {id:?}");
    }
}
