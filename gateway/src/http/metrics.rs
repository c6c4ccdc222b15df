//! Prometheus text, from a loopback client (behind trusted proxies: the client address, not the
//! proxy's) or with `Authorization: Bearer $METRICS_TOKEN` (constant time).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::proxies::TrustedProxies;
use crate::service::Gateway;

/// Loopback means the client, not the peer: a proxy on the same host forwards the internet. A
/// request from an untrusted loopback peer that carries a forwarding header came through such a
/// proxy (one nobody listed in `TRUSTED_PROXIES`), so it is not local either.
fn local_client(trusted: &TrustedProxies, peer: IpAddr, headers: &HeaderMap) -> bool {
    let forwarded = ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if forwarded && !trusted.contains(peer) {
        return false;
    }
    // An unknown client behind trusted proxies ends on the last proxy's address: loopback only
    // when that proxy is this host and forwarded nothing from outside.
    trusted.client_ip_of(peer, headers).nearest().is_loopback()
}

pub async fn metrics(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<crate::net::Peer>,
    headers: HeaderMap,
) -> Response {
    let bearer_ok = match (
        &gw.cfg().metrics_token,
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    ) {
        (Some(token), Some(h)) => h
            .strip_prefix("Bearer ")
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes()))),
        _ => false,
    };
    if !local_client(&gw.cfg().limits.trusted_proxies, peer.addr.ip(), &headers) && !bearer_ok {
        return ApiError::Forbidden("Metrics access denied").into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.render_metrics(),
    )
        .into_response()
}
