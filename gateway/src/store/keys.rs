//! Where the Redis store's keys live: today's names on one primary, or hash-tagged shards on a
//! Redis Cluster.
//!
//! A Lua script (or a `MULTI`) may only touch keys of one hash slot in a cluster, and the lease
//! scripts write a device's keys together with fleet-wide sets (presence deadlines, offline
//! notices, the sweep's tick and grace). So in [`Keyspace::Sharded`] every device belongs to one
//! of [`SHARDS`] shards, and every key a script touches together carries that shard's hash tag
//! `{vz:NNN}`: the device's own keys and the shard's sets. Each script then runs in one slot, the
//! 256 tags spread over the primaries, and the sweep, the notice claim and the impression drain
//! cover every shard. No key holds the whole fleet.
//!
//! [`Keyspace::Single`] gives exactly the names of the contract (reference §5.2 plus the lease
//! keys): the single-primary and Sentinel deployments are unchanged. Keys the middleware writes
//! (`revoked_token:{jti}`, `user_revoked:{sub}`, `pwd_changed:{sub}`) keep their names in both:
//! they are read one at a time, which works on any slot.

use std::fmt::Write as _;

/// Shards of a sharded keyspace: well above any sensible number of primaries, so the slots the
/// tags hash to spread evenly. Part of the key names: changing it moves every key.
pub const SHARDS: u16 = 256;

/// FNV-1a, 32 bits: small, stable across languages (the middleware can compute the same tag,
/// see docs/operations.md), and spreads short ids well.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The shard a device's keys live in (sharded keyspace).
pub fn shard_of(device: &str) -> u16 {
    (fnv1a32(device.as_bytes()) % u32::from(SHARDS)) as u16
}

/// How the Redis store names its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyspace {
    /// One primary (`REDIS_URL`, Sentinel): the contract's names.
    Single,
    /// Redis Cluster: every key of a device or a shard starts with the shard's hash tag.
    Sharded,
}

impl Keyspace {
    /// The shard `device` belongs to (always 0 in a single keyspace).
    pub fn shard(self, device: &str) -> u16 {
        match self {
            Keyspace::Single => 0,
            Keyspace::Sharded => shard_of(device),
        }
    }

    /// Every shard, for the jobs that must cover the whole fleet (sweep, notices, outbox).
    pub fn shards(self) -> std::ops::Range<u16> {
        match self {
            Keyspace::Single => 0..1,
            Keyspace::Sharded => 0..SHARDS,
        }
    }

    /// What every key of `shard` starts with: nothing, or its hash tag `{vz:NNN}`.
    pub fn prefix(self, shard: u16) -> Prefix {
        let mut p = String::new();
        if self == Keyspace::Sharded {
            let _ = write!(p, "{{vz:{shard:03}}}");
        }
        Prefix(p)
    }

    /// The prefix of `device`'s keys.
    pub fn of(self, device: &str) -> Prefix {
        self.prefix(self.shard(device))
    }
}

/// A key prefix (empty in a single keyspace), with the names built on it. The names after the
/// prefix are the contract's; this is the one place they are spelt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix(String);

/// The single keyspace's (empty) prefix: the contract's names as they are.
pub const SINGLE: Prefix = Prefix(String::new());

