//! Screenshots end to end: the `screenshot` command carries a request id (the caller's or one the
//! gateway mints), the device answers `screenshot:response`, the image is checked, stored and
//! announced to the organisation's dashboards with a signed link; every refusal keeps the
//! reference's wording and stores nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use base64::Engine;
use common::*;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, Transport};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Deterministic pseudo-random bytes (noise does not compress, so sizes are predictable).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A real PNG (RGB noise), optionally padded with a private ancillary chunk to `total` bytes.
fn png(w: u32, h: u32, total: Option<usize>) -> Vec<u8> {
    let encode = |pad: Option<usize>| {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(&noise((w * h * 3) as usize, 7))
            .unwrap();
        if let Some(n) = pad {
            wr.write_chunk(png::chunk::ChunkType(*b"vzPd"), &vec![b'p'; n])
                .unwrap();
        }
        wr.finish().unwrap();
        out
    };
    let plain = encode(None);
    match total {
        None => plain,
        Some(t) => {
            // A chunk costs 12 bytes of framing plus its data.
            let padded = encode(Some(t - plain.len() - 12));
            assert_eq!(padded.len(), t);
            padded
        }
    }
}

/// A real baseline JPEG.
fn jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 80);
    enc.encode(
        &noise(w as usize * h as usize * 3, 3),
        w,
        h,
        jpeg_encoder::ColorType::Rgb,
    )
    .unwrap();
    out
}

fn response(request_id: &str, bytes: &[u8], w: u32, h: u32) -> Value {
    json!({"requestId": request_id, "imageData": b64(bytes), "width": w, "height": h,
           "timestamp": "2026-03-01T12:00:00.000Z"})
}

/// Sends the screenshot command through the internal API and returns the request id the device
/// received (`requested` is the caller's own id, or `None` to let the gateway mint one).
async fn request_screenshot(
    gw: &Gateway,
    c: &Client,
    dev: &str,
    requested: Option<&str>,
) -> String {
    let body = match requested {
        Some(r) => json!({"displayId": dev, "command": "screenshot", "payload": {"requestId": r}}),
        None => json!({"deviceId": dev, "command": "screenshot"}),
    };
    let (s, r) = gw.api().post("/api/internal/command", body).await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["message"], "Command screenshot sent to device");
    let cmd = expect_event(c, "command", "screenshot command").await;
    assert_eq!(cmd["type"], "screenshot", "{cmd}");
    assert_eq!(cmd["id"], r["commandId"], "{cmd}");
    let rid = cmd["payload"]["requestId"]
        .as_str()
        .expect("payload.requestId")
        .to_string();
    assert!(
        (1..=64).contains(&rid.len())
            && rid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "request id {rid:?} must match [A-Za-z0-9_-]{{1,64}}"
    );
    if let Some(r) = requested {
        assert_eq!(rid, r, "the caller's request id is kept");
    }
    rid
}

async fn last_screenshot(conn: &sea_orm::DatabaseConnection, dev: &str) -> (Value, Value) {
    let r = rows(
        conn,
        r#"SELECT "lastScreenshot" AS s, CAST("lastScreenshotAt" AS TEXT) AS at FROM devices WHERE "id" = $1"#,
        vec![dev.into()],
    )
    .await;
    (r[0]["s"].clone(), r[0]["at"].clone())
}

fn stored_files(gw: &Gateway) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path().display().to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&gw.storage_dir(), &mut out);
    out
}

mod flow {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::flow("sqlite").await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::flow("postgres").await
    }
}

