//! Reconciliation: a row that says online with no lease behind it goes offline.
//!
//! Transitions are the only writers of `devices.status`, so a transition that never happened
//! leaves a row online for good: rows the original service left at cut-over, or a device that
//! left while Redis was down when its replica died before Redis came back. Once per
//! `PRESENCE_RECONCILE_INTERVAL_MS` one replica (a Redis lock) pages through the rows that say
//! online and have not been seen for two flush intervals plus a lease TTL, and writes offline for
//! those without a lease. Every live device has a lease and a `lastHeartbeat` refreshed by its
//! replica's flush, so neither condition can hold for it; a device that connects meanwhile wins
//! through the epoch guard (its online transition carries a newer epoch).

use std::sync::Arc;

use super::Gateway;
use crate::db::now;
use crate::wire::iso_naive;

/// Rows read (and leases checked) per step.
const CHUNK: u64 = 500;

impl Gateway {
    pub async fn reconcile_once(self: &Arc<Self>) {
        let period = self.cfg.presence_reconcile_interval;
        match self
            .presence
            .try_lock(
                "presence-reconcile",
                &self.cfg.replica_id,
                period.as_millis() as u64,
            )
            .await
        {
            Ok(true) => {}
            // Another replica has this period; or Redis is down and leases cannot be checked.
            Ok(false) | Err(_) => return,
        }
        let quiet = self.cfg.last_seen_flush * 2 + self.cfg.lease_ttl;
        let Ok(quiet) = chrono::Duration::from_std(quiet) else {
            return;
        };
        let cutoff = now() - quiet;
        let mut after = String::new();
        loop {
            let rows = match self.db.stale_online(cutoff, &after, CHUNK).await {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.store_error("db", "reconcile");
                    tracing::warn!(error = %e, "Presence reconciliation could not read devices.");
                    return;
                }
            };
            let Some(last) = rows.last() else {
                return;
            };
            after = last.id.clone();
            let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
            let Ok(online) = self.presence.online(&ids).await else {
                return;
            };
            let mut gone = Vec::new();
            for (r, live) in rows.iter().zip(online) {
                if live {
                    continue;
                }
                match self
                    .db
                    .reconcile_offline(&r.id, r.epoch, cutoff, &self.cfg.replica_id)
                    .await
                {
                    Ok(true) => gone.push(r),
                    Ok(false) => {}
                    Err(e) => {
                        self.metrics.store_error("db", "reconcile");
                        tracing::warn!(error = %e, "Presence reconciliation could not write.");
                        return;
                    }
                }
            }
            // A device that connected while we wrote has its own online transition (newer
            // epoch): dashboards hear only about those still without a lease.
            let gone_ids: Vec<String> = gone.iter().map(|r| r.id.clone()).collect();
            let still = self.presence.online(&gone_ids).await.unwrap_or_default();
            for (r, live) in gone.iter().zip(still) {
                if live {
                    continue;
                }
                self.metrics.transition(false, "reconcile");
                tracing::info!(device = %r.id, "Row said online with no lease behind it; now offline.");
                self.emit_status_seen(&r.id, &r.org, "offline", r.last_heartbeat.map(iso_naive))
                    .await;
            }
            if (rows.len() as u64) < CHUNK {
                return;
            }
        }
    }
}
