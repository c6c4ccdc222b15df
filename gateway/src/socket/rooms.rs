//! `join:organization`, `join:room`, `leave:room` with the original's acks and `error` events
//! (through `handler::answer`; who may join what is `service::rooms`).

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};

use super::SocketCtx;
use super::error::EventError;
use super::handler::{answer, payload, send};
use crate::auth::Principal;
use crate::service::{Gateway, room};
use crate::wire::outgoing::JoinedOrganization;
use crate::wire::{ack, events, events::names, iso_now};

pub(super) async fn on_join_organization<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    answer(&s, &gw, &ctx, names::JOIN_ORGANIZATION, ack, || async {
        let org =
            events::organization_id(&payload(data)).ok_or(EventError::OrganizationRequired)?;
        gw.may_join_organization(&ctx.principal, &org)
            .map_err(EventError::Denied)?;
        s.join(room::org(&org));
        if matches!(ctx.principal, Principal::User(_)) {
            s.join(room::dashboards(&org));
        }
        send(
            &s,
            &JoinedOrganization {
                organization_id: org.clone(),
                timestamp: iso_now(),
            },
        );
        Ok((
            ack::ok(Some(json!({"joined": true, "organizationId": org}))),
            (),
        ))
    })
    .await;
}

pub(super) async fn on_join_room<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    answer(&s, &gw, &ctx, names::JOIN_ROOM, ack, || async {
        let name = events::room(&payload(data)).ok_or(EventError::RoomRequired)?;
        gw.may_join(&ctx.principal, &name)
            .await
            .map_err(EventError::Denied)?;
        s.join(name.clone());
        Ok((ack::ok(Some(json!({"joined": true, "room": name}))), ()))
    })
    .await;
}

pub(super) async fn on_leave_room<A: Adapter>(
    s: SocketRef<A>,
    State(gw): State<Arc<Gateway>>,
    Extension(ctx): Extension<Arc<SocketCtx>>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    answer(&s, &gw, &ctx, names::LEAVE_ROOM, ack, || async {
        let name = events::room(&payload(data)).ok_or(EventError::RoomRequired)?;
        // Internal rooms (a socket's own, the dashboards room) are not the client's to leave.
        let member =
            crate::service::rooms::is_client_room(&name) && s.rooms().iter().any(|r| *r == name);
        if !member {
            return Err(EventError::NotMember);
        }
        // A device's own room is how commands reach it: leaving it would make every later
        // command "delivered" and lost.
        if let Principal::Device(d) = &ctx.principal
            && name == room::device(&d.device_id)
        {
            return Err(EventError::OwnDeviceRoom);
        }
        s.leave(name.clone());
        Ok((ack::ok(Some(json!({"left": true, "room": name}))), ()))
    })
    .await;
}
