//! Who may join which room (contract §3): a dashboard its own organisation and the device rooms
//! of its organisation; a device only its own rooms; nothing else.

use super::Gateway;
use crate::auth::Principal;

/// A refusal: the ack's error string and the `error` event's message (the original's wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub ack: &'static str,
    pub event: &'static str,
}

pub const DEVICE_ROOM_DENIED: Refused = Refused {
    ack: "Unauthorized: cannot join this device room",
    event: "Unauthorized: cannot join this device room",
};
pub const ORG_DENIED: Refused = Refused {
    ack: "Unauthorized: organization mismatch",
    event: "Unauthorized: you do not belong to this organization",
};
pub const INVALID_ROOM: Refused = Refused {
    ack: "Invalid room name",
    event: "Invalid room name",
};

/// Whether `room` is a pattern clients may name at all.
pub fn is_client_room(room: &str) -> bool {
    room.strip_prefix("device:")
        .or_else(|| room.strip_prefix("org:"))
        .is_some_and(crate::auth::valid_id)
}

impl Gateway {
    pub async fn may_join(&self, who: &Principal, room: &str) -> Result<(), Refused> {
        if let Some(id) = room
            .strip_prefix("device:")
            .filter(|id| crate::auth::valid_id(id))
        {
            return match who {
                Principal::Device(d) if d.device_id == id => Ok(()),
                Principal::Device(_) => Err(DEVICE_ROOM_DENIED),
                Principal::User(u) => match self.db.device_org(id).await {
                    Ok(Some(org)) if org == u.organization_id => Ok(()),
                    _ => Err(DEVICE_ROOM_DENIED),
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
                Err(ORG_DENIED)
            };
        }
        Err(INVALID_ROOM)
    }
}
