//! Typed configuration read from environment variables, with every bad variable reported.
//!
//! The loader takes any `Fn(&str) -> Option<String>` as its source so tests pass a map instead of
//! mutating the process environment. Every field documents its variable and default; the README's
//! configuration table mirrors this file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::proxies::TrustedProxies;

/// Secrets shorter than this are refused: HS256 keys and API keys must not be guessable.
pub const MIN_SECRET_BYTES: usize = 32;

/// Largest impression batch: 10 parameters a row, within SQLite's 32766 per statement.
pub const MAX_IMPRESSION_BATCH: usize = 3000;

/// Where relational data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// Embedded default: a SQLite file (created if missing).
    Sqlite { url: String },
    /// A PostgreSQL database holding (or receiving) the Vizora schema.
    Postgres { url: String },
}

impl DatabaseConfig {
    pub fn url(&self) -> &str {
        match self {
            DatabaseConfig::Sqlite { url } | DatabaseConfig::Postgres { url } => url,
        }
    }
    pub fn is_sqlite(&self) -> bool {
        matches!(self, DatabaseConfig::Sqlite { .. })
    }
}

/// How the gateway reaches Redis (unset: single-node mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisConfig {
    /// `REDIS_URL`: one address. A managed endpoint that moves to a new primary on failover
    /// works: connections that fail or answer `READONLY` are dropped and made again.
    Url { url: String },
    /// `REDIS_SENTINELS` + `REDIS_SENTINEL_MASTER`: the primary is asked of the Sentinels on
    /// every new connection, so a failover is followed.
    Sentinel(SentinelConfig),
    /// `REDIS_CLUSTER_NODES`: a Redis Cluster, found from these seeds. The gateway's own keys
    /// carry a shard hash tag (`store::keys`), and the adapter uses sharded pub/sub.
    Cluster(ClusterConfig),
}

