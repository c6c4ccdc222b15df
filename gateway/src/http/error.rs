//! The one translation of errors to HTTP: Nest's error shape
//! `{statusCode, message, error}` that the Vizora middleware already understands.

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn field(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::BadRequest(format!("{field}: {problem}"))
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
