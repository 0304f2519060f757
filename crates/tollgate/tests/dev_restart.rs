//! `tollgate dev` keeps usage across a restart: the ledger is in its SQLite file, and the
//! in-process counters are rebuilt from it at start-up, so a quota is not reset by a restart.

mod common;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate::{AuthzSettings, DevConfig, KeysSettings, MeteringSettings, Secrets};
use tollgate_core::clock::SystemClock;
use tollgate_proto::keys::v1 as keys;
use tollgate_proto::metering::v1 as metering;
use tonic::transport::Channel;

use tollgate_test_support::seed::Bearer;

async fn start(dir: &std::path::Path, secrets: &Secrets) -> (Channel, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = DevConfig {
        data_dir: dir.to_path_buf(),
        secrets: secrets.clone(),
        keys: KeysSettings::default(),
        authz: AuthzSettings::default(),
        metering: MeteringSettings::default(),
        drain: Duration::ZERO,
        http_listen: None,
        tls: None,
        clock: std::sync::Arc::new(SystemClock),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { tollgate::run_dev(listener, config, shutdown).await.unwrap() }
    });
    let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..400 {
        if health.check(tonic_health::pb::HealthCheckRequest::default()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (channel, shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_what_keys_spent() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets {
        admin_token: "dev-restart-admin-token".into(),
        key_pepper: "dev-restart-pepper-0123456789abcdef0123456789".into(),
        service_token: None,
    };
    let auth = Bearer::token(&secrets.admin_token);
    let (channel, shutdown, task) = start(dir.path(), &secrets).await;
    let name =
        common::seed(&channel, &secrets.admin_token, "acme", keys::Key { quota: Some(100), ..Default::default() })
            .await;
    let report = metering::UsageReport {
        request_id: "r1".into(),
        key: name.clone(),
        model: common::MODEL.into(),
        input_tokens: 40,
        outcome: metering::UsageOutcome::Success as i32,
        ..Default::default()
    };
    metering::metering_service_client::MeteringServiceClient::with_interceptor(channel.clone(), auth.clone())
        .record_usage(metering::RecordUsageRequest { report: Some(report) })
        .await
        .unwrap();
    let used = |channel: Channel| {
        let name = name.clone();
        let auth = auth.clone();
        async move {
            let client = keys::key_service_client::KeyServiceClient::with_interceptor(channel, auth);
            client.clone().get_key(keys::GetKeyRequest { name }).await.unwrap().into_inner().key.unwrap().credits_used
        }
    };
    for _ in 0..200 {
        if used(channel.clone()).await == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(used(channel.clone()).await, 40);
    shutdown.cancel();
    task.await.unwrap();

    let (channel, shutdown, task) = start(dir.path(), &secrets).await;
    assert_eq!(used(channel.clone()).await, 40, "spend survives the restart");
    shutdown.cancel();
    task.await.unwrap();
}
