//! Device payloads, validated by type and range (reference §2.4 plus HEAD's later fields).
//! Unknown fields are ignored (the shipped players send extras) and never stored.

use serde_json::{Map, Value, json};

use super::validate::*;

/// Event names, in one place.
pub mod names {
    pub const HEARTBEAT: &str = "heartbeat";
    pub const IMPRESSION: &str = "content:impression";
    pub const CONTENT_ERROR: &str = "content:error";
    pub const PLAYLIST_REQUEST: &str = "playlist:request";
    pub const SCREENSHOT_RESPONSE: &str = "screenshot:response";
    pub const JOIN_ORGANIZATION: &str = "join:organization";
    pub const JOIN_ROOM: &str = "join:room";
    pub const LEAVE_ROOM: &str = "leave:room";

    pub const CONFIG: &str = "config";
    pub const PLAYLIST_UPDATE: &str = "playlist:update";
    pub const COMMAND: &str = "command";
    pub const DEVICE_STATUS: &str = "device:status";
    pub const DEVICE_STATUS_BATCH: &str = "device:status:batch";
    pub const NOTIFICATION_NEW: &str = "notification:new";
    pub const SCREENSHOT_READY: &str = "screenshot:ready";
    pub const JOINED_ORGANIZATION: &str = "joined:organization";
    pub const ERROR: &str = "error";
    pub const QR_OVERLAY_UPDATE: &str = "qr-overlay:update";
    pub const SESSION_EXPIRED: &str = "session:expired";
    pub const TENANT_SUSPENDED: &str = "tenant:suspended";
    pub const TENANT_RESUMED: &str = "tenant:resumed";
    pub const TOKEN_REFRESH: &str = "token:refresh";
    pub const DEVICE_REVOKED: &str = "device:revoked";
}

/// Length bounds for strings.
pub const ID_MAX: usize = 128;
pub const ROOM_MAX: usize = 200;
const SHORT_MAX: usize = 32;
const VERSION_MAX: usize = 64;
const MESSAGE_MAX: usize = 2000;
/// Largest accepted image side, in pixels.
pub const MAX_IMAGE_SIDE: f64 = 16_384.0;

/// A validated heartbeat, reduced to the known fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub metrics: Option<Value>,
    pub current_content: Option<Value>,
    pub extra: Map<String, Value>,
}

pub fn heartbeat(v: &Value) -> V<Heartbeat> {
    let empty = Map::new();
    let m = if v.is_null() {
        &empty
    } else {
        object(v, "payload")?
    };
    let metrics = match opt_object(m, "", "metrics")? {
        None => None,
        Some(mm) => {
            let mut out = Map::new();
            let fields: [(&str, Option<f64>, Option<f64>); 5] = [
                ("cpuUsage", Some(0.0), Some(100.0)),
                ("memoryUsage", Some(0.0), Some(100.0)),
                ("diskUsage", Some(0.0), None),
                ("networkLatency", Some(0.0), None),
                ("temperature", None, None),
            ];
            for (k, lo, hi) in fields {
                if let Some(n) = opt_number(mm, "metrics", k, lo, hi)? {
                    out.insert(k.into(), json!(n));
                }
            }
            Some(Value::Object(out))
        }
    };
    let current_content = match m.get("currentContent") {
        None | Some(Value::Null) => None,
        // Android sends the content id as a string.
        Some(Value::String(s)) if s.chars().count() <= ID_MAX => Some(Value::String(s.clone())),
        Some(Value::String(_)) => {
            return Err(invalid(
                "currentContent",
                format!("must be at most {ID_MAX} characters"),
            ));
        }
        Some(Value::Object(cc)) => {
            let mut out = Map::new();
            for k in ["contentId", "playlistId"] {
                if let Some(s) = opt_string(cc, "currentContent", k, ID_MAX)? {
                    out.insert(k.into(), Value::String(s));
                }
            }
            if let Some(n) = opt_number(cc, "currentContent", "playbackPosition", Some(0.0), None)?
            {
                out.insert("playbackPosition".into(), json!(n));
            }
            if let Some(s) = opt_string(cc, "currentContent", "status", SHORT_MAX)? {
                out.insert("status".into(), Value::String(s));
            }
            Some(Value::Object(out))
        }
        Some(_) => {
            return Err(invalid(
                "currentContent",
                "must be an object or a content id string",
            ));
        }
    };
    let mut extra = Map::new();
    if let Some(n) = opt_number(m, "", "uptime", Some(0.0), None)? {
        extra.insert("uptime".into(), json!(n));
    }
    for (k, max) in [
        ("appVersion", VERSION_MAX),
        ("screenState", SHORT_MAX),
        ("playbackSource", SHORT_MAX),
        ("contentVersion", VERSION_MAX),
    ] {
        if let Some(s) = opt_string(m, "", k, max)? {
            extra.insert(k.into(), Value::String(s));
        }
    }
    // Players send `timestamp` as a number (Electron) or an ISO string (Android); `status` as a string.
    timestamp(m)?;
    opt_string(m, "", "status", SHORT_MAX)?;
    Ok(Heartbeat {
        metrics,
        current_content,
        extra,
    })
}

