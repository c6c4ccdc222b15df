//! Engine.IO / Socket.IO framing as the gateway sees it, over a real websocket to a real
//! replica: arbitrary frames never take the replica down, and every device event with an ack
//! request is answered with the ack envelope — the decoder's own refusal, word for word, when
//! the payload is invalid.

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vizora_gateway::wire::events;
use vizora_gateway_tests::*;
use vizora_sioclient::Transport;

use super::{CASES, config, embedded_gateway, json};
use crate::common::{T, assert_alive, device, is_iso_ms};

/// Text frames: Engine.IO packet types and Socket.IO packet heads followed by anything, so the
/// generated frames reach the parsers' later branches.
fn text_frame() -> impl Strategy<Value = String> {
    let head = prop::sample::select(
        &[
            "",
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "40",
            "41",
            "42",
            "43",
            "44",
            "45",
            "46",
            "42/",
            "421",
            "4299999999999999999999",
            "451-",
            "451-[",
            "40/admin,",
            "42[\"",
            "2probe",
        ][..],
    );
    let tail = prop_oneof![
        "\\PC{0,40}",
        json().prop_map(|v| v.to_string()),
        (
            prop::sample::select(&["heartbeat", "content:impression", "join:room", "x"][..]),
            json()
        )
            .prop_map(|(e, v)| json!([e, v]).to_string()),
        Just("{\"_placeholder\":true,\"num\":0}".to_string()),
    ];
    (head, tail).prop_map(|(h, t)| format!("{h}{t}"))
}

fn frame() -> impl Strategy<Value = Message> {
    prop_oneof![
        4 => text_frame().prop_map(|t| Message::Text(t.into())),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| Message::Binary(b.into())),
    ]
}

#[test]
fn arbitrary_frames_never_take_the_replica_down() {
    let (rt, gw, _dir) = embedded_gateway();
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        gw.port
    );
    let mut runner = TestRunner::new(config(CASES));
    runner
        .run(&prop::collection::vec(frame(), 1..5), |frames| {
            rt.block_on(async {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                // The Engine.IO OPEN packet comes first.
                let open = tokio::time::timeout(T, ws.next()).await.unwrap();
                assert!(
                    matches!(&open, Some(Ok(Message::Text(t))) if t.starts_with('0')),
                    "{open:?}"
                );
                for f in frames {
                    // The replica may close the connection on a bad frame: that is its right.
                    if ws.send(f).await.is_err() {
                        break;
                    }
                }
                let _ = ws.close(None).await;
                assert_alive(&gw, "after arbitrary frames").await;
            });
            Ok(())
        })
        .unwrap();
    // And it still serves a device end to end.
    rt.block_on(async {
        let c = device(&gw, DEV_A1, ORG_A, Transport::Websocket).await;
        let ack = c
            .emit_with_ack("heartbeat", json!({"timestamp": 1}), T)
            .await
            .unwrap();
        assert_eq!(ack["success"], true, "{ack}");
    });
}

/// What the decoder says about `payload` for `event`, as the ack's `error` would carry it.
fn refusal(event: &str, payload: &Value) -> Option<String> {
    let e = match event {
        "heartbeat" => events::heartbeat(payload).err(),
        "content:impression" => events::impression(payload).err(),
        "content:error" => events::content_error(payload).err(),
        "playlist:request" => events::playlist_request(payload).err(),
        // Sizes are checked by the screenshot service, with the reference's wording.
        "screenshot:response" => events::screenshot_response(payload, usize::MAX).err(),
        _ => None,
    };
    e.map(|e| format!("Validation failed: {e}"))
}

const DEVICE_EVENTS: &[&str] = &[
    "heartbeat",
    "content:impression",
    "content:error",
    "playlist:request",
    "screenshot:response",
];

#[test]
fn every_device_event_is_answered_with_the_envelope() {
    let (rt, gw, _dir) = embedded_gateway();
    let c = rt.block_on(device(&gw, DEV_A1, ORG_A, Transport::Websocket));
    let mut runner = TestRunner::new(config(CASES));
    let cases = (
        prop::sample::select(DEVICE_EVENTS),
        prop_oneof![json(), super::json_object()],
    );
    runner
        .run(&cases, |(event, payload)| {
            let ack = rt
                .block_on(c.emit_with_ack(event, payload.clone(), T))
                .unwrap_or_else(|e| panic!("{event} {payload}: no ack ({e:?})"));
            assert!(is_iso_ms(&ack["timestamp"]), "{event}: {ack}");
            match refusal(event, &payload) {
                Some(error) => assert_eq!(
                    ack,
                    json!({"success": false, "error": error, "timestamp": ack["timestamp"]}),
                    "{event} {payload}"
                ),
                None => {
                    assert!(ack["success"].is_boolean(), "{event} {payload}: {ack}");
                    if ack["success"] == false {
                        assert!(
                            ack["error"].as_str().is_some_and(|e| !e.is_empty()),
                            "{ack}"
                        );
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(c.is_connected(), "the device stayed connected throughout");
    rt.block_on(assert_alive(&gw, "after arbitrary payloads"));
}
