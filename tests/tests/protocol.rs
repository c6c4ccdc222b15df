//! The device side of the protocol, over websocket and polling, against SQLite and PostgreSQL:
//! connect-time `config` and playlist, heartbeats, impressions, content errors, playlist
//! requests, handshake refusals, room rules, and malformed input of every device event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use base64::Engine;
use chrono::Timelike;
use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use vizora_gateway::auth::mint;
use vizora_gateway_tests::*;
use vizora_sioclient::{Transport, connect};

/// One test per database for a scenario (`<scenario>::sqlite`, `<scenario>::postgres`).
macro_rules! per_db {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name("sqlite").await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name("postgres").await
            }
        }
    )*};
}

per_db!(
    device_core_flow,
    handshake_refusals,
    room_rules,
    malformed_payloads,
    raw_garbage_and_oversized_frames,
    disabled_devices,
);

fn content_url(id: &str) -> String {
    format!("{API_BASE}/api/device-content/{id}/file")
}

/// The zone playlist as every layout zone must carry it (`pl-zone`: one item, duration 0 → 10).
fn expected_zone_playlist() -> Value {
    json!({"id": PLAYLIST_ZONE, "name": "Zone", "items": [
        {"id": "it-z", "contentId": "c-zone", "duration": 10, "order": 0,
         "content": {"id": "c-zone", "name": "Zone image", "type": "image", "url": content_url("c-zone"),
                     "thumbnail": null, "mimeType": "image/png", "duration": 10}}]})
}

fn expected_zone_content() -> Value {
    json!({"id": "c-zone", "name": "Zone image", "type": "image", "url": content_url("c-zone"),
           "thumbnail": null, "mimeType": "image/png", "duration": 10})
}

/// The connect form of DEV_A1's playlist (reference §3.3.1, with both zone key names).
fn assert_main_playlist(p: &Value, what: &str) {
    assert_eq!(p["id"], PLAYLIST_MAIN, "{what}");
    assert_eq!(p["name"], "Lobby", "{what}");
    let items = p["items"].as_array().expect("items");
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["it-0", "it-1", "it-2"],
        "{what}: items ordered by `order`"
    );
    let orders: Vec<i64> = items.iter().map(|i| i["order"].as_i64().unwrap()).collect();
    assert_eq!(orders, [0, 1, 2], "{what}");
    let durations: Vec<i64> = items
        .iter()
        .map(|i| i["duration"].as_i64().unwrap())
        .collect();
    assert_eq!(
        durations,
        [10, 20, 10],
        "{what}: a null item duration defaults to 10 (not Content.duration)"
    );
    assert_eq!(p["totalDuration"], 40, "{what}");
    assert_eq!(p["loopPlaylist"], true, "{what}");
    assert_eq!(
        items[0]["contentId"], "c-img",
        "{what}: item carries contentId"
    );
    assert_eq!(
        items[0]["content"],
        json!({"id": "c-img", "name": "Welcome", "type": "image", "url": content_url("c-img"),
               "thumbnail": null, "mimeType": "image/png", "duration": 10, "metadata": null}),
        "{what}: minio:// URL rewritten to the device-content route"
    );
    assert_eq!(
        items[1]["content"]["url"], "https://cdn.test/promo.mp4",
        "{what}: other URLs unchanged"
    );
    assert_eq!(items[1]["content"]["duration"], 30, "{what}");
    let layout = &items[2]["content"];
    assert_eq!(layout["type"], "layout", "{what}");
    assert_eq!(layout["url"], "", "{what}");
    let md = &layout["metadata"];
    assert_eq!(md["layoutType"], "split-horizontal", "{what}");
    assert_eq!(
        md["gridTemplate"],
        json!({"columns": "1fr 1fr", "rows": "1fr"}),
        "{what}"
    );
    assert_eq!(md["gap"], 8, "{what}");
    let zones = md["zones"].as_array().expect("zones");
    assert_eq!(zones.len(), 2, "{what}");
    assert_eq!(zones[0]["id"], "left", "{what}");
    assert_eq!(zones[0]["gridArea"], "left", "{what}");
    assert_eq!(zones[0]["playlistId"], PLAYLIST_ZONE, "{what}");
    assert_eq!(
        zones[0]["resolvedPlaylist"],
        expected_zone_playlist(),
        "{what}: zone resolvedPlaylist"
    );
    assert_eq!(
        zones[0]["playlist"],
        expected_zone_playlist(),
        "{what}: zone playlist"
    );
    assert_eq!(zones[1]["id"], "right", "{what}");
    assert_eq!(
        zones[1]["resolvedContent"],
        expected_zone_content(),
        "{what}: zone resolvedContent"
    );
    assert_eq!(
        zones[1]["content"],
        expected_zone_content(),
        "{what}: zone content"
    );
}

fn utc_today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

async fn impressions_of(conn: &sea_orm::DatabaseConnection, dev: &str) -> Vec<Value> {
    rows(
        conn,
        r#"SELECT "organizationId" AS org, "displayId" AS dev, "contentId" AS content, "playlistId" AS pl,
                  CAST("duration" AS TEXT) AS dur, CAST("completionPercentage" AS TEXT) AS pct,
                  CAST("date" AS TEXT) AS day, CAST("hour" AS TEXT) AS hr
             FROM content_impressions WHERE "displayId" = $1 ORDER BY "timestamp", "id""#,
        vec![dev.into()],
    )
    .await
}

