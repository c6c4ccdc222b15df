//! Who may join which room (contract §3): a dashboard its own organisation and the device rooms
//! of its organisation; a device only its own rooms; nothing else.

use super::Gateway;
use crate::auth::Principal;

/// Why a join is refused. The wording the client sees (ack and `error` event) is the socket
/// edge's (`socket::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A device room of another device, or of another organisation's device.
    DeviceRoom,
    /// An organisation that is not the principal's.
    OrganizationMismatch,
    /// Not a room pattern clients may name.
    InvalidRoom,
}

/// Whether `room` is a pattern clients may name at all.
pub fn is_client_room(room: &str) -> bool {
    room.strip_prefix("device:")
        .or_else(|| room.strip_prefix("org:"))
        .is_some_and(crate::auth::valid_id)
}

impl Gateway {
    /// `join:organization`: only the principal's own organisation.
    pub fn may_join_organization(&self, who: &Principal, org: &str) -> Result<(), Refused> {
        if org == who.organization_id() {
            Ok(())
        } else {
            Err(Refused::OrganizationMismatch)
        }
    }

    pub async fn may_join(&self, who: &Principal, room: &str) -> Result<(), Refused> {
        if let Some(id) = room
            .strip_prefix("device:")
            .filter(|id| crate::auth::valid_id(id))
        {
            return match who {
                Principal::Device(d) if d.device_id == id => Ok(()),
                Principal::Device(_) => Err(Refused::DeviceRoom),
                Principal::User(u) => match self.db.device_org(id).await {
                    Ok(Some(org)) if org == u.organization_id => Ok(()),
                    _ => Err(Refused::DeviceRoom),
                },
            };
        }
        if let Some(id) = room
            .strip_prefix("org:")
            .filter(|id| crate::auth::valid_id(id))
        {
            return if id == who.organization_id() {
                Ok(())
            } else {
                Err(Refused::OrganizationMismatch)
            };
        }
        Err(Refused::InvalidRoom)
    }
}
