//! A private `redis-server` on a free port (see `ports`). By default without persistence (like production
//! caches that restart empty); [`RedisServer::start_with`] runs it the way most deployments do
//! (snapshots, an append-only file, a replica of another server). It keeps its directory across
//! restarts, so a server killed with SIGKILL comes back from its files, and it can be stalled
//! with SIGSTOP / SIGCONT. Variants: a TLS listener next to the plain one
//! ([`RedisServer::start_tls`]) and replicas ([`RedisServer::start_replica_of`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    /// The plain port: the harness's own checks use it.
    pub port: u16,
    /// The TLS port, when started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra `redis-server` arguments, kept for restarts.
    args: Vec<String>,
}

fn redis_bin() -> PathBuf {
    std::env::var("REDIS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("redis-server"))
}

/// No persistence at all: a restart comes back empty.
const EPHEMERAL: &[&str] = &["--save", "", "--appendonly", "no"];

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(EPHEMERAL).await
    }

    /// A server with these arguments instead of the ephemeral defaults, e.g.
    /// `["--save", "", "--appendonly", "yes"]` or `["--replicaof", "127.0.0.1", "6379"]`.
    /// No automatic snapshot is taken unless the arguments ask for one (`SAVE` does).
    pub async fn start_with(args: &[&str]) -> RedisServer {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        RedisServer::start_args(args, false).await
    }

    async fn start_args(mut args: Vec<String>, tls: bool) -> RedisServer {
        if !args.iter().any(|a| a == "--save") {
            args.extend(["--save".into(), String::new()]);
        }
        let mut r = RedisServer {
            port: 0,
            tls_port: None,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            args,
        };
        let n = if tls { 2 } else { 1 };
        let (ports, child) = crate::ports::start_on_free_ports(n, "redis-server", |p| {
            r.port = p[0];
            r.tls_port = p.get(1).copied();
            r.spawn_process()
        })
        .await;
        r.port = ports[0];
        r.child = Some(child);
        r.wait_ready().await;
        r
    }

    /// Also listens with TLS (server certificate from `certs`, clients not authenticated).
    pub async fn start_tls(certs: &crate::tls::TestCerts) -> RedisServer {
        Self::start_args(Self::tls_args(certs), true).await
    }

    /// A replica of `primary` (ephemeral), caught up (first sync done) before this returns.
    pub async fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        let mut args: Vec<&str> = EPHEMERAL.to_vec();
        args.extend(["--replicaof", "127.0.0.1", &port]);
        let r = Self::start_with(&args).await;
        r.wait_synced().await;
        r
    }

    /// A replica of a TLS `primary` that replicates over TLS and listens with TLS too (it
    /// announces its TLS port, so a Sentinel reaches it there).
    pub async fn start_tls_replica_of(
        primary: &RedisServer,
        certs: &crate::tls::TestCerts,
    ) -> RedisServer {
        let mut args = Self::tls_args(certs);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.tls_port.expect("a TLS primary").to_string(),
        ]);
        let r = Self::start_args(args, true).await;
        r.wait_synced().await;
        r
    }

    /// The TLS arguments but the port (`--tls-port` is added per start, see `spawn_process`).
    fn tls_args(certs: &crate::tls::TestCerts) -> Vec<String> {
        let mut args: Vec<String> = EPHEMERAL.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--tls-replication".into(),
            "yes".into(),
            "--tls-cert-file".into(),
            certs.server_cert.display().to_string(),
            "--tls-key-file".into(),
            certs.server_key.display().to_string(),
            "--tls-ca-cert-file".into(),
            certs.ca_cert.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ]);
        args
    }

    async fn wait_synced(&self) {
        crate::eventually(
            Duration::from_secs(10),
            "the replica to finish its first sync",
            || async {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut self.conn().await)
                    .await
                    .ok()?;
                info.contains("master_link_status:up").then_some(())
            },
        )
        .await;
    }

    /// `rediss://` to the TLS port (the certificate names 127.0.0.1).
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}/",
            self.tls_port.expect("started with start_tls")
        )
    }

    /// SIGKILL, like a crashed node (same as [`Self::stop`]).
    pub fn kill9(&mut self) {
        self.stop();
    }

    fn spawn_process(&self) -> Child {
        let mut cmd = Command::new(redis_bin());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        if let Some(tls_port) = self.tls_port {
            cmd.args(["--tls-port", &tls_port.to_string()]);
        }
        cmd.args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)")
    }

    /// Starts the server again on its ports (clients and replicas know them).
    async fn spawn(&mut self) {
        let ports: Vec<u16> = [Some(self.port), self.tls_port]
            .into_iter()
            .flatten()
            .collect();
        let child =
            crate::ports::start_on_ports(&ports, "redis-server", |_| self.spawn_process()).await;
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Listening is not ready: it answers LOADING while it reads its files.
    async fn wait_ready(&self) {
        let url = self.url();
        crate::eventually(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url).ok()?;
                    let mut c = client.get_multiplexed_async_connection().await.ok()?;
                    redis::cmd("PING").query_async::<String>(&mut c).await.ok()
                }
            },
        )
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `host:port`, for proxies and `REPLICAOF`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's working directory (`dump.rdb`, `appendonlydir/`), kept across restarts.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server with SIGKILL: no shutdown save; what it persisted so far stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped server again on the same port, from its files if it persisted any.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill {sig} redis-server");
        }
    }

    /// SIGSTOP: the server hangs (connections stay open, nothing is answered).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Runs one command and returns its reply.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut self.conn().await).await.unwrap()
    }

    /// The server's clock (`TIME`) in µs.
    pub async fn time_us(&self) -> u64 {
        let t: Vec<String> = self.cmd(&["TIME"]).await;
        t[0].parse::<u64>().unwrap() * 1_000_000 + t[1].parse::<u64>().unwrap()
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    pub async fn exists(&self, key: &str) -> bool {
        let n: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        n == 1
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A stopped process cannot handle SIGKILL's reaping promptly on every kernel: wake it.
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.stop();
    }
}