async fn device_core_flow(kind: &str) {
    let (db, _pg, _dir) = gateway::seeded_db(kind, 0).await;
    let gw = Gateway::start(GatewayOptions::new(db.clone())).await;
    let conn = db_conn(&db).await;
    let mut impressions_expected = 0;
    // Also socket.io-client's default: handshake over polling, then the websocket upgrade.
    for t in [
        Transport::Websocket,
        Transport::Polling,
        Transport::PollingUpgrade,
    ] {
        let what = format!("{kind}/{t:?}");
        // --- connect: config then the playlist's connect form ---
        let c = device(&gw, DEV_A1, ORG_A, t).await;
        if t == Transport::PollingUpgrade {
            assert_eq!(c.transport(), Transport::Websocket, "{what}: upgraded");
        }
        let cfg = expect_event(&c, "config", &what).await;
        assert_eq!(
            cfg,
            json!({"heartbeatInterval": 15000, "cacheSize": 524_288_000, "autoUpdate": true,
                   "qrOverlay": {"enabled": true, "url": "https://vizora.test/qr", "position": "bottom-right"}}),
            "{what}: config with the device's qrOverlay"
        );
        let upd = expect_event(&c, "playlist:update", &what).await;
        assert_iso_ms(&upd["timestamp"], &what);
        assert_main_playlist(&upd["playlist"], &format!("{what} connect form"));

        // --- playlist:request returns the same playlist (cached and force-refreshed) ---
        for body in [json!({}), json!({"forceRefresh": true}), Value::Null] {
            let ack = c
                .emit_with_ack("playlist:request", body.clone(), T)
                .await
                .unwrap();
            assert_ok_ack(&ack, &what);
            assert_eq!(
                ack["data"]["playlist"], upd["playlist"],
                "{what}: playlist:request {body} equals the connect form"
            );
        }

        // --- heartbeats: envelope, top-level mirror, Electron and Android shapes ---
        let electron = json!({"timestamp": chrono::Utc::now().timestamp_millis(),
            "metrics": {"cpuUsage": 12.34, "memoryUsage": 45.67, "storageUsed": 0},
            "currentContent": {"contentId": "c-img", "playlistId": PLAYLIST_MAIN}, "status": "online"});
        let android = json!({"timestamp": "2026-01-01T00:00:00.000Z",
            "metrics": {"cpuUsage": 0, "memoryUsage": 12.5, "uptime": 345},
            "currentContent": "c-img", "status": "online", "appVersion": "1.2.3"});
        let electron_idle = json!({"timestamp": 1, "metrics": {"cpuUsage": 1, "memoryUsage": 2, "storageUsed": 0},
                                   "currentContent": null, "status": "online"});
        for (shape, hb) in [
            ("electron", electron),
            ("android", android),
            ("electron idle", electron_idle),
            ("empty", json!({})),
        ] {
            let ack = c.emit_with_ack("heartbeat", hb, T).await.unwrap();
            let w = format!("{what} {shape} heartbeat");
            assert_ok_ack(&ack, &w);
            assert_eq!(
                ack["data"],
                json!({"nextHeartbeatIn": 15000, "commands": []}),
                "{w}"
            );
            assert_eq!(ack["nextHeartbeatIn"], 15000, "{w}: top-level mirror");
            assert_eq!(ack["commands"], json!([]), "{w}: top-level mirror");
        }

        // --- impressions: a row per impression, numeric and string timestamps ---
        let hour_before = chrono::Local::now().hour();
        for imp in [
            json!({"contentId": "c-img", "playlistId": PLAYLIST_MAIN, "timestamp": chrono::Utc::now().timestamp_millis()}),
            json!({"contentId": "c-vid", "playlistId": PLAYLIST_MAIN, "duration": 19.6, "completionPercentage": 100,
                   "timestamp": "2026-01-01T00:00:00.000Z", "extraField": true}),
        ] {
            let ack = c
                .emit_with_ack("content:impression", imp.clone(), T)
                .await
                .unwrap();
            assert_ok_ack(&ack, &format!("{what} impression {imp}"));
            assert!(ack.get("data").is_none(), "{what}: {ack}");
            impressions_expected += 1;
        }
        let hour_after = chrono::Local::now().hour();
        let stored = impressions_of(&conn, DEV_A1).await;
        assert_eq!(stored.len(), impressions_expected, "{what}: {stored:?}");
        let last_two = &stored[stored.len() - 2..];
        for (row, content) in last_two.iter().zip(["c-img", "c-vid"]) {
            assert_eq!(row["org"], ORG_A, "{what}: {row}");
            assert_eq!(row["dev"], DEV_A1, "{what}: {row}");
            assert_eq!(row["content"], content, "{what}: {row}");
            assert_eq!(row["pl"], PLAYLIST_MAIN, "{what}: {row}");
            assert_eq!(
                row["day"],
                utc_today(),
                "{what}: date is the UTC date: {row}"
            );
            let hr: u32 = row["hr"].as_str().unwrap().parse().unwrap();
            assert!(
                hr == hour_before || hr == hour_after,
                "{what}: hour is the server-local hour: {row}"
            );
        }
        assert_eq!(last_two[0]["dur"], Value::Null, "{what}");
        assert_eq!(last_two[1]["dur"], "20", "{what}: duration rounded");
        assert_eq!(last_two[1]["pct"], "100", "{what}");

        // --- content:error ---
        for err in [
            json!({"contentId": "c-vid", "errorType": "playback_error", "errorMessage": "decoder crashed",
                   "timestamp": chrono::Utc::now().timestamp_millis()}),
            json!({"contentId": "c-img", "playlistId": PLAYLIST_MAIN, "errorType": "load_failed",
                   "errorCode": "E404", "context": {"url": "x"}}),
        ] {
            let ack = c
                .emit_with_ack("content:error", err.clone(), T)
                .await
                .unwrap();
            assert_ok_ack(&ack, &format!("{what} content:error {err}"));
        }
        c.disconnect().await;

        // --- a device without playlist: null overlay, no playlist:update, request → null ---
        let c = device(&gw, DEV_A2, ORG_A, t).await;
        let cfg = expect_event(&c, "config", &what).await;
        assert_eq!(
            cfg,
            json!({"heartbeatInterval": 15000, "cacheSize": 524_288_000, "autoUpdate": true, "qrOverlay": null}),
            "{what}: DEV_A2 config"
        );
        let ack = c
            .emit_with_ack("playlist:request", json!({}), T)
            .await
            .unwrap();
        assert_ok_ack(&ack, &what);
        assert_eq!(
            ack["data"],
            json!({"playlist": null}),
            "{what}: no invented default playlist"
        );
        let ack = c
            .emit_with_ack("playlist:request", json!({"forceRefresh": true}), T)
            .await
            .unwrap();
        assert_eq!(ack["data"], json!({"playlist": null}), "{what}");
        assert!(
            c.wait_for("playlist:update", Duration::from_millis(1000))
                .await
                .is_none(),
            "{what}: DEV_A2 has no playlist and must get no playlist:update"
        );
        c.disconnect().await;
    }
}

