//! Commands and pushes: every command gets an `id`; a device with a live socket receives it as a
//! `command` event, any other device gets it queued (bounded, TTL) and delivered on its next
//! connect or heartbeat ack. Screenshot commands record their pending `requestId`.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::delivery::AckOutcome;
use super::pending::Delivery;
use super::{Gateway, playlist, room};
use crate::store::StoreError;
use crate::wire::iso_now;
use crate::wire::outgoing::{Command, Outgoing, PlaylistUpdate, QrOverlayUpdate};
use crate::wire::validate::is_request_id;

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
        if cmd.get("type").and_then(Value::as_str) == Some("screenshot") {
            let payload = cmd
                .entry("payload")
                .or_insert_with(|| Value::Object(Map::new()));
            let Some(p) = payload.as_object_mut() else {
                return Err(CommandError::Invalid("payload: must be an object".into()));
            };
            let request_id = match p.get("requestId") {
                None | Some(Value::Null) => {
                    let minted = uuid::Uuid::new_v4().simple().to_string();
                    p.insert("requestId".into(), Value::String(minted.clone()));
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
        let cmd = Command::new(&id, iso_now(), cmd);
        let delivery = self.deliver(device, &id, cmd).await?;
        Ok((id, delivery))
    }

    async fn deliver(&self, device: &str, id: &str, cmd: Command) -> Result<Delivery, StoreError> {
        // Live means a lease whose socket can receive room emits. A `pending` lease names a socket
        // still in its connect middleware, in no namespace yet on whichever replica holds it: an
        // emit now would be lost, so queue it; the socket drains the queue once it is in.
        let (lease, acked) = self.state.lease_and_ack(device).await?;
        let delivery = match lease {
            Some(l) if !l.pending && acked => {
                // Sockets that advertised `deliveryAck` must acknowledge it (their own, stronger
                // confirmation), else it goes back to the queue.
                match self.deliver_live(device, Outgoing::of(&cmd), true).await {
                    AckOutcome::Failed(why) => {
                        tracing::info!(device, reason = %why, "Command not acknowledged; queued for replay.");
                        self.requeue(device, std::slice::from_ref(&cmd)).await;
                        Delivery::Queued
                    }
                    _ => Delivery::Delivered,
                }
            }
            Some(l) if !l.pending => {
                // "delivered" only on the word of the replica that wrote it (`relay`).
                let target = super::relay::Target {
                    device,
                    sid: &l.sid,
                    claim: id,
                };
                let payload = super::relay::Payload::command(&cmd);
                self.deliver_confirmed(&l, &target, &payload).await?
            }
            _ => {
                self.state
                    .enqueue_command(
                        device,
                        &cmd.to_json(),
                        self.cfg.command_queue_max,
                        self.cfg.command_queue_ttl.as_millis() as u64,
                    )
                    .await?;
                Delivery::Queued
            }
        };
        self.metrics.command(match delivery {
            Delivery::Delivered => "delivered",
            Delivery::Queued => "queued",
        });
        Ok(delivery)
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
        let update = PlaylistUpdate {
            playlist: pl,
            timestamp: iso_now(),
        };
        Ok(self.deliver_playlist(device, &update).await)
    }

    pub async fn push_qr_overlay(&self, device: &str, overlay: Value) {
        self.emitter
            .emit(
                room::device(device),
                Outgoing::of(&QrOverlayUpdate {
                    qr_overlay: overlay,
                    timestamp: iso_now(),
                }),
            )
            .await;
    }

    /// `POST /api/push/broadcast`: any validated event name to every socket of the organisation,
    /// with a `timestamp` added to object payloads (the original's `broadcastToOrganization`).
    pub async fn broadcast_org(&self, org: &str, event: &str, data: Value) {
        let event = Outgoing::broadcast(event.to_string(), data, iso_now());
        self.emitter.emit(room::org(org), event).await;
    }

    /// Whether a device holds a live socket anywhere in the cluster.
    pub async fn is_online(&self, devices: &[String]) -> Result<Vec<bool>, StoreError> {
        self.presence.online(devices).await
    }

    /// `GET /api/internal/devices/{id}/presence`: whether the device holds a live socket, and
    /// when it was last heard from (Redis first, the database row as the fallback).
    pub async fn device_presence(&self, id: &str) -> Result<(bool, Option<String>), StoreError> {
        let ids = [id.to_string()];
        let online = self
            .is_online(&ids)
            .await?
            .first()
            .copied()
            .unwrap_or(false);
        let stored = self.db.org_last_heartbeat(id).await.ok().flatten();
        let last_seen = self.last_seen(&ids, &[stored]).await.pop().flatten();
        Ok((online, last_seen))
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
