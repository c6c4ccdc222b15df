//! Redis implementation of the stores: every multi-step operation is a Lua script run with
//! EVALSHA (loaded once), and batch work is one pipeline, so each hot-path step costs one round
//! trip.

use std::sync::Arc;
use std::time::Duration;

use ::redis::{RedisError, Script, Value};
use async_trait::async_trait;

use futures_util::future::try_join_all;

use super::keys::{Keyspace, Prefix};
use super::pool::{self, Conn, Pool};
use super::target::{self, RedisTarget};
use super::*;

/// Bound on any single Redis call, so an outage fails fast instead of stalling handlers.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

struct Scripts {
    acquire: Script,
    refresh: Script,
    release: Script,
    retire: Script,
    confirm: Script,
    sweep: Script,
    claim_notices: Script,
    device_heartbeat: Script,
    take_queued: Script,
    token_refresh: Script,
    drop_if_equal: Script,
    push_error: Script,
}

/// Both stores on one connection pool that follows the primary (or on the cluster).
pub struct RedisStore {
    pool: Pool,
    target: Arc<RedisTarget>,
    scripts: Scripts,
    /// One primary's names, or hash-tagged shards on a Redis Cluster (`store::keys`).
    keys: Keyspace,
    /// Per shard, the `presence:sweep-tick` this replica's last sweep wrote: a stored tick older
    /// than it means Redis came back with older data (see sweep.lua).
    last_tick: Box<[std::sync::atomic::AtomicI64]>,
}

/// What became of one attempt.
enum Attempt<T> {
    Done(StoreResult<T>),
    /// The node said it is not the primary: nothing ran, so one retry on a new connection is
    /// safe (the Lua scripts are refused before any write).
    NotPrimary(RedisError),
}

