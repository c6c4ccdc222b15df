//! The edge facing the internet (issue 8): clients behind proxies, cross-site WebSocket
//! hijacking, connections that never speak, and the TCP ceilings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vizora_gateway_tests::proxy::PausableProxy;
use vizora_gateway_tests::*;
use vizora_sioclient::{ConnectError, Transport, connect};

/// A polling handshake as a proxy on this host would forward it.
async fn handshake_via(gw: &Gateway, forwarded_for: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/socket.io/?EIO=4&transport=polling", gw.url()))
        .header("X-Forwarded-For", forwarded_for)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Behind a trusted proxy (the test's loopback peer), the client is the right-most untrusted
/// hop: a client writing a new left hop on every attempt still meets its own per-IP limit, and
/// other clients behind the same proxy keep their own buckets. The list takes CIDR ranges and
/// plain addresses, IPv4 and IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_left_hops_share_the_real_clients_bucket() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1/32, ::1/128")
            .env("CONNECT_RATE_PER_IP", 1)
            .env("CONNECT_BURST_PER_IP", 2),
    )
    .await;
    let real = "203.0.113.9";
    for i in 0..2 {
        let xff = format!("198.51.100.{i}, {real}");
        assert_eq!(handshake_via(&gw, &xff).await, 200, "attempt {i} ({xff})");
    }
    for forged in ["198.51.100.77", "127.0.0.1", "10.1.1.1, 198.51.100.78"] {
        let xff = format!("{forged}, {real}, 10.0.0.5");
        assert_eq!(
            handshake_via(&gw, &xff).await,
            429,
            "a forged left hop must not buy a fresh bucket ({xff})"
        );
    }
    assert_eq!(
        handshake_via(&gw, "203.0.113.9, 198.51.100.50").await,
        200,
        "another client behind the proxy has its own bucket"
    );
}

/// Behind an ingress that hides client addresses (it replaced `X-Forwarded-For` with a node
/// address inside `TRUSTED_PROXIES`, or sent none), the client address is unknown: the per-IP
/// burst does not apply, so a fleet's reconnect storm is not throttled as one venue, while the
/// global burst still refuses with 503 `server_busy`. A visible address keeps its per-IP bucket.
/// Every hidden handshake is counted, and the warning is logged once, not per handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_client_addresses_skip_the_per_ip_limit_but_not_the_global_one() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("TRUSTED_PROXIES", "127.0.0.0/8,10.0.0.0/8")
            .env("CONNECT_RATE_PER_IP", 1)
            .env("CONNECT_BURST_PER_IP", 10)
            .env("CONNECT_RATE_GLOBAL", 1)
            .env("CONNECT_BURST_GLOBAL", 60),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/socket.io/?EIO=4&transport=polling", gw.url());
    let attempt = |xff: Option<&'static str>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut req = http.get(url);
            if let Some(x) = xff {
                req = req.header("X-Forwarded-For", x);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let cause = if status == 200 {
                String::new()
            } else {
                r.json::<serde_json::Value>().await.unwrap()["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            (status, cause)
        }
    };
    // A visible client: its own bucket of 10, then 429.
    let mut visible = Vec::new();
    for _ in 0..15 {
        visible.push(attempt(Some("203.0.113.9")).await.0);
    }
    assert_eq!(
        visible.iter().filter(|s| **s == 200).count(),
        10,
        "{visible:?}"
    );
    assert_eq!(
        visible.iter().filter(|s| **s == 429).count(),
        5,
        "{visible:?}"
    );

    // 40 at once through a node address, and one with no header from the trusted peer: all in.
    let hidden =
        futures_util::future::join_all((0..40).map(|_| attempt(Some("10.20.30.40")))).await;
    assert!(hidden.iter().all(|(s, _)| *s == 200), "{hidden:?}");
    assert_eq!(attempt(None).await.0, 200, "no header from a trusted peer");

    // The global burst (60, of which 51 are spent) still holds for hidden clients: 503, never 429.
    let mut rest = Vec::new();
    for _ in 0..20 {
        rest.push(attempt(Some("10.20.30.40")).await);
    }
    assert!(
        rest.iter()
            .all(|(s, c)| *s == 200 || (*s == 503 && c == "server_busy")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|(s, _)| *s == 503),
        "global burst: {rest:?}"
    );

    let text = crate::common::metrics_text(&gw).await;
    assert_eq!(
        crate::common::metric_sum(&text, "vizora_gateway_handshakes_unknown_client_total"),
        Some(61.0),
        "every hidden handshake counted, the visible ones not"
    );
    assert_eq!(
        gw.logs().matches("no visible client address").count(),
        1,
        "one warning, not one per handshake"
    );
}

