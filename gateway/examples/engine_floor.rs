//! The engine's floor (issue 18, BENCHMARKS.md "What remains inside the engine"): socketioxide
//! on axum with the gateway's engine settings and nothing of the gateway. Each socket joins two
//! rooms (like `device:{id}` and `org:{orgId}`) and registers the gateway's eight event
//! handlers; `heartbeat` is acked `{"success":true}`. Run under the load swarm, the memory per
//! connection it holds is what socketioxide/engineioxide, hyper and tokio keep per socket, and
//! the gateway's own share is the difference.
//!
//!   PORT=3002 cargo run --release --example engine_floor
//!   vizora-swarm --addr 127.0.0.1:3002 --devices 18000 --heartbeat-ms 0 --gateway-pid PID

use socketioxide::extract::{AckSender, SocketRef};

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
    // The gateway's own engine settings (`app::engine_builder`) at their defaults: a
    // configuration with nothing set but the three secrets it requires.
    let cfg = vizora_gateway::config::Config::load(|k| {
        matches!(
            k,
            "DEVICE_JWT_SECRET" | "JWT_SECRET" | "INTERNAL_API_SECRET"
        )
        .then(|| "engine-floor-secret-0123456789abcdef".to_string())
    })?;
    let (layer, io) = vizora_gateway::app::engine_builder(&cfg).build_layer();
    io.ns("/", on_connect);
    let app = axum::Router::new()
        .route("/api/health/ready", axum::routing::get(|| async { "ok" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
