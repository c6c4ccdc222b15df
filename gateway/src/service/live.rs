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
}

#[derive(Default)]
pub struct LiveRegistry {
    by_sid: Mutex<HashMap<String, LiveEntry>>,
}

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
    pub fn leases(&self) -> Vec<LiveLease> {
        self.lock()
            .iter()
            .map(|(sid, e)| LiveLease {
                device_id: e.device_id.clone(),
                org: e.org.clone(),
                sid: sid.clone(),
                epoch: e.epoch,
                pending: !e.connected,
            })
            .collect()
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
