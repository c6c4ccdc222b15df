//! The integration-test harness: starts what the tests need itself — `redis-server` processes on
//! free ports (single servers, Sentinel sets, a six-node Redis Cluster; `ports`: a server counts
//! as started only once the process we spawned listens on its port, so a test never talks to
//! another test's server), PostgreSQL databases created per test (the server is started if it
//! is not running), SQLite files in temp dirs, and gateway replicas as real processes that can
//! be SIGKILLed or SIGTERMed — so tests run in parallel and never share state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod balancer;
pub mod cluster;
pub mod endpoint;
pub mod fixture;
pub mod gateway;
pub mod inproc;
pub mod nginx;
pub mod player;
pub mod ports;
pub mod postgres;
pub mod proxy;
pub mod redis_cluster;
pub mod redis_server;
pub mod scenarios;
pub mod sentinel;
pub mod tls;

use std::time::Duration;

pub use cluster::Cluster;
pub use fixture::*;
pub use gateway::{DbTarget, Gateway, GatewayOptions, LEASE_TTL};
pub use ports::free_port;
pub use postgres::PgDatabase;
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;

/// The `device:status` payloads for `dev` with `status` among recorded events.
pub fn status_events(
    events: &[vizora_sioclient::Event],
    dev: &str,
    status: &str,
) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| {
            e.name == "device:status"
                && e.args[0]["deviceId"] == dev
                && e.args[0]["status"] == status
        })
        .map(|e| e.args[0].clone())
        .collect()
}

/// The devices of every `device:status` offline among recorded events, in order.
pub fn offline_events(events: &[vizora_sioclient::Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.name == "device:status" && e.args[0]["status"] == "offline")
        .map(|e| e.args[0]["deviceId"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// What a dashboard shows after `events`: `device:status` sets one device,
/// `device:status:batch` sets all it lists. Device id → status.
pub fn dashboard_view(
    events: &[vizora_sioclient::Event],
) -> std::collections::HashMap<String, String> {
    let mut v = std::collections::HashMap::new();
    let mut set = |d: &serde_json::Value| {
        if let (Some(id), Some(st)) = (d["deviceId"].as_str(), d["status"].as_str()) {
            v.insert(id.to_string(), st.to_string());
        }
    };
    for e in events {
        match e.name.as_str() {
            "device:status" => set(&e.args[0]),
            "device:status:batch" => e.args[0]
                .as_array()
                .into_iter()
                .flatten()
                .for_each(&mut set),
            _ => {}
        }
    }
    v
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records every event `client` receives into `seen`, nothing thrown away, until `done(seen)`
/// holds; panics naming `what` (and listing what was seen) after `timeout`. Unlike
/// [`vizora_sioclient::Client::wait_for`], which consumes the events it skips, this keeps the
/// full record, so a test can later assert that something forbidden never happened.
pub async fn record_until(
    client: &vizora_sioclient::Client,
    seen: &mut Vec<vizora_sioclient::Event>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[vizora_sioclient::Event]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        seen.extend(client.drain_events());
        if done(seen) {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Some(e) => seen.push(e),
            None => panic!(
                "no {what} within {timeout:?} (connection closed: {}); seen: {seen:?}",
                !client.is_connected()
            ),
        }
    }
}

/// Sends one heartbeat and asserts it was acknowledged with success within `timeout`.
pub async fn assert_heartbeat_acked(screen: &vizora_sioclient::Client, timeout: Duration) {
    let ack = screen
        .emit_with_ack(
            "heartbeat",
            serde_json::json!({"metrics": {"cpuUsage": 1}}),
            timeout,
        )
        .await
        .unwrap();
    assert_eq!(ack["success"], true, "{ack}");
}
