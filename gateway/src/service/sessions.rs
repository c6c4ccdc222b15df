//! Organisation- and user-wide signals of the original's latest release: dashboard sessions
//! expired by the middleware (`user_revoked:{sub}`, `pwd_changed:{sub}`), tenant suspension,
//! and notification broadcasts.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use serde_json::{Value, json};

use super::{Gateway, room};
use crate::auth::UserPrincipal;
use crate::store::{SessionMarks, StoreError};
use crate::wire::{events::names, iso_now};

pub const SESSION_EXPIRED: &str = "session:expired";
pub const TENANT_SUSPENDED: &str = "tenant:suspended";
pub const TENANT_RESUMED: &str = "tenant:resumed";

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

/// This replica's dashboard sockets: sid → (user, token `iat`).
#[derive(Default)]
pub struct DashboardRegistry {
    by_sid: Mutex<HashMap<String, (String, Option<i64>)>>,
}

impl DashboardRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Option<i64>)>> {
        self.by_sid.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn insert(&self, sid: &str, user: &str, iat: Option<i64>) {
        self.lock().insert(sid.into(), (user.into(), iat));
    }
    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }
    fn snapshot(&self) -> Vec<(String, String, Option<i64>)> {
        self.lock()
            .iter()
            .map(|(sid, (u, iat))| (sid.clone(), u.clone(), *iat))
            .collect()
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
            self.metrics.event(SESSION_EXPIRED, reason);
            self.dashboards.remove(&sid);
            self.emitter
                .emit(
                    room::socket(&sid),
                    SESSION_EXPIRED,
                    json!({"reason": reason}),
                )
                .await;
            self.emitter.disconnect_room(room::socket(&sid)).await;
        }
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
            TENANT_SUSPENDED
        } else {
            TENANT_RESUMED
        };
        self.emitter
            .emit(room::org(org), event, json!({"reason": reason}))
            .await;
        Ok(())
    }

    /// `POST /api/notifications/broadcast`: `notification:new` to the organisation's dashboards,
    /// or only to one user's dashboards when the notification names a `userId`.
    pub async fn broadcast_notification(&self, org: &str, mut notification: Value) {
        let user = notification
            .get("userId")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(m) = notification.as_object_mut() {
            m.entry("timestamp").or_insert_with(|| json!(iso_now()));
        }
        let target = match user {
            Some(u) => room::user(&u),
            None => room::dashboards(org),
        };
        self.emitter
            .emit(target, names::NOTIFICATION_NEW, notification)
            .await;
        self.metrics.notification("broadcast");
    }
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
}
