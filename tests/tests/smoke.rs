//! The shortest end-to-end loop: a device connects, gets `config` and its playlist, heartbeats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use vizora_gateway_tests::*;
use vizora_sioclient::{Transport, connect};

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn device_connects_gets_config_and_playlist_and_heartbeats() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let c = connect(
        gw.client()
            .transport(Transport::Websocket)
            .auth(json!({"token": device_token(DEV_A1, ORG_A)})),
    )
    .await
    .expect("device connects");
    let cfg = c.wait_for("config", T).await.expect("config");
    assert_eq!(cfg["heartbeatInterval"], 15000);
    let pl = c.wait_for("playlist:update", T).await.expect("playlist");
    assert_eq!(pl["playlist"]["id"], PLAYLIST_MAIN);
    let ack = c
        .emit_with_ack("heartbeat", json!({"metrics": {"cpuUsage": 3}}), T)
        .await
        .unwrap();
    assert_eq!(ack["success"], true);
    assert_eq!(ack["data"]["nextHeartbeatIn"], 15000);
    assert_eq!(ack["commands"], json!([]));
}
