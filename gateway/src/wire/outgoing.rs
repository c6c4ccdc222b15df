//! Server → client events: one type per event, its name attached (`ServerEvent::NAME`).
//!
//! The emitter (`crate::emitter`) and the socket edge only send an [`Outgoing`], and an
//! `Outgoing` is only made from a `ServerEvent` here, so the compiler keeps event shapes in this
//! module: a service that wants to tell a client something names one of these types.
//!
//! Byte-identical with what the `json!` objects sent before: an event goes through
//! `serde_json::Value` (a sorted map, as `json!` built), numbers keep their Rust types (`u64`
//! stays an integer, `f64` a float), and `Option` fields are `null` unless marked
//! `skip_serializing_if` (absent), exactly where the old payloads left a key out. The unit tests
//! below pin each shape against the old `json!` literal.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::events::names;

/// A server event: its payload is the `Serialize` form, its name the constant.
pub trait ServerEvent: Serialize {
    const NAME: &'static str;
}

/// An event ready to send: its name and its JSON payload. Only constructible from a
/// [`ServerEvent`] (or a validated `/api/push/broadcast`), so nothing else reaches a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    name: Cow<'static, str>,
    data: Value,
}

impl Outgoing {
    pub fn of<E: ServerEvent>(event: &E) -> Outgoing {
        let data = serde_json::to_value(event).unwrap_or_else(|e| {
            // Unreachable for these types (string keys, finite numbers); logged, never a panic.
            tracing::error!(event = E::NAME, error = %e, "Event payload did not serialize.");
            Value::Null
        });
        Outgoing {
            name: Cow::Borrowed(E::NAME),
            data,
        }
    }

    /// `POST /api/push/broadcast`: the backend names the event (validated by the route) and
    /// owns the payload; the gateway only passes it on, with `timestamp` added to an object
    /// that has none (the original's `broadcastToOrganization`).
    pub fn broadcast(name: String, mut data: Value, timestamp: String) -> Outgoing {
        if let Some(m) = data.as_object_mut() {
            m.entry("timestamp")
                .or_insert_with(|| Value::String(timestamp));
        }
        Outgoing {
            name: Cow::Owned(name),
            data,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data(&self) -> &Value {
        &self.data
    }
}

/// `device:status` (and each entry of `device:status:batch`). `lastSeen` is `null` for a device
/// never heard from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub device_id: String,
    pub status: String,
    pub last_seen: Option<String>,
    pub timestamp: String,
}

impl ServerEvent for DeviceStatus {
    const NAME: &'static str = names::DEVICE_STATUS;
}

/// `device:status:batch`: every device of the organisation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct DeviceStatusBatch(pub Vec<DeviceStatus>);

impl ServerEvent for DeviceStatusBatch {
    const NAME: &'static str = names::DEVICE_STATUS_BATCH;
}

/// `config`, the first event a device gets after connecting.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceConfig {
    pub heartbeat_interval: u64,
    pub cache_size: u64,
    pub auto_update: bool,
    /// The device row's overlay, `null` when none.
    pub qr_overlay: Value,
}

impl ServerEvent for DeviceConfig {
    const NAME: &'static str = names::CONFIG;
}

/// `playlist:update`. The playlist itself is the resolver's form (`service::playlist`). Also
/// what is kept in `device:pending-playlist:{id}` for replay, hence `Deserialize` (lenient: a
/// replay stamps its own `timestamp`, so a kept entry without one is still replayed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaylistUpdate {
    #[serde(default)]
    pub playlist: Value,
    #[serde(default)]
    pub timestamp: String,
}

impl ServerEvent for PlaylistUpdate {
    const NAME: &'static str = names::PLAYLIST_UPDATE;
}

/// `command`: `id`, `timestamp`, `type`, optional `payload` and whatever extra top-level fields
/// the backend sent (passed through, as the original did). Queued as its JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Command(Map<String, Value>);

impl Command {
    /// A new command: the backend's fields plus the minted `id` and `timestamp`.
    pub fn new(id: &str, timestamp: String, mut fields: Map<String, Value>) -> Command {
        fields.insert("id".into(), Value::String(id.to_string()));
        fields.insert("timestamp".into(), Value::String(timestamp));
        Command(fields)
    }

    /// A queued command read back from its JSON text; `None` for anything that is not an object.
    pub fn parse(raw: &str) -> Option<Command> {
        serde_json::from_str(raw).ok()
    }

    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn fields_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.0
    }

    /// The JSON text kept in `device:commands:{id}`.
    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }
}

impl ServerEvent for Command {
    const NAME: &'static str = names::COMMAND;
}

/// `qr-overlay:update` (`qrOverlay` is `null` to remove the overlay).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QrOverlayUpdate {
    pub qr_overlay: Value,
    pub timestamp: String,
}

