//! Wiring: builds the stores chosen by the configuration, the Socket.IO server (in-process or
//! Redis adapter), the HTTP routes and the background tasks, then serves until shutdown.
//! `run` takes its listener and shutdown token from the caller so tests use port 0.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use socketioxide::adapter::Adapter;
use socketioxide::{SocketIo, TransportType};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::Db;
use crate::emitter::IoEmitter;
use crate::http::{self, EdgeState};
use crate::limits::EdgeGuard;
use crate::service::impressions::{self, DirectOutbox};
use crate::service::{Backends, Gateway, persist};
use crate::shutdown::Tasks;
use crate::storage::Storage;
use crate::store::outbox::RedisOutbox;
use crate::store::target::RedisTarget;
use crate::store::{memory::MemoryStore, redis::RedisStore};
use crate::telemetry::Metrics;

/// Share of `DRAIN_SECONDS` over which live sockets are closed; the rest is left for the last
/// polling requests to end and for background work to stop.
const DRAIN_SOCKET_SHARE: f32 = 0.8;
/// Groups the live sockets are closed in, evenly spread over the socket share: screens move to
/// other replicas a tenth at a time instead of in one reconnect storm.
const DRAIN_BATCHES: u32 = 10;
/// Added to a refresh interval before dashboards are resynced after an adapter reconnect, so
/// the releases retried on that refresh tick (leases made due for the sweep) have run first
/// (see `resync_after_reconnects`).
const RESYNC_MARGIN: Duration = Duration::from_millis(250);
/// How often the suspended-tenant set is re-read from Redis (handshakes check memory).
const SUSPENDED_REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How often the dependencies are probed for `vizora_gateway_dependency_up` (each probe is
/// bounded by its own timeout, so a hung dependency delays only the next sample).
const DEPENDENCY_PROBE_EVERY: Duration = Duration::from_secs(5);
/// How often idle per-IP and per-device limiter state is forgotten.
const LIMITER_HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// The adapter's first retry when Redis is down at start, and the cap of its doubling backoff.
const ADAPTER_RETRY_FIRST: Duration = Duration::from_millis(200);
const ADAPTER_RETRY_MAX: Duration = Duration::from_secs(5);
/// Bound on the adapter's cross-replica requests (e.g. fetching remote sockets).
const ADAPTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages the adapter's reader may have waiting (socketioxide-redis's default is 1,024). A
/// connect ramp of 5,000 screens under CPU contention outran 1,024 within milliseconds, and
/// what does not fit is dropped: a `device:status` from another replica a dashboard never
/// sees. tokio's channel allocates as it fills, so the bound costs nothing until a burst.
pub const ADAPTER_STREAM_BUFFER: usize = 65_536;

/// Opens the database, checking or migrating its schema as configured.
pub async fn open_database(cfg: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&cfg.database).await?;
    if cfg.db_migrate {
        use migration::MigratorTrait;
        migration::Migrator::up(db.connection(), None).await?;
    } else {
        let missing = migration::missing_schema(db.connection()).await?;
        if !missing.is_empty() {
            anyhow::bail!(
                "the database lacks what the gateway needs (run `vizora-gateway migrate`): {}",
                missing.join(", ")
            );
        }
    }
    Ok(db)
}

