//! The edge gate: refuses new Engine.IO handshakes (requests to `/socket.io/` without `sid`) at the
//! HTTP level — 429 `rate_limited` with `Retry-After`, 503 `server_busy` (at capacity, or
//! shedding load to rebalance), 503 `draining`, 503 `unavailable` while fenced — so socket.io-client keeps retrying with its own backoff. It runs
//! before any Redis or database work. While fenced it also refuses the requests of live
//! long-polling sessions (503 `unavailable`): their clients see a transport error and reconnect
//! elsewhere, as a websocket whose transport the fence closed does.
//!
//! It also refuses cross-site WebSocket hijacking: a handshake that carries the dashboard's
//! session cookie from a browser page whose `Origin` is not in `CORS_ORIGIN` gets 403
//! `forbidden_origin`, over websocket and polling alike. The session cookie is the only credential
//! a foreign page can make the browser send; `auth.token` handshakes carry no cookie (or come
//! from a page that holds the token anyway), and clients without an `Origin` are not browsers.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::auth::token_from_cookie;
use crate::limits::{EdgeGuard, Refusal};
use crate::service::Gateway;

#[derive(Clone)]
pub struct EdgeState {
    pub gw: Arc<Gateway>,
    pub guard: Arc<EdgeGuard>,
}

fn is_handshake(req: &Request) -> bool {
    req.uri().path().starts_with("/socket.io")
        && !req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv.starts_with("sid="))
}

/// A handshake carrying the session cookie whose `Origin` header names another site.
fn cookie_from_foreign_origin(req: &Request, allowed: &[String]) -> bool {
    let has_cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .any(|c| token_from_cookie(c).is_some());
    if !has_cookie {
        return false;
    }
    req.headers()
        .get_all(header::ORIGIN)
        .iter()
        .any(|o| !o.to_str().is_ok_and(|o| allowed.iter().any(|a| a == o)))
}

/// Every request passes here: it is in flight for the connection's timers (see `net.rs`) until
/// its response is produced, and a websocket upgrade frees its connection from them.
pub async fn gate(
    State(st): State<EdgeState>,
    ConnectInfo(peer): ConnectInfo<crate::net::Peer>,
    req: Request,
    next: Next,
) -> Response {
    let _busy = peer.watch.busy();
    let resp = admit(st, &peer, req, next).await;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        peer.watch.upgraded();
    }
    resp
}

async fn admit(st: EdgeState, peer: &crate::net::Peer, mut req: Request, next: Next) -> Response {
    if !is_handshake(&req) {
        if st.gw.is_fenced() && req.uri().path().starts_with("/socket.io") {
            // A live session's request, not a handshake: not counted as a refusal.
            return refusal(Refusal::Unavailable).1;
        }
        return next.run(req).await;
    }
    if cookie_from_foreign_origin(&req, &st.gw.cfg().cors_origins) {
        st.gw.count_refusal("forbidden_origin");
        return ApiError::Refused {
            status: StatusCode::FORBIDDEN,
            code: "forbidden_origin",
            message: "Cookie sessions are only accepted from the configured origins",
            retry_after: None,
        }
        .into_response();
    }
    let client = st
        .guard
        .trusted_proxies
        .client_ip_of(peer.addr.ip(), req.headers());
    let ip = client.known();
    if ip.is_none() {
        st.gw.count_unknown_client();
        if st.guard.warn_unknown_client() {
            tracing::warn!(
                nearest = %client.nearest(),
                "Handshake with no visible client address: the peer and every X-Forwarded-For hop are trusted proxies, so per-IP connect limits are skipped (global, per-device and cap limits still apply). Make client addresses visible: externalTrafficPolicy: Local, or forwarded headers / PROXY protocol at the ingress (docs/operations.md, \"Client addresses behind your ingress\"). Logged at most once a minute."
            );
        }
    }
    let verdict = if st.gw.is_fenced() && !st.gw.is_draining() {
        Err(Refusal::Unavailable)
    } else if !st.gw.is_draining() && st.gw.refuses_for_rebalancing() {
        Err(Refusal::Rebalancing)
    } else {
        st.guard.check(ip, st.gw.is_draining())
    };
    match verdict {
        Ok(()) => {
            // The socket this handshake opens counts itself in and out (`socket::connect`).
            req.extensions_mut().insert(st.guard.live().clone());
            super::affinity::handshake(&st.gw.cfg().replica_id, req, next).await
        }
        Err(r) => refuse(&st, r),
    }
}

/// A refused handshake, counted by cause.
fn refuse(st: &EdgeState, r: Refusal) -> Response {
    let (cause, resp) = refusal(r);
    st.gw.count_refusal(cause);
    resp
}

/// The counted cause and the response of a refusal: a JSON body naming the cause, and
/// `Retry-After` (rendered by [`ApiError::Refused`]). A replica shedding load to rebalance
/// answers the contract's `server_busy`, counted apart as `rebalancing`.
fn refusal(r: Refusal) -> (&'static str, Response) {
    let (status, cause, message, retry) = match r {
        Refusal::RateLimited { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many connection attempts from this address",
            retry_after.as_secs().max(1),
        ),
        Refusal::ServerBusy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "This replica is at capacity",
            2,
        ),
        Refusal::Rebalancing => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "This replica is rebalancing its load; another replica serves",
            1,
        ),
        Refusal::Draining => (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "This replica is shutting down",
            1,
        ),
        Refusal::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "This replica is cut off from the shared store; another replica serves",
            1,
        ),
    };
    let resp = ApiError::Refused {
        status,
        code: cause,
        message,
        retry_after: Some(retry),
    }
    .into_response();
    let counted = if r == Refusal::Rebalancing {
        "rebalancing"
    } else {
        cause
    };
    (counted, resp)
}
