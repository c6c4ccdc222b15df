//! Shared ephemeral state behind two small traits, each with a Redis implementation (cluster)
//! and an in-process twin (embedded default) with the same semantics.
//!
//! [`PresenceStore`] holds the lease protocol (epochs, leases, deadlines, offline notices);
//! [`StateStore`] holds everything else that lives in Redis (status JSON, command queues,
//! pending screenshot requests, the playlist cache, stats). Key names are those of the original
//! service (reference §5.2) plus the lease keys.

pub mod keys;
pub mod memory;
pub mod outbox;
pub mod pool;
pub mod pubsub;
pub mod redis;
pub mod target;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// TTL of `device:status:{id}` while online (the original's 60 s).
pub const STATUS_ONLINE_TTL_S: u64 = 60;
/// TTL of `device:status:{id}` once offline (the original's 86400 s).
pub const STATUS_OFFLINE_TTL_S: u64 = 86_400;
/// TTL of `heartbeat:{id}:latest`.
pub const LATEST_TTL_S: u64 = 300;
/// TTL of the `notify:fired-offline:{id}` marker.
pub const FIRED_MARKER_TTL_S: u64 = 86_400;
/// TTL and length of `errors:device:{id}`.
pub const ERRORS_TTL_S: u64 = 3_600;
pub const ERRORS_MAX: usize = 10;
/// TTL of `playlist:{id}`.
pub const PLAYLIST_CACHE_TTL_S: u64 = 3_600;
/// TTL of `stats:device:{id}:impressions:{date}`.
pub const STATS_TTL_S: u64 = 86_400;

/// Why a store call failed. Every variant reads "store unavailable: …" (the text logs and 503
/// bodies have always carried); code that must tell failures apart matches the variant or the
/// Redis error kind, never the message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis answered with an error, or the connection to it failed.
    #[error("store unavailable: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// One Redis operation outlived its bound (a stalled or vanished node).
    #[error("store unavailable: redis operation timed out")]
    Timeout,
    /// Redis answered something the scripts never return.
    #[error("store unavailable: {0}")]
    Reply(String),
    /// A value could not be encoded for Redis.
    #[error("store unavailable: {0}")]
    Encode(#[from] serde_json::Error),
}