/// Runs the gateway until `shutdown` is cancelled (then drains and returns).
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::http::mark_started();
    let cfg = Arc::new(cfg);
    let metrics = Metrics::new().map_err(anyhow::Error::msg)?;
    let db = open_database(&cfg).await?;
    let storage = Storage::from_config(&cfg)?;
    // One attempt before serving so a healthy MinIO is usable from the first screenshot; a
    // failure is not fatal (`storage::keep_ready` retries in the background).
    if let Err(e) = storage.ensure_ready().await {
        tracing::warn!(error = %e, "Object storage not usable at start; retrying in the background.");
    }
    let target = match &cfg.redis {
        None => None,
        Some(r) => {
            tracing::info!(redis = %r.describe(), "Cluster mode.");
            Some(Arc::new(RedisTarget::new(r)?))
        }
    };
    let parts = match &target {
        None => {
            tracing::warn!(
                "None of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES is set: SINGLE-NODE MODE (in-process presence, queues and rooms). Do not run more than one replica like this."
            );
            let mem = Arc::new(MemoryStore::new());
            Backends {
                presence: mem.clone(),
                // The database is local: impressions are written before the ack (see
                // `service::impressions::DirectOutbox`).
                outbox: Arc::new(DirectOutbox::new(db.clone(), mem.clone(), metrics.clone())),
                state: mem,
                cfg: cfg.clone(),
                db,
                storage,
                metrics,
            }
        }
        Some(target) => {
            let r = Arc::new(RedisStore::with_target(target.clone())?);
            Backends {
                presence: r.clone(),
                outbox: Arc::new(RedisOutbox::new(r.pool(), r.keyspace())),
                state: r,
                cfg: cfg.clone(),
                db,
                storage,
                metrics,
            }
        }
    };
    match target {
        None => {
            let emitter = Arc::new(IoEmitter::<socketioxide::adapter::LocalAdapter>::default());
            let (gw, rx, persister) = gateway(parts, emitter.clone());
            let (layer, io) = engine_builder(&cfg).with_state(gw.clone()).build_layer();
            emitter.set(io.clone());
            crate::socket::register_local(&io);
            let server = SocketServer {
                io,
                layer,
                adapter_reconnects: None,
            };
            serve(gw, server, rx, persister, listener, shutdown).await
        }
        Some(target) => {
            let emitter = Arc::new(IoEmitter::<crate::socket::RedisIo>::default());
            let (gw, rx, persister) = gateway(parts, emitter.clone());
            let (ctr, reconnects, driver) =
                adapter_with_retry(&target, gw.tasks(), &shutdown).await?;
            let (layer, io) = engine_builder(&cfg)
                .with_state(gw.clone())
                .with_adapter::<crate::socket::RedisIo>(ctr)
                .build_layer();
            emitter.set(io.clone());
            crate::socket::register_redis(&io)
                .await
                .map_err(anyhow::Error::msg)?;
            connect_relay(&gw, driver).await?;
            let server = SocketServer {
                io,
                layer,
                adapter_reconnects: Some(reconnects),
            };
            serve(gw, server, rx, persister, listener, shutdown).await
        }
    }
}

fn gateway(
    b: Backends,
    emitter: Arc<dyn crate::emitter::Emitter>,
) -> (
    Arc<Gateway>,
    tokio::sync::mpsc::UnboundedReceiver<crate::db::Transition>,
    persist::Persister,
) {
    let (persister, rx) = persist::Persister::new();
    let gw = Gateway::new(b, emitter, persister.clone());
    (gw, rx, persister)
}

