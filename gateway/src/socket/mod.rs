//! The Socket.IO edge: handshake authentication (connect middleware), connect-time pushes, and
//! thin event handlers that validate, call a service and translate the result into an ack.
//! Every handler is generic over the adapter so one set serves the in-process and Redis modes.

mod connect;
mod events;
mod rooms;

use std::sync::Arc;

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::AckSender;
use socketioxide::handler::ConnectHandler;

use crate::auth::Principal;
use crate::limits::MessageLimiter;
use crate::service::Gateway;

pub use connect::ConnectRefusal;

/// Per-socket state, kept small: the principal, a message budget, and the kill switch of the
/// connection that carried the handshake (used by the drain).
pub struct SocketCtx {
    pub principal: Principal,
    pub limiter: MessageLimiter,
    pub kill: Option<Arc<crate::net::Kill>>,
    /// Devices only: the token binding and advertised capabilities.
    pub device: Option<Arc<crate::service::credentials::DeviceSession>>,
    /// 0 accepted, 1 the connect handler ran, 2 disconnected. Handlers are registered in the
    /// middleware, so a fast client can disconnect before the (spawned) connect handler runs;
    /// the handler then does nothing, and only what it counted is uncounted.
    pub phase: std::sync::atomic::AtomicU8,
}

/// Registers the namespace on an in-process server.
pub fn register_local(io: &SocketIo) {
    io.ns(
        "/",
        connect::on_connect::<socketioxide::adapter::LocalAdapter>.with(connect::authenticate),
    );
}

/// The Redis adapter as socketioxide names it.
pub type RedisIo = socketioxide_redis::CustomRedisAdapter<
    socketioxide::adapter::Emitter,
    crate::store::pubsub::ResilientDriver,
>;

/// Registers the namespace on a Redis-adapter server (subscribes the adapter's channels).
pub async fn register_redis(io: &SocketIo<RedisIo>) -> Result<(), String> {
    type R = RedisIo;
    io.ns(
        "/",
        connect::on_connect::<R>.with(connect::authenticate::<R>),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Sends an ack if the client asked for one (a missing ack is not an error).
fn reply<A: Adapter>(ack: AckSender<A>, v: Value) {
    let _ = ack.send(&v);
}

/// The ack back when the socket's message budget allows the message; otherwise the message is
/// answered with the error ack `rate_limited` and counted.
fn within_budget<A: Adapter>(
    gw: &Gateway,
    ctx: &SocketCtx,
    event: &'static str,
    ack: AckSender<A>,
) -> Option<AckSender<A>> {
    if ctx.limiter.allow() {
        return Some(ack);
    }
    gw.metrics.event(event, "rate_limited");
    reply(ack, crate::wire::ack::err("rate_limited"));
    None
}
