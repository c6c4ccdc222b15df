//! Device credentials (the original's latest release, contract §10): the token a device presents
//! is bound to `devices."jwtToken"` at the handshake, re-issued when it nears expiry, and a
//! socket whose binding goes stale (revocation, re-pair) is refused at its next handshake and
//! ended by its next heartbeat.
//!
//! Why neither costs a database query: the original re-reads the row on every device message.
//! Here the handshake (one GET, after a match on the cached row) and the heartbeat script compare
//! the binding with `device:token:current:{id}`, a marker only the revocation route and the
//! rotation write (from a fresh row read). The marker lives a little longer than any replica's
//! handshake cache ([`MARKER_TTL_S`]), which is exactly the window in which a replica could
//! still hold the revoked binding in its cached row; after that every handshake sees the
//! database again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Gateway, room};
use crate::auth::{AuthError, DevicePrincipal, is_token_hash, mint, token_hash};
use crate::db::DeviceAuth;
use crate::wire::outgoing::{DeviceRevoked, Outgoing, ServerEvent, TokenRefresh};

/// A token is re-issued when at most this much validity remains (the original's 14 days).
pub const REFRESH_WITHIN_S: i64 = 14 * 86_400;
/// Lifetime of a re-issued token (90 days, like the middleware's).
pub const TOKEN_TTL_S: i64 = 90 * 86_400;
/// At most one new token per device per cooldown, cluster-wide.
pub const REFRESH_COOLDOWN_S: u64 = 3_600;
/// The grace record lives as long as the old token, within these bounds (the original's).
const GRACE_MIN_TTL_S: i64 = 60;
const GRACE_MAX_TTL_S: i64 = TOKEN_TTL_S;
/// Lifetime of `device:token:current:{id}`: the handshake cache's stale fallback (600 s) plus a
/// margin, so every replica has re-read the row before the marker goes.
pub const MARKER_TTL_S: u64 = 660;
/// Marker value for a device whose row is gone or disabled: no socket is bound to it.
const REVOKED: &str = "revoked";

/// `device:token:grace:{id}`: `prev` (the hash the device still holds) may stand in for `next`
/// while the database still holds `next`.
#[derive(Serialize, Deserialize)]
struct Grace {
    prev: String,
    next: String,
}

/// What a device socket is bound to, and what it advertised.
pub struct DeviceSession {
    /// The token's `exp` (epoch seconds).
    pub exp: Option<i64>,
    /// The token's `iat` (epoch seconds).
    pub iat: Option<i64>,
    /// SHA-256 of the token the device presented (it holds it).
    pub presented: String,
    /// (exact `jwtToken` value the rotation must find, hash the stale check compares; `""`
    /// for an unbound row).
    binding: Mutex<(Option<String>, String)>,
    /// Sent any `auth.capabilities`: queued commands travel as `command` events.
    pub capabilities: bool,
    /// Advertised `deliveryAck`: `playlist:update` and `command` are acknowledged.
    pub delivery_ack: bool,
    /// A token was issued on this connection.
    refreshed: AtomicBool,
}

