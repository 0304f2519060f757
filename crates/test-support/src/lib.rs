//! Helpers for tests that need the real Postgres and Redis.
//!
//! Each test gets its own Postgres database or Redis key prefix and removes only what it
//! made. When a server is not reachable the test is skipped with a message, unless
//! `CI=true`, where a missing server fails the run.

mod redis_cluster;
pub mod seed;
mod tls;

use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

pub use redis_cluster::{PrivateRedisCluster, shared_redis_cluster_url};
pub use tls::TestCertificates;

/// Where the shared Postgres is; the tests create and drop their own databases on it.
pub fn postgres_admin_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Where the shared Redis is; the tests use their own key prefixes on it.
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether missing servers must fail the run instead of skipping.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether the tests run as root: a private Postgres then runs as `postgres`, which refuses
/// to run as root, and what it reads must belong to that user.
fn running_as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Says a test skips because `what` is missing; under `CI=true`, fails it instead.
pub fn unavailable(what: &str, error: impl std::fmt::Display) {
    if required() {
        panic!("{what} is required when CI=true but is not reachable: {error}");
    }
    eprintln!("skipping: {what} is not reachable ({error}); set CI=true to make this a failure");
}

/// A database of its own on the shared Postgres, dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// Connection URL of the new database.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates a fresh database, or returns `None` (skip) when Postgres is not reachable.
    pub async fn create() -> Option<Self> {
        let admin_url = postgres_admin_url();
        let mut admin = match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin_url)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                unavailable("Postgres", e);
                return None;
            }
            Err(_) => {
                unavailable("Postgres", "connect timed out");
                return None;
            }
        };
        let name = format!("tollgate_test_{}", tollgate_core::ids::new_id());
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let base = admin_url.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin_url);
        Some(Self { url: format!("{base}/{name}"), name })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we may block; a short-lived runtime on its own
        // thread does the clean-up.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    if let Ok(mut admin) = PgConnection::connect(&postgres_admin_url()).await {
                        let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                            .execute(&mut admin)
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A Redis key prefix of its own on the shared Redis; its keys are deleted on drop.
#[derive(Debug)]
pub struct TestRedis {
    /// Connection URL.
    pub url: String,
    /// Prefix every key of the test starts with.
    pub prefix: String,
}

impl TestRedis {
    /// Picks a fresh prefix, or returns `None` (skip) when Redis is not reachable.
    pub async fn create() -> Option<Self> {
        let url = redis_url();
        let reachable = async {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(Duration::from_secs(5), reachable).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                unavailable("Redis", e);
                return None;
            }
            Err(_) => {
                unavailable("Redis", "connect timed out");
                return None;
            }
        }
        Some(Self { url, prefix: format!("tgtest:{}", tollgate_core::ids::new_id()) })
    }

    /// A fresh prefix on the Redis Cluster shared by this process's tests (see
    /// [`shared_redis_cluster_url`]); its `url` is the seed list. The cluster goes with the
    /// process, so nothing is deleted on drop.
    pub async fn on_cluster() -> Option<Self> {
        let url = shared_redis_cluster_url().await?;
        Some(Self { url, prefix: format!("tgtest:{}", tollgate_core::ids::new_id()) })
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let url = self.url.clone();
        let pattern = format!("{}*", self.prefix);
        if url.contains(',') {
            return;
        }
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
        })
        .join();
    }
}

/// A `redis-server` of the test's own on a free loopback port, for fault tests that stop and
/// restart it. Killed on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts one, or returns `None` (skip) when `redis-server` is not installed.
    pub async fn start() -> Option<Self> {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
            probe.local_addr().expect("probe address").port()
        };
        let mut redis = Self { port, child: None };
        if let Err(error) = redis.restart().await {
            unavailable("redis-server", error);
            return None;
        }
        Some(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        for _ in 0..200 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("redis-server did not answer".into())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Postgres cluster of the test's own (`initdb` + `pg_ctl`) on a free loopback port, for
/// fault tests that stop and restart it. Stopped and removed on drop. As root, the server
/// runs as the `postgres` user, since Postgres refuses to run as root.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
    /// Extra server options, e.g. `-c shared_preload_libraries=pg_stat_statements`.
    options: String,
}

impl PrivatePostgres {
    /// Initialises and starts one, or returns `None` (skip) when Postgres's server programs
    /// are not installed.
    pub async fn start() -> Option<Self> {
        Self::start_with("").await
    }

    /// [`PrivatePostgres::start`] with extra server options (`-c name=value …`).
    pub async fn start_with(options: &str) -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|versions| {
            versions.filter_map(Result::ok).map(|v| v.path().join("bin")).find(|b| b.join("initdb").exists())
        });
        let Some(bin) = bin else {
            unavailable("initdb", "no /usr/lib/postgresql/*/bin/initdb");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let as_postgres = running_as_root();
        if as_postgres {
            let status = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the cluster dir to postgres");
        }
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket").local_addr().unwrap().port();
        let mut postgres = Self { port, bin, dir, as_postgres, options: options.to_owned() };
        let data = postgres.data();
        let init = postgres.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
        if let Err(error) = init {
            unavailable("initdb", error);
            return None;
        }
        if let Err(error) = postgres.restart().await {
            unavailable("a private Postgres", error);
            return None;
        }
        Some(postgres)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let output = if self.as_postgres {
            std::process::Command::new("runuser").args(["-u", "postgres", "--"]).arg(&path).args(args).output()
        } else {
            std::process::Command::new(&path).args(args).output()
        }
        .map_err(|e| format!("cannot run {program}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{program} failed: {}", String::from_utf8_lossy(&output.stderr)))
        }
    }

    /// The server's main process, from its `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(self.dir.path().join("data").join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "stop", "-m", "immediate", "-w"]);
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn restart(&mut self) -> Result<(), String> {
        let options =
            format!("-p {} -c listen_addresses=127.0.0.1 -k {} {}", self.port, self.dir.path().display(), self.options);
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"])?;
        for _ in 0..200 {
            if PgConnection::connect(&self.url()).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("the private Postgres did not accept connections".into())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "stop", "-m", "immediate"]);
    }
}

/// Defines every check as one test per adapter, so each adapter of a port passes the same
/// suite:
///
/// ```ignore
/// conformance_suite!(
///     checks: [snapshots_keep_the_newest_version, catalog_round_trips],
///     adapters: {
///         memory => async { Some((MemoryState::new(), ())) },
///         redis => super::redis_state(TestRedis::create().await),
///     }
/// );
/// ```
///
/// Each adapter's setup is an async expression (written as from inside a module of the suite's
/// file: `super::` reaches its helpers) giving `Option<(adapter, guard)>`: `None` skips, the
/// helper having said why; the guard (a database, a key prefix) lives until the check ends.
/// Each check is an `async fn` taking the adapter.
#[macro_export]
macro_rules! conformance_suite {
    (checks: $checks:tt, adapters: { $($adapter:ident => $setup:expr),+ $(,)? }) => {
        $( $crate::conformance_suite!(@adapter $adapter, $setup, $checks); )+
    };
    (@adapter $adapter:ident, $setup:expr, [$($check:ident),* $(,)?]) => {
        mod $adapter {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    if let Some((adapter, _guard)) = $setup.await {
                        super::$check(adapter).await;
                    }
                }
            )*
        }
    };
}
