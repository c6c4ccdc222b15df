//! The S3 path against a real S3-compatible server (s3rver, from the npm registry, installed by
//! `npm ci` in tests/js, with its default S3RVER/S3RVER keys; it is lenient about presigned-query
//! signatures, so link tampering is not asserted here): the
//! screenshot is stored under `screenshots/{org}/{device}/{requestId}.png` with its real content
//! type, and `screenshot:ready` carries a presigned link signed for `MINIO_PUBLIC_ENDPOINT`.
//! A missing bucket is created at start; storage that is unreachable at start is set up in the
//! background as soon as it answers, without a gateway restart, and the deep health report
//! follows it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::json;
use vizora_gateway_tests::*;
use vizora_sioclient::{Transport, connect};

const T: Duration = Duration::from_secs(10);
const BUCKET: &str = "vizora-content";

struct S3rver {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for S3rver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The s3rver process on `port`, with or without the bucket, storing into `dir`.
fn s3rver_process(port: u16, dir: &tempfile::TempDir, with_bucket: bool) -> Child {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    let bin = js.join("node_modules/s3rver/bin/s3rver.js");
    assert!(
        bin.exists(),
        "s3rver missing: run `npm ci` in tests/js (scripts/test does)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(&bin).args([
        "-d",
        dir.path().to_str().unwrap(),
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--silent",
    ]);
    if with_bucket {
        cmd.args(["--configure-bucket", BUCKET]);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node")
}

/// s3rver on `port` (one a gateway was already told about), with or without the bucket.
async fn s3rver_on(port: u16, with_bucket: bool) -> S3rver {
    let dir = tempfile::tempdir().unwrap();
    let child = ports::start_on_ports(&[port], "s3rver", |p| {
        s3rver_process(p[0], &dir, with_bucket)
    })
    .await;
    answering(S3rver {
        port,
        child,
        _dir: dir,
    })
    .await
}

/// s3rver on a free port, with or without the bucket.
async fn s3rver(with_bucket: bool) -> S3rver {
    let dir = tempfile::tempdir().unwrap();
    let (bound, child) =
        ports::start_on_free_ports(1, "s3rver", |p| s3rver_process(p[0], &dir, with_bucket)).await;
    answering(S3rver {
        port: bound[0],
        child,
        _dir: dir,
    })
    .await
}

/// Listening is not serving yet: waits for the first HTTP answer.
async fn answering(s3: S3rver) -> S3rver {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/", s3.port);
    eventually(T, "s3rver to answer", || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(url).send().await.ok().map(|_| ()) }
    })
    .await;
    s3
}

fn s3_gateway(db: DbTarget, port: u16) -> GatewayOptions {
    GatewayOptions::new(db)
        .env("MINIO_ENDPOINT", "127.0.0.1")
        .env("MINIO_PORT", port)
        .env("MINIO_ACCESS_KEY", "S3RVER")
        .env("MINIO_SECRET_KEY", "S3RVER")
        .env("MINIO_BUCKET", BUCKET)
        .env("MINIO_PUBLIC_ENDPOINT", format!("http://localhost:{port}"))
}

async fn storage_health(gw: &Gateway) -> serde_json::Value {
    let (_, h) = gw.api().get("/api/health").await;
    h["dependencies"]["storage"].clone()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&vec![7u8; (w * h * 3) as usize])
        .unwrap();
    wr.finish().unwrap();
    out
}

