//! The in-process fixture: replicas of the gateway's services in the test's own runtime, over one
//! shared `MemoryStore` (the in-process twin of Redis), a migrated and seeded SQLite file and a
//! local storage directory. No process, no port: a test builds in milliseconds and, under a
//! paused tokio clock, lives through minutes of lease TTLs, sweeps and notification delays
//! without waiting for them (`tests/tests/paused.rs`).
//!
//! # Why services and not sockets
//!
//! Each [`Replica`] is a `Gateway` with the very background schedule `app::run` gives it
//! (`app::spawn_background`: refresh every TTL/3, sweep, offline notices, flush, reconcile), its
//! own transition writer, and a [`Recorder`] in place of the Socket.IO emitter. A socket's
//! lifetime is the service calls its handlers make (`acquire_device` + `confirm_device` on
//! connect, `release_device` on disconnect). What this level cannot show stays in the
//! process-level tests: real sockets, SIGKILL, Redis faults. In return a replica can die here
//! the way the lease rules care about — it stops refreshing and never releases
//! ([`Replica::crash`]) — and several replicas share one store, as they share Redis.
//!
//! # Why the clock is held
//!
//! A paused tokio clock auto-advances to the next timer whenever the runtime is idle, and the
//! runtime is idle whenever it waits for something outside it: SQLite runs on its own thread,
//! so every query would let the clock jump by up to a sweep interval (or to the pool's
//! housekeeping timer, minutes away), at a moment no test chose. [`ClockHold`] keeps one task
//! always ready, so the runtime never idles and the clock moves only when the test calls
//! `tokio::time::advance`. Consequently tests wait for work with [`until`] (it yields; it never
//! sleeps on the tokio clock) and step time with `advance` followed by [`settle`].
//!
//! `store::now_ms` and the rate limiters read tokio's clock, so the in-process store's
//! deadlines, sweep grace and notice due times, and governor's buckets, follow the test's
//! `advance` exactly.
//!
//! Nothing here needs tokio's `test-util`; only the tests that pause the clock do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::ConnectionTrait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vizora_gateway::config::Config;
use vizora_gateway::db::Db;
use vizora_gateway::emitter::Emitter;
use vizora_gateway::limits::EdgeGuard;
use vizora_gateway::service::{Backends, Gateway, impressions::DirectOutbox, persist};
use vizora_gateway::storage::Storage;
use vizora_gateway::store::memory::MemoryStore;
use vizora_gateway::telemetry::Metrics;
use vizora_gateway::wire::outgoing::Outgoing;

use crate::fixture::{API_BASE, DEVICE_SECRET, INTERNAL_KEY, USER_SECRET};

/// One emit a replica made, as the Socket.IO layer would have received it.
#[derive(Clone, Debug)]
pub struct Emitted {
    pub room: String,
    /// The event name; `disconnect` for a server disconnect of the room.
    pub event: String,
    pub data: Value,
}

/// The emitter of an in-process replica: records every emit and disconnect, in order.
#[derive(Default)]
pub struct Recorder {
    log: Mutex<Vec<Emitted>>,
}

impl Recorder {
    fn push(&self, room: String, event: &str, data: Value) {
        self.log.lock().unwrap().push(Emitted {
            room,
            event: event.into(),
            data,
        });
    }

    /// Everything emitted so far.
    pub fn all(&self) -> Vec<Emitted> {
        self.log.lock().unwrap().clone()
    }

    /// The `event` payloads emitted so far.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|e| e.event == event)
            .map(|e| e.data)
            .collect()
    }

    /// How many `device:status` events with this device and status were emitted.
    pub fn statuses(&self, device: &str, status: &str) -> usize {
        self.events("device:status")
            .iter()
            .filter(|d| d["deviceId"] == device && d["status"] == status)
            .count()
    }
}

