//! The Socket.IO edge: handshake authentication (connect middleware), connect-time pushes, and
//! thin event handlers that validate, call a service and translate the result into an ack.
//! Every handler is generic over the adapter so one set serves the in-process and Redis modes.

mod connect;
mod error;
mod events;
mod handler;
mod rooms;

use std::sync::Arc;

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;

use crate::auth::Principal;
use crate::limits::{LiveSockets, MessageLimiter};
use crate::wire::events::names;

pub use connect::ConnectRefusal;

/// Per-socket state, kept small: the principal, a message budget, and the kill switch of the
/// connection that carried the handshake (used by the drain).
pub struct SocketCtx {
    pub principal: Principal,
    pub limiter: MessageLimiter,
    pub kill: Option<Arc<crate::net::Kill>>,
    /// The edge's count of live sockets (the connection cap), carried from the gate.
    pub live: Option<Arc<LiveSockets>>,
    /// Devices only: the token binding and advertised capabilities.
    pub device: Option<Arc<crate::service::credentials::DeviceSession>>,
    /// 0 accepted, 1 the connect handler ran, 2 disconnected. Handlers are registered in the
    /// middleware, so a fast client can disconnect before the (spawned) connect handler runs;
    /// the handler then does nothing, and only what it counted is uncounted.
    pub phase: std::sync::atomic::AtomicU8,
    /// Set by every close path (drain, fencing, rebalancing) before it closes the transport: a
    /// frame handed to a leaving socket may never be written, so it is not called delivered.
    pub leaving: std::sync::atomic::AtomicBool,
}

impl SocketCtx {
    /// Marks the socket as leaving; call before closing its transport.
    pub fn mark_leaving(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every close path's step for one socket: marked leaving first (nothing written to it
    /// from now on is called delivered), then its transport closed, never a Socket.IO
    /// disconnect, so the client reconnects elsewhere.
    pub fn leave(&self) {
        self.mark_leaving();
        if let Some(k) = &self.kill {
            k.kill();
        }
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Registers the namespace on an in-process server.
pub fn register_local(io: &SocketIo) {
    io.ns(
        "/",
        connect::on_connect::<socketioxide::adapter::LocalAdapter>.with(connect::authenticate),
    );
}

pub use crate::emitter::RedisIo;

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

/// Every client event's handler. Registered in the connect middleware (see `connect.rs`).
fn register<A: Adapter>(s: &SocketRef<A>) {
    s.on(names::HEARTBEAT, events::on_heartbeat::<A>);
    s.on(names::IMPRESSION, events::on_impression::<A>);
    s.on(names::CONTENT_ERROR, events::on_content_error::<A>);
    s.on(names::PLAYLIST_REQUEST, events::on_playlist_request::<A>);
    s.on(names::SCREENSHOT_RESPONSE, events::on_screenshot::<A>);
    s.on(names::JOIN_ORGANIZATION, rooms::on_join_organization::<A>);
    s.on(names::JOIN_ROOM, rooms::on_join_room::<A>);
    s.on(names::LEAVE_ROOM, rooms::on_leave_room::<A>);
}
