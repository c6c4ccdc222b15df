//! A gateway replica as a real process (`gateway-under-test`), on a free port (see `ports`), with
//! test timings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::fixture::*;

/// Where the replica's database is.
#[derive(Clone, Debug)]
pub enum DbTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DbTarget {
    pub fn url(&self) -> String {
        match self {
            DbTarget::Sqlite(p) => format!("sqlite://{}?mode=rwc", p.display()),
            DbTarget::Postgres(u) => u.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub db: DbTarget,
    pub redis_url: Option<String>,
    pub replica_id: String,
    pub env: HashMap<String, String>,
    /// Run with the shipped connection and message limits instead of the raised test ones.
    pub shipped_limits: bool,
    /// Serve the operator routes on a second free port (`INTERNAL_PORT`).
    pub internal_port: bool,
}

/// `r-<pid>-<n>`: unique among the replicas of every test in this process.
fn next_replica_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("r-{}-{n}", std::process::id())
}

impl GatewayOptions {
    pub fn new(db: DbTarget) -> Self {
        GatewayOptions {
            db,
            redis_url: None,
            replica_id: next_replica_id(),
            env: HashMap::new(),
            shipped_limits: false,
            internal_port: false,
        }
    }
    pub fn redis(mut self, url: &str) -> Self {
        self.redis_url = Some(url.into());
        self
    }
    pub fn replica(mut self, id: &str) -> Self {
        self.replica_id = id.into();
        self
    }
    /// Keeps every connection and message limit at its shipped default (the harness otherwise
    /// raises them so tests are not throttled by each other's connects).
    pub fn shipped_limits(mut self) -> Self {
        self.shipped_limits = true;
        self
    }
    /// Health, metrics and the internal API on their own port: [`Gateway::api`] then talks to
    /// it, and [`Gateway::url`] stays the public port.
    pub fn internal_port(mut self) -> Self {
        self.internal_port = true;
        self
    }
    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.env.insert(k.into(), v.to_string());
        self
    }
}

/// The limits the harness raises unless [`GatewayOptions::shipped_limits`] is asked for.
const RAISED_LIMITS: [&str; 8] = [
    "CONNECT_RATE_PER_IP",
    "CONNECT_BURST_PER_IP",
    "CONNECT_PER_DEVICE_PER_MIN",
    "CONNECT_BURST_PER_DEVICE",
    "MESSAGE_RATE_PER_SOCKET",
    "MESSAGE_BURST_PER_SOCKET",
    "MAX_TCP_CONNECTIONS",
    "MAX_TCP_CONNECTIONS_PER_IP",
];

/// The lease TTL the harness gives every gateway (`LEASE_TTL_MS`).
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_millis(3000);

/// Test timings: fast liveness and presence so failure scenarios finish in seconds.
fn default_env() -> Vec<(&'static str, String)> {
    vec![
        ("DEVICE_JWT_SECRET", DEVICE_SECRET.into()),
        ("JWT_SECRET", USER_SECRET.into()),
        ("INTERNAL_API_SECRET", INTERNAL_KEY.into()),
        ("API_BASE_URL", API_BASE.into()),
        ("HOST", "127.0.0.1".into()),
        ("PING_INTERVAL_MS", "1000".into()),
        ("PING_TIMEOUT_MS", "2000".into()),
        ("CONNECT_TIMEOUT_MS", "3000".into()),
        ("LEASE_TTL_MS", LEASE_TTL.as_millis().to_string()),
        ("PRESENCE_SWEEP_INTERVAL_MS", "500".into()),
        ("OFFLINE_NOTIFY_DELAY_MS", "1500".into()),
        ("LAST_SEEN_FLUSH_MS", "60000".into()),
        ("DRAIN_SECONDS", "1".into()),
        ("CONNECT_RATE_PER_IP", "10000".into()),
        ("CONNECT_BURST_PER_IP", "10000".into()),
        ("CONNECT_PER_DEVICE_PER_MIN", "10000".into()),
        ("CONNECT_BURST_PER_DEVICE", "1000".into()),
        ("MESSAGE_RATE_PER_SOCKET", "1000".into()),
        ("MESSAGE_BURST_PER_SOCKET", "1000".into()),
        ("MAX_TCP_CONNECTIONS", "100000".into()),
        ("MAX_TCP_CONNECTIONS_PER_IP", "100000".into()),
        // Most tests place screens on chosen replicas and hold them with clients that do not
        // reconnect: rebalancing would move them. `tests/tests/rebalance.rs` turns it on.
        ("REBALANCE", "off".into()),
        (
            "RUST_LOG",
            "info,vizora_gateway=debug,sqlx=warn,socketioxide=warn,engineioxide=warn".into(),
        ),
    ]
}

