//! Acknowledged delivery (contract §10) for the latest players, which advertise `deliveryAck` in
//! `auth.capabilities` and join `device-ack:{id}`: `playlist:update` and `command` are emitted
//! with a Socket.IO ack, wherever the socket lives (the adapter carries acks across replicas). A
//! timeout or `{ok:false}` puts the command back in `device:commands:{id}` and the playlist in
//! `device:pending-playlist:{id}`; both are replayed as events on the next connect or heartbeat.
//! Older clients get plain emits, exactly as before.

use std::sync::Arc;

use serde_json::Value;

use super::pending::{Delivery, PENDING_PLAYLIST_TTL_S, parse_commands};
use super::{Gateway, room};
use crate::store::TakeQueued;
use crate::wire::iso_now;
use crate::wire::outgoing::{Command, Outgoing, PlaylistUpdate};

/// What an acknowledged emit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// No acknowledging socket was reached.
    NoSocket,
    /// At least one socket acknowledged it.
    Acked,
    /// Every socket reached timed out or answered `{ok:false}`.
    Failed(String),
}

/// An ack counts unless it says `ok:false` (the players answer `{ok, error?}`).
fn positive(v: &Value) -> bool {
    v.get("ok") != Some(&Value::Bool(false))
}

impl Gateway {
    /// Emits with an ack to `room` and judges the answers.
    async fn emit_acked(&self, room: String, event: Outgoing) -> AckOutcome {
        let results = self
            .emitter
            .emit_with_ack(room, event, self.cfg.delivery_ack_timeout)
            .await;
        if results.is_empty() {
            return AckOutcome::NoSocket;
        }
        if results.iter().any(|r| matches!(r, Ok(v) if positive(v))) {
            return AckOutcome::Acked;
        }
        let why = results
            .iter()
            .map(|r| match r {
                Ok(v) => v
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("negative_ack")
                    .to_string(),
                Err(_) => "ack_timeout".to_string(),
            })
            .next()
            .unwrap_or_default();
        AckOutcome::Failed(why)
    }

    /// An event for a device. When its live socket acknowledges deliveries (`acked`, read with
    /// the lease in one round trip): acknowledged to `device-ack:{id}`, plain to whatever else is
    /// in the device room; otherwise a plain emit exactly as for older clients (`NoSocket`), so
    /// fleets of older players pay nothing for acknowledgements.
    pub(super) async fn deliver_live(
        &self,
        device: &str,
        event: Outgoing,
        acked: bool,
    ) -> AckOutcome {
        if !acked {
            self.emitter.emit(room::device(device), event).await;
            return AckOutcome::NoSocket;
        }
        self.emitter
            .emit_except(
                room::device(device),
                room::device_acked(device),
                event.clone(),
            )
            .await;
        self.emit_acked(room::device_acked(device), event).await
    }

    /// `POST /api/push/playlist`'s delivery: `Queued` when acknowledging sockets did not
    /// acknowledge it (it is then kept for replay).
    pub(super) async fn deliver_playlist(&self, device: &str, update: &PlaylistUpdate) -> Delivery {
        let (lease, acked) = match self.state.lease_and_ack(device).await {
            Ok((Some(l), acked)) if !l.pending => (Some(l), acked),
            _ => (None, false),
        };
        match lease {
            Some(l) if !acked => {
                // "delivered" only on the word of the replica that wrote it (`relay`).
                let claim = uuid::Uuid::new_v4().to_string();
                let target = super::relay::Target {
                    device,
                    sid: &l.sid,
                    claim: &claim,
                };
                let payload = super::relay::Payload::Playlist {
                    update: update.clone(),
                };
                self.deliver_confirmed(&l, &target, &payload)
                    .await
                    .unwrap_or_else(|e| {
                        self.metrics.store_error("redis", "pending_playlist");
                        tracing::warn!(device, error = %e, "Could not keep an undelivered playlist.");
                        Delivery::Queued
                    })
            }
            _ => match self.deliver_live(device, Outgoing::of(update), acked).await {
                AckOutcome::NoSocket | AckOutcome::Acked => Delivery::Delivered,
                AckOutcome::Failed(why) => {
                    tracing::info!(device, reason = %why, "Playlist not acknowledged; kept for replay.");
                    self.keep_playlist(device, update).await;
                    Delivery::Queued
                }
            },
        }
    }

