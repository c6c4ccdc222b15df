//! `join:organization`, `join:room`, `leave:room` with the original's acks and `error` events.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};

use super::events::payload;
use super::{SocketCtx, reply, within_budget};
use crate::auth::Principal;
use crate::service::rooms::{ORG_DENIED, Refused};
use crate::service::{Gateway, room};
use crate::wire::{ack, events, events::names, iso_now};

/// The ack error for a device leaving its own `device:{id}` room.
pub const OWN_DEVICE_ROOM: &str = "A device cannot leave its own device room";

fn deny<A: Adapter>(
    s: &SocketRef<A>,
    gw: &Gateway,
    event: &'static str,
    ack: AckSender<A>,
    r: Refused,
) {
    gw.metrics.event(event, "forbidden");
    let _ = s.emit(names::ERROR, &json!({"message": r.event}));
    reply(ack, ack::err(r.ack));
}

/// The room or organisation named by the payload, or the original's error ack.
fn named<A: Adapter>(
    gw: &Gateway,
    event: &'static str,
    ack: AckSender<A>,
    r: Result<String, &'static str>,
) -> Option<(String, AckSender<A>)> {
    match r {
        Ok(v) => Some((v, ack)),
        Err(msg) => {
            gw.metrics.event(event, "invalid");
            reply(ack, ack::err(msg));
            None
        }
    }
}

pub async fn on_join_organization<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    const EV: &str = names::JOIN_ORGANIZATION;
    let Some(ack) = within_budget(&gw, &ctx, EV, ack) else {
        return;
    };
    let Some((org, ack)) = named(&gw, EV, ack, events::organization_id(&payload(data))) else {
        return;
    };
    if org != ctx.principal.organization_id() {
        return deny(&s, &gw, EV, ack, ORG_DENIED);
    }
    s.join(room::org(&org));
    if matches!(ctx.principal, Principal::User(_)) {
        s.join(room::dashboards(&org));
    }
    gw.metrics.event(EV, "ok");
    let _ = s.emit(
        names::JOINED_ORGANIZATION,
        &json!({"organizationId": org, "timestamp": iso_now()}),
    );
    reply(
        ack,
        ack::ok(Some(json!({"joined": true, "organizationId": org}))),
    );
}

pub async fn on_join_room<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    const EV: &str = names::JOIN_ROOM;
    let Some(ack) = within_budget(&gw, &ctx, EV, ack) else {
        return;
    };
    let Some((name, ack)) = named(&gw, EV, ack, events::room(&payload(data))) else {
        return;
    };
    match gw.may_join(&ctx.principal, &name).await {
        Ok(()) => {
            s.join(name.clone());
            gw.metrics.event(EV, "ok");
            reply(ack, ack::ok(Some(json!({"joined": true, "room": name}))));
        }
        Err(r) => deny(&s, &gw, EV, ack, r),
    }
}

pub async fn on_leave_room<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    const EV: &str = names::LEAVE_ROOM;
    let Some(ack) = within_budget(&gw, &ctx, EV, ack) else {
        return;
    };
    let Some((name, ack)) = named(&gw, EV, ack, events::room(&payload(data))) else {
        return;
    };
    // Internal rooms (a socket's own, the dashboards room) are not the client's to leave.
    let member =
        crate::service::rooms::is_client_room(&name) && s.rooms().iter().any(|r| *r == name);
    if !member {
        gw.metrics.event(EV, "invalid");
        return reply(ack, ack::err("Not a member of this room"));
    }
    // A device's own room is how commands reach it: leaving it would make every later command
    // "delivered" and lost.
    if let Principal::Device(d) = &ctx.principal
        && name == room::device(&d.device_id)
    {
        gw.metrics.event(EV, "forbidden");
        return reply(ack, ack::err(OWN_DEVICE_ROOM));
    }
    s.leave(name.clone());
    gw.metrics.event(EV, "ok");
    reply(ack, ack::ok(Some(json!({"left": true, "room": name}))));
}
