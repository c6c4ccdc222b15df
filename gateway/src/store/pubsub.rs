//! The Socket.IO adapter's pub/sub driver, built to survive Redis restarts.
//!
//! socketioxide-redis's stock driver holds one multiplexed connection that never reconnects, and
//! the adapter publishes before it delivers locally: after a Redis restart every emit failed,
//! even to this replica's own sockets. This driver uses a `ConnectionManager` (reconnects with
//! backoff, resubscribes every channel automatically) and treats publishing as best effort, so an
//! outage degrades to "local delivery only" and heals by itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, PushInfo, PushKind, RedisError};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

#[derive(Clone)]
pub struct ResilientDriver {
    conn: ConnectionManager,
    handlers: Handlers,
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

impl ResilientDriver {
    pub async fn new(client: &redis::Client) -> Result<Self, RedisError> {
        let handlers: Handlers = Arc::default();
        let h = handlers.clone();
        let cfg = ConnectionManagerConfig::new()
            .set_push_sender(move |msg: PushInfo| {
                route(msg, &h);
                Ok::<(), Infallible>(())
            })
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client.clone(), cfg).await?;
        Ok(ResilientDriver { conn, handlers })
    }
}

impl Driver for ResilientDriver {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        // Best effort: an error here would also stop local delivery (the adapter publishes first).
        if let Err(e) = redis::cmd("PUBLISH")
            .arg(chan)
            .arg(val)
            .query_async::<redis::Value>(&mut self.conn.clone())
            .await
        {
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
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        self.conn.clone().subscribe(chan).await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        self.conn.clone().unsubscribe(chan).await
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(count)
    }
}
