//! Handshake requests with their own header and URI bytes.
//!
//! hyper parses a request's header values and path as slices of the connection's read buffer
//! (8 to 16 KiB). engineioxide keeps the handshake request's `Parts` for the socket's whole life
//! (`Socket::req_parts`), and a slice keeps its whole buffer alive: measured, that buffer was
//! the largest single cost of an idle websocket connection (see BENCHMARKS.md). Copying the few
//! hundred bytes of headers and URI into allocations of their own lets the buffer go as soon as
//! hyper hands the connection over to the websocket.

use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderMap, HeaderValue, Uri};

/// Replaces the request's header values and URI with owned copies (`map_request` middleware).
/// Only an Engine.IO handshake (`EIO` and no `sid` in the query) has its `Parts` kept; polling
/// requests of a live session (heartbeats included), upgrades and the HTTP API pass untouched.
pub async fn own_request_bytes(mut req: Request) -> Request {
    if !is_handshake(req.uri()) {
        return req;
    }
    let shared = std::mem::take(req.headers_mut());
    let mut owned = HeaderMap::with_capacity(shared.len());
    for (name, value) in &shared {
        // `from_bytes` copies; it cannot fail on bytes that already formed a valid value.
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        // Standard names are static; custom ones were already copied by hyper's parser.
        owned.append(name.clone(), copy);
    }
    *req.headers_mut() = owned;
    let uri = req.uri().to_string();
    if let Ok(copy) = uri.parse::<Uri>() {
        // axum's router keeps a clone of the URI as it arrived (`OriginalUri`), which is kept
        // with the request's extensions: the same slice of the buffer.
        if let Some(original) = req.extensions_mut().get_mut::<OriginalUri>() {
            original.0 = copy.clone();
        }
        *req.uri_mut() = copy;
    }
    req
}

/// An Engine.IO request that opens a session: it names the protocol and no session yet.
fn is_handshake(uri: &Uri) -> bool {
    let has = |name: &str| {
        uri.query()
            .unwrap_or("")
            .split('&')
            .any(|p| p.starts_with(name))
    };
    has("EIO=") && !has("sid=")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::body::Bytes;

    /// A header value and a URI parsed from one buffer, as hyper does, no longer point into it.
    #[tokio::test]
    async fn headers_and_uri_no_longer_point_into_the_request_buffer() {
        let buffer = Bytes::from_static(b"/socket.io/?EIO=4&transport=websocketBearer abc");
        let uri = Uri::from_maybe_shared(buffer.slice(0..37)).unwrap_or_default();
        let value = HeaderValue::from_maybe_shared(buffer.slice(37..))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = uri.clone();
        req.extensions_mut().insert(OriginalUri(uri));
        req.headers_mut().insert("authorization", value);
        let range = buffer.as_ptr_range();
        let inside = |p: *const u8| range.contains(&p);
        assert!(inside(req.headers()["authorization"].as_bytes().as_ptr()));

        let req = own_request_bytes(req).await;
        let auth = &req.headers()["authorization"];
        assert_eq!(auth.as_bytes(), b"Bearer abc");
        assert!(!inside(auth.as_bytes().as_ptr()), "the value was copied");
        assert_eq!(req.uri().path(), "/socket.io/");
        assert_eq!(req.uri().query(), Some("EIO=4&transport=websocket"));
        let path = req.uri().path_and_query().map(|p| p.as_str().as_ptr());
        assert!(path.is_some_and(|p| !inside(p)), "the URI was copied");
        let original = req.extensions().get::<OriginalUri>();
        let path = original
            .and_then(|o| o.0.path_and_query())
            .map(|p| p.as_str().as_ptr());
        assert!(
            path.is_some_and(|p| !inside(p)),
            "axum's copy of the URI too"
        );
    }
}
