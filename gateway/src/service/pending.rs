//! What waits for a device that could not take a delivery at once: its command queue
//! (`device:commands:{id}`) and its pending playlist (`device:pending-playlist:{id}`), and
//! [`Delivery`], the answer that says whether a delivery was written or waits there. Shared by
//! `commands.rs`, `delivery.rs` and `relay.rs`, so none of them needs another for it.

use crate::wire::outgoing::Command;

/// Lifetime of `device:pending-playlist:{id}` (the original's 1800 s).
pub const PENDING_PLAYLIST_TTL_S: u64 = 1_800;

/// Where a command or a playlist push ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the device's socket.
    Delivered,
    /// Waiting for the device's next connect or heartbeat.
    Queued,
}

/// Queued commands as the queue holds them (JSON), oldest first; unreadable ones are skipped.
pub fn parse_commands(raw: Vec<String>) -> Vec<Command> {
    raw.iter().filter_map(|c| Command::parse(c)).collect()
}
