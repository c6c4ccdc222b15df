//! Handshake: the connect middleware authenticates and acquires the device lease before the
//! CONNECT is accepted; the connect handler joins rooms and sends the connect-time events.
//!
//! Final refusals (bad, expired or revoked credentials, unknown or disabled device) are a
//! `connect_error` `unauthorized: <code>`. Transient failures (Redis or database down, the
//! per-device pace exceeded) must leave socket.io-client retrying, which a `connect_error` would
//! not: the middleware then outwaits the connect timeout, so the server closes the transport and
//! the client reconnects with its own backoff.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Extension, SocketRef, State, TryData};

use super::SocketCtx;
use super::handler::send;
use crate::auth::{AuthError, Principal, token_from_cookie};
use crate::limits::{LiveSockets, MessageLimiter};
use crate::service::credentials::{self, DeviceSession};
use crate::service::{Gateway, room};
use crate::wire::iso_now;
use crate::wire::outgoing::PlaylistUpdate;

/// The `connect_error` message.
#[derive(Debug)]
pub struct ConnectRefusal(String);

/// The one rendering of a refused handshake: `unauthorized: <code>` for a final refusal, and
/// `unavailable` for a transient one (which the client never sees as such: the transport closes
/// first, see [`authenticate`]).
impl From<AuthError> for ConnectRefusal {
    fn from(e: AuthError) -> ConnectRefusal {
        match e {
            AuthError::Unavailable(_) => ConnectRefusal("unavailable".into()),
            e => ConnectRefusal(format!("unauthorized: {e}")),
        }
    }
}

impl std::fmt::Display for ConnectRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The connect middleware.
pub async fn authenticate<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    TryData(auth): TryData<Value>,
) -> Result<(), ConnectRefusal> {
    let started = tokio::time::Instant::now();
    let admitted = admit(&s, &gw, auth.ok()).await;
    warn_if_slow(&gw, started.elapsed(), admitted.is_ok());
    match admitted {
        Ok(ctx) => {
            let kind = if matches!(ctx.principal, Principal::Device(_)) {
                "device"
            } else {
                "dashboard"
            };
            gw.count_connection(kind, "accepted");
            s.extensions.insert(Arc::new(ctx));
            // Event handlers are registered here, not in the connect handler: socketioxide
            // spawns that handler after sending CONNECT, so a client that emits at once (the
            // latest players heartbeat on `connect`) could otherwise reach a socket without
            // handlers and have its event dropped.
            super::register(&s);
            s.on_disconnect(on_disconnect::<A>);
            Ok(())
        }
        Err(e) => {
            gw.count_connection("unknown", e.code());
            if let AuthError::Unavailable(why) = &e {
                tracing::warn!(reason = %why, "Handshake deferred: letting the transport close so the client retries.");
                tokio::time::sleep(gw.cfg().connect_timeout + Duration::from_secs(1)).await;
            }
            Err(e.into())
        }
    }
}

/// A handshake that took more than half the connect timeout is logged: past the whole timeout
/// socketioxide closes the transport before CONNECT and the client only sees a dropped
/// connection (it retries), so this line is the one trace such a handshake leaves.
fn warn_if_slow(gw: &Gateway, took: Duration, admitted: bool) {
    if took > gw.cfg().connect_timeout / 2 {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            admitted,
            "Slow handshake: the connect middleware ran for more than half the connect timeout."
        );
    }
}

async fn admit<A: Adapter>(
    s: &SocketRef<A>,
    gw: &Arc<Gateway>,
    auth: Option<Value>,
) -> Result<SocketCtx, AuthError> {
    let auth_token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    let cookie_token = || {
        s.req_parts()
            .headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .find_map(token_from_cookie)
            .map(str::to_string)
    };
    let (token, from_cookie) = match auth_token {
        Some(t) => (t.to_string(), false),
        None => (cookie_token().ok_or(AuthError::Invalid)?, true),
    };
    let principal = gw.verify_token(&token)?;
    let mut session = None;
    match &principal {
        Principal::Device(d) => {
            // Devices authenticate with `auth.token` only.
            if from_cookie {
                return Err(AuthError::Invalid);
            }
            let row = gw.device_auth(&d.device_id).await?;
            let row = row.ok_or(AuthError::DeviceNotFound)?;
            if row.organization_id != d.organization_id {
                return Err(AuthError::Invalid);
            }
            if row.disabled {
                return Err(AuthError::DeviceDisabled);
            }
            let binding = gw.bind_device_token(d, &token, &row).await?;
            if row.suspended || gw.is_suspended(&d.organization_id) {
                return Err(AuthError::TenantSuspended);
            }
            let (caps, ack) = credentials::capabilities(auth.as_ref());
            let s_ = DeviceSession::new(d, binding, caps, ack);
            gw.pace_device_connect(&d.device_id).await?;
            let sid = s.id.to_string();
            gw.acquire_device(&d.device_id, &d.organization_id, &sid)
                .await?;
            // Join before the socket enters the namespace, so no room emit can fall between the
            // socket becoming reachable and the connect handler running (socketioxide removes
            // these memberships if the handshake still fails).
            s.join(device_rooms(d, &sid, s_.delivery_ack));
            session = Some(Arc::new(s_));
        }
        Principal::User(u) => {
            // `revoked_token:{jti}`, `user_revoked:{sub}` and `pwd_changed:{sub}` in one round trip.
            if let Some(why) = gw.dashboard_session_refusal(u).await? {
                tracing::info!(user = %u.user_id, reason = why, "Dashboard session refused.");
                return Err(AuthError::Invalid);
            }
        }
    }
    let handshake = &s.req_parts().extensions;
    let kill = handshake
        .get::<axum::extract::ConnectInfo<crate::net::Peer>>()
        .map(|c| c.0.kill.clone());
    Ok(SocketCtx {
        principal,
        limiter: MessageLimiter::new(&gw.cfg().limits),
        kill,
        live: handshake.get::<Arc<LiveSockets>>().cloned(),
        device: session,
        phase: std::sync::atomic::AtomicU8::new(0),
        leaving: std::sync::atomic::AtomicBool::new(false),
    })
}

