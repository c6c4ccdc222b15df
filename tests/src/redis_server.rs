//! A private `redis-server` on a free port. By default without persistence (like production
//! caches that restart empty); [`RedisServer::start_with`] runs it the way most deployments do
//! (snapshots, an append-only file, a replica of another server). It keeps its directory across
//! restarts, so a server killed with SIGKILL comes back from its files, and it can be stalled
//! with SIGSTOP / SIGCONT.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
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
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !args.iter().any(|a| a == "--save") {
            args.extend(["--save".into(), String::new()]);
        }
        let mut r = RedisServer {
            port: crate::free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            args,
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let child = Command::new(redis_bin())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let url = self.url();
        crate::eventually(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url).ok()?;
                    let mut c = client.get_multiplexed_async_connection().await.ok()?;
                    // LOADING errors while it reads its files: not ready yet.
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
