//! Presence with a connection epoch (the lease protocol of ARCHITECTURE.md): acquire on connect,
//! release on disconnect, periodic refresh of this replica's leases, sweep of expired ones, and
//! transitions — the only moments that write the database or emit `device:status`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::live::LiveEntry;
use super::{Gateway, room};
use crate::db::{Transition, now};
use crate::store::{Expired, RefreshOutcome, Released, StoreError, SweepGuard};
use crate::wire::iso_now;
use crate::wire::outgoing::{DeviceStatus, Outgoing};

/// How many expired leases one sweep step removes (the rest wait for the next tick).
const SWEEP_BATCH: usize = 1000;
/// Leases refreshed per pipeline.
const REFRESH_CHUNK: usize = 1000;
/// A lease handed over by the drain or rebalancing lasts this many lease TTLs (90 s by default).
pub const HANDOVER_TTLS: u32 = 3;

impl Gateway {
    /// The acquire step, run in the connect middleware after auth: a new epoch, the older socket
    /// (wherever it lives) disconnected, the online transition if the device was offline.
    pub async fn acquire_device(
        self: &Arc<Self>,
        device: &str,
        org: &str,
        sid: &str,
    ) -> Result<u64, StoreError> {
        let a = self
            .presence
            .acquire(
                device,
                org,
                &self.cfg.replica_id,
                sid,
                self.cfg.lease_ttl.as_millis() as u64,
            )
            .await?;
        self.live.insert(
            sid,
            LiveEntry {
                device_id: device.into(),
                org: org.into(),
                epoch: a.epoch,
                since: Instant::now(),
                connected: false,
                handed_over: false,
            },
        );
        self.hooks.pause().await;
        if let Some(prev) = &a.previous
            && prev.sid != sid
        {
            // A newer connection wins: the superseded socket gets a Socket.IO disconnect so a
            // cloned token or a half-open old connection does not reconnect and fight back.
            self.emitter.disconnect_room(room::socket(&prev.sid)).await;
        }
        if a.came_online {
            self.online_transition(device, org, a.epoch, "connect", a.offline_notice_fired);
        } else {
            // Not a transition, but the epoch is recorded: the replica of the lease replaced
            // here may have died with the online transition still queued (ARCHITECTURE.md).
            self.persister.submit(Transition {
                device_id: device.into(),
                epoch: a.epoch,
                online: true,
                at: now(),
                is_transition: false,
            });
        }
        Ok(a.epoch)
    }

    /// The socket entered the namespace and joined its rooms: commands may now be sent live.
    /// Runs before the connect-time drain of queued commands, so nothing queued meanwhile is missed.
    pub async fn confirm_device(&self, device: &str, sid: &str) {
        self.live.mark_connected(sid);
        if let Err(e) = self.presence.confirm(device, sid).await {
            // The next lease refresh clears `pending` anyway (the socket is marked connected).
            self.metrics.store_error("redis", "confirm");
            tracing::debug!(device, error = %e, "Lease confirm failed.");
        }
    }

    /// The release step, run when a device socket disconnects.
    pub async fn release_device(self: &Arc<Self>, sid: &str) {
        let Some(e) = self.live.remove(sid) else {
            return;
        };
        if self.is_draining() || self.is_fenced() {
            // Handed over, not released: the reconnecting socket supersedes the lease, or the
            // sweep expires it if the device never comes back. (A fenced replica cannot reach
            // Redis anyway, and a release retried later would be judged against the epoch of
            // the device's new socket: see `retire.lua`.)
            return;
        }
        self.hooks.pause().await;
        self.hooks.before_release().await;
        self.release_lease(&e.device_id, &e.org, e.epoch, "disconnect")
            .await;
    }

    /// A device socket whose transport a close path (drain, fencing) closed: its lease is
    /// handed over, never released, whatever this replica's state when the disconnect handler
    /// runs (a fence may have lifted meanwhile).
    pub fn hand_over_device(&self, sid: &str) {
        self.live.remove(sid);
    }

    /// Device sockets a close path (the drain, rebalancing) is about to close: their leases get
    /// `HANDOVER_TTLS` lease TTLs before the sweep may call them offline, instead of whatever
    /// was left since the last refresh, and the refresh tick leaves them alone from now on. A
    /// screen sent away must find a replica that takes it, and the replicas still shedding
    /// answer 503 `server_busy` meanwhile: a player retrying with backoff behind a balancer that
    /// keeps picking them may need several lease TTLs (ARCHITECTURE.md, "Rebalancing"). A
    /// failure only costs the longer deadline: the close goes ahead.
    pub async fn hand_over_leases(self: &Arc<Self>, sids: &[String]) {
        let leases = self.live.hand_over(sids);
        let ttl = self.cfg.lease_ttl * HANDOVER_TTLS;
        if let Err(e) = self.refresh_leases(&leases, ttl).await {
            self.metrics.store_error("redis", "handover");
            tracing::debug!(error = %e, "Lease handover failed.");
        }
    }