/// The adapter subscribes at start; a Redis that is down then is waited for, with backoff. Its
/// supervisor runs on `tasks`.
async fn adapter_with_retry(
    target: &Arc<RedisTarget>,
    tasks: &Tasks,
    shutdown: &CancellationToken,
) -> anyhow::Result<(
    socketioxide_redis::RedisAdapterCtr<crate::store::pubsub::ResilientDriver>,
    watch::Receiver<u64>,
    crate::store::pubsub::ResilientDriver,
)> {
    let mut backoff = ADAPTER_RETRY_FIRST;
    loop {
        let cfg = socketioxide_redis::RedisAdapterConfig::new()
            .with_request_timeout(ADAPTER_REQUEST_TIMEOUT)
            .with_stream_buffer(ADAPTER_STREAM_BUFFER);
        match crate::store::pubsub::ResilientDriver::new(target.clone(), tasks).await {
            Ok(driver) => {
                let reconnects = driver.reconnects();
                return Ok((
                    socketioxide_redis::RedisAdapterCtr::new_with_driver(driver.clone(), cfg),
                    reconnects,
                    driver,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis adapter not ready; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => anyhow::bail!("shut down while waiting for Redis"),
                }
                backoff = (backoff * 2).min(ADAPTER_RETRY_MAX);
            }
        }
    }
}

/// Confirmed delivery (`service::relay`) over the adapter's pub/sub connection: this replica's
/// `deliver` and `confirm` channels, resubscribed with the adapter's after every reconnect.
async fn connect_relay(
    gw: &Arc<Gateway>,
    driver: crate::store::pubsub::ResilientDriver,
) -> anyhow::Result<()> {
    use crate::service::relay::{confirm_channel, deliver_channel};
    use futures_util::StreamExt;
    use socketioxide_redis::drivers::Driver;
    /// Requests and confirmations buffered per channel before the driver drops them.
    const RELAY_BUFFER: usize = 4096;
    let replica = &gw.cfg().replica_id;
    for chan in [deliver_channel(replica), confirm_channel(replica)] {
        let mut stream = driver.subscribe(chan, RELAY_BUFFER).await?;
        let (gw2, stop) = (gw.clone(), gw.tasks().stop_token());
        gw.tasks().spawn(async move {
            loop {
                let (chan, payload) = tokio::select! {
                    m = stream.next() => match m {
                        Some(m) => m,
                        None => return,
                    },
                    _ = stop.cancelled() => return,
                };
                // Each request on its own task: one waiting on a slow claim holds up no other.
                let gw3 = gw2.clone();
                gw2.tasks().spawn(async move {
                    gw3.on_relay_message(&chan, &payload).await;
                });
            }
        });
    }
    gw.set_relay_bus(Box::new(driver));
    Ok(())
}

/// The Socket.IO engine as every replica configures it (public for `examples/engine_floor.rs`,
/// which measures this engine with nothing of the gateway around it).
pub fn engine_builder(cfg: &Config) -> socketioxide::SocketIoBuilder {
    let max = cfg.max_payload();
    SocketIo::builder()
        .ping_interval(cfg.ping_interval)
        .ping_timeout(cfg.ping_timeout)
        .connect_timeout(cfg.connect_timeout)
        .max_payload(max as u64)
        .ws_max_message_size(max)
        .ws_max_frame_size(max)
        .max_buffer_size(64)
        .ws_read_buffer_size(1024)
        .transports([TransportType::Polling, TransportType::Websocket])
}

/// The Socket.IO server of one replica, and (cluster mode) its adapter's reconnect counter.
struct SocketServer<A: Adapter> {
    io: SocketIo<A>,
    layer: socketioxide::layer::SocketIoLayer<A>,
    adapter_reconnects: Option<watch::Receiver<u64>>,
}

async fn serve<A: Adapter>(
    gw: Arc<Gateway>,
    server: SocketServer<A>,
    rx: tokio::sync::mpsc::UnboundedReceiver<crate::db::Transition>,
    persister: persist::Persister,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let SocketServer {
        io,
        layer,
        adapter_reconnects,
    } = server;
    let cfg = gw.cfg().clone();
    let tasks = gw.tasks().clone();
    let guard = Arc::new(EdgeGuard::new(&cfg.limits));
    gw.set_connection_cap(guard.max_connections);
    spawn_background(&tasks, &gw, &guard);
    spawn_fencing(&tasks, &gw, &io);
    spawn_rebalancing(&tasks, &gw, &io);
    if let Some(rx) = adapter_reconnects {
        tasks.spawn(resync_after_reconnects(gw.clone(), rx, tasks.stop_token()));
    }
    tasks.spawn(impressions::run(
        gw.clone(),
        tasks.stop_token(),
        tasks.deadline_token(),
    ));
    tasks.spawn(gw.keep_storage_ready(tasks.stop_token()));
    tasks.spawn(persist::run(
        rx,
        persister,
        gw.persist_writer(),
        tasks.stop_token(),
        tasks.deadline_token(),
    ));

    let edge = EdgeState {
        gw: gw.clone(),
        guard,
    };
    let public = if cfg.internal_port.is_some() {
        http::Routes::Public
    } else {
        http::Routes::All
    };
    let app: Router = http::routes(gw.clone(), public)
        .layer(layer)
        .layer(axum::middleware::map_request(http::own_request_bytes))
        .layer(http::cors(&cfg.cors_origins))
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            http::gate,
        ));
    // The operator port stays up through the drain (readiness says 503 there) and closes after
    // the public one has finished.
    let internal_done = CancellationToken::new();
    if let Some(port) = cfg.internal_port {
        let internal = bind_internal(&cfg, port).await?;
        let app: Router = http::routes(gw.clone(), http::Routes::Internal)
            .layer(axum::middleware::from_fn_with_state(edge, http::gate));
        tasks.spawn(serve_internal(
            internal,
            app,
            tcp_limits(&cfg),
            gw.listener_metrics(),
            internal_done.clone(),
        ));
    }

    tracing::info!(addr = %listener.local_addr()?, replica = %cfg.replica_id, "Gateway listening.");
    let drain_gw = gw.clone();
    let drain_io = io.clone();
    let drain_trigger = shutdown.clone();
    let drain = async move {
        drain_trigger.cancelled().await;
        drain_sockets(&drain_gw, &drain_io).await;
    };
    let listener = crate::net::KillListener::new(listener, tcp_limits(&cfg), gw.listener_metrics());
    let serving = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<crate::net::Peer>(),
    )
    .with_graceful_shutdown(drain)
    .into_future();
    tokio::pin!(serving);
    // The whole drain, from the trigger to the last task, is bounded by DRAIN_SECONDS.
    let mut deadline = None;
    let served = tokio::select! {
        r = &mut serving => r,
        _ = shutdown.cancelled() => {
            let at = Instant::now() + cfg.drain;
            deadline = Some(at);
            tokio::time::timeout_at(at, &mut serving).await.unwrap_or_else(|_| {
                tracing::warn!("Connections still open at the end of the drain; closing.");
                Ok(())
            })
        }
    };
    let deadline = deadline.unwrap_or_else(|| Instant::now() + cfg.drain);
    internal_done.cancel();
    if !tasks.stop_and_wait(deadline).await {
        tracing::warn!("Background tasks did not stop within the drain; cancelled.");
    }
    served?;
    tracing::info!("Gateway stopped.");
    Ok(())
}

