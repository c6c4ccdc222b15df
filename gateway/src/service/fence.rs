//! Self-fencing (cluster mode): a replica cut off from Redis while the other replicas reach it
//! stops serving well inside the lease TTL, so its screens reconnect to a healthy replica and
//! supersede their leases before any expires; a Redis outage that every replica sees fences
//! nobody. ARCHITECTURE.md, "Partitions: self-fencing", has the rule and its bound.
//!
//! Two loops drive it (`app::spawn_fencing`), both every [`FenceTimings::tick`]:
//! - [`Gateway::probe_redis_once`]: a PING through the stores' pool, bounded (a frozen TCP path
//!   must count as a failure, not hang the loop); it unfences after two successes in a row;
//! - [`Gateway::fence_check_once`]: writes this replica's witness row (`realtime_replicas`)
//!   and, once the probes have failed long enough, reads the peers' rows and judges
//!   ([`judge`]). When it fences, the caller closes the sockets' transports in batches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::Gateway;
use crate::db::replicas::PeerAges;

/// Rows of replicas not seen for this long are deleted (replicas that are gone for good).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How often a replica deletes such rows.
const FORGET_EVERY: Duration = Duration::from_secs(600);

/// The fencing periods, all fractions of the lease TTL (`FenceTimings::for_lease`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceTimings {
    /// How often Redis is probed and the witness row written: TTL/20.
    pub tick: Duration,
    /// Bound on one probe: half of `fence_after`, so two probes fail within it.
    pub probe_timeout: Duration,
    /// How long the probes must have failed (at least two of them) before the witness is asked:
    /// TTL/4.
    pub fence_after: Duration,
    /// A peer counts as having reached Redis while this replica could not only if it succeeded
    /// at least this long after this replica's first failed probe: `fence_after / 2`. In an
    /// outage every replica sees, no replica succeeds that late.
    pub margin: Duration,
    /// A peer whose row is older than this is not alive (its witness is not taken): `fence_after`.
    pub alive: Duration,
    /// A peer that has reached Redis without a failure for this long counts even if its run of
    /// successes began after this replica's failure did (it recovered from a blip, or this
    /// replica is stuck long after a shared outage ended): `2 × fence_after`.
    pub streak: Duration,
    /// The sockets' transports are closed in batches over this window: TTL/6.
    pub window: Duration,
}

impl FenceTimings {
    pub fn for_lease(ttl: Duration) -> FenceTimings {
        let fence_after = ttl / 4;
        FenceTimings {
            tick: ttl / 20,
            probe_timeout: fence_after / 2,
            fence_after,
            margin: fence_after / 2,
            alive: fence_after,
            streak: fence_after * 2,
            window: ttl / 6,
        }
    }
}

/// What the witness said when the probes had failed long enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Most alive peers reached Redis while this replica could not: it is cut off.
    Fence,
    /// Alive peers did not reach Redis either (or not most of them): everyone's outage.
    SharedOutage,
    /// No alive peer, or the database did not answer: nobody to compare with, so no fence.
    NoWitness,
}

