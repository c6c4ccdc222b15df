//! The internal HTTP API (contract §6) and health/metrics (§7): the key guard on every route,
//! body validation (400 naming the field, 413), the 201 shapes, what devices and dashboards
//! receive for each push, broadcast counts, presence, and the offline command queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, Transport};

/// Every internal route with a valid body: `(method, path, body)`.
fn routes() -> Vec<(&'static str, String, Value)> {
    vec![
        (
            "POST",
            "/api/push/playlist".into(),
            json!({"deviceId": DEV_A1, "playlist": {"id": "p", "items": []}}),
        ),
        (
            "POST",
            "/api/push/content".into(),
            json!({"deviceId": DEV_A1, "content": {"id": "c-img", "name": "W", "type": "image", "url": "https://x/y.png"}}),
        ),
        (
            "POST",
            "/api/push/qr-overlay".into(),
            json!({"deviceId": DEV_A1, "qrOverlay": {"enabled": true, "url": "https://q"}}),
        ),
        (
            "POST",
            "/api/push/broadcast".into(),
            json!({"organizationId": ORG_A, "event": "test:broadcast", "data": {"m": 1}}),
        ),
        (
            "POST",
            "/api/internal/command".into(),
            json!({"deviceId": DEV_A1, "command": "reload"}),
        ),
        (
            "POST",
            "/api/commands/broadcast".into(),
            json!({"deviceIds": [DEV_A1], "command": "reload"}),
        ),
        (
            "GET",
            format!("/api/internal/devices/{DEV_A1}/presence"),
            Value::Null,
        ),
    ]
}

async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, Value) {
    if method == "GET" {
        let headers: Vec<(&str, &str)> =
            key.map(|k| ("x-internal-api-key", k)).into_iter().collect();
        let (s, text) = gw.api().get_text(path, &headers).await;
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    } else {
        gw.api().post_with_key(path, body.clone(), key).await
    }
}

