//! The stores' connection pool: deadpool over connections made through a [`RedisTarget`], so a
//! new connection always goes to the current primary (Sentinel lookup or a fresh resolution of
//! the managed endpoint).
//!
//! deadpool-redis's own managers were not enough: its plain manager cannot follow Sentinel, and
//! both keep a connection as long as it answers PING, which a primary demoted to replica still
//! does. Here the per-checkout check is `ROLE` (the same one round trip as PING), and
//! connections made before [`RedisTarget::primary_lost`] are retired.

use std::sync::Arc;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::target::RedisTarget;

pub struct Manager {
    target: Arc<RedisTarget>,
}

/// A connection and the target generation it was made in.
pub struct PooledConn {
    conn: MultiplexedConnection,
    generation: u64,
}

impl managed::Manager for Manager {
    type Type = PooledConn;
    type Error = RedisError;

    async fn create(&self) -> Result<PooledConn, RedisError> {
        let generation = self.target.generation();
        let conn = self.target.connect(AsyncConnectionConfig::new()).await?;
        Ok(PooledConn { conn, generation })
    }

    async fn recycle(&self, c: &mut PooledConn, _: &Metrics) -> RecycleResult<RedisError> {
        if c.generation != self.target.generation() {
            return Err(RecycleError::message("made before a failover"));
        }
        if RedisTarget::is_primary(&mut c.conn).await? {
            Ok(())
        } else {
            self.target.primary_lost();
            Err(RecycleError::message("the node is a replica now"))
        }
    }
}

pub type Pool = managed::Pool<Manager>;

pub fn pool(target: Arc<RedisTarget>, max_size: usize) -> Result<Pool, managed::BuildError> {
    let mut cfg = deadpool::managed::PoolConfig::new(max_size);
    cfg.timeouts.wait = Some(super::target::CONNECT_TIMEOUT);
    cfg.timeouts.create = Some(super::target::CONNECT_TIMEOUT * 2);
    cfg.timeouts.recycle = Some(super::target::CONNECT_TIMEOUT);
    managed::Pool::builder(Manager { target })
        .config(cfg)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
}

/// A checked-out connection.
pub struct Conn(pub Object<Manager>);

impl Conn {
    /// Drops the connection instead of returning it to the pool.
    pub fn discard(self) {
        drop(Object::take(self.0));
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.conn.get_db()
    }
}