impl Verdict {
    /// The `outcome` label of `vizora_gateway_fence_checks_total`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Fence => "fence",
            Verdict::SharedOutage => "shared_outage",
            Verdict::NoWitness => "no_witness",
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The rule. `failing_ms`: how long ago this replica's first failed probe (after its last
/// success) started. A peer is alive if its row is at most `alive` old; it *reached* Redis while
/// this replica could not if its last success started at least `margin` after this replica's
/// failure did, in a run of successes that began before that failure (or has lasted `streak`).
/// Fence iff at least one peer is alive and more than half of the alive peers reached Redis.
pub fn judge(failing_ms: i64, peers: &[PeerAges], t: &FenceTimings) -> Verdict {
    let alive: Vec<&PeerAges> = peers.iter().filter(|p| p.seen_ms <= ms(t.alive)).collect();
    if alive.is_empty() {
        return Verdict::NoWitness;
    }
    let reached = alive
        .iter()
        .filter(|p| {
            let late_enough = p.ok_ms.is_some_and(|ok| ok + ms(t.margin) <= failing_ms);
            let unbroken = p
                .ok_since_ms
                .is_some_and(|since| since >= failing_ms.min(ms(t.streak)));
            late_enough && unbroken
        })
        .count();
    if 2 * reached > alive.len() {
        Verdict::Fence
    } else {
        Verdict::SharedOutage
    }
}

/// This replica's probe record and fenced state.
pub struct Fence {
    fenced: AtomicBool,
    log: Mutex<ProbeLog>,
}

#[derive(Debug)]
struct ProbeLog {
    /// Start of the last successful probe.
    last_ok: Option<Instant>,
    /// Start of the run of successes `last_ok` belongs to.
    ok_since: Option<Instant>,
    /// Start of the first failed probe after `last_ok` (None while the probes succeed).
    failing_since: Option<Instant>,
    failures: u32,
    successes: u32,
    /// The failure episode (its `failing_since`) whose shared-outage verdict was logged.
    logged: Option<Instant>,
    last_forget: Option<Instant>,
}

impl Fence {
    /// The gateway is built after `app::run` reached Redis: that counts as the first success.
    pub fn new() -> Fence {
        let now = Instant::now();
        Fence {
            fenced: AtomicBool::new(false),
            log: Mutex::new(ProbeLog {
                last_ok: Some(now),
                ok_since: Some(now),
                failing_since: None,
                failures: 0,
                successes: 1,
                logged: None,
                last_forget: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProbeLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

fn age_ms(at: Option<Instant>, now: Instant) -> Option<i64> {
    at.map(|t| ms(now.saturating_duration_since(t)))
}

impl Gateway {
    /// Whether this replica fenced itself off (readiness 503, handshakes refused).
    pub fn is_fenced(&self) -> bool {
        self.fence.fenced.load(Ordering::SeqCst)
    }

    /// The fencing periods for this replica's lease TTL.
    pub fn fence_timings(&self) -> FenceTimings {
        FenceTimings::for_lease(self.cfg.lease_ttl)
    }

    /// One bounded PING of Redis, recorded; two successes in a row lift a fence.
    pub async fn probe_redis_once(&self) {
        let t = self.fence_timings();
        let start = Instant::now();
        let ok = matches!(
            tokio::time::timeout(t.probe_timeout, self.state.ping()).await,
            Ok(Ok(()))
        );
        let mut log = self.fence.lock();
        if ok {
            if log.failures > 0 || log.ok_since.is_none() {
                log.ok_since = Some(start);
                log.successes = 0;
            }
            log.last_ok = Some(start);
            log.failing_since = None;
            log.failures = 0;
            log.successes = log.successes.saturating_add(1);
            if log.successes >= 2 && self.fence.fenced.swap(false, Ordering::SeqCst) {
                self.metrics.gauges.fenced.store(0, Ordering::Relaxed);
                self.metrics.fence_event("unfence");
                tracing::info!("Redis answers again: serving again (fence lifted).");
            }
        } else {
            log.failing_since.get_or_insert(start);
            log.failures = log.failures.saturating_add(1);
            log.successes = 0;
        }
    }

    /// Writes this replica's witness row, and judges once the probes have failed for
    /// `fence_after` (not while draining or already fenced). True when this call fenced the
    /// replica: the caller then closes the sockets' transports.
    pub async fn fence_check_once(&self) -> bool {
        let t = self.fence_timings();
        let now = Instant::now();
        let (ok_ago, since_ago, failing, forget) = {
            let mut log = self.fence.lock();
            let failing = log
                .failing_since
                .filter(|_| log.failures >= 2)
                .map(|f| (f, ms(now.saturating_duration_since(f))));
            let forget = log
                .last_forget
                .is_none_or(|f| now.saturating_duration_since(f) >= FORGET_EVERY);
            if forget {
                log.last_forget = Some(now);
            }
            (
                age_ms(log.last_ok, now),
                age_ms(log.ok_since, now),
                failing,
                forget,
            )
        };
        let replica = &self.cfg.replica_id;
        match tokio::time::timeout(t.tick, self.db.record_replica(replica, ok_ago, since_ago)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "Witness row not written."),
            Err(_) => tracing::debug!("Witness row not written: timed out."),
        }
        if forget
            && let Ok(Err(e)) =
                tokio::time::timeout(t.tick, self.db.forget_replicas(ms(FORGET_AFTER))).await
        {
            tracing::debug!(error = %e, "Old witness rows not deleted.");
        }
        let Some((since, failing_ms)) = failing else {
            return false;
        };
        if failing_ms < ms(t.fence_after) || self.is_fenced() || self.is_draining() {
            return false;
        }
        let peers = tokio::time::timeout(t.tick, self.db.peer_replicas(replica, ms(t.alive))).await;
        let (verdict, peers) = match peers {
            Ok(Ok(p)) => (judge(failing_ms, &p, &t), p),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Witness rows not read.");
                (Verdict::NoWitness, Vec::new())
            }
            Err(_) => (Verdict::NoWitness, Vec::new()),
        };
        let verdict = match self.hooks.fence_rule() {
            Some(true) => Verdict::Fence,
            Some(false) if verdict == Verdict::Fence => Verdict::SharedOutage,
            _ => verdict,
        };
        self.metrics.fence_check(verdict.label());
        let mut log = self.fence.lock();
        // A probe may have succeeded while the witness was read.
        if log.failing_since != Some(since) || self.is_draining() {
            return false;
        }
        if verdict != Verdict::Fence {
            if log.logged != Some(since) {
                log.logged = Some(since);
                tracing::warn!(
                    failing_ms,
                    verdict = verdict.label(),
                    alive_peers = peers.len(),
                    "Redis unreachable, but not fencing: no peer shows it reachable from elsewhere (serving live sockets from what we have)."
                );
            }
            return false;
        }
        if self.fence.fenced.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.metrics.gauges.fenced.store(1, Ordering::Relaxed);
        self.metrics.fence_event("fence");
        tracing::warn!(
            failing_ms,
            alive_peers = peers.len(),
            "Cut off from Redis while the other replicas reach it: FENCED (readiness 503, handshakes refused, transports closed in batches; leases handed over)."
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn peer(seen: i64, ok: Option<i64>, since: Option<i64>) -> PeerAges {
        PeerAges {
            replica: "p".into(),
            seen_ms: seen,
            ok_ms: ok,
            ok_since_ms: since,
        }
    }

    #[test]
    fn timings_are_fractions_of_the_ttl_and_fit_inside_it() {
        let t = FenceTimings::for_lease(TTL);
        assert_eq!(t.tick, Duration::from_millis(1500));
        assert_eq!(t.fence_after, Duration::from_millis(7500));
        assert_eq!(t.probe_timeout, Duration::from_millis(3750));
        assert_eq!(t.window, Duration::from_secs(5));
        // Decided within fence_after + 2 ticks of the cut, moved within the window, before the
        // earliest expiry of a lease refreshed every TTL/3 (2/3 TTL after the cut).
        assert!(t.fence_after + t.tick * 2 + t.window < TTL * 2 / 3);
        // An outage everyone sees: a peer's last success precedes ours by at most a tick plus
        // a probe's latency, far less than the margin.
        assert!(t.margin > t.tick * 2);
    }

    #[test]
    fn a_cut_off_replica_fences_when_most_alive_peers_reached_redis() {
        let t = FenceTimings::for_lease(TTL);
        let failing = 8_000;
        // Healthy peers: fresh rows, a success a moment ago, unbroken for minutes.
        let ok = peer(1_000, Some(1_600), Some(600_000));
        assert_eq!(
            judge(failing, std::slice::from_ref(&ok), &t),
            Verdict::Fence
        );
        assert_eq!(
            judge(
                failing,
                &[
                    ok.clone(),
                    ok.clone(),
                    peer(900, Some(8_200), Some(600_000))
                ],
                &t
            ),
            Verdict::Fence
        );
        // Half is not most.
        assert_eq!(
            judge(
                failing,
                &[ok.clone(), peer(900, Some(8_200), Some(600_000))],
                &t
            ),
            Verdict::SharedOutage
        );
        // Dead peers are no witness: their rows are old.
        assert_eq!(
            judge(failing, &[peer(60_000, Some(100), Some(600_000))], &t),
            Verdict::NoWitness
        );
        assert_eq!(judge(failing, &[], &t), Verdict::NoWitness);
    }

    #[test]
    fn an_outage_every_replica_sees_fences_nobody() {
        let t = FenceTimings::for_lease(TTL);
        // Redis stalled for everyone: the peer's last success is about as old as our failure.
        let failing = 8_000;
        for ok in [8_100, 7_900, 7_000, 6_000] {
            assert_eq!(
                judge(failing, &[peer(1_000, Some(ok), Some(600_000))], &t),
                Verdict::SharedOutage,
                "peer last ok {ok} ms ago"
            );
        }
        // Never reached Redis at all.
        assert_eq!(
            judge(failing, &[peer(1_000, None, None)], &t),
            Verdict::SharedOutage
        );
    }

    #[test]
    fn a_replica_reconnecting_later_than_its_peers_after_a_restart_does_not_fence() {
        let t = FenceTimings::for_lease(TTL);
        // Redis restarted: down for everyone from 9 s ago until 2 s ago. The peer is back (a
        // success just now, in a run that began 2 s ago); we are not yet.
        let failing = 9_000;
        assert_eq!(
            judge(failing, &[peer(500, Some(200), Some(2_000))], &t),
            Verdict::SharedOutage
        );
        // Still not back 2 × fence_after after the peer: this replica is stuck, and fences.
        let failing = 30_000;
        assert_eq!(
            judge(failing, &[peer(500, Some(200), Some(15_000))], &t),
            Verdict::Fence
        );
    }
}
