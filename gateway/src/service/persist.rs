//! The transition writer: presence transitions are written to the database in submission order by
//! one task per replica, retried with backoff until they succeed — never dropped, never reordered.
//! The epoch guard in `Db::apply_transition` orders them against other replicas' writes. What is
//! queued when the writer comes round is written in one transaction (up to [`BATCH`]), so a
//! connect storm's backlog costs one commit per batch rather than one per screen.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, Transition};
use crate::hooks::Hooks;
use crate::telemetry::Metrics;

/// Transitions written per transaction at most.
const BATCH: usize = 256;

#[derive(Clone)]
pub struct Persister {
    tx: mpsc::UnboundedSender<Transition>,
    pending: Arc<AtomicI64>,
}

impl Persister {
    pub fn new() -> (Persister, mpsc::UnboundedReceiver<Transition>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Persister {
                tx,
                pending: Arc::new(AtomicI64::new(0)),
            },
            rx,
        )
    }

    pub fn submit(&self, t: Transition) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(t).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("Transition writer is gone; transition not persisted.");
        }
    }

    pub fn pending(&self) -> i64 {
        self.pending.load(Ordering::Relaxed)
    }
}

/// What the writer writes with.
pub struct Writer {
    pub db: Db,
    pub replica: String,
    pub metrics: Metrics,
    pub hooks: Hooks,
}

/// Runs until `stop`, then keeps writing what is queued until `deadline` (the drain's end):
/// a transition accepted before the stop is not dropped while there is time to write it.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Transition>,
    persister: Persister,
    w: Writer,
    stop: CancellationToken,
    deadline: CancellationToken,
) {
    let Writer {
        db,
        replica,
        metrics,
        hooks,
    } = w;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let t = tokio::select! {
            t = rx.recv() => match t { Some(t) => t, None => return },
            _ = stop.cancelled(), if rx.is_empty() => return,
            _ = deadline.cancelled() => return,
        };
        batch.push(t);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        hooks.before_transition_write().await;
        let mut backoff = Duration::from_millis(100);
        loop {
            let written = match batch.as_slice() {
                [one] => db.apply_transition(one, &replica).await.map(|_| ()),
                many => db.apply_transitions(many, &replica).await,
            };
            match written {
                Ok(()) => break,
                Err(e) => {
                    metrics.store_error("db", "transition");
                    tracing::warn!(device = %batch[0].device_id, transitions = batch.len(), error = %e, "Transition write failed; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = deadline.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        persister
            .pending
            .fetch_sub(batch.len() as i64, Ordering::Relaxed);
        batch.clear();
        metrics
            .gauges
            .pending_transitions
            .store(persister.pending(), Ordering::Relaxed);
    }
}
