//! Measurements, not assertions (run on demand; they print their figures):
//!
//! ```sh
//! cargo test -p vizora-gateway-tests --release --test capacity -- --ignored --nocapture
//! ```
//!
//! `idle_socket_memory`: resident memory of one replica (embedded mode) before and after N idle
//! device sockets, reported per socket. Tune with `CAPACITY_SOCKETS` (default 2000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, Transport, connect};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Websocket device sockets for load devices `ids`, opened 100 at a time.
async fn connect_load_devices(gw: &Gateway, ids: std::ops::Range<usize>) -> Vec<Client> {
    let mut clients = Vec::with_capacity(ids.len());
    for chunk in ids.collect::<Vec<_>>().chunks(100) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let opts = gw
                .client()
                .transport(Transport::Websocket)
                .auth(json!({"token": device_token(&load_device(i), ORG_A)}));
            tasks.push(tokio::spawn(async move { connect(opts).await }));
        }
        for t in tasks {
            clients.push(t.await.unwrap().unwrap());
        }
    }
    clients
}

#[tokio::test]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn idle_socket_memory() {
    let n: usize = std::env::var("CAPACITY_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", n).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("CONNECT_RATE_GLOBAL", 100_000)
            .env("CONNECT_BURST_GLOBAL", 100_000)
            .env("PING_INTERVAL_MS", 25_000)
            .env("PING_TIMEOUT_MS", 20_000),
    )
    .await;
    let pid = gw.pid().unwrap();
    // Warm up allocator arenas and lazy statics with a few sockets first.
    let mut clients = Vec::with_capacity(n);
    for i in 0..20 {
        let t = device_token(&load_device(i), ORG_A);
        clients.push(
            connect(
                gw.client()
                    .transport(Transport::Websocket)
                    .auth(json!({"token": t})),
            )
            .await
            .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid);
    let started = tokio::time::Instant::now();
    clients.extend(connect_load_devices(&gw, 20..n).await);
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    let added = (n - 20) as f64;
    println!(
        "idle_socket_memory: {n} device sockets; RSS {before} KiB -> {after} KiB; {:.1} KiB per socket; {} connects in {connect_secs:.1} s ({:.0}/s)",
        (after.saturating_sub(before)) as f64 / added,
        n - 20,
        added / connect_secs
    );
    assert!(clients.iter().all(|c| c.is_connected()));
}

/// Heartbeat round trips against one replica in cluster mode (a real redis-server): every
/// heartbeat is one Lua script (lease check, status JSON, latest sample, command drain) and no
/// database work. `CAPACITY_SOCKETS` devices (default 1000) each send heartbeats back to back for
/// `CAPACITY_SECONDS` (default 10); prints acks per second and latency percentiles. With all
/// clients on the same 2 cores as the gateway and Redis, this is a floor, not a ceiling: the
/// fleet's real rate is one heartbeat per device per 15 s (20,000 screens ≈ 1,300/s).
#[tokio::test]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn heartbeat_throughput() {
    let n: usize = std::env::var("CAPACITY_SOCKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = std::env::var("CAPACITY_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let redis = RedisServer::start().await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", n).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .redis(&redis.url())
            .env("CONNECT_RATE_GLOBAL", 100_000)
            .env("CONNECT_BURST_GLOBAL", 100_000)
            .env("MESSAGE_RATE_PER_SOCKET", 1_000_000)
            .env("MESSAGE_BURST_PER_SOCKET", 1_000_000),
    )
    .await;
    let clients = connect_load_devices(&gw, 0..n).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in clients {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0u64;
            while tokio::time::Instant::now() < deadline {
                let t0 = tokio::time::Instant::now();
                let hb = json!({"metrics": {"cpuUsage": 12.5, "memoryUsage": 40.0}, "currentContent": "c-img"});
                match c.emit_with_ack("heartbeat", hb, Duration::from_secs(10)).await {
                    Ok(a) if a["success"] == true => lat.push(t0.elapsed().as_micros() as u64),
                    _ => failed += 1,
                }
            }
            (lat, failed, c)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f, _c) = t.await.unwrap();
        all.extend(l);
        failed += f;
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "heartbeat_throughput: {n} devices, {secs} s: {} acks ({:.0}/s), {failed} failed; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.len(),
        all.len() as f64 / secs as f64,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    assert_eq!(failed, 0);
}
