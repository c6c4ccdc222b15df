//! In-process twin of the Redis stores, for the embedded single-node default and for unit tests.
//!
//! Same semantics as the Lua scripts in `lua/`: each method takes the lock once, so every step is
//! atomic exactly like a script. Expired entries are dropped lazily on read and on sweep.
//!
//! Time is `super::now_ms`, tokio's view of the wall clock, so a paused test clock drives lease
//! deadlines, the sweep grace and notice due times (`tests/tests/paused.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;

#[derive(Default)]
struct Inner {
    epochs: HashMap<String, u64>,
    /// Lease plus its deadline (ms).
    leases: HashMap<String, (Lease, i64)>,
    /// Any string key with an expiry (status JSON, latest sample, playlists, pending screenshots, errors).
    kv: HashMap<String, (String, i64)>,
    commands: HashMap<String, (VecDeque<String>, i64)>,
    notices: HashMap<String, OfflineNotice>,
    fired: HashSet<String>,
    counters: HashMap<String, (u64, i64)>,
    /// The last sweep's time and the end of the sweep grace (sweep.lua's `presence:sweep-tick`
    /// and `presence:grace-until`): a process stalled for longer than the lease TTL must not
    /// sweep its own live sockets before refreshing them.
    sweep_tick: Option<i64>,
    grace_until: i64,
    suspended: HashSet<String>,
    /// `replicas:load`: each replica's load record.
    loads: HashMap<String, String>,
}

impl Inner {
    fn get(&mut self, key: &str, now: i64) -> Option<String> {
        match self.kv.get(key) {
            Some((_, exp)) if *exp <= now => {
                self.kv.remove(key);
                None
            }
            Some((v, _)) => Some(v.clone()),
            None => None,
        }
    }
    fn set(&mut self, key: String, value: String, ttl_ms: i64, now: i64) {
        self.kv.insert(key, (value, now + ttl_ms));
    }
    fn schedule(&mut self, device: &str, org: &str, now: i64, delay_ms: u64) {
        let n = OfflineNotice {
            device_id: device.into(),
            device_name: device.into(),
            organization_id: org.into(),
            scheduled_for: now + delay_ms as i64,
            disconnected_at: now,
        };
        self.notices.insert(device.into(), n);
    }
    fn set_status(
        &mut self,
        device: &str,
        status: &str,
        sid: Option<&str>,
        org: &str,
        ttl_s: u64,
        now: i64,
    ) {
        let json = serde_json::json!({"status": status, "lastHeartbeat": now, "socketId": sid, "organizationId": org});
        self.set(
            status_key(device),
            json.to_string(),
            ttl_s as i64 * 1000,
            now,
        );
    }
    /// Whether the socket with `epoch` may take the device's queues (take_queued.lua): no newer
    /// epoch owns the device, and its lease is not gone while its epoch is the stored one.
    fn owns_queue(&self, device: &str, epoch: u64) -> bool {
        let stored = self.epochs.get(device).copied();
        match self.leases.get(device) {
            Some((l, _)) => l.epoch() <= epoch && stored.is_none_or(|e| e <= epoch),
            None => stored.is_none_or(|e| e < epoch),
        }
    }
    fn take_commands(&mut self, device: &str, now: i64) -> Vec<String> {
        match self.commands.remove(&commands_key(device)) {
            Some((q, exp)) if exp > now => q.into_iter().collect(),
            _ => Vec::new(),
        }
    }
    fn take_pending_playlist(&mut self, device: &str, now: i64) -> Option<String> {
        let key = pending_playlist_key(device);
        let v = self.get(&key, now);
        self.kv.remove(&key);
        v
    }
    /// When the status key says offline: the time it was written (µs, like an epoch).
    fn offline_since_us(&mut self, device: &str, now: i64) -> Option<u64> {
        let raw = self.get(&status_key(device), now)?;
        let st: serde_json::Value = serde_json::from_str(&raw).ok()?;
        if st.get("status")? != "offline" {
            return None;
        }
        let ms = st.get("lastHeartbeat")?.as_u64()?;
        Some(ms.saturating_mul(1000))
    }
}

