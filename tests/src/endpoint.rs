//! A managed Redis endpoint on loopback: a TCP forwarder whose target can be switched, the way a
//! cloud provider repoints its DNS name at the promoted replica. Connections opened before the
//! switch stay on the old node (as they do when only DNS changes), so clients must notice by
//! themselves that it is no longer the primary.

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

pub struct ManagedEndpoint {
    pub port: u16,
    target: Arc<Mutex<u16>>,
    task: tokio::task::JoinHandle<()>,
}

impl ManagedEndpoint {
    pub async fn start(target_port: u16) -> ManagedEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(Mutex::new(target_port));
        let t = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let to = *t.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        ManagedEndpoint { port, target, task }
    }

    /// `redis://` to the endpoint.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// New connections go to `port` from now on; open ones stay where they are.
    pub fn switch_to(&self, port: u16) {
        *self.target.lock().unwrap() = port;
    }
}

impl Drop for ManagedEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