fn forged(header: Value, claims: Value, sig: &str) -> String {
    let b = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!("{}.{}.{sig}", b(&header), b(&claims))
}

async fn handshake_refusals(kind: &str) {
    let (db, _pg, _dir) = gateway::seeded_db(kind, 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let now = chrono::Utc::now().timestamp();
    let device_claims = json!({"sub": DEV_A1, "deviceIdentifier": "mac-a1", "organizationId": ORG_A,
                               "type": "device", "iat": now, "exp": now + 3600});
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong secret",
            mint::device_token(
                "another-secret-another-secret-another-1",
                DEV_A1,
                "mac-a1",
                ORG_A,
                3600,
            )
            .unwrap(),
            "unauthorized: auth_invalid",
        ),
        (
            "device token signed with the user secret",
            mint::device_token(USER_SECRET, DEV_A1, "mac-a1", ORG_A, 3600).unwrap(),
            "unauthorized: auth_invalid",
        ),
        (
            "alg HS384",
            encode(
                &Header::new(jsonwebtoken::Algorithm::HS384),
                &device_claims,
                &EncodingKey::from_secret(DEVICE_SECRET.as_bytes()),
            )
            .unwrap(),
            "unauthorized: auth_invalid",
        ),
        (
            "alg none",
            forged(
                json!({"alg": "none", "typ": "JWT"}),
                device_claims.clone(),
                "",
            ),
            "unauthorized: auth_invalid",
        ),
        (
            "user token signed with the device secret",
            mint::user_token(DEVICE_SECRET, "u-1", ORG_A, "admin", 3600).unwrap(),
            "unauthorized: auth_invalid",
        ),
        (
            "garbage token",
            "not-a-jwt".to_string(),
            "unauthorized: auth_invalid",
        ),
        (
            "expired",
            mint::device_token(DEVICE_SECRET, DEV_A1, "mac-a1", ORG_A, -120).unwrap(),
            "unauthorized: auth_expired",
        ),
        (
            "unknown device",
            device_token("dev-nobody", ORG_A),
            "unauthorized: device_not_found",
        ),
        (
            "organisation mismatch",
            device_token(DEV_A1, ORG_B),
            "unauthorized: auth_invalid",
        ),
        (
            "not valid before a future nbf",
            encode(
                &Header::default(),
                &json!({"sub": DEV_A1, "deviceIdentifier": "mac-a1", "organizationId": ORG_A,
                        "type": "device", "iat": now, "nbf": now + 600, "exp": now + 3600}),
                &EncodingKey::from_secret(DEVICE_SECRET.as_bytes()),
            )
            .unwrap(),
            "unauthorized: auth_invalid",
        ),
        (
            "type claim missing (user path) signed with the device secret",
            encode(
                &Header::default(),
                &json!({"sub": DEV_A1, "organizationId": ORG_A, "exp": now + 3600}),
                &EncodingKey::from_secret(DEVICE_SECRET.as_bytes()),
            )
            .unwrap(),
            "unauthorized: auth_invalid",
        ),
    ];
    for t in TRANSPORTS {
        for (what, token, msg) in &cases {
            let r = connect(
                gw.client()
                    .transport(t)
                    .auth(json!({"token": token}))
                    .connect_timeout(Duration::from_secs(8)),
            )
            .await;
            assert_refused(r, msg, &format!("{kind}/{t:?} {what}"));
        }
        // The gateway reads only `auth.token`: a valid token in the query string is refused.
        let r = connect(
            gw.client()
                .transport(t)
                .query("token", device_token(DEV_A1, ORG_A))
                .connect_timeout(Duration::from_secs(8)),
        )
        .await;
        assert_refused(
            r,
            "unauthorized: auth_invalid",
            &format!("{kind}/{t:?} token in query"),
        );
        // ... and no auth at all.
        let r = connect(
            gw.client()
                .transport(t)
                .auth(json!({}))
                .connect_timeout(Duration::from_secs(8)),
        )
        .await;
        assert_refused(
            r,
            "unauthorized: auth_invalid",
            &format!("{kind}/{t:?} no token"),
        );
    }
    // None of the refused attempts marked the device online.
    let (s, p) = gw
        .api()
        .get(&format!("/api/internal/devices/{DEV_A1}/presence"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(p["online"], false, "{p}");
    // The real token still works afterwards, and so does one without `exp` (the original
    // accepted those; the middleware's tokens always carry one).
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    expect_event(&c, "config", kind).await;
    c.disconnect().await;
    let no_exp = encode(
        &Header::default(),
        &json!({"sub": DEV_A2, "deviceIdentifier": "mac-a2", "organizationId": ORG_A, "type": "device", "iat": now}),
        &EncodingKey::from_secret(DEVICE_SECRET.as_bytes()),
    )
    .unwrap();
    let c = connect(gw.client().auth(json!({"token": no_exp})))
        .await
        .expect("a token without exp is accepted");
    expect_event(&c, "config", kind).await;
}

/// Later Vizora schemas add `devices."isDisabled"`: where it exists, a disabled device is refused.
async fn disabled_devices(kind: &str) {
    let (db, _pg, _dir) = gateway::seeded_db(kind, 0).await;
    let conn = db_conn(&db).await;
    conn.execute_unprepared(
        r#"ALTER TABLE devices ADD COLUMN "isDisabled" BOOLEAN NOT NULL DEFAULT false"#,
    )
    .await
    .unwrap();
    conn.execute_unprepared(r#"UPDATE devices SET "isDisabled" = true WHERE "id" = 'dev-a3'"#)
        .await
        .unwrap();
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    for t in TRANSPORTS {
        let r = connect(
            gw.client()
                .transport(t)
                .auth(json!({"token": device_token(DEV_A3, ORG_A)})),
        )
        .await;
        assert_refused(r, "unauthorized: device_disabled", &format!("{kind}/{t:?}"));
        let c = device(&gw, DEV_A2, ORG_A, t).await;
        expect_event(&c, "config", kind).await;
        c.disconnect().await;
    }
}

async fn expect_error_event(c: &vizora_sioclient::Client, msg: &str, what: &str) {
    let e = expect_event(c, "error", what).await;
    assert_eq!(e, json!({"message": msg}), "{what}: error event");
}

async fn room_rules(kind: &str) {
    let (db, _pg, _dir) = gateway::seeded_db(kind, 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    for t in TRANSPORTS {
        let what = format!("{kind}/{t:?}");
        let c = device(&gw, DEV_A1, ORG_A, t).await;
        expect_event(&c, "config", &what).await;
        let ask = |ev: &'static str, body: Value| {
            let c = c.clone();
            async move { c.emit_with_ack(ev, body, T).await.unwrap() }
        };

        // Cross-organisation joins: the original strings, ack and `error` event.
        let ack = ask("join:organization", json!({"organizationId": ORG_B})).await;
        assert_eq!(
            assert_err_ack(&ack, &what),
            "Unauthorized: organization mismatch"
        );
        expect_error_event(
            &c,
            "Unauthorized: you do not belong to this organization",
            &what,
        )
        .await;
        let ack = ask("join:room", json!({"room": format!("org:{ORG_B}")})).await;
        assert_eq!(
            assert_err_ack(&ack, &what),
            "Unauthorized: organization mismatch"
        );
        expect_error_event(
            &c,
            "Unauthorized: you do not belong to this organization",
            &what,
        )
        .await;

        // Another device's room, even in the same organisation.
        for other in [DEV_A2, DEV_B1] {
            let ack = ask("join:room", json!({"room": format!("device:{other}")})).await;
            assert_eq!(
                assert_err_ack(&ack, &what),
                "Unauthorized: cannot join this device room"
            );
            expect_error_event(&c, "Unauthorized: cannot join this device room", &what).await;
        }

        // Unknown patterns.
        for room in ["lobby", "dashboards:org-a", "socket:abc", "device:", "org:"] {
            let ack = ask("join:room", json!({"room": room})).await;
            assert_eq!(
                assert_err_ack(&ack, &format!("{what} {room}")),
                "Invalid room name"
            );
            expect_error_event(&c, "Invalid room name", &what).await;
        }

        // Leaving a room not joined; missing room names.
        let ack = ask("leave:room", json!({"room": format!("device:{DEV_A2}")})).await;
        assert_eq!(assert_err_ack(&ack, &what), "Not a member of this room");
        let ack = ask("leave:room", json!({"room": format!("dashboards:{ORG_A}")})).await;
        assert_eq!(assert_err_ack(&ack, &what), "Not a member of this room");
        for ev in ["join:room", "leave:room"] {
            for body in [json!({}), json!({"room": ""}), Value::Null] {
                let ack = ask(ev, body.clone()).await;
                assert_eq!(
                    assert_err_ack(&ack, &format!("{what} {ev} {body}")),
                    "Room name required"
                );
            }
        }
        let ack = ask("join:organization", json!({})).await;
        assert_eq!(assert_err_ack(&ack, &what), "Organization ID required");

        // What a device may do: its own organisation and its own room.
        let ack = ask("join:organization", json!({"organizationId": ORG_A})).await;
        assert_ok_ack(&ack, &what);
        assert_eq!(
            ack["data"],
            json!({"joined": true, "organizationId": ORG_A})
        );
        let j = expect_event(&c, "joined:organization", &what).await;
        assert_eq!(j["organizationId"], ORG_A);
        assert_iso_ms(&j["timestamp"], &what);
        let ack = ask("join:room", json!({"room": format!("device:{DEV_A1}")})).await;
        assert_ok_ack(&ack, &what);
        assert_eq!(
            ack["data"],
            json!({"joined": true, "room": format!("device:{DEV_A1}")})
        );
        let ack = ask("join:room", json!({"room": format!("org:{ORG_A}")})).await;
        assert_eq!(
            ack["data"],
            json!({"joined": true, "room": format!("org:{ORG_A}")})
        );
        let ack = ask("leave:room", json!({"room": format!("org:{ORG_A}")})).await;
        assert_ok_ack(&ack, &what);
        assert_eq!(
            ack["data"],
            json!({"left": true, "room": format!("org:{ORG_A}")})
        );
        let ack = ask("leave:room", json!({"room": format!("org:{ORG_A}")})).await;
        assert_eq!(assert_err_ack(&ack, &what), "Not a member of this room");
        // No stray `error` events beyond the ones checked above.
        let stray: Vec<_> = c
            .drain_events()
            .into_iter()
            .filter(|e| e.name == "error")
            .collect();
        assert!(stray.is_empty(), "{what}: {stray:?}");
        assert_heartbeat_works(&c, &what).await;
        c.disconnect().await;
    }
}

/// Every device event with bad payloads: `(event, payload, text the error must contain)`.
fn bad_payloads() -> Vec<(&'static str, Value, &'static str)> {
    let long = |n: usize| "x".repeat(n);
    vec![
        // heartbeat
        ("heartbeat", json!("hello"), "payload"),
        ("heartbeat", json!(42), "payload"),
        ("heartbeat", json!([1, 2]), "payload"),
        ("heartbeat", json!({"metrics": 5}), "metrics"),
        (
            "heartbeat",
            json!({"metrics": {"cpuUsage": "50"}}),
            "metrics.cpuUsage",
        ),
        (
            "heartbeat",
            json!({"metrics": {"cpuUsage": 101}}),
            "metrics.cpuUsage",
        ),
        (
            "heartbeat",
            json!({"metrics": {"memoryUsage": -1}}),
            "metrics.memoryUsage",
        ),
        (
            "heartbeat",
            json!({"metrics": {"diskUsage": -5}}),
            "metrics.diskUsage",
        ),
        ("heartbeat", json!({"appVersion": long(65)}), "appVersion"),
        ("heartbeat", json!({"appVersion": 7}), "appVersion"),
        ("heartbeat", json!({"currentContent": 5}), "currentContent"),
        (
            "heartbeat",
            json!({"currentContent": long(129)}),
            "currentContent",
        ),
        (
            "heartbeat",
            json!({"currentContent": {"playbackPosition": -1}}),
            "currentContent.playbackPosition",
        ),
        ("heartbeat", json!({"uptime": "long"}), "uptime"),
        ("heartbeat", json!({"timestamp": {"a": 1}}), "timestamp"),
        ("heartbeat", json!({"screenState": long(33)}), "screenState"),
        // content:impression
        ("content:impression", json!("c-img"), "payload"),
        ("content:impression", Value::Null, "payload"),
        ("content:impression", json!({}), "contentId"),
        ("content:impression", json!({"contentId": 5}), "contentId"),
        ("content:impression", json!({"contentId": ""}), "contentId"),
        (
            "content:impression",
            json!({"contentId": long(129)}),
            "contentId",
        ),
        (
            "content:impression",
            json!({"contentId": "c-img", "duration": -1}),
            "duration",
        ),
        (
            "content:impression",
            json!({"contentId": "c-img", "duration": "10"}),
            "duration",
        ),
        (
            "content:impression",
            json!({"contentId": "c-img", "completionPercentage": 101}),
            "completionPercentage",
        ),
        (
            "content:impression",
            json!({"contentId": "c-img", "playlistId": 3}),
            "playlistId",
        ),
        (
            "content:impression",
            json!({"contentId": "c-img", "timestamp": [1]}),
            "timestamp",
        ),
        // content:error
        ("content:error", json!([]), "payload"),
        ("content:error", json!({"contentId": "c-img"}), "errorType"),
        (
            "content:error",
            json!({"contentId": "c-img", "errorType": "exploded"}),
            "errorType",
        ),
        (
            "content:error",
            json!({"errorType": "timeout"}),
            "contentId",
        ),
        (
            "content:error",
            json!({"contentId": "c-img", "errorType": "timeout", "errorMessage": long(2001)}),
            "errorMessage",
        ),
        (
            "content:error",
            json!({"contentId": "c-img", "errorType": "timeout", "context": "str"}),
            "context",
        ),
        (
            "content:error",
            json!({"contentId": "c-img", "errorType": "timeout", "errorCode": 404}),
            "errorCode",
        ),
        // playlist:request
        ("playlist:request", json!("refresh"), "payload"),
        (
            "playlist:request",
            json!({"forceRefresh": "yes"}),
            "forceRefresh",
        ),
        (
            "playlist:request",
            json!({"lastKnownVersion": 5}),
            "lastKnownVersion",
        ),
        (
            "playlist:request",
            json!({"lastKnownVersion": long(65)}),
            "lastKnownVersion",
        ),
        // screenshot:response
        ("screenshot:response", json!("png"), "payload"),
        ("screenshot:response", json!({}), "requestId"),
        (
            "screenshot:response",
            json!({"requestId": long(65), "imageData": "AAAA", "width": 1, "height": 1}),
            "requestId",
        ),
        (
            "screenshot:response",
            json!({"requestId": "../etc/passwd", "imageData": "AAAA", "width": 1, "height": 1}),
            "requestId",
        ),
        (
            "screenshot:response",
            json!({"requestId": "r-1", "width": 1, "height": 1}),
            "imageData",
        ),
        (
            "screenshot:response",
            json!({"requestId": "r-1", "imageData": 12, "width": 1, "height": 1}),
            "imageData",
        ),
        (
            "screenshot:response",
            json!({"requestId": "r-1", "imageData": "AAAA", "width": 0, "height": 1}),
            "width",
        ),
        (
            "screenshot:response",
            json!({"requestId": "r-1", "imageData": "AAAA", "width": 1, "height": "1"}),
            "height",
        ),
        (
            "screenshot:response",
            json!({"requestId": "r-1", "imageData": "AAAA", "width": 100000, "height": 1}),
            "width",
        ),
        (
            "screenshot:response",
            json!({"requestId": "r-1", "imageData": "AAAA", "width": 1}),
            "height",
        ),
        // join:* (the original's messages name the field)
        ("join:organization", json!("org-a"), "Organization ID"),
        (
            "join:organization",
            json!({"organizationId": 5}),
            "Organization ID",
        ),
        (
            "join:organization",
            json!({"organizationId": long(129)}),
            "Organization ID",
        ),
        ("join:room", json!(7), "Room name"),
        ("join:room", json!({"room": ["device:dev-a1"]}), "Room name"),
        ("join:room", json!({"room": long(201)}), "Room name"),
        ("leave:room", json!("org:org-a"), "Room name"),
    ]
}

async fn malformed_payloads(kind: &str) {
    let (db, _pg, _dir) = gateway::seeded_db(kind, 0).await;
    let gw = Gateway::start(GatewayOptions::new(db.clone())).await;
    let conn = db_conn(&db).await;
    for t in TRANSPORTS {
        let what = format!("{kind}/{t:?}");
        let c = device(&gw, DEV_A1, ORG_A, t).await;
        expect_event(&c, "config", &what).await;
        for (ev, body, field) in bad_payloads() {
            let w = format!("{what} {ev} {}", truncate(&body));
            let ack = c
                .emit_with_ack(ev, body.clone(), T)
                .await
                .unwrap_or_else(|e| panic!("{w}: no ack: {e}"));
            let err = assert_err_ack(&ack, &w);
            assert!(
                err.contains(field),
                "{w}: error {err:?} must name {field:?}"
            );
            assert!(c.is_connected(), "{w}: the socket must stay connected");
        }
        // Nothing stored by any of them.
        let n = count(
            &conn,
            "SELECT COUNT(*) FROM content_impressions WHERE \"displayId\" = $1",
            vec![DEV_A1.into()],
        )
        .await;
        assert_eq!(n, 0, "{what}: no impression row for bad impressions");
        let shot = rows(
            &conn,
            r#"SELECT "lastScreenshot" AS s FROM devices WHERE "id" = $1"#,
            vec![DEV_A1.into()],
        )
        .await;
        assert_eq!(shot[0]["s"], Value::Null, "{what}: no screenshot recorded");
        // The socket still works: a valid heartbeat, and a valid impression is stored.
        assert_heartbeat_works(&c, &what).await;
        let ack = c
            .emit_with_ack("content:impression", json!({"contentId": "c-img"}), T)
            .await
            .unwrap();
        assert_ok_ack(&ack, &what);
        let n = count(
            &conn,
            "SELECT COUNT(*) FROM content_impressions WHERE \"displayId\" = $1",
            vec![DEV_A1.into()],
        )
        .await;
        assert_eq!(n, 1, "{what}: the valid impression is stored");
        conn.execute_unprepared("DELETE FROM content_impressions")
            .await
            .unwrap();
        c.disconnect().await;
    }
}

fn truncate(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..60])
    } else {
        s
    }
}

