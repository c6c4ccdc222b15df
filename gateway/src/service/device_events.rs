//! What devices send: heartbeats (Redis only, one round trip), impressions, content errors and
//! playlist requests, plus the connect-time `config` and playlist.

use chrono::Timelike;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::credentials::DeviceSession;
use super::pending::parse_commands;
use super::{Gateway, playlist};
use crate::db::{DbError, now};
use crate::store::outbox::{OutboxError, OutboxImpression};
use crate::store::{HeartbeatOutcome, HeartbeatWrite, now_ms};
use crate::wire::ack::HeartbeatAck;
use crate::wire::events::{ContentError, Heartbeat, Impression};
use crate::wire::outgoing::{Command, DeviceConfig, PlaylistUpdate};

/// The heartbeat ack's `data`, whether the socket turned out to be superseded or bound to a
/// stale token, and what a capabilities client gets replayed as events instead of in the ack.
pub struct HeartbeatReply {
    pub data: HeartbeatAck,
    pub superseded: bool,
    pub stale: bool,
    pub replay_playlist: Option<PlaylistUpdate>,
    pub replay_commands: Vec<Command>,
    /// The socket's token is due for a refresh and no other connection holds the cooldown:
    /// worth a claim ([`Gateway::maybe_refresh_token`]).
    pub refresh: bool,
}

/// `device:status:{id}` of a live device (reference §5.2): the heartbeat's known fields, plus
/// where the device is connected.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusRecord<'a> {
    status: &'static str,
    last_heartbeat: i64,
    socket_id: &'a str,
    organization_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_content: Option<&'a Value>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

/// `heartbeat:{id}:latest`: the last sample.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LatestRecord<'a> {
    device_id: &'a str,
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_content: Option<&'a Value>,
}

/// A record for Redis as JSON text (these serialize infallibly: string keys only).
fn record<T: Serialize>(r: &T) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// The `config` event's fixed fields (reference §3.2).
const CACHE_SIZE: u64 = 524_288_000;

impl Gateway {
    fn heartbeat_ack(&self, commands: Vec<Command>) -> HeartbeatAck {
        HeartbeatAck {
            next_heartbeat_in: self.cfg.heartbeat_interval.as_millis() as u64,
            commands,
        }
    }

    /// Heartbeat: status JSON, latest sample and queued commands in one Redis round trip; never
    /// the database. If Redis is unreachable the device still gets its ack (presence follows the
    /// socket, not the heartbeat) and the error is counted. A socket a newer epoch has
    /// superseded writes nothing, gets no commands, and is told so (`superseded`).
    /// `session` is the socket's credential and capability state: its bound token hash is
    /// checked in the same script; a client that sent `auth.capabilities` gets `commands: []`
    /// and its drained commands (and pending playlist) back for replay as events.
    pub async fn heartbeat(
        &self,
        device: &str,
        org: &str,
        sid: &str,
        hb: Heartbeat,
        session: Option<&DeviceSession>,
    ) -> HeartbeatReply {
        let started = tokio::time::Instant::now();
        let reply = self.heartbeat_step(device, org, sid, hb, session).await;
        self.metrics
            .heartbeat_duration(started.elapsed().as_secs_f64());
        reply
    }

    async fn heartbeat_step(
        &self,
        device: &str,
        org: &str,
        sid: &str,
        hb: Heartbeat,
        session: Option<&DeviceSession>,
    ) -> HeartbeatReply {
        let at = now_ms();
        // The lease step is decided by the socket's epoch; a socket no longer registered here
        // is on its way out (its release ran or is running): it writes nothing.
        let Some(epoch) = self.live.epoch(sid) else {
            return HeartbeatReply {
                data: self.heartbeat_ack(Vec::new()),
                superseded: false,
                stale: false,
                replay_playlist: None,
                replay_commands: Vec::new(),
                refresh: false,
            };
        };
        let bound = session.map(DeviceSession::bound);
        let refresh_due = session.is_some_and(DeviceSession::refresh_due);
        // Serialized straight from the validated payload: no JSON tree is built per heartbeat.
        let status = record(&StatusRecord {
            status: "online",
            last_heartbeat: at,
            socket_id: sid,
            organization_id: org,
            metrics: hb.metrics.as_ref(),
            current_content: hb.current_content.as_ref(),
            extra: &hb.extra,
        });
        let latest = record(&LatestRecord {
            device_id: device,
            timestamp: at,
            metrics: hb.metrics.as_ref(),
            current_content: hb.current_content.as_ref(),
        });
        let write = HeartbeatWrite {
            device,
            sid,
            epoch,
            status_json: &status,
            latest_json: &latest,
            bound: bound.as_deref(),
            take_pending_playlist: session.is_some_and(|s| s.capabilities),
            delivery_ack: session.is_some_and(|s| s.delivery_ack),
            refresh_due,
        };
        let (mut commands, mut pending, superseded, stale, refresh) =
            match self.state.device_heartbeat(&write).await {
                Ok(f) => match f.outcome {
                    HeartbeatOutcome::Live(raw) => (
                        parse_commands(raw),
                        f.pending_playlist,
                        false,
                        false,
                        refresh_due && !f.refresh_cooldown,
                    ),
                    HeartbeatOutcome::Superseded => (Vec::new(), None, true, false, false),
                    HeartbeatOutcome::Stale => (Vec::new(), None, false, true, false),
                },
                Err(e) => {
                    self.metrics.store_error("redis", "heartbeat");
                    tracing::debug!(device, error = %e, "Heartbeat could not reach Redis.");
                    (Vec::new(), None, false, false, false)
                }
            };
        let mut replay_commands = Vec::new();
        if session.is_some_and(|s| s.capabilities) {
            // The latest players ignore commands in the ack: they travel as events.
            replay_commands = std::mem::take(&mut commands);
        }
        let replay_playlist = pending.take().and_then(|p| serde_json::from_str(&p).ok());
        HeartbeatReply {
            data: self.heartbeat_ack(commands),
            superseded,
            stale,
            replay_playlist,
            replay_commands,
            refresh,
        }
    }