impl RedisStore {
    /// A store on one Redis URL (tests, tools).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::from_config(&crate::config::RedisConfig::Url { url: url.into() })
    }

    /// A store on any Redis deployment the configuration can name (tests, tools).
    pub fn from_config(cfg: &crate::config::RedisConfig) -> Result<Self, StoreError> {
        Self::with_target(Arc::new(RedisTarget::new(cfg)?))
    }

    /// Builds the shared connections (made lazily, so a Redis that is down at start-up does
    /// not stop the gateway from starting; readiness reports it).
    pub fn with_target(target: Arc<RedisTarget>) -> Result<Self, StoreError> {
        let pool = pool::pool(target.clone(), pool::SHARED);
        let keys = target.keyspace();
        Ok(RedisStore {
            pool,
            target,
            keys,
            scripts: Scripts {
                acquire: Script::new(include_str!("lua/acquire.lua")),
                refresh: Script::new(include_str!("lua/refresh.lua")),
                release: Script::new(concat!(
                    include_str!("lua/announced_since.lua"),
                    include_str!("lua/release.lua")
                )),
                retire: Script::new(concat!(
                    include_str!("lua/announced_since.lua"),
                    include_str!("lua/retire.lua")
                )),
                confirm: Script::new(include_str!("lua/confirm.lua")),
                sweep: Script::new(include_str!("lua/sweep.lua")),
                claim_notices: Script::new(include_str!("lua/claim_notices.lua")),
                device_heartbeat: Script::new(include_str!("lua/device_heartbeat.lua")),
                take_queued: Script::new(include_str!("lua/take_queued.lua")),
                token_refresh: Script::new(include_str!("lua/token_refresh.lua")),
                drop_if_equal: Script::new(include_str!("lua/drop_if_equal.lua")),
                push_error: Script::new(include_str!("lua/push_error.lua")),
            },
            last_tick: keys
                .shards()
                .map(|_| std::sync::atomic::AtomicI64::new(0))
                .collect(),
        })
    }

    /// How this store names its keys.
    pub fn keyspace(&self) -> Keyspace {
        self.keys
    }

    /// The prefix of `device`'s keys.
    fn of(&self, device: &str) -> Prefix {
        self.keys.of(device)
    }

    /// KEYS 1–7 of acquire.lua and refresh.lua (1–6 of release.lua): the device's epoch, lease,
    /// its shard's deadlines, its status, then the offline notice, the shard's due-time set and
    /// the fired marker.
    fn lease_and_notice_keys(&self, device: &str) -> [String; 7] {
        let p = self.of(device);
        [
            p.epoch(device),
            p.lease(device),
            p.deadlines(),
            p.status(device),
            p.offline_notice(device),
            p.notices_due(),
            p.fired_offline(device),
        ]
    }

    /// Indices of `devices` grouped so each group's keys share one hash slot: one group in a
    /// single keyspace, one per shard in a sharded one (a cluster refuses a pipeline that
    /// crosses slots).
    fn by_shard<'a>(&self, devices: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
        let mut groups: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        for (i, d) in devices.enumerate() {
            groups.entry(self.keys.shard(d)).or_default().push(i);
        }
        groups.into_values().collect()
    }

    /// One pipeline per group (see [`Self::by_shard`]), run concurrently; the replies in the
    /// order of the `n` inputs.
    async fn grouped<T, F>(
        &self,
        groups: Vec<Vec<usize>>,
        n: usize,
        build: F,
    ) -> StoreResult<Vec<T>>
    where
        T: ::redis::FromRedisValue,
        F: Fn(&[usize]) -> ::redis::Pipeline,
    {
        let replies = try_join_all(groups.iter().map(|g| {
            let p = build(g);
            async move { self.pipeline::<Vec<T>>(&p).await }
        }))
        .await?;
        let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
        for (g, reply) in groups.iter().zip(replies) {
            if reply.len() != g.len() {
                return Err(StoreError::Reply(format!(
                    "{} replies to {} commands",
                    reply.len(),
                    g.len()
                )));
            }
            for (i, v) in g.iter().zip(reply) {
                out[*i] = Some(v);
            }
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| StoreError::Reply("a reply is missing".into())))
            .collect()
    }

    /// Commands on keys of any slots (the middleware's): one pipeline on one primary, each on
    /// its own (concurrently) on a cluster.
    async fn spread(&self, cmds: Vec<::redis::Cmd>) -> StoreResult<Vec<Value>> {
        match self.keys {
            Keyspace::Single => {
                let mut p = ::redis::pipe();
                for c in cmds {
                    p.add_command(c);
                }
                self.pipeline(&p).await
            }
            Keyspace::Sharded => try_join_all(cmds.iter().map(|c| self.query::<Value>(c))).await,
        }
    }

    /// The pool, shared with the impression outbox.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    async fn conn(&self) -> StoreResult<Conn> {
        self.pool.get().await
    }

    /// Classifies one attempt's outcome, dropping the connection when it must not be reused.
    fn settle<T>(
        &self,
        c: Conn,
        r: Result<::redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Attempt<T> {
        match r {
            Ok(Ok(v)) => Attempt::Done(Ok(v)),
            Ok(Err(e)) if target::is_not_primary(&e) => {
                c.discard();
                self.target.primary_lost();
                Attempt::NotPrimary(e)
            }
            Ok(Err(e)) => {
                if target::is_broken(&e) {
                    c.discard();
                }
                Attempt::Done(Err(e.into()))
            }
            Err(_) => {
                // A connection that hung (a stalled or vanished node) is not trusted again.
                c.discard();
                Attempt::Done(Err(StoreError::Timeout))
            }
        }
    }

    /// Runs a script invocation with the op timeout (EVALSHA, loading the script on NOSCRIPT).
    async fn run<T: ::redis::FromRedisValue>(
        &self,
        inv: ::redis::ScriptInvocation<'_>,
    ) -> StoreResult<T> {
        let mut last = None;
        for _ in 0..2 {
            let mut c = self.conn().await?;
            let watch = c.watch();
            let r = tokio::time::timeout(OP_TIMEOUT, inv.invoke_async(&mut c)).await;
            watch.done();
            match self.settle(c, r) {
                Attempt::Done(v) => return v,
                Attempt::NotPrimary(e) => last = Some(e),
            }
        }
        Err(not_primary_twice(last))
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> StoreResult<T> {
        let mut last = None;
        for _ in 0..2 {
            let mut c = self.conn().await?;
            let watch = c.watch();
            let r = tokio::time::timeout(OP_TIMEOUT, cmd.query_async(&mut c)).await;
            watch.done();
            match self.settle(c, r) {
                Attempt::Done(v) => return v,
                Attempt::NotPrimary(e) => last = Some(e),
            }
        }
        Err(not_primary_twice(last))
    }

    /// Pipelines are not retried on `READONLY`: a pipeline is not atomic, so an earlier read
    /// in it may have run. The next call gets a connection to the current primary.
    async fn pipeline<T: ::redis::FromRedisValue>(&self, p: &::redis::Pipeline) -> StoreResult<T> {
        let mut c = self.conn().await?;
        let watch = c.watch();
        let r = tokio::time::timeout(OP_TIMEOUT, p.query_async(&mut c)).await;
        watch.done();
        match self.settle(c, r) {
            Attempt::Done(v) => v,
            Attempt::NotPrimary(e) => Err(e.into()),
        }
    }
}

/// One Redis call under [`OP_TIMEOUT`] (shared with the outbox).
pub(super) async fn timed<T>(
    f: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::Timeout),
    }
}

