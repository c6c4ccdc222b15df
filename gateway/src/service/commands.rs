//! Commands and pushes: every command gets an `id`; a device with a live socket receives it as a
//! `command` event, any other device gets it queued (bounded, TTL) and delivered on its next
//! connect or heartbeat ack. Screenshot commands record their pending `requestId`.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Gateway, playlist, room};
use crate::store::StoreError;
use crate::wire::validate::is_request_id;
use crate::wire::{events::names, iso_now};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Queued,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Gateway {
    /// Accepts a command for one device. `cmd` holds `type`, optional `payload` and any extra
    /// top-level fields (passed through, as the original did).
    pub async fn send_command(
        self: &Arc<Self>,
        device: &str,
        mut cmd: Map<String, Value>,
    ) -> Result<(String, Delivery), CommandError> {
        let id = uuid::Uuid::new_v4().to_string();
        cmd.insert("id".into(), json!(id));
        cmd.insert("timestamp".into(), json!(iso_now()));
        if cmd.get("type").and_then(Value::as_str) == Some("screenshot") {
            let payload = cmd.entry("payload").or_insert_with(|| json!({}));
            let Some(p) = payload.as_object_mut() else {
                return Err(CommandError::Invalid("payload: must be an object".into()));
            };
            let request_id = match p.get("requestId") {
                None | Some(Value::Null) => {
                    let minted = uuid::Uuid::new_v4().simple().to_string();
                    p.insert("requestId".into(), json!(minted));
                    minted
                }
                Some(Value::String(r)) if is_request_id(r) => r.clone(),
                Some(_) => {
                    return Err(CommandError::Invalid(
                        "payload.requestId: must match [A-Za-z0-9_-]{1,64}".into(),
                    ));
                }
            };
            self.state
                .put_screenshot_request(
                    device,
                    &request_id,
                    self.cfg.screenshot_request_ttl.as_millis() as u64,
                )
                .await?;
        }
        let delivery = self.deliver(device, Value::Object(cmd)).await?;
        Ok((id, delivery))
    }

    async fn deliver(&self, device: &str, cmd: Value) -> Result<Delivery, StoreError> {
        // Live means a lease whose socket can receive room emits. A `pending` lease names a socket
        // still in its connect middleware, in no namespace yet on whichever replica holds it: an
        // emit now would be lost, so queue it; the socket drains the queue once it is in.
        let (lease, acked) = self.state.lease_and_ack(device).await?;
        let online = matches!(lease, Some(l) if !l.pending);
        if online {
            // Older sockets get it plainly ("delivered" as before); sockets that advertised
            // `deliveryAck` must acknowledge it, else it goes back to the queue.
            match self
                .deliver_live(device, names::COMMAND, cmd.clone(), acked)
                .await
            {
                super::delivery::AckOutcome::Failed(why) => {
                    tracing::info!(device, reason = %why, "Command not acknowledged; queued for replay.");
                    self.requeue(device, std::slice::from_ref(&cmd)).await;
                    Ok(Delivery::Queued)
                }
                _ => {
                    self.metrics.command("delivered");
                    Ok(Delivery::Delivered)
                }
            }
        } else {
            self.state
                .enqueue_command(
                    device,
                    &cmd.to_string(),
                    self.cfg.command_queue_max,
                    self.cfg.command_queue_ttl.as_millis() as u64,
                )
                .await?;
            self.metrics.command("queued");
            Ok(Delivery::Queued)
        }
    }

    /// Queued commands, oldest first (connect-time delivery).
    pub async fn take_queued_commands(&self, device: &str) -> Vec<Value> {
        match self.state.drain_commands(device).await {
            Ok(raw) => parse_commands(raw),
            Err(e) => {
                self.metrics.store_error("redis", "drain_commands");
                tracing::warn!(device, error = %e, "Could not drain queued commands.");
                Vec::new()
            }
        }
    }

    /// `POST /api/push/playlist`: invalidate the cached playlist, push the update (acknowledged
    /// by the sockets that advertised `deliveryAck`; `Queued` when they did not acknowledge it).
    pub async fn push_playlist(
        &self,
        device: &str,
        playlist: Value,
    ) -> Result<Delivery, StoreError> {
        self.state.invalidate_playlist(device).await?;
        let pl = playlist::push_form(&self.db, playlist, &self.cfg.content_url_template()).await;
        Ok(self
            .deliver_playlist(device, json!({"playlist": pl, "timestamp": iso_now()}))
            .await)
    }

    pub async fn push_qr_overlay(&self, device: &str, overlay: Value) {
        self.emitter
            .emit(
                room::device(device),
                names::QR_OVERLAY_UPDATE,
                json!({"qrOverlay": overlay, "timestamp": iso_now()}),
            )
            .await;
    }

    /// `POST /api/push/broadcast`: any validated event name to every socket of the organisation,
    /// with a `timestamp` added to object payloads (the original's `broadcastToOrganization`).
    pub async fn broadcast_org(&self, org: &str, event: &str, mut data: Value) {
        if let Some(m) = data.as_object_mut() {
            m.entry("timestamp").or_insert_with(|| json!(iso_now()));
        }
        self.emitter.emit(room::org(org), event, data).await;
    }

    /// Whether a device holds a live socket anywhere in the cluster.
    pub async fn is_online(&self, devices: &[String]) -> Result<Vec<bool>, StoreError> {
        self.presence.online(devices).await
    }

    /// When each device was last heard from, as ISO-8601: the newer of the Redis status key
    /// (written by every lease step and heartbeat, so it is current) and `stored`, the
    /// database's `lastHeartbeat` (written later by the transition writer and the bulk flush,
    /// and the only record once the status key has expired). One round trip.
    pub async fn last_seen(
        &self,
        devices: &[String],
        stored: &[Option<chrono::NaiveDateTime>],
    ) -> Vec<Option<String>> {
        let live = self.state.statuses(devices).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Could not read device status keys; using the database.");
            Vec::new()
        });
        (0..devices.len())
            .map(|i| {
                let from_status = live
                    .get(i)
                    .and_then(Option::as_deref)
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .and_then(|s| s.get("lastHeartbeat").and_then(Value::as_i64))
                    .and_then(chrono::DateTime::from_timestamp_millis);
                let from_db = stored.get(i).copied().flatten().map(|t| t.and_utc());
                from_status.max(from_db).map(crate::wire::iso)
            })
            .collect()
    }
}

pub fn parse_commands(raw: Vec<String>) -> Vec<Value> {
    raw.into_iter()
        .filter_map(|c| serde_json::from_str(&c).ok())
        .collect()
}
