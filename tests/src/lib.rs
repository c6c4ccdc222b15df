//! The integration-test harness: starts what the tests need itself — `redis-server` processes on
//! free ports (`ports`: a server counts as started only once the process we spawned listens on
//! its port, so a test never talks to another test's server), PostgreSQL databases created per
//! test (the server is started if it is not running), SQLite files in temp dirs, and gateway
//! replicas as real processes that can be SIGKILLed or SIGTERMed — so tests run in parallel and
//! never share state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod cluster;
pub mod endpoint;
pub mod fixture;
pub mod gateway;
pub mod nginx;
pub mod ports;
pub mod postgres;
pub mod proxy;
pub mod redis_server;
pub mod scenarios;
pub mod sentinel;
pub mod tls;

use std::time::Duration;

pub use cluster::Cluster;
pub use fixture::*;
pub use gateway::{DbTarget, Gateway, GatewayOptions};
pub use ports::free_port;
pub use postgres::PgDatabase;
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
