//! Device event handlers: validate, call the service, answer with the envelope ack (through
//! `handler::answer`, which owns the budget, the metrics and the refusal wording).

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};

use super::SocketCtx;
use super::error::EventError;
use super::handler::{answer, device, payload};
use crate::service::Gateway;
use crate::wire::{ack, events, events::names};

pub(super) async fn on_heartbeat<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    let sid = s.id.to_string();
    let session = ctx.device.as_deref();
    let done = answer(&s, &gw, &ctx, names::HEARTBEAT, ack, || async {
        let d = device(&ctx)?;
        let hb = events::heartbeat(&payload(data))?;
        let hb = gw
            .heartbeat(&d.device_id, &d.organization_id, &sid, hb, session)
            .await;
        if hb.stale {
            // The token this socket was bound to is no longer the device's (the original's
            // `device_token_stale`): the answer tells it and ends the session.
            tracing::info!(device = %d.device_id, "Heartbeat from a socket bound to a stale token; disconnecting it.");
            return Err(EventError::StaleToken);
        }
        Ok((ack::OkMirrored::new(hb.data.clone()), (d, hb)))
    })
    .await;
    let Some((d, hb)) = done else {
        return;
    };
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
        if hb.refresh {
            gw.maybe_refresh_token(d, x, &sid).await;
        }
    }
}

pub(super) async fn on_impression<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    answer(&s, &gw, &ctx, names::IMPRESSION, ack, || async {
        let d = device(&ctx)?;
        let imp = events::impression(&payload(data))?;
        // Success only once the impression is durable: it is billed, so an impression we could
        // not keep is reported to the player rather than acknowledged and lost.
        gw.impression(&d.device_id, &d.organization_id, imp)
            .await
            .map_err(|_| EventError::ImpressionNotKept)?;
        Ok((ack::ok(None), ()))
    })
    .await;
}

pub(super) async fn on_content_error<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    answer(&s, &gw, &ctx, names::CONTENT_ERROR, ack, || async {
        let d = device(&ctx)?;
        let err = events::content_error(&payload(data))?;
        gw.content_error(&d.device_id, err).await;
        Ok((ack::ok(None), ()))
    })
    .await;
}

pub(super) async fn on_playlist_request<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    answer(&s, &gw, &ctx, names::PLAYLIST_REQUEST, ack, || async {
        let d = device(&ctx)?;
        let req = events::playlist_request(&payload(data))?;
        match gw.device_playlist(&d.device_id, req.force_refresh).await {
            Ok(p) => Ok((ack::ok(Some(json!({"playlist": p}))), ())),
            Err(e) => {
                tracing::warn!(device = %d.device_id, error = %e, "Playlist request failed.");
                Err(EventError::PlaylistUnavailable)
            }
        }
    })
    .await;
}

pub(super) async fn on_screenshot<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    answer(&s, &gw, &ctx, names::SCREENSHOT_RESPONSE, ack, || async {
        let d = device(&ctx)?;
        let r = events::screenshot_response(&payload(data), usize::MAX)?;
        let saved = gw.screenshot(&d.device_id, &d.organization_id, r).await?;
        Ok((ack::ok(Some(ack::data(&saved))), ()))
    })
    .await;
}
