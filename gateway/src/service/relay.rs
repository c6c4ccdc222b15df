//! Confirmed delivery across replicas (contract §6, design "Confirmed delivery").
//!
//! Pub/sub is fire-and-forget: a command published into the adapter for a socket whose replica
//! is cut off, frozen or about to replace its connection is lost, yet the API used to answer
//! `delivered`. So a command (or a playlist push) for a device whose lease names another replica
//! is sent to that replica alone, on its `deliver` channel, and the sender waits a short bound
//! for the owner's confirmation on its own `confirm` channel:
//!
//! - the owner acts only after winning the delivery's claim key (`SET NX`): it hands the event
//!   to the socket if it holds it and no close path marked it leaving (drain, fencing,
//!   rebalancing), and otherwise queues it itself, so a claimed delivery is never dropped;
//! - an owner that cannot act (the socket is not here, it is draining) declines without
//!   claiming; no confirmation within the bound (the owner is frozen, cut off or gone) makes
//!   the sender claim it. Either way the sender, if it wins the claim, queues it (`queued`), and
//!   a late request then loses the claim at the owner and writes nothing: nothing runs twice;
//! - so the API says `delivered` only on the owner's word that it wrote the event, and when the
//!   owner won the claim but its confirmation was lost, the sender says `queued` although the
//!   owner wrote or queued it: the answer errs on the safe side, the command runs once.
//!   What remains is a frame written an instant before a close path marked its socket leaving:
//!   it can be lost with the transport (never doubled); the original's players do not
//!   deduplicate by `commandId`, so a lost frame is the cheaper failure.
//!
//! Messages are small JSON documents; the channels are per replica, so a request reaches one
//! process, not the fleet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Gateway;
use super::pending::{Delivery, PENDING_PLAYLIST_TTL_S};
use crate::store::StoreError;
use crate::wire::outgoing::{Command, Outgoing, PlaylistUpdate};

/// Whom a delivery is for: the device, its socket (from its lease) and the claim key's name.
pub struct Target<'a> {
    pub device: &'a str,
    pub sid: &'a str,
    /// One per delivery: the command id, or an id minted for a playlist push.
    pub claim: &'a str,
}

/// How long a delivery claim is kept: longer than any request can sit in a frozen connection's
/// buffers and still be acted on by a process that wakes up.
const CLAIM_TTL_MS: u64 = 600_000;

/// The publish side of the replicas' request channels (the adapter's pub/sub connection).
#[async_trait]
pub trait RelayBus: Send + Sync + 'static {
    /// Publishes `payload`; `Ok(n)` is the number of subscribers that received it.
    async fn publish(&self, channel: String, payload: Vec<u8>) -> Result<u64, String>;
}

/// Where replica `replica` listens for deliveries.
pub fn deliver_channel(replica: &str) -> String {
    format!("vizora-gw:deliver:{replica}")
}

/// Where replica `replica` listens for confirmations of the deliveries it asked for.
pub fn confirm_channel(replica: &str) -> String {
    format!("vizora-gw:confirm:{replica}")
}

/// What is delivered: a command, or a playlist pushed to one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Payload {
    Command { json: String },
    Playlist { update: PlaylistUpdate },
}

impl Payload {
    pub fn command(c: &Command) -> Payload {
        Payload::Command { json: c.to_json() }
    }

    fn outgoing(&self) -> Option<Outgoing> {
        match self {
            Payload::Command { json } => Command::parse(json).map(|c| Outgoing::of(&c)),
            Payload::Playlist { update } => Some(Outgoing::of(update)),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// Request id (the sender's counter), echoed in the confirmation.
    id: u64,
    /// The sender's replica id: where the confirmation goes.
    from: String,
    /// The claim key's name: one per delivery (the command id, or a minted one).
    claim: String,
    device: String,
    sid: String,
    payload: Payload,
}

#[derive(Debug, Serialize, Deserialize)]
struct Confirmation {
    id: u64,
    outcome: Remote,
}

/// What the owner did with a relayed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    /// The owner claimed it and wrote it to a socket that is not leaving.
    Written,
    /// The owner claimed it but could not write it, and queued it.
    Queued,
    /// The owner did not claim it (no writable socket there, draining, or the claim was lost).
    Declined,
    /// No answer within the bound (the owner is frozen, cut off or gone).
    NoAnswer,
}

/// This replica's side of the relay: the bus (cluster mode only) and the confirmations awaited.
pub struct Relay {
    bus: OnceLock<Box<dyn RelayBus>>,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Remote>>>,
    timeout: Duration,
}

impl Relay {
    pub fn new(timeout: Duration) -> Relay {
        Relay {
            bus: OnceLock::new(),
            next: AtomicU64::new(1),
            waiting: Mutex::default(),
            timeout,
        }
    }

    /// The confirmation bound (`DELIVERY_CONFIRM_TIMEOUT_MS`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Remote>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Gateway {
    /// Connects the relay to the cluster's pub/sub (cluster mode; `app::run` does it once).
    pub fn set_relay_bus(&self, bus: Box<dyn RelayBus>) {
        let _ = self.relay.bus.set(bus);
    }

    /// Hands `payload` to socket `sid` if this replica holds it and nothing is closing it:
    /// what "written" means for the API's `delivered`.
    fn write_here(&self, sid: &str, payload: &Payload) -> bool {
        if self.is_draining() {
            return false;
        }
        match payload.outgoing() {
            Some(event) => self.emitter.write_to_local_socket(sid, &event),
            None => false,
        }
    }

