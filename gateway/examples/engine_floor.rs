//! The engine's floor (issue 18, BENCHMARKS.md "What remains inside the engine"): socketioxide
//! on axum with the gateway's engine settings and nothing of the gateway. Each socket joins two
//! rooms (like `device:{id}` and `org:{orgId}`) and registers the gateway's eight event
//! handlers; `heartbeat` is acked `{"success":true}`. Run under the load swarm, the memory per
//! connection it holds is what socketioxide/engineioxide, hyper and tokio keep per socket, and
//! the gateway's own share is the difference.
//!
//!   PORT=3002 cargo run --release --example engine_floor
//!   vizora-swarm --addr 127.0.0.1:3002 --devices 18000 --heartbeat-ms 0 --gateway-pid PID

use std::time::Duration;

use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::{SocketIo, TransportType};

const EVENTS: [&str; 8] = [
    "heartbeat",
    "content:impression",
    "content:error",
    "playlist:request",
    "screenshot:response",
    "join:organization",
    "join:room",
    "leave:room",
];

async fn on_connect(s: SocketRef) {
    let n =
        s.id.as_str()
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b));
    s.join(format!("device:{}", s.id));
    s.join(format!("org:{}", n % 100));
    for e in EVENTS {
        s.on(e, async |ack: AckSender| {
            let _ = ack.send(&serde_json::json!({"success": true}));
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3002);
    // The gateway's engine settings at their defaults (app.rs `builder`; the payload cap is
    // `Config::max_payload` for the default SCREENSHOT_MAX_BYTES).
    let max = 2_097_152usize.div_ceil(3) * 4 + 16 * 1024;
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_secs(25))
        .ping_timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(10))
        .max_payload(max as u64)
        .ws_max_message_size(max)
        .ws_max_frame_size(max)
        .max_buffer_size(64)
        .ws_read_buffer_size(1024)
        .transports([TransportType::Polling, TransportType::Websocket])
        .build_layer();
    io.ns("/", on_connect);
    let app = axum::Router::new()
        .route("/api/health/ready", axum::routing::get(|| async { "ok" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