    /// Accepts an impression: mints its row id and hands it to the outbox (with the device's
    /// daily counter). `Ok` only once the outbox holds it; the drain writes it later.
    pub async fn impression(
        &self,
        device: &str,
        org: &str,
        imp: Impression,
    ) -> Result<(), OutboxError> {
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let positive = |v: Option<f64>| v.map(|x| x.round() as i64).filter(|x| *x != 0);
        let row = OutboxImpression {
            id: cuid2::create_id(),
            organization_id: org.into(),
            content_id: imp.content_id,
            device_id: device.into(),
            playlist_id: imp.playlist_id,
            duration: positive(imp.duration),
            completion_percentage: positive(imp.completion_percentage),
            timestamp: now(),
            hour: chrono::Local::now().hour(),
        };
        let kept = self.outbox.append(&row, &today).await;
        if let Err(e) = &kept {
            self.metrics.store_error("outbox", "impression");
            tracing::warn!(device, error = %e, "Impression not accepted.");
        }
        kept
    }

    pub async fn content_error(&self, device: &str, e: ContentError) {
        let mut entry = Map::new();
        entry.insert("deviceId".into(), json!(device));
        entry.insert("contentId".into(), json!(e.content_id));
        entry.insert("errorType".into(), json!(e.error_type));
        for (k, v) in [
            ("playlistId", e.playlist_id),
            ("errorMessage", e.error_message),
            ("errorCode", e.error_code),
        ] {
            if let Some(v) = v {
                entry.insert(k.into(), json!(v));
            }
        }
        if let Some(c) = e.context {
            entry.insert("context".into(), c);
        }
        entry.insert("timestamp".into(), json!(now_ms()));
        if self
            .state
            .push_content_error(device, &Value::Object(entry).to_string())
            .await
            .is_err()
        {
            self.metrics.store_error("redis", "content_error");
        }
    }

    /// The device's playlist in the connect form, through the Redis cache (`playlist:{id}`).
    /// `None` when no playlist is assigned — never an invented default. The device row is read
    /// every time (not a hot path): the cache only answers for the playlist the row points at.
    pub async fn device_playlist(
        &self,
        device: &str,
        force_refresh: bool,
    ) -> Result<Option<Value>, DbError> {
        let pointer = self
            .db
            .device_settings(device)
            .await?
            .and_then(|s| s.current_playlist_id);
        if !force_refresh
            && let Some(pid) = &pointer
            && let Some(p) = self.cached_playlist(device, pid).await
        {
            return Ok(Some(p));
        }
        self.resolve_playlist(device, pointer).await
    }

    /// `config` and the playlist for a connecting device, from ONE read of its row (a reconnect
    /// storm costs one query per screen, or none for the playlist when it is cached).
    pub async fn connect_state(
        &self,
        device: &str,
    ) -> Result<(DeviceConfig, Option<Value>), DbError> {
        let settings = self.db.device_settings(device).await?;
        let qr = settings
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .and_then(|m| m.get("qrOverlay").cloned())
            .filter(|q| !q.is_null() && q != &Value::Bool(false))
            .unwrap_or(Value::Null);
        let config = DeviceConfig {
            heartbeat_interval: self.cfg.heartbeat_interval.as_millis() as u64,
            cache_size: CACHE_SIZE,
            auto_update: true,
            qr_overlay: qr,
        };
        let pointer = settings.and_then(|s| s.current_playlist_id);
        let cached = match &pointer {
            Some(pid) => self.cached_playlist(device, pid).await,
            None => None,
        };
        let playlist = match cached {
            Some(p) => Some(p),
            None => self.resolve_playlist(device, pointer).await?,
        };
        Ok((config, playlist))
    }

    /// The cached playlist, only if it is the one the device row points at now: an assignment
    /// changed without a push (unassigned, or another playlist) never serves a stale entry.
    async fn cached_playlist(&self, device: &str, pointer: &str) -> Option<Value> {
        let cached = self.state.cached_playlist(device).await.ok().flatten()?;
        let p: Value = serde_json::from_str(&cached).ok()?;
        (p.get("id").and_then(Value::as_str) == Some(pointer)).then_some(p)
    }

    /// Resolves (and caches) the playlist assigned to a device.
    async fn resolve_playlist(
        &self,
        device: &str,
        playlist_id: Option<String>,
    ) -> Result<Option<Value>, DbError> {
        let Some(pid) = playlist_id else {
            return Ok(None);
        };
        let resolved = playlist::resolve(&self.db, &pid, &self.cfg.content_url_template()).await?;
        if let Some(p) = &resolved
            && self
                .state
                .cache_playlist(device, &p.to_string())
                .await
                .is_err()
        {
            self.metrics.store_error("redis", "playlist_cache");
        }
        Ok(resolved)
    }
}