fn tcp_limits(cfg: &Config) -> crate::net::TcpLimits {
    crate::net::TcpLimits {
        max_connections: cfg.limits.max_tcp_connections,
        max_per_ip: cfg.limits.max_tcp_connections_per_ip,
        header_timeout: cfg.limits.http_header_timeout,
        idle_timeout: cfg.limits.http_idle_timeout,
        trusted_proxies: cfg.limits.trusted_proxies.clone(),
    }
}

async fn bind_internal(cfg: &Config, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((cfg.host.as_str(), port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{port} (INTERNAL_PORT): {e}", cfg.host))
}

/// The `INTERNAL_PORT` listener: the operator routes, with the same TCP ceilings and timers as
/// the public port, until `done` (the public port has drained).
async fn serve_internal(
    listener: TcpListener,
    app: Router,
    limits: crate::net::TcpLimits,
    metrics: crate::telemetry::Metrics,
    done: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "Internal routes (health, metrics, internal API) listening.");
    }
    let listener = crate::net::KillListener::new(listener, limits, metrics);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<crate::net::Peer>(),
    )
    .with_graceful_shutdown(done.cancelled_owned())
    .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "Internal listener failed.");
    }
}

/// How often a replica refreshes its leases (and retries releases that failed).
fn refresh_interval(cfg: &Config) -> Duration {
    (cfg.lease_ttl / 3).max(Duration::from_millis(100))
}

/// Dashboards here may have missed `device:status` events while the adapter was away from
/// Redis: each reconnect re-sends them the organisation's status batch. Not at once: the
/// releases that failed while Redis was away are retried on each replica's next refresh tick
/// (`retire.lua`: the lease made due, the sweep announces the offline live), and the batch is
/// read after them.
/// Reconnects during the wait are served by the same resync.
async fn resync_after_reconnects(
    gw: Arc<Gateway>,
    mut reconnects: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let settle = refresh_interval(gw.cfg()) + RESYNC_MARGIN;
    loop {
        tokio::select! {
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(settle) => {}
            _ = stop.cancelled() => return,
        }
        reconnects.mark_unchanged();
        gw.resync_dashboards().await;
    }
}

/// The drain: readiness goes 503 and new handshakes get 503 `draining` at once; after
/// `DRAIN_SETTLE_MS` for the load balancer to notice, live sockets' transports are closed in
/// batches spread over the rest of 80 % of `DRAIN_SECONDS` (see `close_in_batches`); whatever is
/// left (polling sessions) is closed at the end. Leases are handed over, not released, so no
/// offline status or notification is produced for a screen that reconnects within
/// `HANDOVER_TTLS` lease TTLs (`Gateway::hand_over_leases`). `io.close()` skips
/// disconnect handlers, which is fine: nothing is released anyway.
async fn drain_sockets<A: Adapter>(gw: &Arc<Gateway>, io: &SocketIo<A>) {
    gw.start_draining();
    let window = gw.cfg().drain.mul_f32(DRAIN_SOCKET_SHARE);
    let settle = gw.cfg().drain_settle.min(window);
    tracing::info!(
        sockets = io.sockets().len(),
        window_s = window.as_secs_f32(),
        "Draining."
    );
    close_in_batches(
        io,
        settle,
        window.saturating_sub(settle),
        || true,
        |n| gw.count_drain_closed(n),
        Some(gw),
    )
    .await;
    // What is left (long-polling sessions have no connection to kill) ends with the server.
    let rest: Vec<String> = io.sockets().iter().map(|s| s.id.to_string()).collect();
    gw.hand_over_leases(&rest).await;
    gw.count_drain_closed(rest.len());
    io.close().await;
}