impl RedisConfig {
    /// For logs: where Redis is, without credentials.
    pub fn describe(&self) -> String {
        match self {
            RedisConfig::Url { url } => match url::Url::parse(url) {
                Ok(u) => format!(
                    "{}://{}:{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port().unwrap_or(6379)
                ),
                Err(_) => "an unparsable REDIS_URL".into(),
            },
            RedisConfig::Sentinel(s) => format!(
                "primary `{}` of Sentinels {}",
                s.master,
                s.sentinels
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            RedisConfig::Cluster(c) => format!(
                "Redis Cluster seeds {}",
                c.nodes
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// Redis Cluster settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `REDIS_CLUSTER_NODES`: `host:port,…` of some of the cluster's nodes (the rest, and the
    /// slot map, are learnt from them).
    pub nodes: Vec<(String, u16)>,
    /// `REDIS_USERNAME` / `REDIS_PASSWORD`: credentials for every node.
    pub username: Option<String>,
    pub password: Option<String>,
    /// `REDIS_CLUSTER_TLS`: TLS to every node.
    pub tls: RedisTls,
}

/// TLS towards Redis nodes found through Sentinel (`REDIS_SENTINEL_TLS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisTls {
    /// `false` (default): plain TCP.
    Off,
    /// `true`: TLS, certificates checked against the system roots or `SSL_CERT_FILE`.
    Verify,
    /// `insecure`: TLS without any certificate check (logged as a warning).
    Insecure,
}

/// Redis Sentinel settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `REDIS_SENTINELS`: `host:port,host:port,…` of the Sentinel processes.
    pub sentinels: Vec<(String, u16)>,
    /// `REDIS_SENTINEL_MASTER`: the monitored primary's name (`sentinel monitor <name> …`).
    pub master: String,
    /// `REDIS_SENTINEL_USERNAME` / `REDIS_SENTINEL_PASSWORD`: credentials for the Sentinels.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// `REDIS_USERNAME` / `REDIS_PASSWORD`: credentials for the primary it names.
    pub username: Option<String>,
    pub password: Option<String>,
    /// `REDIS_SENTINEL_TLS`: TLS to the Sentinels and to the primary.
    pub tls: RedisTls,
}

/// S3-compatible object storage (MinIO variables of the original service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinioConfig {
    /// `MINIO_ENDPOINT`: host name only, as in the original.
    pub endpoint: String,
    /// `MINIO_PORT` (9000).
    pub port: u16,
    /// `MINIO_USE_SSL` (false).
    pub use_ssl: bool,
    /// `MINIO_ACCESS_KEY`.
    pub access_key: String,
    /// `MINIO_SECRET_KEY`.
    pub secret_key: String,
    /// `MINIO_BUCKET` (`vizora-content`).
    pub bucket: String,
    /// `MINIO_REGION` (`us-east-1`).
    pub region: String,
    /// `MINIO_PUBLIC_ENDPOINT`: base URL browsers reach (e.g. `https://files.example.com`); presigned
    /// links are signed for it. Defaults to the endpoint.
    pub public_endpoint: Option<String>,
}

impl MinioConfig {
    pub fn endpoint_url(&self) -> String {
        let scheme = if self.use_ssl { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.endpoint, self.port)
    }
}

/// Edge protection limits. All limits are per replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// `MAX_CONNECTIONS` (50000): live sockets per replica; new handshakes get 503 `server_busy` above it.
    pub max_connections: usize,
    /// `CONNECT_RATE_GLOBAL` (500/s) and `CONNECT_BURST_GLOBAL` (1000): handshakes per replica.
    pub connect_rate_global: u32,
    pub connect_burst_global: u32,
    /// `CONNECT_RATE_PER_IP` (20/s) and `CONNECT_BURST_PER_IP` (400): sized for a venue where
    /// hundreds of screens share one NAT address and all reconnect after a network blip.
    pub connect_rate_per_ip: u32,
    pub connect_burst_per_ip: u32,
    /// `CONNECT_PER_DEVICE_PER_MIN` (12) and `CONNECT_BURST_PER_DEVICE` (5).
    pub connect_per_device_per_min: u32,
    pub connect_burst_per_device: u32,
    /// `MESSAGE_RATE_PER_SOCKET` (10/s) and `MESSAGE_BURST_PER_SOCKET` (40).
    pub message_rate_per_socket: u32,
    pub message_burst_per_socket: u32,
    /// `TRUSTED_PROXIES` (empty): addresses and CIDR ranges (IPv4, IPv6) of proxies whose
    /// `X-Forwarded-For` is believed; the client is the right-most hop that is not one of them.
    pub trusted_proxies: TrustedProxies,
    /// `MAX_TCP_CONNECTIONS` (60000): open TCP connections per replica, whatever they carry;
    /// more are closed at accept. Above `MAX_CONNECTIONS` so the handshake gate answers first.
    pub max_tcp_connections: usize,
    /// `MAX_TCP_CONNECTIONS_PER_IP` (2048): open TCP connections per peer address; trusted
    /// proxies are exempt (behind a proxy the peer is the proxy).
    pub max_tcp_connections_per_ip: usize,
    /// `HTTP_HEADER_TIMEOUT_MS` (10000): complete request headers must arrive within this of a
    /// request's first byte (or of accept, for a connection that sends nothing).
    pub http_header_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT_MS` (60000): a connection with no request in flight is closed after
    /// this (websockets are exempt: Engine.IO pings govern them).
    pub http_idle_timeout: Duration,
}

/// The whole gateway configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `HOST` (`0.0.0.0`).
    pub host: String,
    /// `PORT` (3002).
    pub port: u16,
    /// `INTERNAL_PORT` (unset): when set, the metrics, the internal API and the health routes
    /// are served on this port only and the public port answers them 404, so a NetworkPolicy can
    /// keep the ingress away from them. Unset, everything shares `PORT` as in the original (its
    /// middleware calls the internal API on the public port).
    pub internal_port: Option<u16>,
    /// `DATABASE_URL` (unset: SQLite file `vizora-gateway.sqlite` in the working directory).
    pub database: DatabaseConfig,
    /// `DB_MIGRATE` (true for SQLite, false for PostgreSQL).
    pub db_migrate: bool,
    /// `REDIS_URL`, `REDIS_SENTINELS` or `REDIS_CLUSTER_NODES` (none: single-node mode with
    /// in-process presence, queues and adapter; two or more: a configuration error).
    pub redis: Option<RedisConfig>,
    /// `DEVICE_JWT_SECRET` (required, >= 32 bytes).
    pub device_jwt_secret: String,
    /// `JWT_SECRET` (required, >= 32 bytes).
    pub jwt_secret: String,
    /// `INTERNAL_API_SECRET` (required, >= 32 bytes).
    pub internal_api_secret: String,
    /// `METRICS_TOKEN` (unset: metrics only from loopback).
    pub metrics_token: Option<String>,
    /// `CORS_ORIGIN` (`http://localhost:3000,http://localhost:3001`), comma list, trimmed.
    pub cors_origins: Vec<String>,
    /// `API_BASE_URL` (`http://localhost:3000`): base of rewritten `minio://` content URLs.
    pub api_base_url: String,
    /// `CONTENT_URL_PATH` (`/api/device-content/{id}/file`): path of rewritten `minio://` content
    /// URLs after `API_BASE_URL`; `{id}` is the content id.
    pub content_url_path: String,
    /// `PUBLIC_URL` (`http://localhost:$PORT`): base of signed screenshot links in embedded mode.
    pub public_url: String,
    /// `STORAGE_DIR` (`./data/storage`): local object storage when no `MINIO_ENDPOINT`.
    pub storage_dir: PathBuf,
    /// `MINIO_*` (unset `MINIO_ENDPOINT`: local directory storage).
    pub minio: Option<MinioConfig>,
    /// `REPLICA_ID` (the host name).
    pub replica_id: String,
    /// `HEARTBEAT_INTERVAL_MS` (15000): told to devices in `config` and in heartbeat acks.
    pub heartbeat_interval: Duration,
    /// `PING_INTERVAL_MS` (25000) and `PING_TIMEOUT_MS` (20000): Engine.IO liveness.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// `CONNECT_TIMEOUT_MS` (10000): time from Engine.IO open to an accepted namespace CONNECT.
    pub connect_timeout: Duration,
    /// `LEASE_TTL_MS` (30000): a device lease not refreshed for this long is swept.
    pub lease_ttl: Duration,
    /// `PRESENCE_SWEEP_INTERVAL_MS` (5000).
    pub presence_sweep_interval: Duration,
    /// `OFFLINE_NOTIFY_DELAY_MS` (120000): grace before a `device_offline` notification.
    pub offline_notify_delay: Duration,
    /// `LAST_SEEN_FLUSH_MS` (60000): period of the one-statement `lastHeartbeat` flush.
    pub last_seen_flush: Duration,
    /// `PRESENCE_RECONCILE_INTERVAL_MS` (60000): how often one replica of the cluster looks for
    /// rows that say online with no lease behind them.
    pub presence_reconcile_interval: Duration,
    /// `IMPRESSION_FLUSH_MS` (1000): period of the impression drain (one multi-row insert per
    /// batch per round).
    pub impression_flush: Duration,
    /// `IMPRESSION_BATCH_MAX` (500, at most 3000 so one statement stays within SQLite's bound
    /// on parameters): rows per impression insert.
    pub impression_batch_max: usize,
    /// `DRAIN_SECONDS` (30): the whole drain after SIGTERM, closing sockets (over its first 80 %)
    /// and stopping background work included; the process exits when it is over.
    pub drain: Duration,
    /// `DRAIN_SETTLE_MS` (1000): how long a draining replica, already answering 503 to readiness
    /// and handshakes, waits before closing sockets, so the load balancer stops sending it
    /// clients first (at most 80 % of `DRAIN_SECONDS`).
    pub drain_settle: Duration,
    /// `SCREENSHOT_MAX_BYTES` (2097152): decoded image cap.
    pub screenshot_max_bytes: usize,
    /// `SCREENSHOT_REQUEST_TTL_MS` (300000): lifetime of a pending screenshot request id.
    pub screenshot_request_ttl: Duration,
    /// `SCREENSHOT_URL_TTL_SECONDS` (604800): lifetime of signed screenshot links.
    pub screenshot_url_ttl: Duration,
    /// `COMMAND_QUEUE_MAX` (100) and `COMMAND_QUEUE_TTL_MS` (86400000): offline command queue bounds.
    pub command_queue_max: usize,
    pub command_queue_ttl: Duration,
    /// `HTTP_BODY_LIMIT_BYTES` (1048576): internal API body cap (413 above).
    pub http_body_limit: usize,
    /// `DELIVERY_ACK_TIMEOUT_MS` (10000): how long an acknowledged `playlist:update` or
    /// `command` waits for the client's ack before it is kept for replay.
    pub delivery_ack_timeout: Duration,
    /// `DELIVERY_CONFIRM_TIMEOUT_MS` (1000): how long a command or playlist push for a socket on
    /// another replica waits for that replica's word that it wrote it, before it is queued.
    pub delivery_confirm_timeout: Duration,
    /// `REBALANCE` (`on`; `off` disables it): in cluster mode, a replica whose device sockets
    /// exceed the mean of the ready replicas by more than the tolerance closes some of their
    /// transports so they reconnect elsewhere (ARCHITECTURE.md, "Rebalancing").
    pub rebalance: bool,
    /// `REBALANCE_TOLERANCE` (0.10): how far above the mean (a fraction of it) a replica may be
    /// before it sheds; it sheds down to half of it above the mean.
    pub rebalance_tolerance: f64,
    /// `REBALANCE_MAX_PER_S` (20): transports one replica closes per second while it sheds.
    pub rebalance_max_per_s: u32,
    /// `SESSION_SWEEP_INTERVAL_MS` (60000): how often dashboard sessions are re-checked.
    pub session_sweep_interval: Duration,
    /// `LOG_FORMAT` (`text`; `json` for production log pipelines).
    pub log_json: bool,
    pub limits: Limits,
}