fn assert_error_body(body: &Value, status: u16, error: &str, what: &str) -> String {
    let m = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: error body must be a JSON object: {body}"));
    assert_eq!(
        m.len(),
        3,
        "{what}: exactly statusCode, message, error: {body}"
    );
    assert_eq!(body["statusCode"], status, "{what}: {body}");
    assert_eq!(body["error"], error, "{what}: {body}");
    body["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_key() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    for (method, path, body) in routes() {
        let what = format!("{method} {path}");
        for (key, msg) in [
            (None, "Missing x-internal-api-key header"),
            (Some(""), "Missing x-internal-api-key header"),
            (Some("wrong"), "Invalid API key"),
            (
                Some(&INTERNAL_KEY[..INTERNAL_KEY.len() - 1]),
                "Invalid API key",
            ),
            (Some(&*format!("{INTERNAL_KEY}x")), "Invalid API key"),
        ] {
            let (s, b) = call(&gw, method, &path, &body, key).await;
            assert_eq!(s, 401, "{what} key {key:?}: {b}");
            assert_eq!(
                assert_error_body(&b, 401, "Unauthorized", &what),
                msg,
                "{what} key {key:?}"
            );
        }
        let (s, b) = call(&gw, method, &path, &body, Some(INTERNAL_KEY)).await;
        assert!(
            s == 200 || s == 201,
            "{what}: the right key is accepted: {s} {b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_400_naming_the_field_and_oversized_are_413() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).env("HTTP_BODY_LIMIT_BYTES", 16384)).await;
    let many: Vec<String> = (0..1001).map(|i| format!("d-{i}")).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/api/push/playlist", json!({"playlist": {}}), "deviceId:"),
        (
            "/api/push/playlist",
            json!({"deviceId": 5, "playlist": {}}),
            "deviceId:",
        ),
        (
            "/api/push/playlist",
            json!({"deviceId": "a b", "playlist": {}}),
            "deviceId:",
        ),
        (
            "/api/push/playlist",
            json!({"deviceId": DEV_A1}),
            "playlist:",
        ),
        (
            "/api/push/playlist",
            json!({"deviceId": DEV_A1, "playlist": "pl-main"}),
            "playlist:",
        ),
        (
            "/api/push/playlist",
            json!({"deviceId": DEV_A1, "playlist": [1]}),
            "playlist:",
        ),
        ("/api/push/content", json!({"deviceId": DEV_A1}), "content:"),
        (
            "/api/push/content",
            json!({"deviceId": DEV_A1, "content": {}, "duration": "long"}),
            "duration:",
        ),
        ("/api/push/content", json!({"content": {}}), "deviceId:"),
        (
            "/api/push/qr-overlay",
            json!({"deviceId": DEV_A1}),
            "qrOverlay:",
        ),
        (
            "/api/push/qr-overlay",
            json!({"deviceId": DEV_A1, "qrOverlay": "on"}),
            "qrOverlay:",
        ),
        (
            "/api/internal/command",
            json!({"deviceId": DEV_A1}),
            "command:",
        ),
        (
            "/api/internal/command",
            json!({"deviceId": DEV_A1, "command": 5}),
            "command:",
        ),
        (
            "/api/internal/command",
            json!({"deviceId": DEV_A1, "command": {}}),
            "command.type:",
        ),
        (
            "/api/internal/command",
            json!({"deviceId": DEV_A1, "command": "bad type!"}),
            "command.type:",
        ),
        (
            "/api/internal/command",
            json!({"deviceId": DEV_A1, "command": "reload", "payload": 3}),
            "payload:",
        ),
        (
            "/api/internal/command",
            json!({"command": "reload"}),
            "displayId:",
        ),
        (
            "/api/internal/command",
            json!({"deviceId": DEV_A1, "command": "screenshot", "payload": {"requestId": "../x"}}),
            "payload.requestId:",
        ),
        (
            "/api/commands/broadcast",
            json!({"deviceIds": [], "command": "reload"}),
            "deviceIds:",
        ),
        (
            "/api/commands/broadcast",
            json!({"deviceIds": many, "command": "reload"}),
            "deviceIds:",
        ),
        (
            "/api/commands/broadcast",
            json!({"deviceIds": "dev-a1", "command": "reload"}),
            "deviceIds:",
        ),
        (
            "/api/commands/broadcast",
            json!({"command": "reload"}),
            "deviceIds:",
        ),
        (
            "/api/commands/broadcast",
            json!({"deviceIds": [DEV_A1, 7], "command": "reload"}),
            "deviceIds[1]:",
        ),
        (
            "/api/commands/broadcast",
            json!({"deviceIds": [DEV_A1]}),
            "command:",
        ),
        (
            "/api/push/broadcast",
            json!({"organizationId": ORG_A, "event": "Bad Event"}),
            "event:",
        ),
        (
            "/api/push/broadcast",
            json!({"organizationId": ORG_A, "event": "x".repeat(65)}),
            "event:",
        ),
        (
            "/api/push/broadcast",
            json!({"organizationId": ORG_A}),
            "event:",
        ),
        (
            "/api/push/broadcast",
            json!({"event": "ok"}),
            "organizationId:",
        ),
        ("/api/push/playlist", json!([1, 2]), "body:"),
    ];
    for (path, body, field) in cases {
        let what = format!(
            "{path} {}",
            &body.to_string()[..body.to_string().len().min(80)]
        );
        let (s, b) = gw.api().post(path, body).await;
        assert_eq!(s, 400, "{what}: {b}");
        let msg = assert_error_body(&b, 400, "Bad Request", &what);
        assert!(
            msg.starts_with(field),
            "{what}: message {msg:?} must start with {field:?}"
        );
    }
    // Not JSON at all.
    for path in [
        "/api/push/playlist",
        "/api/internal/command",
        "/api/commands/broadcast",
    ] {
        let (s, b) = gw.api().post_raw(path, b"{not json".to_vec()).await;
        assert_eq!(s, 400, "{path}: {b}");
        let msg = assert_error_body(&b, 400, "Bad Request", path);
        assert!(msg.starts_with("body:"), "{path}: {msg}");
    }
    // Over HTTP_BODY_LIMIT_BYTES.
    let big = json!({"deviceId": DEV_A1, "playlist": {"name": "x".repeat(20_000)}});
    for path in [
        "/api/push/playlist",
        "/api/internal/command",
        "/api/push/broadcast",
    ] {
        let (s, b) = gw.api().post_raw(path, big.to_string().into_bytes()).await;
        assert_eq!(s, 413, "{path}: {b}");
        assert_error_body(&b, 413, "Payload Too Large", path);
    }
    // Just under the limit is fine.
    let ok = json!({"deviceId": DEV_A1, "playlist": {"name": "x".repeat(15_000)}});
    let (s, b) = gw.api().post("/api/push/playlist", ok).await;
    assert_eq!(s, 201, "{b}");
}

async fn connected(gw: &Gateway, dev: &str, org: &str) -> Client {
    let c = device(gw, dev, org, Transport::Websocket).await;
    expect_event(&c, "config", dev).await;
    c
}

/// Everything the pushes deliver, over both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_commands_reach_the_device() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let api = gw.api();
    for t in TRANSPORTS {
        let what = format!("{t:?}");
        let a1 = device(&gw, DEV_A1, ORG_A, t).await;
        expect_event(&a1, "config", &what).await;
        expect_event(&a1, "playlist:update", &what).await;

        // --- /api/internal/command: displayId or deviceId, string or {type,payload} ---
        let variants = [
            (
                json!({"displayId": DEV_A1, "command": "reload"}),
                json!({"type": "reload"}),
            ),
            (
                json!({"deviceId": DEV_A1, "command": "clear_cache", "payload": {"all": true}}),
                json!({"type": "clear_cache", "payload": {"all": true}}),
            ),
            (
                json!({"deviceId": DEV_A1, "command": {"type": "update_config", "payload": {"x": 1},
                        "apiUrl": "https://api", "force": true}}),
                json!({"type": "update_config", "payload": {"x": 1}, "apiUrl": "https://api", "force": true}),
            ),
            (
                json!({"displayId": DEV_A1, "command": {"type": "reload", "id": "spoofed", "timestamp": "spoofed"}}),
                json!({"type": "reload"}),
            ),
        ];
        for (body, expected) in variants {
            let (s, r) = api.post("/api/internal/command", body.clone()).await;
            assert_eq!(s, 201, "{what} {body}: {r}");
            let kind = expected["type"].as_str().unwrap();
            assert_eq!(r["success"], true, "{r}");
            assert_eq!(
                r["message"],
                format!("Command {kind} sent to device"),
                "{r}"
            );
            let id = r["commandId"].as_str().expect("commandId").to_string();
            let cmd = expect_event(&a1, "command", &what).await;
            assert_eq!(
                cmd["id"], id,
                "{what}: the event carries the accepted id: {cmd}"
            );
            assert_iso_ms(&cmd["timestamp"], &what);
            let mut rest = cmd.as_object().unwrap().clone();
            rest.remove("id");
            rest.remove("timestamp");
            assert_eq!(Value::Object(rest), expected, "{what} {body}");
        }

        // --- /api/push/playlist: push form, minio URLs rewritten, the rest untouched ---
        let pushed = json!({"id": "pl-x", "name": "Pushed", "description": null, "isDefault": false,
            "createdAt": "2026-01-01T00:00:00.000Z", "organizationId": ORG_A,
            "items": [
                {"id": "i1", "order": 1, "duration": null, "playlistId": "pl-x", "contentId": "c-img",
                 "content": {"id": "c-img", "name": "Welcome", "type": "image", "url": "minio://bucket/welcome.png",
                             "createdAt": "2026-01-01T00:00:00.000Z"}},
                {"id": "i0", "order": 0, "duration": 5, "playlistId": "pl-x", "contentId": "c-vid",
                 "content": {"id": "c-vid", "type": "video", "url": "https://cdn.test/promo.mp4"}}]});
        let (s, r) = api
            .post(
                "/api/push/playlist",
                json!({"deviceId": DEV_A1, "playlist": pushed}),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        assert_eq!(
            r,
            json!({"success": true, "message": "Playlist update sent to device", "delivery": "delivered"})
        );
        let upd = expect_event(&a1, "playlist:update", &what).await;
        assert_iso_ms(&upd["timestamp"], &what);
        let mut expected = pushed.clone();
        expected["items"][0]["content"]["url"] =
            json!(format!("{API_BASE}/api/device-content/c-img/file"));
        assert_eq!(
            upd["playlist"], expected,
            "{what}: push form forwarded, URL rewritten"
        );
        // `items` defaults to [] and nothing is invented.
        api.post(
            "/api/push/playlist",
            json!({"deviceId": DEV_A1, "playlist": {"id": "p2", "name": "n"}}),
        )
        .await;
        let upd = expect_event(&a1, "playlist:update", &what).await;
        assert_eq!(
            upd["playlist"],
            json!({"id": "p2", "name": "n", "items": []})
        );
        // A push invalidates the cache: playlist:request reads the database again.
        let ack = a1
            .emit_with_ack("playlist:request", json!({}), T)
            .await
            .unwrap();
        assert_eq!(ack["data"]["playlist"]["id"], PLAYLIST_MAIN);

        // --- /api/push/content: push_content, duration default 30 ---
        let content = json!({"id": "c-vid", "name": "Promo", "type": "video", "url": "https://signed/x?sig=1",
                             "thumbnailUrl": null, "mimeType": "video/mp4", "duration": 30});
        for (dur, want) in [(None, json!(30)), (Some(json!(12)), json!(12))] {
            let mut body = json!({"deviceId": DEV_A1, "content": content});
            if let Some(d) = dur {
                body["duration"] = d;
            }
            let (s, r) = api.post("/api/push/content", body).await;
            assert_eq!(s, 201, "{r}");
            assert_eq!(r["success"], true);
            assert_eq!(r["message"], "Content pushed to device");
            let cmd = expect_event(&a1, "command", &what).await;
            assert_eq!(cmd["id"], r["commandId"], "{cmd}");
            assert_eq!(cmd["type"], "push_content", "{cmd}");
            assert_eq!(
                cmd["payload"]["content"], content,
                "{what}: content forwarded as is"
            );
            assert_eq!(cmd["payload"]["duration"].as_f64(), want.as_f64(), "{cmd}");
        }

        // --- /api/push/qr-overlay ---
        let overlay = json!({"enabled": true, "url": "https://vizora.test/q2", "position": "top-left", "size": 150});
        let (s, r) = api
            .post(
                "/api/push/qr-overlay",
                json!({"deviceId": DEV_A1, "qrOverlay": overlay}),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        assert_eq!(r["success"], true);
        let q = expect_event(&a1, "qr-overlay:update", &what).await;
        assert_eq!(q["qrOverlay"], overlay);
        assert_iso_ms(&q["timestamp"], &what);

        // --- presence ---
        let (s, p) = api
            .get(&format!("/api/internal/devices/{DEV_A1}/presence"))
            .await;
        assert_eq!(s, 200);
        assert_eq!(p["deviceId"], DEV_A1);
        assert_eq!(p["online"], true, "{p}");
        assert_eq!(p["status"], "online", "{p}");
        assert_iso_ms(&p["lastSeen"], "presence lastSeen");
        assert_eq!(p.as_object().unwrap().len(), 4, "{p}");
        let (_, p) = api
            .get(&format!("/api/internal/devices/{DEV_A3}/presence"))
            .await;
        assert_eq!(
            p,
            json!({"deviceId": DEV_A3, "online": false, "status": "offline", "lastSeen": null})
        );

        // Nothing else arrived unasked.
        let extra: Vec<_> = a1.drain_events();
        assert!(extra.is_empty(), "{what}: unexpected events {extra:?}");
        a1.disconnect().await;
        api.wait_offline(DEV_A1).await;
    }
    let (_, p) = api
        .get(&format!("/api/internal/devices/{DEV_A1}/presence"))
        .await;
    assert_eq!(p["status"], "offline");
    assert_iso_ms(&p["lastSeen"], "an offline device keeps its last-seen time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_count_and_scope() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let api = gw.api();
    let a1 = connected(&gw, DEV_A1, ORG_A).await;
    let b1 = connected(&gw, DEV_B1, ORG_B).await;
    let dash_a = dashboard(&gw, "u-a", ORG_A, Transport::Polling).await;
    let dash_b = dashboard(&gw, "u-b", ORG_B, Transport::Websocket).await;
    expect_event(&dash_a, "device:status:batch", "dash a").await;
    expect_event(&dash_b, "device:status:batch", "dash b").await;

    // --- push/broadcast: devices and dashboards of the organisation, nobody else ---
    let (s, r) = api
        .post(
            "/api/push/broadcast",
            json!({"organizationId": ORG_A, "event": "test:broadcast", "data": {"message": "hello"}}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["success"], true, "{r}");
    for c in [&a1, &dash_a] {
        let e = expect_event(c, "test:broadcast", "org A member").await;
        assert_eq!(e["message"], "hello");
        assert_iso_ms(&e["timestamp"], "broadcast timestamp");
    }

    // --- commands/broadcast: one online, two offline ---
    let (s, r) = api
        .post(
            "/api/commands/broadcast",
            json!({"deviceIds": [DEV_A1, DEV_A2, DEV_A3], "command": {"type": "reload", "force": true}}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["devicesOnline"], 1, "{r}");
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(r["queued"], 2, "{r}");
    let cmd = expect_event(&a1, "command", "online device").await;
    assert_eq!(cmd["type"], "reload");
    assert_eq!(cmd["force"], true);
    // The two offline devices get it on their next connect, with their own ids.
    let mut ids = Vec::new();
    for dev in [DEV_A2, DEV_A3] {
        let c = device(&gw, dev, ORG_A, Transport::Websocket).await;
        let cmd = expect_event(&c, "command", dev).await;
        assert_eq!(cmd["type"], "reload", "{cmd}");
        assert_eq!(cmd["force"], true, "{cmd}");
        ids.push(cmd["id"].as_str().unwrap().to_string());
        c.disconnect().await;
    }
    ids.push(cmd["id"].as_str().unwrap().to_string());
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "every command has its own id");

    tokio::time::sleep(Duration::from_millis(500)).await;
    for (who, c) in [("org B device", &b1), ("org B dashboard", &dash_b)] {
        let leaked: Vec<_> = c
            .drain_events()
            .into_iter()
            .filter(|e| e.name == "test:broadcast" || e.name == "command")
            .collect();
        assert!(
            leaked.is_empty(),
            "{who} must not receive org A's broadcast: {leaked:?}"
        );
    }
    assert!(
        dash_a.drain_events().iter().all(|e| e.name != "command"),
        "commands go to devices only"
    );
}

/// Commands for a device without a live socket are queued (bounded) and delivered on its next
/// connect as `command` events, oldest first, with the ids the API returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_are_delivered_on_connect_oldest_first() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).env("COMMAND_QUEUE_MAX", 3)).await;
    let api = gw.api();
    for t in TRANSPORTS {
        for batch in 0..2 {
            let what = format!("{t:?} batch {batch}");
            let mut accepted = Vec::new();
            for kind in ["reload", "clear_cache", "pause"] {
                let (s, r) = api
                    .command(DEV_A2, kind, Some(json!({"batch": batch})))
                    .await;
                assert_eq!(s, 201, "{r}");
                assert_eq!(r["delivery"], "queued", "{what}: DEV_A2 is offline: {r}");
                accepted.push((r["commandId"].as_str().unwrap().to_string(), kind));
            }
            let c = device(&gw, DEV_A2, ORG_A, t).await;
            expect_event(&c, "config", &what).await;
            for (id, kind) in &accepted {
                let cmd = expect_event(&c, "command", &what).await;
                assert_eq!(cmd["id"], *id, "{what}: oldest first");
                assert_eq!(cmd["type"], *kind, "{what}");
                assert_eq!(cmd["payload"], json!({"batch": batch}), "{what}");
            }
            // The queue was drained: the heartbeat ack carries nothing more.
            let ack = c.emit_with_ack("heartbeat", json!({}), T).await.unwrap();
            assert_eq!(ack["commands"], json!([]), "{what}");
            assert_eq!(ack["data"]["commands"], json!([]), "{what}");
            c.disconnect().await;
            api.wait_offline(DEV_A2).await;
        }
    }
    // The queue is bounded: with COMMAND_QUEUE_MAX=3 the newest three of five survive.
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, r) = api.command(DEV_A3, "reload", Some(json!({"n": i}))).await;
        ids.push(r["commandId"].as_str().unwrap().to_string());
    }
    let c = connected(&gw, DEV_A3, ORG_A).await;
    for i in 2..5 {
        let cmd = expect_event(&c, "command", "bounded queue").await;
        assert_eq!(cmd["payload"]["n"], i, "{cmd}");
        assert_eq!(cmd["id"], ids[i as usize]);
    }
    assert!(
        c.wait_for("command", Duration::from_millis(300))
            .await
            .is_none()
    );
}

/// The heartbeat ack drains commands that reached the queue while the device was connected —
/// the cross-replica race where another replica saw the device offline an instant before it
/// connected and queued after the connect-time drain. Reproduced by queueing in Redis exactly as a
/// replica does (`RPUSH device:commands:{id}`), then by the API while the device is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_ack_delivers_commands_queued_while_connected() {
    let redis = RedisServer::start().await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).redis(&redis.url())).await;
    let api = gw.api();
    for t in TRANSPORTS {
        let what = format!("{t:?}");
        // First batch: queued by the API while DEV_A1 is offline, delivered on connect.
        let mut first = Vec::new();
        for kind in ["reload", "pause"] {
            let (_, r) = api.command(DEV_A1, kind, None).await;
            assert_eq!(r["delivery"], "queued", "{r}");
            first.push(r["commandId"].as_str().unwrap().to_string());
        }
        let c = device(&gw, DEV_A1, ORG_A, t).await;
        for id in &first {
            let cmd = expect_event(&c, "command", &what).await;
            assert_eq!(cmd["id"], *id, "{what}: connect delivers oldest first");
        }
        // Second batch: lands in the queue while the socket is live (the late replica).
        let late: Vec<Value> = (0..2)
            .map(|i| json!({"id": format!("late-{i}-{what}"), "type": "skip_content", "payload": {"i": i},
                            "timestamp": "2026-01-01T00:00:00.000Z"}))
            .collect();
        let mut conn = redis.conn().await;
        for cmd in &late {
            let _: i64 = redis::cmd("RPUSH")
                .arg(format!("device:commands:{DEV_A1}"))
                .arg(cmd.to_string())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let ack = c
            .emit_with_ack("heartbeat", json!({"metrics": {"cpuUsage": 5}}), T)
            .await
            .unwrap();
        assert_ok_ack(&ack, &what);
        assert_eq!(
            ack["data"]["commands"],
            json!(late),
            "{what}: oldest first, with ids"
        );
        assert_eq!(
            ack["commands"],
            json!(late),
            "{what}: mirrored at the top level"
        );
        assert!(
            !redis.exists(&format!("device:commands:{DEV_A1}")).await,
            "drained"
        );
        let ack = c.emit_with_ack("heartbeat", json!({}), T).await.unwrap();
        assert_eq!(ack["commands"], json!([]), "{what}: delivered once");
        // The status key the heartbeat writes keeps the original's shape.
        let st: Value =
            serde_json::from_str(&redis.get(&format!("device:status:{DEV_A1}")).await.unwrap())
                .unwrap();
        assert_eq!(st["status"], "online");
        assert_eq!(st["organizationId"], ORG_A);
        assert!(st["socketId"].is_string(), "{st}");
        c.disconnect().await;
        api.wait_offline(DEV_A1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_not_found() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let api = gw.api();

    let (s, h) = api.get("/api/health").await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["service"], "realtime-gateway");
    assert_iso_ms(&h["timestamp"], "health timestamp");
    assert!(h["uptime"].as_f64().unwrap() >= 0.0, "{h}");
    for (dep, kind) in [("store", "in-process"), ("database", "sqlite")] {
        assert_eq!(h["dependencies"][dep]["status"], "healthy", "{h}");
        assert_eq!(h["dependencies"][dep]["kind"], kind, "{h}");
        assert!(h["dependencies"][dep]["latencyMs"].is_u64(), "{h}");
    }
    assert_eq!(h["dependencies"]["storage"]["kind"], "local", "{h}");
    assert!(
        h["dependencies"].get("redis").is_none(),
        "the in-process store is not called redis: {h}"
    );
    assert_eq!(h["dependencies"]["websocket"]["status"], "healthy", "{h}");

    let (s, b) = api.get("/api/health/live").await;
    assert_eq!((s, b), (200, json!({"status": "ok"})));
    let (s, b) = api.get("/api/health/ready").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ready");
    assert_eq!(b["ready"], true);
    let (s, b) = api.get("/api/status").await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "running");
    assert_eq!(b["service"], "Vizora Realtime Gateway");
    assert_eq!(b["websocket"], "active");
    assert!(b["version"].is_string(), "{b}");

    // Traffic that would leak ids into labels if any label took them.
    let a1 = connected(&gw, DEV_A1, ORG_A).await;
    let a2 = connected(&gw, DEV_A2, ORG_A).await;
    let dash = dashboard(&gw, "u-a", ORG_A, Transport::Websocket).await;
    a1.emit_with_ack(
        "heartbeat",
        json!({"metrics": {"cpuUsage": 50, "memoryUsage": 20}}),
        T,
    )
    .await
    .unwrap();
    a1.emit_with_ack("content:impression", json!({"contentId": "c-img"}), T)
        .await
        .unwrap();
    a2.emit_with_ack("heartbeat", json!("bad"), T)
        .await
        .unwrap();
    api.command(DEV_A1, "reload", None).await;
    api.command(DEV_A3, "reload", None).await;
    api.get(&format!("/api/internal/devices/{DEV_A1}/presence"))
        .await;
    api.get_text(&format!("/api/screenshots/{ORG_A}/{DEV_A1}/x.png"), &[])
        .await;
    let _ = vizora_sioclient::connect(
        gw.client()
            .auth(json!({"token": device_token("dev-ghost", ORG_A)})),
    )
    .await;

    for path in ["/api/internal/metrics", "/metrics"] {
        let (s, text) = api.get_text(path, &[]).await;
        assert_eq!(s, 200, "{path} from loopback");
        assert!(text.contains("vizora_gateway_"), "{path}: {text}");
        for id in [
            DEV_A1,
            DEV_A2,
            DEV_A3,
            "dev-ghost",
            "u-a",
            a1.sid(),
            a1.engine_sid(),
        ] {
            assert!(
                !text.contains(id),
                "{path}: metrics must not name {id:?}:\n{text}"
            );
        }
        assert!(!text.contains("127.0.0.1"), "{path}: no IP labels");
    }
    let r = reqwest::get(format!("{}/api/internal/metrics", gw.url()))
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "Prometheus text"
    );

    // Unknown routes: Nest's 404 shape.
    for (method, path) in [
        ("GET", "/api/nope"),
        ("GET", "/api/internal/nope"),
        ("POST", "/api/push/nope"),
    ] {
        let (s, b) = if method == "GET" {
            let (s, t) = api.get_text(path, &[]).await;
            (s, serde_json::from_str::<Value>(&t).unwrap())
        } else {
            api.post(path, json!({})).await
        };
        assert_eq!(s, 404, "{method} {path}");
        assert_eq!(
            assert_error_body(&b, 404, "Not Found", path),
            format!("Cannot {method} {path}")
        );
    }
    // A known path with the wrong method is an unknown route too (Express answers 404).
    let http = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/api/push/playlist"),
        ("GET", "/api/internal/command"),
        ("POST", "/api/health"),
        ("DELETE", "/api/status"),
    ] {
        for key in [None, Some(INTERNAL_KEY)] {
            let mut req = http.request(method.parse().unwrap(), format!("{}{path}", gw.url()));
            if let Some(k) = key {
                req = req.header("x-internal-api-key", k);
            }
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            let b: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(s, 404, "{method} {path} key {key:?}: {b}");
            assert_eq!(
                assert_error_body(&b, 404, "Not Found", path),
                format!("Cannot {method} {path}")
            );
        }
    }
    drop(dash);
}

