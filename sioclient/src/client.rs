//! The user-facing [`Client`] handle and the state it shares with the driver task.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::packet::SioPacket;
use crate::transport::Done;
use crate::{ClientError, Transport};

/// A server event: its name and arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name.
    pub name: String,
    /// Arguments after the name (possibly none).
    pub args: Vec<Value>,
    /// With manual acks: the id the server awaits an ack for ([`Client::ack`]).
    pub ack_id: Option<u64>,
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server sent a Socket.IO DISCONNECT (`41`).
    ServerDisconnect,
    /// The transport ended: websocket closed, poll failed, or Engine.IO close packet `1`.
    TransportClose,
    /// [`Client::disconnect`] was called (or the last handle dropped).
    ClientDisconnect,
    /// No server ping within `pingInterval + pingTimeout`.
    PingTimeout,
}

/// Requests from [`Client`] handles to the driver task.
pub(crate) enum Command {
    /// Write a raw Engine.IO packet.
    Send(String, Done),
    /// Send `41`, close the transport, then resolve.
    Disconnect(oneshot::Sender<()>),
}

/// State shared between handles and the driver.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Bumped on every new event and on close, so waiters re-check the state.
    changed: watch::Sender<u64>,
}

pub(crate) struct State {
    pub(crate) events: VecDeque<Event>,
    pub(crate) acks: HashMap<u64, oneshot::Sender<Vec<Value>>>,
    pub(crate) close_reason: Option<CloseReason>,
    pub(crate) transport: Transport,
}

impl Shared {
    pub(crate) fn new(transport: Transport) -> Self {
        let state = State {
            events: VecDeque::new(),
            acks: HashMap::new(),
            close_reason: None,
            transport,
        };
        Self {
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
        }
    }

