//! The playlist resolver: database rows → the `playlist:update` connect form (reference §3.3.1),
//! with layouts resolved inline and `minio://` URLs rewritten. The same resolver serves the
//! connect-time push and `playlist:request`, so both always agree.

use async_trait::async_trait;
use futures_util::future::join_all;
use serde_json::{Map, Value};

use crate::db::{ContentRow, Db, DbResult, PlaylistRows};
use crate::wire::playlist::{ContentForm, ItemForm, PlaylistForm, ZoneItem, ZonePlaylist};
use crate::wire::to_value;

/// Where the resolver reads playlists and contents (the database, or a map in unit tests).
#[async_trait]
pub trait PlaylistSource: Send + Sync {
    async fn playlist(&self, id: &str) -> DbResult<Option<PlaylistRows>>;
    async fn content(&self, id: &str) -> DbResult<Option<ContentRow>>;
}

#[async_trait]
impl PlaylistSource for Db {
    async fn playlist(&self, id: &str) -> DbResult<Option<PlaylistRows>> {
        Db::playlist(self, id).await
    }
    async fn content(&self, id: &str) -> DbResult<Option<ContentRow>> {
        Db::content(self, id).await
    }
}

/// Default item duration in seconds when `PlaylistItem.duration` is null or 0.
pub const DEFAULT_ITEM_DURATION: i64 = 10;

/// `minio://…` → the content URL template with `{id}` replaced (`{API_BASE_URL}` +
/// `CONTENT_URL_PATH`, by default `…/api/device-content/{id}/file`); anything else unchanged.
/// `api_base` is that template (see `Config::content_url_template`).
pub fn resolve_url(url: &str, content_id: &str, api_base: &str) -> String {
    if url.starts_with("minio://") {
        api_base.replace("{id}", content_id)
    } else {
        url.to_string()
    }
}

fn item_duration(d: Option<i64>) -> i64 {
    match d {
        Some(d) if d != 0 => d,
        _ => DEFAULT_ITEM_DURATION,
    }
}

fn content_form(c: &ContentRow, api_base: &str, with_metadata: bool) -> ContentForm {
    ContentForm {
        id: c.id.clone(),
        name: c.name.clone(),
        kind: c.kind.clone(),
        url: resolve_url(&c.url, &c.id, api_base),
        thumbnail: c.thumbnail.clone(),
        mime_type: c.mime_type.clone(),
        duration: c.duration,
        metadata: with_metadata.then(|| c.metadata.clone().unwrap_or(Value::Null)),
    }
}

/// The connect form of a playlist, or `None` when it does not exist.
pub async fn resolve(
    src: &dyn PlaylistSource,
    playlist_id: &str,
    api_base: &str,
) -> DbResult<Option<Value>> {
    let Some(p) = src.playlist(playlist_id).await? else {
        return Ok(None);
    };
    let mut total = 0i64;
    let mut items = Vec::with_capacity(p.items.len());
    for it in &p.items {
        let duration = item_duration(it.duration);
        total += duration;
        let content = match &it.content {
            None => Value::Null,
            Some(c) => {
                let mut cj = to_value(&content_form(c, api_base, true));
                if c.kind == "layout" {
                    resolve_layout_metadata(src, &mut cj, api_base).await;
                }
                cj
            }
        };
        items.push(ItemForm {
            id: it.id.clone(),
            content_id: it.content_id.clone(),
            duration,
            order: it.order,
            content,
        });
    }
    let form = PlaylistForm {
        id: p.id,
        name: p.name,
        items,
        total_duration: total,
        loop_playlist: true,
    };
    Ok(Some(to_value(&form)))
}

/// Replaces `content.metadata.zones` with resolved zones (other metadata keys kept as they are).
async fn resolve_layout_metadata(src: &dyn PlaylistSource, content: &mut Value, api_base: &str) {
    let Some(meta) = content.get_mut("metadata") else {
        return;
    };
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let zones: Vec<Value> = meta
        .get("zones")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let resolved = join_all(zones.iter().map(|z| resolve_zone(src, z, api_base))).await;
    if let Some(m) = meta.as_object_mut() {
        m.insert("zones".into(), Value::Array(resolved));
    }
}

