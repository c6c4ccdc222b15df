//! Organisation- and user-wide signals of the original's latest release: dashboard sessions
//! expired by the middleware (`user_revoked:{sub}`, `pwd_changed:{sub}`), tenant suspension,
//! and notification broadcasts.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use serde_json::Value;

use super::{Gateway, room};
use crate::auth::UserPrincipal;
use crate::store::{SessionMarks, StoreError};
use crate::wire::iso_now;
use crate::wire::outgoing::{
    BackendNotification, DeviceStatus, DeviceStatusBatch, Outgoing, ServerEvent, SessionExpired,
    TenantResumed, TenantSuspended,
};

/// How many devices `device:status:batch` lists.
const STATUS_BATCH_LIMIT: u64 = 500;

/// Why a dashboard session is over, if it is.
pub fn expiry(marks: &SessionMarks, iat: Option<i64>) -> Option<&'static str> {
    if marks.revoked {
        return Some("revoked");
    }
    // Strict `<` as the original: a login right after the change keeps its session. A token
    // without `iat` cannot be judged and is kept.
    match (marks.pwd_changed, iat) {
        (Some(changed), Some(iat)) if iat < changed => Some("password_changed"),
        _ => None,
    }
}

/// One dashboard socket of this replica.
struct DashboardEntry {
    user: String,
    org: String,
    iat: Option<i64>,
}

/// This replica's dashboard sockets: sid → (user, organisation, token `iat`).
#[derive(Default)]
pub struct DashboardRegistry {
    by_sid: Mutex<HashMap<String, DashboardEntry>>,
}

impl DashboardRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DashboardEntry>> {
        self.by_sid.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn insert(&self, sid: &str, user: &str, org: &str, iat: Option<i64>) {
        self.lock().insert(
            sid.into(),
            DashboardEntry {
                user: user.into(),
                org: org.into(),
                iat,
            },
        );
    }
    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }
    fn snapshot(&self) -> Vec<(String, String, Option<i64>)> {
        self.lock()
            .iter()
            .map(|(sid, e)| (sid.clone(), e.user.clone(), e.iat))
            .collect()
    }
    /// The organisations with at least one dashboard on this replica.
    fn orgs(&self) -> HashSet<String> {
        self.lock().values().map(|e| e.org.clone()).collect()
    }
}

/// Organisations suspended through the internal API. Kept in Redis (`tenant:suspended`) so every
/// replica agrees; each replica re-reads the set every second, so a handshake checks it in
/// memory without a Redis round trip.
#[derive(Default)]
pub struct SuspendedOrgs {
    orgs: RwLock<HashSet<String>>,
}

impl SuspendedOrgs {
    pub fn contains(&self, org: &str) -> bool {
        self.orgs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(org)
    }
    fn replace(&self, all: HashSet<String>) {
        *self.orgs.write().unwrap_or_else(|p| p.into_inner()) = all;
    }
    fn set(&self, org: &str, suspended: bool) {
        let mut g = self.orgs.write().unwrap_or_else(|p| p.into_inner());
        if suspended {
            g.insert(org.into());
        } else {
            g.remove(org);
        }
    }
}