    async fn keep_playlist(&self, device: &str, update: &PlaylistUpdate) {
        let kept = Outgoing::of(update).data().to_string();
        if let Err(e) = self
            .state
            .set_pending_playlist(device, &kept, PENDING_PLAYLIST_TTL_S)
            .await
        {
            self.metrics.store_error("redis", "pending_playlist");
            tracing::warn!(device, error = %e, "Could not keep an unacknowledged playlist.");
        }
    }

    /// Puts commands back in the queue (after a failed acknowledged delivery).
    pub(super) async fn requeue(&self, device: &str, cmds: &[Command]) {
        for c in cmds {
            if let Err(e) = self
                .state
                .enqueue_command(
                    device,
                    &c.to_json(),
                    self.cfg.command_queue_max,
                    self.cfg.command_queue_ttl.as_millis() as u64,
                )
                .await
            {
                self.metrics.store_error("redis", "requeue");
                tracing::warn!(device, error = %e, "Could not re-queue an unacknowledged command.");
            }
            self.metrics.command("requeued");
        }
    }

    /// What connecting socket `sid` has waiting: queued commands, oldest first, and — for a
    /// client that sent `auth.capabilities` (`playlist`) — a playlist kept from a failed
    /// acknowledged delivery. With `ack_sid`, that socket becomes the device's acknowledging one
    /// in the same round trip. A socket no longer registered here takes nothing.
    pub async fn take_queued(
        &self,
        device: &str,
        sid: &str,
        playlist: bool,
        ack_sid: Option<&str>,
    ) -> (Vec<Command>, Option<PlaylistUpdate>) {
        let Some(epoch) = self.live.epoch(sid) else {
            return (Vec::new(), None);
        };
        let take = TakeQueued {
            device,
            epoch,
            playlist,
            ack_sid,
        };
        match self.state.take_queued(&take).await {
            Ok(q) => (
                parse_commands(q.commands),
                q.playlist.and_then(|p| serde_json::from_str(&p).ok()),
            ),
            Err(e) => {
                self.metrics.store_error("redis", "take_queued");
                tracing::warn!(device, error = %e, "Could not take queued deliveries.");
                (Vec::new(), None)
            }
        }
    }

    /// Replays to one socket of a client that sent `auth.capabilities`: the playlist, then the
    /// commands, as events (acknowledged when it advertised `deliveryAck`; whatever is not
    /// acknowledged goes back for the next replay). Runs off the handler's path.
    pub fn replay_to_socket(
        self: &Arc<Self>,
        device: &str,
        sid: &str,
        acked: bool,
        playlist: Option<PlaylistUpdate>,
        commands: Vec<Command>,
    ) {
        if playlist.is_none() && commands.is_empty() {
            return;
        }
        let (gw, device, target) = (self.clone(), device.to_string(), room::socket(sid));
        self.tasks().spawn(async move {
            if let Some(mut p) = playlist {
                p.timestamp = iso_now();
                if acked {
                    let out = gw.emit_acked(target.clone(), Outgoing::of(&p)).await;
                    if out != AckOutcome::Acked {
                        gw.keep_playlist(&device, &p).await;
                    }
                } else {
                    gw.emitter.emit(target.clone(), Outgoing::of(&p)).await;
                }
            }
            for (i, c) in commands.iter().enumerate() {
                if !acked {
                    gw.emitter.emit(target.clone(), Outgoing::of(c)).await;
                    gw.metrics.command("delivered");
                    continue;
                }
                match gw.emit_acked(target.clone(), Outgoing::of(c)).await {
                    AckOutcome::Acked => gw.metrics.command("delivered"),
                    other => {
                        tracing::info!(device, outcome = ?other, "Command not acknowledged; re-queued.");
                        gw.requeue(&device, &commands[i..]).await;
                        break;
                    }
                }
            }
        });
    }
}
