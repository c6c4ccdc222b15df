//! A TCP listener whose connections can be closed one by one from outside.
//!
//! socketioxide has no public way to close one socket's transport (a Socket.IO disconnect would
//! stop socket.io-client from reconnecting). The drain needs exactly that, spread over time: every
//! accepted connection carries a [`Kill`] switch, reachable from the socket's handshake request
//! (`ConnectInfo<Peer>`); flipping it fails the connection's reads and writes, hyper drops it, the
//! client sees a transport close and reconnects elsewhere with its own backoff.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

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

/// The peer of a connection, with its kill switch.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub kill: Arc<Kill>,
}

impl Connected<IncomingStream<'_, KillListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, KillListener>) -> Self {
        stream.remote_addr().clone()
    }
}

pub struct KillListener(pub TcpListener);

impl Listener for KillListener {
    type Io = KillIo;
    type Addr = Peer;

    async fn accept(&mut self) -> (KillIo, Peer) {
        loop {
            match self.0.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    let kill = Arc::new(Kill::default());
                    return (
                        KillIo {
                            io,
                            kill: kill.clone(),
                        },
                        Peer { addr, kill },
                    );
                }
                Err(e) => {
                    // Usually EMFILE under a connection flood: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.0.local_addr()?,
            kill: Arc::default(),
        })
    }
}

pub struct KillIo {
    io: TcpStream,
    kill: Arc<Kill>,
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
        Pin::new(&mut this.io).poll_read(cx, buf)
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
