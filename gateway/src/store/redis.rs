//! Redis implementation of the stores: every multi-step operation is a Lua script run with
//! EVALSHA (loaded once), and batch work is one pipeline, so each hot-path step costs one round
//! trip.

use std::sync::Arc;
use std::time::Duration;

use ::redis::{RedisError, Script, Value};
use async_trait::async_trait;

use super::pool::{self, Conn, Pool};
use super::target::{self, RedisTarget};
use super::*;

/// Bound on any single Redis call, so an outage fails fast instead of stalling handlers.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

struct Scripts {
    acquire: Script,
    refresh: Script,
    release: Script,
    confirm: Script,
    sweep: Script,
    claim_notices: Script,
    device_heartbeat: Script,
    token_refresh: Script,
    drop_if_equal: Script,
    push_error: Script,
}

/// Both stores on one connection pool that follows the primary.
pub struct RedisStore {
    pool: Pool,
    target: Arc<RedisTarget>,
    scripts: Scripts,
    /// The `presence:sweep-tick` this replica's last sweep wrote: a stored tick older than it
    /// means Redis came back with older data (see sweep.lua).
    last_tick: std::sync::atomic::AtomicI64,
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
        let cfg = crate::config::RedisConfig::Url { url: url.into() };
        let target = RedisTarget::new(&cfg)?;
        Self::with_target(Arc::new(target))
    }

    /// Builds the shared connections (made lazily, so a Redis that is down at start-up does
    /// not stop the gateway from starting; readiness reports it).
    pub fn with_target(target: Arc<RedisTarget>) -> Result<Self, StoreError> {
        let pool = pool::pool(target.clone(), pool::SHARED);
        Ok(RedisStore {
            pool,
            target,
            scripts: Scripts {
                acquire: Script::new(include_str!("lua/acquire.lua")),
                refresh: Script::new(include_str!("lua/refresh.lua")),
                release: Script::new(include_str!("lua/release.lua")),
                confirm: Script::new(include_str!("lua/confirm.lua")),
                sweep: Script::new(include_str!("lua/sweep.lua")),
                claim_notices: Script::new(include_str!("lua/claim_notices.lua")),
                device_heartbeat: Script::new(include_str!("lua/device_heartbeat.lua")),
                token_refresh: Script::new(include_str!("lua/token_refresh.lua")),
                drop_if_equal: Script::new(include_str!("lua/drop_if_equal.lua")),
                push_error: Script::new(include_str!("lua/push_error.lua")),
            },
            last_tick: std::sync::atomic::AtomicI64::new(0),
        })
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
            let r = tokio::time::timeout(OP_TIMEOUT, inv.invoke_async(&mut c)).await;
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
            let r = tokio::time::timeout(OP_TIMEOUT, cmd.query_async(&mut c)).await;
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
        let r = tokio::time::timeout(OP_TIMEOUT, p.query_async(&mut c)).await;
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

fn lease_keys(device: &str) -> [String; 4] {
    [
        format!("device:epoch:{device}"),
        format!("device:lease:{device}"),
        "presence:deadlines".to_string(),
        status_key(device),
    ]
}

/// KEYS 1–6 of acquire.lua, refresh.lua and release.lua: the lease keys, then the offline
/// notice and its due-time set.
fn lease_and_notice_keys(device: &str) -> impl Iterator<Item = String> {
    lease_keys(device)
        .into_iter()
        .chain([format!("notify:offline:{device}"), "notify:due".to_string()])
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
        for k in lease_and_notice_keys(device) {
            inv.key(k);
        }
        inv.key(format!("notify:fired-offline:{device}"))
            .arg(device)
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
        let build = || {
            let mut p = ::redis::pipe();
            for l in leases {
                p.cmd("EVALSHA").arg(self.scripts.refresh.get_hash()).arg(7);
                for k in lease_and_notice_keys(&l.device_id) {
                    p.arg(k);
                }
                p.arg(format!("notify:fired-offline:{}", l.device_id));
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
        let res: StoreResult<Vec<i64>> = self.pipeline(&build()).await;
        let codes = match res {
            Err(e) if e.is_no_script() => {
                // Redis restarted and lost its script cache: load once and replay the pipeline.
                let mut c = self.conn().await?;
                timed(self.scripts.refresh.load_async(&mut c)).await?;
                drop(c);
                self.pipeline(&build()).await?
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
        inv.key(format!("device:lease:{device}")).arg(sid);
        self.run::<i64>(inv).await.map(|_| ())
    }

    async fn release(
        &self,
        device: &str,
        org: &str,
        epoch: u64,
        notify_delay_ms: u64,
    ) -> StoreResult<bool> {
        let mut inv = self.scripts.release.prepare_invoke();
        for k in lease_and_notice_keys(device) {
            inv.key(k);
        }
        inv.arg(device)
            .arg(epoch.to_string())
            .arg(org)
            .arg(STATUS_OFFLINE_TTL_S)
            .arg(notify_delay_ms);
        let r: i64 = self.run(inv).await?;
        Ok(r == 1)
    }

    async fn sweep(
        &self,
        limit: usize,
        notify_delay_ms: u64,
        guard: SweepGuard,
    ) -> StoreResult<Vec<Expired>> {
        use std::sync::atomic::Ordering;
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.key("presence:deadlines")
            .key("notify:due")
            .key("presence:sweep-tick")
            .key("presence:grace-until")
            .arg(limit)
            .arg(STATUS_OFFLINE_TTL_S)
            .arg(notify_delay_ms)
            .arg(self.last_tick.load(Ordering::Relaxed))
            .arg(guard.stall_ms)
            .arg(guard.grace_ms);
        let flat: Vec<Value> = self.run(inv).await?;
        let flat: Vec<String> = flat.iter().filter_map(value_string).collect();
        let Some((tick, flat)) = flat.split_first() else {
            return Err(StoreError::Reply("sweep returned no tick".into()));
        };
        if let Ok(tick) = tick.parse::<i64>() {
            self.last_tick.store(tick, Ordering::Relaxed);
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

    async fn online(&self, devices: &[String]) -> StoreResult<Vec<bool>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = ::redis::pipe();
        for d in devices {
            p.cmd("EXISTS").arg(format!("device:lease:{d}"));
        }
        let r: Vec<i64> = self.pipeline(&p).await?;
        Ok(r.into_iter().map(|x| x == 1).collect())
    }

    async fn lease(&self, device: &str) -> StoreResult<Option<Lease>> {
        let raw: Option<String> = self
            .query(::redis::cmd("GET").arg(format!("device:lease:{device}")))
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
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("SET")
            .arg(format!("notify:offline:{}", n.device_id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg("notify:due")
            .arg(n.scheduled_for)
            .arg(&n.device_id)
            .ignore();
        self.pipeline::<()>(&p).await
    }

    async fn claim_due_notices(&self, limit: usize) -> StoreResult<Vec<OfflineNotice>> {
        let mut inv = self.scripts.claim_notices.prepare_invoke();
        inv.key("notify:due").arg(limit).arg(FIRED_MARKER_TTL_S);
        let raw: Vec<String> = self.run(inv).await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
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
        self.query(::redis::cmd("GET").arg(status_key(device)))
            .await
    }

    async fn statuses(&self, devices: &[String]) -> StoreResult<Vec<Option<String>>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        // One GET per key in a pipeline rather than MGET: keys of a batch may sit on different
        // hash slots once the deployment moves to a sharded Redis.
        let mut p = ::redis::pipe();
        for d in devices {
            p.cmd("GET").arg(status_key(d));
        }
        self.pipeline(&p).await
    }

    async fn enqueue_command(
        &self,
        device: &str,
        command_json: &str,
        max: usize,
        ttl_ms: u64,
    ) -> StoreResult<()> {
        let key = commands_key(device);
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

    async fn drain_commands(&self, device: &str) -> StoreResult<Vec<String>> {
        let key = commands_key(device);
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .cmd("DEL")
            .arg(&key)
            .ignore();
        let (cmds,): (Vec<String>,) = self.pipeline(&p).await?;
        Ok(cmds)
    }

    async fn put_screenshot_request(
        &self,
        device: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> StoreResult<()> {
        self.query(
            ::redis::cmd("SET")
                .arg(screenshot_key(device, request_id))
                .arg("1")
                .arg("PX")
                .arg(ttl_ms),
        )
        .await
    }

    async fn take_screenshot_request(&self, device: &str, request_id: &str) -> StoreResult<bool> {
        let n: i64 = self
            .query(::redis::cmd("DEL").arg(screenshot_key(device, request_id)))
            .await?;
        Ok(n == 1)
    }

    async fn cached_playlist(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(playlist_key(device)))
            .await
    }

    async fn cache_playlist(&self, device: &str, json: &str) -> StoreResult<()> {
        self.query(
            ::redis::cmd("SET")
                .arg(playlist_key(device))
                .arg(json)
                .arg("EX")
                .arg(PLAYLIST_CACHE_TTL_S),
        )
        .await
    }

    async fn invalidate_playlist(&self, device: &str) -> StoreResult<()> {
        self.query(::redis::cmd("DEL").arg(playlist_key(device)))
            .await
    }

    async fn count_impression(&self, device: &str, date: &str) -> StoreResult<()> {
        let key = format!("stats:device:{device}:impressions:{date}");
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
        inv.key(format!("errors:device:{device}"))
            .arg(entry_json)
            .arg(ERRORS_TTL_S)
            .arg(ERRORS_MAX);
        self.run::<i64>(inv).await.map(|_| ())
    }

    async fn content_errors(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(format!("errors:device:{device}")))
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
        let mut inv = self.scripts.device_heartbeat.prepare_invoke();
        inv.key(status_key(d))
            .key(format!("heartbeat:{d}:latest"))
            .key(commands_key(d))
            .key(format!("device:lease:{d}"))
            .key(token_marker_key(d))
            .key(pending_playlist_key(d))
            .key(delivery_ack_key(d))
            .key(format!("device:epoch:{d}"))
            .key(token_cooldown_key(d))
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

    async fn take_pending(
        &self,
        device: &str,
        ack_sid: Option<&str>,
    ) -> StoreResult<(Vec<String>, Option<String>)> {
        let (ck, pk) = (commands_key(device), pending_playlist_key(device));
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("LRANGE")
            .arg(&ck)
            .arg(0)
            .arg(-1)
            .cmd("GET")
            .arg(&pk)
            .cmd("DEL")
            .arg(&ck)
            .arg(&pk)
            .ignore();
        if let Some(sid) = ack_sid {
            p.cmd("SET")
                .arg(delivery_ack_key(device))
                .arg(sid)
                .arg("EX")
                .arg(DELIVERY_ACK_TTL_S)
                .ignore();
        }
        let (cmds, pl): (Vec<String>, Option<String>) = self.pipeline(&p).await?;
        Ok((cmds, pl))
    }

    async fn lease_and_ack(&self, device: &str) -> StoreResult<(Option<Lease>, bool)> {
        let mut p = ::redis::pipe();
        p.cmd("GET")
            .arg(format!("device:lease:{device}"))
            .cmd("GET")
            .arg(delivery_ack_key(device));
        let (lease, ack): (Option<String>, Option<String>) = self.pipeline(&p).await?;
        let lease: Option<Lease> = lease.and_then(|r| serde_json::from_str(&r).ok());
        let acked = matches!((&lease, &ack), (Some(l), Some(a)) if &l.sid == a);
        Ok((lease, acked))
    }

    async fn set_pending_playlist(&self, device: &str, json: &str, ttl_s: u64) -> StoreResult<()> {
        self.query(
            ::redis::cmd("SET")
                .arg(pending_playlist_key(device))
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
        inv.key(token_cooldown_key(device))
            .key(token_grace_key(device))
            .arg(cooldown_s.max(1))
            .arg(grace_json)
            .arg(grace_ttl_s.max(1));
        let won: i64 = self.run(inv).await?;
        Ok(won == 1)
    }

    async fn token_grace(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(token_grace_key(device)))
            .await
    }

    async fn token_marker(&self, device: &str) -> StoreResult<Option<String>> {
        self.query(::redis::cmd("GET").arg(token_marker_key(device)))
            .await
    }

    async fn drop_token_grace(
        &self,
        device: &str,
        grace_json: &str,
        release_cooldown: bool,
    ) -> StoreResult<()> {
        let mut inv = self.scripts.drop_if_equal.prepare_invoke();
        inv.key(token_grace_key(device)).arg(grace_json);
        self.run::<i64>(inv).await?;
        if release_cooldown {
            self.query::<i64>(::redis::cmd("DEL").arg(token_cooldown_key(device)))
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
        let key = token_marker_key(device);
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
        let mut p = ::redis::pipe();
        p.cmd("EXISTS")
            .arg(format!("revoked_token:{}", jti.unwrap_or("")));
        for u in users {
            p.cmd("EXISTS")
                .arg(format!("user_revoked:{u}"))
                .cmd("GET")
                .arg(format!("pwd_changed:{u}"));
        }
        let raw: Vec<Value> = self.pipeline(&p).await?;
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
