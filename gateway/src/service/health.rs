//! What the health routes ask about the dependencies: one probe each, bounded, with the same
//! answer shape for the store and the database. The routes (`http/health.rs`) only format it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Gateway;
use crate::storage::StorageStatus;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A dependency's answer to one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Healthy { latency_ms: u64 },
    Unhealthy(String),
}

impl Probe {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Probe::Healthy { .. })
    }
}

async fn probe<E: std::fmt::Display>(f: impl Future<Output = Result<(), E>>) -> Probe {
    let t = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, f).await {
        Ok(Ok(())) => Probe::Healthy {
            latency_ms: t.elapsed().as_millis() as u64,
        },
        Ok(Err(e)) => Probe::Unhealthy(e.to_string()),
        Err(_) => Probe::Unhealthy("timed out".into()),
    }
}

impl Gateway {
    /// The shared store and the database, probed together.
    pub async fn probe_dependencies(&self) -> (Probe, Probe) {
        tokio::join!(probe(self.state.ping()), probe(self.db.ping()))
    }

    /// Probes both dependencies and records the answer in `vizora_gateway_dependency_up`
    /// (periodic): the outage shows in metrics and alerts, while readiness stays with the
    /// replica's own state (contract §7).
    pub async fn record_dependencies(&self) {
        let (store, database) = self.probe_dependencies().await;
        let g = &self.metrics.gauges;
        if self.cfg.redis.is_some() {
            g.redis_up
                .store(i64::from(store.is_healthy()), Ordering::Relaxed);
        }
        g.database_up
            .store(i64::from(database.is_healthy()), Ordering::Relaxed);
    }

    /// Whether uploads can be attempted (S3 storage is set up in the background until it works).
    pub fn storage_status(&self) -> StorageStatus {
        self.storage.status()
    }
}