/// The close path the drain and the fence share: after `settle`, the transports of the live
/// sockets are closed in `DRAIN_BATCHES` groups, one group every `spread / DRAIN_BATCHES`, so
/// screens move to other replicas a tenth at a time instead of in one reconnect storm. Each
/// socket is marked leaving before its transport closes (a frame handed to it is not called
/// delivered, and its disconnect hands its lease over instead of releasing it). A transport
/// close, never a Socket.IO disconnect: clients reconnect with their own backoff. Stops as soon
/// as `go_on` says so; `closing` counts each group before it closes (a scrape never shows fewer
/// closes than the clients saw).
async fn close_in_batches<A: Adapter>(
    io: &SocketIo<A>,
    settle: Duration,
    spread: Duration,
    go_on: impl Fn() -> bool,
    closing: impl Fn(usize),
    hand_over: Option<&Arc<Gateway>>,
) {
    tokio::time::sleep(settle).await;
    let leaving: Vec<(String, Arc<crate::socket::SocketCtx>)> = io
        .sockets()
        .iter()
        .filter_map(|s| {
            let ctx = s.extensions.get::<Arc<crate::socket::SocketCtx>>()?;
            (ctx.kill.is_some() && !ctx.is_leaving()).then(|| (s.id.to_string(), ctx))
        })
        .collect();
    let per = leaving.len().div_ceil(DRAIN_BATCHES as usize).max(1);
    let pause = spread / DRAIN_BATCHES;
    for chunk in leaving.chunks(per) {
        if !go_on() {
            return;
        }
        closing(chunk.len());
        if let Some(gw) = hand_over {
            let sids: Vec<String> = chunk.iter().map(|(sid, _)| sid.clone()).collect();
            gw.hand_over_leases(&sids).await;
        }
        for (_, ctx) in chunk {
            ctx.leave();
        }
        tokio::time::sleep(pause).await;
    }
}

/// Self-fencing, in cluster mode only (`service::fence`): Redis is probed and this replica's
/// witness row written every `FenceTimings::tick`; when the check fences the replica, its
/// sockets' transports (screens and dashboards) are closed in batches over
/// `FenceTimings::window`, as long as it stays fenced. Sockets that connected while the batches
/// ran (admitted just before the fence) are closed in a last round. Leases are handed over: the
/// reconnecting socket supersedes its lease on a healthy replica.
fn spawn_fencing<A: Adapter>(tasks: &Tasks, gw: &Arc<Gateway>, io: &SocketIo<A>) {
    if gw.cfg().redis.is_none() {
        return;
    }
    let t = gw.fence_timings();
    every(tasks, t.tick, gw.clone(), |gw| async move {
        gw.probe_redis_once().await
    });
    let (io, closer) = (io.clone(), tasks.clone());
    every(tasks, t.tick, gw.clone(), move |gw| {
        let (io, closer) = (io.clone(), closer.clone());
        async move {
            if !gw.fence_check_once().await {
                return;
            }
            let batch = t.window / DRAIN_BATCHES;
            closer.spawn(async move {
                let fenced = || gw.is_fenced() && !gw.is_draining();
                // No handover: a fenced replica cannot reach Redis.
                close_in_batches(&io, batch, t.window, fenced, |_| {}, None).await;
                close_in_batches(&io, Duration::ZERO, Duration::ZERO, fenced, |_| {}, None).await;
            });
        }
    });
}

