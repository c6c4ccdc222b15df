//! Checks against a live Socket.IO server (e.g. a throwaway Node socket.io 4.x
//! one); ignored by default. Run with
//! `SIO_TEST_URL=http://127.0.0.1:3999 cargo test -p vizora-sioclient --test live_server -- --ignored`.
//!
//! The server is expected to: accept auth token "good" and refuse others with
//! CONNECT_ERROR `{message:"unauthorized", data:{code:"BAD_TOKEN"}}`; close the
//! transport for token "closeme"; never answer for token "hang"; answer 429 with
//! `Retry-After: 7` when the query has `deny=1`; emit `welcome` on connect; ack
//! `echo` with its arguments (or emit `echo` back without ack); on `burst` n emit
//! `even`/`odd` i for i in 0..n; on `ask` emit `question` with an ack and report
//! `asked {ok}`; `kick` disconnects the socket; `drop` closes the transport;
//! namespace `/admin` emits `hello-admin` and acks `echo`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use vizora_sioclient::{ClientError, ClientOptions, CloseReason, ConnectError, Transport, connect};

const T: Duration = Duration::from_secs(5);
const ALL: [Transport; 3] = [
    Transport::Websocket,
    Transport::Polling,
    Transport::PollingUpgrade,
];

fn url() -> Option<String> {
    std::env::var("SIO_TEST_URL").ok()
}

fn opts(url: &str, t: Transport, token: &str) -> ClientOptions {
    ClientOptions::new(url)
        .transport(t)
        .auth(json!({ "token": token }))
}

#[tokio::test]
#[ignore = "needs SIO_TEST_URL"]
async fn events_and_acks() {
    let Some(url) = url() else { return };
    for t in ALL {
        let c = connect(
            opts(&url, t, "good")
                .header("X-Forwarded-For", "203.0.113.9")
                .query("extra", "q1"),
        )
        .await
        .unwrap();
        let welcome = c.wait_for("welcome", T).await.unwrap();
        assert_eq!(welcome["sid"], c.sid(), "{t:?}");
        assert_eq!(welcome["xff"], "203.0.113.9");
        assert_eq!(welcome["q"], "q1");
        assert!(!c.engine_sid().is_empty());
        let expected = if t == Transport::Polling {
            Transport::Polling
        } else {
            Transport::Websocket
        };
        assert_eq!(c.transport(), expected, "{t:?}");
        if t == Transport::PollingUpgrade {
            assert_eq!(c.wait_for("upgraded", T).await.unwrap(), "websocket");
        }

        let big = "x".repeat(200_000);
        assert_eq!(
            c.emit_with_ack("echo", json!({"a": 1}), T).await.unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            c.emit_with_ack("echo", json!(big), T).await.unwrap(),
            json!(big)
        );
        let many = c
            .emit_args_with_ack("echo", vec![json!(1), json!("two"), json!(null)], T)
            .await
            .unwrap();
        assert_eq!(many, vec![json!(1), json!("two"), json!(null)]);
        assert_eq!(
            c.emit_args_with_ack("echo", vec![], T).await.unwrap(),
            Vec::<serde_json::Value>::new()
        );
        assert_eq!(
            c.emit_with_ack("nobody-acks", json!(1), Duration::from_millis(300))
                .await,
            Err(ClientError::AckTimeout)
        );

        c.emit("echo", json!("plain")).await.unwrap();
        assert_eq!(c.wait_for("echo", T).await.unwrap(), "plain");

        // wait_for keeps other events, in order.
        c.emit("burst", json!(6)).await.unwrap();
        let mut odds = vec![];
        for _ in 0..3 {
            odds.push(c.wait_for("odd", T).await.unwrap());
        }
        assert_eq!(odds, vec![json!(1), json!(3), json!(5)]);
        let mut got = vec![];
        for _ in 0..3 {
            let e = c.next_event(T).await.unwrap();
            assert_eq!(e.name, "even");
            got.push(e.args[0].clone());
        }
        assert_eq!(got, vec![json!(0), json!(2), json!(4)]);

        // Server-side emitWithAck gets our automatic empty ack.
        c.emit("ask", json!(null)).await.unwrap();
        assert_eq!(c.wait_for("asked", T).await.unwrap()["ok"], true);
        assert_eq!(c.wait_for("question", T).await.unwrap(), 42);

        // Survive several server ping cycles (the test server pings every 500 ms).
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(c.is_connected(), "{t:?}");
        assert_eq!(
            c.emit_with_ack("echo", json!(2), T).await.unwrap(),
            json!(2)
        );
        let rest = c.drain_events();
        assert!(rest.is_empty(), "{t:?} {rest:?}");

        c.disconnect().await;
        assert_eq!(c.closed(T).await, Some(CloseReason::ClientDisconnect));
        assert_eq!(c.emit("echo", json!(1)).await, Err(ClientError::Closed));
    }
}