/// Both attempts met a node that was no longer the primary.
fn not_primary_twice(last: Option<RedisError>) -> StoreError {
    match last {
        Some(e) => e.into(),
        None => StoreError::Reply("no attempt was made".into()),
    }
}

fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

#[async_trait]
impl PresenceStore for RedisStore {
    async fn acquire(
        &self,
        device: &str,
        org: &str,
        replica: &str,
        sid: &str,
        ttl_ms: u64,
    ) -> StoreResult<Acquired> {
        let mut inv = self.scripts.acquire.prepare_invoke();
        for k in self.lease_and_notice_keys(device) {
            inv.key(k);
        }
        inv.arg(device)
            .arg(replica)
            .arg(sid)
            .arg(org)
            .arg(ttl_ms)
            .arg(STATUS_ONLINE_TTL_S);
        let (epoch, prev, fired): (String, String, i64) = self.run(inv).await?;
        let epoch = epoch
            .parse()
            .map_err(|_| StoreError::Reply(format!("bad epoch {epoch}")))?;
        let previous = if prev.is_empty() {
            None
        } else {
            serde_json::from_str::<Lease>(&prev).ok()
        };
        Ok(Acquired {
            epoch,
            came_online: prev.is_empty(),
            previous,
            offline_notice_fired: fired == 1,
        })
    }