/// One zone: a shallow copy plus `playlist`/`resolvedPlaylist` and `content`/`resolvedContent`
/// (the original sent the former, the shipped players read the latter: we send both).
async fn resolve_zone(src: &dyn PlaylistSource, zone: &Value, api_base: &str) -> Value {
    let mut z = zone.as_object().cloned().unwrap_or_default();
    if let Some(pid) = z
        .get("playlistId")
        .and_then(Value::as_str)
        .map(str::to_string)
        && let Ok(Some(p)) = src.playlist(&pid).await
    {
        let items = p
            .items
            .iter()
            .map(|it| ZoneItem {
                id: it.id.clone(),
                content_id: it.content_id.clone(),
                duration: item_duration(it.duration),
                order: it.order,
                content: it
                    .content
                    .as_ref()
                    .map(|c| content_form(c, api_base, false)),
            })
            .collect();
        let pl = to_value(&ZonePlaylist {
            id: p.id,
            name: p.name,
            items,
        });
        z.insert("playlist".into(), pl.clone());
        z.insert("resolvedPlaylist".into(), pl);
    }
    if let Some(cid) = z
        .get("contentId")
        .and_then(Value::as_str)
        .map(str::to_string)
        && let Ok(Some(c)) = src.content(&cid).await
    {
        let cj = to_value(&content_form(&c, api_base, false));
        z.insert("content".into(), cj.clone());
        z.insert("resolvedContent".into(), cj);
    }
    Value::Object(z)
}