/// A fresh device connection that heartbeats: the server survived and still serves.
async fn assert_still_serving(gw: &Gateway, t: Transport, what: &str) {
    assert_alive(gw, what).await;
    let c = device(gw, DEV_A2, ORG_A, t).await;
    expect_event(&c, "config", what).await;
    assert_heartbeat_works(&c, what).await;
    c.disconnect().await;
}

async fn raw_garbage_and_oversized_frames(kind: &str) {
    let (db, _pg, _dir) = gateway::seeded_db(kind, 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    for t in TRANSPORTS {
        for raw in [
            "42[not json",
            "42",
            "42{\"a\":1}",
            "42[]",
            "42[5,{}]",
            "43999[{}]",
            "4",
            "49",
            "9",
            "",
        ] {
            let what = format!("{kind}/{t:?} raw {raw:?}");
            let c = device(&gw, DEV_A1, ORG_A, t).await;
            expect_event(&c, "config", &what).await;
            // The send itself may fail if the server drops the transport; either is fine.
            let _ = c.send_raw(raw).await;
            // Whatever the server decided for this client, it must keep serving others.
            assert_still_serving(&gw, t, &what).await;
            c.disconnect().await;
        }
        // An Engine.IO payload far over the max (4 MB) is refused without crashing anything.
        let what = format!("{kind}/{t:?} 4 MB frame");
        let c = device(&gw, DEV_A1, ORG_A, t).await;
        expect_event(&c, "config", &what).await;
        let huge = format!(
            "42[\"heartbeat\",{{\"appVersion\":\"{}\"}}]",
            "x".repeat(4 << 20)
        );
        let _ = c.send_raw(&huge).await;
        if c.is_connected() {
            // If the server kept the connection, it must at least not have accepted the frame.
            let r = c.closed(Duration::from_secs(3)).await;
            if r.is_none() {
                assert_heartbeat_works(&c, &what).await;
            }
        }
        assert_still_serving(&gw, t, &what).await;
        c.disconnect().await;
    }
    assert!(
        !gw.logs().contains("panicked"),
        "the gateway must not panic on garbage"
    );
}

async fn ttl(redis: &RedisServer, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap()
}

async fn redis_json(redis: &RedisServer, key: &str) -> Value {
    let raw = redis
        .get(key)
        .await
        .unwrap_or_else(|| panic!("{key} must exist"));
    serde_json::from_str(&raw).unwrap()
}

/// The Redis keys keep the reference's names, JSON shapes and TTLs (§5.2): a mixed Node/Rust
/// deployment or a rollback shares them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_keep_the_reference_shapes() {
    let redis = RedisServer::start().await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).redis(&redis.url())).await;
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    expect_event(&c, "playlist:update", "connect").await;

    let key = format!("device:status:{DEV_A1}");
    let st = redis_json(&redis, &key).await;
    assert_eq!(st["status"], "online", "{st}");
    assert_eq!(st["organizationId"], ORG_A, "{st}");
    assert!(st["socketId"].is_string(), "{st}");
    assert!(st["lastHeartbeat"].is_i64(), "{st}");
    assert!((1..=60).contains(&ttl(&redis, &key).await));
    let pl_key = format!("playlist:{DEV_A1}");
    let cached = redis_json(&redis, &pl_key).await;
    assert_eq!(
        cached["id"], PLAYLIST_MAIN,
        "the resolved playlist is cached"
    );
    assert!((1..=3600).contains(&ttl(&redis, &pl_key).await));

    let hb = json!({"metrics": {"cpuUsage": 12.5, "memoryUsage": 40}, "currentContent": {"contentId": "c-img", "playlistId": PLAYLIST_MAIN}});
    c.emit_with_ack("heartbeat", hb, T).await.unwrap();
    let st = redis_json(&redis, &key).await;
    assert_eq!(
        st["metrics"],
        json!({"cpuUsage": 12.5, "memoryUsage": 40.0}),
        "{st}"
    );
    assert_eq!(st["currentContent"]["contentId"], "c-img", "{st}");
    assert!((1..=60).contains(&ttl(&redis, &key).await));
    let latest_key = format!("heartbeat:{DEV_A1}:latest");
    let latest = redis_json(&redis, &latest_key).await;
    assert_eq!(latest["deviceId"], DEV_A1);
    assert!(latest["timestamp"].is_i64());
    assert_eq!(latest["metrics"]["cpuUsage"], 12.5);
    assert!((1..=300).contains(&ttl(&redis, &latest_key).await));

    for _ in 0..2 {
        c.emit_with_ack("content:impression", json!({"contentId": "c-img"}), T)
            .await
            .unwrap();
    }
    let stats_key = format!("stats:device:{DEV_A1}:impressions:{}", utc_today());
    assert_eq!(redis.get(&stats_key).await.as_deref(), Some("2"));
    assert!((1..=86_400).contains(&ttl(&redis, &stats_key).await));

    for i in 0..15 {
        c.emit_with_ack(
            "content:error",
            json!({"contentId": "c-vid", "errorType": "network_error", "errorMessage": format!("e{i}")}),
            T,
        )
        .await
        .unwrap();
    }
    let errors_key = format!("errors:device:{DEV_A1}");
    let errors = redis_json(&redis, &errors_key).await;
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 10, "at most 10, oldest dropped");
    assert_eq!(errors[0]["errorMessage"], "e5");
    assert_eq!(errors[9]["errorMessage"], "e14");
    assert_eq!(errors[9]["deviceId"], DEV_A1);
    assert_eq!(errors[9]["contentId"], "c-vid");
    assert_eq!(errors[9]["errorType"], "network_error");
    assert!(errors[9]["timestamp"].is_i64());
    assert!((1..=3600).contains(&ttl(&redis, &errors_key).await));

    // A push invalidates the cached playlist.
    gw.api()
        .post(
            "/api/push/playlist",
            json!({"deviceId": DEV_A1, "playlist": {"id": "x"}}),
        )
        .await;
    assert!(
        !redis.exists(&pl_key).await,
        "push/playlist drops playlist:{{id}}"
    );

    c.disconnect().await;
    let st = eventually(Duration::from_secs(10), "offline status JSON", || async {
        let st = redis_json(&redis, &key).await;
        (st["status"] == "offline").then_some(st)
    })
    .await;
    assert_eq!(st["socketId"], Value::Null, "{st}");
    assert_eq!(st["organizationId"], ORG_A, "{st}");
    let t = ttl(&redis, &key).await;
    assert!(t > 60 && t <= 86_400, "offline status lives a day: {t}");
}