/// The embedded store: presence and state in this process.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Monotonic floor for epochs, mirroring Redis TIME in µs.
    last_epoch: Mutex<u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another task panicked mid-update; the maps stay usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_us(&self) -> u64 {
        let wall = super::now_us().max(0) as u64;
        let mut last = self.last_epoch.lock().unwrap_or_else(|p| p.into_inner());
        *last = wall.max(*last + 1);
        *last
    }
}

#[async_trait]
impl PresenceStore for MemoryStore {
    async fn acquire(
        &self,
        device: &str,
        org: &str,
        replica: &str,
        sid: &str,
        ttl_ms: u64,
    ) -> StoreResult<Acquired> {
        let now_us = self.now_us();
        let now = (now_us / 1000) as i64;
        let mut g = self.lock();
        let stored = g.epochs.get(device).copied().unwrap_or(0);
        let epoch = (stored + 1).max(now_us);
        g.epochs.insert(device.to_string(), epoch);
        let lease = Lease {
            epoch: epoch.to_string(),
            replica: replica.into(),
            sid: sid.into(),
            org: org.into(),
            pending: true,
        };
        let previous = g
            .leases
            .insert(device.to_string(), (lease, now + ttl_ms as i64))
            .map(|(l, _)| l);
        g.set_status(device, "online", Some(sid), org, STATUS_ONLINE_TTL_S, now);
        let mut fired = false;
        if previous.is_none() {
            g.notices.remove(device);
            fired = g.fired.remove(device);
        }
        Ok(Acquired {
            epoch,
            came_online: previous.is_none(),
            previous,
            offline_notice_fired: fired,
        })
    }

