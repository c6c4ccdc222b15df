//! Issue 6, failover part: Redis as managed services and Sentinel run it — TLS (`rediss://`
//! trusted through `SSL_CERT_FILE`, or `#insecure`), and a Sentinel failover under connected
//! screens and dashboards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vizora_gateway_tests::endpoint::ManagedEndpoint;
use vizora_gateway_tests::scenarios::{broadcast_reaches, command_reaches};
use vizora_gateway_tests::sentinel::{MASTER, SentinelSet};
use vizora_gateway_tests::tls::TestCerts;
use vizora_gateway_tests::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_cluster_runs_on_tls_redis_trusted_through_ssl_cert_file() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs).await;
    let url = redis.tls_url();
    let ca = certs.ca_cert.display().to_string();
    let c = Cluster::start_on(redis, &url, 2, 0, |o| o.env("SSL_CERT_FILE", &ca)).await;
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let dev = ws_device(b.client(), DEV_A1).await;
    let dash = ws_dashboard(a.client(), ORG_A).await;

    // Presence written over TLS by B is read over TLS by A.
    let (st, presence) = a
        .api()
        .get(&format!("/api/internal/devices/{DEV_A1}/presence"))
        .await;
    assert_eq!(st, 200, "{presence}");
    assert_eq!(presence["status"], "online", "{presence}");
    // The adapter's pub/sub runs over TLS too: HTTP on A reaches a socket on B.
    command_reaches(a, DEV_A1, &dev).await;
    broadcast_reaches(b, &[&dev, &dash], "tls:broadcast").await;
    for r in &c.replicas {
        let (st, body) = r.api().get_text("/api/health/ready", &[]).await;
        assert_eq!(st, 200, "{body}");
    }
    // The lease really is in the TLS server (read on its plain port).
    assert!(c.lease(DEV_A1).await.is_some());
}

#[tokio::test]
async fn an_untrusted_redis_certificate_is_refused_unless_insecure_is_asked_for() {
    let certs = TestCerts::generate();
    let redis = RedisServer::start_tls(&certs).await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;

    // No SSL_CERT_FILE: the test CA is unknown, so the gateway never talks to this Redis.
    let refused = Gateway::launch(GatewayOptions::new(db.clone()).redis(&redis.tls_url())).await;
    eventually(
        Duration::from_secs(20),
        "the gateway to report the unknown certificate issuer",
        || async {
            let logs = refused.logs();
            (logs.contains("Redis adapter not ready") && logs.contains("UnknownIssuer"))
                .then_some(())
        },
    )
    .await;

    // `#insecure` skips verification, and says so in the log.
    let insecure_url = format!("{}#insecure", redis.tls_url());
    let g = Gateway::start(GatewayOptions::new(db).redis(&insecure_url)).await;
    let (st, body) = g.api().get_text("/api/health/ready", &[]).await;
    assert_eq!(st, 200, "{body}");
    assert!(
        g.logs().contains("WITHOUT certificate verification"),
        "{}",
        g.logs()
    );
    let dev = ws_device(g.client(), DEV_A1).await;
    command_reaches(&g, DEV_A1, &dev).await;
}

#[tokio::test]
async fn a_sentinel_failover_strands_no_screen_and_reports_nobody_offline() {
    let (mut set, replica) = SentinelSet::start().await;
    let sentinels = set.sentinels_env();
    // A lease TTL comfortably above the failover time (down-after 1 s + election): this test is
    // about following the new primary, not about leases that expired during the outage.
    let c = Cluster::start_connected(replica, 2, 4, |o| {
        o.env("REDIS_SENTINELS", &sentinels)
            .env("REDIS_SENTINEL_MASTER", MASTER)
            .env("LEASE_TTL_MS", 10_000)
    })
    .await;
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let dash_a = ws_dashboard(a.client(), ORG_A).await;
    let dash_b = ws_dashboard(b.client(), ORG_A).await;
    let mut screens = Vec::new();
    for i in 0..4 {
        let r = &c.replicas[i % 2];
        screens.push(ws_device(r.client(), &load_device(i)).await);
    }
    for i in 0..4 {
        eventually(T, "every screen online in Redis", || async {
            c.lease(&load_device(i)).await.map(|_| ())
        })
        .await;
    }
    command_reaches(a, &load_device(1), &screens[1]).await;
    set.sync_replica().await;

    set.kill_primary_and_fail_over().await;

    // Both replicas follow the Sentinel to the promoted node: commands and broadcasts cross
    // replicas again (screen 0 is on A, screen 1 on B).
    command_reaches(a, &load_device(1), &screens[1]).await;
    command_reaches(b, &load_device(0), &screens[0]).await;
    broadcast_reaches(
        b,
        &[&screens[0], &screens[1], &dash_a, &dash_b],
        "after:failover",
    )
    .await;
    // A screen that connects after the failover is seen by the other replica's dashboard.
    // Everything dashboard A receives is kept for the final check.
    let late = ws_device(b.client(), DEV_A1).await;
    let mut log_a = Vec::new();
    while status_events(&log_a, DEV_A1, "online").is_empty() {
        let e = dash_a.next_event(T).await;
        log_a.push(e.expect("the late screen's online event on A's dashboard"));
    }

    // Leave the sweeps time to do damage if they were going to (several sweep intervals).
    tokio::time::sleep(Duration::from_secs(3)).await;
    log_a.extend(dash_a.drain_events());
    for (dash, events) in [(&dash_a, log_a), (&dash_b, dash_b.drain_events())] {
        for i in 0..4 {
            assert!(
                status_events(&events, &load_device(i), "offline").is_empty(),
                "no false offline for {}",
                load_device(i)
            );
        }
        assert!(dash.is_connected());
    }
    for (i, s) in screens.iter().enumerate() {
        assert!(s.is_connected(), "screen {i} kept its socket");
        assert_eq!(c.db_status(&load_device(i)).await, "online");
        assert!(c.lease(&load_device(i)).await.is_some(), "lease of {i}");
        assert_eq!(c.notifications(&load_device(i), "device_offline").await, 0);
    }
    assert!(late.is_connected());
    for r in &c.replicas {
        let (st, body) = r.api().get_text("/api/health/ready", &[]).await;
        assert_eq!(st, 200, "{body}");
    }
}

