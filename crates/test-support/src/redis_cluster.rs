//! Redis Clusters of the tests' own: `redis-server --cluster-enabled yes` nodes on free
//! loopback ports, joined with `redis-cli --cluster create`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::{TestCertificates, unavailable};

/// A cluster of `masters` primaries, each with `replicas` replicas. Every node is killed when
/// this is dropped, or, for the shared cluster, when the test process exits.
#[derive(Debug)]
pub struct PrivateRedisCluster {
    /// Every node's port; the first `masters` were made primaries.
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: tempfile::TempDir,
    /// Certificate, key and CA when the nodes speak only TLS.
    tls: Option<[PathBuf; 3]>,
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    probe.local_addr().expect("probe address").port()
}

impl PrivateRedisCluster {
    /// Starts one, or returns `None` (skip) when `redis-server` or `redis-cli` is missing.
    pub async fn start(masters: usize, replicas: usize) -> Option<Self> {
        Self::start_with(masters, replicas, None).await
    }

    /// Starts one whose nodes speak only TLS, to clients and to each other, with the
    /// certificate `certs` made (valid for 127.0.0.1), or returns `None` (skip).
    pub async fn start_tls(masters: usize, certs: &TestCertificates) -> Option<Self> {
        Self::start_with(masters, 0, Some([certs.cert.clone(), certs.key.clone(), certs.ca.clone()])).await
    }

    async fn start_with(masters: usize, replicas: usize, tls: Option<[PathBuf; 3]>) -> Option<Self> {
        match Self::try_start(masters, replicas, None, tls).await {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                unavailable("a private Redis Cluster", error);
                None
            }
        }
    }

    /// With `outlive_not`: the nodes stop by themselves once that process is gone.
    async fn try_start(
        masters: usize,
        replicas: usize,
        outlive_not: Option<u32>,
        tls: Option<[PathBuf; 3]>,
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let count = masters * (1 + replicas);
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let mut cluster = Self { ports, children: Vec::new(), dir, tls };
        for i in 0..count {
            let child = cluster.spawn(i, outlive_not)?;
            cluster.children.push(Some(child));
        }
        for port in &cluster.ports {
            cluster.wait_for(*port, &["PING"], "PONG").await?;
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = cluster
            .cli()
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !created.status.success() {
            return Err(format!("redis-cli --cluster create failed: {}", String::from_utf8_lossy(&created.stdout)));
        }
        for port in &cluster.ports {
            cluster.wait_for(*port, &["CLUSTER", "INFO"], "cluster_state:ok").await?;
        }
        // A replica can take over only once it has its primary's data.
        for port in &cluster.ports[masters..] {
            cluster.wait_for(*port, &["INFO", "replication"], "master_link_status:up").await?;
        }
        Ok(cluster)
    }

    /// `redis-cli`, speaking TLS with the cluster's CA when the nodes do.
    fn cli(&self) -> Command {
        let mut command = Command::new("redis-cli");
        if let Some([_, _, ca]) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        command
    }

    /// Waits until `command` on the node at `port` answers text holding `needle`.
    async fn wait_for(&self, port: u16, command: &[&str], needle: &str) -> Result<(), String> {
        for _ in 0..400 {
            let output = self.cli().args(["-p", &port.to_string()]).args(command).stdin(Stdio::null()).output();
            if output.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(needle)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("the cluster node on {port} never said {needle}"))
    }

    fn spawn(&self, index: usize, outlive_not: Option<u32>) -> Result<Child, String> {
        let port = self.ports[index].to_string();
        let dir = self.dir.path().display().to_string();
        let config = format!("nodes-{port}.conf");
        let mut args: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port.clone()],
            Some([cert, key, ca]) => [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
                "--tls-auth-clients",
                "no",
                "--tls-cert-file",
                &cert.display().to_string(),
                "--tls-key-file",
                &key.display().to_string(),
                "--tls-ca-cert-file",
                &ca.display().to_string(),
            ]
            .map(String::from)
            .to_vec(),
        };
        args.extend(
            [
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config,
                "--cluster-node-timeout",
                "1000",
                "--dir",
                &dir,
                "--save",
                "",
                "--appendonly",
                "no",
                // Replicas sync at once instead of after the default 5 s wait for more of them.
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(String::from),
        );
        let child = match outlive_not {
            None => Command::new("redis-server").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn(),
            // A shell keeps the node while the test process lives, then stops it.
            Some(pid) => {
                let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
                let script = format!(
                    "redis-server {} & node=$!; while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $node",
                    quoted.join(" ")
                );
                Command::new("sh").args(["-c", &script]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
            }
        };
        child.map_err(|e| format!("cannot run redis-server: {e}"))
    }

    /// Every node's URL, comma-separated: the seed list Tollgate takes.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        self.ports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Kills one node, as a crash would.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The node serving `key`'s slot as primary now (its index in [`Self::ports`]).
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let alive = self.children.iter().position(Option::is_some)?;
        let output =
            self.cli().args(["-p", &self.ports[alive].to_string(), "cluster", "keyslot", key]).output().ok()?;
        let slot: u16 = String::from_utf8_lossy(&output.stdout).trim().parse().ok()?;
        let nodes = self.cli().args(["-p", &self.ports[alive].to_string(), "cluster", "nodes"]).output().ok()?;
        for line in String::from_utf8_lossy(&nodes.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((from, to)) => {
                    from.parse::<u16>().is_ok_and(|f| f <= slot) && to.parse::<u16>().is_ok_and(|t| slot <= t)
                }
                None => range.parse::<u16>() == Ok(slot),
            });
            if owns {
                let port: u16 = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                return self.ports.iter().position(|p| *p == port);
            }
        }
        None
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// The seed list of a 3-primary cluster shared by every test of this process (each test keeps
/// to its own key prefix, as on the shared Redis), or `None` (skip) when one cannot be
/// started. Its nodes stop when the process exits.
pub async fn shared_redis_cluster_url() -> Option<String> {
    static SHARED: OnceCell<Option<String>> = OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            match PrivateRedisCluster::try_start(3, 0, Some(std::process::id()), None).await {
                Ok(cluster) => {
                    let url = cluster.url();
                    // The nodes outlive this value: the shells stop them with the process.
                    std::mem::forget(cluster);
                    Some(url)
                }
                Err(error) => {
                    unavailable("a Redis Cluster", error);
                    None
                }
            }
        })
        .await
        .clone()
}
