//! Protocol-edge checks against scripted in-process websocket/HTTP servers:
//! ping handling and ping timeout, hostile input, auto-acks, handshake failures,
//! and that dropping the client closes the socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use vizora_sioclient::{ClientOptions, CloseReason, ConnectError, Transport, connect};

type Ws = WebSocketStream<TcpStream>;
const T: Duration = Duration::from_secs(5);
const OPEN: &str =
    r#"0{"sid":"eio1","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}"#;

/// Serves one websocket connection with `script`; returns the base URL and the script's task.
async fn mock_ws<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(Ws) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        script(ws).await;
    });
    (url, task)
}

/// Serves raw bytes to every TCP connection (for refused handshakes).
async fn mock_raw(response: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    url
}

async fn recv_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("server read timed out")
        {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(Message::Close(_))) | None => return "<closed>".to_owned(),
            Some(Ok(_)) => {}
            Some(Err(e)) => return format!("<error {e}>"),
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.unwrap();
}

/// OPEN, expect CONNECT (with the given auth), acknowledge it.
async fn handshake(ws: &mut Ws, expect_connect: &str) {
    send(ws, OPEN).await;
    assert_eq!(recv_text(ws).await, expect_connect);
    send(ws, r#"40{"sid":"sio1"}"#).await;
}

#[tokio::test]
async fn pings_are_answered_and_silence_is_a_ping_timeout() {
    let (url, server) = mock_ws(|mut ws| async move {
        handshake(&mut ws, r#"40{"token":"t"}"#).await;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            send(&mut ws, "2").await;
            assert_eq!(recv_text(&mut ws).await, "3");
        }
        // Go silent but keep the socket open until the client gives up.
        assert_eq!(recv_text(&mut ws).await, "<closed>");
    })
    .await;
    let c = connect(ClientOptions::new(url).auth(json!({"token": "t"})))
        .await
        .unwrap();
    assert_eq!(
        (c.sid(), c.engine_sid(), c.transport()),
        ("sio1", "eio1", Transport::Websocket)
    );
    assert_eq!(c.closed(Duration::from_millis(700)).await, None);
    assert_eq!(c.closed(T).await, Some(CloseReason::PingTimeout));
    server.await.unwrap();
}

#[tokio::test]
async fn hostile_input_is_skipped() {
    let (url, server) = mock_ws(|mut ws| async move {
        handshake(&mut ws, "40").await;
        for junk in [
            "",
            "9",
            "x",
            "4",
            "4x",
            "42",
            "42[1]",
            r#"42["a""#,
            "43abc",
            "43[1]",
            "4399[1]",
            "41[1]",
            "b AAA",
            "452-[\"bin\"]",
            "0{}",
            "5",
            "6",
            "3",
            r#"42/other,["wrong-namespace"]"#,
            r#"4299999999999999999999999["big"]"#,
            "\u{1e}",
            "é",
        ] {
            send(&mut ws, junk).await;
        }
        ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
        send(&mut ws, r#"42["good",1,{"k":"v"}]"#).await;
        // An event asking for an ack gets an empty one.
        send(&mut ws, r#"427["needs-ack","x"]"#).await;
        assert_eq!(recv_text(&mut ws).await, "437[]");
        // Then a malformed packet *from the client* reaches the server verbatim.
        assert_eq!(recv_text(&mut ws).await, "42[not json");
        send(&mut ws, "41").await;
        assert_eq!(recv_text(&mut ws).await, "<closed>");
    })
    .await;
    let c = connect(ClientOptions::new(url)).await.unwrap();
    let e = c.next_event(T).await.unwrap();
    assert_eq!(
        (e.name.as_str(), e.args),
        ("good", vec![json!(1), json!({"k": "v"})])
    );
    assert_eq!(c.wait_for("needs-ack", T).await, Some(json!("x")));
    c.send_raw("42[not json").await.unwrap();
    assert_eq!(c.closed(T).await, Some(CloseReason::ServerDisconnect));
    assert!(
        c.next_event(T).await.is_none(),
        "closed and empty returns at once"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn acks_and_disconnect() {
    let (url, server) = mock_ws(|mut ws| async move {
        handshake(&mut ws, "40").await;
        assert_eq!(recv_text(&mut ws).await, r#"420["sum",1,2]"#);
        send(&mut ws, r#"42["interleaved"]"#).await;
        send(&mut ws, "430[3]").await;
        assert_eq!(recv_text(&mut ws).await, r#"421["none",null]"#);
        send(&mut ws, "431[]").await;
        assert_eq!(recv_text(&mut ws).await, r#"42["plain",null]"#);
        assert_eq!(recv_text(&mut ws).await, "41");
        assert_eq!(recv_text(&mut ws).await, "<closed>");
    })
    .await;
    let c = connect(ClientOptions::new(url)).await.unwrap();
    let sum = c
        .emit_args_with_ack("sum", vec![json!(1), json!(2)], T)
        .await
        .unwrap();
    assert_eq!(sum, vec![json!(3)]);
    assert_eq!(
        c.emit_with_ack("none", json!(null), T).await.ok(),
        Some(serde_json::Value::Null)
    );
    c.emit("plain", json!(null)).await.unwrap();
    c.disconnect().await;
    assert_eq!(c.close_reason(), Some(CloseReason::ClientDisconnect));
    assert!(!c.is_connected());
    assert_eq!(c.drain_events().len(), 1);
    server.await.unwrap();
}

#[tokio::test]
async fn pending_ack_fails_when_server_closes() {
    let (url, server) = mock_ws(|mut ws| async move {
        handshake(&mut ws, "40").await;
        assert_eq!(recv_text(&mut ws).await, r#"420["never"]"#);
        ws.close(None).await.unwrap();
    })
    .await;
    let c = connect(ClientOptions::new(url)).await.unwrap();
    let r = c.emit_args_with_ack("never", vec![], T).await;
    assert_eq!(r, Err(vizora_sioclient::ClientError::Closed));
    assert_eq!(c.closed(T).await, Some(CloseReason::TransportClose));
    server.await.unwrap();
}

#[tokio::test]
async fn dropping_the_client_closes_the_socket() {
    let (url, server) = mock_ws(|mut ws| async move {
        handshake(&mut ws, "40").await;
        assert_eq!(recv_text(&mut ws).await, "<closed>");
    })
    .await;
    let c = connect(ClientOptions::new(url)).await.unwrap();
    let c2 = c.clone();
    drop(c);
    assert!(c2.is_connected());
    drop(c2);
    tokio::time::timeout(T, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn connect_error_and_early_close() {
    let (url, _server) = mock_ws(|mut ws| async move {
        send(&mut ws, OPEN).await;
        assert_eq!(recv_text(&mut ws).await, "40");
        send(&mut ws, r#"44{"message":"nope","data":{"retry":false}}"#).await;
        let _ = recv_text(&mut ws).await;
    })
    .await;
    match connect(ClientOptions::new(url)).await {
        Err(ConnectError::Refused { message, data }) => {
            assert_eq!(message, "nope");
            assert_eq!(data, Some(json!({"retry": false})));
        }
        other => panic!("{other:?}"),
    }

    let (url, _server) = mock_ws(|mut ws| async move {
        send(&mut ws, OPEN).await;
        assert_eq!(recv_text(&mut ws).await, "40");
        ws.close(None).await.unwrap();
    })
    .await;
    let r = connect(ClientOptions::new(url)).await;
    assert!(matches!(r, Err(ConnectError::TransportClosed(_))), "{r:?}");
}

#[tokio::test]
async fn refused_handshakes_expose_status_body_and_retry_after() {
    let url = mock_raw(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"error\":\"busy\"}\n",
    )
    .await;
    for t in [
        Transport::Websocket,
        Transport::Polling,
        Transport::PollingUpgrade,
    ] {
        match connect(ClientOptions::new(url.clone()).transport(t)).await {
            Err(ConnectError::Http {
                status,
                body,
                retry_after,
            }) => {
                assert_eq!(status, 429, "{t:?}");
                assert_eq!(body.trim_end(), r#"{"error":"busy"}"#, "{t:?}");
                assert_eq!(retry_after.as_deref(), Some("30"), "{t:?}");
            }
            other => panic!("{t:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    for t in [Transport::Websocket, Transport::Polling] {
        let r = connect(
            ClientOptions::new(url.clone())
                .transport(t)
                .connect_timeout(Duration::from_millis(300)),
        )
        .await;
        assert!(matches!(r, Err(ConnectError::Timeout)), "{t:?}: {r:?}");
    }
    let r = connect(ClientOptions::new("not a url")).await;
    assert!(matches!(r, Err(ConnectError::Other(_))), "{r:?}");
}