impl DeviceSession {
    pub fn new(d: &DevicePrincipal, b: Binding, capabilities: bool, delivery_ack: bool) -> Self {
        DeviceSession {
            exp: d.exp,
            iat: d.iat,
            presented: b.presented,
            binding: Mutex::new((b.stored, b.bound)),
            capabilities,
            delivery_ack,
            refreshed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<String>, String)> {
        self.binding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hash the stale check compares with the marker.
    pub fn bound(&self) -> String {
        self.lock().1.clone()
    }

    /// Whether this socket's token is due to be re-issued: a pairing token (issued for longer
    /// than the refresh window) within [`REFRESH_WITHIN_S`] of expiry, not yet refreshed on this
    /// connection. Arithmetic only, so every heartbeat can ask.
    pub fn refresh_due(&self) -> bool {
        self.validity_left_if_due().is_some()
    }

    /// Seconds of validity left, when a refresh is due.
    fn validity_left_if_due(&self) -> Option<i64> {
        let (exp, iat) = (self.exp?, self.iat?);
        let remaining = exp - chrono::Utc::now().timestamp();
        let due = remaining > 0
            && remaining <= REFRESH_WITHIN_S
            && exp - iat > REFRESH_WITHIN_S
            && !self.refreshed.load(Ordering::Relaxed);
        due.then_some(remaining)
    }
}

/// A handshake's accepted binding.
pub struct Binding {
    pub stored: Option<String>,
    pub bound: String,
    pub presented: String,
}

/// `auth.capabilities`: (any sent, `deliveryAck` among them). The shipped players send
/// `{deliveryAck:true}`; an array containing `"deliveryAck"` is accepted too.
pub fn capabilities(auth: Option<&serde_json::Value>) -> (bool, bool) {
    match auth.and_then(|a| a.get("capabilities")) {
        None | Some(serde_json::Value::Null) => (false, false),
        Some(serde_json::Value::Array(a)) => (true, a.iter().any(|c| c == "deliveryAck")),
        Some(serde_json::Value::Object(o)) => (
            true,
            o.get("deliveryAck") == Some(&serde_json::Value::Bool(true)),
        ),
        Some(_) => (true, false),
    }
}

/// Whether the row's `jwtToken` admits `token` by itself: NULL/empty and raw-token rows (older
/// middleware) are accepted, a hash must be the token's.
fn matches_row(stored: Option<&str>, token: &str, presented: &str) -> Option<Binding> {
    let binding = |bound: &str| Binding {
        stored: stored.map(str::to_string),
        bound: bound.to_string(),
        presented: presented.to_string(),
    };
    match stored {
        None | Some("") => Some(binding("")),
        Some(s) if s == token => Some(binding(presented)),
        Some(s) if is_token_hash(s) && s.eq_ignore_ascii_case(presented) => {
            Some(binding(presented))
        }
        _ => None,
    }
}

/// What the marker says about a row read from the database.
fn marker_for(row: Option<&DeviceAuth>) -> Option<String> {
    match row {
        None => Some(REVOKED.into()),
        Some(r) if r.disabled => Some(REVOKED.into()),
        Some(r) => match r.jwt_token.as_deref() {
            None | Some("") => None,
            Some(h) if is_token_hash(h) => Some(h.to_ascii_lowercase()),
            Some(raw) => Some(token_hash(raw)),
        },
    }
}

impl Gateway {
    /// The handshake's binding check. The row may come from the 30-s cache; a token the cached
    /// row does not admit is never refused on the cache's word: the row is re-read (a rotation
    /// or re-pair on another replica may be newer than the cache), then the grace record of an
    /// in-flight rotation is consulted. A match on a cached row stands unless the marker (written
    /// from a fresh read by the revocation route or a rotation, on any replica) names another
    /// binding: then the row is re-read too, so a replica never admits a token revoked
    /// elsewhere while its cache is warm. One GET per device handshake, no database query.
    pub async fn bind_device_token(
        &self,
        d: &DevicePrincipal,
        token: &str,
        cached: &DeviceAuth,
    ) -> Result<Binding, AuthError> {
        let presented = token_hash(token);
        if let Some(b) = matches_row(cached.jwt_token.as_deref(), token, &presented) {
            let marker = self.state.token_marker(&d.device_id).await?;
            if marker.is_none_or(|m| m == b.bound) {
                return Ok(b);
            }
        }
        let row = self
            .device_auth_fresh(&d.device_id)
            .await?
            .ok_or(AuthError::DeviceNotFound)?;
        if row.organization_id != d.organization_id {
            return Err(AuthError::Invalid);
        }
        if row.disabled {
            return Err(AuthError::DeviceDisabled);
        }
        if let Some(b) = matches_row(row.jwt_token.as_deref(), token, &presented) {
            return Ok(b);
        }
        let grace = self
            .state
            .token_grace(&d.device_id)
            .await?
            .and_then(|g| serde_json::from_str::<Grace>(&g).ok());
        let stored = row.jwt_token.unwrap_or_default();
        match grace {
            Some(g)
                if g.prev.eq_ignore_ascii_case(&presented)
                    && g.next.eq_ignore_ascii_case(&stored) =>
            {
                tracing::info!(device = %d.device_id, "Device authenticated with its previous token (rotation grace).");
                Ok(Binding {
                    bound: stored.to_ascii_lowercase(),
                    stored: Some(stored),
                    presented,
                })
            }
            _ => Err(AuthError::DeviceRevoked),
        }
    }

    /// Issues a fresh 90-day token when the socket's token is within 14 days of expiry: the
    /// cooldown claim and grace record in one Redis round trip, then the guarded rotation of
    /// `devices."jwtToken"`, then `token:refresh {token}` to the socket. A no-op (arithmetic
    /// only) for every device not near expiry; called on connect and on each heartbeat.
    ///
    /// Only tokens issued for longer than the refresh window are refreshed (the middleware's
    /// 90-day pairing tokens): a deliberately short-lived token (`vizora-gateway token device
    /// --ttl 1h`, load tests) is never turned into a 90-day one, nor rotates the row's binding.
    pub async fn maybe_refresh_token(&self, d: &DevicePrincipal, s: &DeviceSession, sid: &str) {
        let Some(remaining) = s.validity_left_if_due() else {
            return;
        };
        let id = &d.device_id;
        let token = match mint::refreshed_device_token(
            &self.cfg.device_jwt_secret,
            id,
            &d.device_identifier,
            &d.organization_id,
            TOKEN_TTL_S,
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(device = %id, error = %e, "Could not mint a refreshed device token.");
                return;
            }
        };
        let next = token_hash(&token);
        let grace = json!({"prev": s.presented, "next": next}).to_string();
        let grace_ttl = remaining.clamp(GRACE_MIN_TTL_S, GRACE_MAX_TTL_S) as u64;
        match self
            .state
            .claim_token_refresh(id, &grace, grace_ttl, REFRESH_COOLDOWN_S)
            .await
        {
            Ok(true) => {}
            // Another connection (any replica) is rotating, or did within the hour; a failed
            // claim is retried on the next heartbeat.
            Ok(false) => {
                self.metrics.event(TokenRefresh::NAME, "cooldown");
                return;
            }
            Err(e) => {
                self.metrics.event(TokenRefresh::NAME, "failed");
                self.metrics.store_error("redis", "token_refresh");
                tracing::debug!(device = %id, error = %e, "Token refresh claim failed.");
                return;
            }
        }
        // Fence: a socket superseded meanwhile must not rotate the row to a token it can no
        // longer deliver; it releases the cooldown for the socket that replaced it.
        if let Ok(Some(l)) = self.presence.lease(id).await
            && l.sid != sid
        {
            let _ = self.state.drop_token_grace(id, &grace, true).await;
            self.metrics.event(TokenRefresh::NAME, "superseded");
            tracing::info!(device = %id, "Token refresh aborted: the socket was superseded.");
            return;
        }
        let expected = s.lock().0.clone();
        match self
            .db
            .rotate_device_token(id, &d.organization_id, expected.as_deref(), &next)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // The row changed under us (re-pair, revocation): that token must not be issued.
                let _ = self.state.drop_token_grace(id, &grace, false).await;
                self.metrics.event(TokenRefresh::NAME, "row_changed");
                tracing::warn!(device = %id, "Token refresh aborted: the stored token changed.");
                return;
            }
            Err(e) => {
                // The write may have landed: keep the grace record (inert if it did not).
                self.metrics.event(TokenRefresh::NAME, "failed");
                self.metrics.store_error("db", "token_rotate");
                tracing::warn!(device = %id, error = %e, "Token rotation failed; grace record kept.");
                return;
            }
        }
        *s.lock() = (Some(next.clone()), next.clone());
        s.refreshed.store(true, Ordering::Relaxed);
        self.auth_cache.forget(id);
        if let Err(e) = self
            .state
            .set_token_marker(id, Some(&next), MARKER_TTL_S, true)
            .await
        {
            tracing::warn!(device = %id, error = %e, "Could not update the token marker after a rotation.");
        }
        // The token belongs to the device: if a newer socket superseded this one meanwhile, it
        // gets it too (never the device room, which same-organisation dashboards may join).
        let mut targets = vec![room::socket(sid)];
        if let Ok(Some(l)) = self.presence.lease(id).await
            && l.sid != sid
        {
            targets.push(room::socket(&l.sid));
        }
        let event = Outgoing::of(&TokenRefresh { token });
        for t in targets {
            self.emitter.emit(t, event.clone()).await;
        }
        self.metrics.event(TokenRefresh::NAME, "ok");
        tracing::info!(device = %id, "Issued a refreshed device token.");
    }

    /// `POST /api/internal/device-revoked`: the device's sockets, wherever they are, get
    /// `device:revoked {reason}` and are disconnected; the marker is set from a fresh read of
    /// the row so a replica admitting the old token from its cache drops it on the next
    /// heartbeat. Returns whether the device held a live socket.
    pub async fn revoke_device(&self, device: &str, reason: &str) -> bool {
        self.auth_cache.forget(device);
        match self.db.device_auth(device).await {
            Ok(row) => {
                let marker = marker_for(row.as_ref());
                if let Err(e) = self
                    .state
                    .set_token_marker(device, marker.as_deref(), MARKER_TTL_S, false)
                    .await
                {
                    self.metrics.store_error("redis", "token_marker");
                    tracing::warn!(device, error = %e, "Could not write the revocation marker.");
                }
            }
            Err(e) => {
                tracing::warn!(device, error = %e, "Revocation: could not re-read the device row.")
            }
        }
        let online = self
            .presence
            .online(&[device.to_string()])
            .await
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(false);
        self.emitter
            .emit(
                room::device(device),
                Outgoing::of(&DeviceRevoked {
                    reason: reason.to_string(),
                }),
            )
            .await;
        self.emitter.disconnect_room(room::device(device)).await;
        online
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_that_admit_a_token_by_themselves() {
        let t = "header.claims.sig";
        let h = token_hash(t);
        assert_eq!(
            matches_row(None, t, &h).map(|b| b.bound),
            Some(String::new())
        );
        assert_eq!(
            matches_row(Some(""), t, &h).map(|b| b.bound),
            Some(String::new())
        );
        assert_eq!(
            matches_row(Some(t), t, &h).map(|b| b.bound),
            Some(h.clone())
        );
        let upper = h.to_ascii_uppercase();
        assert!(matches_row(Some(&upper), t, &h).is_some());
        assert!(matches_row(Some(&token_hash("other")), t, &h).is_none());
        assert!(matches_row(Some("other-raw-token"), t, &h).is_none());
    }

    #[test]
    fn capabilities_forms() {
        let caps = |v: serde_json::Value| capabilities(Some(&v));
        assert_eq!(caps(json!({"token": "x"})), (false, false));
        assert_eq!(
            caps(json!({"capabilities": {"deliveryAck": true}})),
            (true, true)
        );
        assert_eq!(caps(json!({"capabilities": ["deliveryAck"]})), (true, true));
        assert_eq!(
            caps(json!({"capabilities": {"deliveryAck": false}})),
            (true, false)
        );
        assert_eq!(caps(json!({"capabilities": []})), (true, false));
    }
}
