//! Rebalancing (cluster mode): screens hold their connection for days, so a replica that joins
//! (by hand or through the HPA) would otherwise get only new connections. Each replica publishes
//! its socket counts in the shared store; one whose device sockets exceed the mean of the ready
//! replicas by more than `REBALANCE_TOLERANCE` closes some of their transports, at most
//! `REBALANCE_MAX_PER_S` a second, until it is back to half the tolerance above the mean; while
//! it does so it answers new handshakes 503 `server_busy`, so a screen it sheds lands elsewhere.
//! ARCHITECTURE.md, "Rebalancing", has the rule and why each part of it holds.
//!
//! `app::spawn_rebalancing` drives it: every tick (about a second, with jitter) it calls
//! [`Gateway::rebalance_once`], which writes this replica's [`LoadRecord`], reads everyone's and
//! applies [`plan`]; the caller then closes the transports of that many device sockets, oldest
//! first, each marked leaving first (so its lease is handed over, as the drain does).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Gateway;
use crate::store::now_ms;

/// How often a replica publishes its load and decides (jittered by ±25 %).
pub const TICK: Duration = Duration::from_secs(1);
/// A record not rewritten for this long (three ticks) of the reader's time is a replica gone.
pub const STALE: Duration = Duration::from_secs(3);
/// A replica starts shedding only after being above the high mark for this long: a peer that
/// just died still counts in the mean until its record is seen stale (its last change can be
/// seen a tick after it was written, and staleness is checked at ticks), and the survivors that
/// absorb its screens must not shed them meanwhile.
pub const HOLD: Duration = Duration::from_secs(6);
/// After an episode, the replica still refuses handshakes at the mean for this long: the screens
/// it shed last are still looking for a replica (socket.io-client waits 0.5–1.5 s, then longer).
pub const COOLDOWN: Duration = Duration::from_secs(5);
/// Records of replicas not heard from for this long are deleted from the shared hash.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// When each peer's record last changed, on this replica's clock: the age of a record without
/// comparing two replicas' clocks.
#[derive(Default)]
pub struct Freshness {
    seen: HashMap<String, (i64, Instant)>,
}

impl Freshness {
    /// Keeps the records that changed within `STALE` (a record seen for the first time counts
    /// as changed now); answers them and the ids of records unchanged for `FORGET_AFTER`.
    pub fn filter(
        &mut self,
        records: Vec<(String, LoadRecord)>,
        now: Instant,
    ) -> (Vec<(String, LoadRecord)>, Vec<String>) {
        let mut live = Vec::new();
        let mut gone = Vec::new();
        let mut present = HashSet::new();
        for (id, r) in records {
            present.insert(id.clone());
            let slot = self.seen.entry(id.clone()).or_insert((r.at, now));
            if slot.0 != r.at {
                *slot = (r.at, now);
            }
            let age = now.saturating_duration_since(slot.1);
            if age <= STALE {
                live.push((id, r));
            } else if age > FORGET_AFTER {
                gone.push(id);
            }
        }
        self.seen.retain(|id, _| present.contains(id));
        (live, gone)
    }
}

/// One replica's entry in `replicas:load`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadRecord {
    /// Live device sockets, not counting those already leaving.
    pub devices: u64,
    pub dashboards: u64,
    /// What its readiness answers: 200 unless draining or fenced.
    pub ready: bool,
    pub draining: bool,
    pub fenced: bool,
    /// It is shedding right now.
    pub shedding: bool,
    /// When the replica started (ms, its wall clock).
    pub started_at: i64,
    /// When the record was written (ms, its wall clock). Readers never compare it with their
    /// own clock: a record whose `at` has not changed for [`STALE`] of the reader's time is
    /// ignored (the replica died or is cut off; see [`Freshness`]).
    pub at: i64,
}

/// The rule's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// `REBALANCE_TOLERANCE`.
    pub tolerance: f64,
    /// `REBALANCE` on, and this replica started longer ago than the grace.
    pub may_shed: bool,
}

