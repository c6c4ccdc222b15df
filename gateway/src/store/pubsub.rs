//! The Socket.IO adapter's pub/sub driver, built to survive Redis restarts and failovers.
//!
//! socketioxide-redis's stock driver holds one multiplexed connection that never reconnects, and
//! the adapter publishes before it delivers locally: after a Redis restart every emit failed,
//! even to this replica's own sockets. This driver keeps one RESP3 connection to the current
//! primary (through [`RedisTarget`]: the URL, or whatever the Sentinels name now), and a
//! supervisor task replaces it when it breaks, answers `READONLY`, or `ROLE` says replica,
//! then subscribes every channel again. Publishing is best effort, so an outage or a failover
//! degrades to "local delivery only" and heals by itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, PushInfo, PushKind, RedisError};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::target::{self, RedisTarget};
use crate::shutdown::Tasks;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

/// How often the live connection is asked `ROLE`: a managed endpoint or a Sentinel failover can
/// demote our node while the connection stays open, and pub/sub on a replica only half works
/// (what we publish there reaches nobody on the primary).
const ROLE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Reconnect attempts are cheap (a refused TCP connect); a short cap keeps the window in which
/// this replica misses other replicas' messages after Redis returns small.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// How long a publish waits for a reconnect in progress before delivering locally only (what
/// a `ConnectionManager` did too): a message published right after Redis returned is not lost.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct ResilientDriver {
    inner: Arc<Inner>,
}

struct Inner {
    target: Arc<RedisTarget>,
    handlers: Handlers,
    /// The connection in use and its id; `None` while reconnecting.
    conn: watch::Sender<Option<(u64, MultiplexedConnection)>>,
    /// Id of the newest connection attempt.
    current: AtomicU64,
    /// Id of the connection reported broken, so reports about a connection we retired
    /// already (its disconnection push, a late failed command) start no second reconnect.
    broken: AtomicU64,
    /// Woken when the connection in use broke.
    lost: Notify,
    /// Cuts a reconnect backoff short (a publish is waiting).
    kick: Notify,
    /// Counts reconnects (not the first connect): messages published by other replicas while
    /// this one was not subscribed are lost (pub/sub keeps nothing), so whoever watches this
    /// re-sends the state those messages carried.
    reconnects: watch::Sender<u64>,
}

fn route(msg: PushInfo, handlers: &Handlers) {
    if !matches!(msg.kind, PushKind::Message | PushKind::SMessage) || msg.data.len() < 2 {
        return;
    }
    let mut it = msg.data.into_iter();
    let (Some(c), Some(m)) = (it.next(), it.next()) else {
        return;
    };
    let (Ok(chan), Ok(payload)) = (String::from_redis_value(c), Vec::<u8>::from_redis_value(m))
    else {
        return;
    };
    let map = handlers.read().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = map.get(&chan)
        && tx.try_send((chan, payload)).is_err()
    {
        tracing::warn!("Adapter channel full; a cluster message was dropped.");
    }
}

impl Inner {
    fn current_conn(&self) -> Option<(u64, MultiplexedConnection)> {
        self.conn.borrow().clone()
    }

    fn set_conn(&self, c: Option<(u64, MultiplexedConnection)>) {
        self.conn.send_replace(c);
    }

    /// The connection `id` broke: reconnect, unless that connection is already retired.
    fn report_broken(&self, id: u64) {
        if self.current.load(Ordering::SeqCst) == id && self.broken.swap(id, Ordering::SeqCst) != id
        {
            self.lost.notify_one();
        }
    }

    /// Connects to the current primary and subscribes every channel the adapter holds.
    async fn connect(self: &Arc<Self>) -> Result<(), RedisError> {
        let id = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        let h = self.handlers.clone();
        let me = Arc::downgrade(self);
        let cfg = AsyncConnectionConfig::new().set_push_sender(move |msg: PushInfo| {
            if msg.kind == PushKind::Disconnection {
                if let Some(me) = me.upgrade() {
                    me.report_broken(id);
                }
            } else {
                route(msg, &h);
            }
            Ok::<(), Infallible>(())
        });
        let mut conn = self.target.connect(cfg).await?;
        if !RedisTarget::is_primary(&mut conn).await? {
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "the node is not the primary (yet)",
            )));
        }
        // Published first, then the channels are read: a subscribe() racing with us either sees
        // this connection (and subscribes itself) or had its channel in the map already.
        self.set_conn(Some((id, conn.clone())));
        let channels: Vec<String> = self
            .handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        if !channels.is_empty() {
            conn.subscribe(&channels).await?;
        }
        Ok(())
    }

    /// Whether the connection in use is still a primary that answers.
    async fn healthy(&self) -> bool {
        let Some((_, mut c)) = self.current_conn() else {
            return false;
        };
        match RedisTarget::is_primary(&mut c).await {
            Ok(true) => true,
            Ok(false) => {
                self.target.primary_lost();
                false
            }
            Err(_) => false,
        }
    }
}

