//! This replica's live device sockets: what the lease refresh, the bulk `lastHeartbeat` flush and
//! the drain walk over. Small per socket: two ids, the epoch and a timestamp.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::store::LiveLease;

#[derive(Clone, Debug)]
pub struct LiveEntry {
    pub device_id: String,
    pub org: String,
    pub epoch: u64,
    pub since: Instant,
    /// Set once the Socket.IO CONNECT was delivered; entries that never connect are reaped.
    pub connected: bool,
    /// Set when a close path (the drain, rebalancing) handed the lease over with a longer
    /// deadline: the refresh tick leaves it alone, or it would cut that deadline back.
    pub handed_over: bool,
}

impl LiveEntry {
    fn lease(&self, sid: &str) -> LiveLease {
        LiveLease {
            device_id: self.device_id.clone(),
            org: self.org.clone(),
            sid: sid.to_string(),
            epoch: self.epoch,
            pending: !self.connected,
        }
    }
}

#[derive(Default)]
pub struct LiveRegistry {
    by_sid: Mutex<HashMap<String, LiveEntry>>,
    /// Releases that failed (Redis unreachable), by device: (org, epoch). Retried by the
    /// refresh tick, so a device that left during an outage still goes offline.
    unreleased: Mutex<HashMap<String, (String, u64)>>,
}

/// At most this many failed releases are remembered; beyond it the sweep (when Redis kept its
/// state) is the only way those devices go offline.
const MAX_UNRELEASED: usize = 100_000;

impl LiveRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveEntry>> {
        self.by_sid.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn insert(&self, sid: &str, e: LiveEntry) {
        self.lock().insert(sid.to_string(), e);
    }
    pub fn mark_connected(&self, sid: &str) {
        if let Some(e) = self.lock().get_mut(sid) {
            e.connected = true;
        }
    }
    /// The epoch socket `sid` acquired, while it is live here.
    pub fn epoch(&self, sid: &str) -> Option<u64> {
        self.lock().get(sid).map(|e| e.epoch)
    }
    /// When socket `sid` acquired its lease here, while it is live here.
    pub fn since(&self, sid: &str) -> Option<Instant> {
        self.lock().get(sid).map(|e| e.since)
    }
    pub fn remove(&self, sid: &str) -> Option<LiveEntry> {
        self.lock().remove(sid)
    }
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn snapshot(&self) -> Vec<(String, LiveEntry)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    /// The leases the refresh tick keeps fresh: every live socket's but those handed over.
    pub fn leases(&self) -> Vec<LiveLease> {
        self.lock()
            .iter()
            .filter(|(_, e)| !e.handed_over)
            .map(|(sid, e)| e.lease(sid))
            .collect()
    }
    /// Marks the connected sockets among `sids` as handed over and answers their leases.
    pub fn hand_over(&self, sids: &[String]) -> Vec<LiveLease> {
        let mut m = self.lock();
        sids.iter()
            .filter_map(|sid| {
                let e = m.get_mut(sid).filter(|e| e.connected)?;
                e.handed_over = true;
                Some(e.lease(sid))
            })
            .collect()
    }
    /// Remembers a release that could not reach Redis. A newer epoch of the same device replaces
    /// an older one.
    pub fn remember_unreleased(&self, device: &str, org: &str, epoch: u64) -> bool {
        let mut m = self.unreleased.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_UNRELEASED && !m.contains_key(device) {
            return false;
        }
        let slot = m
            .entry(device.to_string())
            .or_insert((org.to_string(), epoch));
        if slot.1 <= epoch {
            *slot = (org.to_string(), epoch);
        }
        true
    }
    /// Takes every remembered release, to be retried (and remembered again if it fails again).
    pub fn take_unreleased(&self) -> Vec<(String, String, u64)> {
        let mut m = self.unreleased.lock().unwrap_or_else(|p| p.into_inner());
        m.drain().map(|(d, (o, e))| (d, o, e)).collect()
    }
    /// Live (device, epoch) pairs for the bulk flush, one per device.
    pub fn devices(&self) -> Vec<(String, u64)> {
        let mut m: HashMap<String, u64> = HashMap::new();
        for e in self.lock().values() {
            let slot = m.entry(e.device_id.clone()).or_insert(0);
            *slot = (*slot).max(e.epoch);
        }
        m.into_iter().collect()
    }
}
