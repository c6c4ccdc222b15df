//! The compose cluster's load balancer, for real: Debian's nginx running deploy/nginx/nginx.conf
//! (upstreams rendered to three gateway processes on loopback, one redis-server, one PostgreSQL
//! database). Through it a websocket screen and a long-polling screen connect, get commands sent
//! through another replica, survive a SIGTERM drain of their replica without being reported
//! offline, and the per-IP limiter keys on the client's address, not the proxy's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use vizora_gateway_tests::nginx::Nginx;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, CloseReason, Transport, connect};

const T: Duration = Duration::from_secs(20);

async fn device_via(lb: &Nginx, dev: &str, t: Transport) -> Option<Client> {
    connect(
        vizora_sioclient::ClientOptions::new(lb.url())
            .transport(t)
            .auth(json!({"token": device_token(dev, ORG_A)})),
    )
    .await
    .ok()
}

/// Index of the replica holding `dev`'s lease (`r0`..`r2`).
async fn replica_of(c: &Cluster, dev: &str) -> usize {
    eventually(T, &format!("a lease for {dev}"), || async {
        let lease = c.lease(dev).await?;
        let r = lease["replica"].as_str()?.strip_prefix('r')?.parse().ok()?;
        (lease.get("pending").is_none()).then_some(r)
    })
    .await
}

#[tokio::test]
async fn screens_through_nginx_get_commands_and_survive_a_drain() {
    let n = 9;
    let c = Cluster::start(3, n, |o| o.env("DRAIN_SECONDS", 2)).await;
    let ports: Vec<u16> = c.replicas.iter().map(|g| g.port).collect();
    let lb = Nginx::start(&ports).await;

    // Long-polling is pinned to one replica for the whole session, though the handshake has no
    // sid: every request of each session reaches the replica that minted its sid (a sid-keyed
    // hash would pass this for one session in three).
    for dev in [DEV_A2, DEV_A3] {
        let s = device_via(&lb, dev, Transport::Polling)
            .await
            .expect("a polling-only screen connects through the load balancer");
        assert_eq!(c.lease(dev).await.unwrap()["sid"], s.sid());
        s.disconnect().await;
    }
    let polling = device_via(&lb, DEV_A1, Transport::Polling)
        .await
        .expect("a polling-only screen connects through the load balancer");
    assert_eq!(polling.transport(), Transport::Polling);
    let r = replica_of(&c, DEV_A1).await;
    assert_eq!(c.lease(DEV_A1).await.unwrap()["sid"], polling.sid());
    // Websocket-only screens go to the least loaded replica: keep connecting until one shares
    // the polling screen's replica, so the drain below moves both.
    let mut websockets = Vec::new();
    let mut on_r = None;
    for i in 0..n {
        let dev = load_device(i);
        let s = device_via(&lb, &dev, Transport::Websocket)
            .await
            .expect("a websocket screen connects through the load balancer");
        let at = replica_of(&c, &dev).await;
        websockets.push((dev.clone(), s, at));
        if at == r {
            on_r = Some(websockets.len() - 1);
            break;
        }
    }
    let ws_index = on_r.expect("least_conn put a websocket screen on every replica");
    let others: Vec<usize> = (0..3).filter(|&i| i != r).collect();
    let dash = connect(
        c.replicas[others[0]]
            .client()
            .auth(json!({"token": user_token("ops", ORG_A)})),
    )
    .await
    .unwrap();
    dash.wait_for("device:status:batch", T).await.unwrap();

    // Commands sent through another replica reach both screens through the proxy.
    let api = c.replicas[others[1]].api();
    let (ws_dev, ws, _) = &websockets[ws_index];
    for (dev, client) in [(DEV_A1, &polling), (ws_dev.as_str(), ws)] {
        let (st, body) = api.command(dev, "reload", None).await;
        assert_eq!(st, 201, "{body}");
        assert_eq!(body["delivery"], "delivered", "{dev} is live elsewhere");
        let cmd = client
            .wait_for("command", T)
            .await
            .unwrap_or_else(|| panic!("{dev} got the command through the proxy"));
        assert_eq!(cmd["id"], body["commandId"]);
    }

    // Drain the replica both screens are on; they reconnect through the proxy elsewhere.
    let mut c = c;
    c.replicas[r].sigterm();
    let mut moved = Vec::new();
    for (dev, client, t) in [
        (DEV_A1.to_string(), &polling, Transport::Polling),
        (ws_dev.clone(), ws, Transport::Websocket),
    ] {
        let reason = client
            .closed(T)
            .await
            .expect("the drain closes the transport");
        assert_ne!(
            reason,
            CloseReason::ServerDisconnect,
            "{dev}: would stop retrying"
        );
        // socket.io-client retries; so do we, through the load balancer.
        let again = eventually(T, &format!("{dev} reconnects through nginx"), || {
            let dev = dev.clone();
            let lb = &lb;
            async move { device_via(lb, &dev, t).await }
        })
        .await;
        moved.push((dev, again));
    }
    let status = c.replicas[r]
        .wait_exit(T)
        .await
        .expect("the drained replica exits");
    assert!(status.success(), "{status:?}");
    for (dev, client) in &moved {
        let now = replica_of(&c, dev).await;
        assert_ne!(now, r, "{dev} moved off the drained replica");
        assert_eq!(c.lease(dev).await.unwrap()["sid"], client.sid());
        // The moved polling session works end to end through the proxy.
        let (st, body) = api.command(dev, "reload", None).await;
        assert_eq!(st, 201, "{body}");
        assert!(client.wait_for("command", T).await.is_some(), "{dev}");
    }
    tokio::time::sleep(Duration::from_secs(4)).await; // past lease TTL + sweep: nothing expires
    let offline: Vec<_> = dash
        .drain_events()
        .into_iter()
        .filter(|e| {
            e.name == "device:status"
                && e.args[0]["status"] == "offline"
                && moved
                    .iter()
                    .any(|(dev, _)| e.args[0]["deviceId"] == dev.as_str())
        })
        .collect();
    assert!(
        offline.is_empty(),
        "screens moved by a drain are never reported offline: {offline:?}"
    );
    for (dev, _) in &moved {
        assert_eq!(c.db_status(dev).await, "online");
    }
}