impl Gateway {
    /// The handshake's session check for a dashboard: the token's `jti` and the user's markers
    /// in one round trip. `Some(reason)` refuses the connection.
    pub async fn dashboard_session_refusal(
        &self,
        u: &UserPrincipal,
    ) -> Result<Option<&'static str>, StoreError> {
        let (jti_revoked, marks) = self
            .state
            .session_marks(u.jti.as_deref(), std::slice::from_ref(&u.user_id))
            .await?;
        if jti_revoked {
            return Ok(Some("token_revoked"));
        }
        Ok(marks.first().and_then(|m| expiry(m, u.iat)))
    }

    /// The periodic sweep: this replica's dashboard sockets whose user was revoked, or whose
    /// token predates a password change, get `session:expired {reason}` and are disconnected.
    /// One Redis round trip for all distinct users.
    pub async fn session_sweep_once(&self) {
        let sockets = self.dashboards.snapshot();
        if sockets.is_empty() {
            return;
        }
        let users: Vec<String> = sockets
            .iter()
            .map(|(_, u, _)| u.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let marks = match self.state.session_marks(None, &users).await {
            Ok((_, m)) => m,
            Err(e) => {
                self.metrics.store_error("redis", "session_sweep");
                tracing::debug!(error = %e, "Session sweep could not read the markers.");
                return;
            }
        };
        let by_user: HashMap<&str, &SessionMarks> =
            users.iter().map(String::as_str).zip(marks.iter()).collect();
        for (sid, user, iat) in sockets {
            let Some(reason) = by_user.get(user.as_str()).and_then(|m| expiry(m, iat)) else {
                continue;
            };
            tracing::info!(user = %user, reason, "Dashboard session expired; disconnecting.");
            self.metrics.event(SessionExpired::NAME, reason);
            self.dashboards.remove(&sid);
            self.emitter
                .emit(room::socket(&sid), Outgoing::of(&SessionExpired { reason }))
                .await;
            self.emitter.disconnect_room(room::socket(&sid)).await;
        }
    }

    /// `device:status:batch` for an organisation: `[{deviceId, status, lastSeen, timestamp}]`,
    /// the live status from presence (the database row may lag the asynchronous writer).
    pub async fn status_batch(&self, org: &str) -> DeviceStatusBatch {
        let rows = match self.db.org_devices(org, STATUS_BATCH_LIMIT).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Could not list the organisation's devices.");
                return DeviceStatusBatch::default();
            }
        };
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let online = self.is_online(&ids).await.ok();
        // The database row of a device that has just connected may not carry its `lastHeartbeat`
        // yet (the transition writer is asynchronous): the status key in Redis does.
        let stored: Vec<_> = rows.iter().map(|r| r.last_heartbeat).collect();
        let last_seen = self.last_seen(&ids, &stored).await;
        let ts = iso_now();
        let list: Vec<DeviceStatus> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let status = match online.as_ref().and_then(|o| o.get(i)) {
                    Some(true) => "online".to_string(),
                    Some(false) if r.status == "online" => "offline".to_string(),
                    _ => r.status.clone(),
                };
                DeviceStatus {
                    device_id: r.id.clone(),
                    status,
                    last_seen: last_seen.get(i).cloned().flatten(),
                    timestamp: ts.clone(),
                }
            })
            .collect();
        DeviceStatusBatch(list)
    }

    /// After this replica's adapter lost Redis and subscribed again: pub/sub kept nothing of what
    /// other replicas published meanwhile, so a `device:status` may have been missed. Every
    /// organisation with a dashboard here gets `device:status:batch` again, read after the
    /// resubscribe, so a transition shows either in that read or as a live event afterwards.
    ///
    /// A live event can still overtake the batch between its read and its emit (a release
    /// retried right as Redis returned), leaving the batch's older status on screen. So the
    /// statuses are read once more after the emit, and every device that changed in between gets
    /// a `device:status` with the newer one: anything published after that second read arrives
    /// after the batch anyway.
    pub async fn resync_dashboards(&self) {
        let orgs = self.dashboards.orgs();
        tracing::info!(
            organisations = orgs.len(),
            "Resending device:status:batch to this replica's dashboards after the adapter reconnected."
        );
        for org in orgs {
            let first = self.status_batch(&org).await;
            self.emitter
                .emit_local(room::dashboards(&org), Outgoing::of(&first))
                .await;
            let emitted_at = crate::store::now_ms();
            let second = self.status_batch(&org).await;
            for changed in changed_statuses(&first, &second, emitted_at) {
                self.emitter
                    .emit_local(room::dashboards(&org), Outgoing::of(changed))
                    .await;
            }
        }
    }

    /// Whether this replica last read `org` as suspended (checked in memory at handshakes).
    pub fn is_suspended(&self, org: &str) -> bool {
        self.suspended.contains(org)
    }

    /// A dashboard socket entered the namespace: the session sweep watches it from now on.
    pub fn dashboard_connected(&self, sid: &str, u: &UserPrincipal) {
        self.dashboards
            .insert(sid, &u.user_id, &u.organization_id, u.iat);
    }

    /// A dashboard socket left (or left before its connect handler ran).
    pub fn dashboard_disconnected(&self, sid: &str) {
        self.dashboards.remove(sid);
    }

    /// Re-reads the suspended organisations (one round trip per replica per period).
    pub async fn suspended_refresh_once(&self) {
        match self.state.suspended_orgs().await {
            Ok(all) => self.suspended.replace(all.into_iter().collect()),
            Err(e) => {
                self.metrics.store_error("redis", "suspended_orgs");
                tracing::debug!(error = %e, "Could not read suspended organisations.");
            }
        }
    }

    /// `POST /api/internal/tenant-entitlement`: records the state for every replica and tells
    /// the organisation's devices and dashboards.
    pub async fn set_tenant_entitlement(
        &self,
        org: &str,
        suspended: bool,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        self.state.set_suspended(org, suspended).await?;
        self.suspended.set(org, suspended);
        let event = if suspended {
            Outgoing::of(&TenantSuspended { reason })
        } else {
            Outgoing::of(&TenantResumed { reason })
        };
        self.emitter.emit(room::org(org), event).await;
        Ok(())
    }

    /// `POST /api/notifications/broadcast`: `notification:new` to the organisation's dashboards,
    /// or only to one user's dashboards when the notification names a `userId`.
    pub async fn broadcast_notification(&self, org: &str, notification: Value) {
        let user = notification
            .get("userId")
            .and_then(Value::as_str)
            .map(str::to_string);
        let target = match user {
            Some(u) => room::user(&u),
            None => room::dashboards(org),
        };
        let event = BackendNotification::new(notification, iso_now());
        self.emitter.emit(target, Outgoing::of(&event)).await;
        self.metrics.notification("broadcast");
    }
}

