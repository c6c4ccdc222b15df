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
use vizora_sioclient::{Transport, connect};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
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
    for chunk in (20..n).collect::<Vec<_>>().chunks(100) {
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