impl Config {
    /// Largest Engine.IO payload we accept: the base64 of the largest legal screenshot plus room
    /// for the JSON envelope, and nothing much larger.
    pub fn max_payload(&self) -> usize {
        self.screenshot_max_bytes.div_ceil(3) * 4 + 16 * 1024
    }

    /// The full template of rewritten `minio://` URLs: `API_BASE_URL` + `CONTENT_URL_PATH`.
    pub fn content_url_template(&self) -> String {
        format!("{}{}", self.api_base_url, self.content_url_path)
    }

    /// Loads from the process environment.
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Self::load(|k| std::env::var(k).ok())
    }

    /// Loads from a map (tests, `demo`).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        Self::load(|k| map.get(k).cloned())
    }

    /// Parses every variable, collecting all problems before failing.
    pub fn load(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut p = Parser {
            get: &get,
            errors: Vec::new(),
        };
        let port = p.num::<u16>("PORT", 3002);
        let internal_port = match p.opt("INTERNAL_PORT") {
            None => None,
            Some(v) => match v.parse::<u16>() {
                Ok(ip) if ip != 0 && ip != port => Some(ip),
                Ok(_) => {
                    p.err("INTERNAL_PORT", "must be a port other than 0 and PORT");
                    None
                }
                Err(_) => {
                    p.err("INTERNAL_PORT", &format!("`{v}` is not a port number"));
                    None
                }
            },
        };
        let database = match p.opt("DATABASE_URL") {
            None => DatabaseConfig::Sqlite {
                url: "sqlite://vizora-gateway.sqlite?mode=rwc".into(),
            },
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                DatabaseConfig::Postgres { url }
            }
            Some(url) if url.starts_with("sqlite:") => DatabaseConfig::Sqlite { url },
            Some(_) => {
                p.err(
                    "DATABASE_URL",
                    "must start with postgres://, postgresql:// or sqlite:",
                );
                DatabaseConfig::Sqlite { url: String::new() }
            }
        };
        let db_migrate = p.boolean("DB_MIGRATE", database.is_sqlite());
        let redis = p.redis();
        let device_jwt_secret = p.secret("DEVICE_JWT_SECRET");
        let jwt_secret = p.secret("JWT_SECRET");
        let internal_api_secret = p.secret("INTERNAL_API_SECRET");
        let metrics_token = p.opt("METRICS_TOKEN");
        let cors_origins = p
            .opt("CORS_ORIGIN")
            .unwrap_or_else(|| "http://localhost:3000,http://localhost:3001".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let api_base_url = p
            .opt("API_BASE_URL")
            .unwrap_or_else(|| "http://localhost:3000".into());
        let content_url_path = p
            .opt("CONTENT_URL_PATH")
            .unwrap_or_else(|| "/api/device-content/{id}/file".into());
        if !content_url_path.starts_with('/') || !content_url_path.contains("{id}") {
            p.err("CONTENT_URL_PATH", "must start with / and contain {id}");
        }
        let public_url = p
            .opt("PUBLIC_URL")
            .unwrap_or_else(|| format!("http://localhost:{port}"))
            .trim_end_matches('/')
            .to_string();
        let storage_dir = PathBuf::from(
            p.opt("STORAGE_DIR")
                .unwrap_or_else(|| "./data/storage".into()),
        );
        let minio = match p.opt("MINIO_ENDPOINT") {
            None => None,
            Some(endpoint) => {
                let access_key = p.required("MINIO_ACCESS_KEY");
                let secret_key = p.required("MINIO_SECRET_KEY");
                Some(MinioConfig {
                    endpoint,
                    port: p.num("MINIO_PORT", 9000),
                    use_ssl: p.boolean("MINIO_USE_SSL", false),
                    access_key,
                    secret_key,
                    bucket: p
                        .opt("MINIO_BUCKET")
                        .unwrap_or_else(|| "vizora-content".into()),
                    region: p.opt("MINIO_REGION").unwrap_or_else(|| "us-east-1".into()),
                    public_endpoint: p.opt("MINIO_PUBLIC_ENDPOINT"),
                })
            }
        };
        let replica_id = p.opt("REPLICA_ID").unwrap_or_else(default_replica_id);
        let limits = Limits {
            max_connections: p.num("MAX_CONNECTIONS", 50_000),
            connect_rate_global: p.positive("CONNECT_RATE_GLOBAL", 500),
            connect_burst_global: p.positive("CONNECT_BURST_GLOBAL", 1000),
            connect_rate_per_ip: p.positive("CONNECT_RATE_PER_IP", 20),
            connect_burst_per_ip: p.positive("CONNECT_BURST_PER_IP", 400),
            connect_per_device_per_min: p.positive("CONNECT_PER_DEVICE_PER_MIN", 12),
            connect_burst_per_device: p.positive("CONNECT_BURST_PER_DEVICE", 5),
            message_rate_per_socket: p.positive("MESSAGE_RATE_PER_SOCKET", 10),
            message_burst_per_socket: p.positive("MESSAGE_BURST_PER_SOCKET", 40),
            trusted_proxies: p.proxy_list("TRUSTED_PROXIES"),
            max_tcp_connections: p.num("MAX_TCP_CONNECTIONS", 60_000),
            max_tcp_connections_per_ip: p.num("MAX_TCP_CONNECTIONS_PER_IP", 2048),
            http_header_timeout: p.ms("HTTP_HEADER_TIMEOUT_MS", 10_000),
            http_idle_timeout: p.ms("HTTP_IDLE_TIMEOUT_MS", 60_000),
        };
        let cfg = Config {
            host: p.opt("HOST").unwrap_or_else(|| "0.0.0.0".into()),
            port,
            internal_port,
            database,
            db_migrate,
            redis,
            device_jwt_secret,
            jwt_secret,
            internal_api_secret,
            metrics_token,
            cors_origins,
            api_base_url: api_base_url.trim_end_matches('/').to_string(),
            content_url_path,
            public_url,
            storage_dir,
            minio,
            replica_id,
            heartbeat_interval: p.ms("HEARTBEAT_INTERVAL_MS", 15_000),
            ping_interval: p.ms("PING_INTERVAL_MS", 25_000),
            ping_timeout: p.ms("PING_TIMEOUT_MS", 20_000),
            connect_timeout: p.ms("CONNECT_TIMEOUT_MS", 10_000),
            lease_ttl: p.ms("LEASE_TTL_MS", 30_000),
            presence_sweep_interval: p.ms("PRESENCE_SWEEP_INTERVAL_MS", 5_000),
            offline_notify_delay: p.ms("OFFLINE_NOTIFY_DELAY_MS", 120_000),
            last_seen_flush: p.ms("LAST_SEEN_FLUSH_MS", 60_000),
            presence_reconcile_interval: p.ms("PRESENCE_RECONCILE_INTERVAL_MS", 60_000),
            impression_flush: p.ms("IMPRESSION_FLUSH_MS", 1_000),
            impression_batch_max: p.num("IMPRESSION_BATCH_MAX", 500),
            drain: Duration::from_secs(p.num("DRAIN_SECONDS", 30)),
            drain_settle: p.ms("DRAIN_SETTLE_MS", 1_000),
            screenshot_max_bytes: p.num("SCREENSHOT_MAX_BYTES", 2_097_152),
            screenshot_request_ttl: p.ms("SCREENSHOT_REQUEST_TTL_MS", 300_000),
            screenshot_url_ttl: Duration::from_secs(p.num("SCREENSHOT_URL_TTL_SECONDS", 604_800)),
            command_queue_max: p.num("COMMAND_QUEUE_MAX", 100),
            command_queue_ttl: p.ms("COMMAND_QUEUE_TTL_MS", 86_400_000),
            http_body_limit: p.num("HTTP_BODY_LIMIT_BYTES", 1_048_576),
            delivery_ack_timeout: p.ms("DELIVERY_ACK_TIMEOUT_MS", 10_000),
            delivery_confirm_timeout: p.ms("DELIVERY_CONFIRM_TIMEOUT_MS", 1_000),
            rebalance: match p.opt("REBALANCE").as_deref() {
                None | Some("on" | "true" | "1") => true,
                Some("off" | "false" | "0") => false,
                Some(v) => {
                    p.err("REBALANCE", &format!("`{v}` is not on or off"));
                    true
                }
            },
            rebalance_tolerance: p.fraction("REBALANCE_TOLERANCE", 0.10),
            rebalance_max_per_s: p.positive("REBALANCE_MAX_PER_S", 20),
            session_sweep_interval: p.ms("SESSION_SWEEP_INTERVAL_MS", 60_000),
            log_json: match p.opt("LOG_FORMAT").as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(_) => {
                    p.err("LOG_FORMAT", "must be text or json");
                    false
                }
            },
            limits,
        };
        p.validate(&cfg);
        if p.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(p.errors))
        }
    }
}