async fn flow(kind: &str) {
    let (db, _pg, _dir) = gateway::seeded_db(kind, 0).await;
    let gw = Gateway::start(GatewayOptions::new(db.clone())).await;
    let conn = db_conn(&db).await;
    let http = reqwest::Client::new();
    let dash = dashboard(&gw, "u-a", ORG_A, Transport::Websocket).await;
    let dash_b = dashboard(&gw, "u-b", ORG_B, Transport::Websocket).await;
    expect_event(&dash, "device:status:batch", kind).await;
    expect_event(&dash_b, "device:status:batch", kind).await;
    let mut n = 0;
    for t in TRANSPORTS {
        let c = device(&gw, DEV_A1, ORG_A, t).await;
        expect_event(&c, "config", kind).await;
        for (label, requested, bytes, w, h, ext, ctype) in [
            (
                "png, gateway-minted id",
                None,
                png(32, 24, None),
                32,
                24,
                "png",
                "image/png",
            ),
            (
                "jpeg, caller-minted id",
                Some(format!("req-{t:?}-jpeg")),
                jpeg(40, 30),
                40,
                30,
                "jpg",
                "image/jpeg",
            ),
            (
                "png, caller-minted id",
                Some(format!("req-{t:?}-png")),
                png(5, 7, None),
                5,
                7,
                "png",
                "image/png",
            ),
        ] {
            n += 1;
            let what = format!("{kind}/{t:?} {label}");
            let rid = request_screenshot(&gw, &c, DEV_A1, requested.as_deref()).await;
            let ack = c
                .emit_with_ack("screenshot:response", response(&rid, &bytes, w, h), T)
                .await
                .unwrap();
            assert_ok_ack(&ack, &what);
            assert_eq!(ack["data"]["saved"], true, "{what}: {ack}");

            // The organisation's dashboard is told; the other organisation's is not.
            let ready = expect_event(&dash, "screenshot:ready", &what).await;
            let keys: Vec<&str> = ready
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            for k in [
                "deviceId",
                "requestId",
                "url",
                "width",
                "height",
                "capturedAt",
                "timestamp",
            ] {
                assert!(
                    keys.contains(&k),
                    "{what}: screenshot:ready lacks {k}: {ready}"
                );
            }
            assert_eq!(ready["deviceId"], DEV_A1, "{what}");
            assert_eq!(ready["requestId"], rid, "{what}");
            assert_eq!(ready["width"], w, "{what}");
            assert_eq!(ready["height"], h, "{what}");
            assert_eq!(ready["capturedAt"], "2026-03-01T12:00:00.000Z", "{what}");
            assert_iso_ms(&ready["timestamp"], &what);
            let url = ready["url"].as_str().unwrap().to_string();
            assert!(
                url.starts_with(&gw.url()),
                "{what}: a link under PUBLIC_URL: {url}"
            );

            // The link serves the same bytes with the real content type.
            let r = http.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{what}: {url}");
            assert_eq!(r.headers()["content-type"], ctype, "{what}");
            assert_eq!(
                r.bytes().await.unwrap().to_vec(),
                bytes,
                "{what}: same bytes"
            );

            // Stored under screenshots/{org}/{device}/{requestId}.{ext}.
            let suffix = format!("screenshots/{ORG_A}/{DEV_A1}/{rid}.{ext}");
            assert!(
                stored_files(&gw).iter().any(|f| f.ends_with(&suffix)),
                "{what}: {suffix} in {:?}",
                stored_files(&gw)
            );
            assert_eq!(stored_files(&gw).len(), n, "{what}");

            // Tampered links are refused.
            let (base, query) = url.split_once('?').unwrap();
            let mut tampered = Vec::new();
            let sig = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("sig="))
                .unwrap();
            let flipped: String = sig
                .chars()
                .enumerate()
                .map(|(i, ch)| {
                    if i == 0 {
                        if ch == 'a' { 'b' } else { 'a' }
                    } else {
                        ch
                    }
                })
                .collect();
            tampered.push(url.replace(&format!("sig={sig}"), &format!("sig={flipped}")));
            tampered.push(url.replace(&format!("sig={sig}"), "sig="));
            tampered.push(base.to_string());
            tampered.push(url.replace(DEV_A1, DEV_A2));
            let exp = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("exp="))
                .unwrap();
            let later = (exp.parse::<i64>().unwrap() + 1_000_000).to_string();
            tampered.push(url.replace(&format!("exp={exp}"), &format!("exp={later}")));
            for bad in tampered {
                let r = http.get(&bad).send().await.unwrap();
                assert_eq!(r.status(), 403, "{what}: tampered link {bad}");
            }

            // The device row records it.
            let (last, at) = last_screenshot(&conn, DEV_A1).await;
            let last: Value =
                serde_json::from_str(last.as_str().expect("lastScreenshot set")).unwrap();
            assert_eq!(last, json!({"url": url, "width": w, "height": h}), "{what}");
            assert!(at.is_string(), "{what}: lastScreenshotAt set");

            // A request id is good for one response only.
            let ack = c
                .emit_with_ack("screenshot:response", response(&rid, &bytes, w, h), T)
                .await
                .unwrap();
            assert_eq!(
                assert_err_ack(&ack, &what),
                "Unknown or expired screenshot request",
                "{what}: reused request id"
            );
        }
        c.disconnect().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaked: Vec<_> = dash_b.drain_events();
    assert!(
        leaked.is_empty(),
        "org B must not hear of org A's screenshots: {leaked:?}"
    );
    assert_eq!(
        stored_files(&gw).len(),
        n,
        "one object per accepted screenshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_the_reference_wording_and_store_nothing() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw =
        Gateway::start(GatewayOptions::new(db.clone()).env("SCREENSHOT_MAX_BYTES", 4096)).await;
    let conn = db_conn(&db).await;
    let dash = dashboard(&gw, "u-a", ORG_A, Transport::Websocket).await;
    expect_event(&dash, "device:status:batch", "dash").await;
    for t in TRANSPORTS {
        let what = format!("{t:?}");
        let a1 = device(&gw, DEV_A1, ORG_A, t).await;
        let a2 = device(&gw, DEV_A2, ORG_A, t).await;
        expect_event(&a1, "config", &what).await;
        expect_event(&a2, "config", &what).await;
        let rid = request_screenshot(&gw, &a1, DEV_A1, None).await;
        let good = png(8, 8, None);
        let gif = b"GIF89a\x08\x00\x08\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x08\x00\x08\x00\x00\x02\x07\x84\x8f\xa9\xcb\xed\x0f\x00;".to_vec();
        let too_big = png(64, 64, None);
        assert!(too_big.len() > 4096);
        let cases: Vec<(&str, &Client, Value, &str)> = vec![
            (
                "forged request id",
                &a1,
                response("never-issued-by-anyone", &good, 8, 8),
                "Unknown or expired screenshot request",
            ),
            (
                "another device's request id",
                &a2,
                response(&rid, &good, 8, 8),
                "Unknown or expired screenshot request",
            ),
            (
                "bad base64",
                &a1,
                json!({"requestId": rid, "imageData": "!!!not base64!!!", "width": 8, "height": 8}),
                "Invalid base64 format",
            ),
            (
                "base64 with a bad tail",
                &a1,
                json!({"requestId": rid, "imageData": format!("{}=A", b64(&good)), "width": 8, "height": 8}),
                "Invalid base64 format",
            ),
            (
                "a GIF",
                &a1,
                response(&rid, &gif, 8, 8),
                "Invalid image format: only PNG and JPEG are accepted",
            ),
            (
                "random bytes",
                &a1,
                response(&rid, &noise(300, 1), 8, 8),
                "Invalid image format: only PNG and JPEG are accepted",
            ),
            (
                "PNG magic without a header",
                &a1,
                response(&rid, b"\x89PNG\r\n\x1a\n", 8, 8),
                "Invalid image format: only PNG and JPEG are accepted",
            ),
            (
                "dimensions not matching",
                &a1,
                response(&rid, &good, 8, 9),
                "Image dimensions do not match width/height",
            ),
            (
                "dimensions swapped (jpeg)",
                &a1,
                response(&rid, &jpeg(16, 8), 8, 16),
                "Image dimensions do not match width/height",
            ),
            (
                "over SCREENSHOT_MAX_BYTES",
                &a1,
                response(&rid, &too_big, 64, 64),
                "Screenshot data too large (max 4KB)",
            ),
        ];
        for (label, c, body, msg) in cases {
            let w = format!("{what} {label}");
            let ack = c
                .emit_with_ack("screenshot:response", body, T)
                .await
                .unwrap();
            assert_eq!(assert_err_ack(&ack, &w), msg, "{w}");
            assert!(c.is_connected(), "{w}");
        }
        // Nothing was stored, recorded or announced.
        assert!(
            stored_files(&gw).is_empty(),
            "{what}: {:?}",
            stored_files(&gw)
        );
        assert_eq!(
            last_screenshot(&conn, DEV_A1).await.0,
            Value::Null,
            "{what}"
        );
        assert_eq!(
            last_screenshot(&conn, DEV_A2).await.0,
            Value::Null,
            "{what}"
        );
        assert!(
            dash.wait_for("screenshot:ready", Duration::from_millis(300))
                .await
                .is_none()
        );
        // Refused uploads did not consume the id: the right device can still answer once.
        let ack = a1
            .emit_with_ack("screenshot:response", response(&rid, &good, 8, 8), T)
            .await
            .unwrap();
        assert_ok_ack(&ack, &what);
        expect_event(&dash, "screenshot:ready", &what).await;
        // A dashboard cannot answer for a device.
        let rid2 = request_screenshot(&gw, &a1, DEV_A1, None).await;
        let ack = dash
            .emit_with_ack("screenshot:response", response(&rid2, &good, 8, 8), T)
            .await
            .unwrap();
        assert_err_ack(&ack, &what);
        std::fs::remove_dir_all(gw.storage_dir()).unwrap();
        conn.execute_unprepared(r#"UPDATE devices SET "lastScreenshot" = NULL"#)
            .await
            .unwrap();
        a1.disconnect().await;
        a2.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_expire() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).env("SCREENSHOT_REQUEST_TTL_MS", 1000)).await;
    let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
    expect_event(&c, "config", "expiry").await;
    // The positive control: the same response to a request within its lifetime is stored, so the
    // refusal below is the expiry's doing, not the response's.
    let fresh = request_screenshot(&gw, &c, DEV_A1, None).await;
    let ack = c
        .emit_with_ack(
            "screenshot:response",
            response(&fresh, &png(4, 4, None), 4, 4),
            T,
        )
        .await
        .unwrap();
    assert_eq!(ack["data"]["saved"], true, "{ack}");
    assert_eq!(stored_files(&gw).len(), 1);
    let rid = request_screenshot(&gw, &c, DEV_A1, None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ack = c
        .emit_with_ack(
            "screenshot:response",
            response(&rid, &png(4, 4, None), 4, 4),
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        assert_err_ack(&ack, "expired"),
        "Unknown or expired screenshot request"
    );
    assert_eq!(
        stored_files(&gw).len(),
        1,
        "nothing stored for the expired one"
    );
}

/// The engine's max payload fits the largest legal screenshot (SCREENSHOT_MAX_BYTES decoded,
/// base64 plus envelope) on both transports; one byte more is refused with an ack, not a drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_legal_screenshot_fits() {
    const MAX: usize = 2_097_152;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let largest = png(64, 48, Some(MAX));
    let over = {
        let mut v = png(64, 48, None);
        v.resize(MAX + 3, 0);
        v
    };
    for t in TRANSPORTS {
        let what = format!("{t:?}");
        let c = device(&gw, DEV_A1, ORG_A, t).await;
        expect_event(&c, "config", &what).await;
        let long = Duration::from_secs(30);
        let rid = request_screenshot(&gw, &c, DEV_A1, None).await;
        let ack = c
            .emit_with_ack("screenshot:response", response(&rid, &over, 64, 48), long)
            .await
            .unwrap_or_else(|e| panic!("{what}: one byte over the cap gets an ack: {e}"));
        assert_eq!(
            assert_err_ack(&ack, &what),
            "Screenshot data too large (max 2MB)"
        );
        let ack = c
            .emit_with_ack(
                "screenshot:response",
                response(&rid, &largest, 64, 48),
                long,
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: the largest legal screenshot must fit: {e}"));
        assert_ok_ack(&ack, &what);
        assert_eq!(ack["data"]["saved"], true);
        assert_heartbeat_works(&c, &what).await;
        c.disconnect().await;
    }
}

/// A screenshot command for an offline device is queued with its request id recorded; the
/// device gets it on connect and its answer is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_screenshot_command_is_answerable_after_connect() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let (s, r) = gw
        .api()
        .post(
            "/api/internal/command",
            json!({"deviceId": DEV_A2, "command": {"type": "screenshot", "payload": {"requestId": "queued-1"}}}),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["delivery"], "queued", "{r}");
    let c = device(&gw, DEV_A2, ORG_A, Transport::Websocket).await;
    let cmd = expect_event(&c, "command", "queued screenshot").await;
    assert_eq!(cmd["type"], "screenshot");
    assert_eq!(cmd["payload"]["requestId"], "queued-1");
    let ack = c
        .emit_with_ack(
            "screenshot:response",
            response("queued-1", &png(10, 10, None), 10, 10),
            T,
        )
        .await
        .unwrap();
    assert_ok_ack(&ack, "queued screenshot");
    assert_eq!(ack["data"]["saved"], true);
}
