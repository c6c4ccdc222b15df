//! The database check behind device handshakes, with a short-lived per-replica cache so that
//! known screens can still reconnect while PostgreSQL is slow or briefly unreachable (a
//! reconnect storm must not become a database storm either).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Gateway;
use crate::auth::{AuthError, Principal};
use crate::db::{DbError, DeviceAuth};

/// A fresh answer is reused for this long without asking the database.
const FRESH: Duration = Duration::from_secs(30);
/// A stale answer is still used when the database fails, for at most this long.
const STALE_FALLBACK: Duration = Duration::from_secs(600);
/// A database check slower than this counts as a failure.
const DB_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on cached devices per replica.
const MAX_ENTRIES: usize = 200_000;

#[derive(Default)]
pub struct DeviceAuthCache {
    map: Mutex<HashMap<String, (Option<DeviceAuth>, Instant)>>,
}

impl DeviceAuthCache {
    fn get(&self, id: &str, max_age: Duration) -> Option<Option<DeviceAuth>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(v, _)| v.clone())
    }

    /// Drops a device's entry (after a rotation or revocation this replica performed).
    pub fn forget(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    fn put(&self, id: &str, v: Option<DeviceAuth>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (_, at)| at.elapsed() <= FRESH);
        }
        map.insert(id.to_string(), (v, Instant::now()));
    }
}

impl Gateway {
    /// `devices` row facts for a handshake: cached briefly, falling back to an older answer when
    /// the database fails. `Err` only when there is no answer at all.
    pub async fn device_auth(&self, id: &str) -> Result<Option<DeviceAuth>, DbError> {
        if let Some(v) = self.auth_cache.get(id, FRESH) {
            return Ok(v);
        }
        self.device_auth_fresh(id).await
    }

    /// The row read from the database now (the cache is refreshed with it), falling back to
    /// an older answer only when the database fails.
    pub async fn device_auth_fresh(&self, id: &str) -> Result<Option<DeviceAuth>, DbError> {
        let fresh = match tokio::time::timeout(DB_TIMEOUT, self.db.device_auth(id)).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout("device lookup")),
        };
        match fresh {
            Ok(v) => {
                // Unknown devices are not cached: a screen paired a moment ago must get in.
                if v.is_some() {
                    self.auth_cache.put(id, v.clone());
                }
                Ok(v)
            }
            Err(e) => {
                self.metrics.store_error("db", "device_auth");
                self.auth_cache.get(id, STALE_FALLBACK).ok_or(e)
            }
        }
    }

    /// The handshake's token, verified (the `type` claim picks the secret).
    pub fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        self.verifier.verify(token)
    }

    /// Holds a device's connect until its per-device bucket allows it, within the connect
    /// timeout; past that the handshake is deferred (transient, the client retries).
    pub async fn pace_device_connect(&self, device: &str) -> Result<(), AuthError> {
        let budget = self
            .cfg
            .connect_timeout
            .saturating_sub(Duration::from_millis(500));
        let start = Instant::now();
        loop {
            let wait = self.device_limiter.wait_time(device);
            if wait.is_zero() {
                return Ok(());
            }
            if start.elapsed() + wait > budget {
                self.metrics.refusal("device_rate_limited");
                return Err(AuthError::Unavailable(
                    "per-device connect rate exceeded".into(),
                ));
            }
            tokio::time::sleep(wait).await;
        }
    }
}