/// What one tick decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// This replica's device sockets over the mean of the ready replicas (None: fewer than two
    /// ready replicas, or no device at all).
    pub ratio: Option<f64>,
    /// Shed down to this many device sockets (None: do not shed).
    pub target: Option<u64>,
    /// Refuse new handshakes once this replica holds this many device sockets (None: never).
    /// While it sheds that is 0; while a peer sheds, the mean (rounded up), so the screens that
    /// peer sheds land on the replicas below the mean, not on one that has just stopped shedding.
    pub busy_at: Option<u64>,
    /// The mean of device sockets over the ready replicas, rounded up (None: no mean).
    pub fair: Option<u64>,
}

/// The rule. `me` is this replica's fresh record, `others` the live peers' (this replica's own
/// entry among them is skipped; [`Freshness`] has dropped the records of replicas gone). Over the *ready*
/// replicas (not draining, not fenced) the mean of device sockets gives a high mark (mean ×
/// (1 + tolerance)) and a low mark (mean × (1 + tolerance/2)). A replica that is not shedding
/// starts above the high mark; one that is goes on while above the low mark (hysteresis), and its
/// target is the low mark. Nobody sheds while any replica drains or is fenced (a rolling update
/// or the fence moves screens already), with fewer than two ready replicas, or unless
/// `rule.may_shed`.
pub fn plan(
    me_id: &str,
    me: &LoadRecord,
    others: &[(String, LoadRecord)],
    shedding: bool,
    rule: Rule,
) -> Plan {
    let live: Vec<&LoadRecord> = std::iter::once(me)
        .chain(others.iter().filter(|(id, _)| id != me_id).map(|(_, r)| r))
        .collect();
    let counted = |r: &&LoadRecord| r.ready && !r.draining && !r.fenced;
    let ready: Vec<&LoadRecord> = live.iter().copied().filter(counted).collect();
    let none = Plan {
        ratio: None,
        target: None,
        busy_at: None,
        fair: None,
    };
    if ready.len() < 2 || !counted(&me) {
        return none;
    }
    let total: u64 = ready.iter().map(|r| r.devices).sum();
    if total == 0 {
        return none;
    }
    let mean = total as f64 / ready.len() as f64;
    let ratio = Some(me.devices as f64 / mean);
    let fair = Some((mean - 1e-9).ceil().max(0.0) as u64);
    let quiet = live.iter().any(|r| r.draining || r.fenced);
    if quiet || !rule.may_shed {
        return Plan {
            ratio,
            fair,
            ..none
        };
    }
    let high = mean * (1.0 + rule.tolerance);
    let low = mean * (1.0 + rule.tolerance / 2.0);
    // Rounded up: the target is never below the mean, so the replicas below it can always take
    // what is shed (and tiny fleets, where one screen is more than the tolerance, stay put).
    let target = (low - 1e-9).ceil().max(0.0) as u64;
    let devices = me.devices as f64;
    let above = if shedding {
        me.devices > target
    } else {
        devices > high && me.devices > target
    };
    if above {
        return Plan {
            ratio,
            target: Some(target),
            busy_at: Some(0),
            fair,
        };
    }
    // Whoever is at the mean already refuses while a peer sheds: the replicas below it take
    // what is shed. Not all of them can be at it while one is above it, so someone accepts.
    let peer_sheds = live.iter().skip(1).any(|r| r.shedding);
    Plan {
        ratio,
        target: None,
        busy_at: if peer_sheds { fair } else { None },
        fair,
    }
}

/// A period scaled by a random factor in [0.75, 1.25), so replicas do not tick in lockstep.
pub fn jittered(period: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u64(now_ms() as u64);
    let r = h.finish() % 10_000;
    period.mul_f64(0.75 + r as f64 / 20_000.0)
}

/// This replica's rebalancing state.
pub struct Rebalance {
    started: Instant,
    started_at: i64,
    shedding: AtomicBool,
    /// Handshakes are refused once this many device sockets are live here (u64::MAX: never).
    busy_at: AtomicU64,
    /// Since when this replica has been above the high mark without shedding yet.
    above_since: Mutex<Option<Instant>>,
    /// The target this shedding episode started with (0: not shedding).
    episode_target: AtomicU64,
    /// Until when the replica refuses at the mean after an episode (see [`COOLDOWN`]).
    cooling_until: Mutex<Option<Instant>>,
    freshness: Mutex<Freshness>,
}

