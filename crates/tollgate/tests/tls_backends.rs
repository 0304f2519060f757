//! TLS to Postgres and Redis, through the real binary: `tollgate migrate` reaches a Postgres
//! that serves TLS with `sslmode=verify-full` and the CA, fails with another CA, and reaches
//! it with `sslmode=require` whoever signed;
//! `tollgate metering reconcile` reaches a `redis-server --tls-port` over `rediss://` when the
//! CA is trusted (`SSL_CERT_FILE`, as for any system root) and fails when it is not, and so
//! does a Redis Cluster whose nodes speak only TLS (`rediss://` seeds).

use std::process::Stdio;
use std::time::Duration;

use sqlx::{Connection, Row};
use tollgate_test_support::{PrivatePostgres, PrivateRedisCluster, TestCertificates, TestDatabase};

/// Runs `tollgate <args>` with `env`; whether it exited 0, and its stderr.
async fn tollgate(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.args(args).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("tollgate ends").unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server() {
    let Some(certs) = TestCertificates::make() else { return };
    certs.readable_by_postgres();
    let options =
        format!("-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", certs.cert.display(), certs.key.display());
    let Some(postgres) = PrivatePostgres::start_with(&options).await else { return };
    let url = |ca: &std::path::Path| {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            postgres.port,
            ca.display()
        )
    };
    let verified = url(&certs.ca);
    let (ok, stderr) = tollgate(&["migrate", "--database-url", &verified], &[]).await;
    assert!(ok, "migrating over verified TLS: {stderr}");
    let mut conn = sqlx::PgConnection::connect(&verified).await.unwrap();
    let row =
        sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&mut conn).await.unwrap();
    assert!(row.get::<bool, _>("ssl"), "the connection is encrypted");
    let (ok, _) = tollgate(&["migrate", "--database-url", &url(&certs.other_ca)], &[]).await;
    assert!(!ok, "a server another CA signed is refused");
    // `require` encrypts without checking who signed the certificate.
    let unchecked = format!("postgres://postgres@localhost:{}/postgres?sslmode=require", postgres.port);
    let (ok, stderr) = tollgate(&["migrate", "--database-url", &unchecked], &[]).await;
    assert!(ok, "sslmode=require: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_verifies_the_server() {
    let Some(certs) = TestCertificates::make() else { return };
    let Some(database) = TestDatabase::create().await else { return };
    let (ok, stderr) = tollgate(&["migrate", "--database-url", &database.url], &[]).await;
    assert!(ok, "{stderr}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--tls-cert-file")
        .arg(&certs.cert)
        .arg("--tls-key-file")
        .arg(&certs.key)
        .arg("--tls-ca-cert-file")
        .arg(&certs.ca)
        .args(["--tls-auth-clients", "no"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is installed");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("rediss://localhost:{port}");
    let reconcile = ["metering", "reconcile", "--database-url", &database.url, "--redis-url", &url];
    let ca = certs.ca.display().to_string();
    let (ok, stderr) = tollgate(&reconcile, &[("SSL_CERT_FILE", &ca)]).await;
    assert!(ok, "rebuilding counters over verified TLS: {stderr}");
    let other = certs.other_ca.display().to_string();
    let (ok, _) = tollgate(&reconcile, &[("SSL_CERT_FILE", &other)]).await;
    assert!(!ok, "a server another CA signed is refused");
    redis.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls_verifies_every_node() {
    let Some(certs) = TestCertificates::make() else { return };
    let Some(database) = TestDatabase::create().await else { return };
    let (ok, stderr) = tollgate(&["migrate", "--database-url", &database.url], &[]).await;
    assert!(ok, "{stderr}");
    let Some(cluster) = PrivateRedisCluster::start_tls(3, &certs).await else { return };
    let url = cluster.url();
    assert!(url.starts_with("rediss://"));
    // Rebuilding the counters writes a marker into every slot: every primary is reached.
    let reconcile = ["metering", "reconcile", "--database-url", &database.url, "--redis-url", &url];
    let ca = certs.ca.display().to_string();
    let (ok, stderr) = tollgate(&reconcile, &[("SSL_CERT_FILE", &ca)]).await;
    assert!(ok, "rebuilding counters on a TLS cluster: {stderr}");
    let other = certs.other_ca.display().to_string();
    let (ok, _) = tollgate(&reconcile, &[("SSL_CERT_FILE", &other)]).await;
    assert!(!ok, "nodes another CA signed are refused");
}
