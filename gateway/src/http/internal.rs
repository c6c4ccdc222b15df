//! The internal API used by the Vizora middleware (reference §4 plus the contract's additions).
//! Every route needs `x-internal-api-key`; bodies are validated and a bad one is a 400 naming the
//! field.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::auth::valid_id;
use crate::service::Gateway;
use crate::service::pending::Delivery;

/// Most device ids one broadcast command may name.
const BROADCAST_MAX: usize = 1000;
/// Devices of one broadcast command handled at once.
const BROADCAST_CONCURRENCY: usize = 64;

pub async fn require_key(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get("x-internal-api-key")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if given.is_empty() {
        return ApiError::Unauthorized("Missing x-internal-api-key header").into_response();
    }
    let expected = gw.cfg().internal_api_secret.as_bytes();
    if !bool::from(given.as_bytes().ct_eq(expected)) {
        return ApiError::Unauthorized("Invalid API key").into_response();
    }
    next.run(req).await
}

/// A JSON object body: 413 above the limit, 400 for anything that is not a JSON object.
pub struct Body(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::BadRequest(r.body_text())
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(ApiError::BadRequest("body: must be a JSON object".into())),
            Err(e) => Err(ApiError::BadRequest(format!("body: invalid JSON ({e})"))),
        }
    }
}

fn device_id(b: &Map<String, Value>, keys: &[&str]) -> Result<String, ApiError> {
    let key = keys
        .iter()
        .find(|k| b.get(**k).is_some_and(|v| !v.is_null()))
        .copied()
        .unwrap_or(keys[0]);
    match b.get(key) {
        Some(Value::String(s)) if valid_id(s) => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::field(
            key,
            "must be an id of at most 128 characters [A-Za-z0-9._-]",
        )),
        None | Some(Value::Null) => Err(ApiError::field(key, "is required")),
        Some(_) => Err(ApiError::field(key, "must be a string")),
    }
}

fn object_field(b: &Map<String, Value>, key: &str) -> Result<Value, ApiError> {
    match b.get(key) {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        None | Some(Value::Null) => Err(ApiError::field(key, "is required")),
        Some(_) => Err(ApiError::field(key, "must be an object")),
    }
}

fn command_type_ok(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b':')
}

/// `command` as a string (with an optional top-level `payload`) or as `{type, payload, …}`.
fn parse_command(b: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut cmd = Map::new();
    match b.get("command") {
        Some(Value::String(t)) => {
            cmd.insert("type".into(), json!(t));
            if let Some(p) = b.get("payload").filter(|p| !p.is_null()) {
                if !p.is_object() {
                    return Err(ApiError::field("payload", "must be an object"));
                }
                cmd.insert("payload".into(), p.clone());
            }
        }
        Some(Value::Object(o)) => {
            for (k, v) in o {
                if k != "id" && k != "timestamp" {
                    cmd.insert(k.clone(), v.clone());
                }
            }
            if cmd
                .get("payload")
                .is_some_and(|p| !p.is_object() && !p.is_null())
            {
                return Err(ApiError::field("command.payload", "must be an object"));
            }
        }
        None | Some(Value::Null) => return Err(ApiError::field("command", "is required")),
        Some(_) => return Err(ApiError::field("command", "must be a string or an object")),
    }
    match cmd.get("type") {
        Some(Value::String(t)) if command_type_ok(t) => Ok(cmd),
        Some(Value::String(_)) => Err(ApiError::field(
            "command.type",
            "must match [A-Za-z0-9_:-]{1,64}",
        )),
        _ => Err(ApiError::field("command.type", "is required")),
    }
}

fn created(body: Value) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

fn delivery_name(d: Delivery) -> &'static str {
    match d {
        Delivery::Delivered => "delivered",
        Delivery::Queued => "queued",
    }
}

pub async fn push_playlist(
    State(gw): State<Arc<Gateway>>,
    Body(b): Body,
) -> Result<Response, ApiError> {
    let device = device_id(&b, &["deviceId"])?;
    let playlist = object_field(&b, "playlist")?;
    let d = gw.push_playlist(&device, playlist).await?;
    Ok(created(
        json!({"success": true, "message": "Playlist update sent to device", "delivery": delivery_name(d)}),
    ))
}

