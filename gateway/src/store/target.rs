//! Where the Redis primary is, and the signal that it moved.
//!
//! Both the stores' pool and the adapter's pub/sub driver connect through a [`RedisTarget`]:
//! - `REDIS_URL`: the same address every time. Behind a managed endpoint that fails over, a new
//!   connection reaches the new primary (the name is resolved again on each connect).
//! - Sentinel: the Sentinels are asked for the current primary on every new connection, and
//!   redis-rs checks that the node it names says `ROLE master` before handing it out.
//! - `REDIS_CLUSTER_NODES`: a Redis Cluster. There is no single primary: redis-rs's cluster
//!   client learns the slot map from the seeds and follows MOVED/ASK and failovers; the stores
//!   then use a sharded keyspace ([`Keyspace::Sharded`]).
//!
//! A node that answers `READONLY` (a primary demoted to replica while our connection stayed
//! open) or `ROLE slave` is not the primary any more: [`RedisTarget::primary_lost`] bumps a
//! generation so every connection made before is retired, and wakes the pub/sub driver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, RedisResult,
};
use tokio::sync::{Mutex, watch};

use super::keys::Keyspace;
use crate::config::{ClusterConfig, RedisConfig, RedisTls, SentinelConfig};

/// Bound on connecting (and on asking the Sentinels), so an outage fails fast.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

enum Source {
    Fixed(redis::Client),
    /// redis-rs's client keeps per-Sentinel connections, hence `&mut` and the lock; lookups are
    /// rare (new connections only).
    Sentinel(Mutex<SentinelClient>),
    /// A Redis Cluster: redis-rs's cluster client follows the slot map, MOVED/ASK and failovers
    /// itself, so there is no "current primary" to look up.
    Cluster(redis::cluster::ClusterClient),
}

pub struct RedisTarget {
    source: Source,
    generation: AtomicU64,
    changed: watch::Sender<u64>,
    describe: String,
}

