//! The Socket.IO adapter's pub/sub driver, built to survive Redis restarts and failovers.
//!
//! socketioxide-redis's stock driver holds one multiplexed connection that never reconnects, and
//! the adapter publishes before it delivers locally: after a Redis restart every emit failed,
//! even to this replica's own sockets. This driver keeps one RESP3 connection to the current
//! primary (through [`RedisTarget`]: the URL, or whatever the Sentinels name now), and a
//! supervisor task replaces it when it breaks, answers `READONLY`, or `ROLE` says replica,
//! then subscribes every channel again. Publishing is best effort, so an outage or a failover
//! degrades to "local delivery only" and heals by itself.
//!
//! On a Redis Cluster the driver uses sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) through
//! one redis-rs cluster connection, which subscribes each channel on the primary of its slot and
//! subscribes again by itself after a node reconnects or the slot map changes. What the driver
//! adds is the same signal as above: after a node's connection dropped and every primary answers
//! again, [`ResilientDriver::reconnects`] changes, so the state carried by messages lost
//! meanwhile is re-sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
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
    bus: Bus,
}

/// One primary (reached through the target), or a Redis Cluster.
#[derive(Clone)]
enum Bus {
    Node(Arc<Inner>),
    Cluster(Arc<ClusterBus>),
}

/// Sharded pub/sub on a Redis Cluster.
struct ClusterBus {
    client: redis::cluster::ClusterClient,
    /// The connection in use; replaced after a node was lost (see [`keep_resynced`]).
    conn: RwLock<ClusterConnection>,
    handlers: Handlers,
    /// Woken by a node connection's disconnection push (of the connection in use only).
    lost: Arc<Notify>,
    /// Which connection is in use: pushes from a replaced one are ignored.
    generation: Arc<AtomicU64>,
    reconnects: watch::Sender<u64>,
}

