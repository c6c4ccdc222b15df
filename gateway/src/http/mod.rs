//! The HTTP side: the internal API (pushes, commands, presence), health, metrics, signed
//! screenshot links, and the edge gate in front of Engine.IO handshakes. All on the Socket.IO
//! port, or the operator routes on `INTERNAL_PORT` (see [`Routes`]).

mod affinity;
mod error;
mod gate;
mod health;
mod internal;
mod metrics;
mod owned_parts;
mod screenshots;

pub use owned_parts::own_request_bytes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::ApiError;
pub use gate::EdgeState;
pub use health::mark_started;

use crate::service::Gateway;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything on one port (`INTERNAL_PORT` unset, as the original).
    All,
    /// The public port beside an internal one: only what screens and browsers need (the
    /// Socket.IO layer, which the caller adds, and signed screenshot links); the operator routes
    /// answer 404 here, as unknown routes do.
    Public,
    /// The internal port: health, metrics and the internal API.
    Internal,
}

/// The API routes of one listener (without the Socket.IO layer, which the caller adds).
pub fn routes(gw: Arc<Gateway>, which: Routes) -> Router {
    let mut router = Router::new();
    if which != Routes::Internal {
        router = router.route("/api/screenshots/{*key}", get(screenshots::serve));
    }
    if which != Routes::Public {
        router = router.merge(operator_routes(gw.clone()));
    }
    router
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::not_found)
        .layer(DefaultBodyLimit::max(gw.cfg().http_body_limit))
        .layer(middleware::from_fn_with_state(gw.clone(), count_requests))
        .with_state(gw)
}

/// Health, metrics and the internal API: what `INTERNAL_PORT` moves off the public port.
fn operator_routes(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    let internal = Router::new()
        .route("/api/push/playlist", post(internal::push_playlist))
        .route("/api/push/content", post(internal::push_content))
        .route("/api/push/qr-overlay", post(internal::push_qr_overlay))
        .route("/api/push/broadcast", post(internal::push_broadcast))
        .route("/api/internal/command", post(internal::command))
        .route("/api/commands/broadcast", post(internal::broadcast_command))
        .route(
            "/api/internal/device-revoked",
            post(internal::device_revoked),
        )
        .route(
            "/api/internal/tenant-entitlement",
            post(internal::tenant_entitlement),
        )
        .route(
            "/api/notifications/broadcast",
            post(internal::notification_broadcast),
        )
        .route(
            "/api/internal/devices/{id}/presence",
            get(internal::presence),
        )
        // Only for matched routes: a known path with another method is an unknown route (404
        // like Express), not a 401 and not axum's bare 405.
        .route_layer(middleware::from_fn_with_state(gw, internal::require_key));
    Router::new()
        .route("/api/health", get(health::health))
        .route("/api/health/live", get(health::live))
        .route("/api/health/ready", get(health::ready))
        .route("/api/status", get(health::status))
        .route("/api/internal/metrics", get(metrics::metrics))
        .route("/metrics", get(metrics::metrics))
        .merge(internal)
}

/// CORS for the polling transport and the API, from `CORS_ORIGIN`.
pub fn cors(origins: &[String]) -> CorsLayer {
    let list: Vec<axum::http::HeaderValue> =
        origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::OPTIONS,
        ])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderName::from_static("x-internal-api-key"),
        ])
}

pub use gate::gate;

/// Counts requests by matched route template (a bounded set) and status class.
async fn count_requests(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let resp = next.run(req).await;
    gw.count_http(
        route.as_deref().unwrap_or("unmatched"),
        resp.status().as_u16(),
    );
    resp
}