/// The metrics exemption is for loopback clients, not loopback peers: a proxy on this host
/// forwarding an internet client gets 403 without the token, whatever the client writes
/// (including `127.0.0.1`) and with a wrong token; with or without `TRUSTED_PROXIES`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_refused_through_a_loopback_proxy() {
    let token = "metrics-token-metrics-token-0123456789";
    for trusted in [Some("127.0.0.1"), None] {
        let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
        let mut opts = GatewayOptions::new(db).env("METRICS_TOKEN", token);
        if let Some(t) = trusted {
            opts = opts.env("TRUSTED_PROXIES", t);
        }
        let gw = Gateway::start(opts).await;
        // Through a real TCP proxy on this host (the gateway's peer is the proxy's loopback
        // address), and straight from the test (a loopback peer, as nginx on the box would be).
        let proxy = PausableProxy::start(&format!("127.0.0.1:{}", gw.port)).await;
        let bases = [gw.url(), format!("http://127.0.0.1:{}", proxy.port)];
        for (base, path) in bases
            .iter()
            .flat_map(|b| [(b, "/metrics"), (b, "/api/internal/metrics")])
        {
            let api = vizora_gateway_tests::api::Api::new(base);
            for xff in [
                "203.0.113.9",
                "127.0.0.1, 203.0.113.9",
                "127.0.0.1,203.0.113.9",
            ] {
                for auth in [None, Some("Bearer wrong"), Some(token)] {
                    let mut h = vec![("x-forwarded-for", xff)];
                    h.extend(auth.map(|a| ("authorization", a)));
                    let (s, text) = api.get_text(path, &h).await;
                    assert_eq!(s, 403, "{trusted:?} {base}{path} {xff} {auth:?}: {text}");
                }
                let bearer = format!("Bearer {token}");
                let (s, _) = api
                    .get_text(
                        path,
                        &[("x-forwarded-for", xff), ("authorization", &bearer)],
                    )
                    .await;
                assert_eq!(s, 200, "{trusted:?} {path} {xff}: the token still works");
            }
            let (s, _) = api.get_text(path, &[]).await;
            assert_eq!(
                s, 200,
                "{trusted:?} {base}{path}: a loopback client, nothing forwarded"
            );
        }
    }
}

/// Cross-site WebSocket hijacking: a dashboard authenticated only by the session cookie is
/// accepted from a `CORS_ORIGIN` page and refused with 403 from any other, over websocket and
/// polling; an `auth.token` dashboard on the foreign page is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_dashboards_only_from_allowed_origins() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).env(
        "CORS_ORIGIN",
        "https://dash.vizora.test,http://localhost:3001",
    ))
    .await;
    let token = user_token("user-a", ORG_A);
    let cookie = format!("theme=dark; vizora_auth_token={token}");
    for t in TRANSPORTS {
        let c = connect(
            gw.client()
                .transport(t)
                .header("Cookie", cookie.clone())
                .header("Origin", "https://dash.vizora.test"),
        )
        .await
        .unwrap_or_else(|e| panic!("{t:?}: allowed origin must connect: {e}"));
        expect_event(&c, "device:status:batch", "allowed origin").await;
        c.disconnect().await;
        for origin in [
            "http://evil.example",
            "null",
            "https://dash.vizora.test.evil.example",
        ] {
            let r = connect(
                gw.client()
                    .transport(t)
                    .header("Cookie", cookie.clone())
                    .header("Origin", origin),
            )
            .await;
            match r {
                Err(ConnectError::Http { status, body, .. }) => {
                    assert_eq!(status, 403, "{t:?} {origin}: {body}");
                }
                Err(e) => panic!("{t:?} {origin}: expected HTTP 403, got {e:?}"),
                Ok(c) => panic!("{t:?} {origin}: a foreign page rode the cookie ({c:?})"),
            }
        }
        let c = connect(
            gw.client()
                .transport(t)
                .header("Origin", "http://evil.example")
                .auth(json!({"token": token})),
        )
        .await
        .unwrap_or_else(|e| panic!("{t:?}: auth.token sessions are unaffected: {e}"));
        c.disconnect().await;
    }
}

