//! Session affinity behind a load balancer: the replica that accepts an Engine.IO handshake names
//! itself in the `vizora_replica` cookie, so that the balancer can send the session's later
//! requests (those carrying a `sid`: polls, posts, the websocket upgrade) to the replica that
//! created it (`deploy/nginx/nginx.conf` maps the cookie to one upstream per replica).
//!
//! Why the replica says it, and not the balancer's own stickiness key: a handshake refused with 503
//! (`server_busy`, `draining`) is retried by the balancer on another replica, and the session is
//! created there. A key chosen before the retry (the client address, a balancer cookie) keeps
//! naming the replica that refused, whose answer to every later request is "unknown sid". The
//! response that finally reaches the client comes from the replica that holds the session, so it
//! is the one that can name it.
//!
//! Only a handshake (no `sid`; the gate calls this from its admitted branch) that succeeded (200
//! for polling, 101 for a websocket) sets it: a refused handshake (429, 503) created nothing here,
//! and a request carrying a `sid` was already routed to its session; naming the replica again
//! would change nothing, and on an "unknown sid" answer it would name the wrong one.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

/// The cookie's name; `deploy/nginx/nginx.conf` reads it as `$cookie_vizora_replica`.
pub const COOKIE: &str = "vizora_replica";

/// Runs an admitted handshake and, when it opened a session here, names this replica in the
/// `vizora_replica` cookie of the response.
pub async fn handshake(replica_id: &str, req: Request, next: Next) -> Response {
    let keep = req.method() == Method::GET && !keeps_other_cookie(&req);
    let mut resp = next.run(req).await;
    let opened = matches!(
        resp.status(),
        StatusCode::OK | StatusCode::SWITCHING_PROTOCOLS
    );
    if keep
        && opened
        && let Some(v) = set_cookie(replica_id)
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// A websocket-only handshake whose client already holds the cookie leaves it as it is. Its
/// session lives on one connection and never needs the cookie, but the browser's cookie jar is
/// shared by its tabs: overwriting it could re-point another tab's long-polling session (whose
/// requests do need it) at this replica. A polling handshake always sets it: its own requests
/// follow.
fn keeps_other_cookie(req: &Request) -> bool {
    let websocket = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv == "transport=websocket");
    websocket
        && req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(';'))
            .any(|c| {
                c.trim_start()
                    .split_once('=')
                    .is_some_and(|(k, _)| k == COOKIE)
            })
}

/// `vizora_replica=<id>; Path=/socket.io/; HttpOnly; SameSite=Lax`, or `None` (with a warning
/// once) when the replica id cannot be a cookie value: the balancer then falls back to the
/// client address for this replica's sessions.
fn set_cookie(replica_id: &str) -> Option<HeaderValue> {
    // RFC 6265 cookie-octet: no controls, whitespace, DQUOTE, comma, semicolon or backslash. A
    // host name or a pod name always passes.
    let valid = !replica_id.is_empty()
        && replica_id
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E));
    let value = valid
        .then(|| {
            HeaderValue::from_str(&format!(
                "{COOKIE}={replica_id}; Path=/socket.io/; HttpOnly; SameSite=Lax"
            ))
            .ok()
        })
        .flatten();
    if value.is_none() {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                replica = %replica_id,
                "REPLICA_ID cannot be a cookie value: handshakes do not name this replica for the load balancer."
            );
        }
    }
    value
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(query: &str, cookie: Option<&str>) -> Request {
        let mut b = Request::get(format!("/socket.io/?{query}"));
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn cookie_value() {
        assert_eq!(
            set_cookie("gateway-1").unwrap(),
            "vizora_replica=gateway-1; Path=/socket.io/; HttpOnly; SameSite=Lax"
        );
        assert!(set_cookie("vizora-gateway-7d9f8-x2x4q.ns").is_some());
        for bad in ["", "a b", "a;b", "a,b", "a\"b", "a\\b", "é"] {
            assert!(set_cookie(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn only_a_websocket_handshake_keeps_a_cookie_the_client_holds() {
        let held = Some("a=1; vizora_replica=gateway-2");
        assert!(keeps_other_cookie(&req("EIO=4&transport=websocket", held)));
        assert!(!keeps_other_cookie(&req("EIO=4&transport=polling", held)));
        assert!(!keeps_other_cookie(&req("EIO=4&transport=websocket", None)));
        assert!(!keeps_other_cookie(&req(
            "EIO=4&transport=websocket",
            Some("xvizora_replica=1; vizora_lb=2")
        )));
    }
}
