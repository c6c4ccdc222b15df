//! A TCP listener whose connections can be closed one by one from outside.
//!
//! socketioxide has no public way to close one socket's transport (a Socket.IO disconnect would
//! stop socket.io-client from reconnecting). The drain needs exactly that, spread over time: every
//! accepted connection carries a [`Kill`] switch, reachable from the socket's handshake request
//! (`ConnectInfo<Peer>`); flipping it fails the connection's reads and writes, hyper drops it, the
//! client sees a transport close and reconnects elsewhere with its own backoff.
//!
//! The listener is also where connections that never speak are dealt with (slowloris), since the
//! handshake limits only ever see complete requests:
//! - at accept, a per-replica ceiling on open TCP connections and a per-address one
//!   ([`TcpLimits`]). The per-address ceiling counts the TCP peer, which behind a proxy is the
//!   proxy: trusted proxies are exempt from it (the per-client handshake limits still apply to
//!   the forwarded client) and count only toward the replica ceiling;
//! - a first-request/header timeout: a connection must deliver complete request headers within
//!   `HTTP_HEADER_TIMEOUT_MS` of its first byte (or of accept, for one that sends nothing);
//! - an idle timeout: a connection with no request in flight is closed after
//!   `HTTP_IDLE_TIMEOUT_MS` (like a keep-alive timeout).
//!
//! A request is "in flight" from the moment the edge gate sees it (headers complete) until its
//! response is produced ([`Watch::busy`]); a long-poll is therefore never idle. A connection
//! upgraded to websocket is exempt from both timers: Engine.IO's ping and connect timeouts
//! govern it from then on (a websocket that never sends a Socket.IO CONNECT is closed after
//! `CONNECT_TIMEOUT_MS`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::proxies::TrustedProxies;
use crate::telemetry::Metrics;

/// One connection's kill switch.
#[derive(Default, Debug)]
pub struct Kill {
    killed: AtomicBool,
    // Reads and writes run in different tasks (websocket halves): each needs its own waker.
    read: AtomicWaker,
    write: AtomicWaker,
}

impl Kill {
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.read.wake();
        self.write.wake();
    }
    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// What the HTTP layer tells a connection's timers: whether a request is in flight, and whether
/// the connection became a websocket.
#[derive(Default, Debug)]
pub struct Watch {
    in_flight: AtomicUsize,
    /// Bumped when a request ends: the connection's next idle period starts.
    finished: AtomicU64,
    upgraded: AtomicBool,
    /// The connection's reader, woken when a request ends so it arms the idle timer (it may be
    /// parked on the socket since before the request went in flight).
    read: AtomicWaker,
}

impl Watch {
    /// Marks a request in flight until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }
    /// The connection now carries a websocket: the HTTP timers no longer apply.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::SeqCst);
    }
    fn timed(&self) -> bool {
        !self.upgraded.load(Ordering::SeqCst) && self.in_flight.load(Ordering::SeqCst) == 0
    }
}

/// A request in flight on a connection.
pub struct Busy(Arc<Watch>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.read.wake();
    }
}

/// The peer of a connection, with its kill switch and its timers' watch.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub kill: Arc<Kill>,
    pub watch: Arc<Watch>,
}

/// Raw TCP ceilings and timers (`MAX_TCP_CONNECTIONS`, `MAX_TCP_CONNECTIONS_PER_IP`,
/// `HTTP_HEADER_TIMEOUT_MS`, `HTTP_IDLE_TIMEOUT_MS`).
#[derive(Clone, Debug)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub trusted_proxies: TrustedProxies,
}

/// Open connections, in all and per peer address.
struct Open {
    limits: TcpLimits,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    metrics: Metrics,
}

impl Open {
    /// Takes a slot for a new connection from `ip`, or says which ceiling refuses it.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        if self.total.fetch_add(1, Ordering::SeqCst) >= self.limits.max_connections {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err("max_tcp_connections");
        }
        // Behind a proxy the peer is the proxy: its clients are told apart by the handshake
        // limits, on the forwarded address.
        let per_ip = !self.limits.trusted_proxies.contains(ip);
        if per_ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.limits.max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::SeqCst);
                return Err("max_tcp_connections_per_ip");
            }
            *n += 1;
        }
        self.metrics
            .gauges
            .tcp_connections
            .fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            open: self.clone(),
            ip: per_ip.then_some(ip),
        })
    }
}