/// A non-loopback address of this machine, if it has one.
fn outside_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// From anywhere but loopback, metrics need `Authorization: Bearer $METRICS_TOKEN`. Loopback is
/// the client's address: the TCP peer, or what a trusted proxy forwards. A client off loopback
/// is always shown, through a trusted proxy on this host forwarding one; where this machine has
/// a non-loopback address, also as the TCP peer itself. A loopback client without a token is the
/// positive control: the refusals come from the address rule, not from a route refusing all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_off_loopback() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let token = "metrics-token-metrics-token-0123456789";
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("HOST", "0.0.0.0")
            .env("TRUSTED_PROXIES", "127.0.0.1")
            .env("METRICS_TOKEN", token),
    )
    .await;
    let local = vizora_gateway_tests::api::Api::new(&gw.url());
    for path in ["/api/internal/metrics", "/metrics"] {
        let (s, text) = local.get_text(path, &[]).await;
        assert_eq!(s, 200, "{path}: a loopback client needs no token: {text}");
        assert!(text.contains("vizora_gateway_"));
    }
    let forwarded = [("x-forwarded-for", "192.0.2.77")];
    assert_token_needed(&local, &forwarded, token, "forwarded by a trusted proxy").await;
    match outside_ip() {
        Some(ip) => {
            let outside = vizora_gateway_tests::api::Api::new(&format!("http://{ip}:{}", gw.port));
            assert_token_needed(&outside, &[], token, &format!("peer {ip}")).await;
        }
        None => eprintln!("no non-loopback address on this machine: shown through the proxy only"),
    }
}