    /// Poisoning cannot leave `State` inconsistent (no multi-step invariants), so recover.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn push_event(&self, e: Event) {
        self.lock().events.push_back(e);
        self.notify();
    }

    /// Records the close reason (the first one wins) and fails pending acks.
    pub(crate) fn close(&self, reason: CloseReason) {
        {
            let mut st = self.lock();
            if st.close_reason.is_none() {
                st.close_reason = Some(reason);
            }
            // Dropping the senders wakes every ack waiter with "closed".
            st.acks.clear();
        }
        self.notify();
    }

    /// Re-runs `check` on every state change until it returns `Some(answer)`;
    /// `None` once the deadline passes.
    async fn wait<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&mut State) -> Option<Option<T>>,
    ) -> Option<T> {
        // Subscribing before checking means no change between the two can be missed.
        let mut rx = self.changed.subscribe();
        loop {
            if let Some(done) = check(&mut self.lock()) {
                return done;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Timeout, or (impossible while we hold `self`) the sender is gone.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

/// A connected Socket.IO client. Cheap to clone; the connection closes when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    sid: String,
    engine_sid: String,
    nsp: String,
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<Command>,
    next_ack: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("sid", &self.inner.sid)
            .field("engine_sid", &self.inner.engine_sid)
            .field("nsp", &self.inner.nsp)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(
        sid: String,
        engine_sid: String,
        nsp: String,
        shared: Arc<Shared>,
        cmd: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sid,
                engine_sid,
                nsp,
                shared,
                cmd,
                next_ack: AtomicU64::new(0),
            }),
        }
    }

    /// Socket.IO session id (from the CONNECT ack).
    pub fn sid(&self) -> &str {
        &self.inner.sid
    }

    /// Engine.IO session id (from the OPEN packet).
    pub fn engine_sid(&self) -> &str {
        &self.inner.engine_sid
    }

    /// The namespace this client joined.
    pub fn namespace(&self) -> &str {
        &self.inner.nsp
    }

    /// The transport in use now (`Websocket` after a successful upgrade, `Polling` otherwise).
    pub fn transport(&self) -> Transport {
        self.inner.shared.lock().transport
    }

    /// Emits `42["event",data]`.
    pub async fn emit(&self, event: &str, data: Value) -> Result<(), ClientError> {
        self.emit_args(event, vec![data]).await
    }

    /// Emits an event with zero or more arguments.
    pub async fn emit_args(&self, event: &str, args: Vec<Value>) -> Result<(), ClientError> {
        self.send_raw(&SioPacket::event(&self.inner.nsp, event, args, None).to_engine())
            .await
    }

    /// Emits `42<id>["event",data]` and returns the first ack argument (`Null` if none).
    pub async fn emit_with_ack(
        &self,
        event: &str,
        data: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let args = self.emit_args_with_ack(event, vec![data], timeout).await?;
        Ok(args.into_iter().next().unwrap_or(Value::Null))
    }

    /// Emits an event expecting an ack and returns all ack arguments.
    pub async fn emit_args_with_ack(
        &self,
        event: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Vec<Value>, ClientError> {
        let deadline = Instant::now() + timeout;
        let id = self.inner.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.shared.lock();
            if st.close_reason.is_some() {
                return Err(ClientError::Closed);
            }
            st.acks.insert(id, tx);
        }
        let packet = SioPacket::event(&self.inner.nsp, event, args, Some(id)).to_engine();
        let result = match tokio::time::timeout_at(deadline, self.send_raw(&packet)).await {
            Ok(Ok(())) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(args)) => Ok(args),
                Ok(Err(_)) => Err(ClientError::Closed),
                Err(_) => Err(ClientError::AckTimeout),
            },
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::AckTimeout),
        };
        if result.is_err() {
            self.inner.shared.lock().acks.remove(&id);
        }
        result
    }

    /// Sends one raw Engine.IO text packet (e.g. `42[not json` for malformed-input tests).
    /// Resolves once the transport has written it.
    pub async fn send_raw(&self, packet: &str) -> Result<(), ClientError> {
        if self.inner.shared.lock().close_reason.is_some() {
            return Err(ClientError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd
            .send(Command::Send(packet.to_owned(), tx))
            .map_err(|_| ClientError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Io(e)),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// The next server event in arrival order; `None` on timeout, or at once if
    /// the buffer is empty and the connection is closed.
    pub async fn next_event(&self, timeout: Duration) -> Option<Event> {
        self.inner
            .shared
            .wait(Instant::now() + timeout, |st| match st.events.pop_front() {
                Some(e) => Some(Some(e)),
                None if st.close_reason.is_some() => Some(None),
                None => None,
            })
            .await
    }

    /// The first argument (`Null` if none) of the next event named `event`.
    /// Other events stay buffered, in order, for later calls.
    pub async fn wait_for(&self, event: &str, timeout: Duration) -> Option<Value> {
        self.inner
            .shared
            .wait(Instant::now() + timeout, |st| {
                if let Some(i) = st.events.iter().position(|e| e.name == event) {
                    let e = st.events.remove(i)?;
                    return Some(Some(e.args.into_iter().next().unwrap_or(Value::Null)));
                }
                st.close_reason.is_some().then_some(None)
            })
            .await
    }

    /// The next event named `event` as a whole (with its `ack_id`); other events stay
    /// buffered.
    pub async fn wait_for_event(&self, event: &str, timeout: Duration) -> Option<Event> {
        self.inner
            .shared
            .wait(Instant::now() + timeout, |st| {
                if let Some(i) = st.events.iter().position(|e| e.name == event) {
                    return Some(st.events.remove(i));
                }
                st.close_reason.is_some().then_some(None)
            })
            .await
    }

    /// Answers a server event's ack request (`43<id>[...args]`).
    pub async fn ack(&self, id: u64, args: Vec<Value>) -> Result<(), ClientError> {
        self.send_raw(&SioPacket::ack(&self.inner.nsp, id, args).to_engine())
            .await
    }

    /// Everything buffered so far, without waiting.
    pub fn drain_events(&self) -> Vec<Event> {
        self.inner.shared.lock().events.drain(..).collect()
    }

    /// Resolves with the close reason once the connection has ended (`None` on timeout).
    pub async fn closed(&self, timeout: Duration) -> Option<CloseReason> {
        self.inner
            .shared
            .wait(Instant::now() + timeout, |st| {
                st.close_reason.clone().map(Some)
            })
            .await
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.shared.lock().close_reason.clone()
    }

    /// True until the connection ends.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.lock().close_reason.is_none()
    }

    /// Client-initiated disconnect: sends `41`, then closes the transport.
    pub async fn disconnect(&self) {
        if !self.is_connected() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.inner.cmd.send(Command::Disconnect(tx)).is_ok() {
            // The driver bounds its own close; this only guards against a stuck runtime.
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }
}