/// Keeps the driver connected to the primary until the driver is dropped or `stop` is cancelled.
async fn supervise(me: Weak<Inner>, stop: CancellationToken) {
    tokio::select! {
        _ = keep_connected(me) => {}
        _ = stop.cancelled() => {}
    }
}

async fn keep_connected(me: Weak<Inner>) {
    let Some(mut changes) = me.upgrade().map(|i| i.target.changes()) else {
        return;
    };
    loop {
        // Connected: wait for a break, a failover seen by the stores, or the next role check.
        loop {
            let Some(inner) = me.upgrade() else { return };
            let broke = tokio::select! {
                _ = inner.lost.notified() => {
                    // Only a report about the connection in use counts.
                    inner.broken.load(Ordering::SeqCst) == inner.current.load(Ordering::SeqCst)
                }
                r = changes.changed() => r.is_ok(),
                _ = tokio::time::sleep(ROLE_CHECK_EVERY) => !inner.healthy().await,
            };
            if broke {
                break;
            }
        }
        // Reconnecting: the adapter delivers locally only until this succeeds.
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(inner) = me.upgrade() else { return };
            inner.set_conn(None);
            match inner.connect().await {
                Ok(()) => {
                    tracing::info!(redis = %inner.target.describe(), "Adapter reconnected to the Redis primary.");
                    inner.reconnects.send_modify(|n| *n += 1);
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Adapter reconnect failed; retrying.");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = inner.kick.notified() => {}
            }
            drop(inner);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

impl ResilientDriver {
    /// Connects once (the caller retries), then keeps reconnecting in a task on `tasks`.
    pub async fn new(target: Arc<RedisTarget>, tasks: &Tasks) -> Result<Self, RedisError> {
        let inner = Arc::new(Inner {
            target,
            handlers: Arc::default(),
            conn: watch::channel(None).0,
            current: AtomicU64::new(0),
            broken: AtomicU64::new(0),
            lost: Notify::new(),
            kick: Notify::new(),
            reconnects: watch::channel(0).0,
        });
        inner.connect().await?;
        tasks.spawn(supervise(Arc::downgrade(&inner), tasks.stop_token()));
        Ok(ResilientDriver { inner })
    }

    /// Changes after every reconnect (and resubscribe) that followed a lost connection.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnects.subscribe()
    }

    fn conn(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        self.inner.current_conn().ok_or_else(reconnecting)
    }

    /// The connection, waiting up to [`PUBLISH_WAIT`] for a reconnect in progress.
    async fn conn_soon(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(c) = self.inner.current_conn() {
            return Ok(c);
        }
        self.inner.kick.notify_one();
        let mut rx = self.inner.conn.subscribe();
        match tokio::time::timeout(PUBLISH_WAIT, rx.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone().ok_or_else(reconnecting),
            _ => Err(reconnecting()),
        }
    }

    /// A command on connection `id` failed: if it is broken or on a replica, reconnect now
    /// rather than at the next role check.
    fn failed(&self, id: u64, e: &RedisError) {
        if target::is_not_primary(e) {
            self.inner.target.primary_lost();
        } else if target::is_broken(e) {
            self.inner.report_broken(id);
        }
    }
}

impl ResilientDriver {
    /// PUBLISH, answering how many subscribers received the message (the relay's requests need
    /// to know: zero means the replica addressed is gone).
    pub async fn publish_counted(&self, chan: String, val: Vec<u8>) -> Result<u64, RedisError> {
        let (id, mut c) = self.conn_soon().await?;
        redis::cmd("PUBLISH")
            .arg(chan)
            .arg(val)
            .query_async::<u64>(&mut c)
            .await
            .inspect_err(|e| self.failed(id, e))
    }
}

#[async_trait::async_trait]
impl crate::service::relay::RelayBus for ResilientDriver {
    async fn publish(&self, channel: String, payload: Vec<u8>) -> Result<u64, String> {
        self.publish_counted(channel, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Driver for ResilientDriver {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        // Best effort: an error here would also stop local delivery (the adapter publishes first).
        if let Err(e) = self.publish_counted(chan, val).await {
            tracing::debug!(error = %e, "Cluster publish failed; delivering locally only.");
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        // Without a connection the supervisor subscribes the channel when it reconnects.
        if let Some((id, mut c)) = self.inner.current_conn()
            && let Err(e) = c.subscribe(&chan).await
        {
            self.failed(id, &e);
            return Err(e);
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        match self.inner.current_conn() {
            Some((_, mut c)) => c.unsubscribe(chan).await,
            None => Ok(()),
        }
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (id, mut c) = self.conn()?;
        let res = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async::<(String, u16)>(&mut c)
            .await;
        match res {
            Ok((_, count)) => Ok(count),
            Err(e) => {
                self.failed(id, &e);
                Err(e)
            }
        }
    }
}

fn reconnecting() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "reconnecting to the Redis primary"))
}
