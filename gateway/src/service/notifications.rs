//! Offline/online notifications (reference §5.4, with HEAD's fired marker): an offline notice is
//! scheduled on the offline transition, cancelled by a return within the grace delay, claimed
//! exactly once when due; a device returning after a fired notice gets one "back online" notice.

use std::sync::Arc;

use serde_json::json;

use super::{Gateway, room};
use crate::db::NewNotification;
use crate::store::OfflineNotice;
use crate::wire::outgoing::{DeviceOnlineNotification, Outgoing};
use crate::wire::{iso, iso_now};

const CLAIM_BATCH: usize = 100;

impl Gateway {
    /// Claims due offline notices and writes their rows.
    pub async fn notices_once(self: &Arc<Self>) {
        let due = match self.presence.claim_due_notices(CLAIM_BATCH).await {
            Ok(d) => d,
            Err(e) => {
                self.metrics.store_error("redis", "claim_notices");
                tracing::debug!(error = %e, "Claiming offline notices failed.");
                return;
            }
        };
        for mut n in due {
            // Notices are scheduled inside the lease scripts, which do not know device names.
            if n.device_name == n.device_id {
                n.device_name = self
                    .db
                    .device_name(&n.device_id)
                    .await
                    .unwrap_or_else(|_| n.device_id.clone());
            }
            let disconnected =
                chrono::DateTime::from_timestamp_millis(n.disconnected_at).unwrap_or_default();
            let row = NewNotification {
                kind: "device_offline".into(),
                title: "Device Offline".into(),
                message: format!("Device \"{}\" has gone offline.", n.device_name),
                severity: "warning".into(),
                metadata: json!({"deviceId": n.device_id, "deviceName": n.device_name, "disconnectedAt": iso(disconnected)}),
                organization_id: n.organization_id.clone(),
            };
            match self.db.insert_notification(&row).await {
                Ok(_) => self.metrics.notification("device_offline"),
                Err(e) => {
                    // Put it back a little later rather than lose it.
                    self.metrics.store_error("db", "notification");
                    tracing::warn!(device = %n.device_id, error = %e, "Offline notification insert failed; rescheduling.");
                    let retry = OfflineNotice {
                        scheduled_for: crate::store::now_ms() + 5_000,
                        ..n
                    };
                    let _ = self.presence.schedule_offline_notice(&retry).await;
                }
            }
        }
    }

    /// The "back online" notice after a fired offline notice.
    pub(crate) async fn online_notification(&self, device: &str, org: &str) {
        let name = self
            .db
            .device_name(device)
            .await
            .unwrap_or_else(|_| device.to_string());
        let row = NewNotification {
            kind: "device_online".into(),
            title: "Device Online".into(),
            message: format!("Device \"{name}\" is back online."),
            severity: "info".into(),
            metadata: json!({"deviceId": device, "deviceName": name}),
            organization_id: org.into(),
        };
        if let Err(e) = self.db.insert_notification(&row).await {
            self.metrics.store_error("db", "notification");
            tracing::warn!(device, error = %e, "Online notification insert failed.");
            return;
        }
        self.metrics.notification("device_online");
        let event = DeviceOnlineNotification::new(device, name, iso_now());
        self.emitter
            .emit(room::dashboards(org), Outgoing::of(&event))
            .await;
    }
}