/// The entries of batch `after` whose status differs from the same device's in `before`.
fn changed_statuses<'a>(
    before: &DeviceStatusBatch,
    after: &'a DeviceStatusBatch,
    emitted_at_ms: i64,
) -> Vec<&'a DeviceStatus> {
    let old: HashMap<&str, &str> = before
        .0
        .iter()
        .map(|d| (d.device_id.as_str(), d.status.as_str()))
        .collect();
    after
        .0
        .iter()
        .filter(|d| old.get(d.device_id.as_str()) != Some(&d.status.as_str()))
        // A change stamped after the batch was handed to the sockets has its live event queued
        // behind the batch: re-sending it would only repeat that event.
        .filter(|d| !seen_after(d.last_seen.as_deref(), emitted_at_ms))
        .collect()
}

/// Whether an ISO `lastSeen` is later than `ms` (unknown or unreadable: no).
fn seen_after(last_seen: Option<&str>, ms: i64) -> bool {
    last_seen
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|t| t.timestamp_millis() > ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_reasons() {
        let m = |revoked, pwd| SessionMarks {
            revoked,
            pwd_changed: pwd,
        };
        assert_eq!(expiry(&m(true, None), Some(10)), Some("revoked"));
        assert_eq!(
            expiry(&m(false, Some(100)), Some(99)),
            Some("password_changed")
        );
        assert_eq!(expiry(&m(false, Some(100)), Some(100)), None);
        assert_eq!(expiry(&m(false, Some(100)), None), None);
        assert_eq!(expiry(&m(false, None), Some(1)), None);
    }

    #[test]
    fn only_devices_whose_status_changed_between_two_batches_are_resent() {
        let batch = |l: &[(&str, &str)]| {
            DeviceStatusBatch(
                l.iter()
                    .map(|(id, st)| DeviceStatus {
                        device_id: id.to_string(),
                        status: st.to_string(),
                        last_seen: None,
                        timestamp: String::new(),
                    })
                    .collect(),
            )
        };
        let before = batch(&[("a", "online"), ("b", "online"), ("c", "offline")]);
        let after = batch(&[
            ("a", "online"),
            ("b", "offline"),
            ("c", "offline"),
            ("d", "online"),
        ]);
        let ids: Vec<_> = changed_statuses(&before, &after, 0)
            .iter()
            .map(|d| d.device_id.as_str())
            .collect();
        assert_eq!(ids, ["b", "d"]);
    }

    #[test]
    fn a_change_stamped_after_the_batch_went_out_is_not_resent() {
        let entry = |id: &str, st: &str, seen: &str| DeviceStatus {
            device_id: id.into(),
            status: st.into(),
            last_seen: Some(seen.into()),
            timestamp: String::new(),
        };
        let before = DeviceStatusBatch(vec![
            entry("early", "online", "2026-11-29T10:00:00.000Z"),
            entry("late", "online", "2026-11-29T10:00:00.000Z"),
        ]);
        let after = DeviceStatusBatch(vec![
            entry("early", "offline", "2026-11-29T10:00:01.000Z"),
            entry("late", "offline", "2026-11-29T10:00:03.000Z"),
        ]);
        let emitted = chrono::DateTime::parse_from_rfc3339("2026-11-29T10:00:02.000Z")
            .map(|t| t.timestamp_millis())
            .unwrap_or_default();
        let ids: Vec<_> = changed_statuses(&before, &after, emitted)
            .iter()
            .map(|d| d.device_id.as_str())
            .collect();
        assert_eq!(ids, ["early"]);
    }
}
