//! The drain is bounded by `DRAIN_SECONDS`: whatever is still open when it is over, the process
//! exits. Here an internal API request waits for a body that never comes, which holds axum's
//! graceful shutdown open for as long as the client likes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vizora_gateway_tests::*;

#[tokio::test]
async fn a_request_that_never_ends_does_not_hold_the_process_past_the_drain() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let mut gw = Gateway::start(GatewayOptions::new(db).env("DRAIN_SECONDS", 2)).await;

    // Headers of a command whose body never arrives. `Expect: 100-continue` makes the server say
    // when the handler starts reading the body: from then on the request is in flight.
    let mut stuck = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    stuck
        .write_all(
            format!(
                "POST /api/internal/command HTTP/1.1\r\nHost: gw\r\nx-internal-api-key: {INTERNAL_KEY}\r\n\
                 content-type: application/json\r\ncontent-length: 64\r\nexpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("100 Continue") {
            let n = stuck.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the handler read the body: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the handler starts reading the body");

    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the drain ends after DRAIN_SECONDS although a request is still in flight");
    assert!(status.success(), "exit status {status:?}");
    drop(stuck);
}