fn default_replica_id() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("replica-{}", std::process::id()))
}

/// `host:port` or `[v6]:port`, with a port that is not 0.
fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty() && !host.contains([' ', '/'])).then(|| (host.to_string(), port))
}

/// Every configuration problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

struct Parser<'a, F: Fn(&str) -> Option<String>> {
    get: &'a F,
    errors: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> Parser<'_, F> {
    fn err(&mut self, var: &str, problem: &str) {
        self.errors.push(format!("{var}: {problem}"));
    }
    fn opt(&mut self, var: &str) -> Option<String> {
        (self.get)(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }
    fn required(&mut self, var: &str) -> String {
        self.opt(var).unwrap_or_else(|| {
            self.err(var, "is required");
            String::new()
        })
    }
    fn secret(&mut self, var: &str) -> String {
        match (self.get)(var).filter(|v| !v.is_empty()) {
            None => {
                self.err(var, "is required (at least 32 bytes)");
                String::new()
            }
            Some(v) if v.len() < MIN_SECRET_BYTES => {
                self.err(
                    var,
                    &format!(
                        "is {} bytes; at least {MIN_SECRET_BYTES} are required",
                        v.len()
                    ),
                );
                String::new()
            }
            Some(v) => v,
        }
    }
    fn num<T: std::str::FromStr>(&mut self, var: &str, default: T) -> T {
        match self.opt(var) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.err(
                    var,
                    &format!("`{v}` is not a valid non-negative whole number"),
                );
                default
            }),
        }
    }
    fn positive(&mut self, var: &str, default: u32) -> u32 {
        let v = self.num(var, default);
        if v == 0 {
            self.err(var, "must be at least 1");
            return default;
        }
        v
    }
    /// A fraction strictly between 0 and 1.
    fn fraction(&mut self, var: &str, default: f64) -> f64 {
        match self.opt(var) {
            None => default,
            Some(v) => match v.parse::<f64>() {
                Ok(f) if f > 0.0 && f < 1.0 => f,
                _ => {
                    self.err(var, &format!("`{v}` is not a fraction between 0 and 1"));
                    default
                }
            },
        }
    }
    fn ms(&mut self, var: &str, default: u64) -> Duration {
        let v = self.num(var, default);
        if v == 0 {
            self.err(var, "must be at least 1 millisecond");
            return Duration::from_millis(default);
        }
        Duration::from_millis(v)
    }
    fn boolean(&mut self, var: &str, default: bool) -> bool {
        match self.opt(var).as_deref() {
            None => default,
            Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(v) => {
                self.err(var, &format!("`{v}` is not true or false"));
                default
            }
        }
    }
    /// `REDIS_URL`, the Sentinel variables or `REDIS_CLUSTER_NODES`: exactly one of them.
    fn redis(&mut self) -> Option<RedisConfig> {
        let url = self.opt("REDIS_URL");
        let sentinels = self.opt("REDIS_SENTINELS");
        let cluster = self.opt("REDIS_CLUSTER_NODES");
        // Variables that only mean something with one mode are refused elsewhere rather than
        // silently ignored: with REDIS_URL, credentials and TLS belong in the URL.
        let only: [(&str, &[&str]); 6] = [
            ("REDIS_SENTINEL_MASTER", &["REDIS_SENTINELS"]),
            ("REDIS_SENTINEL_USERNAME", &["REDIS_SENTINELS"]),
            ("REDIS_SENTINEL_PASSWORD", &["REDIS_SENTINELS"]),
            ("REDIS_SENTINEL_TLS", &["REDIS_SENTINELS"]),
            ("REDIS_CLUSTER_TLS", &["REDIS_CLUSTER_NODES"]),
            (
                "REDIS_USERNAME",
                &["REDIS_SENTINELS", "REDIS_CLUSTER_NODES"],
            ),
        ];
        let only = only.into_iter().chain([(
            "REDIS_PASSWORD",
            &["REDIS_SENTINELS", "REDIS_CLUSTER_NODES"][..],
        )]);
        for (var, modes) in only {
            let mode_set = modes.iter().any(|m| match *m {
                "REDIS_SENTINELS" => sentinels.is_some(),
                _ => cluster.is_some(),
            });
            if !mode_set && self.opt(var).is_some() {
                let mut hint = format!("is only used with {}", modes.join(" or "));
                if url.is_some() {
                    hint.push_str("; with REDIS_URL put it in the URL");
                }
                self.err(var, &hint);
            }
        }
        let set: Vec<&str> = [
            ("REDIS_URL", url.is_some()),
            ("REDIS_SENTINELS", sentinels.is_some()),
            ("REDIS_CLUSTER_NODES", cluster.is_some()),
        ]
        .into_iter()
        .filter_map(|(v, on)| on.then_some(v))
        .collect();
        if set.len() > 1 {
            self.err(
                set[1],
                &format!(
                    "set only one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES (found {})",
                    set.join(" and ")
                ),
            );
            return None;
        }
        if let Some(url) = url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                self.err("REDIS_URL", "must start with redis:// or rediss://");
            } else if let Err(e) = ::redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                // The parser's message never repeats the URL, so no password leaks here.
                self.err("REDIS_URL", &format!("is not a valid Redis URL: {e}"));
            }
            return Some(RedisConfig::Url { url });
        }
        if let Some(list) = sentinels {
            let sentinels = self.addresses("REDIS_SENTINELS", &list);
            let tls = self.redis_tls("REDIS_SENTINEL_TLS");
            return Some(RedisConfig::Sentinel(SentinelConfig {
                sentinels,
                master: self.required("REDIS_SENTINEL_MASTER"),
                sentinel_username: self.opt("REDIS_SENTINEL_USERNAME"),
                sentinel_password: (self.get)("REDIS_SENTINEL_PASSWORD").filter(|v| !v.is_empty()),
                username: self.opt("REDIS_USERNAME"),
                password: (self.get)("REDIS_PASSWORD").filter(|v| !v.is_empty()),
                tls,
            }));
        }
        let list = cluster?;
        let nodes = self.addresses("REDIS_CLUSTER_NODES", &list);
        if nodes.is_empty() {
            self.err("REDIS_CLUSTER_NODES", "names no host:port");
        }
        let tls = self.redis_tls("REDIS_CLUSTER_TLS");
        Some(RedisConfig::Cluster(ClusterConfig {
            nodes,
            username: self.opt("REDIS_USERNAME"),
            password: (self.get)("REDIS_PASSWORD").filter(|v| !v.is_empty()),
            tls,
        }))
    }
    /// A `host:port,host:port,…` list.
    fn addresses(&mut self, var: &str, list: &str) -> Vec<(String, u16)> {
        let mut addrs = Vec::new();
        for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match host_port(part) {
                Some(a) => addrs.push(a),
                None => self.err(var, &format!("`{part}` is not host:port")),
            }
        }
        addrs
    }
    /// `false` (default), `true` or `insecure`.
    fn redis_tls(&mut self, var: &str) -> RedisTls {
        match self.opt(var).as_deref() {
            None | Some("false" | "0" | "no") => RedisTls::Off,
            Some("true" | "1" | "yes") => RedisTls::Verify,
            Some("insecure") => RedisTls::Insecure,
            Some(v) => {
                self.err(var, &format!("`{v}` is not true, false or insecure"));
                RedisTls::Off
            }
        }
    }
    fn proxy_list(&mut self, var: &str) -> TrustedProxies {
        let Some(v) = self.opt(var) else {
            return TrustedProxies::default();
        };
        let mut out = Vec::new();
        for part in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match TrustedProxies::parse_entry(part) {
                Ok(net) => out.push(net),
                Err(e) => self.err(var, &e),
            }
        }
        TrustedProxies::new(out)
    }
    /// Rules spanning several fields.
    fn validate(&mut self, c: &Config) {
        if c.lease_ttl <= c.presence_sweep_interval {
            self.err(
                "LEASE_TTL_MS",
                "must be larger than PRESENCE_SWEEP_INTERVAL_MS",
            );
        }
        if c.lease_ttl < c.heartbeat_interval.min(Duration::from_secs(3)) {
            self.err("LEASE_TTL_MS", "is too short to be refreshed reliably");
        }
        if !(1..=MAX_IMPRESSION_BATCH).contains(&c.impression_batch_max) {
            self.err(
                "IMPRESSION_BATCH_MAX",
                &format!("must be between 1 and {MAX_IMPRESSION_BATCH}"),
            );
        }
        if c.screenshot_max_bytes < 1024 {
            self.err("SCREENSHOT_MAX_BYTES", "must be at least 1024");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn base() -> HashMap<String, String> {
        [
            ("DEVICE_JWT_SECRET", "d".repeat(32)),
            ("JWT_SECRET", "u".repeat(32)),
            ("INTERNAL_API_SECRET", "i".repeat(40)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Variables of the README's table that `Config` does not read: rustls-native-certs does.
    const NOT_CONFIG: [&str; 2] = ["SSL_CERT_FILE", "SSL_CERT_DIR"];

    /// The README's configuration table: (variable, documented default) for every variable its
    /// first column names. A row naming several variables gives their defaults in the same
    /// order with the same separator (` / ` or `, `), or one default for all of them.
    fn documented_defaults() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .unwrap_or_else(|| panic!("README.md has no Configuration section"));
        let table = section.split("\n## ").next().unwrap_or_default();
        let mut out = Vec::new();
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row
                .trim_matches('|')
                .splitn(3, " | ")
                .map(str::trim)
                .collect();
            let [names, default, _] = cells[..] else {
                panic!("README configuration row without three cells: {row}");
            };
            let vars: Vec<&str> = names.split('`').skip(1).step_by(2).collect();
            let sep = if names.contains(" / ") { " / " } else { ", " };
            let defaults: Vec<&str> = match default.split(sep).collect::<Vec<_>>() {
                _ if vars.len() == 1 => vec![default],
                one if one.len() == 1 => vec![default; vars.len()],
                each => each,
            };
            assert_eq!(defaults.len(), vars.len(), "README row: {row}");
            for (var, default) in vars.into_iter().zip(defaults) {
                out.push((var.to_string(), default.trim().to_string()));
            }
        }
        out
    }

    /// What a variable's default is checked in: MinIO settings exist only with an endpoint,
    /// Sentinel settings only with Sentinels.
    fn context(var: &str) -> HashMap<String, String> {
        let mut m = base();
        let needs: &[(&str, &str)] = if var.starts_with("MINIO_") && var != "MINIO_ENDPOINT" {
            &[
                ("MINIO_ENDPOINT", "minio.test"),
                ("MINIO_ACCESS_KEY", "access"),
                ("MINIO_SECRET_KEY", "secret"),
            ]
        } else if var == "REDIS_CLUSTER_TLS" {
            &[("REDIS_CLUSTER_NODES", "127.0.0.1:7000")]
        } else if var.starts_with("REDIS_")
            && !matches!(var, "REDIS_URL" | "REDIS_SENTINELS" | "REDIS_CLUSTER_NODES")
        {
            &[
                ("REDIS_SENTINELS", "127.0.0.1:26379"),
                ("REDIS_SENTINEL_MASTER", "primary"),
            ]
        } else {
            &[]
        };
        for (k, v) in needs {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    /// Every variable `Config::load` asks for, in every context.
    fn variables_read() -> std::collections::BTreeSet<String> {
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        for ctx in [
            context("PORT"),
            context("MINIO_PORT"),
            context("REDIS_PASSWORD"),
            context("REDIS_CLUSTER_TLS"),
        ] {
            let _ = Config::load(|k| {
                read.borrow_mut().insert(k.to_string());
                ctx.get(k).cloned()
            });
        }
        read.into_inner()
    }

    /// A default that has no value: the field that shows it.
    fn absent(var: &str, c: &Config) -> bool {
        let sentinel = match &c.redis {
            Some(RedisConfig::Sentinel(s)) => Some(s),
            _ => None,
        };
        match var {
            "INTERNAL_PORT" => c.internal_port.is_none(),
            "REDIS_URL" | "REDIS_SENTINELS" | "REDIS_CLUSTER_NODES" => c.redis.is_none(),
            "REDIS_SENTINEL_USERNAME" => sentinel.is_some_and(|s| s.sentinel_username.is_none()),
            "REDIS_SENTINEL_PASSWORD" => sentinel.is_some_and(|s| s.sentinel_password.is_none()),
            "REDIS_USERNAME" => sentinel.is_some_and(|s| s.username.is_none()),
            "REDIS_PASSWORD" => sentinel.is_some_and(|s| s.password.is_none()),
            "METRICS_TOKEN" => c.metrics_token.is_none(),
            "MINIO_ENDPOINT" => c.minio.is_none(),
            "MINIO_PUBLIC_ENDPOINT" => c
                .minio
                .as_ref()
                .is_some_and(|m| m.public_endpoint.is_none()),
            "TRUSTED_PROXIES" => c.limits.trusted_proxies == TrustedProxies::default(),
            _ => panic!("the README gives {var} no default value: name the field that shows it"),
        }
    }

    /// The value of a default written as one code span.
    fn code_span(documented: &str) -> Option<&str> {
        documented
            .strip_prefix('`')?
            .strip_suffix('`')
            .filter(|v| !v.contains('`'))
    }

    /// Whether `var=value` on top of `ctx` loads the same configuration as `ctx` alone.
    fn same_as_unset(ctx: &HashMap<String, String>, var: &str, value: &str) -> bool {
        let mut m = ctx.clone();
        m.insert(var.into(), value.into());
        let debug = |m: &HashMap<String, String>| {
            Config::from_map(m)
                .map(|c| format!("{c:?}"))
                .map_err(|e| e.to_string())
        };
        debug(&m) == debug(ctx)
    }

    /// Checks the README's default of `var` against what `Config` does without the variable.
    fn check_default(var: &str, documented: &str) -> Result<(), String> {
        let ctx = context(var);
        let cfg = Config::from_map(&ctx).map_err(|e| e.to_string())?;
        if documented == "required" || documented.starts_with("required ") || documented == "–" {
            let mut m = ctx.clone();
            m.remove(var);
            return match Config::from_map(&m) {
                Err(e) if e.0.iter().any(|l| l.starts_with(&format!("{var}: "))) => Ok(()),
                _ => Err("loads without it".into()),
            };
        }
        if documented.starts_with("unset") || documented == "empty" || documented == "the endpoint"
        {
            return absent(var, &cfg)
                .then_some(())
                .ok_or_else(|| "the code gives it a value".into());
        }
        if let Some(value) = code_span(documented) {
            // Stating the documented value changes nothing; another value changes something
            // (the variable is read, not merely looked up).
            let value = value.replace("$PORT", &cfg.port.to_string());
            if !same_as_unset(&ctx, var, &value) {
                return Err(format!(
                    "`{var}={value}` is not what leaving it unset gives"
                ));
            }
            if same_as_unset(&ctx, var, "not-the-default") {
                return Err("its value changes nothing".into());
            }
            return Ok(());
        }
        match var {
            "DATABASE_URL" => {
                let file = documented
                    .strip_prefix("SQLite ")
                    .and_then(code_span)
                    .ok_or("not `SQLite <path>`")?;
                let url = cfg.database.url();
                let path = url.strip_prefix("sqlite://").unwrap_or(url);
                let path = path.split('?').next().unwrap_or_default();
                (cfg.database.is_sqlite() && path == file.trim_start_matches("./"))
                    .then_some(())
                    .ok_or_else(|| format!("the code uses {:?}", cfg.database))
            }
            "DB_MIGRATE" => {
                // `<value> for SQLite, <value> for PostgreSQL`
                for part in documented.split(", ") {
                    let (value, db) = part.split_once(" for ").ok_or("not `<value> for <db>`")?;
                    let value = code_span(value).ok_or("the value is not a code span")?;
                    let mut ctx = ctx.clone();
                    if db == "PostgreSQL" {
                        ctx.insert("DATABASE_URL".into(), "postgres://x@localhost/db".into());
                    }
                    if !same_as_unset(&ctx, var, value) {
                        return Err(format!("not {value} for {db}"));
                    }
                }
                Ok(())
            }
            "REPLICA_ID" if documented == "host name" => {
                let host = hostname::get().ok().and_then(|h| h.into_string().ok());
                (host.as_deref() == Some(cfg.replica_id.as_str()))
                    .then_some(())
                    .ok_or_else(|| format!("the code uses {}", cfg.replica_id))
            }
            _ => Err("no rule checks a default written like this one: add one".into()),
        }
    }

    /// The README's configuration table documents the defaults: every default it states is the
    /// one `Config` uses without the variable, and every variable `Config` reads is in it. A
    /// default changed in the code or in the README alone fails here.
    #[test]
    fn defaults_are_the_documented_ones() {
        let documented = documented_defaults();
        let read = variables_read();
        let mut wrong = Vec::new();
        for (var, default) in &documented {
            if NOT_CONFIG.contains(&var.as_str()) {
                assert!(!read.contains(var), "{var} is read by Config now: check it");
            } else if !read.contains(var) {
                wrong.push(format!("{var}: in the README, but Config never reads it"));
            } else if let Err(e) = check_default(var, default) {
                wrong.push(format!("{var}: the README says {default}, but {e}"));
            }
        }
        for var in &read {
            if !documented.iter().any(|(v, _)| v == var) {
                wrong.push(format!("{var}: read by Config, missing from the README"));
            }
        }
        assert!(
            wrong.is_empty(),
            "README.md's configuration table and config.rs disagree:\n{}",
            wrong.join("\n")
        );
        // What the README derives from them.
        let doc = |var: &str| {
            let (_, d) = documented.iter().find(|(v, _)| v == var).unwrap();
            code_span(d).unwrap().to_string()
        };
        let c = Config::from_map(&base()).unwrap();
        let screenshot: usize = doc("SCREENSHOT_MAX_BYTES").parse().unwrap();
        assert_eq!(
            c.max_payload(),
            screenshot.div_ceil(3) * 4 + 16 * 1024,
            "the Engine.IO payload cap is the screenshot cap's base64 size + 16 KiB"
        );
        assert_eq!(
            c.content_url_template(),
            doc("API_BASE_URL") + &doc("CONTENT_URL_PATH")
        );
    }

    #[test]
    fn internal_port_is_off_by_default_and_must_differ_from_port() {
        assert_eq!(Config::from_map(&base()).unwrap().internal_port, None);
        let mut m = base();
        m.insert("INTERNAL_PORT".into(), "9102".into());
        assert_eq!(Config::from_map(&m).unwrap().internal_port, Some(9102));
        for bad in ["3002", "0", "ninety", "70000"] {
            let mut m = base();
            m.insert("INTERNAL_PORT".into(), bad.into());
            let e = Config::from_map(&m).unwrap_err();
            assert!(
                e.0.iter().any(|l| l.starts_with("INTERNAL_PORT: ")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn drain_settle_must_be_a_positive_number_of_milliseconds() {
        for bad in ["0", "soon", "-5"] {
            let mut m = base();
            m.insert("DRAIN_SETTLE_MS".into(), bad.into());
            let e = Config::from_map(&m).unwrap_err();
            assert!(
                e.0.iter().any(|l| l.starts_with("DRAIN_SETTLE_MS: ")),
                "{bad}: {e:?}"
            );
        }
        let mut m = base();
        m.insert("DRAIN_SETTLE_MS".into(), "5000".into());
        let c = Config::from_map(&m).unwrap();
        assert_eq!(c.drain_settle, Duration::from_secs(5));
    }

    #[test]
    fn content_url_path_needs_a_slash_and_the_id() {
        let mut m = base();
        m.insert("CONTENT_URL_PATH".into(), "api/v1/x".into());
        let e = Config::from_map(&m).unwrap_err();
        assert!(e.0.iter().any(|l| l.contains("CONTENT_URL_PATH")), "{e:?}");
    }

    #[test]
    fn postgres_defaults_to_no_migration() {
        let mut m = base();
        m.insert("DATABASE_URL".into(), "postgres://x@localhost/db".into());
        let c = Config::from_map(&m).unwrap();
        assert!(!c.db_migrate);
    }

    #[test]
    fn every_problem_is_reported_once_per_variable() {
        let mut m = base();
        m.insert("JWT_SECRET".into(), "short".into());
        m.remove("INTERNAL_API_SECRET");
        m.insert("PORT".into(), "eighty".into());
        m.insert("DB_MIGRATE".into(), "maybe".into());
        let errs = Config::from_map(&m).unwrap_err().0;
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("JWT_SECRET:")));
        assert!(errs.iter().any(|e| e.starts_with("INTERNAL_API_SECRET:")));
        assert!(errs.iter().any(|e| e.starts_with("PORT:")));
        assert!(errs.iter().any(|e| e.starts_with("DB_MIGRATE:")));
    }

    #[test]
    fn trusted_proxies_take_ranges_and_addresses() {
        let mut m = base();
        m.insert(
            "TRUSTED_PROXIES".into(),
            "10.0.0.0/8, 127.0.0.1, ::1/128,127.0.0.1/32".into(),
        );
        let c = Config::from_map(&m).unwrap();
        let t = &c.limits.trusted_proxies;
        for ip in ["10.4.5.6", "127.0.0.1", "::1"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
        m.insert(
            "TRUSTED_PROXIES".into(),
            "10.0.0.0/8, nginx, 1.2.3.4/40".into(),
        );
        let errs = Config::from_map(&m).unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter().all(|e| e.starts_with("TRUSTED_PROXIES:")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("`nginx`")), "{errs:?}");
    }

    #[test]
    fn impression_batch_bounds() {
        for (v, ok) in [("0", false), ("1", true), ("3000", true), ("3001", false)] {
            let mut m = base();
            m.insert("IMPRESSION_BATCH_MAX".into(), v.into());
            let r = Config::from_map(&m);
            assert_eq!(r.is_ok(), ok, "IMPRESSION_BATCH_MAX={v}: {r:?}");
        }
        let mut m = base();
        m.insert("IMPRESSION_FLUSH_MS".into(), "0".into());
        let errs = Config::from_map(&m).unwrap_err().0;
        assert!(errs[0].starts_with("IMPRESSION_FLUSH_MS:"), "{errs:?}");
    }

    #[test]
    fn cors_list_is_trimmed() {
        let mut m = base();
        m.insert(
            "CORS_ORIGIN".into(),
            " https://a.example , https://b.example,".into(),
        );
        let c = Config::from_map(&m).unwrap();
        assert_eq!(
            c.cors_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn redis_url_and_sentinels_are_alternatives() {
        let mut m = base();
        m.insert(
            "REDIS_URL".into(),
            "rediss://cache.example:6380/#insecure".into(),
        );
        let c = Config::from_map(&m).unwrap();
        assert!(matches!(c.redis, Some(RedisConfig::Url { .. })));

        m.insert("REDIS_SENTINELS".into(), "s1:26379".into());
        m.insert("REDIS_SENTINEL_MASTER".into(), "mymaster".into());
        let errs = Config::from_map(&m).unwrap_err().0;
        assert_eq!(
            errs,
            vec![
                "REDIS_SENTINELS: set only one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES (found REDIS_URL and REDIS_SENTINELS)"
            ]
        );

        m.remove("REDIS_SENTINELS");
        let errs = Config::from_map(&m).unwrap_err().0;
        assert_eq!(
            errs,
            vec![
                "REDIS_SENTINEL_MASTER: is only used with REDIS_SENTINELS; with REDIS_URL put it in the URL"
            ]
        );
    }

    #[test]
    fn sentinel_settings_are_parsed() {
        let mut m = base();
        m.insert(
            "REDIS_SENTINELS".into(),
            " s1.example:26379, [::1]:26380 ,".into(),
        );
        m.insert("REDIS_SENTINEL_MASTER".into(), "mymaster".into());
        m.insert("REDIS_SENTINEL_PASSWORD".into(), "sp".into());
        m.insert("REDIS_PASSWORD".into(), "rp".into());
        m.insert("REDIS_SENTINEL_TLS".into(), "insecure".into());
        let Some(RedisConfig::Sentinel(s)) = Config::from_map(&m).unwrap().redis else {
            panic!("sentinel mode expected");
        };
        assert_eq!(
            s.sentinels,
            vec![
                ("s1.example".to_string(), 26379),
                ("::1".to_string(), 26380)
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.sentinel_password.as_deref(), Some("sp"));
        assert_eq!(s.password.as_deref(), Some("rp"));
        assert_eq!(s.username, None);
        assert_eq!(s.tls, RedisTls::Insecure);
    }

    #[test]
    fn cluster_settings_are_parsed_and_exclude_the_other_modes() {
        let mut m = base();
        m.insert(
            "REDIS_CLUSTER_NODES".into(),
            "n1.example:7000, n2.example:7001,".into(),
        );
        m.insert("REDIS_USERNAME".into(), "gw".into());
        m.insert("REDIS_PASSWORD".into(), "pw".into());
        m.insert("REDIS_CLUSTER_TLS".into(), "true".into());
        let Some(RedisConfig::Cluster(c)) = Config::from_map(&m).unwrap().redis else {
            panic!("cluster mode expected");
        };
        assert_eq!(
            c.nodes,
            vec![
                ("n1.example".to_string(), 7000),
                ("n2.example".to_string(), 7001)
            ]
        );
        assert_eq!(c.username.as_deref(), Some("gw"));
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.tls, RedisTls::Verify);

        // A mix is reported, whichever two are set.
        for other in [
            ("REDIS_URL", "redis://h:1/"),
            ("REDIS_SENTINELS", "s:26379"),
        ] {
            let mut mixed = m.clone();
            mixed.insert(other.0.into(), other.1.into());
            mixed.insert("REDIS_SENTINEL_MASTER".into(), "mymaster".into());
            let errs = Config::from_map(&mixed).unwrap_err().0;
            assert!(
                errs.iter().any(|e| e.contains("set only one of")
                    && e.contains("REDIS_CLUSTER_NODES")
                    && e.contains(other.0)),
                "{errs:?}"
            );
        }

        // Cluster-only settings without the cluster.
        let mut alone = base();
        alone.insert("REDIS_CLUSTER_TLS".into(), "true".into());
        let errs = Config::from_map(&alone).unwrap_err().0;
        assert_eq!(
            errs,
            vec!["REDIS_CLUSTER_TLS: is only used with REDIS_CLUSTER_NODES"]
        );

        let mut bad = base();
        bad.insert("REDIS_CLUSTER_NODES".into(), "n1,n2:0".into());
        bad.insert("REDIS_CLUSTER_TLS".into(), "maybe".into());
        let errs = Config::from_map(&bad).unwrap_err().0;
        assert!(errs.contains(&"REDIS_CLUSTER_NODES: `n1` is not host:port".to_string()));
        assert!(errs.contains(&"REDIS_CLUSTER_NODES: `n2:0` is not host:port".to_string()));
        assert!(errs.contains(&"REDIS_CLUSTER_NODES: names no host:port".to_string()));
        assert!(errs.iter().any(|e| e.starts_with("REDIS_CLUSTER_TLS:")));
    }

    #[test]
    fn every_bad_redis_variable_is_reported() {
        let mut m = base();
        m.insert("REDIS_SENTINELS".into(), "s1,s2:0,s3:26379".into());
        m.insert("REDIS_SENTINEL_TLS".into(), "sometimes".into());
        let errs = Config::from_map(&m).unwrap_err().0;
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.contains(&"REDIS_SENTINELS: `s1` is not host:port".to_string()));
        assert!(errs.contains(&"REDIS_SENTINELS: `s2:0` is not host:port".to_string()));
        assert!(errs.iter().any(|e| e.starts_with("REDIS_SENTINEL_TLS:")));
        assert!(errs.contains(&"REDIS_SENTINEL_MASTER: is required".to_string()));

        let mut m = base();
        m.insert("REDIS_URL".into(), "rediss://h:1/#secure".into());
        let errs = Config::from_map(&m).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("REDIS_URL: is not a valid Redis URL"),
            "{errs:?}"
        );
    }
}