    /// Sends `payload` for socket `sid` to `owner` and waits for its confirmation, up to the
    /// bound.
    async fn relay_to(&self, owner: &str, target: &Target<'_>, payload: &Payload) -> Remote {
        let Some(bus) = self.relay.bus.get() else {
            return Remote::Declined;
        };
        let id = self.relay.next.fetch_add(1, Ordering::Relaxed);
        let req = Request {
            id,
            from: self.cfg.replica_id.clone(),
            claim: target.claim.to_string(),
            device: target.device.to_string(),
            sid: target.sid.to_string(),
            payload: payload.clone(),
        };
        let Ok(bytes) = serde_json::to_vec(&req) else {
            return Remote::Declined;
        };
        let (tx, rx) = oneshot::channel();
        self.relay.waiting().insert(id, tx);
        let started = tokio::time::Instant::now();
        let answer = match bus.publish(deliver_channel(owner), bytes).await {
            // Nobody listens there (the owner is gone), or no Redis: no point waiting.
            Ok(0) | Err(_) => Remote::Declined,
            Ok(_) => match tokio::time::timeout(self.relay.timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) | Err(_) => Remote::NoAnswer,
            },
        };
        self.relay.waiting().remove(&id);
        self.metrics
            .delivery_confirmation(answer_label(answer), started.elapsed().as_secs_f64());
        answer
    }

    /// Claims a delivery for this replica (the owner before writing, the sender before falling
    /// back to the queue): only the winner acts.
    async fn claim_delivery(&self, claim: &str) -> Result<bool, crate::store::StoreError> {
        self.presence
            .try_lock(
                &format!("delivery:{claim}"),
                &self.cfg.replica_id,
                CLAIM_TTL_MS,
            )
            .await
    }

    /// Delivers `payload` to the device's live socket named by its lease, confirmed: `Delivered`
    /// only once the replica holding the socket wrote it (this one, or the owner by its word);
    /// otherwise it is queued under the device's queue rules and the answer is `Queued`.
    pub(super) async fn deliver_confirmed(
        &self,
        lease: &crate::store::Lease,
        target: &Target<'_>,
        payload: &Payload,
    ) -> Result<Delivery, StoreError> {
        if lease.replica == self.cfg.replica_id {
            if self.write_here(target.sid, payload) {
                return Ok(Delivery::Delivered);
            }
            self.keep_for_later(target.device, payload).await?;
            return Ok(Delivery::Queued);
        }
        let fallback = match self.relay_to(&lease.replica, target, payload).await {
            Remote::Written => return Ok(Delivery::Delivered),
            Remote::Queued => return Ok(Delivery::Queued),
            Remote::Declined => "declined",
            Remote::NoAnswer => "timeout",
        };
        self.metrics.delivery_fallback(fallback);
        if self.claim_delivery(target.claim).await? {
            self.keep_for_later(target.device, payload).await?;
        }
        // Lost the claim: the owner took it late and wrote or queued it. Not confirmed written,
        // so not called delivered.
        Ok(Delivery::Queued)
    }

    /// Keeps a delivery that could not be written for the device's next connect (or heartbeat):
    /// a command in its queue, a playlist as its pending playlist.
    async fn keep_for_later(&self, device: &str, payload: &Payload) -> Result<(), StoreError> {
        match payload {
            Payload::Command { json } => {
                self.state
                    .enqueue_command(
                        device,
                        json,
                        self.cfg.command_queue_max,
                        self.cfg.command_queue_ttl.as_millis() as u64,
                    )
                    .await
            }
            Payload::Playlist { update } => {
                let kept = Outgoing::of(update).data().to_string();
                self.state
                    .set_pending_playlist(device, &kept, PENDING_PLAYLIST_TTL_S)
                    .await
            }
        }
    }

    /// A message on this replica's `deliver` or `confirm` channel.
    pub async fn on_relay_message(&self, channel: &str, payload: &[u8]) {
        if channel == confirm_channel(&self.cfg.replica_id) {
            if let Ok(c) = serde_json::from_slice::<Confirmation>(payload)
                && let Some(tx) = self.relay.waiting().remove(&c.id)
            {
                let _ = tx.send(c.outcome);
            }
            return;
        }
        let Ok(req) = serde_json::from_slice::<Request>(payload) else {
            tracing::warn!("Malformed delivery request on the relay channel; ignored.");
            return;
        };
        let outcome = self.deliver_relayed(&req).await;
        let Some(bus) = self.relay.bus.get() else {
            return;
        };
        let reply = Confirmation {
            id: req.id,
            outcome,
        };
        if let Ok(bytes) = serde_json::to_vec(&reply)
            && let Err(e) = bus.publish(confirm_channel(&req.from), bytes).await
        {
            tracing::debug!(error = %e, "Could not confirm a relayed delivery.");
        }
    }

    /// The owner's side: act only with the claim; write a socket that can take it, else queue.
    async fn deliver_relayed(&self, req: &Request) -> Remote {
        if self.is_draining() || !self.emitter.is_local(&req.sid) {
            return Remote::Declined;
        }
        match self.claim_delivery(&req.claim).await {
            Ok(true) => {}
            // The sender gave up and claimed it first (it is queued), or Redis cannot say:
            // acting now could run the command twice.
            Ok(false) | Err(_) => return Remote::Declined,
        }
        if self.write_here(&req.sid, &req.payload) {
            return Remote::Written;
        }
        // Claimed but the socket left meanwhile: nobody else will act on it, so queue it here.
        match self.keep_for_later(&req.device, &req.payload).await {
            Ok(()) => Remote::Queued,
            Err(_) => Remote::Declined,
        }
    }
}

fn answer_label(a: Remote) -> &'static str {
    match a {
        Remote::Written => "written",
        Remote::Queued => "queued",
        Remote::Declined => "declined",
        Remote::NoAnswer => "timeout",
    }
}
