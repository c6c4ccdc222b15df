//! Health routes: deep `/api/health`, `/live` (the process runs), `/ready` (503 only while
//! draining or fenced), `/api/status`.
//!
//! Readiness says whether this replica should receive traffic, not whether its dependencies
//! answer (contract §7). Routes are served only once the replica reached its database and Redis
//! at start (`app::run`); after that an outage of either is everyone's outage: taking every pod
//! out of the Service gains nothing, kills long-polling sessions and stops what a replica still
//! serves by itself (connected screens, heartbeats, cached handshakes, the impression outbox),
//! while each replica refuses transiently what it cannot serve. So readiness answers from memory
//! at once, and the dependencies' state goes to `/api/health`, `vizora_gateway_dependency_up`
//! and the alerts. The one dependency state readiness does follow is a partition: a replica
//! fenced off Redis while its peers reach it (`service::fence`) is 503 `fenced` until Redis
//! answers it again.

use std::sync::Arc;
use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::ApiError;
use crate::service::Gateway;
use crate::service::health::Probe;
use crate::wire::iso_now;

static START: OnceLock<Instant> = OnceLock::new();

/// Records the process start; `app::run` calls it first thing, so `uptime` does not start at
/// the first health request.
pub fn mark_started() {
    START.get_or_init(Instant::now);
}

fn started() -> Instant {
    *START.get_or_init(Instant::now)
}

fn probe(p: Probe) -> Value {
    match p {
        Probe::Healthy { latency_ms } => json!({"status": "healthy", "latencyMs": latency_ms}),
        Probe::Unhealthy(e) => json!({"status": "unhealthy", "error": e}),
    }
}

async fn dependencies(gw: &Gateway) -> (Value, Value) {
    let (store, database) = gw.probe_dependencies().await;
    (probe(store), probe(database))
}

/// `{..probe, kind}`: the probe result naming what the dependency actually is.
fn named(mut probe: Value, kind: &str) -> Value {
    if let Some(o) = probe.as_object_mut() {
        o.insert("kind".into(), json!(kind));
    }
    probe
}

pub async fn health(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let (store, database) = dependencies(&gw).await;
    let cluster = gw.cfg().redis.is_some();
    let store = named(store, if cluster { "redis" } else { "in-process" });
    let database = named(
        database,
        if gw.cfg().database.is_sqlite() {
            "sqlite"
        } else {
            "postgres"
        },
    );
    // Whether uploads can be attempted: S3 storage is set up (bucket checked or created) in the
    // background until it works (`storage::keep_ready`).
    let st = gw.storage_status();
    let storage = if st.ready {
        json!({"status": "healthy", "kind": st.backend})
    } else {
        json!({"status": "unhealthy", "kind": st.backend,
               "error": st.error.unwrap_or_else(|| "not set up yet".into())})
    };
    let ws = if gw.is_draining() {
        json!({"status": "unhealthy", "error": "draining"})
    } else if gw.is_fenced() {
        json!({"status": "unhealthy", "error": "fenced"})
    } else {
        json!({"status": "healthy"})
    };
    let all_ok = [&store, &database, &ws, &storage]
        .iter()
        .all(|d| d["status"] == "healthy");
    let mut deps =
        json!({"store": store.clone(), "database": database, "storage": storage, "websocket": ws});
    // The original's `redis` entry, only when there is a Redis: the in-process store is not one.
    if cluster && let Some(o) = deps.as_object_mut() {
        o.insert("redis".into(), store);
    }
    Json(json!({
        "status": if all_ok { "healthy" } else { "unhealthy" },
        "service": "realtime-gateway",
        "timestamp": iso_now(),
        "uptime": started().elapsed().as_secs_f64(),
        "replica": gw.cfg().replica_id,
        "mode": if cluster { "cluster" } else { "single-node" },
        "dependencies": deps,
    }))
}

pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(gw): State<Arc<Gateway>>) -> Result<Json<Value>, ApiError> {
    if gw.is_draining() {
        Err(ApiError::NotReady("draining"))
    } else if gw.is_fenced() {
        Err(ApiError::NotReady("fenced"))
    } else {
        Ok(Json(json!({"status": "ready", "ready": true})))
    }
}

pub async fn status() -> Json<Value> {
    Json(
        json!({"status": "running", "service": "Vizora Realtime Gateway", "version": env!("CARGO_PKG_VERSION"), "websocket": "active"}),
    )
}