impl Rebalance {
    pub fn new() -> Rebalance {
        Rebalance {
            started: Instant::now(),
            started_at: now_ms(),
            shedding: AtomicBool::new(false),
            busy_at: AtomicU64::new(u64::MAX),
            above_since: Mutex::new(None),
            episode_target: AtomicU64::new(0),
            cooling_until: Mutex::new(None),
            freshness: Mutex::new(Freshness::default()),
        }
    }
}

impl Default for Rebalance {
    fn default() -> Self {
        Rebalance::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gateway {
    /// This replica sheds device sockets to rebalance the cluster.
    pub fn is_shedding(&self) -> bool {
        self.rebalance.shedding.load(Ordering::SeqCst)
    }

    /// New handshakes are answered 503 `server_busy` for rebalancing: this replica sheds, or a
    /// peer sheds and this one is at the low mark already.
    pub fn refuses_for_rebalancing(&self) -> bool {
        let devices = self.metrics.gauges.device_sockets.load(Ordering::Relaxed);
        let at = self.rebalance.busy_at.load(Ordering::Relaxed);
        self.is_shedding() || u64::try_from(devices).unwrap_or(0) >= at
    }

    /// One tick: publishes this replica's load (`devices`: live device sockets not leaving),
    /// reads everyone's and decides; answers how many device sockets to close during the next
    /// `period` (at most `REBALANCE_MAX_PER_S` × `period`, never more than the excess).
    pub async fn rebalance_once(&self, devices: usize, period: Duration) -> usize {
        let draining = self.is_draining();
        let fenced = self.is_fenced();
        let me = LoadRecord {
            devices: devices as u64,
            dashboards: u64::try_from(
                self.metrics
                    .gauges
                    .dashboard_sockets
                    .load(Ordering::Relaxed),
            )
            .unwrap_or(0),
            ready: !draining && !fenced,
            draining,
            fenced,
            shedding: self.is_shedding(),
            started_at: self.rebalance.started_at,
            at: now_ms(),
        };
        let mut plan = match self.exchange_load(&me).await {
            Some(others) => {
                let rule = Rule {
                    tolerance: self.cfg.rebalance_tolerance,
                    // Not in the first moments after this replica's start: a lease TTL (its
                    // first records of peers that died just before are not yet known stale).
                    may_shed: self.cfg.rebalance
                        && self.rebalance.started.elapsed() >= self.cfg.lease_ttl.max(STALE),
                };
                plan(&self.cfg.replica_id, &me, &others, me.shedding, rule)
            }
            None => Plan {
                ratio: None,
                target: None,
                busy_at: None,
                fair: None,
            },
        };
        // Hold-down: a replica not yet shedding starts only once it has been above the high
        // mark for `HOLD` (a peer that just died still counts in the mean for a while).
        {
            let mut since = lock(&self.rebalance.above_since);
            match (plan.target, me.shedding) {
                (None, _) | (Some(_), true) => *since = None,
                (Some(_), false) => {
                    let at = *since.get_or_insert_with(Instant::now);
                    if at.elapsed() < HOLD {
                        plan.target = None;
                        plan.busy_at = None;
                    }
                }
            }
        }
        // An episode never sheds below the target it started with: while screens move, those
        // in flight are counted nowhere and the records lag a tick, so the mean seen mid-way is
        // a little low.
        let episode = &self.rebalance.episode_target;
        match plan.target {
            None => episode.store(0, Ordering::Relaxed),
            Some(t) if !me.shedding => episode.store(t, Ordering::Relaxed),
            Some(t) => {
                let t = t.max(episode.load(Ordering::Relaxed));
                if me.devices <= t {
                    episode.store(0, Ordering::Relaxed);
                    plan.target = None;
                    plan.busy_at = plan.fair;
                } else {
                    plan.target = Some(t);
                }
            }
        }
        {
            let mut cooling = lock(&self.rebalance.cooling_until);
            if me.shedding && plan.target.is_none() {
                *cooling = Some(Instant::now() + COOLDOWN);
            }
            if plan.busy_at.is_none() && cooling.is_some_and(|until| Instant::now() < until) {
                plan.busy_at = plan.fair;
            }
        }
        let g = &self.metrics.gauges;
        let ratio = plan.ratio.map_or(0, |r| (r * 1e6) as i64);
        g.rebalance_load_ratio_micros
            .store(ratio, Ordering::Relaxed);
        self.rebalance
            .busy_at
            .store(plan.busy_at.unwrap_or(u64::MAX), Ordering::Relaxed);
        let was = self
            .rebalance
            .shedding
            .swap(plan.target.is_some(), Ordering::SeqCst);
        g.rebalancing
            .store(i64::from(plan.target.is_some()), Ordering::Relaxed);
        match (was, plan.target) {
            (false, Some(target)) => tracing::info!(
                devices,
                target,
                ratio = plan.ratio.unwrap_or(0.0),
                "Rebalancing: shedding device sockets down to the target."
            ),
            (true, None) => tracing::info!(devices, "Rebalancing: done shedding."),
            _ => {}
        }
        let Some(target) = plan.target else {
            return 0;
        };
        let excess = (devices as u64).saturating_sub(target);
        let budget = (f64::from(self.cfg.rebalance_max_per_s) * period.as_secs_f64()).floor();
        (excess.min(budget.max(1.0) as u64)) as usize
    }

    /// Writes this replica's record and reads everyone's; None if the store did not answer.
    /// Records of replicas gone for an hour are deleted on the way.
    async fn exchange_load(&self, me: &LoadRecord) -> Option<Vec<(String, LoadRecord)>> {
        let json = serde_json::to_string(me).ok()?;
        let all = match self.state.exchange_load(&self.cfg.replica_id, &json).await {
            Ok(all) => all,
            Err(e) => {
                self.metrics.store_error("redis", "load");
                tracing::debug!(error = %e, "Load exchange failed.");
                return None;
            }
        };
        let mut records = Vec::with_capacity(all.len());
        let mut gone = Vec::new();
        for (id, v) in all {
            match serde_json::from_str::<LoadRecord>(&v) {
                Ok(r) => records.push((id, r)),
                Err(_) => gone.push(id),
            }
        }
        let (out, old) = lock(&self.rebalance.freshness).filter(records, Instant::now());
        gone.extend(old);
        if !gone.is_empty()
            && let Err(e) = self.state.forget_loads(&gone).await
        {
            tracing::debug!(error = %e, "Forgetting old load records failed.");
        }
        Some(out)
    }

    /// Device transports about to be closed by rebalancing.
    pub fn count_rebalance_closed(&self, n: usize) {
        self.metrics.rebalance_closed(n as u64);
    }

    /// When the live device socket `sid` connected here (oldest are shed first).
    pub fn device_connected_since(&self, sid: &str) -> Option<Instant> {
        self.live.since(sid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: i64 = 1_000_000;

    fn rec(devices: u64) -> LoadRecord {
        LoadRecord {
            devices,
            dashboards: 0,
            ready: true,
            draining: false,
            fenced: false,
            shedding: false,
            started_at: 0,
            at: NOW,
        }
    }

    fn rule() -> Rule {
        Rule {
            tolerance: 0.10,
            may_shed: true,
        }
    }

    fn peers(list: &[LoadRecord]) -> Vec<(String, LoadRecord)> {
        list.iter()
            .enumerate()
            .map(|(i, r)| (format!("p{i}"), r.clone()))
            .collect()
    }

    #[test]
    fn a_replica_above_the_high_mark_sheds_to_the_low_mark() {
        // 300 + 300 + 0: mean 200, high 220, low 210.
        let p = plan("me", &rec(300), &peers(&[rec(300), rec(0)]), false, rule());
        assert_eq!(p.target, Some(210));
        assert_eq!(p.busy_at, Some(0));
        assert!((p.ratio.unwrap() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn hysteresis_starts_above_the_high_mark_and_stops_at_the_low_mark() {
        // 215 of a mean of 200: inside the tolerance, so not started...
        let others = peers(&[rec(200), rec(185)]);
        assert_eq!(plan("me", &rec(215), &others, false, rule()).target, None);
        // ...but a replica already shedding goes on down to 210, and stops there.
        assert_eq!(
            plan("me", &rec(215), &others, true, rule()).target,
            Some(210)
        );
        let others = peers(&[rec(200), rec(190)]);
        assert_eq!(plan("me", &rec(210), &others, true, rule()).target, None);
    }

    #[test]
    fn nobody_sheds_while_a_replica_drains_or_is_fenced_or_alone() {
        let mut draining = rec(0);
        draining.draining = true;
        draining.ready = false;
        let p = plan(
            "me",
            &rec(300),
            &peers(&[rec(100), draining]),
            false,
            rule(),
        );
        assert_eq!((p.target, p.busy_at), (None, None));
        let mut fenced = rec(0);
        fenced.fenced = true;
        let p = plan("me", &rec(300), &peers(&[rec(100), fenced]), false, rule());
        assert_eq!(p.target, None);
        let p = plan("me", &rec(300), &[], false, rule());
        assert_eq!(p, plan("me", &rec(300), &peers(&[]), false, rule()));
        assert_eq!((p.ratio, p.target), (None, None));
        let mut me = rec(300);
        me.fenced = true;
        assert_eq!(
            plan("me", &me, &peers(&[rec(0)]), false, rule()).target,
            None
        );
    }

    #[test]
    fn a_record_unchanged_for_three_seconds_of_the_readers_clock_is_a_replica_gone() {
        let mut f = Freshness::default();
        let t0 = Instant::now();
        // The writer's clock is far off the reader's: it does not matter.
        let mut skewed = rec(10);
        skewed.at = NOW + 86_400_000;
        let (live, gone) = f.filter(peers(&[rec(5), skewed.clone()]), t0);
        assert_eq!((live.len(), gone.len()), (2, 0));
        // p0 keeps writing, p1 stopped.
        let mut again = rec(5);
        again.at = NOW + 1_000;
        let later = t0 + STALE + Duration::from_millis(1);
        let (live, _) = f.filter(peers(&[again, skewed.clone()]), later);
        assert_eq!(
            live.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["p0"]
        );
        let (_, gone) = f.filter(peers(&[rec(5), skewed]), t0 + FORGET_AFTER * 2);
        assert_eq!(gone, ["p1"]);
    }

    #[test]
    fn the_switch_holds_it_back() {
        let off = Rule {
            may_shed: false,
            ..rule()
        };
        let p = plan("me", &rec(300), &peers(&[rec(0)]), false, off);
        assert_eq!((p.ratio, p.target, p.busy_at), (Some(2.0), None, None));
        assert_eq!(p.fair, Some(150));
    }

    #[test]
    fn a_replica_at_the_mean_refuses_while_a_peer_sheds() {
        let mut shedder = rec(300);
        shedder.shedding = true;
        let p = plan("me", &rec(150), &peers(&[shedder, rec(150)]), false, rule());
        assert_eq!((p.target, p.busy_at), (None, Some(200)));
        let p = plan(
            "me",
            &rec(150),
            &peers(&[rec(300), rec(150)]),
            false,
            rule(),
        );
        assert_eq!(p.busy_at, None, "nobody sheds: nothing refused");
    }

    #[test]
    fn a_balanced_cluster_stays_put_whatever_its_size() {
        for n in [1u64, 2, 3, 7, 50, 200, 10_000] {
            let p = plan("me", &rec(n), &peers(&[rec(n), rec(n)]), false, rule());
            assert_eq!(p.target, None, "{n}");
        }
        // Rounding: moving one screen must not just move the excess to the next replica.
        for (me, other) in [(3, 2), (2, 1), (2, 0), (3, 3)] {
            let p = plan("me", &rec(me), &peers(&[rec(other)]), false, rule());
            assert_eq!(p.target, None, "{me} beside {other}");
        }
        let p = plan("me", &rec(3), &peers(&[rec(3), rec(2)]), false, rule());
        assert_eq!(p.target, None, "3, 3, 2");
        let p = plan("me", &rec(30), &peers(&[rec(30), rec(0)]), false, rule());
        assert_eq!(p.target, Some(21), "30, 30, 0: mean 20, low 21");
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = jittered(TICK);
            assert!(d >= TICK.mul_f64(0.75) && d < TICK.mul_f64(1.25), "{d:?}");
        }
    }
}