/// Every metrics route refuses `api` (with `base` headers) unless the right bearer token comes
/// along.
async fn assert_token_needed(
    api: &vizora_gateway_tests::api::Api,
    base: &[(&str, &str)],
    token: &str,
    who: &str,
) {
    let bearer = format!("Bearer {token}");
    for path in ["/api/internal/metrics", "/metrics"] {
        for auth in [None, Some("Bearer wrong"), Some(token), Some("Bearer ")] {
            let mut headers = base.to_vec();
            headers.extend(auth.map(|a| ("authorization", a)));
            let (s, text) = api.get_text(path, &headers).await;
            assert_eq!(s, 403, "{who} {path} {auth:?}: {text}");
            let b: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                b,
                json!({"statusCode": 403, "message": "Metrics access denied", "error": "Forbidden"})
            );
        }
        let mut headers = base.to_vec();
        headers.push(("authorization", &bearer));
        let (s, text) = api.get_text(path, &headers).await;
        assert_eq!(s, 200, "{who} {path}: {text}");
        assert!(text.contains("vizora_gateway_"));
    }
}

/// A command accepted while the device's lease exists but its socket is still in the connect
/// middleware (the CONNECT not yet accepted, the socket in no room) must not be lost: it is
/// delivered on connect or in a heartbeat ack. The test hook widens that window with a random
/// delay after the lease is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_accepted_during_the_connect_handshake_are_not_lost() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("VIZORA_TEST_LEASE_DELAY_MS", 1500)
            .env("CONNECT_TIMEOUT_MS", 10_000),
    )
    .await;
    scenarios::commands_during_connect_are_not_lost(&gw.api(), &gw).await;
}
