//! A TCP load balancer that follows readiness, as a Kubernetes Service does: new connections go
//! round-robin to the backends whose `/api/health/ready` answered 200 at the last poll (every
//! 100 ms); a connection already open stays where it is. Websockets are plain TCP once
//! upgraded, so this is enough for websocket clients (long-polling would need stickiness).
//! With no ready backend, a new connection is closed at once (the client retries).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How often each backend's readiness is polled.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// One backend: where its clients connect and where its readiness answers.
#[derive(Clone, Debug)]
pub struct Backend {
    pub addr: String,
    pub ready_url: String,
}

impl Backend {
    /// A gateway replica: its public port, and readiness on its operator port.
    pub fn of(g: &crate::Gateway) -> Backend {
        Backend {
            addr: format!("127.0.0.1:{}", g.port),
            ready_url: format!("{}/api/health/ready", g.api_url()),
        }
    }
}

struct Shared {
    backends: Vec<Backend>,
    ready: Vec<AtomicBool>,
    next: AtomicUsize,
    /// Connections handed to each backend so far.
    routed: Vec<AtomicUsize>,
    /// Each backend's readiness changes as the poller saw them: (backend, ready).
    changes: Mutex<Vec<(usize, bool)>>,
}

impl Shared {
    fn pick(&self) -> Option<usize> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.ready[i].load(Ordering::SeqCst))
    }
}

pub struct Balancer {
    pub port: u16,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Balancer {
    /// Starts listening on a free loopback port; every backend counts as ready only once a
    /// poll said so.
    pub async fn start(backends: Vec<Backend>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            ready: backends.iter().map(|_| AtomicBool::new(false)).collect(),
            routed: backends.iter().map(|_| AtomicUsize::new(0)).collect(),
            backends,
            next: AtomicUsize::new(0),
            changes: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        let http = reqwest::Client::builder()
            .timeout(POLL_EVERY * 5)
            .build()
            .unwrap();
        for i in 0..shared.backends.len() {
            let (shared, http) = (shared.clone(), http.clone());
            tasks.push(tokio::spawn(async move {
                let url = shared.backends[i].ready_url.clone();
                loop {
                    let ok = matches!(http.get(&url).send().await, Ok(r) if r.status() == 200);
                    if shared.ready[i].swap(ok, Ordering::SeqCst) != ok {
                        shared.changes.lock().unwrap().push((i, ok));
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                }
            }));
        }
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Some(i) = s.pick() else {
                    drop(client);
                    continue;
                };
                s.routed[i].fetch_add(1, Ordering::Relaxed);
                let addr = s.backends[i].addr.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&addr).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        }));
        let b = Balancer {
            port,
            shared,
            tasks,
        };
        crate::eventually(Duration::from_secs(15), "every backend ready", || async {
            b.ready().iter().all(|r| *r).then_some(())
        })
        .await;
        b
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A Socket.IO client option set aimed at the balancer.
    pub fn client(&self) -> vizora_sioclient::ClientOptions {
        vizora_sioclient::ClientOptions::new(self.url())
    }

    /// Each backend's readiness as last polled.
    pub fn ready(&self) -> Vec<bool> {
        self.shared
            .ready
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .collect()
    }

    /// Connections handed to each backend so far.
    pub fn routed(&self) -> Vec<usize> {
        self.shared
            .routed
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect()
    }

    /// Every readiness change the poller saw, in order: (backend index, ready).
    pub fn changes(&self) -> Vec<(usize, bool)> {
        self.shared.changes.lock().unwrap().clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
