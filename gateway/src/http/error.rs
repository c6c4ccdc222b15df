//! The one translation of errors to HTTP: every error body the HTTP side answers is rendered
//! here. The internal API's errors have Nest's shape `{statusCode, message, error}` that the
//! Vizora middleware already understands; the edge gate's refusals name their cause
//! (`{error, message}`, with `Retry-After`); `/ready` says why it is not (`{status, ready,
//! reason}`).

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::StoreError;
use crate::service::commands::CommandError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("Payload too large")]
    TooLarge,
    /// A store the request needed failed: 503, the store error's text as the message.
    #[error("{0}")]
    Unavailable(#[from] StoreError),
    /// The edge gate refused the request (a handshake, or a fenced replica's session request):
    /// `{error, message}` naming the cause by `code`, and `Retry-After` when given.
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: &'static str,
        retry_after: Option<u64>,
    },
    /// `/ready` while this replica should receive no traffic (draining, fenced): 503.
    #[error("not ready: {0}")]
    NotReady(&'static str),
}

impl ApiError {
    pub fn field(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::BadRequest(format!("{field}: {problem}"))
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        match e {
            CommandError::Invalid(m) => ApiError::BadRequest(m),
            CommandError::Store(s) => ApiError::Unavailable(s),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, reason) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad Request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
            ApiError::Refused {
                status,
                code,
                message,
                retry_after,
            } => {
                let body = Json(json!({"error": code, "message": message}));
                return match retry_after {
                    Some(s) => {
                        (*status, [(header::RETRY_AFTER, s.to_string())], body).into_response()
                    }
                    None => (*status, body).into_response(),
                };
            }
            ApiError::NotReady(reason) => {
                let body = json!({"status": "not ready", "ready": false, "reason": reason});
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            }
        };
        if matches!(self, ApiError::Unavailable(_)) {
            tracing::warn!(error = %self, "Request failed on a dependency.");
        }
        (status, Json(json!({"statusCode": status.as_u16(), "message": self.to_string(), "error": reason}))).into_response()
    }
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("Cannot {} {}", req.method(), req.uri().path()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Status, `Retry-After` and body bytes, as the client reads them.
    async fn rendered(e: ApiError) -> (u16, Option<String>, String) {
        let r = e.into_response();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let status = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, retry, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Every body shape, to the byte: the internal API's (Nest's), the gate's refusals and
    /// `/ready`'s (contract §7, the integration tests' bodies).
    #[tokio::test]
    async fn every_error_body_keeps_its_bytes() {
        let cases = [
            (
                ApiError::field("deviceId", "is required"),
                400,
                None,
                r#"{"error":"Bad Request","message":"deviceId: is required","statusCode":400}"#,
            ),
            (
                ApiError::Unauthorized("Invalid API key"),
                401,
                None,
                r#"{"error":"Unauthorized","message":"Invalid API key","statusCode":401}"#,
            ),
            (
                ApiError::TooLarge,
                413,
                None,
                r#"{"error":"Payload Too Large","message":"Payload too large","statusCode":413}"#,
            ),
            (
                StoreError::Timeout.into(),
                503,
                None,
                r#"{"error":"Service Unavailable","message":"store unavailable: redis operation timed out","statusCode":503}"#,
            ),
            (
                CommandError::Store(StoreError::Timeout).into(),
                503,
                None,
                r#"{"error":"Service Unavailable","message":"store unavailable: redis operation timed out","statusCode":503}"#,
            ),
            (
                CommandError::Invalid("payload: must be an object".into()).into(),
                400,
                None,
                r#"{"error":"Bad Request","message":"payload: must be an object","statusCode":400}"#,
            ),
            (
                ApiError::Refused {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    code: "rate_limited",
                    message: "Too many connection attempts from this address",
                    retry_after: Some(3),
                },
                429,
                Some("3"),
                r#"{"error":"rate_limited","message":"Too many connection attempts from this address"}"#,
            ),
            (
                ApiError::Refused {
                    status: StatusCode::FORBIDDEN,
                    code: "forbidden_origin",
                    message: "Cookie sessions are only accepted from the configured origins",
                    retry_after: None,
                },
                403,
                None,
                r#"{"error":"forbidden_origin","message":"Cookie sessions are only accepted from the configured origins"}"#,
            ),
            (
                ApiError::NotReady("draining"),
                503,
                None,
                r#"{"ready":false,"reason":"draining","status":"not ready"}"#,
            ),
        ];
        for (e, status, retry, body) in cases {
            let what = format!("{e:?}");
            assert_eq!(
                rendered(e).await,
                (status, retry.map(str::to_string), body.to_string()),
                "{what}"
            );
        }
    }
}