#[tokio::test]
#[ignore = "needs SIO_TEST_URL"]
async fn custom_namespace() {
    let Some(url) = url() else { return };
    for t in ALL {
        let c = connect(opts(&url, t, "good").namespace("/admin"))
            .await
            .unwrap();
        assert_eq!(c.namespace(), "/admin");
        assert_eq!(
            c.wait_for("hello-admin", T).await.unwrap(),
            "/admin",
            "{t:?}"
        );
        assert_eq!(
            c.emit_with_ack("echo", json!("a"), T).await.unwrap(),
            json!("a")
        );
        c.disconnect().await;
    }
}

#[tokio::test]
#[ignore = "needs SIO_TEST_URL"]
async fn server_side_closes() {
    let Some(url) = url() else { return };
    for t in ALL {
        let c = connect(opts(&url, t, "good")).await.unwrap();
        c.emit("kick", json!(null)).await.unwrap();
        assert_eq!(
            c.closed(T).await,
            Some(CloseReason::ServerDisconnect),
            "{t:?}"
        );
        // The welcome event is still readable after the close.
        assert!(c.wait_for("welcome", T).await.is_some());
        c.drain_events();
        let e = c.next_event(T).await;
        assert!(e.is_none(), "{t:?} {e:?}");

        let c = connect(opts(&url, t, "good")).await.unwrap();
        c.emit("drop", json!(null)).await.unwrap();
        assert_eq!(
            c.closed(T).await,
            Some(CloseReason::TransportClose),
            "{t:?}"
        );

        // socket.io closes the connection on a packet it cannot parse.
        let c = connect(opts(&url, t, "good")).await.unwrap();
        c.send_raw("42[not json").await.unwrap();
        assert_eq!(
            c.closed(T).await,
            Some(CloseReason::TransportClose),
            "{t:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs SIO_TEST_URL"]
async fn connect_failures() {
    let Some(url) = url() else { return };
    for t in ALL {
        match connect(opts(&url, t, "bad")).await {
            Err(ConnectError::Refused { message, data }) => {
                assert_eq!(message, "unauthorized");
                assert_eq!(data.unwrap()["code"], "BAD_TOKEN");
            }
            other => panic!("{t:?}: {other:?}"),
        }
        match connect(opts(&url, t, "good").query("deny", "1")).await {
            Err(ConnectError::Http {
                status,
                body,
                retry_after,
            }) => {
                assert_eq!(status, 429);
                assert_eq!(body, r#"{"error":"slow down"}"#);
                assert_eq!(retry_after.as_deref(), Some("7"));
            }
            other => panic!("{t:?}: {other:?}"),
        }
        match connect(opts(&url, t, "good").namespace("/nope")).await {
            Err(ConnectError::Refused { message, .. }) => assert_eq!(message, "Invalid namespace"),
            other => panic!("{t:?}: {other:?}"),
        }
        let r = connect(opts(&url, t, "closeme")).await;
        assert!(
            matches!(r, Err(ConnectError::TransportClosed(_))),
            "{t:?}: {r:?}"
        );
        let r = connect(opts(&url, t, "hang").connect_timeout(Duration::from_millis(800))).await;
        assert!(matches!(r, Err(ConnectError::Timeout)), "{t:?}: {r:?}");
    }
}