impl ServerEvent for QrOverlayUpdate {
    const NAME: &'static str = names::QR_OVERLAY_UPDATE;
}

/// `notification:new` for a device back online after its offline notice fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceOnlineNotification {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub device_id: String,
    pub device_name: String,
    pub timestamp: String,
}

impl DeviceOnlineNotification {
    pub fn new(device_id: &str, device_name: String, timestamp: String) -> Self {
        DeviceOnlineNotification {
            kind: "device_online",
            device_id: device_id.to_string(),
            device_name,
            timestamp,
        }
    }
}

impl ServerEvent for DeviceOnlineNotification {
    const NAME: &'static str = names::NOTIFICATION_NEW;
}

/// `notification:new` from `POST /api/notifications/broadcast`: the backend's object, with a
/// `timestamp` added when it has none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct BackendNotification(Value);

impl BackendNotification {
    pub fn new(mut notification: Value, timestamp: String) -> Self {
        if let Some(m) = notification.as_object_mut() {
            m.entry("timestamp")
                .or_insert_with(|| Value::String(timestamp));
        }
        BackendNotification(notification)
    }
}

impl ServerEvent for BackendNotification {
    const NAME: &'static str = names::NOTIFICATION_NEW;
}

/// `screenshot:ready` to the organisation's dashboards. `capturedAt` is the device's own
/// timestamp, absent when it sent none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScreenshotReady {
    pub device_id: String,
    pub request_id: String,
    pub url: String,
    pub width: u32,
    pub height: u32,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<Value>,
}

impl ServerEvent for ScreenshotReady {
    const NAME: &'static str = names::SCREENSHOT_READY;
}

/// `session:expired {reason}` before a dashboard socket is disconnected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionExpired {
    pub reason: &'static str,
}

impl ServerEvent for SessionExpired {
    const NAME: &'static str = names::SESSION_EXPIRED;
}

/// `tenant:suspended {reason}` (`reason` is `null` when the backend gave none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantSuspended {
    pub reason: Option<String>,
}

impl ServerEvent for TenantSuspended {
    const NAME: &'static str = names::TENANT_SUSPENDED;
}

/// `tenant:resumed {reason}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantResumed {
    pub reason: Option<String>,
}

impl ServerEvent for TenantResumed {
    const NAME: &'static str = names::TENANT_RESUMED;
}

/// `token:refresh {token}`: a rotated device token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRefresh {
    pub token: String,
}

impl ServerEvent for TokenRefresh {
    const NAME: &'static str = names::TOKEN_REFRESH;
}

/// `device:revoked {reason}` before the device's sockets are disconnected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRevoked {
    pub reason: String,
}

impl ServerEvent for DeviceRevoked {
    const NAME: &'static str = names::DEVICE_REVOKED;
}

/// `joined:organization` after a successful `join:organization`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinedOrganization {
    pub organization_id: String,
    pub timestamp: String,
}

impl ServerEvent for JoinedOrganization {
    const NAME: &'static str = names::JOINED_ORGANIZATION;
}

/// `error {message}`: a refused room join, or a socket whose token went stale.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorEvent {
    pub message: &'static str,
}

impl ServerEvent for ErrorEvent {
    const NAME: &'static str = names::ERROR;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    /// The bytes a client receives: the payload's JSON text.
    fn text<E: ServerEvent>(e: &E) -> String {
        Outgoing::of(e).data().to_string()
    }