/// A database or Redis failure during auth is transient: the client must never get a
/// `connect_error` (socket.io-client does not retry one; with `unauthorized` the players even wipe
/// their credentials), only see the transport close so it retries with its own backoff.
///
/// The gateway closes that transport itself once its connect timeout (`CONNECT_TIMEOUT_MS`, 3 s
/// here) has passed, so the attempt is bounded well above it: a connect that hangs until the
/// client gives up is a failure, not a transient refusal. The gateway must also have counted the
/// attempt as deferred (`result="unavailable"`), so the close is its decision, not a crash.
async fn assert_transient(gw: &Gateway, auth: Value, what: &str) {
    use vizora_sioclient::ConnectError;
    let before = deferred_handshakes(gw).await;
    let r = connect(
        gw.client()
            .auth(auth)
            .connect_timeout(Duration::from_secs(30)),
    )
    .await;
    match r {
        Err(ConnectError::TransportClosed(_)) => {}
        Err(ConnectError::Timeout) => {
            panic!("{what}: the gateway never closed the transport (the connect hung for 30 s)")
        }
        Err(e) => panic!("{what}: a transient failure must close the transport, got {e:?}"),
        Ok(c) => panic!("{what}: connected without its dependency ({c:?})"),
    }
    let after = deferred_handshakes(gw).await;
    assert_eq!(
        after,
        before + 1,
        "{what}: the gateway counts the handshake it deferred"
    );
}

