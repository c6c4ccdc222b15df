//! The compose cluster's load balancer, for real: Debian's nginx running deploy/nginx/nginx.conf
//! (upstreams rendered to three gateway processes on loopback, one redis-server, one PostgreSQL
//! database). Through it a websocket screen and a long-polling screen connect, get commands sent
//! through another replica, survive a SIGTERM drain of their replica without being reported
//! offline, and the per-IP limiter keys on the client's address, not the proxy's. A session stays
//! on the replica that created it (the gateway names itself in the `vizora_replica` cookie) though
//! its handshake was refused elsewhere first, and a refusal ejects no replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vizora_gateway_tests::nginx::Nginx;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, ClientOptions, CloseReason, Transport, connect};

use crate::common::metrics_text;

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
    // One more load device than screens: the control of the end.
    let c = Cluster::start(3, n + 1, |o| o.env("DRAIN_SECONDS", 2)).await;
    let lb = Nginx::start(&c.replicas).await;

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
    commands_reach(&api, [(DEV_A1, &polling), (ws_dev.as_str(), ws)]).await;

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
    // Positive control: a device whose replica "died" now (one no screen uses). Its offline
    // shows a sweep ran past the deadline of every lease the drained replica left behind.
    let control = load_device(n);
    c.abandon_lease(&control, ORG_A).await;
    let mut events = Vec::new();
    record_until(&dash, &mut events, T, "the control device offline", |evs| {
        offline_events(evs).contains(&control)
    })
    .await;
    events.extend(dash.drain_events());
    let offline: Vec<_> = events
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
    let lb = Nginx::start(&c.replicas).await;

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
    let lb = Nginx::start(&c.replicas).await;
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

/// How long one 503 took a replica out of the old configuration's sticky pool (`max_fails=1
/// fail_timeout=10s`): the sessions below must outlive it, with a margin.
const EJECTION_WINDOW: Duration = Duration::from_secs(13);

/// A long-polling screen through nginx that keeps cookies like a browser, starting with the
/// stickiness cookie `vizora_lb=<key>`: every test client comes from 127.0.0.1, and distinct keys
/// spread them over the replicas as distinct client addresses would.
async fn polling_screen(lb: &Nginx, dev: &str, key: &str) -> Client {
    connect(
        ClientOptions::new(lb.url())
            .transport(Transport::Polling)
            .cookie("vizora_lb", key)
            .auth(json!({"token": device_token(dev, ORG_A)})),
    )
    .await
    .unwrap_or_else(|e| panic!("{dev} connects through nginx: {e}"))
}

/// The handshakes a replica refused for `reason`, by its own count.
async fn refusals(gw: &Gateway, reason: &str) -> f64 {
    crate::common::metric_sum(
        &metrics_text(gw).await,
        &format!("vizora_gateway_handshake_refusals_total{{reason=\"{reason}\""),
    )
    .unwrap_or(0.0)
}

