//! Transport plumbing shared by the websocket and polling transports.
//!
//! Each transport runs as background task(s) that forward every received
//! Engine.IO text packet to one channel read by the client driver, and take
//! outgoing packets from their own channel. Packets are tagged with a
//! generation number so that, after a polling→websocket upgrade, a late
//! "closed" report from the discarded polling transport is not mistaken for
//! the end of the connection.

pub(crate) mod polling;
pub(crate) mod ws;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::Transport;

/// What a transport task reports to the driver.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// One Engine.IO text packet.
    Packet { text: String },
    /// The transport ended (server close, network error, HTTP error).
    Closed { generation: u32, reason: String },
}

/// Resolved once the packet has been written (or failed to be).
pub(crate) type Done = oneshot::Sender<Result<(), String>>;

/// What the driver asks a transport task to do.
#[derive(Debug)]
pub(crate) enum Out {
    /// Write one Engine.IO text packet.
    Packet(String, Option<Done>),
    /// Close gracefully (websocket close frame / polling `1` packet) and stop.
    Close,
}

/// Handle on a running transport; dropping it aborts its tasks.
pub(crate) struct TransportConn {
    pub(crate) kind: Transport,
    pub(crate) generation: u32,
    out: Option<mpsc::UnboundedSender<Out>>,
    /// Websocket: the single read/write task. Polling: the POST writer.
    writer: Option<JoinHandle<()>>,
    /// Polling only: the GET loop and its stop flag.
    poller: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        JoinHandle<()>,
    )>,
}

impl TransportConn {
    pub(crate) fn new(
        kind: Transport,
        generation: u32,
        out: mpsc::UnboundedSender<Out>,
        writer: JoinHandle<()>,
        poller: Option<(
            std::sync::Arc<std::sync::atomic::AtomicBool>,
            JoinHandle<()>,
        )>,
    ) -> Self {
        Self {
            kind,
            generation,
            out: Some(out),
            writer: Some(writer),
            poller,
        }
    }

    /// Queues a packet; if the transport task is gone, `done` learns it at once.
    pub(crate) fn send(&self, packet: String, done: Option<Done>) {
        let Some(out) = &self.out else {
            if let Some(d) = done {
                let _ = d.send(Err("transport closed".to_owned()));
            }
            return;
        };
        if let Err(mpsc::error::SendError(Out::Packet(_, Some(d)))) =
            out.send(Out::Packet(packet, done))
        {
            let _ = d.send(Err("transport closed".to_owned()));
        }
    }

    /// Graceful close, bounded by `grace`; anything still running is then aborted.
    pub(crate) async fn close(mut self, grace: Duration) {
        // No new GET after the close: it could only fail with "Session ID unknown".
        if let Some((stop, _)) = &self.poller {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(out) = self.out.take() {
            let _ = out.send(Out::Close);
        }
        if let Some(w) = self.writer.as_mut() {
            let _ = tokio::time::timeout(grace, w).await;
        }
        // Drop aborts the poller (its GET may hang until the next server ping).
    }

    /// Polling only: stop issuing GETs once the in-flight one returns and flush
    /// queued writes, so that the websocket can take over (the upgrade "pause").
    pub(crate) async fn pause(mut self, grace: Duration) {
        if let Some((stop, _)) = &self.poller {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        // Closing the channel (not sending Close) lets the writer drain and exit
        // without telling the server to close the session.
        self.out = None;
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(w) = self.writer.as_mut() {
            let _ = tokio::time::timeout_at(deadline, w).await;
        }
        if let Some((_, p)) = self.poller.as_mut() {
            let _ = tokio::time::timeout_at(deadline, p).await;
        }
    }
}

impl Drop for TransportConn {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.abort();
        }
        if let Some((_, p)) = &self.poller {
            p.abort();
        }
    }
}
