//! Scenarios shared by several test files.

use std::time::Duration;

use serde_json::json;

use crate::api::Api;
use crate::eventually;
use crate::fixture::*;
use crate::gateway::Gateway;
use vizora_sioclient::Client;

/// Connects DEV_A1 to `target` again and again (its gateways run with
/// `VIZORA_TEST_LEASE_DELAY_MS`, which holds each connect between the lease acquire and the
/// namespace join) and sends a command through `api` while the lease exists but the CONNECT has
/// not completed. Every such command must reach the device: on connect, or at the latest in the
/// next heartbeat ack. Panics otherwise, or if the window was hit fewer than three times.
pub async fn commands_during_connect_are_not_lost(api: &Api, target: &Gateway) {
    let t = Duration::from_secs(10);
    let presence = format!("/api/internal/devices/{DEV_A1}/presence");
    let mut hit = 0;
    // Commands answered `queued`: sent while the lease was still pending (the socket in no room
    // yet), which is the window this scenario is about. A command sent after the socket entered
    // the namespace, before the client saw its CONNECT answered, is `delivered` by right.
    let mut queued = 0;
    for attempt in 0..40 {
        if hit >= 3 {
            break;
        }
        let opts = target
            .client()
            .transport(vizora_sioclient::Transport::Websocket)
            .auth(json!({"token": device_token(DEV_A1, ORG_A)}))
            .connect_timeout(Duration::from_secs(15));
        let pending = tokio::spawn(vizora_sioclient::connect(opts));
        let mut id = None;
        for _ in 0..300 {
            if api.get(&presence).await.1["online"] == true {
                if !pending.is_finished() {
                    let (st, r) = api
                        .command(DEV_A1, "reload", Some(json!({"attempt": attempt})))
                        .await;
                    assert_eq!(st, 201, "{r}");
                    match r["delivery"].as_str() {
                        Some("queued") => queued += 1,
                        Some("delivered") => {}
                        other => panic!("attempt {attempt}: delivery {other:?}: {r}"),
                    }
                    id = Some(r["commandId"].as_str().unwrap().to_string());
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let c = pending.await.unwrap().expect("device connects");
        if let Some(id) = id {
            hit += 1;
            let mut got = c
                .wait_for("command", Duration::from_secs(3))
                .await
                .filter(|cmd| cmd["id"] == id.as_str());
            if got.is_none() {
                let ack = c.emit_with_ack("heartbeat", json!({}), t).await.unwrap();
                got = ack["commands"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|cmd| cmd["id"] == id.as_str())
                    .cloned();
            }
            let cmd = got.unwrap_or_else(|| {
                panic!("attempt {attempt}: command {id} accepted during the connect was lost")
            });
            assert_eq!(cmd["payload"]["attempt"], attempt);
        }
        c.disconnect().await;
        crate::eventually(t, "DEV_A1 offline", || async {
            (api.get(&presence).await.1["online"] == false).then_some(())
        })
        .await;
    }
    assert!(hit >= 3, "the connect window was hit only {hit} times");
    assert!(
        queued >= 1,
        "no command was sent while the lease was pending ({hit} sent during connects)"
    );
}

/// A command sent through `via` reaches `dev` (retried while the cluster heals).
pub async fn command_reaches(via: &Gateway, device: &str, dev: &Client) {
    eventually(
        Duration::from_secs(20),
        &format!("a command through another replica to reach {device}"),
        || async {
            let (st, body) = via.api().command(device, "reload", None).await;
            if st != 201 || body["delivery"] != "delivered" {
                return None;
            }
            // Commands of earlier attempts may still arrive (one whose confirmation was lost
            // is delivered and queued both): skip them, look for this one.
            let until = tokio::time::Instant::now() + Duration::from_millis(500);
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                let got = dev.wait_for("command", left).await?;
                if got["id"] == body["commandId"] {
                    return Some(());
                }
            }
        },
    )
    .await;
}

/// An org broadcast through `via` reaches every client in `to`.
pub async fn broadcast_reaches(via: &Gateway, to: &[&Client], event: &str) {
    eventually(
        Duration::from_secs(20),
        "an org broadcast to reach every replica",
        || async {
            let (st, _) = via
                .api()
                .post(
                    "/api/push/broadcast",
                    json!({"organizationId": ORG_A, "event": event, "data": {}}),
                )
                .await;
            if st != 201 {
                return None;
            }
            for c in to {
                c.wait_for(event, Duration::from_millis(500)).await?;
            }
            Some(())
        },
    )
    .await;
}
