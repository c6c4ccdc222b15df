//! Proof-of-play impressions: accepted into a durable outbox, then written to
//! `content_impressions` in batches by one drain task per replica.
//!
//! The acknowledgement promises the row: it is sent only once the outbox holds it. The drain
//! writes ONE multi-row insert per batch, idempotent by the id minted at acceptance, and removes
//! entries only after the insert committed. A batch the database refuses for good (an unknown
//! content id) is retried row by row so the bad rows are found, counted and dropped while the
//! others are stored; every other failure (the database unreachable) is retried with backoff and
//! nothing is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::Gateway;
use crate::db::{Db, NewImpression, WriteError};
use crate::store::StateStore;
use crate::store::outbox::{
    Claimed, ImpressionOutbox, OutboxError, OutboxImpression, OutboxResult,
};
use crate::telemetry::Metrics;

/// The database's row for an outbox entry (the outbox keeps its own type, so the stream's format
/// and the table's columns change apart).
impl From<&OutboxImpression> for NewImpression {
    fn from(i: &OutboxImpression) -> NewImpression {
        NewImpression {
            id: i.id.clone(),
            organization_id: i.organization_id.clone(),
            content_id: i.content_id.clone(),
            device_id: i.device_id.clone(),
            playlist_id: i.playlist_id.clone(),
            duration: i.duration,
            completion_percentage: i.completion_percentage,
            timestamp: i.timestamp,
            hour: i.hour,
        }
    }
}

/// Embedded mode (no Redis): the database is local, so the row is written before the ack and
/// there is nothing to drain. A refused row is dropped and counted as in cluster mode; a database
/// that cannot be reached makes the ack an error, so nothing acknowledged is ever lost.
pub struct DirectOutbox {
    db: Db,
    state: Arc<dyn StateStore>,
    metrics: Metrics,
}

impl DirectOutbox {
    pub fn new(db: Db, state: Arc<dyn StateStore>, metrics: Metrics) -> DirectOutbox {
        DirectOutbox { db, state, metrics }
    }
}

#[async_trait]
impl ImpressionOutbox for DirectOutbox {
    async fn append(&self, row: &OutboxImpression, date: &str) -> OutboxResult<()> {
        if self
            .state
            .count_impression(&row.device_id, date)
            .await
            .is_err()
        {
            self.metrics.store_error("memory", "impression");
        }
        match self.db.insert_impressions(&[row.into()]).await {
            Ok(inserted) => {
                self.metrics.impressions_written(inserted);
                Ok(())
            }
            Err(WriteError::Refused { reason, source }) => {
                self.metrics.impression_dropped(reason);
                tracing::info!(device = %row.device_id, content = %row.content_id, error = %source, "Impression refused by the database; dropped.");
                Ok(())
            }
            Err(WriteError::Unavailable(e)) => Err(OutboxError::Write(Box::new(e))),
        }
    }

    async fn claim(&self, _: &str, _: usize, _: Duration) -> OutboxResult<Vec<Claimed>> {
        Ok(Vec::new())
    }

    async fn ack(&self, _: &[String]) -> OutboxResult<()> {
        Ok(())
    }

    async fn backlog(&self) -> OutboxResult<u64> {
        Ok(0)
    }

    async fn forget_idle_readers(&self, _: Duration) -> OutboxResult<u64> {
        Ok(0)
    }
}

/// Why a drain round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("{0}")]
    Database(#[source] sea_orm::DbErr),
}

impl Gateway {
    /// How long an entry may sit claimed by a replica that does not acknowledge it before
    /// another replica takes it over: long enough for a slow batch to commit (a double write is
    /// harmless but wasted), short enough that a dead replica's backlog moves on soon.
    pub fn impression_claim_stale(&self) -> Duration {
        (self.cfg.impression_flush * 10).max(Duration::from_secs(1))
    }

