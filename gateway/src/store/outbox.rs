//! The impression outbox: proof-of-play rows wait here between the acknowledgement and the
//! database, so neither a database outage nor a replica crash loses an acknowledged impression.
//!
//! In cluster mode it is one Redis stream, `impressions:outbox`, read through the consumer group
//! `writers` with one consumer per replica. An entry stays in the stream (and in its reader's
//! pending list) until its row is committed, then it is acknowledged and deleted. Entries pending
//! for a replica that stopped draining (killed, or stuck) are claimed by another replica once they
//! have been idle for a while. Delivery is therefore at least once; the row id minted at
//! acceptance makes the database write idempotent, so every entry is stored exactly once.

use std::time::Duration;

use super::pool::{Conn, Pool};
use ::redis::Value;
use async_trait::async_trait;
use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use super::redis::timed;
use super::{STATS_TTL_S, StoreError, StoreResult};

pub const OUTBOX_KEY: &str = "impressions:outbox";
pub const OUTBOX_GROUP: &str = "writers";
/// Field of each stream entry holding the row as JSON.
const FIELD: &str = "row";

/// One accepted impression as the outbox keeps it (a stream entry's `row` field, as JSON). The
/// outbox's own type, so the stream's format changes only here; the impression drain turns it
/// into the database's row. The id is minted when the event is accepted, so an entry written
/// twice (a retried batch, two replicas draining it) is stored once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxImpression {
    pub id: String,
    pub organization_id: String,
    pub content_id: String,
    pub device_id: String,
    pub playlist_id: Option<String>,
    pub duration: Option<i64>,
    pub completion_percentage: Option<i64>,
    pub timestamp: NaiveDateTime,
    /// Server-local hour, as the original computes it.
    pub hour: u32,
}

/// An entry handed to one drainer.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    /// The outbox's own id of the entry (what [`ImpressionOutbox::ack`] takes).
    pub entry: String,
    /// The row, or `None` when the entry cannot be read back (never written by this gateway).
    pub row: Option<OutboxImpression>,
}

/// Why the outbox could not take or hand out impressions. Either way nothing was promised:
/// the impression is not acknowledged, so the player sends it again.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The store holding the stream failed (Redis, its pool, a timeout, encoding).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded outbox's own write of the row could not be made (its database did not
    /// answer): worth retrying. A row the database refuses for good is no error: it is dropped
    /// and counted.
    #[error("impression write failed: {0}")]
    Write(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type OutboxResult<T> = Result<T, OutboxError>;

#[async_trait]
pub trait ImpressionOutbox: Send + Sync + 'static {
    /// Makes the impression durable and bumps `stats:device:{id}:impressions:{date}`, in one
    /// round trip. `Ok` means the row will reach the database.
    async fn append(&self, row: &OutboxImpression, date: &str) -> OutboxResult<()>;
    /// Up to `limit` entries for `consumer` to write: first those it already holds and has not
    /// acknowledged (a failed write, or a restart under the same replica id), then those other
    /// consumers have held for longer than `stale` (a dead replica), then new ones in order.
    async fn claim(
        &self,
        consumer: &str,
        limit: usize,
        stale: Duration,
    ) -> OutboxResult<Vec<Claimed>>;
    /// Forgets entries whose rows are committed (or dropped for good).
    async fn ack(&self, entries: &[String]) -> OutboxResult<()>;
    /// Entries not yet acknowledged, cluster-wide.
    async fn backlog(&self) -> OutboxResult<u64>;
    /// Forgets readers that hold nothing and have not read for `idle` (replicas that are gone;
    /// pod names change with every rollout). Returns how many were forgotten.
    async fn forget_idle_readers(&self, idle: Duration) -> OutboxResult<u64>;
}

