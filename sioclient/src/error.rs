//! Error types returned by [`crate::connect`] and by [`crate::Client`] operations.

/// Why [`crate::connect`] failed.
#[derive(thiserror::Error, Debug)]
pub enum ConnectError {
    /// The handshake request was answered with a non-success HTTP status
    /// (polling handshake, or a refused websocket upgrade).
    #[error("handshake refused with HTTP {status}: {body}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// Response body (lossy UTF-8; may be partial for a refused websocket upgrade).
        body: String,
        /// The `Retry-After` header, if any.
        retry_after: Option<String>,
    },
    /// The server answered the Socket.IO CONNECT with CONNECT_ERROR (`44{...}`).
    #[error("connection refused by server: {message}")]
    Refused {
        /// `message` of the CONNECT_ERROR payload.
        message: String,
        /// `data` of the CONNECT_ERROR payload, if any.
        data: Option<serde_json::Value>,
    },
    /// The transport closed before the Socket.IO CONNECT was acknowledged.
    #[error("transport closed before connect: {0}")]
    TransportClosed(String),
    /// `connect_timeout` elapsed.
    #[error("connect timed out")]
    Timeout,
    /// Anything else (bad URL, network error, protocol violation).
    #[error("{0}")]
    Other(String),
}

/// Why a [`crate::Client`] operation failed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The connection is closed (or closed while waiting).
    #[error("connection closed")]
    Closed,
    /// No ack arrived within the timeout.
    #[error("ack timed out")]
    AckTimeout,
    /// The transport failed to write the packet.
    #[error("transport error: {0}")]
    Io(String),
}