/// Heartbeats from every screen, a round a second, until `EJECTION_WINDOW` has passed since
/// `from`: each ack is a POST and a fresh GET of the session through nginx, and answers only from
/// the replica holding the session (elsewhere the sid is unknown and the transport fails).
async fn heartbeat_through_the_window(screens: &[(String, Client)], from: Instant) {
    let mut round = 0;
    while round < 3 || from.elapsed() < EJECTION_WINDOW {
        for (dev, s) in screens {
            if let Err(e) = s.emit_with_ack("heartbeat", json!({}), T).await {
                panic!(
                    "{dev} lost its session {:?} after the refusal (round {round}): {e:?}",
                    from.elapsed()
                );
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A command sent through `api` (a replica other than the screens') reaches every screen
/// through nginx.
async fn commands_reach<'a>(
    api: &api::Api,
    screens: impl IntoIterator<Item = (&'a str, &'a Client)>,
) {
    for (dev, s) in screens {
        let (st, body) = api.command(dev, "reload", None).await;
        assert_eq!(st, 201, "{body}");
        assert_eq!(body["delivery"], "delivered", "{dev}: {body}");
        let cmd = s
            .wait_for("command", T)
            .await
            .unwrap_or_else(|| panic!("{dev} got its command through nginx"));
        assert_eq!(cmd["id"], body["commandId"], "{dev}");
    }
}

/// A rolling update: one replica drains, answering every new handshake 503 `draining` (for a
/// minute here: a long DRAIN_SETTLE_MS), and nginx retries those on another replica. Sixteen
/// long-polling screens that keep cookies connect through nginx meanwhile; those whose key points
/// at the draining replica get their session elsewhere, and every request of every session
/// follows the `vizora_replica` cookie to the replica that created it, past the 10 s for which
/// the old configuration ejected the draining replica (after which those polls went back to it:
/// "unknown sid", 2 screens in 16 lost).
#[tokio::test]
async fn polling_sessions_survive_a_draining_replica_behind_nginx() {
    let n = 16;
    let c = Cluster::start(3, n, |o| {
        o.env("DRAIN_SECONDS", 150).env("DRAIN_SETTLE_MS", 120_000)
    })
    .await;
    let lb = Nginx::start(&c.replicas).await;
    let d = 1;
    c.replicas[d].sigterm();
    let direct = format!("{}/socket.io/?EIO=4&transport=polling", c.replicas[d].url());
    eventually(T, "the replica to refuse handshakes while draining", || {
        let direct = direct.clone();
        async move {
            let st = reqwest::get(direct).await.ok()?.status();
            (st == 503).then_some(())
        }
    })
    .await;
    let before = refusals(&c.replicas[d], "draining").await;

    let mut screens = Vec::new();
    for i in 0..n {
        let dev = load_device(i);
        let s = polling_screen(&lb, &dev, &format!("k{i}")).await;
        screens.push((dev, s));
    }
    let connected = Instant::now();
    // The control: some handshakes were keyed to the draining replica, refused and retried (else
    // nothing here was at risk).
    let refused = refusals(&c.replicas[d], "draining").await - before;
    assert!(
        refused >= 1.0,
        "no handshake through nginx reached the draining replica"
    );
    for (dev, s) in &screens {
        let lease = c.lease(dev).await.unwrap();
        assert_ne!(lease["replica"], format!("r{d}"), "{dev}");
        assert_eq!(lease["sid"], s.sid(), "{dev}");
    }

    heartbeat_through_the_window(&screens, connected).await;
    commands_reach(
        &c.replicas[(d + 1) % 3].api(),
        screens.iter().map(|(dev, s)| (dev.as_str(), s)),
    )
    .await;
    for (dev, s) in &screens {
        assert_eq!(s.transport(), Transport::Polling, "{dev}");
    }
}

/// One 503 `server_busy` answered to one client through nginx: the replica at its
/// MAX_CONNECTIONS keeps serving the long-polling sessions it holds (the old `max_fails=1` took it
/// out of the sticky pool for 10 s, and their polls went to a replica that did not know them).
#[tokio::test]
async fn one_server_busy_refusal_moves_no_pinned_session() {
    let cap = 3;
    let c = Cluster::start(3, 2 * 3 + 2, |o| o.env("MAX_CONNECTIONS", cap)).await;
    let lb = Nginx::start(&c.replicas).await;

    // Screens connect until one replica is full; none was refused so far (every replica had
    // room), so each one's key points at the replica holding it.
    let mut screens: Vec<(String, Client, usize)> = Vec::new();
    let full = loop {
        let i = screens.len();
        let dev = load_device(i);
        let s = polling_screen(&lb, &dev, &format!("k{i}")).await;
        let at = replica_of(&c, &dev).await;
        screens.push((dev, s, at));
        if screens.iter().filter(|(_, _, r)| *r == at).count() == cap {
            break at;
        }
    };
    for g in &c.replicas {
        assert_eq!(refusals(g, "server_busy").await, 0.0);
    }
    let key_of_full = screens
        .iter()
        .position(|(_, _, r)| *r == full)
        .map(|i| format!("k{i}"))
        .unwrap();

    // One more screen, keyed to the full replica: refused there with 503 server_busy, retried by
    // nginx on another replica.
    let extra = load_device(screens.len());
    let s = polling_screen(&lb, &extra, &key_of_full).await;
    let refused_at = Instant::now();
    assert_eq!(refusals(&c.replicas[full], "server_busy").await, 1.0);
    let at = replica_of(&c, &extra).await;
    assert_ne!(at, full, "the refused handshake was retried elsewhere");
    screens.push((extra, s, at));

    let screens: Vec<(String, Client)> = screens.into_iter().map(|(d, s, _)| (d, s)).collect();
    heartbeat_through_the_window(&screens, refused_at).await;
    commands_reach(
        &c.replicas[(full + 1) % 3].api(),
        screens.iter().map(|(dev, s)| (dev.as_str(), s)),
    )
    .await;
}

/// The gateway names itself in the `vizora_replica` cookie on the handshakes it accepts, polling
/// (200) and websocket (101) alike; not on a refused handshake (429, 503), not on a request of an
/// existing session, and a websocket handshake leaves a cookie the client already holds alone.
#[tokio::test]
async fn accepted_handshakes_name_their_replica() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .replica("gw-a")
            .env("MAX_CONNECTIONS", 1)
            .env("CONNECT_RATE_PER_IP", 1)
            .env("CONNECT_BURST_PER_IP", 4),
    )
    .await;
    let want = "vizora_replica=gw-a; Path=/socket.io/; HttpOnly; SameSite=Lax";
    let set_cookies = |h: &reqwest::header::HeaderMap| -> Vec<String> {
        h.get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    let http = reqwest::Client::new();
    let polling = format!("{}/socket.io/?EIO=4&transport=polling", gw.url());
    let ws_url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        gw.url().replacen("http", "ws", 1)
    );

    // Polling handshake, then a poll of the session it opened.
    let r = http.get(&polling).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(set_cookies(r.headers()), vec![want]);
    let open = r.text().await.unwrap();
    let sid = serde_json::from_str::<serde_json::Value>(&open[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{polling}&sid={sid}"))
        .body("40")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        set_cookies(r.headers()),
        Vec::<String>::new(),
        "sid request"
    );

    // Websocket handshakes: 101 with the cookie, unless the client holds one already.
    let (ws, resp) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    assert_eq!(resp.status(), 101);
    let got: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(got, vec![want]);
    drop(ws);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", "vizora_replica=gw-b".parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers().get_all("set-cookie").iter().count(), 0);
    drop(ws);

    // 429: the per-IP burst (4) is spent after one more handshake or so.
    let mut codes = Vec::new();
    let limited = loop {
        let r = http.get(&polling).send().await.unwrap();
        codes.push(r.status().as_u16());
        match r.status().as_u16() {
            200 => assert_eq!(set_cookies(r.headers()), vec![want]),
            429 => break r,
            other => panic!("{other} {codes:?}"),
        }
        assert!(codes.len() < 20, "{codes:?}");
    };
    assert_eq!(set_cookies(limited.headers()), Vec::<String>::new(), "429");

    // 503 server_busy: one screen fills MAX_CONNECTIONS (once the per-IP bucket lets it in).
    let screen = eventually(T, "a screen connects", || async {
        connect(
            gw.client()
                .auth(json!({"token": device_token(DEV_A1, ORG_A)})),
        )
        .await
        .ok()
    })
    .await;
    // The socket counts itself in right after its CONNECT ack: wait for the 503.
    let r = eventually(T, "503 server_busy", || async {
        let r = http.get(&polling).send().await.ok()?;
        (r.status() == 503).then_some(r)
    })
    .await;
    assert_eq!(set_cookies(r.headers()), Vec::<String>::new(), "503");
    screen.disconnect().await;
}