    async fn refresh(
        &self,
        replica: &str,
        leases: &[LiveLease],
        ttl_ms: u64,
    ) -> StoreResult<Vec<RefreshOutcome>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let build = |group: &[usize]| {
            let mut p = ::redis::pipe();
            for l in group.iter().map(|i| &leases[*i]) {
                p.cmd("EVALSHA").arg(self.scripts.refresh.get_hash()).arg(7);
                for k in self.lease_and_notice_keys(&l.device_id) {
                    p.arg(k);
                }
                p.arg(&l.device_id)
                    .arg(l.epoch.to_string())
                    .arg(replica)
                    .arg(&l.sid)
                    .arg(&l.org)
                    .arg(ttl_ms)
                    .arg(STATUS_ONLINE_TTL_S)
                    .arg(if l.pending { "1" } else { "0" });
            }
            p
        };
        let groups = || self.by_shard(leases.iter().map(|l| l.device_id.as_str()));
        let res: StoreResult<Vec<i64>> = self.grouped(groups(), leases.len(), build).await;
        let codes = match res {
            Err(e) if e.is_no_script() => {
                // Redis restarted (or a replica was promoted) and lost its script cache: load
                // once (on every primary of a cluster) and replay.
                let mut c = self.conn().await?;
                timed(self.scripts.refresh.load_async(&mut c)).await?;
                drop(c);
                self.grouped(groups(), leases.len(), build).await?
            }
            other => other?,
        };
        Ok(codes
            .into_iter()
            .map(|c| match c {
                1 => RefreshOutcome::Fresh,
                2 => RefreshOutcome::Restored,
                3 => RefreshOutcome::Revived {
                    notice_fired: false,
                },
                4 => RefreshOutcome::Revived { notice_fired: true },
                _ => RefreshOutcome::Stale,
            })
            .collect())
    }

    async fn confirm(&self, device: &str, sid: &str) -> StoreResult<()> {
        let mut inv = self.scripts.confirm.prepare_invoke();
        inv.key(self.of(device).lease(device)).arg(sid);
        self.run::<i64>(inv).await.map(|_| ())
    }

    async fn release(
        &self,
        device: &str,
        org: &str,
        epoch: u64,
        notify_delay_ms: u64,
    ) -> StoreResult<Released> {
        let mut inv = self.scripts.release.prepare_invoke();
        for k in self.lease_and_notice_keys(device).into_iter().take(6) {
            inv.key(k);
        }
        inv.arg(device)
            .arg(epoch.to_string())
            .arg(org)
            .arg(STATUS_OFFLINE_TTL_S)
            .arg(notify_delay_ms);
        let r: i64 = self.run(inv).await?;
        Ok(match r {
            1 => Released::Offline,
            2 => Released::AlreadyAnnounced,
            _ => Released::Nothing,
        })
    }

    async fn retire(
        &self,
        device: &str,
        org: &str,
        epoch: u64,
        replica: &str,
    ) -> StoreResult<Released> {
        let mut inv = self.scripts.retire.prepare_invoke();
        for k in self.lease_and_notice_keys(device).into_iter().take(4) {
            inv.key(k);
        }
        inv.arg(device).arg(epoch.to_string()).arg(org).arg(replica);
        let r: i64 = self.run(inv).await?;
        Ok(match r {
            2 => Released::AlreadyAnnounced,
            3 => Released::LeftToSweep,
            _ => Released::Nothing,
        })
    }

    /// Every shard is swept (concurrently on a cluster), each with its own stall guard and up to
    /// `limit` leases.
    async fn sweep(
        &self,
        limit: usize,
        notify_delay_ms: u64,
        guard: SweepGuard,
    ) -> StoreResult<Vec<Expired>> {
        let shards = self.keys.shards();
        let swept = try_join_all(
            shards.map(|shard| self.sweep_shard(shard, limit, notify_delay_ms, guard)),
        )
        .await?;
        Ok(swept.into_iter().flatten().collect())
    }

    async fn online(&self, devices: &[String]) -> StoreResult<Vec<bool>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.by_shard(devices.iter().map(String::as_str));
        let r: Vec<i64> = self
            .grouped(groups, devices.len(), |g| {
                let mut p = ::redis::pipe();
                for d in g.iter().map(|i| &devices[*i]) {
                    p.cmd("EXISTS").arg(self.of(d).lease(d));
                }
                p
            })
            .await?;
        Ok(r.into_iter().map(|x| x == 1).collect())
    }

    async fn lease(&self, device: &str) -> StoreResult<Option<Lease>> {
        let raw: Option<String> = self
            .query(::redis::cmd("GET").arg(self.of(device).lease(device)))
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    async fn try_lock(&self, name: &str, owner: &str, ttl_ms: u64) -> StoreResult<bool> {
        let r: Option<String> = self
            .query(
                ::redis::cmd("SET")
                    .arg(format!("lock:{name}"))
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms.max(1)),
            )
            .await?;
        Ok(r.is_some())
    }

    async fn schedule_offline_notice(&self, n: &OfflineNotice) -> StoreResult<()> {
        let json = serde_json::to_string(n)?;
        // The key outlives the due time so a notice whose claim failed can still be found.
        let ttl_ms = (n.scheduled_for - now_ms()).max(0) + 300_000;
        let p = self.of(&n.device_id);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(p.offline_notice(&n.device_id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(p.notices_due())
            .arg(n.scheduled_for)
            .arg(&n.device_id)
            .ignore();
        self.pipeline::<()>(&pipe).await
    }

    /// Every shard's due notices (concurrently on a cluster), up to `limit` from each.
    async fn claim_due_notices(&self, limit: usize) -> StoreResult<Vec<OfflineNotice>> {
        let claimed = try_join_all(self.keys.shards().map(|shard| {
            let p = self.keys.prefix(shard);
            let mut inv = self.scripts.claim_notices.prepare_invoke();
            inv.key(p.notices_due())
                .arg(limit)
                .arg(FIRED_MARKER_TTL_S)
                .arg(p.as_str());
            async move { self.run::<Vec<String>>(inv).await }
        }))
        .await?;
        Ok(claimed
            .iter()
            .flatten()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }
}

impl RedisStore {
    /// One shard's sweep (see sweep.lua).
    async fn sweep_shard(
        &self,
        shard: u16,
        limit: usize,
        notify_delay_ms: u64,
        guard: SweepGuard,
    ) -> StoreResult<Vec<Expired>> {
        use std::sync::atomic::Ordering;
        let last_tick = &self.last_tick[usize::from(shard)];
        let p = self.keys.prefix(shard);
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.key(p.deadlines())
            .key(p.notices_due())
            .key(p.sweep_tick())
            .key(p.grace_until())
            .arg(limit)
            .arg(STATUS_OFFLINE_TTL_S)
            .arg(notify_delay_ms)
            .arg(last_tick.load(Ordering::Relaxed))
            .arg(guard.stall_ms)
            .arg(guard.grace_ms)
            .arg(p.as_str());
        let flat: Vec<Value> = self.run(inv).await?;
        let flat: Vec<String> = flat.iter().filter_map(value_string).collect();
        let Some((tick, flat)) = flat.split_first() else {
            return Err(StoreError::Reply("sweep returned no tick".into()));
        };
        if let Ok(tick) = tick.parse::<i64>() {
            last_tick.store(tick, Ordering::Relaxed);
        }
        Ok(flat
            .chunks_exact(3)
            .map(|c| Expired {
                device_id: c[0].clone(),
                epoch: c[1].parse().unwrap_or(0),
                org: c[2].clone(),
            })
            .collect())
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn ping(&self) -> StoreResult<()> {
        let pong: String = self.query(&::redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Reply(format!("unexpected PING reply {pong}")))
        }
    }

    async fn status(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(self.of(device).status(device)))
            .await
    }

    async fn statuses(&self, devices: &[String]) -> StoreResult<Vec<Option<String>>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        // One GET per key rather than MGET, one pipeline per shard: the keys of a batch sit on
        // different hash slots in a cluster.
        let groups = self.by_shard(devices.iter().map(String::as_str));
        self.grouped(groups, devices.len(), |g| {
            let mut p = ::redis::pipe();
            for d in g.iter().map(|i| &devices[*i]) {
                p.cmd("GET").arg(self.of(d).status(d));
            }
            p
        })
        .await
    }

    async fn enqueue_command(
        &self,
        device: &str,
        command_json: &str,
        max: usize,
        ttl_ms: u64,
    ) -> StoreResult<()> {
        let key = self.of(device).commands(device);
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("RPUSH")
            .arg(&key)
            .arg(command_json)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(-(max as i64))
            .arg(-1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore();
        self.pipeline::<()>(&p).await
    }

    async fn put_screenshot_request(
        &self,
        device: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> StoreResult<()> {
        self.query(
            ::redis::cmd("SET")
                .arg(self.of(device).screenshot(device, request_id))
                .arg("1")
                .arg("PX")
                .arg(ttl_ms),
        )
        .await
    }

    async fn take_screenshot_request(&self, device: &str, request_id: &str) -> StoreResult<bool> {
        let n: i64 = self
            .query(::redis::cmd("DEL").arg(self.of(device).screenshot(device, request_id)))
            .await?;
        Ok(n == 1)
    }

    async fn cached_playlist(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(self.of(device).playlist(device)))
            .await
    }

    async fn cache_playlist(&self, device: &str, json: &str) -> StoreResult<()> {
        self.query(
            ::redis::cmd("SET")
                .arg(self.of(device).playlist(device))
                .arg(json)
                .arg("EX")
                .arg(PLAYLIST_CACHE_TTL_S),
        )
        .await
    }

    async fn invalidate_playlist(&self, device: &str) -> StoreResult<()> {
        self.query(::redis::cmd("DEL").arg(self.of(device).playlist(device)))
            .await
    }

    async fn count_impression(&self, device: &str, date: &str) -> StoreResult<()> {
        let key = self.of(device).impressions(device, date);
        let mut p = ::redis::pipe();
        p.cmd("INCR")
            .arg(&key)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(STATS_TTL_S)
            .ignore();
        self.pipeline::<()>(&p).await
    }

    async fn push_content_error(&self, device: &str, entry_json: &str) -> StoreResult<()> {
        let mut inv = self.scripts.push_error.prepare_invoke();
        inv.key(self.of(device).errors(device))
            .arg(entry_json)
            .arg(ERRORS_TTL_S)
            .arg(ERRORS_MAX);
        self.run::<i64>(inv).await.map(|_| ())
    }

    async fn content_errors(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(self.of(device).errors(device)))
            .await
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        let n: i64 = self
            .query(::redis::cmd("EXISTS").arg(format!("revoked_token:{jti}")))
            .await?;
        Ok(n == 1)
    }

    async fn device_heartbeat(&self, hb: &HeartbeatWrite<'_>) -> StoreResult<HeartbeatFound> {
        let d = hb.device;
        let p = self.of(d);
        let mut inv = self.scripts.device_heartbeat.prepare_invoke();
        inv.key(p.status(d))
            .key(p.latest(d))
            .key(p.commands(d))
            .key(p.lease(d))
            .key(p.token_marker(d))
            .key(p.pending_playlist(d))
            .key(p.delivery_ack(d))
            .key(p.epoch(d))
            .key(p.token_cooldown(d))
            .arg(hb.status_json)
            .arg(STATUS_ONLINE_TTL_S)
            .arg(hb.latest_json)
            .arg(LATEST_TTL_S)
            .arg(hb.sid)
            .arg(hb.bound.unwrap_or("-"))
            .arg(if hb.take_pending_playlist { "1" } else { "0" })
            .arg(if hb.delivery_ack {
                DELIVERY_ACK_TTL_S.to_string()
            } else {
                String::new()
            })
            .arg(hb.epoch.to_string())
            .arg(if hb.refresh_due { "1" } else { "0" });
        let (code, cmds, pending, held): (i64, Vec<String>, String, i64) = self.run(inv).await?;
        let outcome = match code {
            1 => HeartbeatOutcome::Live(cmds),
            2 => HeartbeatOutcome::Stale,
            _ => HeartbeatOutcome::Superseded,
        };
        Ok(HeartbeatFound {
            outcome,
            pending_playlist: (!pending.is_empty()).then_some(pending),
            refresh_cooldown: held == 1,
        })
    }

    async fn take_queued(&self, t: &TakeQueued<'_>) -> StoreResult<Queued> {
        let (d, keys) = (t.device, self.of(t.device));
        let mut inv = self.scripts.take_queued.prepare_invoke();
        inv.key(keys.commands(d))
            .key(keys.pending_playlist(d))
            .key(keys.delivery_ack(d))
            .key(keys.lease(d))
            .key(keys.epoch(d))
            .arg(t.epoch.to_string())
            .arg(if t.playlist { "1" } else { "0" })
            .arg(t.ack_sid.unwrap_or(""))
            .arg(DELIVERY_ACK_TTL_S);
        let (commands, playlist): (Vec<String>, String) = self.run(inv).await?;
        Ok(Queued {
            commands,
            playlist: (!playlist.is_empty()).then_some(playlist),
        })
    }

    async fn lease_and_ack(&self, device: &str) -> StoreResult<(Option<Lease>, bool)> {
        let keys = self.of(device);
        let mut p = ::redis::pipe();
        p.cmd("GET")
            .arg(keys.lease(device))
            .cmd("GET")
            .arg(keys.delivery_ack(device));
        let (lease, ack): (Option<String>, Option<String>) = self.pipeline(&p).await?;
        let lease: Option<Lease> = lease.and_then(|r| serde_json::from_str(&r).ok());
        let acked = matches!((&lease, &ack), (Some(l), Some(a)) if &l.sid == a);
        Ok((lease, acked))
    }

    async fn set_pending_playlist(&self, device: &str, json: &str, ttl_s: u64) -> StoreResult<()> {
        self.query(
            ::redis::cmd("SET")
                .arg(self.of(device).pending_playlist(device))
                .arg(json)
                .arg("EX")
                .arg(ttl_s.max(1)),
        )
        .await
    }

    async fn claim_token_refresh(
        &self,
        device: &str,
        grace_json: &str,
        grace_ttl_s: u64,
        cooldown_s: u64,
    ) -> StoreResult<bool> {
        let mut inv = self.scripts.token_refresh.prepare_invoke();
        let p = self.of(device);
        inv.key(p.token_cooldown(device))
            .key(p.token_grace(device))
            .arg(cooldown_s.max(1))
            .arg(grace_json)
            .arg(grace_ttl_s.max(1));
        let won: i64 = self.run(inv).await?;
        Ok(won == 1)
    }

    async fn token_grace(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(self.of(device).token_grace(device)))
            .await
    }

    async fn token_marker(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(self.of(device).token_marker(device)))
            .await
    }

    async fn drop_token_grace(
        &self,
        device: &str,
        grace_json: &str,
        release_cooldown: bool,
    ) -> StoreResult<()> {
        let mut inv = self.scripts.drop_if_equal.prepare_invoke();
        let p = self.of(device);
        inv.key(p.token_grace(device)).arg(grace_json);
        self.run::<i64>(inv).await?;
        if release_cooldown {
            self.query::<i64>(::redis::cmd("DEL").arg(p.token_cooldown(device)))
                .await?;
        }
        Ok(())
    }

    async fn set_token_marker(
        &self,
        device: &str,
        value: Option<&str>,
        ttl_s: u64,
        only_if_present: bool,
    ) -> StoreResult<()> {
        let key = self.of(device).token_marker(device);
        match value {
            None => self.query(::redis::cmd("DEL").arg(key)).await,
            Some(v) => {
                let mut c = ::redis::cmd("SET");
                c.arg(key).arg(v);
                if only_if_present {
                    c.arg("XX").arg("KEEPTTL");
                } else {
                    c.arg("EX").arg(ttl_s.max(1));
                }
                self.query::<Option<String>>(&c).await.map(|_| ())
            }
        }
    }

    async fn session_marks(
        &self,
        jti: Option<&str>,
        users: &[String],
    ) -> StoreResult<(bool, Vec<SessionMarks>)> {
        if jti.is_none() && users.is_empty() {
            return Ok((false, Vec::new()));
        }
        // The middleware's keys, by their names: any slot on a cluster.
        let mut cmds = vec![::redis::cmd("EXISTS")];
        cmds[0].arg(format!("revoked_token:{}", jti.unwrap_or("")));
        for u in users {
            let mut revoked = ::redis::cmd("EXISTS");
            revoked.arg(format!("user_revoked:{u}"));
            let mut changed = ::redis::cmd("GET");
            changed.arg(format!("pwd_changed:{u}"));
            cmds.extend([revoked, changed]);
        }
        let raw: Vec<Value> = self.spread(cmds).await?;
        let int = |v: Option<&Value>| v.and_then(value_string).and_then(|s| s.parse::<i64>().ok());
        let jti_revoked = jti.is_some() && int(raw.first()) == Some(1);
        let marks = (0..users.len())
            .map(|i| SessionMarks {
                revoked: int(raw.get(1 + 2 * i)) == Some(1),
                // The middleware writes epoch seconds; tolerate a fractional or ms value.
                pwd_changed: raw
                    .get(2 + 2 * i)
                    .and_then(value_string)
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .map(|v| {
                        if v > 1e11 {
                            (v / 1000.0) as i64
                        } else {
                            v as i64
                        }
                    }),
            })
            .collect();
        Ok((jti_revoked, marks))
    }

    async fn suspended_orgs(&self) -> StoreResult<Vec<String>> {
        self.query(::redis::cmd("SMEMBERS").arg(SUSPENDED_ORGS_KEY))
            .await
    }

    async fn set_suspended(&self, org: &str, suspended: bool) -> StoreResult<()> {
        let cmd = if suspended { "SADD" } else { "SREM" };
        self.query::<i64>(::redis::cmd(cmd).arg(SUSPENDED_ORGS_KEY).arg(org))
            .await
            .map(|_| ())
    }

    async fn exchange_load(
        &self,
        replica: &str,
        record: &str,
    ) -> StoreResult<Vec<(String, String)>> {
        let mut p = ::redis::pipe();
        p.cmd("HSET")
            .arg(REPLICAS_LOAD_KEY)
            .arg(replica)
            .arg(record)
            .ignore()
            .cmd("HGETALL")
            .arg(REPLICAS_LOAD_KEY);
        let (all,): (std::collections::HashMap<String, String>,) = self.pipeline(&p).await?;
        Ok(all.into_iter().collect())
    }

    async fn forget_loads(&self, replicas: &[String]) -> StoreResult<()> {
        if replicas.is_empty() {
            return Ok(());
        }
        self.query::<i64>(::redis::cmd("HDEL").arg(REPLICAS_LOAD_KEY).arg(replicas))
            .await
            .map(|_| ())
    }
}