/// Atomic, so a reader cannot take entries between the check and the removal (which would
/// orphan them): removes consumers of the group with no pending entries, idle longer than
/// ARGV[2] ms.
const FORGET_IDLE: &str = r#"
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if tonumber(f['pending']) == 0 and tonumber(f['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
"#;

/// The Redis stream outbox, on the stores' connection pool.
pub struct RedisOutbox {
    pool: Pool,
}

impl RedisOutbox {
    pub fn new(pool: Pool) -> RedisOutbox {
        RedisOutbox { pool }
    }

    /// One of the stores' shared connections; every outbox command goes through it.
    async fn conn(&self) -> StoreResult<Conn> {
        self.pool.get().await
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> StoreResult<T> {
        let mut c = self.conn().await?;
        timed(cmd.query_async(&mut c)).await
    }

    async fn pipeline<T: ::redis::FromRedisValue>(&self, p: &::redis::Pipeline) -> StoreResult<T> {
        let mut c = self.conn().await?;
        timed(p.query_async(&mut c)).await
    }

    /// Creates the group (and the stream) unless it exists; needed at start and after a Redis
    /// that lost its data.
    async fn ensure_group(&self) -> StoreResult<()> {
        let r: StoreResult<String> = self
            .query(
                ::redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(OUTBOX_KEY)
                    .arg(OUTBOX_GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.redis_code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read_group(&self, consumer: &str, limit: usize, from: &str) -> StoreResult<Value> {
        self.query(
            ::redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(OUTBOX_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(limit)
                .arg("STREAMS")
                .arg(OUTBOX_KEY)
                .arg(from),
        )
        .await
    }

    async fn claim_once(
        &self,
        consumer: &str,
        limit: usize,
        stale: Duration,
    ) -> StoreResult<Vec<Claimed>> {
        let own = entries_of_read(&self.read_group(consumer, limit, "0").await?);
        if !own.is_empty() {
            return Ok(own);
        }
        let auto: Value = self
            .query(
                ::redis::cmd("XAUTOCLAIM")
                    .arg(OUTBOX_KEY)
                    .arg(OUTBOX_GROUP)
                    .arg(consumer)
                    .arg(stale.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        let stolen = match &auto {
            Value::Array(parts) => parts.get(1).map(entries).unwrap_or_default(),
            _ => Vec::new(),
        };
        if !stolen.is_empty() {
            return Ok(stolen);
        }
        Ok(entries_of_read(
            &self.read_group(consumer, limit, ">").await?,
        ))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[[id, [field, value, …]], …]` (entries deleted meanwhile come back as nil and are skipped).
fn entries(v: &Value) -> Vec<Claimed> {
    let Value::Array(list) = v else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let Value::Array(pair) = e else { return None };
            let entry = text(pair.first()?)?;
            let row = match pair.get(1) {
                Some(Value::Array(kv)) => kv
                    .chunks_exact(2)
                    .find(|c| text(&c[0]).as_deref() == Some(FIELD))
                    .and_then(|c| text(&c[1]))
                    .and_then(|j| serde_json::from_str(&j).ok()),
                Some(Value::Map(kv)) => kv
                    .iter()
                    .find(|(k, _)| text(k).as_deref() == Some(FIELD))
                    .and_then(|(_, v)| text(v))
                    .and_then(|j| serde_json::from_str(&j).ok()),
                _ => None,
            };
            Some(Claimed { entry, row })
        })
        .collect()
}

/// XREADGROUP's reply: `[[stream, entries]]` (RESP2) or `{stream: entries}` (RESP3); nil if none.
fn entries_of_read(v: &Value) -> Vec<Claimed> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) => pair.get(1).map(entries),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

#[async_trait]
impl ImpressionOutbox for RedisOutbox {
    async fn append(&self, row: &OutboxImpression, date: &str) -> OutboxResult<()> {
        let json = serde_json::to_string(row).map_err(StoreError::from)?;
        let stats = format!("stats:device:{}:impressions:{date}", row.device_id);
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("XADD")
            .arg(OUTBOX_KEY)
            .arg("*")
            .arg(FIELD)
            .arg(json)
            .ignore()
            .cmd("INCR")
            .arg(&stats)
            .ignore()
            .cmd("EXPIRE")
            .arg(&stats)
            .arg(STATS_TTL_S)
            .ignore();
        Ok(self.pipeline::<()>(&p).await?)
    }

    async fn claim(
        &self,
        consumer: &str,
        limit: usize,
        stale: Duration,
    ) -> OutboxResult<Vec<Claimed>> {
        match self.claim_once(consumer, limit, stale).await {
            Err(e) if e.redis_code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                Ok(self.claim_once(consumer, limit, stale).await?)
            }
            other => Ok(other?),
        }
    }

    async fn ack(&self, ids: &[String]) -> OutboxResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("XACK")
            .arg(OUTBOX_KEY)
            .arg(OUTBOX_GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(OUTBOX_KEY)
            .arg(ids)
            .ignore();
        Ok(self.pipeline::<()>(&p).await?)
    }

    async fn backlog(&self) -> OutboxResult<u64> {
        Ok(self.query(::redis::cmd("XLEN").arg(OUTBOX_KEY)).await?)
    }

    async fn forget_idle_readers(&self, idle: Duration) -> OutboxResult<u64> {
        let script = ::redis::Script::new(FORGET_IDLE);
        let mut inv = script.prepare_invoke();
        inv.key(OUTBOX_KEY)
            .arg(OUTBOX_GROUP)
            .arg(idle.as_millis() as u64);
        let mut c = self.conn().await?;
        Ok(timed(inv.invoke_async(&mut c)).await?)
    }
}
