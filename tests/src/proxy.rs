//! A TCP proxy that can be paused: while paused no byte moves in either direction, so the
//! service behind it looks hung (like a PostgreSQL server stopped with SIGSTOP) without
//! disturbing other tests that share the real server. It can also be re-pointed at another
//! server, like a managed endpoint (DNS name or VIP) after a failover: open connections are cut
//! and new ones reach the new target, while clients keep the same address.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct PausableProxy {
    pub port: u16,
    paused: watch::Sender<bool>,
    /// Bumped by a re-target: every open connection ends.
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
            if paused.changed().await.is_err() {
                return;
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
            if paused.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl PausableProxy {
    pub async fn start(target: &str) -> PausableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(false);
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let target = Arc::new(Mutex::new(target.to_string()));
        let current = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let to = current.lock().unwrap().clone();
                let Ok(server) = TcpStream::connect(&to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                // Only a re-target after this connection was made ends it.
                let mut generation = gen_rx.clone();
                generation.borrow_and_update();
                tokio::spawn(pump(cr, sw, rx.clone(), generation.clone()));
                tokio::spawn(pump(sr, cw, rx.clone(), generation));
            }
        });
        PausableProxy {
            port,
            paused: tx,
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
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}