/// Sends `REPLICAOF` to a node (`None`: become a primary).
async fn replicaof(node: &RedisServer, primary: Option<u16>) {
    let mut cmd = redis::cmd("REPLICAOF");
    match primary {
        Some(p) => cmd.arg("127.0.0.1").arg(p),
        None => cmd.arg("NO").arg("ONE"),
    };
    let _: String = cmd.query_async(&mut node.conn().await).await.unwrap();
}

#[tokio::test]
async fn a_managed_endpoint_that_moves_to_an_up_to_date_replica_is_followed() {
    let old = RedisServer::start().await;
    let new = RedisServer::start_replica_of(&old).await;
    let endpoint = ManagedEndpoint::start(old.port).await;
    let url = endpoint.url();
    let c = Cluster::start_on(new, &url, 2, 4, |o| o.env("LEASE_TTL_MS", 10_000)).await;
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let dash = ws_dashboard(a.client(), ORG_A).await;
    let mut screens = Vec::new();
    for i in 0..4 {
        screens.push(ws_device(c.replicas[i % 2].client(), &load_device(i)).await);
    }
    command_reaches(a, &load_device(1), &screens[1]).await;
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut old.conn().await)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the replica is up to date");

    // The provider's failover: promote the replica, repoint the endpoint, demote the old
    // primary. The gateways' open connections still reach the old node, which now answers
    // READONLY to writes and `ROLE` with "slave".
    replicaof(&c.redis, None).await;
    endpoint.switch_to(c.redis.port);
    replicaof(&old, Some(c.redis.port)).await;

    // Writes work again: a screen connecting now takes a lease (an acquire is a write) and
    // is reported online on the other replica's dashboard.
    let late = ws_device(b.client(), DEV_A1).await;
    let mut log = Vec::new();
    while status_events(&log, DEV_A1, "online").is_empty() {
        let e = dash.next_event(T).await;
        log.push(e.expect("the late screen's online event on A's dashboard"));
    }
    assert!(
        c.lease(DEV_A1).await.is_some(),
        "the lease is on the new primary"
    );
    command_reaches(a, DEV_A1, &late).await;
    command_reaches(b, &load_device(0), &screens[0]).await;
    broadcast_reaches(a, &[&screens[0], &screens[1], &late], "after:switch").await;
    assert!(
        a.logs().contains("no longer the primary") || b.logs().contains("no longer the primary"),
        "a replica noticed the demoted node"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    log.extend(dash.drain_events());
    for (i, s) in screens.iter().enumerate() {
        assert!(s.is_connected(), "screen {i} kept its socket");
        assert!(
            status_events(&log, &load_device(i), "offline").is_empty(),
            "no false offline for screen {i}"
        );
        assert!(c.lease(&load_device(i)).await.is_some(), "lease of {i}");
    }
    for r in &c.replicas {
        let (st, body) = r.api().get_text("/api/health/ready", &[]).await;
        assert_eq!(st, 200, "{body}");
    }
}

#[tokio::test]
async fn sentinel_and_the_primary_it_names_are_reached_over_tls() {
    let certs = TestCerts::generate();
    let (mut set, replica) = SentinelSet::start_with(Some(&certs)).await;
    let sentinels = set.sentinels_env();
    let ca = certs.ca_cert.display().to_string();
    let c = Cluster::start_connected(replica, 2, 0, |o| {
        o.env("REDIS_SENTINELS", &sentinels)
            .env("REDIS_SENTINEL_MASTER", MASTER)
            .env("REDIS_SENTINEL_TLS", "true")
            .env("SSL_CERT_FILE", &ca)
            .env("LEASE_TTL_MS", 10_000)
    })
    .await;
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let dev = ws_device(b.client(), DEV_A1).await;
    command_reaches(a, DEV_A1, &dev).await;
    set.sync_replica().await;

    set.kill_primary_and_fail_over().await;

    command_reaches(a, DEV_A1, &dev).await;
    assert!(dev.is_connected());
    assert!(c.lease(DEV_A1).await.is_some());
}
