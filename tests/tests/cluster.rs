//! Issue 3: three replicas behave as one gateway — routing across replicas, one live socket per
//! device under connection races, kills and Redis restarts, transition-only persistence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, ClientOptions, Transport, connect};

const T: Duration = Duration::from_secs(10);

async fn device(opts: ClientOptions, dev: &str) -> Client {
    connect(opts.transport(Transport::Websocket).auth(json!({"token": device_token(dev, ORG_A)}))).await.expect("device connects")
}

async fn dashboard(opts: ClientOptions, org: &str) -> Client {
    connect(opts.transport(Transport::Websocket).auth(json!({"token": user_token("user-1", org)}))).await.expect("dashboard connects")
}

#[tokio::test]
async fn commands_broadcasts_and_rooms_cross_replicas() {
    let c = Cluster::start(3, 0, |o| o).await;
    let (a, b, r2) = (&c.replicas[0], &c.replicas[1], &c.replicas[2]);
    let dev = device(r2.client(), DEV_A1).await;
    let dev2 = device(a.client(), DEV_A2).await;
    let dash = dashboard(b.client(), ORG_A).await;
    let batch = dash.wait_for("device:status:batch", T).await.unwrap();
    let batch = batch.as_array().unwrap();
    let a1 = batch.iter().find(|d| d["deviceId"] == DEV_A1).expect("dev-a1 in the batch");
    assert_eq!(a1["status"], "online", "the batch reflects presence held by another replica");

    // A command sent over HTTP to replica A reaches the device on replica C.
    let (st, body) = a.api().command(DEV_A1, "reload", None).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["delivery"], "delivered");
    let cmd = dev.wait_for("command", T).await.expect("command crossed replicas");
    assert_eq!(cmd["type"], "reload");
    assert_eq!(cmd["id"], body["commandId"]);

    // An org broadcast reaches devices and dashboards on all replicas.
    let (st, _) = b.api().post("/api/push/broadcast", json!({"organizationId": ORG_A, "event": "test:broadcast", "data": {"n": 1}})).await;
    assert_eq!(st, 201);
    for client in [&dev, &dev2, &dash] {
        let got = client.wait_for("test:broadcast", T).await.expect("broadcast on every replica");
        assert_eq!(got["n"], 1);
    }

    // join:room works across replicas: a dashboard on B joins dev-a2's room (device on A) and
    // receives what is pushed to that device through replica C.
    let ack = dash.emit_with_ack("join:room", json!({"room": format!("device:{DEV_A2}")}), T).await.unwrap();
    assert_eq!(ack["success"], true, "{ack}");
    let (st, _) = r2.api().post("/api/push/qr-overlay", json!({"deviceId": DEV_A2, "qrOverlay": {"enabled": true}})).await;
    assert_eq!(st, 201);
    assert!(dev2.wait_for("qr-overlay:update", T).await.is_some());
    assert!(dash.wait_for("qr-overlay:update", T).await.is_some(), "the joined room spans replicas");
}