/// Waits until the peer closes `s` (EOF or reset), reading and discarding anything sent.
async fn closed_by_server(mut s: TcpStream) {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The sum of the metric lines starting with `line_start`, once it reaches `at_least`.
async fn metric_reaches(gw: &Gateway, line_start: &str, at_least: f64) -> f64 {
    let url = format!("{}/metrics", gw.url());
    eventually(T, &format!("{line_start} >= {at_least}"), || {
        let url = url.clone();
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            let v = metric_sum(&text, line_start).unwrap_or(0.0);
            (v >= at_least).then_some(v)
        }
    })
    .await
}

/// Slowloris: 200 connections that send half a request and 50 that send nothing are closed by
/// the header timeout, while screens keep connecting and working over both transports (and stay
/// connected past the timeouts); each close is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_request_connections_are_closed() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("HTTP_HEADER_TIMEOUT_MS", 1500)
            .env("HTTP_IDLE_TIMEOUT_MS", 3000),
    )
    .await;
    let addr = format!("127.0.0.1:{}", gw.port);
    let mut slow = Vec::new();
    for i in 0..250 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if i < 200 {
            s.write_all(
                b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: gw\r\nX-Slow: ",
            )
            .await
            .unwrap();
        }
        slow.push(tokio::spawn(closed_by_server(s)));
    }
    // Screens connect and work while the slow connections are held.
    let ws = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let poll = device(&gw, DEV_A2, ORG_A, Transport::Polling).await;
    for h in slow {
        tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("a slow connection was not closed by the header timeout")
            .unwrap();
    }
    // The screens outlived every timer: still connected, still answered.
    for (c, what) in [(&ws, "websocket"), (&poll, "polling")] {
        let ack = c
            .emit_with_ack("heartbeat", json!({"metrics": {"cpuUsage": 1}}), T)
            .await
            .unwrap_or_else(|e| panic!("{what} screen after the timeouts: {e}"));
        assert_ok_ack(&ack, what);
    }
    metric_reaches(
        &gw,
        "vizora_gateway_tcp_closed_total{reason=\"header_timeout\"",
        250.0,
    )
    .await;
    // A new screen still connects.
    let late = device(&gw, DEV_A3, ORG_A, Transport::Websocket).await;
    late.disconnect().await;
}

/// A keep-alive connection that finished its requests and stays idle is closed by the idle
/// timeout (a connection that never became a Socket.IO session holds nothing for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("HTTP_HEADER_TIMEOUT_MS", 60_000)
            .env("HTTP_IDLE_TIMEOUT_MS", 1000),
    )
    .await;
    let mut s = TcpStream::connect(format!("127.0.0.1:{}", gw.port))
        .await
        .unwrap();
    s.write_all(b"GET /api/health/live HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    tokio::time::timeout(Duration::from_secs(30), closed_by_server(s))
        .await
        .expect("an idle keep-alive connection was not closed");
    metric_reaches(
        &gw,
        "vizora_gateway_tcp_closed_total{reason=\"idle_timeout\"",
        1.0,
    )
    .await;
}

/// The per-address TCP ceiling is enforced at accept: above it, new connections from that
/// address are closed at once and counted; freed slots are usable again.
/// The replica-wide ceiling works the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_ceilings_are_enforced_at_accept() {
    for (var, reason) in [
        ("MAX_TCP_CONNECTIONS_PER_IP", "max_tcp_connections_per_ip"),
        ("MAX_TCP_CONNECTIONS", "max_tcp_connections"),
    ] {
        let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
        let gw = Gateway::start(
            GatewayOptions::new(db)
                .env(var, 20)
                .env("HTTP_HEADER_TIMEOUT_MS", 60_000),
        )
        .await;
        let addr = format!("127.0.0.1:{}", gw.port);
        // The harness's start-up probe may still hold a keep-alive slot: fill up to the ceiling.
        let mut held = Vec::new();
        let refused = loop {
            let s = TcpStream::connect(&addr).await.unwrap();
            let mut probe = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(300), s.peek(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break s,
                _ => held.push(s),
            }
            assert!(
                held.len() <= 20,
                "{var}: more than 20 connections held open"
            );
        };
        drop(refused);
        // Closing the held connections frees their slots.
        drop(held);
        metric_reaches(
            &gw,
            &format!("vizora_gateway_tcp_closed_total{{reason=\"{reason}\""),
            1.0,
        )
        .await;
        let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
        c.disconnect().await;
    }
}