    /// One drain round: batches until the outbox has nothing more for this replica. Returns the
    /// rows handled (written or dropped).
    pub async fn drain_impressions_once(&self) -> Result<usize, DrainError> {
        let mut handled = 0;
        loop {
            let batch = self
                .outbox
                .claim(
                    &self.cfg.replica_id,
                    self.cfg.impression_batch_max,
                    self.impression_claim_stale(),
                )
                .await?;
            if batch.is_empty() {
                break;
            }
            let full = batch.len() >= self.cfg.impression_batch_max;
            let done = self.write_batch(&batch).await;
            // Acknowledge whatever was decided, even when the round stops on an outage: those
            // rows are committed (or refused for good) and must not be written again.
            self.outbox.ack(&done.acked).await?;
            handled += done.acked.len();
            if let Some(e) = done.failed {
                return Err(DrainError::Database(e));
            }
            if !full {
                break;
            }
        }
        if let Ok(n) = self.outbox.backlog().await {
            self.metrics
                .gauges
                .impressions_buffered
                .store(n as i64, Ordering::Relaxed);
        }
        Ok(handled)
    }

    async fn write_batch(&self, batch: &[Claimed]) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let mut rows = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        for c in batch {
            match &c.row {
                Some(r) => {
                    rows.push(NewImpression::from(r));
                    entries.push(c.entry.clone());
                }
                None => {
                    self.metrics.impression_dropped("malformed");
                    tracing::warn!(entry = %c.entry, "Unreadable outbox entry dropped.");
                    out.acked.push(c.entry.clone());
                }
            }
        }
        match self.db.insert_impressions(&rows).await {
            Ok(inserted) => {
                // Rows already stored (a retried batch whose commit was not seen) are skipped.
                self.metrics.impressions_written(inserted);
                out.acked.extend(entries);
            }
            Err(WriteError::Unavailable(e)) => {
                self.metrics.store_error("db", "impression");
                out.failed = Some(e);
            }
            Err(WriteError::Refused { .. }) => {
                // Find the bad rows one by one; the good ones are stored by the same statement
                // shape (idempotent, so those of a half-done earlier attempt are skipped).
                for (row, entry) in rows.iter().zip(entries) {
                    match self.db.insert_impressions(std::slice::from_ref(row)).await {
                        Ok(inserted) => {
                            self.metrics.impressions_written(inserted);
                            out.acked.push(entry);
                        }
                        Err(WriteError::Refused { reason, source }) => {
                            self.metrics.impression_dropped(reason);
                            tracing::info!(device = %row.device_id, content = %row.content_id, error = %source, "Impression refused by the database; dropped.");
                            out.acked.push(entry);
                        }
                        Err(WriteError::Unavailable(e)) => {
                            self.metrics.store_error("db", "impression");
                            out.failed = Some(e);
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

#[derive(Default)]
struct BatchOutcome {
    /// Entries whose rows are committed or refused for good.
    acked: Vec<String>,
    /// The database stopped answering: the rest of the batch stays in the outbox.
    failed: Option<sea_orm::DbErr>,
}

/// The drain task: a round every `IMPRESSION_FLUSH_MS`; after a failure the next round waits
/// longer (doubling, up to 30 s), so an outage is not hammered. On `stop`, one last round
/// (cut short at `deadline`) so a clean stop leaves nothing behind that another replica must
/// claim.
pub async fn run(gw: Arc<Gateway>, stop: CancellationToken, deadline: CancellationToken) {
    let base = gw.cfg.impression_flush;
    let mut wait = base;
    let mut rounds: u64 = 0;
    loop {
        rounds += 1;
        // Now and then, forget readers of replicas that are gone (an hour without reading and
        // nothing held); cheap, and any replica may do it.
        if rounds % 600 == 1 {
            match gw
                .outbox
                .forget_idle_readers(Duration::from_secs(3600))
                .await
            {
                Ok(n) if n > 0 => tracing::info!(readers = n, "Forgot idle impression readers."),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "Could not tidy impression readers."),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
        }
        wait = match gw.drain_impressions_once().await {
            Ok(_) => base,
            Err(e) => {
                tracing::warn!(error = %e, "Impression drain failed; retrying.");
                (wait * 2).clamp(base, Duration::from_secs(30).max(base))
            }
        };
    }
    tokio::select! {
        _ = gw.drain_impressions_once() => {}
        _ = deadline.cancelled() => {
            tracing::info!("Impressions left in the outbox at shutdown; another replica drains them.");
        }
    }
}
