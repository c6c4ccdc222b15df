//! Graceful drain on SIGTERM: readiness 503, new handshakes 503 `draining`, live sockets' transports
//! closed (never a Socket.IO disconnect), screens reconnect elsewhere and are never reported
//! offline, the process exits on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, ClientOptions, CloseReason, ConnectError, Transport, connect};

const T: Duration = Duration::from_secs(15);

async fn device(opts: ClientOptions, dev: &str, t: Transport) -> Result<Client, ConnectError> {
    connect(
        opts.transport(t)
            .auth(json!({"token": device_token(dev, ORG_A)})),
    )
    .await
}

#[tokio::test]
async fn sigterm_drains_to_the_other_replica_without_offline_reports() {
    let n = 12;
    let mut c = Cluster::start(2, n, |o| o.env("DRAIN_SECONDS", 4)).await;
    let dash = connect(
        c.replicas[1]
            .client()
            .transport(Transport::Websocket)
            .auth(json!({"token": user_token("ops", ORG_A)})),
    )
    .await
    .unwrap();
    let mut screens = Vec::new();
    for i in 0..n {
        // One screen stays on long-polling: it is closed at the end of the drain.
        let t = if i == 0 {
            Transport::Polling
        } else {
            Transport::Websocket
        };
        screens.push(
            device(c.replicas[0].client(), &load_device(i), t)
                .await
                .unwrap(),
        );
    }
    for i in 0..n {
        c.wait_db_status(&load_device(i), "online").await;
    }
    dash.drain_events();

    c.replicas[0].sigterm();
    let api = c.replicas[0].api();
    eventually(T, "readiness 503 while draining", || async {
        let (st, body) = api.get_text("/api/health/ready", &[]).await;
        (st == 503 && body.contains("draining")).then_some(())
    })
    .await;
    match device(c.replicas[0].client(), DEV_A3, Transport::Websocket).await {
        Err(ConnectError::Http { status, body, .. }) => {
            assert_eq!(status, 503);
            assert!(body.contains("draining"), "{body}");
        }
        other => {
            panic!("a new handshake on a draining replica must be refused with 503, got {other:?}")
        }
    }

    // Every screen sees its transport close (so socket.io-client would retry) and reconnects to
    // the surviving replica.
    let mut moved = Vec::new();
    for (i, s) in screens.iter().enumerate() {
        let reason = s.closed(T).await.expect("the drain closes every transport");
        assert_ne!(
            reason,
            CloseReason::ServerDisconnect,
            "screen {i}: a Socket.IO disconnect would stop the player retrying"
        );
        moved.push(
            device(
                c.replicas[1].client(),
                &load_device(i),
                Transport::Websocket,
            )
            .await
            .unwrap(),
        );
    }
    let status = c.replicas[0]
        .wait_exit(T)
        .await
        .expect("the draining replica exits by itself");
    assert!(status.success(), "exit status {status:?}");

    tokio::time::sleep(Duration::from_secs(4)).await; // past lease TTL + sweep: nothing expires
    let offline = dash
        .drain_events()
        .iter()
        .filter(|e| e.name == "device:status" && e.args[0]["status"] == "offline")
        .count();
    assert_eq!(
        offline, 0,
        "drained screens are handed over, never reported offline"
    );
    for (i, m) in moved.iter().enumerate() {
        assert_eq!(c.db_status(&load_device(i)).await, "online");
        assert_eq!(c.lease(&load_device(i)).await.unwrap()["sid"], m.sid());
    }
}