// ---- Small gaps ----

/// A device may not leave its own `device:{id}` room (commands reach it through that room);
/// it stays reachable after the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_leave_its_own_room() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let ack = c
        .emit_with_ack("leave:room", json!({"room": format!("device:{DEV_A1}")}), T)
        .await
        .unwrap();
    assert_eq!(
        assert_err_ack(&ack, "leave own room"),
        "A device cannot leave its own device room"
    );
    let (s, b) = gw.api().command(DEV_A1, "reload", None).await;
    assert_eq!(s, 201, "{b}");
    let cmd = expect_event(&c, "command", "command after the refused leave").await;
    assert_eq!(cmd["type"], "reload");
}

/// A broadcast goes on past a device whose command cannot be stored (here its queue key holds a
/// string, so Redis refuses the push) and reports `{devicesOnline, delivered, queued, failed}`;
/// only a broadcast where nothing went out at all is a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_goes_on_past_a_failed_device() {
    let redis = RedisServer::start().await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).redis(&redis.url())).await;
    let online = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(format!("device:commands:{DEV_A2}"))
        .arg("not a list")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (s, b) = gw
        .api()
        .post(
            "/api/commands/broadcast",
            json!({"deviceIds": [DEV_A1, DEV_A2, DEV_A3], "command": "reload"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["devicesOnline"], 1, "{b}");
    assert_eq!(b["delivered"], 1, "{b}");
    assert_eq!(b["queued"], 1, "{b}");
    assert_eq!(b["failed"], 1, "{b}");
    assert_eq!(b["failedDeviceIds"], json!([DEV_A2]), "{b}");
    assert!(b["commandIds"][DEV_A3].is_string(), "{b}");
    expect_event(&online, "command", "the online device got its command").await;
    let (s, b) = gw
        .api()
        .post(
            "/api/commands/broadcast",
            json!({"deviceIds": [DEV_A2], "command": "reload"}),
        )
        .await;
    assert_eq!(s, 503, "nothing went out: {b}");
}

/// `/api/health` counts `uptime` from the process start (not from the first health request) and
/// names what each dependency is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_real_uptime_and_dependency_kinds() {
    let redis = RedisServer::start().await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).redis(&redis.url())).await;
    // The process was up before it answered the harness's liveness probe.
    let since_live = std::time::Instant::now();
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    c.disconnect().await;
    let lower_bound = since_live.elapsed().as_secs_f64();
    let (s, h) = gw.api().get("/api/health").await;
    assert_eq!(s, 200, "{h}");
    let uptime = h["uptime"].as_f64().unwrap();
    assert!(
        uptime >= lower_bound,
        "uptime {uptime} s is less than the {lower_bound} s the process has been answering"
    );
    let deps = &h["dependencies"];
    assert_eq!(deps["store"]["kind"], "redis", "{h}");
    assert_eq!(deps["redis"]["status"], "healthy", "{h}");
    assert_eq!(deps["database"]["kind"], "sqlite", "{h}");
    assert_eq!(deps["storage"]["kind"], "local", "{h}");
}

/// The playlist cache never outlives an assignment changed without a push: unassigned, the
/// device is told it has none; reassigned, it gets the new one (on request and on reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlist_cache_follows_the_device_row() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db.clone())).await;
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let first = expect_event(&c, "playlist:update", "connect").await;
    assert_eq!(first["playlist"]["id"], PLAYLIST_MAIN);
    let ack = c
        .emit_with_ack("playlist:request", json!({}), T)
        .await
        .unwrap();
    assert_eq!(
        ack["data"]["playlist"]["id"], PLAYLIST_MAIN,
        "cached: {ack}"
    );
    let conn = db_conn(&db).await;
    let set = |pid: Option<&'static str>| {
        let conn = conn.clone();
        async move {
            rows(
                &conn,
                r#"UPDATE devices SET "currentPlaylistId" = $1 WHERE "id" = $2"#,
                vec![pid.map(str::to_string).into(), DEV_A1.into()],
            )
            .await;
        }
    };
    set(None).await;
    let ack = c
        .emit_with_ack("playlist:request", json!({}), T)
        .await
        .unwrap();
    assert_ok_ack(&ack, "unassigned");
    assert!(ack["data"]["playlist"].is_null(), "unassigned: {ack}");
    set(Some(PLAYLIST_ZONE)).await;
    let ack = c
        .emit_with_ack("playlist:request", json!({}), T)
        .await
        .unwrap();
    assert_eq!(
        ack["data"]["playlist"]["id"], PLAYLIST_ZONE,
        "reassigned: {ack}"
    );
    c.disconnect().await;
    let again = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let p = expect_event(&again, "playlist:update", "reconnect").await;
    assert_eq!(p["playlist"]["id"], PLAYLIST_ZONE);
}

