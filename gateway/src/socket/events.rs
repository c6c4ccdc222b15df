//! Device event handlers: validate, call the service, answer with the envelope ack.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};

use super::{SocketCtx, reply, within_budget};
use crate::auth::{DevicePrincipal, Principal};
use crate::service::Gateway;
use crate::wire::{ack, events, events::names};

pub fn register<A: Adapter>(s: &SocketRef<A>) {
    s.on(names::HEARTBEAT, on_heartbeat::<A>);
    s.on(names::IMPRESSION, on_impression::<A>);
    s.on(names::CONTENT_ERROR, on_content_error::<A>);
    s.on(names::PLAYLIST_REQUEST, on_playlist_request::<A>);
    s.on(names::SCREENSHOT_RESPONSE, on_screenshot::<A>);
    s.on(
        names::JOIN_ORGANIZATION,
        super::rooms::on_join_organization::<A>,
    );
    s.on(names::JOIN_ROOM, super::rooms::on_join_room::<A>);
    s.on(names::LEAVE_ROOM, super::rooms::on_leave_room::<A>);
}

/// The payload, with a missing one read as `null` (each validator decides whether that is fine).
pub(super) fn payload(d: Result<Value, socketioxide::ParserError>) -> Value {
    d.unwrap_or(Value::Null)
}

/// The common start of a device event: within the socket's message budget and from a device
/// (dashboard sockets get an error ack). Returns the principal and the ack to answer with.
fn admit_device<'a, A: Adapter>(
    gw: &Gateway,
    ctx: &'a SocketCtx,
    event: &'static str,
    ack: AckSender<A>,
) -> Option<(&'a DevicePrincipal, AckSender<A>)> {
    let ack = within_budget(gw, ctx, event, ack)?;
    match &ctx.principal {
        Principal::Device(d) => Some((d, ack)),
        Principal::User(_) => {
            gw.metrics.event(event, "forbidden");
            reply(ack, ack::err("This event is only accepted from devices"));
            None
        }
    }
}

/// A validated payload, or the error ack naming the field (counted; nothing is stored).
fn validated<T, A: Adapter>(
    gw: &Gateway,
    event: &'static str,
    ack: AckSender<A>,
    r: Result<T, crate::wire::validate::Invalid>,
) -> Option<(T, AckSender<A>)> {
    match r {
        Ok(v) => Some((v, ack)),
        Err(e) => {
            gw.metrics.event(event, "invalid");
            reply(ack, ack::err(format!("Validation failed: {e}")));
            None
        }
    }
}

async fn on_heartbeat<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    const EV: &str = names::HEARTBEAT;
    let Some((d, ack)) = admit_device(&gw, &ctx, EV, ack) else {
        return;
    };
    let Some((hb, ack)) = validated(&gw, EV, ack, events::heartbeat(&payload(data))) else {
        return;
    };
    let started = tokio::time::Instant::now();
    let sid = s.id.to_string();
    let session = ctx.device.as_deref();
    let hb = gw
        .heartbeat(&d.device_id, &d.organization_id, &sid, hb, session)
        .await;
    gw.metrics
        .heartbeat_duration(started.elapsed().as_secs_f64());
    if hb.stale {
        // The token this socket was bound to is no longer the device's (the original's
        // `device_token_stale`): tell it, then end the session; the next handshake decides.
        gw.metrics.event(EV, "stale");
        tracing::info!(device = %d.device_id, "Heartbeat from a socket bound to a stale token; disconnecting it.");
        reply(ack, ack::err(STALE));
        let _ = s.emit(names::ERROR, &json!({"message": STALE}));
        let _ = s.disconnect();
        return;
    }
    gw.metrics.event(EV, "ok");
    let data = hb.data;
    // The shipped players read `response.commands` at the top level: mirror it there.
    let mut env = ack::ok(Some(data.clone()));
    if let (Some(m), Some(d)) = (env.as_object_mut(), data.as_object()) {
        for (k, v) in d {
            m.insert(k.clone(), v.clone());
        }
    }
    reply(ack, env);
    if hb.superseded {
        // The newer connection's replica disconnects this socket too; this is the fallback when
        // that emit was lost. Its disconnect handler's release is a no-op (the lease names the
        // newer socket).
        tracing::info!(device = %d.device_id, "Heartbeat from a superseded socket; disconnecting it.");
        let _ = s.disconnect();
        return;
    }
    if let Some(x) = session {
        gw.replay_to_socket(
            &d.device_id,
            &sid,
            x.delivery_ack,
            hb.replay_playlist,
            hb.replay_commands,
        );
        gw.maybe_refresh_token(d, x, &sid).await;
    }
}

/// The `error` message for a socket whose token binding went stale.
const STALE: &str = "device_token_stale";

async fn on_impression<A: Adapter>(
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    const EV: &str = names::IMPRESSION;
    let Some((d, ack)) = admit_device(&gw, &ctx, EV, ack) else {
        return;
    };
    let Some((imp, ack)) = validated(&gw, EV, ack, events::impression(&payload(data))) else {
        return;
    };
    // Success only once the impression is durable: it is billed, so an impression we could not
    // keep is reported to the player (the original's wording) rather than acknowledged and lost.
    if let Err(e) = gw.impression(&d.device_id, &d.organization_id, imp).await {
        gw.metrics.store_error("outbox", "impression");
        gw.metrics.event(EV, "error");
        tracing::warn!(device = %d.device_id, error = %e, "Impression not accepted.");
        reply(ack, ack::err("Failed to log impression"));
        return;
    }
    gw.metrics.event(EV, "ok");
    reply(ack, ack::ok(None));
}

async fn on_content_error<A: Adapter>(
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    const EV: &str = names::CONTENT_ERROR;
    let Some((d, ack)) = admit_device(&gw, &ctx, EV, ack) else {
        return;
    };
    let Some((err, ack)) = validated(&gw, EV, ack, events::content_error(&payload(data))) else {
        return;
    };
    gw.content_error(&d.device_id, err).await;
    gw.metrics.event(EV, "ok");
    reply(ack, ack::ok(None));
}

async fn on_playlist_request<A: Adapter>(
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    const EV: &str = names::PLAYLIST_REQUEST;
    let Some((d, ack)) = admit_device(&gw, &ctx, EV, ack) else {
        return;
    };
    let Some((req, ack)) = validated(&gw, EV, ack, events::playlist_request(&payload(data))) else {
        return;
    };
    match gw.device_playlist(&d.device_id, req.force_refresh).await {
        Ok(p) => {
            gw.metrics.event(EV, "ok");
            reply(ack, ack::ok(Some(json!({"playlist": p}))));
        }
        Err(e) => {
            gw.metrics.event(EV, "error");
            tracing::warn!(device = %d.device_id, error = %e, "Playlist request failed.");
            reply(ack, ack::err("Failed to get playlist"));
        }
    }
}

async fn on_screenshot<A: Adapter>(
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    const EV: &str = names::SCREENSHOT_RESPONSE;
    let Some((d, ack)) = admit_device(&gw, &ctx, EV, ack) else {
        return;
    };
    let Some((r, ack)) = validated(
        &gw,
        EV,
        ack,
        events::screenshot_response(&payload(data), usize::MAX),
    ) else {
        return;
    };
    match gw.screenshot(&d.device_id, &d.organization_id, r).await {
        Ok(data) => {
            gw.metrics.event(EV, "ok");
            reply(ack, ack::ok(Some(data)));
        }
        Err(e) => {
            gw.metrics.event(EV, "invalid");
            reply(ack, ack::err(e.to_string()));
        }
    }
}
