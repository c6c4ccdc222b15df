//! The one path every client event takes: message budget → payload → service → ack, with the
//! event counted by outcome. Handlers write only the middle step, as a body returning
//! `Result<_, EventError>`; the refusal wording comes from `error::EventError`'s table.

use std::future::Future;

use serde::Serialize;
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef};

use super::SocketCtx;
use super::error::EventError;
use crate::auth::{DevicePrincipal, Principal};
use crate::service::Gateway;
use crate::wire::ack;
use crate::wire::outgoing::{ErrorEvent, Outgoing, ServerEvent};

/// The payload, with a missing one read as `null` (each validator decides whether that is fine).
pub(super) fn payload(d: Result<Value, socketioxide::ParserError>) -> Value {
    d.unwrap_or(Value::Null)
}

/// The device behind a device event; dashboards are refused.
pub(super) fn device(ctx: &SocketCtx) -> Result<&DevicePrincipal, EventError> {
    match &ctx.principal {
        Principal::Device(d) => Ok(d),
        Principal::User(_) => Err(EventError::DevicesOnly),
    }
}

/// Sends a server event to this socket only.
pub(super) fn send<A: Adapter, E: ServerEvent>(s: &SocketRef<A>, event: &E) {
    let out = Outgoing::of(event);
    let _ = s.emit(out.name(), out.data());
}

/// Sends an ack if the client asked for one (a missing ack is not an error). Typed answers are
/// serialized straight into the packet.
fn reply<A: Adapter, R: Serialize>(ack: AckSender<A>, v: &R) {
    let _ = ack.send(v);
}

/// Runs `body` within the socket's message budget and answers: `Ok((envelope, then))` is acked
/// and counted `ok`, and `then` handed back for work that must follow the ack; an `Err` is
/// answered from the refusal table (`None` back).
pub(super) async fn answer<A, R, T, F, Fut>(
    s: &SocketRef<A>,
    gw: &Gateway,
    ctx: &SocketCtx,
    event: &'static str,
    ack: AckSender<A>,
    body: F,
) -> Option<T>
where
    A: Adapter,
    R: Serialize,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(R, T), EventError>>,
{
    let result = if ctx.limiter.allow() {
        body().await
    } else {
        Err(EventError::RateLimited)
    };
    match result {
        Ok((envelope, then)) => {
            gw.count_event(event, "ok");
            reply(ack, &envelope);
            Some(then)
        }
        Err(e) => {
            refuse(s, gw, event, ack, &e);
            None
        }
    }
}

fn refuse<A: Adapter>(
    s: &SocketRef<A>,
    gw: &Gateway,
    event: &'static str,
    ack: AckSender<A>,
    e: &EventError,
) {
    gw.count_event(event, e.outcome());
    let notice = e.event_message().map(|message| ErrorEvent { message });
    // The original's order: a refused join announces `error` before its ack; a socket whose
    // session is over is told after its ack, then disconnected.
    if !e.ends_session()
        && let Some(n) = &notice
    {
        send(s, n);
    }
    reply(ack, &ack::err(e.wire_message()));
    if e.ends_session() {
        if let Some(n) = &notice {
            send(s, n);
        }
        let _ = s.clone().disconnect();
    }
}
