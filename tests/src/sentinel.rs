//! Redis Sentinel on loopback: a primary, a replica and one `redis-server --sentinel` watching
//! them with short timings, so a killed primary is replaced within a few seconds.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::RedisServer;
use crate::tls::TestCerts;

/// The name the Sentinel monitors (`REDIS_SENTINEL_MASTER`).
pub const MASTER: &str = "vizora";

/// The primary and the Sentinel. The replica is handed to the caller (it outlives the primary
/// and becomes the node a `Cluster` reads from).
pub struct SentinelSet {
    pub primary: RedisServer,
    /// The replica's port as the Sentinel names it (its TLS port in a TLS set).
    pub replica_port: u16,
    /// The port the gateway is given (TLS in a TLS set).
    pub sentinel_port: u16,
    /// The plain port the harness asks.
    plain_port: u16,
    sentinel: Option<Child>,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    pub async fn start() -> (SentinelSet, RedisServer) {
        Self::start_with(None).await
    }

    /// With `certs`: the nodes replicate over TLS and the Sentinel speaks TLS on its port (the
    /// harness still uses the plain ports next to them).
    pub async fn start_with(certs: Option<&TestCerts>) -> (SentinelSet, RedisServer) {
        let primary = match certs {
            Some(c) => RedisServer::start_tls(c).await,
            None => RedisServer::start().await,
        };
        let replica = match certs {
            Some(c) => RedisServer::start_tls_replica_of(&primary, c).await,
            None => RedisServer::start_replica_of(&primary).await,
        };
        let dir = tempfile::tempdir().unwrap();
        // The ports the Sentinel knows the nodes by.
        let (watched, replica_port, tls_files) = match certs {
            Some(c) => (
                primary.tls_port.unwrap(),
                replica.tls_port.unwrap(),
                format!(
                    "tls-replication yes\ntls-auth-clients no\n\
                     tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
                    c.server_cert.display(),
                    c.server_key.display(),
                    c.ca_cert.display()
                ),
            ),
            None => (primary.port, replica.port, String::new()),
        };
        // Its plain port, then (in a TLS set) the TLS port the gateway is given.
        let n = if certs.is_some() { 2 } else { 1 };
        let (ports, child) = crate::ports::start_on_free_ports(n, "redis-server --sentinel", |p| {
            let tls_conf = match p.get(1) {
                Some(tls_port) => format!("tls-port {tls_port}\n{tls_files}"),
                None => String::new(),
            };
            // Sentinel rewrites its configuration file, so it must be a writable file of its own.
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {plain_port}\nbind 127.0.0.1\ndir {dir}\n{tls_conf}\
                     sentinel monitor {MASTER} 127.0.0.1 {watched} 1\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    plain_port = p[0],
                    dir = dir.path().display(),
                ),
            )
            .unwrap();
            Command::new(
                std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into()),
            )
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (it runs as a Sentinel with --sentinel)")
        })
        .await;
        let (plain_port, port) = (ports[0], *ports.last().unwrap());
        let set = SentinelSet {
            primary,
            replica_port,
            sentinel_port: port,
            plain_port,
            sentinel: Some(child),
            _dir: dir,
        };
        let replica_port = set.replica_port.to_string();
        crate::eventually(
            Duration::from_secs(20),
            "the Sentinel to know the primary and its replica",
            || {
                let replica_port = replica_port.clone();
                let set = &set;
                async move {
                    let replicas: Vec<std::collections::HashMap<String, String>> =
                        redis::cmd("SENTINEL")
                            .arg("REPLICAS")
                            .arg(MASTER)
                            .query_async(&mut set.sentinel_conn().await?)
                            .await
                            .ok()?;
                    replicas
                        .iter()
                        .any(|r| r.get("port") == Some(&replica_port) && r["flags"] == "slave")
                        .then_some(())
                }
            },
        )
        .await;
        (set, replica)
    }

    async fn sentinel_conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.plain_port))
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()
    }

    /// `REDIS_SENTINELS` for the gateway.
    pub fn sentinels_env(&self) -> String {
        format!("127.0.0.1:{}", self.sentinel_port)
    }

    /// The port of the node the Sentinel names as primary now.
    pub async fn primary_port(&self) -> Option<u16> {
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER)
            .query_async(&mut self.sentinel_conn().await?)
            .await
            .ok()?;
        port.parse().ok()
    }

    /// Waits until the replica has everything the primary acknowledged (so a failover loses
    /// nothing: this set is the up-to-date-replica case).
    pub async fn sync_replica(&self) {
        let n: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query_async(&mut self.primary.conn().await)
            .await
            .unwrap();
        assert_eq!(n, 1, "the replica acknowledged the primary's writes");
    }

    /// SIGKILLs the primary and waits until the Sentinel has promoted the replica.
    pub async fn kill_primary_and_fail_over(&mut self) {
        self.primary.kill9();
        let replica = self.replica_port;
        crate::eventually(
            Duration::from_secs(30),
            "the Sentinel to promote the replica",
            || async { (self.primary_port().await == Some(replica)).then_some(()) },
        )
        .await;
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        if let Some(mut c) = self.sentinel.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
