//! Why a client event was refused, and the one table that turns a refusal into the contract's
//! wording (the ack's `error`), the metric outcome and, where the contract sends one, an
//! `error` event.

use std::borrow::Cow;

use crate::service::rooms::Refused;
use crate::service::screenshots::ScreenshotError;
use crate::wire::validate::Invalid;

/// A refused client event. Every handler answers through `handler::answer`, which uses
/// [`EventError::wire_message`] for the ack: no handler writes an error string of its own.
#[derive(Debug)]
pub enum EventError {
    /// Over the socket's message budget.
    RateLimited,
    /// A device event from a dashboard socket.
    DevicesOnly,
    /// A payload that failed validation (the message names the field).
    Invalid(Invalid),
    /// `join:organization` without a usable `organizationId`.
    OrganizationRequired,
    /// `join:room` / `leave:room` without a usable `room`.
    RoomRequired,
    /// A room (or organisation) this principal may not join.
    Denied(Refused),
    /// `leave:room` for a room the socket is not in (or may not name).
    NotMember,
    /// A device leaving its own `device:{id}` room.
    OwnDeviceRoom,
    /// The impression could not be made durable.
    ImpressionNotKept,
    /// The playlist could not be resolved.
    PlaylistUnavailable,
    /// The screenshot was refused or could not be stored (the service's wording).
    Screenshot(ScreenshotError),
    /// A heartbeat from a socket whose token is no longer the device's.
    StaleToken,
}

impl From<Invalid> for EventError {
    fn from(e: Invalid) -> Self {
        EventError::Invalid(e)
    }
}

impl From<ScreenshotError> for EventError {
    fn from(e: ScreenshotError) -> Self {
        EventError::Screenshot(e)
    }
}

/// The `error` message (and ack error) for a socket whose token binding went stale.
const STALE: &str = "device_token_stale";

impl EventError {
    /// The ack's `error` string: the contract's wording, in this one place.
    pub fn wire_message(&self) -> Cow<'static, str> {
        match self {
            EventError::RateLimited => "rate_limited".into(),
            EventError::DevicesOnly => "This event is only accepted from devices".into(),
            EventError::Invalid(e) => format!("Validation failed: {e}").into(),
            EventError::OrganizationRequired => "Organization ID required".into(),
            EventError::RoomRequired => "Room name required".into(),
            EventError::Denied(r) => denied(*r).0.into(),
            EventError::NotMember => "Not a member of this room".into(),
            EventError::OwnDeviceRoom => "A device cannot leave its own device room".into(),
            EventError::ImpressionNotKept => "Failed to log impression".into(),
            EventError::PlaylistUnavailable => "Failed to get playlist".into(),
            EventError::Screenshot(e) => screenshot(e),
            EventError::StaleToken => STALE.into(),
        }
    }

    /// The `error` event the contract sends with this refusal, if any.
    pub fn event_message(&self) -> Option<&'static str> {
        match self {
            EventError::Denied(r) => Some(denied(*r).1),
            EventError::StaleToken => Some(STALE),
            _ => None,
        }
    }

    /// The `outcome` label of `vizora_socket_events_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            EventError::RateLimited => "rate_limited",
            EventError::DevicesOnly | EventError::Denied(_) | EventError::OwnDeviceRoom => {
                "forbidden"
            }
            EventError::Invalid(_)
            | EventError::OrganizationRequired
            | EventError::RoomRequired
            | EventError::NotMember
            | EventError::Screenshot(_) => "invalid",
            EventError::ImpressionNotKept | EventError::PlaylistUnavailable => "error",
            EventError::StaleToken => "stale",
        }
    }

    /// Whether the socket is disconnected after the answer (its session is over).
    pub fn ends_session(&self) -> bool {
        matches!(self, EventError::StaleToken)
    }
}

fn screenshot(e: &ScreenshotError) -> Cow<'static, str> {
    match e {
        ScreenshotError::TooLarge(limit) => {
            format!("Screenshot data too large (max {limit})").into()
        }
        ScreenshotError::UnknownRequest => "Unknown or expired screenshot request".into(),
        ScreenshotError::BadBase64 => "Invalid base64 format".into(),
        ScreenshotError::BadFormat => "Invalid image format: only PNG and JPEG are accepted".into(),
        ScreenshotError::DimensionMismatch => "Image dimensions do not match width/height".into(),
        ScreenshotError::StorageUnavailable => "Storage service unavailable".into(),
        ScreenshotError::SaveFailed => "Failed to save screenshot".into(),
    }
}

/// A room refusal's ack error and `error` event message (the original's wording: they differ
/// for an organisation mismatch).
fn denied(r: Refused) -> (&'static str, &'static str) {
    match r {
        Refused::DeviceRoom => (
            "Unauthorized: cannot join this device room",
            "Unauthorized: cannot join this device room",
        ),
        Refused::OrganizationMismatch => (
            "Unauthorized: organization mismatch",
            "Unauthorized: you do not belong to this organization",
        ),
        Refused::InvalidRoom => ("Invalid room name", "Invalid room name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_contracts_wording() {
        let cases: [(EventError, &str, Option<&str>, &str); 11] = [
            (
                EventError::RateLimited,
                "rate_limited",
                None,
                "rate_limited",
            ),
            (
                EventError::DevicesOnly,
                "This event is only accepted from devices",
                None,
                "forbidden",
            ),
            (
                EventError::Invalid(crate::wire::validate::invalid(
                    "metrics.cpuUsage",
                    "must be a number",
                )),
                "Validation failed: metrics.cpuUsage must be a number",
                None,
                "invalid",
            ),
            (
                EventError::Denied(Refused::OrganizationMismatch),
                "Unauthorized: organization mismatch",
                Some("Unauthorized: you do not belong to this organization"),
                "forbidden",
            ),
            (
                EventError::Denied(Refused::DeviceRoom),
                "Unauthorized: cannot join this device room",
                Some("Unauthorized: cannot join this device room"),
                "forbidden",
            ),
            (
                EventError::Denied(Refused::InvalidRoom),
                "Invalid room name",
                Some("Invalid room name"),
                "forbidden",
            ),
            (
                EventError::StaleToken,
                "device_token_stale",
                Some("device_token_stale"),
                "stale",
            ),
            (
                EventError::Screenshot(ScreenshotError::UnknownRequest),
                "Unknown or expired screenshot request",
                None,
                "invalid",
            ),
            (
                EventError::Screenshot(ScreenshotError::TooLarge("2KB".into())),
                "Screenshot data too large (max 2KB)",
                None,
                "invalid",
            ),
            (
                EventError::Screenshot(ScreenshotError::BadFormat),
                "Invalid image format: only PNG and JPEG are accepted",
                None,
                "invalid",
            ),
            (
                EventError::Screenshot(ScreenshotError::BadBase64),
                "Invalid base64 format",
                None,
                "invalid",
            ),
        ];
        for (e, msg, event, outcome) in cases {
            assert_eq!(e.wire_message(), msg);
            assert_eq!(e.event_message(), event);
            assert_eq!(e.outcome(), outcome);
        }
    }
}