pub fn gateway_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_BIN") {
        return p.into();
    }
    // Integration tests live in target/<profile>/deps; the binary sits one level up.
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("gateway-under-test")
}

pub struct Gateway {
    pub port: u16,
    /// `INTERNAL_PORT`, when [`GatewayOptions::internal_port`] asked for one.
    pub internal_port: Option<u16>,
    pub opts: GatewayOptions,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(opts: GatewayOptions) -> Gateway {
        let g = Gateway::launch(opts).await;
        g.wait_live().await;
        g
    }

    /// Starts the process and waits only until it listens, not until it answers (for replicas
    /// expected to stay unready, e.g. refusing an untrusted Redis certificate).
    pub async fn launch(opts: GatewayOptions) -> Gateway {
        let n = if opts.internal_port { 2 } else { 1 };
        let mut g = Gateway {
            port: 0,
            internal_port: None,
            opts,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        let (ports, child) = crate::ports::start_on_free_ports(n, "gateway-under-test", |p| {
            g.port = p[0];
            g.internal_port = p.get(1).copied();
            g.spawn_process()
        })
        .await;
        g.port = ports[0];
        g.internal_port = ports.get(1).copied();
        g.child = Some(child);
        g
    }

    /// Starts the process again on its port (clients and other replicas know it).
    async fn spawn(&mut self) {
        let ports: Vec<u16> = [Some(self.port), self.internal_port]
            .into_iter()
            .flatten()
            .collect();
        let child =
            crate::ports::start_on_ports(&ports, "gateway-under-test", |_| self.spawn_process())
                .await;
        self.child = Some(child);
        self.wait_live().await;
    }

    fn spawn_process(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in default_env() {
            if self.opts.shipped_limits && RAISED_LIMITS.contains(&k) {
                continue;
            }
            cmd.env(k, v);
        }
        cmd.env("PORT", self.port.to_string())
            .env("PUBLIC_URL", self.url())
            .env("DATABASE_URL", self.opts.db.url())
            .env("DB_MIGRATE", "true")
            .env("STORAGE_DIR", self.dir.path().join("storage"))
            .env("REPLICA_ID", &self.opts.replica_id);
        if let Some(r) = &self.opts.redis_url {
            cmd.env("REDIS_URL", r);
        }
        if let Some(p) = self.internal_port {
            cmd.env("INTERNAL_PORT", p.to_string());
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("gateway-under-test binary")
    }

    async fn wait_live(&self) {
        let url = format!("{}/api/health/live", self.api_url());
        let client = reqwest::Client::new();
        let logs = self.log_path();
        crate::eventually(
            Duration::from_secs(30),
            &format!("gateway to start (log: {})", logs.display()),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    client
                        .get(url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where health, metrics and the internal API answer: the internal port when there is one.
    pub fn api_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.internal_port.unwrap_or(self.port)
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the replica dies without any cleanup, like a crashed pod.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit (graceful drain).
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Sends SIGTERM without waiting (the drain runs while the test observes it).
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    /// SIGSTOP: the replica hangs with every connection open (a frozen process or node).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Gateway::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(s)) = c.try_wait()
            {
                self.child = None;
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// A Socket.IO client option set aimed at this replica.
    pub fn client(&self) -> vizora_sioclient::ClientOptions {
        vizora_sioclient::ClientOptions::new(self.url())
    }

    pub fn api(&self) -> crate::api::Api {
        crate::api::Api::new(&self.api_url())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- gateway {} log ----\n{}",
                self.opts.replica_id,
                self.logs()
            );
        }
    }
}

/// Creates a migrated, seeded database of the requested kind.
pub async fn seeded_db(
    kind: &str,
    load_devices: usize,
) -> (DbTarget, Option<crate::PgDatabase>, tempfile::TempDir) {
    use migration::MigratorTrait;
    let dir = tempfile::tempdir().unwrap();
    let (target, pg) = if kind == "postgres" {
        let pg = crate::PgDatabase::create().await;
        (DbTarget::Postgres(pg.url.clone()), Some(pg))
    } else {
        (DbTarget::Sqlite(dir.path().join("gw.sqlite")), None)
    };
    let conn = sea_orm::Database::connect(target.url()).await.unwrap();
    migration::Migrator::up(&conn, None).await.unwrap();
    seed(&conn, load_devices).await;
    conn.close().await.unwrap();
    (target, pg, dir)
}