pub async fn push_content(
    State(gw): State<Arc<Gateway>>,
    Body(b): Body,
) -> Result<Response, ApiError> {
    let device = device_id(&b, &["deviceId"])?;
    let content = object_field(&b, "content")?;
    let duration = match b.get("duration") {
        None | Some(Value::Null) => 30.0,
        Some(v) => match v.as_f64() {
            Some(d) if d > 0.0 && d <= 86_400.0 => d,
            Some(0.0) => 30.0,
            _ => {
                return Err(ApiError::field(
                    "duration",
                    "must be a number of seconds between 0 and 86400",
                ));
            }
        },
    };
    let mut cmd = Map::new();
    cmd.insert("type".into(), json!("push_content"));
    cmd.insert(
        "payload".into(),
        json!({"content": content, "duration": duration}),
    );
    let (id, d) = gw.send_command(&device, cmd).await?;
    Ok(created(
        json!({"success": true, "message": "Content pushed to device", "commandId": id, "delivery": delivery_name(d)}),
    ))
}

pub async fn command(State(gw): State<Arc<Gateway>>, Body(b): Body) -> Result<Response, ApiError> {
    let device = device_id(&b, &["displayId", "deviceId"])?;
    let cmd = parse_command(&b)?;
    let kind = cmd
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (id, d) = gw.send_command(&device, cmd).await?;
    Ok(created(
        json!({"success": true, "message": format!("Command {kind} sent to device"), "commandId": id,
                      "delivery": delivery_name(d)}),
    ))
}

pub async fn push_qr_overlay(
    State(gw): State<Arc<Gateway>>,
    Body(b): Body,
) -> Result<Response, ApiError> {
    let device = device_id(&b, &["deviceId"])?;
    let overlay = match b.get("qrOverlay") {
        Some(v @ (Value::Object(_) | Value::Null)) => v.clone(),
        None => {
            return Err(ApiError::field(
                "qrOverlay",
                "is required (an object, or null to remove)",
            ));
        }
        Some(_) => return Err(ApiError::field("qrOverlay", "must be an object or null")),
    };
    gw.push_qr_overlay(&device, overlay).await;
    Ok(created(
        json!({"success": true, "message": "QR overlay update sent to device"}),
    ))
}

pub async fn broadcast_command(
    State(gw): State<Arc<Gateway>>,
    Body(b): Body,
) -> Result<Response, ApiError> {
    let ids = match b.get("deviceIds") {
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::field("deviceIds", "must not be empty"));
        }
        Some(Value::Array(a)) if a.len() > BROADCAST_MAX => {
            return Err(ApiError::field(
                "deviceIds",
                format!("must hold at most {BROADCAST_MAX} ids"),
            ));
        }
        Some(Value::Array(a)) => {
            let mut ids = Vec::with_capacity(a.len());
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(s) if valid_id(s) => ids.push(s.to_string()),
                    _ => {
                        return Err(ApiError::field(
                            &format!("deviceIds[{i}]"),
                            "must be a device id",
                        ));
                    }
                }
            }
            ids.sort();
            ids.dedup();
            ids
        }
        None | Some(Value::Null) => return Err(ApiError::field("deviceIds", "is required")),
        Some(_) => {
            return Err(ApiError::field(
                "deviceIds",
                "must be an array of device ids",
            ));
        }
    };
    let cmd = parse_command(&b)?;
    // One device's failure (its queue unreachable, say) must not hide what was already sent: the
    // broadcast goes on and reports each outcome. Only when nothing at all went out is it an error.
    let (mut delivered, mut queued) = (0u64, 0u64);
    let mut ids_out = Map::new();
    let mut failed = Vec::new();
    let mut first_error = None;
    // Concurrently (bounded): a device that acknowledges deliveries may take up to the ack
    // timeout, which must not add up across a thousand devices.
    use futures_util::StreamExt;
    let outcomes: Vec<(String, _)> = futures_util::stream::iter(ids.clone())
        .map(|id: String| {
            let (gw, cmd) = (gw.clone(), cmd.clone());
            async move {
                let r = gw.send_command(&id, cmd).await;
                (id, r)
            }
        })
        .buffered(BROADCAST_CONCURRENCY)
        .collect()
        .await;
    for (id, outcome) in outcomes {
        match outcome {
            Ok((cid, d)) => {
                match d {
                    Delivery::Delivered => delivered += 1,
                    Delivery::Queued => queued += 1,
                }
                ids_out.insert(id.clone(), json!(cid));
            }
            Err(e) => {
                tracing::warn!(device = %id, error = %e, "Broadcast command failed for one device.");
                gw.count_command("failed");
                failed.push(id.clone());
                first_error.get_or_insert(e);
            }
        }
    }
    if delivered + queued == 0
        && let Some(e) = first_error
    {
        return Err(e.into());
    }
    Ok(created(json!({
        "devicesOnline": delivered,
        "delivered": delivered,
        "queued": queued,
        "failed": failed.len(),
        "failedDeviceIds": failed,
        "commandIds": ids_out,
    })))
}

