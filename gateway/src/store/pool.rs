//! The stores' Redis connections: a few shared multiplexed connections to the current primary,
//! each reconnected on demand.
//!
//! redis-rs's multiplexed connection already pipelines concurrent requests over one socket, so
//! there is nothing to check out: a call clones a handle to one of [`SHARED`] connections (round
//! robin) and sends its command. A store step is then exactly its own round trip.
//!
//! Nothing is checked per call. Whether the node is still the primary is learned from:
//! - a new connection, which asks `ROLE` once (a managed endpoint may briefly resolve to the old
//!   primary, now a replica);
//! - a `READONLY` answer (every hot-path script writes), after which the caller reports
//!   [`RedisTarget::primary_lost`];
//! - the adapter's driver (`store/pubsub.rs`), which asks `ROLE` on its own connection every few
//!   seconds and reports a demotion the same way, and a Sentinel switch it sees.
//!
//! Every report bumps the target's generation, and a connection made in an older generation is
//! not handed out again. A connection that failed or hung is discarded by the caller
//! ([`Conn::discard`]); the next call on its slot connects anew.
//!
//! On a Redis Cluster there is one redis-rs cluster connection instead, shared by every call: it
//! keeps a multiplexed connection per node, follows the slot map, MOVED/ASK and failovers, and
//! reconnects nodes itself, so nothing here checks roles or retires connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use super::target::{CONNECT_TIMEOUT, RedisTarget};
use super::{StoreError, StoreResult};

/// How many connections the stores share. Two cores drive one connection's socket easily; a few
/// keep one slow reply (a large sweep) from delaying every heartbeat behind it.
pub const SHARED: usize = 4;

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    target: Arc<RedisTarget>,
    slots: Box<[Slot]>,
    /// The cluster connection and its id, once made (cluster mode only).
    cluster: Mutex<Option<(u64, ClusterConnection)>>,
    next: AtomicUsize,
    ids: AtomicU64,
}

#[derive(Default)]
struct Slot {
    live: Mutex<Option<Live>>,
    /// One connect at a time per slot; callers that waited behind a failed connect fail too
    /// instead of queueing one connect timeout each.
    connecting: tokio::sync::Mutex<()>,
    failures: AtomicU64,
}

#[derive(Clone)]
struct Live {
    conn: MultiplexedConnection,
    generation: u64,
    id: u64,
}

impl Slot {
    fn current(&self, generation: u64) -> Option<Live> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.as_ref()
            .filter(|l| l.generation == generation)
            .cloned()
    }
}

pub fn pool(target: Arc<RedisTarget>, shared: usize) -> Pool {
    let slots = (0..shared.max(1)).map(|_| Slot::default()).collect();
    Pool {
        inner: Arc::new(Inner {
            target,
            slots,
            cluster: Mutex::new(None),
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
        }),
    }
}