impl StoreError {
    /// The kind redis-rs gave the error, when Redis (or the connection to it) produced it.
    pub fn redis_kind(&self) -> Option<::redis::ErrorKind> {
        match self {
            StoreError::Redis(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The server's error code (`NOGROUP`, `BUSYGROUP`, …), also for codes redis-rs has no
    /// kind for.
    pub fn redis_code(&self) -> Option<&str> {
        match self {
            StoreError::Redis(e) => e.code(),
            _ => None,
        }
    }

    /// Redis no longer has a script we call by hash (restarted, failed over, `SCRIPT FLUSH`).
    pub fn is_no_script(&self) -> bool {
        self.redis_kind()
            == Some(::redis::ErrorKind::Server(
                ::redis::ServerErrorKind::NoScript,
            ))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The value of `device:lease:{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Decimal string: epochs are microsecond-scale integers, kept exact across Lua and JSON.
    pub epoch: String,
    pub replica: String,
    pub sid: String,
    pub org: String,
    /// Acquired, but the socket has not entered the namespace yet (commands are queued).
    #[serde(default)]
    pub pending: bool,
}

impl Lease {
    pub fn epoch(&self) -> u64 {
        self.epoch.parse().unwrap_or(0)
    }
}

/// Result of an acquire.
#[derive(Clone, Debug)]
pub struct Acquired {
    pub epoch: u64,
    /// The lease this one replaced, if any: its socket must be disconnected.
    pub previous: Option<Lease>,
    /// No lease existed: this is an offline→online transition.
    pub came_online: bool,
    /// An offline notice had fired for this device: a "back online" notice is due.
    pub offline_notice_fired: bool,
}

/// A replica's view of one live socket, for refresh.
#[derive(Clone, Debug)]
pub struct LiveLease {
    pub device_id: String,
    pub org: String,
    pub sid: String,
    pub epoch: u64,
    /// The socket has not completed its CONNECT yet.
    pub pending: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A newer epoch owns the device: this socket must go.
    Stale,
    Fresh,
    /// The store had lost the epoch or held an older one (Redis restarted or rolled back):
    /// re-asserted as is, silently.
    Restored,
    /// The lease had expired and been swept (offline was reported): online again. The offline
    /// notice that sweep scheduled is cancelled; if it had already fired, the return owes a
    /// "back online" notice (`notice_fired`), as after an acquire.
    Revived {
        notice_fired: bool,
    },
}

/// What a release did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// A newer socket owns the device, or this socket's lease was already gone: nothing.
    Nothing,
    /// The offline transition: lease dropped, status offline, notice scheduled.
    Offline,
    /// The store held an older state (rolled back) whose lease was swept, and announced offline,
    /// after this socket came online: the device is offline and everyone was told. What is left
    /// is bringing the database to this socket's epoch (the sweep's older epoch lost to it
    /// there), without a second `device:status` or notice.
    AlreadyAnnounced,
    /// A retried release (`PresenceStore::retire`): the lease is due now, and the sweep
    /// announces the offline unless a refresh re-asserts a newer epoch first.
    LeftToSweep,
}

/// A connecting socket's take of its device's queues (`StateStore::take_queued`).
#[derive(Clone, Copy, Debug)]
pub struct TakeQueued<'a> {
    pub device: &'a str,
    /// The socket's connection epoch.
    pub epoch: u64,
    /// Take the pending playlist too (clients with capabilities).
    pub playlist: bool,
    /// Mark this socket as acknowledging deliveries (`device:delivery-ack:{id}`), in the same
    /// step, if it owns the queue.
    pub ack_sid: Option<&'a str>,
}

/// What [`StateStore::take_queued`] took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queued {
    pub commands: Vec<String>,
    pub playlist: Option<String>,
}

/// What a heartbeat found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// No newer epoch owns the device: status written, these commands drained.
    Live(Vec<String>),
    /// A newer epoch owns the device: nothing was written or drained.
    Superseded,
    /// The token this socket is bound to is no longer the device's (revoked or re-paired
    /// meanwhile): nothing was written or drained.
    Stale,
}

/// A heartbeat's Redis step (see [`StateStore::device_heartbeat`]).
pub struct HeartbeatWrite<'a> {
    pub device: &'a str,
    pub sid: &'a str,
    /// The socket's epoch: only a strictly newer one supersedes it.
    pub epoch: u64,
    pub status_json: &'a str,
    pub latest_json: &'a str,
    /// The token hash this socket is bound to (`""` when the row was unbound); `None` skips
    /// the stale check.
    pub bound: Option<&'a str>,
    /// Also take `device:pending-playlist:{id}` (clients with acknowledged delivery).
    pub take_pending_playlist: bool,
    /// The socket acknowledges deliveries: renew `device:delivery-ack:{id}` (its sid).
    pub delivery_ack: bool,
    /// The socket's token is due for a refresh: report whether the refresh cooldown is held.
    pub refresh_due: bool,
}

/// What a heartbeat found, plus the pending playlist it took (if asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatFound {
    pub outcome: HeartbeatOutcome,
    pub pending_playlist: Option<String>,
    /// Asked with `refresh_due`: another connection's refresh holds the cooldown, so trying
    /// one now would fail.
    pub refresh_cooldown: bool,
}

/// A dashboard user's session markers (`user_revoked:{sub}`, `pwd_changed:{sub}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionMarks {
    pub revoked: bool,
    /// Epoch seconds of the last password change.
    pub pwd_changed: Option<i64>,
}

/// A lease removed by the sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub device_id: String,
    pub org: String,
    pub epoch: u64,
}

/// When the sweep must hold back (see ARCHITECTURE.md, "stalls and rollbacks"): a gap of more
/// than `stall_ms` since the previous sweep anywhere in the cluster, a missing tick, or a tick
/// older than this replica's last one (Redis rolled back) starts a grace of `grace_ms` during
/// which nothing is swept, so live replicas re-assert their leases first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepGuard {
    pub stall_ms: u64,
    /// 0 disables the guard.
    pub grace_ms: u64,
}

impl SweepGuard {
    /// No guard: every lease past its deadline is swept (store tests).
    pub const NONE: SweepGuard = SweepGuard {
        stall_ms: 0,
        grace_ms: 0,
    };

    /// The guard for a lease TTL and sweep interval: a normal gap between two sweeps is at most
    /// one interval, while a live lease is at least 2/3 of a TTL from its deadline (refreshed
    /// every TTL/3); the grace lets three refresh rounds run.
    pub fn for_lease(ttl_ms: u64, sweep_interval_ms: u64) -> SweepGuard {
        SweepGuard {
            stall_ms: (ttl_ms / 2).max(sweep_interval_ms * 2),
            grace_ms: ttl_ms + sweep_interval_ms,
        }
    }
}

/// The value of `notify:offline:{id}` (reference §5.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfflineNotice {
    pub device_id: String,
    pub device_name: String,
    pub organization_id: String,
    pub scheduled_for: i64,
    pub disconnected_at: i64,
}

/// The lease protocol's storage. Every method is one atomic step (one Redis round trip).
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// New epoch and lease for `device` held by socket `sid` on `replica`.
    async fn acquire(
        &self,
        device: &str,
        org: &str,
        replica: &str,
        sid: &str,
        ttl_ms: u64,
    ) -> StoreResult<Acquired>;
    /// Refreshes many leases in one round trip; outcomes in input order.
    async fn refresh(
        &self,
        replica: &str,
        leases: &[LiveLease],
        ttl_ms: u64,
    ) -> StoreResult<Vec<RefreshOutcome>>;
    /// Marks the lease of socket `sid` as reachable (it entered the namespace).
    async fn confirm(&self, device: &str, sid: &str) -> StoreResult<()>;
    /// Drops the lease if `epoch` still owns it. The offline transition's notice (due after
    /// `notify_delay_ms`) is scheduled in the same atomic step.
    async fn release(
        &self,
        device: &str,
        org: &str,
        epoch: u64,
        notify_delay_ms: u64,
    ) -> StoreResult<Released>;
    /// A release retried after it failed: Redis may since have been rolled back to a state in
    /// which this epoch looks current while a newer socket lives elsewhere, so the retry decides
    /// nothing itself. The lease (this epoch's, written if Redis lost it or holds an older one)
    /// is made due now and left to the sweep, whose grace after a rollback lets a newer socket's
    /// refresh re-assert first. `Nothing` if a newer epoch owns the device or this epoch's lease
    /// is already gone; `AlreadyAnnounced` as in `release`.
    async fn retire(
        &self,
        device: &str,
        org: &str,
        epoch: u64,
        replica: &str,
    ) -> StoreResult<Released>;
    /// Removes up to `limit` leases past their deadline, scheduling their offline notices;
    /// nothing while `guard`'s grace runs.
    async fn sweep(
        &self,
        limit: usize,
        notify_delay_ms: u64,
        guard: SweepGuard,
    ) -> StoreResult<Vec<Expired>>;
    /// Whether each device holds a lease.
    async fn online(&self, devices: &[String]) -> StoreResult<Vec<bool>>;
    async fn lease(&self, device: &str) -> StoreResult<Option<Lease>>;
    /// Takes the cluster-wide lock `name` for `ttl_ms` unless someone holds it: periodic jobs
    /// that one replica should run per period. The lock is never released early, so its TTL is
    /// also the period.
    async fn try_lock(&self, name: &str, owner: &str, ttl_ms: u64) -> StoreResult<bool>;
    /// (Re)schedules an offline notice (`notify:offline:{id}` plus the due-time index).
    async fn schedule_offline_notice(&self, notice: &OfflineNotice) -> StoreResult<()>;
    /// Claims due notices (exactly once across replicas).
    async fn claim_due_notices(&self, limit: usize) -> StoreResult<Vec<OfflineNotice>>;
}

/// Everything else the gateway keeps in Redis.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    async fn ping(&self) -> StoreResult<()>;
    async fn status(&self, device: &str) -> StoreResult<Option<String>>;
    /// The status JSON of many devices in one round trip, in the order asked.
    async fn statuses(&self, devices: &[String]) -> StoreResult<Vec<Option<String>>>;
    async fn enqueue_command(
        &self,
        device: &str,
        command_json: &str,
        max: usize,
        ttl_ms: u64,
    ) -> StoreResult<()>;
    async fn put_screenshot_request(
        &self,
        device: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> StoreResult<()>;
    /// Consumes a pending request id: true exactly once, and only before it expires.
    async fn take_screenshot_request(&self, device: &str, request_id: &str) -> StoreResult<bool>;
    async fn cached_playlist(&self, device: &str) -> StoreResult<Option<String>>;
    async fn cache_playlist(&self, device: &str, json: &str) -> StoreResult<()>;
    async fn invalidate_playlist(&self, device: &str) -> StoreResult<()>;
    async fn count_impression(&self, device: &str, date: &str) -> StoreResult<()>;
    async fn push_content_error(&self, device: &str, entry_json: &str) -> StoreResult<()>;
    async fn content_errors(&self, device: &str) -> StoreResult<Option<String>>;
    async fn is_revoked(&self, jti: &str) -> StoreResult<bool>;

    /// The whole Redis side of a heartbeat in one round trip: lease check, stale-token check,
    /// status and latest sample, queued commands drained, the pending playlist taken if asked.
    /// Writes and drains nothing when a strictly newer epoch than the socket's owns the device;
    /// an older or missing one counts as the socket's (Redis lost or rolled back state).
    async fn device_heartbeat(&self, hb: &HeartbeatWrite<'_>) -> StoreResult<HeartbeatFound>;
    /// What was queued for the device, taken by a connecting socket in one round trip: the
    /// commands, oldest first, and the pending playlist if asked. Nothing is taken unless the
    /// queue is the socket's (as in a heartbeat: no newer epoch owns the device, and its lease is
    /// not gone while the store holds its epoch), so a take that ran late (after its caller gave
    /// up) cannot swallow what the device's next socket is owed.
    async fn take_queued(&self, t: &TakeQueued<'_>) -> StoreResult<Queued>;
    /// The device's lease and whether its socket acknowledges deliveries
    /// (`device:delivery-ack:{id}` names the lease's sid): one round trip.
    async fn lease_and_ack(&self, device: &str) -> StoreResult<(Option<Lease>, bool)>;
    /// Keeps a playlist whose acknowledged delivery failed (`device:pending-playlist:{id}`).
    async fn set_pending_playlist(&self, device: &str, json: &str, ttl_s: u64) -> StoreResult<()>;

    /// Claims the refresh cooldown (SET NX) and, only if claimed, writes the grace record: one
    /// round trip. False when another connection holds the cooldown.
    async fn claim_token_refresh(
        &self,
        device: &str,
        grace_json: &str,
        grace_ttl_s: u64,
        cooldown_s: u64,
    ) -> StoreResult<bool>;
    /// `device:token:grace:{id}`.
    async fn token_grace(&self, device: &str) -> StoreResult<Option<String>>;
    /// Deletes the grace record only if it is still exactly `grace_json` (ours); with
    /// `release_cooldown` also the refresh cooldown (a claim that was not used).
    async fn drop_token_grace(
        &self,
        device: &str,
        grace_json: &str,
        release_cooldown: bool,
    ) -> StoreResult<()>;
    /// `device:token:current:{id}`, if any (see [`StateStore::set_token_marker`]).
    async fn token_marker(&self, device: &str) -> StoreResult<Option<String>>;
    /// `device:token:current:{id}`: the token hash the cluster last learnt is the device's
    /// (`""` for an unbound row, `"revoked"` for a deleted or disabled one), for `ttl_s`;
    /// `None` removes it. With `only_if_present` an absent marker stays absent.
    async fn set_token_marker(
        &self,
        device: &str,
        value: Option<&str>,
        ttl_s: u64,
        only_if_present: bool,
    ) -> StoreResult<()>;

    /// One round trip for a dashboard handshake or sweep: whether `jti` is revoked, and the
    /// session markers of each user.
    async fn session_marks(
        &self,
        jti: Option<&str>,
        users: &[String],
    ) -> StoreResult<(bool, Vec<SessionMarks>)>;

    /// Organisations suspended through the internal API (`tenant:suspended`, a set).
    async fn suspended_orgs(&self) -> StoreResult<Vec<String>>;
    async fn set_suspended(&self, org: &str, suspended: bool) -> StoreResult<()>;

    /// Rebalancing's shared view of load: writes this replica's record (field `replica` of the
    /// hash `replicas:load`) and reads every replica's, in one round trip. Records carry their
    /// own time; readers ignore old ones (a hash field has no TTL of its own).
    async fn exchange_load(
        &self,
        replica: &str,
        record: &str,
    ) -> StoreResult<Vec<(String, String)>>;
    /// Removes the records of replicas gone for good.
    async fn forget_loads(&self, replicas: &[String]) -> StoreResult<()>;
}

/// The hash of every replica's load record (see [`StateStore::exchange_load`]).
pub const REPLICAS_LOAD_KEY: &str = "replicas:load";

pub fn pending_playlist_key(device: &str) -> String {
    keys::SINGLE.pending_playlist(device)
}
pub fn delivery_ack_key(device: &str) -> String {
    keys::SINGLE.delivery_ack(device)
}
/// Lifetime of `device:delivery-ack:{id}`, renewed by every heartbeat of such a socket.
pub const DELIVERY_ACK_TTL_S: u64 = 3_600;
pub fn token_marker_key(device: &str) -> String {
    keys::SINGLE.token_marker(device)
}
pub fn token_grace_key(device: &str) -> String {
    keys::SINGLE.token_grace(device)
}
pub fn token_cooldown_key(device: &str) -> String {
    keys::SINGLE.token_cooldown(device)
}
/// The set of organisations suspended through `POST /api/internal/tenant-entitlement`.
pub const SUSPENDED_ORGS_KEY: &str = "tenant:suspended";

pub fn status_key(device: &str) -> String {
    keys::SINGLE.status(device)
}
pub fn commands_key(device: &str) -> String {
    keys::SINGLE.commands(device)
}
pub fn playlist_key(device: &str) -> String {
    keys::SINGLE.playlist(device)
}
pub fn screenshot_key(device: &str, request_id: &str) -> String {
    keys::SINGLE.screenshot(device, request_id)
}

/// Wall-clock milliseconds (the unit of every timestamp in Redis values), as tokio sees them:
/// see [`now_us`].
pub fn now_ms() -> i64 {
    now_us().div_euclid(1000)
}

/// Wall-clock microseconds. A build with `test-hooks` (the tests') reads them as tokio sees
/// them: under a paused test clock (`tokio::time::pause`, tokio's `test-util`) they move only
/// with `tokio::time::advance`, so the in-process store's deadlines, sweep ticks and notice due
/// times follow the test's time and the lease rules can run in paused-time tests. A server build
/// reads the system clock once: this is on the heartbeat path.
#[cfg(not(feature = "test-hooks"))]
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// See the server build's `now_us` above.
#[cfg(feature = "test-hooks")]
pub fn now_us() -> i64 {
    // tokio's clock minus the monotonic clock is zero unless paused. The wall clock is read
    // between two monotonic reads, again if the thread was preempted in between, so the pair
    // agrees within a millisecond.
    let tokio_now = tokio::time::Instant::now().into_std();
    let mut tries = 0;
    loop {
        let before = std::time::Instant::now();
        let wall = chrono::Utc::now().timestamp_micros();
        tries += 1;
        if before.elapsed() < std::time::Duration::from_millis(1) || tries == 3 {
            return wall + signed_micros(tokio_now, before);
        }
    }
}

/// `a - b` in microseconds, either sign.
#[cfg(feature = "test-hooks")]
fn signed_micros(a: std::time::Instant, b: std::time::Instant) -> i64 {
    match a.checked_duration_since(b) {
        Some(ahead) => ahead.as_micros() as i64,
        None => -(b.duration_since(a).as_micros() as i64),
    }
}