/// A device socket's rooms: its device, its organisation, and its own (for targeted disconnects).
/// Sockets that acknowledge deliveries also join `device-ack:{id}`.
fn device_rooms(d: &crate::auth::DevicePrincipal, sid: &str, acked: bool) -> Vec<String> {
    let mut rooms = vec![
        room::device(&d.device_id),
        room::org(&d.organization_id),
        room::socket(sid),
    ];
    if acked {
        rooms.push(room::device_acked(&d.device_id));
    }
    rooms
}

/// The connect handler (runs after CONNECT was sent).
pub async fn on_connect<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    if ctx.phase.compare_exchange(0, 1, SeqCst, SeqCst).is_err() {
        // Disconnected before this handler ran: its release already happened; draining queues
        // or confirming a lease now would only lose work.
        return;
    }
    let device = matches!(ctx.principal, Principal::Device(_));
    if let Some(live) = &ctx.live {
        live.opened();
    }
    gw.socket_opened(device);
    match &ctx.principal {
        Principal::Device(d) => {
            let sid = s.id.to_string();
            let session = ctx.device.clone();
            let acked = session.as_ref().is_some_and(|x| x.delivery_ack);
            s.join(device_rooms(d, &sid, acked));
            gw.confirm_device(&d.device_id, &sid).await;
            send_device_state(&s, &gw, &d.device_id, session.as_deref()).await;
            if let Some(x) = &session {
                gw.maybe_refresh_token(d, x, &sid).await;
            }
        }
        Principal::User(u) => {
            let sid = s.id.to_string();
            s.join(vec![
                room::org(&u.organization_id),
                room::dashboards(&u.organization_id),
                room::user(&u.user_id),
                room::socket(&sid),
            ]);
            gw.dashboard_connected(&sid, u);
            if ctx.phase.load(SeqCst) == 2 {
                gw.dashboard_disconnected(&sid);
            }
            send(&s, &gw.status_batch(&u.organization_id).await);
        }
    }
}

/// `config`, the playlist (if one is assigned) and queued commands, in that order. A client
/// that sent `auth.capabilities` gets the playlist and queued commands through the replay path
/// (acknowledged when it advertised `deliveryAck`), a playlist kept from a failed delivery
/// replacing the connect-time one.
async fn send_device_state<A: Adapter>(
    s: &SocketRef<A>,
    gw: &Arc<Gateway>,
    device: &str,
    session: Option<&DeviceSession>,
) {
    let state = match gw.connect_state(device).await {
        Ok((cfg, playlist)) => {
            send(s, &cfg);
            playlist
        }
        Err(e) => {
            tracing::warn!(device, error = %e, "Could not load the device's config and playlist.");
            None
        }
    };
    let connect_time = state.map(|playlist| PlaylistUpdate {
        playlist,
        timestamp: iso_now(),
    });
    match session.filter(|x| x.capabilities) {
        Some(x) => {
            let sid = s.id.to_string();
            let ack_sid = x.delivery_ack.then_some(sid.as_str());
            let (commands, pending) = gw.take_queued(device, &sid, true, ack_sid).await;
            gw.replay_to_socket(
                device,
                &sid,
                x.delivery_ack,
                pending.or(connect_time),
                commands,
            );
        }
        None => {
            if let Some(p) = &connect_time {
                send(s, p);
            }
            let (commands, _) = gw.take_queued(device, &s.id.to_string(), false, None).await;
            for cmd in commands {
                send(s, &cmd);
            }
        }
    }
}

async fn on_disconnect<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
) {
    // Counted only if the connect handler ran (and counted) first.
    let counted = ctx.phase.swap(2, std::sync::atomic::Ordering::SeqCst) == 1;
    let device = matches!(ctx.principal, Principal::Device(_));
    if counted {
        if let Some(live) = &ctx.live {
            live.closed();
        }
        gw.socket_closed(device);
    }
    if device && ctx.is_leaving() {
        // Closed by the drain or the fence: handed over to the reconnecting socket.
        gw.hand_over_device(&s.id.to_string());
    } else if device {
        gw.release_device(&s.id.to_string()).await;
    } else {
        gw.dashboard_disconnected(&s.id.to_string());
    }
}
