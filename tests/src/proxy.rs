//! A TCP proxy in front of a real server that a test can break in the ways networks break:
//! - paused: no byte moves in either direction, so the server looks hung (like a PostgreSQL
//!   server stopped with SIGSTOP) without disturbing other tests that share the real server;
//! - re-pointed at another server, like a managed endpoint (DNS name or VIP) after a failover:
//!   open connections are cut and new ones reach the new target, while clients keep the same
//!   address;
//! - resetting: every open connection is reset (RST) and new ones are accepted and reset at
//!   once (a server or a middlebox dropping connections);
//! - refusing: the listening port is closed, so connecting is refused (a server that is down);
//!   it is bound again on the same port when the proxy is restored.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Up,
    Resetting,
    Refusing,
}

pub struct PausableProxy {
    pub port: u16,
    paused: watch::Sender<bool>,
    mode: watch::Sender<Mode>,
    /// Bumped to cut every open connection (a re-target, a reset, a refusal).
    generation: watch::Sender<u64>,
    target: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
    mut generation: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while *paused.borrow() {
            tokio::select! {
                r = paused.changed() => if r.is_err() { return },
                _ = generation.changed() => return,
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = generation.changed() => return,
        };
        // Hold what was read while paused: nothing reaches the other side until resume.
        while *paused.borrow() {
            tokio::select! {
                r = paused.changed() => if r.is_err() { return },
                _ = generation.changed() => return,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Closes with RST rather than FIN: the peer sees "connection reset by peer".
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn bind(port: u16) -> TcpListener {
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

impl PausableProxy {
    pub async fn start(target: &str) -> PausableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(false);
        let (mode_tx, mut mode) = watch::channel(Mode::Up);
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let target = Arc::new(Mutex::new(target.to_string()));
        let current = target.clone();
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let m = *mode.borrow_and_update();
                if m == Mode::Refusing {
                    listener = None;
                    if mode.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let l = match &listener {
                    Some(l) => l,
                    None => listener.insert(bind(port).await),
                };
                let client = tokio::select! {
                    r = l.accept() => match r {
                        Ok((c, _)) => c,
                        Err(_) => continue,
                    },
                    r = mode.changed() => {
                        if r.is_err() { return }
                        continue;
                    }
                };
                if m == Mode::Resetting {
                    reset(client);
                    continue;
                }
                let to = current.lock().unwrap().clone();
                let Ok(server) = TcpStream::connect(&to).await else {
                    reset(client);
                    continue;
                };
                let _ = client.set_zero_linger();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                // Only a cut after this connection was made ends it.
                let mut generation = gen_rx.clone();
                generation.borrow_and_update();
                tokio::spawn(pump(cr, sw, rx.clone(), generation.clone()));
                tokio::spawn(pump(sr, cw, rx.clone(), generation));
            }
        });
        PausableProxy {
            port,
            paused: tx,
            mode: mode_tx,
            generation: gen_tx,
            target,
            task,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pause(&self) {
        let _ = self.paused.send(true);
    }

    pub fn resume(&self) {
        let _ = self.paused.send(false);
    }

    /// Points the proxy at `target` and cuts every open connection (a failover of a managed
    /// endpoint): clients reconnect to the same address and reach the new server.
    pub fn retarget(&self, target: &str) {
        *self.target.lock().unwrap() = target.to_string();
        self.generation.send_modify(|g| *g += 1);
    }

    /// Resets every open connection and every new one until [`restore`](Self::restore).
    pub fn reset_connections(&self) {
        let _ = self.mode.send(Mode::Resetting);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Resets every open connection and closes the port until [`restore`](Self::restore).
    pub fn refuse_connections(&self) {
        let _ = self.mode.send(Mode::Refusing);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Back to forwarding (the port is bound again if it was closed).
    pub fn restore(&self) {
        let _ = self.mode.send(Mode::Up);
        let _ = self.paused.send(false);
    }
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}