// ---- The shipped limits ----

/// With every shipped default limit, a small fleet works end to end: screens over both
/// transports, a dashboard, heartbeats at their pace, a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_limits_serve_a_small_fleet() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).shipped_limits()).await;
    let dash = dashboard(&gw, "user-a", ORG_A, Transport::Websocket).await;
    let a1 = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let a2 = device(&gw, DEV_A2, ORG_A, Transport::Polling).await;
    for _ in 0..5 {
        assert_heartbeat_works(&a1, "a1").await;
        assert_heartbeat_works(&a2, "a2").await;
    }
    a1.disconnect().await;
    let a1 = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    assert_heartbeat_works(&a1, "a1 after a reconnect").await;
    expect_event(&dash, "device:status", "dashboard sees transitions").await;
}

/// The global handshake rate: above its burst, handshakes get 503 `server_busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_connect_rate_answers_server_busy() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .shipped_limits()
            .env("CONNECT_RATE_GLOBAL", 1)
            .env("CONNECT_BURST_GLOBAL", 2),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/socket.io/?EIO=4&transport=polling", gw.url());
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = http.get(&url).send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = if status == 200 {
            json!(null)
        } else {
            r.json().await.unwrap()
        };
        statuses.push((status, body));
    }
    let busy = statuses
        .iter()
        .find(|(s, _)| *s == 503)
        .unwrap_or_else(|| panic!("no 503 over the global burst: {statuses:?}"));
    assert_eq!(busy.1["error"], "server_busy", "{statuses:?}");
}

/// `MAX_CONNECTIONS` through the gate: with one live socket at a cap of one, the next handshake
/// gets 503 `server_busy` with `Retry-After`; once the socket leaves, screens connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_through_the_gate() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .shipped_limits()
            .env("MAX_CONNECTIONS", 1),
    )
    .await;
    let a1 = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    for t in TRANSPORTS {
        match connect(
            gw.client()
                .transport(t)
                .auth(json!({"token": device_token(DEV_A2, ORG_A)})),
        )
        .await
        {
            Err(ConnectError::Http {
                status,
                body,
                retry_after,
            }) => {
                assert_eq!(status, 503, "{t:?}: {body}");
                assert!(body.contains("server_busy"), "{t:?}: {body}");
                assert!(retry_after.is_some(), "{t:?}: Retry-After");
            }
            other => panic!("{t:?}: expected 503 server_busy, got {other:?}"),
        }
    }
    a1.disconnect().await;
    eventually(T, "a slot after the disconnect", || async {
        connect(
            gw.client()
                .auth(json!({"token": device_token(DEV_A2, ORG_A)})),
        )
        .await
        .ok()
    })
    .await;
}

/// The per-socket message rate: above its burst, events are answered with the `rate_limited`
/// error ack and the socket stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_socket_message_rate_answers_rate_limited() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .shipped_limits()
            .env("MESSAGE_RATE_PER_SOCKET", 1)
            .env("MESSAGE_BURST_PER_SOCKET", 3),
    )
    .await;
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    let mut errors = Vec::new();
    for _ in 0..6 {
        let ack = c
            .emit_with_ack("heartbeat", json!({"metrics": {"cpuUsage": 1}}), T)
            .await
            .unwrap();
        if ack["success"] == false {
            errors.push(assert_err_ack(&ack, "over budget"));
        }
    }
    assert!(!errors.is_empty(), "no event was limited");
    assert!(errors.iter().all(|e| e == "rate_limited"), "{errors:?}");
    assert!(c.is_connected(), "a limited socket stays connected");
}