#[async_trait]
impl Emitter for Recorder {
    async fn emit(&self, room: String, event: Outgoing) {
        self.push(room, event.name(), event.data().clone());
    }
    async fn emit_local(&self, room: String, event: Outgoing) {
        self.push(room, event.name(), event.data().clone());
    }
    async fn emit_except(&self, room: String, _except: String, event: Outgoing) {
        self.push(room, event.name(), event.data().clone());
    }
    async fn emit_with_ack(
        &self,
        room: String,
        event: Outgoing,
        _timeout: Duration,
    ) -> Vec<Result<Value, String>> {
        self.push(room, event.name(), event.data().clone());
        Vec::new()
    }
    async fn disconnect_room(&self, room: String) {
        self.push(room, "disconnect", Value::Null);
    }
    fn is_local(&self, _sid: &str) -> bool {
        // Every socket a test connects through a replica is that replica's.
        true
    }
    fn write_to_local_socket(&self, sid: &str, event: &Outgoing) -> bool {
        self.push(format!("socket:{sid}"), event.name(), event.data().clone());
        true
    }
}

/// Keeps a paused clock from auto-advancing while the test waits for work outside the runtime
/// (see the module doc). Drop it to release the runtime.
pub struct ClockHold(tokio::task::JoinHandle<()>);

impl ClockHold {
    pub fn new() -> ClockHold {
        ClockHold(tokio::spawn(async {
            loop {
                tokio::task::yield_now().await;
            }
        }))
    }
}

impl Default for ClockHold {
    fn default() -> Self {
        ClockHold::new()
    }
}

impl Drop for ClockHold {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lets every task that is ready run until it waits again (timers fired by an `advance`, the
/// emits they spawn). Work waiting on SQLite may still be in flight: wait for it with [`until`].
pub async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// Polls `f` until it returns `Some`, yielding in between (never sleeping on the tokio clock,
/// which is held). Gives up after ten seconds of real time.
pub async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        settle().await;
    }
}

/// The embedded configuration over `dir` (SQLite file, storage directory), shipped defaults
/// unless `env` sets a variable.
pub fn config(dir: &std::path::Path, env: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = [
        ("DEVICE_JWT_SECRET", DEVICE_SECRET),
        ("JWT_SECRET", USER_SECRET),
        ("INTERNAL_API_SECRET", INTERNAL_KEY),
        ("API_BASE_URL", API_BASE),
        ("HOST", "127.0.0.1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    map.insert(
        "DATABASE_URL".into(),
        format!("sqlite://{}?mode=rwc", dir.join("gateway.sqlite").display()),
    );
    map.insert(
        "STORAGE_DIR".into(),
        dir.join("storage").display().to_string(),
    );
    for (k, v) in env {
        map.insert(k.to_string(), v.to_string());
    }
    Config::from_map(&map).unwrap_or_else(|e| panic!("test config: {e:?}"))
}

/// Opens (migrating) and seeds the configuration's database.
async fn seeded(cfg: &Config) -> Db {
    let db = vizora_gateway::app::open_database(cfg).await.unwrap();
    crate::fixture::seed(db.connection(), 0).await;
    db
}

/// `app::run` itself, in this runtime: the embedded default (in-process store and adapter,
/// a seeded SQLite file, local storage) listening on 127.0.0.1:0. Real sockets, no process.
pub struct Server {
    pub addr: std::net::SocketAddr,
    /// The configuration it runs with.
    pub cfg: Config,
    shutdown: CancellationToken,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), env);
        drop(seeded(&cfg).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(vizora_gateway::app::run(
            cfg.clone(),
            listener,
            shutdown.clone(),
        ));
        Server {
            addr,
            cfg,
            shutdown,
            run,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> vizora_sioclient::ClientOptions {
        vizora_sioclient::ClientOptions::new(self.url())
    }
}

/// Stopped, not drained: the drain sleeps on the test's clock, which may be held (the drain has
/// its own process-level test, `drain.rs`).
impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.run.abort();
    }
}

/// The shared parts of an in-process cluster: configuration, one store, one database.
pub struct InProc {
    pub cfg: Arc<Config>,
    pub store: Arc<MemoryStore>,
    pub db: Db,
    dir: tempfile::TempDir,
}