impl Prefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// One allocation per key (these are built on the heartbeat path).
    fn key(&self, name: std::fmt::Arguments<'_>) -> String {
        let mut k = String::with_capacity(self.0.len() + 64);
        k.push_str(&self.0);
        let _ = k.write_fmt(name);
        k
    }

    // A device's keys.
    pub fn epoch(&self, d: &str) -> String {
        self.key(format_args!("device:epoch:{d}"))
    }
    pub fn lease(&self, d: &str) -> String {
        self.key(format_args!("device:lease:{d}"))
    }
    pub fn status(&self, d: &str) -> String {
        self.key(format_args!("device:status:{d}"))
    }
    pub fn latest(&self, d: &str) -> String {
        self.key(format_args!("heartbeat:{d}:latest"))
    }
    pub fn commands(&self, d: &str) -> String {
        self.key(format_args!("device:commands:{d}"))
    }
    pub fn offline_notice(&self, d: &str) -> String {
        self.key(format_args!("notify:offline:{d}"))
    }
    pub fn fired_offline(&self, d: &str) -> String {
        self.key(format_args!("notify:fired-offline:{d}"))
    }
    pub fn token_marker(&self, d: &str) -> String {
        self.key(format_args!("device:token:current:{d}"))
    }
    pub fn token_grace(&self, d: &str) -> String {
        self.key(format_args!("device:token:grace:{d}"))
    }
    pub fn token_cooldown(&self, d: &str) -> String {
        self.key(format_args!("device:token:refresh-cooldown:{d}"))
    }
    pub fn pending_playlist(&self, d: &str) -> String {
        self.key(format_args!("device:pending-playlist:{d}"))
    }
    pub fn delivery_ack(&self, d: &str) -> String {
        self.key(format_args!("device:delivery-ack:{d}"))
    }
    pub fn playlist(&self, d: &str) -> String {
        self.key(format_args!("playlist:{d}"))
    }
    pub fn screenshot(&self, d: &str, request_id: &str) -> String {
        self.key(format_args!("screenshot:pending:{d}:{request_id}"))
    }
    pub fn errors(&self, d: &str) -> String {
        self.key(format_args!("errors:device:{d}"))
    }
    pub fn impressions(&self, d: &str, date: &str) -> String {
        self.key(format_args!("stats:device:{d}:impressions:{date}"))
    }

    // A shard's sets (the whole fleet's, in a single keyspace).
    pub fn deadlines(&self) -> String {
        self.key(format_args!("presence:deadlines"))
    }
    pub fn notices_due(&self) -> String {
        self.key(format_args!("notify:due"))
    }
    pub fn sweep_tick(&self) -> String {
        self.key(format_args!("presence:sweep-tick"))
    }
    pub fn grace_until(&self) -> String {
        self.key(format_args!("presence:grace-until"))
    }
    pub fn outbox(&self) -> String {
        self.key(format_args!("{}", super::outbox::OUTBOX_KEY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_keyspace_keeps_the_contract_names() {
        let p = Keyspace::Single.of("dev-1");
        assert_eq!(p.lease("dev-1"), "device:lease:dev-1");
        assert_eq!(p.status("dev-1"), "device:status:dev-1");
        assert_eq!(p.commands("dev-1"), "device:commands:dev-1");
        assert_eq!(p.offline_notice("dev-1"), "notify:offline:dev-1");
        assert_eq!(p.deadlines(), "presence:deadlines");
        assert_eq!(p.outbox(), "impressions:outbox");
        assert_eq!(Keyspace::Single.shards(), 0..1);
    }

    #[test]
    fn a_device_and_its_shard_sets_share_one_hash_tag() {
        let ks = Keyspace::Sharded;
        let p = ks.of("dev-1");
        let tag = format!("{{vz:{:03}}}", shard_of("dev-1"));
        for k in [
            p.lease("dev-1"),
            p.epoch("dev-1"),
            p.status("dev-1"),
            p.deadlines(),
            p.notices_due(),
            p.outbox(),
            p.impressions("dev-1", "2026-12-06"),
        ] {
            assert!(k.starts_with(&tag), "{k}");
        }
        // A device id with braces cannot move its keys to another slot: the tag comes first.
        assert!(ks.of("{x}").lease("{x}").starts_with("{vz:"));
    }

    #[test]
    fn shards_spread_and_the_hash_is_fnv1a() {
        // Reference values of FNV-1a 32 (the middleware's implementation must agree).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        let mut seen = std::collections::HashSet::new();
        for i in 0..5_000 {
            seen.insert(shard_of(&format!("device-{i}")));
        }
        assert_eq!(seen.len(), usize::from(SHARDS));
    }
}