    /// Refreshes `leases` to `ttl` and acts on each outcome, one pipeline per chunk: a replica
    /// with tens of thousands of sockets must not hold Redis for one giant batch. Stops at the
    /// first chunk that fails.
    async fn refresh_leases(
        self: &Arc<Self>,
        leases: &[crate::store::LiveLease],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        for chunk in leases.chunks(REFRESH_CHUNK) {
            let outcomes = self
                .presence
                .refresh(&self.cfg.replica_id, chunk, ttl.as_millis() as u64)
                .await?;
            for (l, o) in chunk.iter().zip(outcomes) {
                self.after_refresh(l, o).await;
            }
        }
        Ok(())
    }

    /// One release attempt. A failure is remembered and retried by the refresh tick: if Redis
    /// kept its state the sweep would also expire the lease, but after a restart without
    /// persistence the retry is the only record that the device left.
    async fn release_lease(
        self: &Arc<Self>,
        device: &str,
        org: &str,
        epoch: u64,
        source: &'static str,
    ) {
        match self
            .presence
            .release(device, org, epoch, self.notify_delay_ms())
            .await
        {
            Ok(Released::Offline) => self.offline_transition(device, org, epoch, source),
            Ok(Released::AlreadyAnnounced) => {
                // A sweep of an older (rolled-back) lease told everyone; its older epoch lost to
                // this socket's in the database, which this epoch now brings to offline.
                tracing::debug!(
                    device,
                    epoch,
                    source,
                    "Offline already announced by a sweep."
                );
                self.persist_offline(device, epoch);
            }
            Ok(Released::Nothing | Released::LeftToSweep) => {}
            Err(err) => self.remember_unreleased(device, org, epoch, &err),
        }
    }

    fn remember_unreleased(&self, device: &str, org: &str, epoch: u64, err: &StoreError) {
        self.metrics.store_error("redis", "release");
        if self.live.remember_unreleased(device, org, epoch) {
            tracing::warn!(device, error = %err, "Lease release failed; retrying when Redis answers.");
        } else {
            tracing::warn!(device, error = %err, "Lease release failed and the retry list is full; the sweep will expire it.");
        }
    }

    /// Retries the releases that failed while Redis was unreachable. A retry does not decide
    /// the offline itself: Redis may have come back rolled back to this socket's epoch while a
    /// newer socket of the device lives on a replica that has not refreshed yet. It leaves the
    /// lease to the sweep, due now (`retire.lua`), and the sweep's grace after a rollback lets
    /// that refresh win.
    async fn retry_unreleased(self: &Arc<Self>) {
        for (device, org, epoch) in self.live.take_unreleased() {
            match self
                .presence
                .retire(&device, &org, epoch, &self.cfg.replica_id)
                .await
            {
                Ok(Released::AlreadyAnnounced) => self.persist_offline(&device, epoch),
                Ok(outcome) => {
                    tracing::debug!(device, epoch, ?outcome, "Failed release retried.");
                }
                Err(err) => self.remember_unreleased(&device, &org, epoch, &err),
            }
        }
    }

    pub(crate) fn online_transition(
        self: &Arc<Self>,
        device: &str,
        org: &str,
        epoch: u64,
        source: &'static str,
        notice_fired: bool,
    ) {
        self.metrics.transition(true, source);
        self.persister.submit(Transition {
            device_id: device.into(),
            epoch,
            online: true,
            at: now(),
            is_transition: true,
        });
        let gw = self.clone();
        let (device, org) = (device.to_string(), org.to_string());
        self.tasks().spawn(async move {
            gw.emit_status(&device, &org, "online").await;
            if notice_fired {
                gw.online_notification(&device, &org).await;
            }
        });
    }

    pub(crate) fn offline_transition(
        self: &Arc<Self>,
        device: &str,
        org: &str,
        epoch: u64,
        source: &'static str,
    ) {
        tracing::debug!(device, epoch, source, "Offline transition.");
        self.metrics.transition(false, source);
        self.persist_offline(device, epoch);
        let gw = self.clone();
        let (device, org) = (device.to_string(), org.to_string());
        // The offline notice was scheduled atomically with the transition (release/sweep).
        self.tasks()
            .spawn(async move { gw.emit_status(&device, &org, "offline").await });
    }