/// One open connection's place in the counts, given back on drop.
struct Slot {
    open: Arc<Open>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.total.fetch_sub(1, Ordering::SeqCst);
        self.open
            .metrics
            .gauges
            .tcp_connections
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut map = self.open.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl Connected<IncomingStream<'_, KillListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, KillListener>) -> Self {
        stream.remote_addr().clone()
    }
}

pub struct KillListener {
    listener: TcpListener,
    open: Arc<Open>,
}

impl KillListener {
    pub fn new(listener: TcpListener, limits: TcpLimits, metrics: Metrics) -> Self {
        KillListener {
            listener,
            open: Arc::new(Open {
                limits,
                total: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }
}

impl Listener for KillListener {
    type Io = KillIo;
    type Addr = Peer;

    async fn accept(&mut self) -> (KillIo, Peer) {
        loop {
            match self.listener.accept().await {
                Ok((io, addr)) => {
                    let slot = match self.open.admit(addr.ip().to_canonical()) {
                        Ok(s) => s,
                        Err(reason) => {
                            // Closed at once: no bytes read, nothing allocated for it.
                            self.open.metrics.tcp(reason);
                            drop(io);
                            continue;
                        }
                    };
                    let _ = io.set_nodelay(true);
                    let kill = Arc::new(Kill::default());
                    let watch = Arc::new(Watch::default());
                    let limits = &self.open.limits;
                    return (
                        KillIo {
                            io,
                            kill: kill.clone(),
                            watch: watch.clone(),
                            timer: Box::pin(tokio::time::sleep(limits.header_timeout)),
                            finished_seen: 0,
                            reading_head: false,
                            header_timeout: limits.header_timeout,
                            idle_timeout: limits.idle_timeout,
                            metrics: self.open.metrics.clone(),
                            _slot: slot,
                        },
                        Peer { addr, kill, watch },
                    );
                }
                Err(e) => {
                    // Usually EMFILE under a connection flood: back off instead of spinning, and
                    // say plainly which limit was hit so an operator can raise it.
                    if matches!(e.raw_os_error(), Some(24 | 23)) {
                        tracing::error!(
                            error = %e,
                            "Accept failed: the open-file limit is reached (one file descriptor per \
                             connection). New connections wait until sockets close; raise \
                             `ulimit -n` / LimitNOFILE / the container's nofile limit."
                        );
                    } else {
                        tracing::warn!(error = %e, "Accept failed.");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.listener.local_addr()?,
            kill: Arc::default(),
            watch: Arc::default(),
        })
    }
}

pub struct KillIo {
    io: TcpStream,
    kill: Arc<Kill>,
    watch: Arc<Watch>,
    /// The header deadline (from the first byte of a request, or from accept) or the idle one.
    timer: Pin<Box<Sleep>>,
    /// The watch's `finished` count this connection last started an idle period for.
    finished_seen: u64,
    /// Bytes of the next request have arrived: the header deadline runs.
    reading_head: bool,
    header_timeout: Duration,
    idle_timeout: Duration,
    metrics: Metrics,
    _slot: Slot,
}

impl KillIo {
    /// Checks the connection's timers (only while no request is in flight and it is not a
    /// websocket); `Err` when the deadline has passed. Polling the timer registers the waker.
    fn check_timers(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.watch.upgraded.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Registered while a request is in flight too: its end must wake this reader.
        self.watch.read.register(cx.waker());
        if !self.watch.timed() {
            return Ok(());
        }
        let finished = self.watch.finished.load(Ordering::SeqCst);
        if finished != self.finished_seen {
            self.finished_seen = finished;
            self.reading_head = false;
            self.timer
                .as_mut()
                .reset(Instant::now() + self.idle_timeout);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            let why = if self.reading_head || finished == 0 {
                "header_timeout"
            } else {
                "idle_timeout"
            };
            self.metrics.tcp(why);
            return Err(io::Error::new(io::ErrorKind::TimedOut, why));
        }
        Ok(())
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the gateway")
}

impl AsyncRead for KillIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.kill.read.register(cx.waker());
        if this.kill.is_killed() {
            return Poll::Ready(Err(aborted()));
        }
        this.check_timers(cx)?;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before && !this.reading_head {
            // The first bytes of a request (or of the first one): the header deadline starts.
            if this.watch.timed() {
                this.reading_head = true;
                let deadline = Instant::now() + this.header_timeout;
                this.timer.as_mut().reset(deadline);
            }
        }
        r
    }
}

impl AsyncWrite for KillIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.kill.write.register(cx.waker());
        if this.kill.is_killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.kill.write.register(cx.waker());
        if this.kill.is_killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
