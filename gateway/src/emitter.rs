//! Emitting to rooms from the services without making them generic over the Socket.IO adapter.
//!
//! With the Redis adapter every emit and disconnect reaches the replica that holds the target
//! sockets; with the in-process adapter they stay local. Both are fire-and-forget.
//!
//! Every emit takes an [`Outgoing`], which only `wire::outgoing` builds from a typed event: no
//! service can hand a client an ad-hoc JSON shape.

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;

use crate::wire::outgoing::Outgoing;

#[async_trait]
pub trait Emitter: Send + Sync + 'static {
    /// Emits `event` to every socket in `room`, cluster-wide.
    async fn emit(&self, room: String, event: Outgoing);
    /// Emits `event` to the sockets in `room` that this replica holds.
    async fn emit_local(&self, room: String, event: Outgoing);
    /// Emits to every socket in `room` except those also in `except`, cluster-wide.
    async fn emit_except(&self, room: String, except: String, event: Outgoing);
    /// Emits with an acknowledgement request to every socket in `room`, cluster-wide, and waits
    /// up to `timeout`: one result per socket reached (empty when none was). An ack whose
    /// argument cannot be decoded still counts as an answer (`Null`).
    async fn emit_with_ack(
        &self,
        room: String,
        event: Outgoing,
        timeout: Duration,
    ) -> Vec<Result<Value, String>>;
    /// Server-disconnects every socket in `room`, cluster-wide (Socket.IO DISCONNECT, no retry).
    async fn disconnect_room(&self, room: String);
    /// Whether a socket with this sid is connected to this replica.
    fn is_local(&self, sid: &str) -> bool;
    /// Hands `event` to socket `sid` when this replica holds it and no close path marked it
    /// leaving: `true` is what the API may call delivered.
    fn write_to_local_socket(&self, sid: &str, event: &Outgoing) -> bool;
}

/// The Redis adapter as socketioxide names it (over the pub/sub driver that follows the primary).
pub type RedisIo = socketioxide_redis::CustomRedisAdapter<
    socketioxide::adapter::Emitter,
    crate::store::pubsub::ResilientDriver,
>;

/// The adapter-backed emitter. Filled once the Socket.IO server exists (the server's state needs
/// the services, and the services need the emitter).
pub struct IoEmitter<A: Adapter> {
    io: OnceLock<SocketIo<A>>,
}

impl<A: Adapter> Default for IoEmitter<A> {
    fn default() -> Self {
        IoEmitter {
            io: OnceLock::new(),
        }
    }
}

impl<A: Adapter> IoEmitter<A> {
    pub fn set(&self, io: SocketIo<A>) {
        let _ = self.io.set(io);
    }
}

#[async_trait]
impl<A: Adapter> Emitter for IoEmitter<A> {
    async fn emit(&self, room: String, event: Outgoing) {
        if let Some(io) = self.io.get()
            && let Err(e) = io.to(room).emit(event.name(), event.data()).await
        {
            tracing::warn!(event = event.name(), error = %e, "Broadcast failed.");
        }
    }

    async fn emit_local(&self, room: String, event: Outgoing) {
        if let Some(io) = self.io.get()
            && let Err(e) = io.local().to(room).emit(event.name(), event.data()).await
        {
            tracing::warn!(event = event.name(), error = %e, "Local broadcast failed.");
        }
    }

    async fn emit_except(&self, room: String, except: String, event: Outgoing) {
        if let Some(io) = self.io.get()
            && let Err(e) = io
                .to(room)
                .except(except)
                .emit(event.name(), event.data())
                .await
        {
            tracing::warn!(event = event.name(), error = %e, "Broadcast failed.");
        }
    }

    async fn emit_with_ack(
        &self,
        room: String,
        event: Outgoing,
        timeout: Duration,
    ) -> Vec<Result<Value, String>> {
        let Some(io) = self.io.get() else {
            return Vec::new();
        };
        match io
            .to(room)
            .timeout(timeout)
            .emit_with_ack::<_, Value>(event.name(), event.data())
            .await
        {
            Ok(stream) => {
                stream
                    .map(|(_, r)| match r {
                        Ok(v) => Ok(v),
                        Err(socketioxide::AckError::Decode(_)) => Ok(Value::Null),
                        Err(e) => Err(e.to_string()),
                    })
                    .collect()
                    .await
            }
            Err(e) => {
                tracing::warn!(event = event.name(), error = %e, "Acknowledged emit failed.");
                Vec::new()
            }
        }
    }

    async fn disconnect_room(&self, room: String) {
        if let Some(io) = self.io.get()
            && let Err(e) = io.to(room).disconnect().await
        {
            tracing::warn!(error = %e, "Remote disconnect failed.");
        }
    }

    fn is_local(&self, sid: &str) -> bool {
        let (Some(io), Ok(sid)) = (self.io.get(), sid.parse()) else {
            return false;
        };
        io.get_socket(sid).is_some()
    }

    fn write_to_local_socket(&self, sid: &str, event: &Outgoing) -> bool {
        let (Some(io), Ok(sid)) = (self.io.get(), sid.parse()) else {
            return false;
        };
        let Some(socket) = io.get_socket(sid) else {
            return false;
        };
        let leaving = socket
            .extensions
            .get::<std::sync::Arc<crate::socket::SocketCtx>>()
            .is_none_or(|ctx| ctx.is_leaving());
        !leaving && socket.emit(event.name(), event.data()).is_ok()
    }
}