    fn persist_offline(&self, device: &str, epoch: u64) {
        self.persister.submit(Transition {
            device_id: device.into(),
            epoch,
            online: false,
            at: now(),
            is_transition: true,
        });
    }

    fn sweep_guard(&self) -> SweepGuard {
        SweepGuard::for_lease(
            self.cfg.lease_ttl.as_millis() as u64,
            self.cfg.presence_sweep_interval.as_millis() as u64,
        )
    }

    fn notify_delay_ms(&self) -> u64 {
        self.cfg.offline_notify_delay.as_millis() as u64
    }

    async fn emit_status(&self, device: &str, org: &str, status: &str) {
        self.emit_status_seen(device, org, status, None).await
    }

    /// `device:status` to the organisation's dashboards; `lastSeen` is now unless given.
    pub(super) async fn emit_status_seen(
        &self,
        device: &str,
        org: &str,
        status: &str,
        last_seen: Option<String>,
    ) {
        let ts = iso_now();
        let last_seen = last_seen.unwrap_or_else(|| ts.clone());
        let event = DeviceStatus {
            device_id: device.to_string(),
            status: status.to_string(),
            last_seen: Some(last_seen),
            timestamp: ts,
        };
        self.emitter
            .emit(room::dashboards(org), Outgoing::of(&event))
            .await;
    }

    /// One refresh of every lease this replica holds, in one pipeline.
    pub async fn refresh_once(self: &Arc<Self>) {
        self.reap_unconnected().await;
        let leases = self.live.leases();
        match self.refresh_leases(&leases, self.cfg.lease_ttl).await {
            // Redis answered only if something was sent.
            Ok(()) if !leases.is_empty() => self.set_redis_healthy(true),
            Ok(()) => {}
            Err(e) => {
                self.metrics.store_error("redis", "refresh");
                self.set_redis_healthy(false);
                tracing::debug!(error = %e, "Lease refresh failed.");
                return;
            }
        }
        // After the refresh, so a device that reconnected here re-asserts its newer epoch
        // before an older socket's retried release is judged against it.
        self.retry_unreleased().await;
    }

    async fn after_refresh(self: &Arc<Self>, l: &crate::store::LiveLease, o: RefreshOutcome) {
        match o {
            RefreshOutcome::Fresh | RefreshOutcome::Restored => {}
            RefreshOutcome::Revived { notice_fired } => {
                self.online_transition(&l.device_id, &l.org, l.epoch, "refresh", notice_fired)
            }
            RefreshOutcome::Stale => {
                // The entry stays until the socket's disconnect handler removes it, so a socket
                // that had not yet joined its room is retried next refresh.
                tracing::info!(device = %l.device_id, "Socket superseded by a newer connection; disconnecting it.");
                self.emitter.disconnect_room(room::socket(&l.sid)).await;
            }
        }
    }

    /// Registry entries whose CONNECT never completed (the socket timed out between the
    /// middleware and the handler) would keep a lease alive forever: release them.
    async fn reap_unconnected(self: &Arc<Self>) {
        let grace = self.cfg.connect_timeout + Duration::from_secs(2);
        for (sid, e) in self.live.snapshot() {
            if !e.connected && e.since.elapsed() > grace && !self.emitter.is_local(&sid) {
                self.release_device(&sid).await;
            }
        }
    }

    /// One sweep of expired leases (any replica may run it; each lease is removed once).
    pub async fn sweep_once(self: &Arc<Self>) {
        match self
            .presence
            .sweep(SWEEP_BATCH, self.notify_delay_ms(), self.sweep_guard())
            .await
        {
            Ok(expired) => {
                for Expired {
                    device_id,
                    org,
                    epoch,
                } in expired
                {
                    self.offline_transition(&device_id, &org, epoch, "sweep");
                }
            }
            Err(e) => {
                self.metrics.store_error("redis", "sweep");
                tracing::debug!(error = %e, "Sweep failed.");
            }
        }
    }

    /// The bulk `lastHeartbeat` flush: one statement for all of this replica's live devices.
    pub async fn flush_once(&self) {
        let devices = self.live.devices();
        if let Err(e) = self.db.flush_last_seen(&devices, now()).await {
            self.metrics.store_error("db", "flush");
            tracing::warn!(error = %e, "lastHeartbeat flush failed.");
        }
    }
}
