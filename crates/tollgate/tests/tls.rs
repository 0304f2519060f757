//! TLS on the gRPC listener, with and without client certificates, and the keys-service
//! client over `https://`: each connection succeeds with the right CA and fails when the
//! certificate does not verify, or when a client speaks plaintext.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate::server::ServerTls;
use tollgate::{AuthzSettings, DevConfig, KeysSettings, MeteringSettings, Secrets};
use tollgate_core::clock::SystemClock;
use tollgate_keys_client::{KeyStateApi, KeysClient};
use tollgate_proto::keys::v1 as keys;
use tollgate_test_support::TestCertificates;
use tollgate_test_support::seed::Bearer;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ADMIN_TOKEN: &str = "tls-test-admin-token";

/// `tollgate dev` serving TLS with `tls`; returns its port.
async fn start(tls: ServerTls, shutdown: &CancellationToken) -> u16 {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = DevConfig {
        data_dir: dir.path().to_path_buf(),
        secrets: Secrets {
            admin_token: ADMIN_TOKEN.into(),
            key_pepper: "tls-test-pepper-0123456789abcdef0123456789".into(),
            service_token: None,
        },
        keys: KeysSettings::default(),
        authz: AuthzSettings::default(),
        metering: MeteringSettings::default(),
        drain: Duration::ZERO,
        http_listen: None,
        tls: Some(tls),
        clock: std::sync::Arc::new(SystemClock),
    };
    let shutdown = shutdown.child_token();
    tokio::spawn(async move {
        let _dir = dir;
        tollgate::run_dev(listener, config, shutdown).await.unwrap()
    });
    port
}

/// Lists accounts with the admin token over `channel`.
async fn list_accounts(channel: Channel) -> Result<(), tonic::Status> {
    let mut accounts =
        keys::account_service_client::AccountServiceClient::with_interceptor(channel, Bearer::token(ADMIN_TOKEN));
    accounts.list_accounts(keys::ListAccountsRequest::default()).await.map(|_| ())
}

/// A channel to `localhost:port` over TLS with `tls`, or the connection error.
async fn connect(port: u16, tls: ClientTlsConfig) -> Result<Channel, String> {
    let endpoint = Channel::from_shared(format!("https://localhost:{port}")).unwrap();
    let endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?.connect_timeout(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            // The server may not listen yet: a refused connection is retried, a TLS failure not.
            Err(error)
                if format!("{error:?}").contains("ConnectionRefused") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(format!("{error:?}")),
        }
    }
}

fn trusting(ca: &std::path::Path) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_tls_and_refuses_what_does_not_verify() {
    let Some(certs) = TestCertificates::make() else { return };
    let shutdown = CancellationToken::new();
    let tls = ServerTls { cert: certs.cert.clone(), key: certs.key.clone(), client_ca: None };
    let port = start(tls, &shutdown).await;

    let channel = connect(port, trusting(&certs.ca)).await.expect("a client trusting the CA connects");
    list_accounts(channel).await.expect("and is served");
    assert!(connect(port, trusting(&certs.other_ca)).await.is_err(), "a client trusting another CA is refused");
    let plaintext = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect_lazy();
    assert!(list_accounts(plaintext).await.is_err(), "plaintext HTTP/2 gets nothing");

    // The keys-service client authz and metering use, over https.
    let client = KeysClient::new(
        &format!("https://localhost:{port}"),
        ADMIN_TOKEN,
        Duration::from_secs(2),
        Some(std::fs::read(&certs.ca).unwrap()),
    )
    .unwrap();
    client.catalog().await.expect("the keys client verifies the server with the CA file");
    let wrong_ca = Some(std::fs::read(&certs.other_ca).unwrap());
    let client =
        KeysClient::new(&format!("https://localhost:{port}"), ADMIN_TOKEN, Duration::from_secs(2), wrong_ca).unwrap();
    assert!(client.catalog().await.is_err(), "the keys client refuses a server its CAs did not sign");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let Some(certs) = TestCertificates::make() else { return };
    let shutdown = CancellationToken::new();
    let tls = ServerTls { cert: certs.cert.clone(), key: certs.key.clone(), client_ca: Some(certs.ca.clone()) };
    let port = start(tls, &shutdown).await;

    let identity = Identity::from_pem(std::fs::read(&certs.cert).unwrap(), std::fs::read(&certs.key).unwrap());
    let channel =
        connect(port, trusting(&certs.ca).identity(identity)).await.expect("a client with a certificate connects");
    list_accounts(channel).await.expect("and is served");
    let without = connect(port, trusting(&certs.ca)).await;
    let refused = match without {
        Err(_) => true,
        Ok(channel) => list_accounts(channel).await.is_err(),
    };
    assert!(refused, "a client without a certificate gets nothing");
    shutdown.cancel();
}