/// A dashboard asks a screen for a screenshot; returns the screen's ack.
async fn screenshot(
    gw: &Gateway,
    request_id: &str,
) -> (serde_json::Value, Vec<u8>, vizora_sioclient::Client) {
    let dash = connect(
        gw.client()
            .transport(Transport::Websocket)
            .auth(json!({"token": user_token("ops", ORG_A)})),
    )
    .await
    .unwrap();
    let screen = connect(
        gw.client()
            .transport(Transport::Websocket)
            .auth(json!({"token": device_token(DEV_A1, ORG_A)})),
    )
    .await
    .unwrap();
    let (st, _) = gw
        .api()
        .command(DEV_A1, "screenshot", Some(json!({"requestId": request_id})))
        .await;
    assert_eq!(st, 201);
    let cmd = screen.wait_for("command", T).await.unwrap();
    assert_eq!(cmd["payload"]["requestId"], request_id);
    let bytes = png(64, 48);
    let resp = json!({"requestId": request_id, "imageData": base64::engine::general_purpose::STANDARD.encode(&bytes),
                      "width": 64, "height": 48, "timestamp": "2026-11-26T10:00:00.000Z"});
    let ack = screen
        .emit_with_ack("screenshot:response", resp, T)
        .await
        .unwrap();
    drop(screen);
    (ack, bytes, dash)
}

/// The whole flow: stored under its key with its type, announced with a working presigned link.
async fn assert_screenshot_flow(gw: &Gateway, s3: &S3rver, request_id: &str) {
    let (ack, bytes, dash) = screenshot(gw, request_id).await;
    assert_eq!(ack["success"], true, "{ack}");
    let ready = dash.wait_for("screenshot:ready", T).await.unwrap();
    let url = ready["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!(
            "http://localhost:{}/{BUCKET}/screenshots/{ORG_A}/{DEV_A1}/{request_id}.png",
            s3.port
        )),
        "{url}"
    );
    assert!(url.contains("X-Amz-Signature="), "{url}");
    // The link works (s3rver checks the signature) and serves the image with its real type.
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
}

#[tokio::test]
async fn screenshots_go_to_s3_with_presigned_links() {
    let s3 = s3rver(true).await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(s3_gateway(db, s3.port)).await;
    assert_screenshot_flow(&gw, &s3, "s3-req-1").await;
}

#[tokio::test]
async fn a_missing_bucket_is_created_at_start() {
    let s3 = s3rver(false).await;
    let http = reqwest::Client::new();
    let before = http
        .head(format!("http://127.0.0.1:{}/{BUCKET}", s3.port))
        .send()
        .await
        .unwrap();
    assert_eq!(
        before.status().as_u16(),
        404,
        "the server starts without the bucket"
    );
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(s3_gateway(db, s3.port)).await;
    assert_screenshot_flow(&gw, &s3, "s3-new-bucket").await;
    assert_eq!(storage_health(&gw).await["status"], "healthy");
}

#[tokio::test]
async fn storage_unreachable_at_start_is_picked_up_without_a_restart() {
    let port = free_port();
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(s3_gateway(db, port)).await;
    // Nothing listens yet: the gateway serves, health names the problem, screenshots fail with
    // the original wording (and nothing else is affected).
    let h = storage_health(&gw).await;
    assert_eq!(h["status"], "unhealthy", "{h}");
    assert_eq!(h["kind"], "s3", "{h}");
    assert!(h["error"].as_str().is_some_and(|e| !e.is_empty()), "{h}");
    let (_, whole) = gw.api().get("/api/health").await;
    assert_eq!(whole["status"], "unhealthy", "{whole}");
    let (ack, _, _dash) = screenshot(&gw, "s3-too-early").await;
    assert_eq!(ack["success"], false, "{ack}");
    assert_eq!(ack["error"], "Storage service unavailable", "{ack}");
    let ready = gw.api().get("/api/health/ready").await;
    assert_eq!(
        ready.0, 200,
        "storage does not take the replica out of service"
    );

    // The server comes up (without the bucket): the gateway creates it and screenshots work.
    let s3 = s3rver_on(port, false).await;
    eventually(
        Duration::from_secs(60),
        "storage to become healthy",
        || async { (storage_health(&gw).await["status"] == "healthy").then_some(()) },
    )
    .await;
    assert_screenshot_flow(&gw, &s3, "s3-later").await;
}