    #[test]
    fn each_event_serializes_exactly_as_the_old_json_literal() {
        let ts = "2026-01-01T00:00:00.000Z".to_string();
        let s = DeviceStatus {
            device_id: "d".into(),
            status: "online".into(),
            last_seen: Some(ts.clone()),
            timestamp: ts.clone(),
        };
        assert_eq!(
            text(&s),
            json!({"deviceId": "d", "status": "online", "lastSeen": ts, "timestamp": ts})
                .to_string()
        );
        let never = DeviceStatus {
            last_seen: None,
            ..s.clone()
        };
        let none: Option<String> = None;
        assert_eq!(
            text(&DeviceStatusBatch(vec![never])),
            json!([{"deviceId": "d", "status": "online", "lastSeen": none, "timestamp": ts}])
                .to_string()
        );
        assert_eq!(text(&DeviceStatusBatch::default()), json!([]).to_string());
        let cfg = DeviceConfig {
            heartbeat_interval: 15_000,
            cache_size: 524_288_000,
            auto_update: true,
            qr_overlay: Value::Null,
        };
        assert_eq!(
            text(&cfg),
            json!({"heartbeatInterval": 15_000u64, "cacheSize": 524_288_000u64,
                   "autoUpdate": true, "qrOverlay": null})
            .to_string()
        );
        let p = PlaylistUpdate {
            playlist: json!({"id": "p", "items": []}),
            timestamp: ts.clone(),
        };
        assert_eq!(
            text(&p),
            json!({"playlist": {"id": "p", "items": []}, "timestamp": ts}).to_string()
        );
        let mut fields = Map::new();
        fields.insert("type".into(), json!("reboot"));
        fields.insert("payload".into(), json!({"delay": 5}));
        fields.insert("extra".into(), json!(1));
        let c = Command::new("c-1", ts.clone(), fields);
        assert_eq!(
            text(&c),
            json!({"type": "reboot", "payload": {"delay": 5}, "extra": 1, "id": "c-1", "timestamp": ts})
                .to_string()
        );
        assert_eq!(Command::parse(&c.to_json()), Some(c));
        let kept = Outgoing::of(&p).data().to_string();
        assert_eq!(serde_json::from_str::<PlaylistUpdate>(&kept).unwrap(), p);
        let old = serde_json::from_str::<PlaylistUpdate>(r#"{"playlist":{"id":"p"}}"#).unwrap();
        assert_eq!(old.playlist, json!({"id": "p"}));
        assert_eq!(Command::parse("[1]"), None);
        assert_eq!(
            text(&QrOverlayUpdate {
                qr_overlay: Value::Null,
                timestamp: ts.clone()
            }),
            json!({"qrOverlay": null, "timestamp": ts}).to_string()
        );
        assert_eq!(
            text(&DeviceOnlineNotification::new(
                "d",
                "Lobby".into(),
                ts.clone()
            )),
            json!({"type": "device_online", "deviceId": "d", "deviceName": "Lobby", "timestamp": ts})
                .to_string()
        );
        assert_eq!(
            text(&BackendNotification::new(json!({"title": "t"}), ts.clone())),
            json!({"title": "t", "timestamp": ts}).to_string()
        );
        assert_eq!(
            text(&BackendNotification::new(
                json!({"timestamp": 5}),
                ts.clone()
            )),
            json!({"timestamp": 5}).to_string()
        );
        let ready = ScreenshotReady {
            device_id: "d".into(),
            request_id: "r".into(),
            url: "u".into(),
            width: 10,
            height: 20,
            timestamp: ts.clone(),
            captured_at: None,
        };
        assert_eq!(
            text(&ready),
            json!({"deviceId": "d", "requestId": "r", "url": "u", "width": 10u32, "height": 20u32,
                   "timestamp": ts})
            .to_string()
        );
        let ready = ScreenshotReady {
            captured_at: Some(json!(1_700_000_000_000i64)),
            ..ready
        };
        assert_eq!(
            text(&ready),
            json!({"deviceId": "d", "requestId": "r", "url": "u", "width": 10u32, "height": 20u32,
                   "timestamp": ts, "capturedAt": 1_700_000_000_000i64})
            .to_string()
        );
        assert_eq!(
            text(&SessionExpired { reason: "revoked" }),
            json!({"reason": "revoked"}).to_string()
        );
        assert_eq!(
            text(&TenantSuspended { reason: None }),
            json!({"reason": null}).to_string()
        );
        assert_eq!(
            text(&TenantResumed {
                reason: Some("paid".into())
            }),
            json!({"reason": "paid"}).to_string()
        );
        assert_eq!(
            text(&TokenRefresh { token: "t".into() }),
            json!({"token": "t"}).to_string()
        );
        assert_eq!(
            text(&DeviceRevoked {
                reason: "revoked".into()
            }),
            json!({"reason": "revoked"}).to_string()
        );
        assert_eq!(
            text(&JoinedOrganization {
                organization_id: "o".into(),
                timestamp: ts.clone()
            }),
            json!({"organizationId": "o", "timestamp": ts}).to_string()
        );
        assert_eq!(
            text(&ErrorEvent { message: "m" }),
            json!({"message": "m"}).to_string()
        );
    }

    #[test]
    fn names_are_the_contracts() {
        let pairs = [
            (DeviceStatus::NAME, "device:status"),
            (DeviceStatusBatch::NAME, "device:status:batch"),
            (DeviceConfig::NAME, "config"),
            (PlaylistUpdate::NAME, "playlist:update"),
            (Command::NAME, "command"),
            (QrOverlayUpdate::NAME, "qr-overlay:update"),
            (DeviceOnlineNotification::NAME, "notification:new"),
            (BackendNotification::NAME, "notification:new"),
            (ScreenshotReady::NAME, "screenshot:ready"),
            (SessionExpired::NAME, "session:expired"),
            (TenantSuspended::NAME, "tenant:suspended"),
            (TenantResumed::NAME, "tenant:resumed"),
            (TokenRefresh::NAME, "token:refresh"),
            (DeviceRevoked::NAME, "device:revoked"),
            (JoinedOrganization::NAME, "joined:organization"),
            (ErrorEvent::NAME, "error"),
        ];
        for (got, want) in pairs {
            assert_eq!(got, want);
        }
    }
}