impl Pool {
    /// A handle to one of the shared connections, connecting it first if it is not live.
    pub async fn get(&self) -> StoreResult<Conn> {
        if self.inner.target.cluster_client().is_some() {
            return self.cluster().await;
        }
        let inner = &self.inner;
        let slot = inner.next.fetch_add(1, Ordering::Relaxed) % inner.slots.len();
        let s = &inner.slots[slot];
        let generation = inner.target.generation();
        if let Some(l) = s.current(generation) {
            return Ok(self.handle(slot, l));
        }
        let failures = s.failures.load(Ordering::SeqCst);
        let _connecting = s.connecting.lock().await;
        let generation = inner.target.generation();
        if let Some(l) = s.current(generation) {
            return Ok(self.handle(slot, l));
        }
        if s.failures.load(Ordering::SeqCst) != failures {
            return Err(StoreError::Redis(RedisError::from((
                ErrorKind::Io,
                "Redis unreachable (a connect just failed)",
            ))));
        }
        match self.connect().await {
            Ok(conn) => {
                let live = Live {
                    conn,
                    generation,
                    id: inner.ids.fetch_add(1, Ordering::Relaxed) + 1,
                };
                *s.live.lock().unwrap_or_else(PoisonError::into_inner) = Some(live.clone());
                Ok(self.handle(slot, live))
            }
            Err(e) => {
                s.failures.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    async fn connect(&self) -> StoreResult<MultiplexedConnection> {
        let target = &self.inner.target;
        let connect = async {
            let mut conn = target.connect(AsyncConnectionConfig::new()).await?;
            if RedisTarget::is_primary(&mut conn).await? {
                Ok(conn)
            } else {
                target.primary_lost();
                Err(RedisError::from((
                    ErrorKind::Io,
                    "the node is a replica now",
                )))
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// The shared cluster connection, made on first use (through slot 0's connect lock and
    /// failure count, so callers queued behind a failed attempt fail fast here too).
    async fn cluster(&self) -> StoreResult<Conn> {
        let inner = &self.inner;
        let current = || {
            inner
                .cluster
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        let cluster_conn = |(id, conn)| Conn {
            conn: Link::Cluster(conn),
            slot: 0,
            id,
            pool: self.clone(),
        };
        if let Some(c) = current() {
            return Ok(cluster_conn(c));
        }
        let s = &inner.slots[0];
        let failures = s.failures.load(Ordering::SeqCst);
        let _connecting = s.connecting.lock().await;
        if let Some(c) = current() {
            return Ok(cluster_conn(c));
        }
        if s.failures.load(Ordering::SeqCst) != failures {
            return Err(StoreError::Redis(RedisError::from((
                ErrorKind::Io,
                "Redis Cluster unreachable (a connect just failed)",
            ))));
        }
        let Some(client) = inner.target.cluster_client() else {
            return Err(StoreError::Reply("not a Redis Cluster".into()));
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection()).await {
            Ok(Ok(conn)) => {
                let live = (inner.ids.fetch_add(1, Ordering::Relaxed) + 1, conn);
                *inner.cluster.lock().unwrap_or_else(PoisonError::into_inner) = Some(live.clone());
                Ok(cluster_conn(live))
            }
            Ok(Err(e)) => {
                s.failures.fetch_add(1, Ordering::SeqCst);
                Err(e.into())
            }
            Err(_) => {
                s.failures.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::Timeout)
            }
        }
    }

    fn handle(&self, slot: usize, live: Live) -> Conn {
        Conn {
            conn: Link::Node(live.conn),
            slot,
            id: live.id,
            pool: self.clone(),
        }
    }
}

/// A handle to one shared connection.
pub struct Conn {
    conn: Link,
    slot: usize,
    id: u64,
    pool: Pool,
}

/// A cluster call abandoned by its caller (a timeout shorter than the stores' own, such as the
/// fence probe's) after this long in flight counts as a stuck connection.
const CANCELLED_STUCK: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches one call on a cluster connection: dropped before [`Watch::done`] (the caller gave up)
/// after [`CANCELLED_STUCK`], it discards the connection, as a timeout inside the stores would.
pub struct Watch {
    /// The pool and the call's start, on a cluster connection only (nothing to watch, and no
    /// clock read per call, on a single node's).
    watched: Option<(Pool, std::time::Instant)>,
    id: u64,
}

impl Watch {
    /// The call returned (whatever it returned): nothing to do.
    pub fn done(mut self) {
        self.watched = None;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some((pool, started)) = self.watched.take()
            && started.elapsed() >= CANCELLED_STUCK
        {
            pool.discard_cluster(self.id, "a call abandoned by its caller");
        }
    }
}

/// What a handle talks through.
enum Link {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Pool {
    /// Forgets cluster connection `id` unless it was replaced already. Logged: every call
    /// after it waits for a new connection to learn the slot map.
    fn discard_cluster(&self, id: u64, why: &'static str) {
        let mut live = self
            .inner
            .cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if live.as_ref().is_some_and(|(i, _)| *i == id) {
            *live = None;
            tracing::warn!(connection = id, why, "Redis Cluster connection discarded.");
        }
    }
}

impl Conn {
    /// A guard for the call about to be made on this handle (see [`Watch`]); inert on a
    /// single node's connection.
    pub fn watch(&self) -> Watch {
        Watch {
            watched: matches!(self.conn, Link::Cluster(_))
                .then(|| (self.pool.clone(), std::time::Instant::now())),
            id: self.id,
        }
    }

    /// The connection failed or hung: the next call on its slot connects anew. Other handles to
    /// it see their own errors; a connection already replaced is left alone.
    ///
    /// That holds for the cluster connection too. redis-rs repairs a node connection by itself,
    /// but a connection that had requests in flight when a primary died was seen to stay stuck
    /// in its slot-refresh loop after the replica's promotion (every call timing out, on every
    /// node); a new one learns the slot map from the seeds and works at once.
    pub fn discard(self) {
        if matches!(self.conn, Link::Cluster(_)) {
            self.pool
                .discard_cluster(self.id, "a call failed or timed out");
            return;
        }
        let s = &self.pool.inner.slots[self.slot];
        let mut live = s.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.as_ref().is_some_and(|l| l.id == self.id) {
            *live = None;
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.conn {
            Link::Node(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.conn {
            Link::Node(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Link::Node(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}
