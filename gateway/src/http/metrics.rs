//! Prometheus text, from a loopback client (behind trusted proxies: the client address, not the
//! proxy's) or with `Authorization: Bearer $METRICS_TOKEN` (constant time).

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::service::Gateway;

pub async fn metrics(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<crate::net::Peer>,
    headers: HeaderMap,
) -> Response {
    let bearer_ok = match (
        &gw.cfg.metrics_token,
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    ) {
        (Some(token), Some(h)) => h
            .strip_prefix("Bearer ")
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes()))),
        _ => false,
    };
    // Loopback means the client, not the peer: a proxy on the same host forwards the internet.
    let client = gw
        .cfg
        .limits
        .trusted_proxies
        .client_ip_of(peer.addr.ip(), &headers);
    if !client.is_loopback() && !bearer_ok {
        return ApiError::Forbidden("Metrics access denied").into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}