/// `vizora_gateway_connections_total{result="unavailable"}`: handshakes deferred because a
/// dependency was down.
async fn deferred_handshakes(gw: &Gateway) -> u64 {
    let (status, text) = gw.api().get_text("/metrics", &[]).await;
    assert_eq!(status, 200, "metrics from loopback: {text}");
    text.lines()
        .filter(|l| {
            l.starts_with("vizora_gateway_connections_total{")
                && l.contains(r#"result="unavailable""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_failures_during_auth_are_not_unauthorized() {
    // Redis down.
    let mut redis = RedisServer::start().await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).redis(&redis.url())).await;
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    expect_event(&c, "config", "before").await;
    c.disconnect().await;
    redis.stop();
    for (what, auth) in [
        (
            "device, Redis down",
            json!({"token": device_token(DEV_A2, ORG_A)}),
        ),
        (
            "dashboard, Redis down",
            json!({"token": user_token("u-a", ORG_A)}),
        ),
    ] {
        assert_transient(&gw, auth, what).await;
    }
    redis.restart().await;
    assert_alive(&gw, "after Redis came back").await;
    let c = eventually(
        Duration::from_secs(20),
        "a device connects again",
        || async {
            connect(
                gw.client()
                    .auth(json!({"token": device_token(DEV_A3, ORG_A)}))
                    .connect_timeout(Duration::from_secs(5)),
            )
            .await
            .ok()
        },
    )
    .await;
    expect_event(&c, "config", "after").await;
    drop(gw);

    // The database gone.
    let (db, pg, _dir) = gateway::seeded_db("postgres", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let admin = sea_orm::Database::connect(vizora_gateway_tests::postgres::admin_url())
        .await
        .unwrap();
    let name = pg.as_ref().unwrap().name.clone();
    admin
        .execute_unprepared(&format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#))
        .await
        .unwrap();
    assert_transient(
        &gw,
        json!({"token": device_token(DEV_A1, ORG_A)}),
        "device, database gone",
    )
    .await;
    assert_alive(&gw, "database gone").await;
}

/// The Engine.IO OPEN packet carries the configured ping timings and a max payload that fits the
/// largest legal screenshot (2 MiB decoded → 2,796,204 base64 characters plus the envelope) and
/// nothing much larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_open_packet_carries_the_configuration() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let body = reqwest::get(format!("{}/socket.io/?EIO=4&transport=polling", gw.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("OPEN packet")).unwrap();
    assert_eq!(open["pingInterval"], 1000, "{open}");
    assert_eq!(open["pingTimeout"], 2000, "{open}");
    assert_eq!(open["upgrades"], json!(["websocket"]), "{open}");
    let max = open["maxPayload"].as_u64().unwrap();
    assert!(
        (2_796_204 + 200..3_000_000).contains(&max),
        "maxPayload {max} must fit the largest screenshot and little more"
    );
}