/// Rebalancing, in cluster mode only (`service::rebalance`): every tick (about a second, with
/// jitter) this replica publishes its load and reads everyone's (the load gauges follow even with
/// `REBALANCE=off`); while it sheds, the transports of the device sockets it was told to close
/// are closed one at a time, evenly over the tick, oldest connection first. Each socket is marked
/// leaving first, so its lease is handed over (no offline status, no notification) and a frame
/// handed to it meanwhile is queued instead of called delivered; a transport close, never a
/// Socket.IO disconnect, so the screen reconnects by itself (the gate answers 503 `server_busy`
/// meanwhile, so it lands on another replica).
fn spawn_rebalancing<A: Adapter>(tasks: &Tasks, gw: &Arc<Gateway>, io: &SocketIo<A>) {
    if gw.cfg().redis.is_none() {
        return;
    }
    let (gw, io, stop) = (gw.clone(), io.clone(), tasks.stop_token());
    tasks.spawn(async move {
        loop {
            let period = crate::service::rebalance::jittered(crate::service::rebalance::TICK);
            let next = Instant::now() + period;
            let mut devices = sheddable(&io);
            let shed = gw.rebalance_once(devices.len(), period).await;
            if shed > 0 {
                devices.sort_by_key(|(sid, _)| gw.device_connected_since(sid));
                let pause = period / u32::try_from(shed).unwrap_or(u32::MAX);
                for (sid, ctx) in devices.into_iter().take(shed) {
                    if !gw.is_shedding() || gw.is_draining() || gw.is_fenced() || ctx.is_leaving() {
                        break;
                    }
                    gw.count_rebalance_closed(1);
                    gw.hand_over_leases(std::slice::from_ref(&sid)).await;
                    ctx.leave();
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// This replica's device sockets that rebalancing may move: connected (the connect handler
/// ran), with a transport it can close, and not already leaving.
fn sheddable<A: Adapter>(io: &SocketIo<A>) -> Vec<(String, Arc<crate::socket::SocketCtx>)> {
    io.sockets()
        .iter()
        .filter_map(|s| {
            let ctx = s.extensions.get::<Arc<crate::socket::SocketCtx>>()?;
            let device = matches!(ctx.principal, crate::auth::Principal::Device(_));
            let connected = ctx.phase.load(std::sync::atomic::Ordering::SeqCst) == 1;
            (device && connected && ctx.kill.is_some() && !ctx.is_leaving())
                .then(|| (s.id.to_string(), ctx))
        })
        .collect()
}

/// Periodic work: lease refresh, sweep, offline notices, the bulk flush, limiter housekeeping.
/// Public so the in-process test fixture (`tests/src/inproc.rs`) runs this very schedule under
/// a paused clock.
pub fn spawn_background(tasks: &Tasks, gw: &Arc<Gateway>, guard: &Arc<EdgeGuard>) {
    let cfg = gw.cfg();
    let refresh_every = refresh_interval(cfg);
    every(tasks, refresh_every, gw.clone(), |gw| async move {
        gw.refresh_once().await
    });
    every(
        tasks,
        cfg.presence_sweep_interval,
        gw.clone(),
        |gw| async move { gw.sweep_once().await },
    );
    every(
        tasks,
        cfg.presence_sweep_interval.min(Duration::from_secs(1)),
        gw.clone(),
        |gw| async move { gw.notices_once().await },
    );
    every(
        tasks,
        cfg.presence_reconcile_interval,
        gw.clone(),
        |gw| async move { gw.reconcile_once().await },
    );
    every(tasks, cfg.last_seen_flush, gw.clone(), |gw| async move {
        gw.flush_once().await
    });
    every(
        tasks,
        cfg.session_sweep_interval,
        gw.clone(),
        |gw| async move { gw.session_sweep_once().await },
    );
    every(
        tasks,
        SUSPENDED_REFRESH_EVERY,
        gw.clone(),
        |gw| async move { gw.suspended_refresh_once().await },
    );
    every(tasks, DEPENDENCY_PROBE_EVERY, gw.clone(), |gw| async move {
        gw.record_dependencies().await
    });
    let guard = guard.clone();
    every(tasks, LIMITER_HOUSEKEEPING_EVERY, gw.clone(), move |gw| {
        let guard = guard.clone();
        async move {
            guard.housekeeping();
            gw.limiter_housekeeping();
        }
    });
}

/// Runs `f` every `period` on `tasks` until background work stops.
fn every<F, Fut>(tasks: &Tasks, period: Duration, gw: Arc<Gateway>, f: F)
where
    F: Fn(Arc<Gateway>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = tasks.stop_token();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => f(gw.clone()).await,
                _ = stop.cancelled() => return,
            }
        }
    });
}
