//! The impression outbox: proof-of-play rows wait here between the acknowledgement and the
//! database, so neither a database outage nor a replica crash loses an acknowledged impression.
//!
//! In cluster mode it is one Redis stream, `impressions:outbox`, read through the consumer group
//! `writers` with one consumer per replica. An entry stays in the stream (and in its reader's
//! pending list) until its row is committed, then it is acknowledged and deleted. Entries pending
//! for a replica that stopped draining (killed, or stuck) are claimed by another replica once they
//! have been idle for a while. Delivery is therefore at least once; the row id minted at
//! acceptance makes the database write idempotent, so every entry is stored exactly once.
//!
//! On a Redis Cluster the stream is sharded like the presence sets (`store::keys`): an
//! impression goes to its device's shard's stream `{vz:NNN}impressions:outbox`, in the same slot
//! as its per-device counter, and the drain covers every shard. An entry's id then names its
//! shard (`NNN/<stream id>`), so an acknowledgement finds its stream.

use std::time::Duration;

use super::keys::Keyspace;
use super::pool::{Conn, Pool};
use ::redis::Value;
use async_trait::async_trait;
use chrono::NaiveDateTime;
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};

use super::redis::timed;
use super::{STATS_TTL_S, StoreError, StoreResult};

pub const OUTBOX_KEY: &str = "impressions:outbox";
pub const OUTBOX_GROUP: &str = "writers";
/// Field of each stream entry holding the row as JSON.
const FIELD: &str = "row";
/// One drain step on one stream (see the script's header).
const CLAIM: &str = include_str!("lua/claim_outbox.lua");

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
    keys: Keyspace,
    /// [`CLAIM`] and [`FORGET_IDLE`], hashed once.
    claim: ::redis::Script,
    forget_idle: ::redis::Script,
}

impl RedisOutbox {
    /// `keys`: the stores' keyspace (one stream, or one per shard on a cluster).
    pub fn new(pool: Pool, keys: Keyspace) -> RedisOutbox {
        RedisOutbox {
            pool,
            keys,
            claim: ::redis::Script::new(CLAIM),
            forget_idle: ::redis::Script::new(FORGET_IDLE),
        }
    }

    /// The stream of `shard`.
    fn stream(&self, shard: u16) -> String {
        self.keys.prefix(shard).outbox()
    }

    /// The outbox id of stream entry `id` of `shard`.
    fn entry_id(&self, shard: u16, id: String) -> String {
        match self.keys {
            Keyspace::Single => id,
            Keyspace::Sharded => format!("{shard:03}/{id}"),
        }
    }

    /// The shard and stream id an outbox id names (`None`: not one of ours).
    fn parse_entry<'a>(&self, entry: &'a str) -> Option<(u16, &'a str)> {
        match self.keys {
            Keyspace::Single => Some((0, entry)),
            Keyspace::Sharded => {
                let (shard, id) = entry.split_once('/')?;
                let shard: u16 = shard.parse().ok()?;
                self.keys.shards().contains(&shard).then_some((shard, id))
            }
        }
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

    /// [`ImpressionOutbox::claim`] on one shard's stream: one script, one round trip
    /// (`lua/claim_outbox.lua`, which also recreates a vanished group).
    async fn claim_shard(
        &self,
        shard: u16,
        consumer: &str,
        limit: usize,
        stale: Duration,
    ) -> StoreResult<Vec<Claimed>> {
        let mut inv = self.claim.prepare_invoke();
        inv.key(self.stream(shard))
            .arg(OUTBOX_GROUP)
            .arg(consumer)
            .arg(limit)
            .arg(stale.as_millis() as u64);
        let mut c = self.conn().await?;
        let claimed: Value = timed(inv.invoke_async(&mut c)).await?;
        Ok(entries(&claimed)
            .into_iter()
            .map(|c| Claimed {
                entry: self.entry_id(shard, c.entry),
                row: c.row,
            })
            .collect())
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

#[async_trait]
impl ImpressionOutbox for RedisOutbox {
    async fn append(&self, row: &OutboxImpression, date: &str) -> OutboxResult<()> {
        let json = serde_json::to_string(row).map_err(StoreError::from)?;
        let keys = self.keys.of(&row.device_id);
        let stats = keys.impressions(&row.device_id, date);
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("XADD")
            .arg(keys.outbox())
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
        // Every shard at once on a cluster; each may hand out up to `limit` (what is not written
        // this round stays pending for this consumer and comes back first next round).
        let claimed = try_join_all(
            self.keys
                .shards()
                .map(|shard| self.claim_shard(shard, consumer, limit, stale)),
        )
        .await?;
        Ok(claimed.into_iter().flatten().collect())
    }

    async fn ack(&self, ids: &[String]) -> OutboxResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut by_shard: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
        for e in ids {
            // An id that names no shard was never handed out by this outbox: nothing to forget.
            if let Some((shard, id)) = self.parse_entry(e) {
                by_shard.entry(shard).or_default().push(id);
            }
        }
        try_join_all(by_shard.into_iter().map(|(shard, ids)| {
            let stream = self.stream(shard);
            let mut p = ::redis::pipe();
            p.atomic()
                .cmd("XACK")
                .arg(&stream)
                .arg(OUTBOX_GROUP)
                .arg(&ids)
                .ignore()
                .cmd("XDEL")
                .arg(&stream)
                .arg(&ids)
                .ignore();
            async move { self.pipeline::<()>(&p).await }
        }))
        .await?;
        Ok(())
    }

    async fn backlog(&self) -> OutboxResult<u64> {
        let lens = try_join_all(self.keys.shards().map(|shard| {
            let mut c = ::redis::cmd("XLEN");
            c.arg(self.stream(shard));
            async move { self.query::<u64>(&c).await }
        }))
        .await?;
        Ok(lens.into_iter().sum())
    }

    async fn forget_idle_readers(&self, idle: Duration) -> OutboxResult<u64> {
        let forgotten = try_join_all(self.keys.shards().map(|shard| {
            let mut inv = self.forget_idle.prepare_invoke();
            inv.key(self.stream(shard))
                .arg(OUTBOX_GROUP)
                .arg(idle.as_millis() as u64);
            async move {
                let mut c = self.conn().await?;
                timed(inv.invoke_async::<u64>(&mut c)).await
            }
        }))
        .await?;
        // A consumer is one replica, named in every shard's group: count it once.
        Ok(forgotten.into_iter().max().unwrap_or(0))
    }
}