/// The push form (`POST /api/push/playlist`): the caller's playlist as is, with `items` defaulted
/// to `[]`, item content URLs rewritten, and layout zones resolved like the connect form.
pub async fn push_form(src: &dyn PlaylistSource, mut playlist: Value, api_base: &str) -> Value {
    let Some(obj) = playlist.as_object_mut() else {
        return playlist;
    };
    let items = obj
        .entry("items")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(items) = items.as_array_mut() {
        for it in items.iter_mut() {
            let Some(content) = it.get_mut("content").filter(|c| c.is_object()) else {
                continue;
            };
            let id = content
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(url) = content
                .get("url")
                .and_then(Value::as_str)
                .map(str::to_string)
            {
                content["url"] = Value::String(resolve_url(&url, &id, api_base));
            }
            if content.get("type").and_then(Value::as_str) == Some("layout") {
                resolve_layout_metadata(src, content, api_base).await;
            }
        }
    }
    playlist
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::db::ItemRow;

    #[derive(Default)]
    struct MapSource {
        playlists: HashMap<String, PlaylistRows>,
        contents: HashMap<String, ContentRow>,
    }

    #[async_trait]
    impl PlaylistSource for MapSource {
        async fn playlist(&self, id: &str) -> DbResult<Option<PlaylistRows>> {
            Ok(self.playlists.get(id).cloned())
        }
        async fn content(&self, id: &str) -> DbResult<Option<ContentRow>> {
            Ok(self.contents.get(id).cloned())
        }
    }

    fn content(id: &str, kind: &str, url: &str, metadata: Option<Value>) -> ContentRow {
        ContentRow {
            id: id.into(),
            name: format!("{id} name"),
            kind: kind.into(),
            url: url.into(),
            thumbnail: None,
            mime_type: Some("image/png".into()),
            duration: 10,
            metadata,
        }
    }

    fn item(id: &str, order: i64, duration: Option<i64>, c: ContentRow) -> ItemRow {
        ItemRow {
            id: id.into(),
            content_id: c.id.clone(),
            order,
            duration,
            content: Some(c),
        }
    }

    const BASE: &str = "http://api.example/api/device-content/{id}/file";

    #[test]
    fn minio_urls_are_rewritten_others_kept() {
        assert_eq!(
            resolve_url("minio://bucket/a.png", "c1", BASE),
            "http://api.example/api/device-content/c1/file"
        );
        assert_eq!(
            resolve_url("https://cdn/x.png", "c1", BASE),
            "https://cdn/x.png"
        );
        assert_eq!(resolve_url("", "c1", BASE), "");
    }

    #[tokio::test]
    async fn items_keep_database_order_and_durations_default_to_ten() {
        let mut src = MapSource::default();
        // Rows arrive ordered by `order` from the database; the resolver must keep that order.
        src.playlists.insert(
            "p1".into(),
            PlaylistRows {
                id: "p1".into(),
                name: "Lobby".into(),
                items: vec![
                    item("i0", 0, None, content("c0", "image", "minio://k0", None)),
                    item(
                        "i1",
                        1,
                        Some(0),
                        content("c1", "video", "https://cdn/v.mp4", None),
                    ),
                    item(
                        "i2",
                        2,
                        Some(25),
                        content("c2", "image", "https://cdn/i.png", Some(json!({"a": 1}))),
                    ),
                ],
            },
        );
        let p = resolve(&src, "p1", BASE).await.unwrap().unwrap();
        let ids: Vec<&str> = p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["i0", "i1", "i2"]);
        assert_eq!(
            p["items"][0]["duration"], 10,
            "null duration defaults to 10, not Content.duration"
        );
        assert_eq!(p["items"][1]["duration"], 10, "0 also becomes 10");
        assert_eq!(p["items"][2]["duration"], 25);
        assert_eq!(p["totalDuration"], 45);
        assert_eq!(p["loopPlaylist"], true);
        assert_eq!(
            p["items"][0]["content"]["url"],
            "http://api.example/api/device-content/c0/file"
        );
        assert_eq!(p["items"][0]["content"]["metadata"], Value::Null);
        assert_eq!(p["items"][0]["content"]["thumbnail"], Value::Null);
        assert_eq!(p["items"][2]["content"]["metadata"], json!({"a": 1}));
        assert!(resolve(&src, "missing", BASE).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn layout_zones_are_resolved_with_both_key_names() {
        let mut src = MapSource::default();
        let zone_content = content("zc", "image", "minio://zone.png", None);
        src.contents.insert("zc".into(), zone_content.clone());
        src.playlists.insert(
            "zp".into(),
            PlaylistRows {
                id: "zp".into(),
                name: "Zone PL".into(),
                items: vec![item("zi", 0, None, zone_content)],
            },
        );
        let meta = json!({"layoutType": "split", "gridTemplate": {"columns": "1fr 1fr", "rows": "1fr"}, "gap": 4,
            "zones": [{"id": "left", "name": "L", "gridArea": "a", "playlistId": "zp"},
                      {"id": "right", "name": "R", "gridArea": "b", "contentId": "zc", "widgetId": "w1"},
                      {"id": "empty", "name": "E", "gridArea": "c", "contentId": "nope"}]});
        src.playlists.insert(
            "p".into(),
            PlaylistRows {
                id: "p".into(),
                name: "L".into(),
                items: vec![item("i", 0, None, content("lay", "layout", "", Some(meta)))],
            },
        );
        let p = resolve(&src, "p", BASE).await.unwrap().unwrap();
        let md = &p["items"][0]["content"]["metadata"];
        assert_eq!(md["layoutType"], "split");
        assert_eq!(md["gap"], 4);
        let zones = md["zones"].as_array().unwrap();
        assert_eq!(zones[0]["resolvedPlaylist"], zones[0]["playlist"]);
        assert_eq!(zones[0]["resolvedPlaylist"]["items"][0]["duration"], 10);
        assert_eq!(
            zones[0]["resolvedPlaylist"]["items"][0]["content"]["url"],
            "http://api.example/api/device-content/zc/file"
        );
        assert!(
            zones[0]["resolvedPlaylist"]["items"][0]["content"]
                .get("metadata")
                .is_none()
        );
        assert_eq!(zones[1]["resolvedContent"]["id"], "zc");
        assert_eq!(zones[1]["content"], zones[1]["resolvedContent"]);
        assert_eq!(zones[1]["widgetId"], "w1");
        assert!(
            zones[2].get("resolvedContent").is_none(),
            "a missing zone content leaves the key absent"
        );
    }

    #[tokio::test]
    async fn push_form_rewrites_urls_and_defaults_items() {
        let src = MapSource::default();
        let p = push_form(&src, json!({"id": "p", "name": "n", "extra": 1}), BASE).await;
        assert_eq!(p["items"], json!([]));
        assert_eq!(p["extra"], 1);
        let p = push_form(
            &src,
            json!({"id": "p", "items": [{"id": "i", "content": {"id": "c9", "url": "minio://x"}}]}),
            BASE,
        )
        .await;
        assert_eq!(
            p["items"][0]["content"]["url"],
            "http://api.example/api/device-content/c9/file"
        );
    }
}
