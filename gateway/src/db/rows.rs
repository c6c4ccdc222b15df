//! Plain row types read from and written to the Vizora tables (no wire shapes here).

use chrono::NaiveDateTime;
use serde_json::Value as Json;

#[derive(Clone, Debug)]
pub struct DeviceAuth {
    pub organization_id: String,
    pub disabled: bool,
    /// `devices."jwtToken"`: the SHA-256 of the bound token, the raw token (older middleware),
    /// or NULL.
    pub jwt_token: Option<String>,
    /// `organizations."subscriptionStatus" = 'suspended'` (false where the column is absent).
    pub suspended: bool,
}

#[derive(Clone, Debug)]
pub struct DeviceSettings {
    pub current_playlist_id: Option<String>,
    pub metadata: Option<Json>,
}

#[derive(Clone, Debug)]
pub struct DeviceStatusRow {
    pub id: String,
    pub status: String,
    pub last_heartbeat: Option<NaiveDateTime>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ContentRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub url: String,
    pub thumbnail: Option<String>,
    pub mime_type: Option<String>,
    pub duration: i64,
    pub metadata: Option<Json>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ItemRow {
    pub id: String,
    pub content_id: String,
    pub order: i64,
    pub duration: Option<i64>,
    pub content: Option<ContentRow>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlaylistRows {
    pub id: String,
    pub name: String,
    pub items: Vec<ItemRow>,
}

/// One proof-of-play row. The id is minted when the event is accepted, so a row that is written
/// twice (a retried batch, two replicas draining the same outbox entry) is stored once.
#[derive(Clone, Debug, PartialEq)]
pub struct NewImpression {
    pub id: String,
    pub organization_id: String,
    pub content_id: String,
    pub device_id: String,
    pub playlist_id: Option<String>,
    pub duration: Option<i64>,
    pub completion_percentage: Option<i64>,
    pub timestamp: NaiveDateTime,
    /// Server-local hour, as the original computes it.
    pub hour: u32,
}

#[derive(Clone, Debug)]
pub struct NewNotification {
    pub kind: String,
    pub title: String,
    pub message: String,
    pub severity: String,
    pub metadata: Json,
    pub organization_id: String,
}