pub async fn push_broadcast(
    State(gw): State<Arc<Gateway>>,
    Body(b): Body,
) -> Result<Response, ApiError> {
    let org = device_id(&b, &["organizationId"])?;
    let event = match b.get("event") {
        Some(Value::String(e))
            if (1..=64).contains(&e.len())
                && e.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b':' | b'_' | b'-')
                }) =>
        {
            e.clone()
        }
        None | Some(Value::Null) => return Err(ApiError::field("event", "is required")),
        Some(_) => return Err(ApiError::field("event", "must match [a-z0-9:_-]{1,64}")),
    };
    let data = b.get("data").cloned().unwrap_or(Value::Null);
    gw.broadcast_org(&org, &event, data).await;
    Ok(created(
        json!({"success": true, "message": "Broadcast sent to organization"}),
    ))
}

/// An optional short string field (`reason`), bounded.
fn opt_reason(b: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match b.get("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) if r.len() <= 200 => Ok(Some(r.clone())),
        Some(Value::String(_)) => Err(ApiError::field("reason", "must be at most 200 characters")),
        Some(_) => Err(ApiError::field("reason", "must be a string")),
    }
}

/// `POST /api/internal/device-revoked {deviceId, reason?}`: 2xx also when the device is not
/// connected (the middleware's circuit breaker must not open on revocations).
pub async fn device_revoked(
    State(gw): State<Arc<Gateway>>,
    Body(b): Body,
) -> Result<Response, ApiError> {
    let device = device_id(&b, &["deviceId"])?;
    let reason = opt_reason(&b)?.unwrap_or_else(|| "revoked".into());
    let online = gw.revoke_device(&device, &reason).await;
    let message = if online {
        "device:revoked emitted and device disconnected"
    } else {
        "Device not connected (will confirm via auth/check on next contact)"
    };
    Ok(created(json!({"success": true, "message": message})))
}

/// `POST /api/internal/tenant-entitlement {organizationId, state, reason?}`.
pub async fn tenant_entitlement(
    State(gw): State<Arc<Gateway>>,
    Body(b): Body,
) -> Result<Response, ApiError> {
    let org = device_id(&b, &["organizationId"])?;
    let state = match b.get("state") {
        Some(Value::String(s)) if s == "suspended" || s == "resumed" => s.clone(),
        None | Some(Value::Null) => return Err(ApiError::field("state", "is required")),
        Some(_) => {
            return Err(ApiError::field(
                "state",
                "must be one of suspended, resumed",
            ));
        }
    };
    let reason = opt_reason(&b)?;
    gw.set_tenant_entitlement(&org, state == "suspended", reason)
        .await?;
    Ok(created(
        json!({"success": true, "message": format!("tenant:{state} emitted")}),
    ))
}

/// `POST /api/notifications/broadcast {organizationId, notification}`.
pub async fn notification_broadcast(
    State(gw): State<Arc<Gateway>>,
    Body(b): Body,
) -> Result<Response, ApiError> {
    let org = device_id(&b, &["organizationId"])?;
    let notification = object_field(&b, "notification")?;
    match notification.get("userId") {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) if valid_id(u) => {}
        Some(_) => {
            return Err(ApiError::field(
                "notification.userId",
                "must be a user id of at most 128 characters [A-Za-z0-9._-]",
            ));
        }
    }
    gw.broadcast_notification(&org, notification).await;
    Ok(created(
        json!({"success": true, "message": "Notification broadcasted to organization"}),
    ))
}

pub async fn presence(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !valid_id(&id) {
        return Err(ApiError::field("id", "must be a device id"));
    }
    let (online, last_seen) = gw.device_presence(&id).await?;
    Ok(Json(json!({"deviceId": id, "online": online, "status": if online { "online" } else { "offline" }, "lastSeen": last_seen}))
        .into_response())
}
