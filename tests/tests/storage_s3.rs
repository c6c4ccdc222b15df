//! The S3 path against a real S3-compatible server (s3rver, from the npm registry, installed by
//! `npm ci` in tests/js, with its default S3RVER/S3RVER keys; it is lenient about presigned-query
//! signatures, so link tampering is not asserted here): the
//! screenshot is stored under `screenshots/{org}/{device}/{requestId}.png` with its real content
//! type, and `screenshot:ready` carries a presigned link signed for `MINIO_PUBLIC_ENDPOINT`.
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

async fn s3rver() -> S3rver {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    let bin = js.join("node_modules/s3rver/bin/s3rver.js");
    assert!(
        bin.exists(),
        "s3rver missing: run `npm ci` in tests/js (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("node")
        .arg(&bin)
        .args([
            "-d",
            dir.path().to_str().unwrap(),
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--silent",
        ])
        .args(["--configure-bucket", BUCKET])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let http = reqwest::Client::new();
    eventually(T, "s3rver to listen", || {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    S3rver {
        port,
        child,
        _dir: dir,
    }
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

#[tokio::test]
async fn screenshots_go_to_s3_with_presigned_links() {
    let s3 = s3rver().await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("MINIO_ENDPOINT", "127.0.0.1")
            .env("MINIO_PORT", s3.port)
            .env("MINIO_ACCESS_KEY", "S3RVER")
            .env("MINIO_SECRET_KEY", "S3RVER")
            .env("MINIO_BUCKET", BUCKET)
            .env(
                "MINIO_PUBLIC_ENDPOINT",
                format!("http://localhost:{}", s3.port),
            ),
    )
    .await;
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
        .command(DEV_A1, "screenshot", Some(json!({"requestId": "s3-req-1"})))
        .await;
    assert_eq!(st, 201);
    let cmd = screen.wait_for("command", T).await.unwrap();
    assert_eq!(cmd["payload"]["requestId"], "s3-req-1");
    let bytes = png(64, 48);
    let resp = json!({"requestId": "s3-req-1", "imageData": base64::engine::general_purpose::STANDARD.encode(&bytes),
                      "width": 64, "height": 48, "timestamp": "2026-11-26T10:00:00.000Z"});
    let ack = screen
        .emit_with_ack("screenshot:response", resp, T)
        .await
        .unwrap();
    assert_eq!(ack["success"], true, "{ack}");
    let ready = dash.wait_for("screenshot:ready", T).await.unwrap();
    let url = ready["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!(
            "http://localhost:{}/{BUCKET}/screenshots/{ORG_A}/{DEV_A1}/s3-req-1.png",
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