/// Picks the rustls crypto provider once per process. rustls is compiled with both ring and
/// aws-lc-rs here (sqlx and reqwest bring one each), and redis-rs builds its `ClientConfig`
/// with the process default, which panics when two are compiled and none was chosen.
pub fn install_crypto_provider() {
    // An error only means a provider was installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The adapter's subscriptions are RESP3 pushes; operators pass an ordinary URL. The query goes
/// before a `#insecure` fragment, which redis-rs reads from the end of the URL.
pub fn resp3_url(url: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let mut out = if base.contains("protocol=") {
        base.to_string()
    } else if base.contains('?') {
        format!("{base}&protocol=resp3")
    } else {
        format!("{base}?protocol=resp3")
    };
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Whether a Redis error says the node is no longer the primary.
pub fn is_not_primary(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    ) || e.code() == Some("READONLY")
        || e.to_string().contains("READONLY")
}

/// Whether the connection that returned `e` must not be used again.
pub fn is_broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

impl RedisTarget {
    pub fn new(cfg: &RedisConfig) -> RedisResult<RedisTarget> {
        install_crypto_provider();
        let source = match cfg {
            RedisConfig::Url { url } => {
                if url.ends_with("#insecure") {
                    tracing::warn!(
                        "REDIS_URL ends with #insecure: TLS to Redis WITHOUT certificate verification."
                    );
                }
                let info = resp3_url(url)
                    .as_str()
                    .into_connection_info()?
                    .set_tcp_settings(tcp_settings());
                Source::Fixed(redis::Client::open(info)?)
            }
            RedisConfig::Sentinel(s) => Source::Sentinel(Mutex::new(sentinel_client(s)?)),
            RedisConfig::Cluster(c) => Source::Cluster(cluster_client(c)?),
        };
        let (changed, _) = watch::channel(0);
        Ok(RedisTarget {
            source,
            generation: AtomicU64::new(0),
            changed,
            describe: cfg.describe(),
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// How the stores name their keys on this deployment.
    pub fn keyspace(&self) -> Keyspace {
        match self.source {
            Source::Cluster(_) => Keyspace::Sharded,
            _ => Keyspace::Single,
        }
    }

    /// The cluster client, on a Redis Cluster.
    pub fn cluster_client(&self) -> Option<&redis::cluster::ClusterClient> {
        match &self.source {
            Source::Cluster(c) => Some(c),
            _ => None,
        }
    }

    /// A client for the current primary (Sentinel: asks the Sentinels now).
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match &self.source {
            Source::Fixed(c) => Ok(c.clone()),
            Source::Sentinel(s) => {
                let lookup = async { s.lock().await.async_get_client().await };
                match tokio::time::timeout(CONNECT_TIMEOUT * 2, lookup).await {
                    Ok(r) => r,
                    Err(_) => Err(RedisError::from((
                        ErrorKind::Io,
                        "no answer from the Sentinels",
                    ))),
                }
            }
            Source::Cluster(_) => Err(RedisError::from((
                ErrorKind::Client,
                "a Redis Cluster has no single primary",
            ))),
        }
    }

    /// A new multiplexed connection to the current primary.
    pub async fn connect(&self, cfg: AsyncConnectionConfig) -> RedisResult<MultiplexedConnection> {
        let client = self.client().await?;
        let cfg = cfg
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// The node we were talking to is not the primary any more: connections made before now
    /// are retired, and watchers reconnect.
    pub fn primary_lost(&self) {
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::warn!(
            redis = %self.describe,
            "Redis node is no longer the primary; reconnecting to the current one."
        );
        self.changed.send_replace(g);
    }

    /// Increases each time [`Self::primary_lost`] is called.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Asks the connected node for its role. `Ok(false)` means a replica: stop using it.
    /// Servers that refuse `ROLE` (some managed services restrict commands) count as primary,
    /// so the check only ever removes connections that are provably wrong.
    pub async fn is_primary(conn: &mut MultiplexedConnection) -> RedisResult<bool> {
        match redis::cmd("ROLE").query_async::<redis::Value>(conn).await {
            Ok(redis::Value::Array(items)) => Ok(match items.first() {
                Some(redis::Value::BulkString(b)) => b.as_slice() == b"master",
                Some(redis::Value::SimpleString(s)) => s == "master",
                _ => true,
            }),
            Ok(_) => Ok(true),
            Err(e) if is_broken(&e) => Err(e),
            Err(e) if is_not_primary(&e) => Ok(false),
            Err(_) => Ok(true),
        }
    }
}

/// `TCP_NODELAY` on every connection to Redis. redis-rs leaves Nagle on by default, and a
/// multiplexed connection's small writes then wait for the previous write's ACK (delayed up to
/// 40 ms by the peer): 6 ms of a heartbeat's Redis step at 5,000 heartbeats/s in the benchmark.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// Bounds for every cluster request: a frozen node fails its callers fast (the stores' own
/// timeout stays the outer bound), and a node that went away is retried a few times while its
/// replica is promoted (`cluster-node-timeout` plus the election: a few seconds).
fn cluster_client(c: &ClusterConfig) -> RedisResult<redis::cluster::ClusterClient> {
    let scheme = match c.tls {
        RedisTls::Off => "redis",
        RedisTls::Verify | RedisTls::Insecure => "rediss",
    };
    let fragment = if c.tls == RedisTls::Insecure {
        tracing::warn!(
            "REDIS_CLUSTER_TLS=insecure: TLS to the cluster nodes WITHOUT certificate verification."
        );
        "#insecure"
    } else {
        ""
    };
    let seeds: Vec<String> = c
        .nodes
        .iter()
        .map(|(h, p)| {
            let host = if h.contains(':') {
                format!("[{h}]")
            } else {
                h.clone()
            };
            format!("{scheme}://{host}:{p}/{fragment}")
        })
        .collect();
    let mut b = redis::cluster::ClusterClientBuilder::new(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .tcp_settings(tcp_settings())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(CONNECT_TIMEOUT)
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(500);
    match c.tls {
        RedisTls::Off => {}
        RedisTls::Verify => b = b.tls(redis::TlsMode::Secure),
        RedisTls::Insecure => b = b.tls(redis::TlsMode::Insecure),
    }
    if let Some(u) = &c.username {
        b = b.username(u);
    }
    if let Some(p) = &c.password {
        b = b.password(p);
    }
    b.build()
}

fn sentinel_client(s: &SentinelConfig) -> RedisResult<SentinelClient> {
    let addrs = s.sentinels.iter().map(|(host, port)| match s.tls {
        RedisTls::Off => ConnectionAddr::Tcp(host.clone(), *port),
        RedisTls::Verify | RedisTls::Insecure => ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: s.tls == RedisTls::Insecure,
            tls_params: None,
        },
    });
    let mut b = SentinelClientBuilder::new(addrs, &s.master, SentinelServerType::Master)?
        .set_client_to_redis_protocol(redis::ProtocolVersion::RESP3)
        .set_client_to_redis_tcp_settings(tcp_settings());
    match s.tls {
        RedisTls::Off => {}
        RedisTls::Verify => {
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        RedisTls::Insecure => {
            tracing::warn!(
                "REDIS_SENTINEL_TLS=insecure: TLS to Redis and Sentinel WITHOUT certificate verification."
            );
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Insecure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Insecure);
        }
    }
    if let Some(u) = &s.sentinel_username {
        b = b.set_client_to_sentinel_username(u);
    }
    if let Some(p) = &s.sentinel_password {
        b = b.set_client_to_sentinel_password(p);
    }
    if let Some(u) = &s.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &s.password {
        b = b.set_client_to_redis_password(p);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp3_is_added_before_the_fragment() {
        assert_eq!(resp3_url("redis://h:1/"), "redis://h:1/?protocol=resp3");
        assert_eq!(
            resp3_url("rediss://h:1/0?x=1#insecure"),
            "rediss://h:1/0?x=1&protocol=resp3#insecure"
        );
        assert_eq!(
            resp3_url("redis://h/?protocol=resp3"),
            "redis://h/?protocol=resp3"
        );
    }
}
