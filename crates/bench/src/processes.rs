//! The processes a benchmark runs against: a Redis of its own, a Postgres database of its own,
//! and `tollgate` servers, each killed or dropped when the benchmark ends.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A child process killed on drop.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` on a free port without persistence.
pub async fn redis() -> anyhow::Result<(Process, u16)> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .context("running redis-server")?;
    let process = Process { child };
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    for _ in 0..200 {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
        {
            return Ok((process, port));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("redis-server did not start")
}

/// A database of its own on the shared Postgres; dropped by [`Database::drop_now`].
pub struct Database {
    pub url: String,
    admin_url: String,
    name: String,
}

impl Database {
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let mut admin = PgConnection::connect(admin_url).await.context("connecting to Postgres")?;
        let name = format!("tollgate_bench_{}", tollgate_core::ids::new_id());
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
        Ok(Self { url: format!("{base}/{name}"), admin_url: admin_url.to_owned(), name })
    }

    /// Transactions committed or rolled back in this database so far.
    pub async fn transactions(&self) -> anyhow::Result<i64> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        let row: (i64,) =
            sqlx::query_as("SELECT (xact_commit + xact_rollback)::BIGINT FROM pg_stat_database WHERE datname = $1")
                .bind(&self.name)
                .fetch_one(&mut admin)
                .await?;
        Ok(row.0)
    }

    pub async fn drop_now(&self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await;
        }
    }
}

/// The `tollgate` binary built next to this one (`cargo build --release -p tollgate`).
pub fn tollgate_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("tollgate");
    if !path.exists() {
        bail!("{} not found: build it with `cargo build --release -p tollgate -p tollgate-bench`", path.display());
    }
    Ok(path)
}

/// Starts `tollgate <args>` with `env` and waits until its port accepts connections.
pub async fn tollgate(args: &[&str], env: &[(&str, String)], port: u16) -> anyhow::Result<Process> {
    let mut command = Command::new(tollgate_binary()?);
    // Several processes run side by side: each one's metrics listener on a port of its own.
    command.args(args).env("RUST_LOG", "warn").env("TOLLGATE_HTTP_LISTEN", "127.0.0.1:0").stdout(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().with_context(|| format!("starting tollgate {args:?}"))?;
    let mut process = Process { child };
    for _ in 0..400 {
        if let Some(status) = process.child.try_wait()? {
            bail!("tollgate {args:?} exited with {status}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(process);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("tollgate {args:?} did not start listening on {port}")
}

/// Runs `tollgate <args>` with `env` to its end.
pub fn tollgate_once(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    let mut command = Command::new(tollgate_binary()?);
    command.args(args).env("RUST_LOG", "warn").stdout(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let status = command.status().with_context(|| format!("running tollgate {args:?}"))?;
    if !status.success() {
        bail!("tollgate {args:?} exited with {status}");
    }
    Ok(())
}

/// CPU time a process has used, in microseconds (user + system, from /proc).
pub fn cpu_micros(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports in clock ticks of 1/100 s.
    Ok(ticks * 10_000)
}

/// CPU time of a process and all its children (a Postgres server and its backends), in
/// microseconds: its own, what its exited children used (which it reaped), and what its
/// live children used so far.
pub fn tree_cpu_micros(root: u32) -> u64 {
    let reaped = std::fs::read_to_string(format!("/proc/{root}/stat")).ok().and_then(|stat| {
        let after = stat.rsplit_once(')')?.1.to_owned();
        let fields: Vec<&str> = after.split_whitespace().collect();
        Some((fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?) * 10_000)
    });
    let mut total = cpu_micros(root).unwrap_or(0) + reaped.unwrap_or(0);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let parent =
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if parent == Some(root) {
                total += cpu_micros(pid).unwrap_or(0);
            }
        }
    }
    total
}

/// One field (`calls`, `usec`) of every command in Redis's `INFO commandstats`.
pub async fn commandstats(port: u16, field: &str) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await?;
    let prefix = format!("{field}=");
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let value = rest.split(',').find_map(|kv| kv.strip_prefix(prefix.as_str()))?.parse().ok()?;
            Some((name.to_owned(), value))
        })
        .collect())
}
