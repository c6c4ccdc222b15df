//! The playlist's client form (reference §3.3.1): what `playlist:update`, the `playlist:request`
//! ack and the Redis cache carry. `service::playlist` fills it from database rows; layout
//! metadata (the content's own JSON, with its zones resolved) stays a `Value`.
//!
//! Byte-identical with the `json!` objects it replaced: sent through `serde_json::Value`
//! (sorted keys), `Option` fields are `null` except `metadata`, which only the top-level items
//! carry (absent inside zones). Pinned by `tests` below.

use serde::Serialize;
use serde_json::Value;

/// A playlist as a device plays it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaylistForm {
    pub id: String,
    pub name: String,
    pub items: Vec<ItemForm>,
    /// Sum of the item durations, in seconds.
    pub total_duration: i64,
    pub loop_playlist: bool,
}

/// One item; `content` is `null` when the content row is gone, else a [`ContentForm`] whose
/// layout metadata may have been resolved in place.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemForm {
    pub id: String,
    pub content_id: String,
    pub duration: i64,
    pub order: i64,
    pub content: Value,
}

/// A layout zone's playlist (`playlist` / `resolvedPlaylist`): no totals, no metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZonePlaylist {
    pub id: String,
    pub name: String,
    pub items: Vec<ZoneItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneItem {
    pub id: String,
    pub content_id: String,
    pub duration: i64,
    pub order: i64,
    pub content: Option<ContentForm>,
}

/// A content item. `metadata` is present (maybe `null`) on top-level items only.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentForm {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub thumbnail: Option<String>,
    pub mime_type: Option<String>,
    pub duration: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::wire::to_value;

    #[test]
    fn forms_serialize_as_the_old_json_literals() {
        let content = ContentForm {
            id: "c".into(),
            name: "n".into(),
            kind: "image".into(),
            url: "https://cdn/i.png".into(),
            thumbnail: None,
            mime_type: Some("image/png".into()),
            duration: 10,
            metadata: None,
        };
        let none: Option<String> = None;
        assert_eq!(
            to_value(&content).to_string(),
            json!({"id": "c", "name": "n", "type": "image", "url": "https://cdn/i.png",
                   "thumbnail": none, "mimeType": "image/png", "duration": 10i64})
            .to_string()
        );
        let with_meta = ContentForm {
            metadata: Some(Value::Null),
            ..content.clone()
        };
        let item = ItemForm {
            id: "i".into(),
            content_id: "c".into(),
            duration: 10,
            order: 0,
            content: to_value(&with_meta),
        };
        let p = PlaylistForm {
            id: "p".into(),
            name: "P".into(),
            items: vec![item],
            total_duration: 10,
            loop_playlist: true,
        };
        let old_content = json!({"id": "c", "name": "n", "type": "image", "url": "https://cdn/i.png",
                                 "thumbnail": none, "mimeType": "image/png", "duration": 10i64,
                                 "metadata": null});
        assert_eq!(
            to_value(&p).to_string(),
            json!({"id": "p", "name": "P", "items": [{"id": "i", "contentId": "c", "duration": 10i64,
                   "order": 0i64, "content": old_content}], "totalDuration": 10i64, "loopPlaylist": true})
            .to_string()
        );
        let zone = ZonePlaylist {
            id: "z".into(),
            name: "Z".into(),
            items: vec![ZoneItem {
                id: "i".into(),
                content_id: "gone".into(),
                duration: 10,
                order: 1,
                content: None,
            }],
        };
        assert_eq!(
            to_value(&zone).to_string(),
            json!({"id": "z", "name": "Z", "items": [{"id": "i", "contentId": "gone",
                   "duration": 10i64, "order": 1i64, "content": null}]})
            .to_string()
        );
    }
}
