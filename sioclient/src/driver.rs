//! The background task that owns the transport: answers pings, dispatches
//! events and acks, watches the ping deadline and performs the close.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{CloseReason, Command, Event, Shared};
use crate::packet::{EnginePacket, SioKind, SioPacket};
use crate::transport::{Inbound, TransportConn};

/// How long a graceful close may take before the transport is aborted.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct Driver {
    pub(crate) shared: Arc<Shared>,
    pub(crate) nsp: String,
    pub(crate) conn: TransportConn,
    pub(crate) inbound: mpsc::UnboundedReceiver<Inbound>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    /// `pingInterval + pingTimeout`: the longest silence from a live server.
    pub(crate) ping_window: Duration,
    /// Arguments of the automatic ack for server events that request one.
    pub(crate) auto_ack: Vec<serde_json::Value>,
    /// Leave acks to the caller.
    pub(crate) manual_acks: bool,
}

enum Exit {
    Closed(CloseReason),
    Disconnect(oneshot::Sender<()>),
    /// Every `Client` handle is gone.
    Dropped,
}

impl Driver {
    pub(crate) async fn run(mut self) {
        let exit = self.run_loop().await;
        // Later commands fail at once instead of waiting for the close below.
        self.commands.close();
        match exit {
            Exit::Closed(reason) => {
                tracing::debug!(?reason, "socket.io connection closed");
                self.shared.close(reason.clone());
                // After a transport close the session is gone server-side: a close
                // handshake would only earn a "Session ID unknown" error, so just drop it.
                if reason != CloseReason::TransportClose {
                    self.conn.close(CLOSE_GRACE).await;
                }
            }
            Exit::Disconnect(done) => {
                // Mark closed first so concurrent emits fail fast instead of racing the close.
                self.shared.close(CloseReason::ClientDisconnect);
                let (tx, rx) = oneshot::channel();
                self.conn
                    .send(SioPacket::disconnect(&self.nsp).to_engine(), Some(tx));
                let _ = tokio::time::timeout(CLOSE_GRACE, rx).await;
                self.conn.close(CLOSE_GRACE).await;
                let _ = done.send(());
            }
            Exit::Dropped => {
                self.shared.close(CloseReason::ClientDisconnect);
                self.conn.close(CLOSE_GRACE).await;
            }
        }
    }

    async fn run_loop(&mut self) -> Exit {
        let mut ping_deadline = Instant::now() + self.ping_window;
        loop {
            tokio::select! {
                msg = self.inbound.recv() => match msg {
                    Some(Inbound::Packet { text, .. }) => {
                        if let Some(reason) = self.on_packet(&text, &mut ping_deadline) {
                            return Exit::Closed(reason);
                        }
                    }
                    // A discarded (pre-upgrade) transport ending is not our concern.
                    Some(Inbound::Closed { generation, reason }) => {
                        if generation == self.conn.generation {
                            tracing::debug!(%reason, "transport closed");
                            return Exit::Closed(CloseReason::TransportClose);
                        }
                    }
                    None => return Exit::Closed(CloseReason::TransportClose),
                },
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Send(packet, done)) => self.conn.send(packet, Some(done)),
                    Some(Command::Disconnect(done)) => return Exit::Disconnect(done),
                    None => return Exit::Dropped,
                },
                () = tokio::time::sleep_until(ping_deadline) => return Exit::Closed(CloseReason::PingTimeout),
            }
        }
    }

    /// Handles one Engine.IO packet; `Some` means the connection is over.
    fn on_packet(&mut self, text: &str, ping_deadline: &mut Instant) -> Option<CloseReason> {
        match EnginePacket::decode(text) {
            Ok(EnginePacket::Ping(data)) => {
                *ping_deadline = Instant::now() + self.ping_window;
                self.conn.send(EnginePacket::Pong(data).encode(), None);
                None
            }
            Ok(EnginePacket::Close) => Some(CloseReason::TransportClose),
            Ok(EnginePacket::Message(m)) => self.on_message(&m),
            Ok(
                EnginePacket::Open(_)
                | EnginePacket::Pong(_)
                | EnginePacket::Upgrade
                | EnginePacket::Noop,
            ) => None,
            Err(e) => {
                tracing::warn!(error = %e, packet = %truncate(text), "ignoring malformed engine.io packet");
                None
            }
        }
    }

    fn on_message(&mut self, m: &str) -> Option<CloseReason> {
        let p = match SioPacket::decode(m) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, packet = %truncate(m), "ignoring malformed socket.io packet");
                return None;
            }
        };
        if p.nsp != self.nsp {
            return None;
        }
        match p.kind {
            SioKind::Event => {
                if let Some((name, args)) = p.event_parts() {
                    self.shared.push_event(Event {
                        name,
                        args,
                        ack_id: p.id.filter(|_| self.manual_acks),
                    });
                    // The server asked for an ack; this client has no handlers, so answer
                    // with the configured arguments rather than leave the server waiting.
                    if let Some(id) = p.id.filter(|_| !self.manual_acks) {
                        self.conn.send(
                            SioPacket::ack(&self.nsp, id, self.auto_ack.clone()).to_engine(),
                            None,
                        );
                    }
                }
                None
            }
            SioKind::Ack => {
                if let Some(id) = p.id {
                    let waiter = self.shared.lock().acks.remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(p.ack_args());
                    }
                }
                None
            }
            SioKind::Disconnect => Some(CloseReason::ServerDisconnect),
            SioKind::Connect | SioKind::ConnectError => {
                tracing::debug!(packet = %truncate(m), "ignoring unexpected packet after connect");
                None
            }
        }
    }
}

/// Keeps log lines short when the server sends something huge and broken.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
