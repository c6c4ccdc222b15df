//! A TCP load balancer that follows readiness, as a Kubernetes Service does: new connections go
//! round-robin to the backends whose `/api/health/ready` answered 200 at the last poll (every
//! 100 ms); a connection already open stays where it is. Websockets are plain TCP once
//! upgraded, so this is enough for websocket clients (long-polling would need stickiness).
//! With no ready backend, a new connection is closed at once (the client retries). A backend can
//! join later ([`Balancer::add`]), as a new pod joins a Service's endpoints.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

/// One backend and what the balancer knows of it.
struct Slot {
    backend: Backend,
    ready: AtomicBool,
    /// Connections handed to it so far.
    routed: AtomicUsize,
}

struct Shared {
    /// Backends in the order they were given or added (their index in [`Balancer::ready`]).
    slots: RwLock<Vec<Arc<Slot>>>,
    next: AtomicUsize,
    /// Each backend's readiness changes as the poller saw them: (backend, ready).
    changes: Mutex<Vec<(usize, bool)>>,
    http: reqwest::Client,
}

impl Shared {
    fn pick(&self) -> Option<Arc<Slot>> {
        let slots = self.slots.read().unwrap();
        let n = slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &slots[(start + k) % n])
            .find(|s| s.ready.load(Ordering::SeqCst))
            .cloned()
    }

    /// Polls backend `i`'s readiness until the balancer is dropped.
    fn poll(self: &Arc<Self>, i: usize) -> tokio::task::JoinHandle<()> {
        let shared = self.clone();
        tokio::spawn(async move {
            let slot = shared.slots.read().unwrap()[i].clone();
            let url = slot.backend.ready_url.clone();
            loop {
                let ok = matches!(shared.http.get(&url).send().await, Ok(r) if r.status() == 200);
                if slot.ready.swap(ok, Ordering::SeqCst) != ok {
                    shared.changes.lock().unwrap().push((i, ok));
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
        })
    }
}

pub struct Balancer {
    pub port: u16,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Balancer {
    /// Starts listening on a free loopback port; every backend counts as ready only once a
    /// poll said so.
    pub async fn start(backends: Vec<Backend>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            slots: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            changes: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .timeout(POLL_EVERY * 5)
                .build()
                .unwrap(),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Some(slot) = s.pick() else {
                    drop(client);
                    continue;
                };
                slot.routed.fetch_add(1, Ordering::Relaxed);
                let addr = slot.backend.addr.clone();
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
        });
        let b = Balancer {
            port,
            shared,
            tasks: Mutex::new(vec![accept]),
        };
        for backend in backends {
            b.add_backend(backend);
        }
        b.wait_all_ready().await;
        b
    }

    /// Adds a backend (a replica joining, as a new pod enters a Service's endpoints): it gets
    /// connections once a poll found it ready. Returns its index.
    pub fn add_backend(&self, backend: Backend) -> usize {
        let i = {
            let mut slots = self.shared.slots.write().unwrap();
            slots.push(Arc::new(Slot {
                backend,
                ready: AtomicBool::new(false),
                routed: AtomicUsize::new(0),
            }));
            slots.len() - 1
        };
        let poller = self.shared.poll(i);
        self.tasks.lock().unwrap().push(poller);
        i
    }

    /// Adds a backend and waits until the balancer sends it connections.
    pub async fn add(&self, backend: Backend) -> usize {
        let i = self.add_backend(backend);
        self.wait_all_ready().await;
        i
    }

    async fn wait_all_ready(&self) {
        crate::eventually(Duration::from_secs(15), "every backend ready", || async {
            self.ready().iter().all(|r| *r).then_some(())
        })
        .await;
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
            .slots
            .read()
            .unwrap()
            .iter()
            .map(|s| s.ready.load(Ordering::SeqCst))
            .collect()
    }

    /// Connections handed to each backend so far.
    pub fn routed(&self) -> Vec<usize> {
        self.shared
            .slots
            .read()
            .unwrap()
            .iter()
            .map(|s| s.routed.load(Ordering::Relaxed))
            .collect()
    }

    /// Every readiness change the poller saw, in order: (backend index, ready).
    pub fn changes(&self) -> Vec<(usize, bool)> {
        self.shared.changes.lock().unwrap().clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().iter() {
            t.abort();
        }
    }
}
