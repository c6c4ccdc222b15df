//! Serves locally stored screenshots behind HMAC-signed, expiring links (embedded mode only).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::service::Gateway;
use crate::service::screenshots::LinkRefused;

pub async fn serve(
    State(gw): State<Arc<Gateway>>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // `Storage::url` links to `/api/screenshots/{object key}` and object keys already start with
    // `screenshots/`: the captured path is the key itself (prefixing it again broke every link).
    if !key.starts_with("screenshots/") {
        return Err(ApiError::Forbidden("Invalid or expired link"));
    }
    let exp = q
        .get("exp")
        .and_then(|e| e.parse::<i64>().ok())
        .unwrap_or(0);
    let sig = q.get("sig").map(String::as_str).unwrap_or("");
    let bytes = match gw.signed_screenshot(&key, exp, sig).await {
        Ok(b) => b,
        Err(LinkRefused::BadSignature) => {
            return Err(ApiError::Forbidden("Invalid or expired link"));
        }
        Err(LinkRefused::Missing) => {
            return Err(ApiError::NotFound("Screenshot not found".into()));
        }
    };
    let ctype = if key.ends_with(".png") {
        "image/png"
    } else {
        "image/jpeg"
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        bytes,
    )
        .into_response())
}