/// Engine.IO handshakes through the proxy from `from`, with an optional stickiness cookie.
async fn handshakes(
    lb: &Nginx,
    from: &str,
    cookie: Option<&str>,
    n: usize,
    forwarded_for: Option<&str>,
) -> Vec<u16> {
    let http = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut codes = Vec::new();
    for _ in 0..n {
        let mut req = http.get(format!("{}/socket.io/?EIO=4&transport=polling", lb.url()));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(f) = forwarded_for {
            req = req.header("x-forwarded-for", f);
        }
        codes.push(req.send().await.unwrap().status().as_u16());
    }
    codes
}

#[tokio::test]
async fn per_ip_limits_see_the_client_address_behind_nginx() {
    // The replicas trust the proxy (it connects from 127.0.0.1) and allow 5 handshakes per
    // client address at once, refilling one per second.
    let c = Cluster::start(3, 0, |o| {
        o.env("TRUSTED_PROXIES", "127.0.0.1")
            .env("CONNECT_RATE_PER_IP", 1)
            .env("CONNECT_BURST_PER_IP", 5)
    })
    .await;
    let ports: Vec<u16> = c.replicas.iter().map(|g| g.port).collect();
    let lb = Nginx::start(&ports).await;

    // One client (127.0.0.2) bursts: its handshakes are pinned to one replica, which refuses
    // the excess with 429.
    let burst = handshakes(&lb, "127.0.0.2", None, 12, None).await;
    assert!(burst[..5].iter().all(|&s| s == 200), "{burst:?}");
    assert!(burst.contains(&429), "the burst is limited: {burst:?}");
    // Another client (127.0.0.3), steered by the stickiness cookie onto that same replica, is not:
    // the replica keyed the burst on 127.0.0.2 from X-Forwarded-For, not on the proxy's address.
    let other = handshakes(&lb, "127.0.0.3", Some("vizora_lb=127.0.0.2"), 3, None).await;
    assert_eq!(
        other,
        vec![200, 200, 200],
        "a different client behind the same proxy"
    );
    // And the limited client stays limited on that replica.
    let again = handshakes(&lb, "127.0.0.2", None, 1, None).await;
    assert_eq!(again, vec![429]);
}

#[tokio::test]
async fn a_client_cannot_spoof_its_address_through_nginx() {
    let c = Cluster::start(3, 0, |o| {
        o.env("TRUSTED_PROXIES", "127.0.0.1")
            .env("CONNECT_RATE_PER_IP", 1)
            .env("CONNECT_BURST_PER_IP", 5)
    })
    .await;
    let ports: Vec<u16> = c.replicas.iter().map(|g| g.port).collect();
    let lb = Nginx::start(&ports).await;
    let burst = handshakes(&lb, "127.0.0.2", None, 12, None).await;
    assert!(burst.contains(&429), "{burst:?}");
    // 127.0.0.3 claims to be the limited 127.0.0.2; nginx appends the address it saw, and the
    // replica believes only the hop its trusted proxy added.
    let spoofed = handshakes(
        &lb,
        "127.0.0.3",
        Some("vizora_lb=127.0.0.2"),
        3,
        Some("127.0.0.2"),
    )
    .await;
    assert_eq!(spoofed, vec![200, 200, 200]);
}