impl InProc {
    /// A seeded SQLite database and an empty store. Timings are the shipped defaults unless
    /// `env` sets them (paused time makes the real values free).
    pub async fn start(env: &[(&str, &str)]) -> InProc {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), env);
        let db = seeded(&cfg).await;
        InProc {
            cfg: Arc::new(cfg),
            store: Arc::new(MemoryStore::new()),
            db,
            dir,
        }
    }

    /// A replica running `app::run`'s background schedule over the shared store.
    pub fn replica(&self, id: &str) -> Replica {
        let mut cfg = (*self.cfg).clone();
        cfg.replica_id = id.into();
        let cfg = Arc::new(cfg);
        let metrics = Metrics::new().unwrap();
        let storage = Storage::from_config(&cfg).unwrap();
        let recorder = Arc::new(Recorder::default());
        let (persister, rx) = persist::Persister::new();
        let backends = Backends {
            cfg: cfg.clone(),
            db: self.db.clone(),
            presence: self.store.clone(),
            state: self.store.clone(),
            outbox: Arc::new(DirectOutbox::new(
                self.db.clone(),
                self.store.clone(),
                metrics.clone(),
            )),
            storage,
            metrics: metrics.clone(),
        };
        let gw = Gateway::new(backends, recorder.clone(), persister.clone());
        let tasks = gw.tasks().clone();
        let stop = CancellationToken::new();
        let guard = Arc::new(EdgeGuard::new(&cfg.limits));
        vizora_gateway::app::spawn_background(&tasks, &gw, &guard);
        // A crash ends the writer at once, with whatever it still holds (no drain deadline).
        let writer_stop = tasks.stop_token();
        tasks.spawn(persist::run(
            rx,
            persister,
            persist::Writer {
                db: self.db.clone(),
                replica: id.into(),
                metrics,
                hooks: Default::default(),
            },
            writer_stop.clone(),
            writer_stop,
        ));
        // `crash` (or dropping the replica) stops every task of this gateway at once.
        let crashed = stop.clone();
        tokio::spawn(async move {
            crashed.cancelled().await;
            tasks.stop_and_wait(tokio::time::Instant::now()).await;
        });
        Replica {
            gw,
            emitted: recorder,
            stop,
            next_sid: Default::default(),
            id: id.into(),
        }
    }

    /// Rows of `notifications` of this type for this device.
    pub async fn notifications(&self, device: &str, kind: &str) -> usize {
        self.notification_rows(device, kind).await.len()
    }

    /// `notifications` rows of this type for this device: when each was written and its
    /// `metadata.disconnectedAt` (offline notices), oldest first. The database's clock is the
    /// stores' (`db::now`), so under a paused clock `createdAt` is virtual time too.
    pub async fn notification_rows(
        &self,
        device: &str,
        kind: &str,
    ) -> Vec<(chrono::NaiveDateTime, Option<chrono::NaiveDateTime>)> {
        let rows = self
            .db
            .connection()
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                format!(
                    r#"SELECT "createdAt" AS at, json_extract("metadata", '$.disconnectedAt') AS gone
                       FROM notifications WHERE "type" = '{kind}' AND json_extract("metadata", '$.deviceId') = '{device}'
                       ORDER BY "createdAt""#
                ),
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let gone = r.try_get::<Option<String>>("", "gone").unwrap().map(|s| {
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .unwrap()
                        .naive_utc()
                });
                (r.try_get("", "at").unwrap(), gone)
            })
            .collect()
    }

    /// The storage directory the replicas share.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// One replica of the in-process cluster.
pub struct Replica {
    pub gw: Arc<Gateway>,
    /// What this replica emitted to its sockets and rooms.
    pub emitted: Arc<Recorder>,
    stop: CancellationToken,
    next_sid: std::sync::atomic::AtomicU64,
    id: String,
}

impl Replica {
    /// What the connect path does for a device socket: the lease acquire (middleware), then the
    /// confirm (connect handler). Returns the socket id.
    pub async fn connect(&self, device: &str, org: &str) -> String {
        let n = self
            .next_sid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sid = format!("{}-sid-{n}", self.id);
        self.gw.acquire_device(device, org, &sid).await.unwrap();
        self.gw.confirm_device(device, &sid).await;
        sid
    }

    /// What the disconnect handler does: the release.
    pub async fn disconnect(&self, sid: &str) {
        self.gw.release_device(sid).await;
    }

    /// The replica dies the way the lease rules see it: its loops stop, so its leases are no
    /// longer refreshed, and nothing is released.
    pub fn crash(&self) {
        self.stop.cancel();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