    async fn refresh(
        &self,
        replica: &str,
        leases: &[LiveLease],
        ttl_ms: u64,
    ) -> StoreResult<Vec<RefreshOutcome>> {
        let now = now_ms();
        let mut g = self.lock();
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            // Same rules as refresh.lua: epochs only move forward.
            let outcome = match g.epochs.get(&l.device_id).copied() {
                Some(e) if e > l.epoch => {
                    out.push(RefreshOutcome::Stale);
                    continue;
                }
                Some(e) if e == l.epoch => {
                    if g.leases.contains_key(&l.device_id) {
                        RefreshOutcome::Fresh
                    } else {
                        // The sweep's offline notice is cancelled: the device never left.
                        g.notices.remove(&l.device_id);
                        RefreshOutcome::Revived {
                            notice_fired: g.fired.remove(&l.device_id),
                        }
                    }
                }
                _ => {
                    g.epochs.insert(l.device_id.clone(), l.epoch);
                    RefreshOutcome::Restored
                }
            };
            let lease = Lease {
                epoch: l.epoch.to_string(),
                replica: replica.into(),
                sid: l.sid.clone(),
                org: l.org.clone(),
                pending: l.pending,
            };
            g.leases
                .insert(l.device_id.clone(), (lease, now + ttl_ms as i64));
            let key = status_key(&l.device_id);
            let keep = outcome == RefreshOutcome::Fresh && g.get(&key, now).is_some();
            if keep {
                if let Some(entry) = g.kv.get_mut(&key) {
                    entry.1 = now + STATUS_ONLINE_TTL_S as i64 * 1000;
                }
            } else {
                g.set_status(
                    &l.device_id,
                    "online",
                    Some(&l.sid),
                    &l.org,
                    STATUS_ONLINE_TTL_S,
                    now,
                );
            }
            out.push(outcome);
        }
        Ok(out)
    }

    async fn confirm(&self, device: &str, sid: &str) -> StoreResult<()> {
        if let Some((lease, _)) = self.lock().leases.get_mut(device)
            && lease.sid == sid
        {
            lease.pending = false;
        }
        Ok(())
    }

    async fn release(
        &self,
        device: &str,
        org: &str,
        epoch: u64,
        notify_delay_ms: u64,
    ) -> StoreResult<Released> {
        let now = now_ms();
        let mut g = self.lock();
        // Same rules as release.lua, including "no epoch, or an older one" (a store that lost or
        // rolled back its state: this socket was the latest).
        match g.epochs.get(device).copied() {
            Some(e) if e > epoch => return Ok(Released::Nothing),
            Some(e) if e == epoch => {
                if g.leases.remove(device).is_none() {
                    return Ok(Released::Nothing);
                }
            }
            _ => {
                let existed = g.leases.remove(device).is_some();
                g.epochs.insert(device.to_string(), epoch);
                if !existed && g.offline_since_us(device, now).is_some_and(|t| t >= epoch) {
                    return Ok(Released::AlreadyAnnounced);
                }
            }
        }
        g.set_status(device, "offline", None, org, STATUS_OFFLINE_TTL_S, now);
        g.schedule(device, org, now, notify_delay_ms);
        Ok(Released::Offline)
    }

    async fn retire(
        &self,
        device: &str,
        org: &str,
        epoch: u64,
        replica: &str,
    ) -> StoreResult<Released> {
        let now = now_ms();
        let mut g = self.lock();
        // Same rules as retire.lua.
        let cur = g.epochs.get(device).copied();
        let owner = g.leases.get(device).map(|(l, _)| l.epoch());
        if cur.is_some_and(|e| e > epoch) || owner.is_some_and(|e| e > epoch) {
            return Ok(Released::Nothing);
        }
        if owner.is_none() {
            if cur == Some(epoch) {
                return Ok(Released::Nothing);
            }
            if g.offline_since_us(device, now).is_some_and(|t| t >= epoch) {
                g.epochs.insert(device.to_string(), epoch);
                return Ok(Released::AlreadyAnnounced);
            }
        }
        if cur.is_none_or(|e| e < epoch) {
            g.epochs.insert(device.to_string(), epoch);
        }
        match g.leases.get_mut(device) {
            Some((l, deadline)) if l.epoch() == epoch => *deadline = now,
            _ => {
                let lease = Lease {
                    epoch: epoch.to_string(),
                    replica: replica.into(),
                    sid: String::new(),
                    org: org.into(),
                    pending: false,
                };
                g.leases.insert(device.to_string(), (lease, now));
            }
        }
        Ok(Released::LeftToSweep)
    }

    async fn sweep(
        &self,
        limit: usize,
        notify_delay_ms: u64,
        guard: SweepGuard,
    ) -> StoreResult<Vec<Expired>> {
        let now = now_ms();
        let mut g = self.lock();
        // Same grace as sweep.lua (this store cannot be rolled back, only stalled).
        let prev = g.sweep_tick.replace(now);
        if guard.grace_ms > 0 && prev.is_none_or(|p| now - p > guard.stall_ms as i64) {
            g.grace_until = now + guard.grace_ms as i64;
        }
        if g.grace_until > now {
            return Ok(Vec::new());
        }
        let due: Vec<String> = g
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| id.clone())
            .take(limit)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            if let Some((lease, _)) = g.leases.remove(&id) {
                g.set_status(&id, "offline", None, &lease.org, STATUS_OFFLINE_TTL_S, now);
                g.schedule(&id, &lease.org, now, notify_delay_ms);
                out.push(Expired {
                    epoch: lease.epoch(),
                    org: lease.org,
                    device_id: id,
                });
            }
        }
        // Lazy expiry of everything else, so the embedded store does not grow without bound.
        g.kv.retain(|_, (_, exp)| *exp > now);
        g.commands.retain(|_, (_, exp)| *exp > now);
        g.counters.retain(|_, (_, exp)| *exp > now);
        Ok(out)
    }

    async fn online(&self, devices: &[String]) -> StoreResult<Vec<bool>> {
        let g = self.lock();
        Ok(devices.iter().map(|d| g.leases.contains_key(d)).collect())
    }

    async fn lease(&self, device: &str) -> StoreResult<Option<Lease>> {
        Ok(self.lock().leases.get(device).map(|(l, _)| l.clone()))
    }

    async fn try_lock(&self, name: &str, owner: &str, ttl_ms: u64) -> StoreResult<bool> {
        let now = now_ms();
        let mut g = self.lock();
        let key = format!("lock:{name}");
        if g.get(&key, now).is_some() {
            return Ok(false);
        }
        g.set(key, owner.into(), ttl_ms.max(1) as i64, now);
        Ok(true)
    }

    async fn schedule_offline_notice(&self, notice: &OfflineNotice) -> StoreResult<()> {
        self.lock()
            .notices
            .insert(notice.device_id.clone(), notice.clone());
        Ok(())
    }

    async fn claim_due_notices(&self, limit: usize) -> StoreResult<Vec<OfflineNotice>> {
        let now = now_ms();
        let mut g = self.lock();
        let due: Vec<String> = g
            .notices
            .values()
            .filter(|n| n.scheduled_for <= now)
            .map(|n| n.device_id.clone())
            .take(limit)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            if let Some(n) = g.notices.remove(&id) {
                g.fired.insert(id);
                out.push(n);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn status(&self, device: &str) -> StoreResult<Option<String>> {
        Ok(self.lock().get(&status_key(device), now_ms()))
    }

    async fn statuses(&self, devices: &[String]) -> StoreResult<Vec<Option<String>>> {
        let now = now_ms();
        let mut g = self.lock();
        Ok(devices.iter().map(|d| g.get(&status_key(d), now)).collect())
    }

    async fn enqueue_command(
        &self,
        device: &str,
        command_json: &str,
        max: usize,
        ttl_ms: u64,
    ) -> StoreResult<()> {
        let now = now_ms();
        let mut g = self.lock();
        let entry = g
            .commands
            .entry(commands_key(device))
            .or_insert_with(|| (VecDeque::new(), 0));
        if entry.1 <= now {
            entry.0.clear();
        }
        entry.0.push_back(command_json.into());
        while entry.0.len() > max {
            entry.0.pop_front();
        }
        entry.1 = now + ttl_ms as i64;
        Ok(())
    }

    async fn put_screenshot_request(
        &self,
        device: &str,
        request_id: &str,
        ttl_ms: u64,
    ) -> StoreResult<()> {
        let now = now_ms();
        self.lock().set(
            screenshot_key(device, request_id),
            "1".into(),
            ttl_ms as i64,
            now,
        );
        Ok(())
    }

    async fn take_screenshot_request(&self, device: &str, request_id: &str) -> StoreResult<bool> {
        let now = now_ms();
        let mut g = self.lock();
        let key = screenshot_key(device, request_id);
        let present = g.get(&key, now).is_some();
        g.kv.remove(&key);
        Ok(present)
    }

    async fn cached_playlist(&self, device: &str) -> StoreResult<Option<String>> {
        Ok(self.lock().get(&playlist_key(device), now_ms()))
    }

    async fn cache_playlist(&self, device: &str, json: &str) -> StoreResult<()> {
        let now = now_ms();
        self.lock().set(
            playlist_key(device),
            json.into(),
            PLAYLIST_CACHE_TTL_S as i64 * 1000,
            now,
        );
        Ok(())
    }

    async fn invalidate_playlist(&self, device: &str) -> StoreResult<()> {
        self.lock().kv.remove(&playlist_key(device));
        Ok(())
    }

    async fn count_impression(&self, device: &str, date: &str) -> StoreResult<()> {
        let now = now_ms();
        let mut g = self.lock();
        let e = g
            .counters
            .entry(super::keys::SINGLE.impressions(device, date))
            .or_insert((0, 0));
        e.0 += 1;
        e.1 = now + STATS_TTL_S as i64 * 1000;
        Ok(())
    }

    async fn push_content_error(&self, device: &str, entry_json: &str) -> StoreResult<()> {
        let now = now_ms();
        let mut g = self.lock();
        let key = super::keys::SINGLE.errors(device);
        let mut list: Vec<serde_json::Value> = g
            .get(&key, now)
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        list.push(serde_json::from_str(entry_json).unwrap_or(serde_json::Value::Null));
        let excess = list.len().saturating_sub(ERRORS_MAX);
        list.drain(..excess);
        let json = serde_json::Value::Array(list).to_string();
        g.set(key, json, ERRORS_TTL_S as i64 * 1000, now);
        Ok(())
    }

    async fn content_errors(&self, device: &str) -> StoreResult<Option<String>> {
        Ok(self
            .lock()
            .get(&super::keys::SINGLE.errors(device), now_ms()))
    }

    async fn is_revoked(&self, _jti: &str) -> StoreResult<bool> {
        // Revocations are written by the Vizora middleware into Redis; without Redis there are none.
        Ok(false)
    }

    async fn device_heartbeat(&self, hb: &HeartbeatWrite<'_>) -> StoreResult<HeartbeatFound> {
        let now = now_ms();
        let d = hb.device;
        let mut g = self.lock();
        let none = |outcome| HeartbeatFound {
            outcome,
            pending_playlist: None,
            refresh_cooldown: false,
        };
        // Same rule as device_heartbeat.lua: only a strictly newer epoch supersedes the socket.
        let newer = g.epochs.get(d).is_some_and(|e| *e > hb.epoch)
            || g.leases.get(d).is_some_and(|(l, _)| l.epoch() > hb.epoch);
        if newer {
            return Ok(none(HeartbeatOutcome::Superseded));
        }
        if let Some(bound) = hb.bound
            && g.get(&token_marker_key(d), now).is_some_and(|m| m != bound)
        {
            return Ok(none(HeartbeatOutcome::Stale));
        }
        g.set(
            status_key(d),
            hb.status_json.into(),
            STATUS_ONLINE_TTL_S as i64 * 1000,
            now,
        );
        g.set(
            super::keys::SINGLE.latest(d),
            hb.latest_json.into(),
            LATEST_TTL_S as i64 * 1000,
            now,
        );
        if hb.delivery_ack {
            g.set(
                delivery_ack_key(d),
                hb.sid.into(),
                DELIVERY_ACK_TTL_S as i64 * 1000,
                now,
            );
        }
        let takes = g.owns_queue(d, hb.epoch);
        let cmds = if takes {
            g.take_commands(d, now)
        } else {
            Vec::new()
        };
        let pending_playlist = if takes && hb.take_pending_playlist {
            g.take_pending_playlist(d, now)
        } else {
            None
        };
        let refresh_cooldown = hb.refresh_due && g.get(&token_cooldown_key(d), now).is_some();
        Ok(HeartbeatFound {
            outcome: HeartbeatOutcome::Live(cmds),
            pending_playlist,
            refresh_cooldown,
        })
    }

    async fn take_queued(&self, t: &TakeQueued<'_>) -> StoreResult<Queued> {
        let now = now_ms();
        let mut g = self.lock();
        if !g.owns_queue(t.device, t.epoch) {
            return Ok(Queued::default());
        }
        let commands = g.take_commands(t.device, now);
        let playlist = if t.playlist {
            g.take_pending_playlist(t.device, now)
        } else {
            None
        };
        if let Some(sid) = t.ack_sid {
            g.set(
                delivery_ack_key(t.device),
                sid.into(),
                DELIVERY_ACK_TTL_S as i64 * 1000,
                now,
            );
        }
        Ok(Queued { commands, playlist })
    }

    async fn lease_and_ack(&self, device: &str) -> StoreResult<(Option<Lease>, bool)> {
        let now = now_ms();
        let mut g = self.lock();
        let lease = g.leases.get(device).map(|(l, _)| l.clone());
        let ack = g.get(&delivery_ack_key(device), now);
        let acked = matches!((&lease, &ack), (Some(l), Some(a)) if &l.sid == a);
        Ok((lease, acked))
    }

    async fn set_pending_playlist(&self, device: &str, json: &str, ttl_s: u64) -> StoreResult<()> {
        let now = now_ms();
        self.lock().set(
            pending_playlist_key(device),
            json.into(),
            ttl_s.max(1) as i64 * 1000,
            now,
        );
        Ok(())
    }

    async fn claim_token_refresh(
        &self,
        device: &str,
        grace_json: &str,
        grace_ttl_s: u64,
        cooldown_s: u64,
    ) -> StoreResult<bool> {
        let now = now_ms();
        let mut g = self.lock();
        let cooldown = token_cooldown_key(device);
        if g.get(&cooldown, now).is_some() {
            return Ok(false);
        }
        g.set(cooldown, "1".into(), cooldown_s.max(1) as i64 * 1000, now);
        g.set(
            token_grace_key(device),
            grace_json.into(),
            grace_ttl_s.max(1) as i64 * 1000,
            now,
        );
        Ok(true)
    }

    async fn token_grace(&self, device: &str) -> StoreResult<Option<String>> {
        Ok(self.lock().get(&token_grace_key(device), now_ms()))
    }

    async fn token_marker(&self, device: &str) -> StoreResult<Option<String>> {
        Ok(self.lock().get(&token_marker_key(device), now_ms()))
    }

    async fn drop_token_grace(
        &self,
        device: &str,
        grace_json: &str,
        release_cooldown: bool,
    ) -> StoreResult<()> {
        let now = now_ms();
        let mut g = self.lock();
        let key = token_grace_key(device);
        if g.get(&key, now).as_deref() == Some(grace_json) {
            g.kv.remove(&key);
        }
        if release_cooldown {
            g.kv.remove(&token_cooldown_key(device));
        }
        Ok(())
    }

    async fn set_token_marker(
        &self,
        device: &str,
        value: Option<&str>,
        ttl_s: u64,
        only_if_present: bool,
    ) -> StoreResult<()> {
        let now = now_ms();
        let mut g = self.lock();
        let key = token_marker_key(device);
        match value {
            None => {
                g.kv.remove(&key);
            }
            Some(v) if only_if_present => {
                if g.get(&key, now).is_some()
                    && let Some(e) = g.kv.get_mut(&key)
                {
                    e.0 = v.into();
                }
            }
            Some(v) => g.set(key, v.into(), ttl_s.max(1) as i64 * 1000, now),
        }
        Ok(())
    }

    async fn session_marks(
        &self,
        _jti: Option<&str>,
        users: &[String],
    ) -> StoreResult<(bool, Vec<SessionMarks>)> {
        // Session markers are written by the Vizora middleware into Redis; without Redis there
        // are none.
        Ok((false, vec![SessionMarks::default(); users.len()]))
    }

    async fn suspended_orgs(&self) -> StoreResult<Vec<String>> {
        Ok(self.lock().suspended.iter().cloned().collect())
    }

    async fn set_suspended(&self, org: &str, suspended: bool) -> StoreResult<()> {
        let mut g = self.lock();
        if suspended {
            g.suspended.insert(org.into());
        } else {
            g.suspended.remove(org);
        }
        Ok(())
    }

    async fn exchange_load(
        &self,
        replica: &str,
        record: &str,
    ) -> StoreResult<Vec<(String, String)>> {
        let mut g = self.lock();
        g.loads.insert(replica.into(), record.into());
        Ok(g.loads
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn forget_loads(&self, replicas: &[String]) -> StoreResult<()> {
        let mut g = self.lock();
        for r in replicas {
            g.loads.remove(r);
        }
        Ok(())
    }
}