impl ClusterBus {
    fn conn(&self) -> ClusterConnection {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A cluster connection whose pushes go to the adapter's handlers.
    async fn connect(
        client: &redis::cluster::ClusterClient,
        handlers: &Handlers,
        lost: &Arc<Notify>,
        generation: &Arc<AtomicU64>,
        mine: u64,
    ) -> Result<ClusterConnection, RedisError> {
        let (h, l, g) = (handlers.clone(), lost.clone(), generation.clone());
        let cfg = redis::cluster::ClusterConfig::new().set_push_sender(move |msg: PushInfo| {
            let current = g.load(Ordering::SeqCst) == mine;
            if msg.kind == PushKind::Disconnection {
                if current {
                    l.notify_one();
                }
            } else if msg.kind == PushKind::SUnsubscribe {
                // A channel we still hold was unsubscribed by the server: its slot moved to
                // another primary (a reshard). Subscribe everything again on a new connection.
                let held = msg
                    .data
                    .first()
                    .and_then(|c| String::from_redis_value(c.clone()).ok())
                    .is_some_and(|c| h.read().unwrap_or_else(|p| p.into_inner()).contains_key(&c));
                if current && held {
                    l.notify_one();
                }
            } else {
                route(msg, &h);
            }
            Ok::<(), Infallible>(())
        });
        client.get_async_connection_with_config(cfg).await
    }

    /// A new connection with every channel subscribed, answering `PING` on every primary, in
    /// place of the one in use.
    async fn renew(&self) -> Result<(), RedisError> {
        let next = self.generation.load(Ordering::SeqCst) + 1;
        let mut conn = Self::connect(
            &self.client,
            &self.handlers,
            &self.lost,
            &self.generation,
            next,
        )
        .await?;
        // In use first, then the channels are read (as in `Inner::connect`). The old
        // connection's disconnection pushes (it closes when its last handle goes) are not a loss
        // any more.
        self.generation.store(next, Ordering::SeqCst);
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = conn.clone();
        for chan in channels(&self.handlers) {
            conn.ssubscribe(&chan).await?;
        }
        redis::cmd("PING")
            .query_async::<redis::Value>(&mut conn)
            .await?;
        Ok(())
    }
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

/// Every channel the adapter and the relay hold.
fn channels(handlers: &Handlers) -> Vec<String> {
    handlers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect()
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
        // The adapter's buffer (`app::ADAPTER_STREAM_BUFFER`) was outrun: a burst arrived while
        // its reader was starved. One line per thousand drops, not one per message.
        let n = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
        if n % 1000 == 1 {
            tracing::warn!(
                dropped_so_far = n,
                "Adapter channel full; a cluster message was dropped."
            );
        }
    }
}

/// Cross-replica messages dropped on a full adapter channel in this process (one gateway per
/// process in production): the log above and `vizora_gateway_adapter_messages_dropped_total`.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many cross-replica messages this process dropped because the adapter's receive buffer
/// was full. Each may be a `device:status` a dashboard never saw.
pub fn adapter_messages_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

impl Inner {
    fn new(target: Arc<RedisTarget>) -> Inner {
        Inner {
            target,
            handlers: Arc::default(),
            conn: watch::channel(None).0,
            current: AtomicU64::new(0),
            broken: AtomicU64::new(0),
            lost: Notify::new(),
            kick: Notify::new(),
            reconnects: watch::channel(0).0,
        }
    }

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
        let channels = channels(&self.handlers);
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

/// After a cluster node's connection dropped (a node died, restarted or was failed over), or a
/// channel's slot moved away (the server unsubscribed it):
/// replaces the connection with a new one, subscribed to every channel, once the cluster
/// answers on every primary again, then reports a reconnect so the state carried by messages
/// lost meanwhile is re-sent.
///
/// redis-rs repairs node connections and renews subscriptions by itself, but a connection that
/// lost a primary was seen to stay stuck after the replica's promotion (every request timing
/// out); a new connection learns the promoted node from the slot map at once.
async fn keep_resynced(bus: Weak<ClusterBus>, stop: CancellationToken) {
    let Some(lost) = bus.upgrade().map(|b| b.lost.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = lost.notified() => {}
            _ = stop.cancelled() => return,
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            let Some(bus) = bus.upgrade() else { return };
            match bus.renew().await {
                Ok(()) => {
                    tracing::info!("Adapter reconnected to the Redis Cluster.");
                    bus.reconnects.send_modify(|n| *n += 1);
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Adapter reconnect to the Redis Cluster failed; retrying.");
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

impl ResilientDriver {
    /// Connects once (the caller retries), then keeps reconnecting in a task on `tasks`.
    pub async fn new(target: Arc<RedisTarget>, tasks: &Tasks) -> Result<Self, RedisError> {
        if let Some(client) = target.cluster_client() {
            let handlers: Handlers = Arc::default();
            let lost = Arc::new(Notify::new());
            let generation = Arc::new(AtomicU64::new(0));
            let conn = ClusterBus::connect(client, &handlers, &lost, &generation, 0).await?;
            let bus = Arc::new(ClusterBus {
                client: client.clone(),
                conn: RwLock::new(conn),
                handlers,
                lost,
                generation,
                reconnects: watch::channel(0).0,
            });
            tasks.spawn(keep_resynced(Arc::downgrade(&bus), tasks.stop_token()));
            return Ok(ResilientDriver {
                bus: Bus::Cluster(bus),
            });
        }
        let inner = Arc::new(Inner::new(target));
        inner.connect().await?;
        tasks.spawn(supervise(Arc::downgrade(&inner), tasks.stop_token()));
        Ok(ResilientDriver {
            bus: Bus::Node(inner),
        })
    }

    /// Changes after every reconnect (and resubscribe) that followed a lost connection.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        match &self.bus {
            Bus::Node(inner) => inner.reconnects.subscribe(),
            Bus::Cluster(bus) => bus.reconnects.subscribe(),
        }
    }

    /// PUBLISH, answering how many subscribers received the message (the relay's requests need
    /// to know: zero means the replica addressed is gone).
    pub async fn publish_counted(&self, chan: String, val: Vec<u8>) -> Result<u64, RedisError> {
        match &self.bus {
            Bus::Node(inner) => {
                let (id, mut c) = inner.conn_soon().await?;
                redis::cmd("PUBLISH")
                    .arg(chan)
                    .arg(val)
                    .query_async::<u64>(&mut c)
                    .await
                    .inspect_err(|e| inner.failed(id, e))
            }
            // Every replica subscribes its channels on the primary of the channel's slot, so
            // the count SPUBLISH answers is the cluster-wide one.
            Bus::Cluster(bus) => {
                redis::cmd("SPUBLISH")
                    .arg(chan)
                    .arg(val)
                    .query_async::<u64>(&mut bus.conn())
                    .await
            }
        }
    }

    fn handlers(&self) -> &Handlers {
        match &self.bus {
            Bus::Node(inner) => &inner.handlers,
            Bus::Cluster(bus) => &bus.handlers,
        }
    }
}

impl Inner {
    /// The connection, waiting up to [`PUBLISH_WAIT`] for a reconnect in progress.
    async fn conn_soon(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(c) = self.current_conn() {
            return Ok(c);
        }
        self.kick.notify_one();
        let mut rx = self.conn.subscribe();
        match tokio::time::timeout(PUBLISH_WAIT, rx.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone().ok_or_else(reconnecting),
            _ => Err(reconnecting()),
        }
    }

    /// A command on connection `id` failed: if it is broken or on a replica, reconnect now
    /// rather than at the next role check.
    fn failed(&self, id: u64, e: &RedisError) {
        if target::is_not_primary(e) {
            self.target.primary_lost();
        } else if target::is_broken(e) {
            self.report_broken(id);
        }
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
        self.handlers()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        match &self.bus {
            // Without a connection the supervisor subscribes the channel when it reconnects.
            Bus::Node(inner) => {
                if let Some((id, mut c)) = inner.current_conn()
                    && let Err(e) = c.subscribe(&chan).await
                {
                    inner.failed(id, &e);
                    return Err(e);
                }
            }
            // redis-rs keeps the subscription and renews it after a node reconnects; a slot
            // move is renewed by `keep_resynced`.
            Bus::Cluster(bus) => bus.conn().ssubscribe(&chan).await?,
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        match &self.bus {
            Bus::Node(inner) => match inner.current_conn() {
                Some((_, mut c)) => c.unsubscribe(chan).await,
                None => Ok(()),
            },
            Bus::Cluster(bus) => bus.conn().sunsubscribe(chan).await,
        }
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        match &self.bus {
            Bus::Node(inner) => {
                let (id, mut c) = inner.current_conn().ok_or_else(reconnecting)?;
                let res = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(chan)
                    .query_async::<(String, u16)>(&mut c)
                    .await;
                res.map(|(_, count)| count)
                    .inspect_err(|e| inner.failed(id, e))
            }
            // Asked of the primary that holds the channel's slot (redis-rs would ask every node
            // and merge the answers).
            Bus::Cluster(bus) => {
                let mut cmd = redis::cmd("PUBSUB");
                cmd.arg("SHARDNUMSUB").arg(chan);
                let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(chan, SlotAddr::Master),
                ));
                let v = bus.conn().route_command(cmd, at).await?;
                let (_, count): (String, u16) = redis::FromRedisValue::from_redis_value(v)?;
                Ok(count)
            }
        }
    }
}

fn reconnecting() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "reconnecting to the Redis primary"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn message(chan: &str) -> PushInfo {
        PushInfo {
            kind: PushKind::SMessage,
            data: vec![
                redis::Value::BulkString(chan.as_bytes().to_vec()),
                redis::Value::BulkString(b"payload".to_vec()),
            ],
        }
    }

    /// Pub/sub cannot push back: a message that finds the adapter's channel full is dropped,
    /// not queued without bound, and the drop is counted for the metric.
    #[test]
    fn a_message_that_finds_the_adapter_channel_full_is_dropped_and_counted() {
        let handlers: Handlers = Arc::default();
        let (tx, mut rx) = mpsc::channel(1);
        handlers.write().unwrap().insert("c".into(), tx);
        let before = adapter_messages_dropped();
        route(message("c"), &handlers);
        assert_eq!(adapter_messages_dropped(), before, "a free slot takes it");
        route(message("c"), &handlers);
        route(message("other"), &handlers);
        assert_eq!(
            adapter_messages_dropped() - before,
            1,
            "the full channel drops one; a channel nobody holds is not a drop"
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            ("c".to_string(), b"payload".to_vec())
        );
        assert!(rx.try_recv().is_err());
    }
}