fn timestamp(m: &Map<String, Value>) -> V<()> {
    match m.get("timestamp") {
        None | Some(Value::Null) | Some(Value::Number(_)) => Ok(()),
        Some(Value::String(s)) if s.len() <= 64 => Ok(()),
        Some(_) => Err(invalid("timestamp", "must be a number or a string")),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Impression {
    pub content_id: String,
    pub playlist_id: Option<String>,
    pub duration: Option<f64>,
    pub completion_percentage: Option<f64>,
}

pub fn impression(v: &Value) -> V<Impression> {
    let m = object(v, "payload")?;
    let imp = Impression {
        content_id: req_string(m, "", "contentId", ID_MAX)?,
        playlist_id: opt_string(m, "", "playlistId", ID_MAX)?,
        duration: opt_number(m, "", "duration", Some(0.0), Some(i32::MAX as f64))?,
        completion_percentage: opt_number(m, "", "completionPercentage", Some(0.0), Some(100.0))?,
    };
    timestamp(m)?;
    Ok(imp)
}

pub const ERROR_TYPES: [&str; 6] = [
    "load_failed",
    "playback_error",
    "network_error",
    "decode_error",
    "timeout",
    "unknown",
];

#[derive(Debug, Clone, PartialEq)]
pub struct ContentError {
    pub content_id: String,
    pub playlist_id: Option<String>,
    pub error_type: String,
    pub error_message: Option<String>,
    pub error_code: Option<String>,
    pub context: Option<Value>,
}

pub fn content_error(v: &Value) -> V<ContentError> {
    let m = object(v, "payload")?;
    let error_type = req_string(m, "", "errorType", SHORT_MAX)?;
    if !ERROR_TYPES.contains(&error_type.as_str()) {
        return Err(invalid(
            "errorType",
            format!("must be one of {}", ERROR_TYPES.join(", ")),
        ));
    }
    let context = opt_object(m, "", "context")?.map(|c| Value::Object(c.clone()));
    if context.as_ref().is_some_and(|c| c.to_string().len() > 4096) {
        return Err(invalid("context", "must be at most 4096 bytes of JSON"));
    }
    timestamp(m)?;
    Ok(ContentError {
        content_id: req_string(m, "", "contentId", ID_MAX)?,
        playlist_id: opt_string(m, "", "playlistId", ID_MAX)?,
        error_type,
        error_message: opt_string(m, "", "errorMessage", MESSAGE_MAX)?,
        error_code: opt_string(m, "", "errorCode", VERSION_MAX)?,
        context,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistRequest {
    pub force_refresh: bool,
}

pub fn playlist_request(v: &Value) -> V<PlaylistRequest> {
    if v.is_null() {
        return Ok(PlaylistRequest {
            force_refresh: false,
        });
    }
    let m = object(v, "payload")?;
    opt_string(m, "", "lastKnownVersion", VERSION_MAX)?;
    Ok(PlaylistRequest {
        force_refresh: opt_bool(m, "", "forceRefresh")?.unwrap_or(false),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScreenshotResponse {
    pub request_id: String,
    pub image_data: String,
    pub width: u32,
    pub height: u32,
    pub captured_at: Option<Value>,
}

/// Structural checks only; size, base64 and image checks happen in the screenshot service so
/// their error strings keep the reference's wording.
pub fn screenshot_response(v: &Value, max_chars: usize) -> V<ScreenshotResponse> {
    let m = object(v, "payload")?;
    let request_id = req_string(m, "", "requestId", 64)?;
    if !is_request_id(&request_id) {
        return Err(invalid("requestId", "must match [A-Za-z0-9_-]{1,64}"));
    }
    let image_data = match m.get("imageData") {
        Some(Value::String(s)) if s.len() > max_chars => {
            return Err(invalid("imageData", "too large"));
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(invalid("imageData", "is required"));
        }
        Some(_) => return Err(invalid("imageData", "must be a base64 string")),
    };
    let dim = |k: &str| -> V<u32> {
        let n = opt_number(m, "", k, Some(1.0), Some(MAX_IMAGE_SIDE))?
            .ok_or_else(|| invalid(k, "is required"))?;
        if n.fract() != 0.0 {
            return Err(invalid(k, "must be a whole number"));
        }
        Ok(n as u32)
    };
    let (width, height) = (dim("width")?, dim("height")?);
    timestamp(m)?;
    Ok(ScreenshotResponse {
        request_id,
        image_data,
        width,
        height,
        captured_at: m.get("timestamp").cloned(),
    })
}

/// `{organizationId}` of `join:organization` (`None`: missing, empty or too long).
pub fn organization_id(v: &Value) -> Option<String> {
    v.get("organizationId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= ID_MAX)
        .map(str::to_string)
}

/// `{room}` of `join:room` / `leave:room` (`None`: missing, empty or too long).
pub fn room(v: &Value) -> Option<String> {
    v.get("room")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= ROOM_MAX)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn electron_and_android_heartbeats_are_accepted_and_extras_dropped() {
        let electron = json!({"timestamp": 1_700_000_000_000i64, "metrics": {"cpuUsage": 12.5, "memoryUsage": 40.1, "storageUsed": 0},
                              "currentContent": {"contentId": "c1", "playlistId": "p1"}, "status": "online"});
        let hb = heartbeat(&electron).unwrap();
        assert_eq!(
            hb.metrics.unwrap(),
            json!({"cpuUsage": 12.5, "memoryUsage": 40.1})
        );
        let android = json!({"timestamp": "2026-01-01T00:00:00.000Z", "metrics": {"cpuUsage": 0, "memoryUsage": 3, "uptime": 50},
                             "currentContent": "content-9", "status": "online"});
        assert_eq!(
            heartbeat(&android).unwrap().current_content.unwrap(),
            json!("content-9")
        );
        assert!(heartbeat(&Value::Null).is_ok());
    }

    #[test]
    fn bad_heartbeats_name_the_field() {
        let e = heartbeat(&json!({"metrics": {"cpuUsage": 101}})).unwrap_err();
        assert_eq!(e.field, "metrics.cpuUsage");
        let e = heartbeat(&json!({"metrics": {"memoryUsage": "50"}})).unwrap_err();
        assert_eq!(e.to_string(), "metrics.memoryUsage must be a number");
        let e = heartbeat(&json!({"appVersion": "x".repeat(65)})).unwrap_err();
        assert_eq!(e.field, "appVersion");
        assert_eq!(heartbeat(&json!("hello")).unwrap_err().field, "payload");
        assert_eq!(
            heartbeat(&json!({"currentContent": 5})).unwrap_err().field,
            "currentContent"
        );
    }

    #[test]
    fn impressions_accept_numeric_timestamps() {
        let i = impression(
            &json!({"contentId": "c", "timestamp": 1, "duration": 30, "completed": true}),
        )
        .unwrap();
        assert_eq!(i.duration, Some(30.0));
        assert_eq!(
            impression(&json!({"playlistId": "p"})).unwrap_err().field,
            "contentId"
        );
        assert_eq!(
            impression(&json!({"contentId": "c", "completionPercentage": 101}))
                .unwrap_err()
                .field,
            "completionPercentage"
        );
    }

    #[test]
    fn content_error_type_is_an_enum() {
        assert!(
            content_error(
                &json!({"contentId": "c", "errorType": "playback_error", "timestamp": 5})
            )
            .is_ok()
        );
        assert_eq!(
            content_error(&json!({"contentId": "c", "errorType": "PlaybackError"}))
                .unwrap_err()
                .field,
            "errorType"
        );
    }

    #[test]
    fn screenshot_shape() {
        let ok = json!({"requestId": "r-1", "imageData": "AAAA", "width": 10, "height": 20});
        assert!(screenshot_response(&ok, 100).is_ok());
        let bad = json!({"requestId": "../etc", "imageData": "AAAA", "width": 10, "height": 20});
        assert_eq!(
            screenshot_response(&bad, 100).unwrap_err().field,
            "requestId"
        );
        let bad = json!({"requestId": "r", "imageData": "AAAA", "width": 0, "height": 20});
        assert_eq!(screenshot_response(&bad, 100).unwrap_err().field, "width");
    }
}
