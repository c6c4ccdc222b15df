//! Edge protection with governor: per-IP and global handshake rates, the per-replica connection
//! cap, the per-device connect pace, and per-socket message rates. All limits are per replica;
//! refusals cost no Redis or database work.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::Limits;
use crate::proxies::TrustedProxies;

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN)
}

fn per_second(rate: u32, burst: u32) -> Quota {
    Quota::per_second(nz(rate)).allow_burst(nz(burst))
}

/// governor's clock read through tokio's: the monotonic clock in production, the test's clock
/// under `tokio::time::pause`, so the pacing rules and their `Retry-After` run in paused-time
/// tests (`tests/tests/paused.rs`) instead of waiting them out.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;
    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type KeyedLimiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, TokioClock, NoMiddleware>;
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoMiddleware>;
type NoMiddleware = governor::middleware::NoOpMiddleware<std::time::Instant>;

fn keyed<K: std::hash::Hash + Eq + Clone>(quota: Quota) -> KeyedLimiter<K> {
    RateLimiter::new(quota, DefaultKeyedStateStore::default(), TokioClock)
}

fn direct(quota: Quota) -> DirectLimiter {
    RateLimiter::direct_with_clock(quota, TokioClock)
}

/// Why a handshake was refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Per-IP limit: 429 `rate_limited`.
    RateLimited { retry_after: Duration },
    /// Connection cap or global rate: 503 `server_busy`.
    ServerBusy,
    /// Shutting down: 503 `draining`.
    Draining,
    /// Fenced off the shared store (`service::fence`): 503 `unavailable`.
    Unavailable,
    /// Shedding load to rebalance the cluster (`service::rebalance`): 503 `server_busy`,
    /// counted as `rebalancing`.
    Rebalancing,
}

/// The edge's own count of this replica's live Socket.IO sockets, which the connection cap
/// reads. The gate hands it to each handshake it admits (a request extension); the socket's
/// connect handler counts it in, its disconnect handler out (see `socket::connect`). Kept
/// apart from the telemetry gauges so the cap never depends on a metric.
#[derive(Debug, Default)]
pub struct LiveSockets(AtomicUsize);

impl LiveSockets {
    pub fn opened(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn closed(&self) {
        // Never below zero, even if a close were ever counted twice.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Handshake limits checked before the Engine.IO session exists.
pub struct EdgeGuard {
    per_ip: KeyedLimiter<IpAddr>,
    global: DirectLimiter,
    live: Arc<LiveSockets>,
    pub max_connections: usize,
    pub trusted_proxies: TrustedProxies,
    unknown_warned: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often the unknown-client-address warning may be logged.
pub const UNKNOWN_CLIENT_WARN_EVERY: Duration = Duration::from_secs(60);

impl EdgeGuard {
    pub fn new(l: &Limits) -> Self {
        EdgeGuard {
            per_ip: keyed(per_second(l.connect_rate_per_ip, l.connect_burst_per_ip)),
            global: direct(per_second(l.connect_rate_global, l.connect_burst_global)),
            live: Arc::default(),
            max_connections: l.max_connections,
            trusted_proxies: l.trusted_proxies.clone(),
            unknown_warned: std::sync::Mutex::default(),
        }
    }

    /// The live-socket count this guard caps.
    pub fn live(&self) -> &Arc<LiveSockets> {
        &self.live
    }

    /// `ip` is the client address, `None` when the trusted proxies hide it: the per-IP bucket is
    /// skipped then (one bucket for a whole ingress would throttle the fleet as one venue), and
    /// the global rate and the cap still hold.
    pub fn check(&self, ip: Option<IpAddr>, draining: bool) -> Result<(), Refusal> {
        if draining {
            return Err(Refusal::Draining);
        }
        if self.live.get() >= self.max_connections {
            return Err(Refusal::ServerBusy);
        }
        if let Some(ip) = ip
            && let Err(nu) = self.per_ip.check_key(&ip)
        {
            let retry_after = nu.wait_time_from(TokioClock.now());
            return Err(Refusal::RateLimited { retry_after });
        }
        if self.global.check().is_err() {
            return Err(Refusal::ServerBusy);
        }
        Ok(())
    }

    /// Whether a handshake with an unknown client address should log the warning now: at most
    /// once per [`UNKNOWN_CLIENT_WARN_EVERY`], so a fleet behind a misconfigured ingress writes
    /// one line a minute, not one per handshake.
    pub fn warn_unknown_client(&self) -> bool {
        let now = TokioClock.now();
        let mut last = self
            .unknown_warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(at) if now.saturating_duration_since(at) < UNKNOWN_CLIENT_WARN_EVERY => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Forgets idle keys so the per-IP map does not grow without bound.
    pub fn housekeeping(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
    }
}

/// The per-device connect pace: the device id is only known once the token is verified, so the
/// connect is held until the bucket allows it.
pub struct DeviceLimiter {
    per_device: KeyedLimiter<String>,
}

impl DeviceLimiter {
    pub fn new(l: &Limits) -> Self {
        let quota = Quota::per_minute(nz(l.connect_per_device_per_min))
            .allow_burst(nz(l.connect_burst_per_device));
        DeviceLimiter {
            per_device: keyed(quota),
        }
    }

    /// Zero when the device may connect now, else how long to wait.
    pub fn wait_time(&self, device: &str) -> Duration {
        match self.per_device.check_key(&device.to_string()) {
            Ok(()) => Duration::ZERO,
            Err(nu) => nu.wait_time_from(TokioClock.now()),
        }
    }

    pub fn housekeeping(&self) {
        self.per_device.retain_recent();
        self.per_device.shrink_to_fit();
    }
}

/// One socket's message budget.
pub struct MessageLimiter(DirectLimiter);

impl MessageLimiter {
    pub fn new(l: &Limits) -> Self {
        MessageLimiter(direct(per_second(
            l.message_rate_per_socket,
            l.message_burst_per_socket,
        )))
    }
    pub fn allow(&self) -> bool {
        self.0.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 2,
            connect_rate_global: 1000,
            connect_burst_global: 1000,
            connect_rate_per_ip: 1,
            connect_burst_per_ip: 2,
            connect_per_device_per_min: 1,
            connect_burst_per_device: 1,
            message_rate_per_socket: 1,
            message_burst_per_socket: 1,
            trusted_proxies: TrustedProxies::default(),
            max_tcp_connections: 10,
            max_tcp_connections_per_ip: 10,
            http_header_timeout: Duration::from_secs(1),
            http_idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn per_ip_then_cap_then_drain() {
        let g = EdgeGuard::new(&limits());
        let ip: IpAddr = [192, 0, 2, 1].into();
        assert!(g.check(Some(ip), false).is_ok());
        assert!(g.check(Some(ip), false).is_ok());
        assert!(matches!(
            g.check(Some(ip), false),
            Err(Refusal::RateLimited { .. })
        ));
        assert!(
            g.check(Some([192, 0, 2, 2].into()), false).is_ok(),
            "other IPs are independent"
        );
        g.live().opened();
        g.live().opened();
        assert_eq!(
            g.check(Some([192, 0, 2, 3].into()), false),
            Err(Refusal::ServerBusy),
            "the cap reads the edge's own count"
        );
        g.live().closed();
        assert!(g.check(Some([192, 0, 2, 3].into()), false).is_ok());
        g.live().closed();
        g.live().closed();
        assert_eq!(g.live().get(), 0, "never below zero");
        assert_eq!(
            g.check(Some([192, 0, 2, 4].into()), true),
            Err(Refusal::Draining)
        );
    }

    /// Without a client address the per-IP bucket is not consulted (it would be one bucket for
    /// the whole ingress), while the cap and the global rate still refuse.
    #[test]
    fn unknown_clients_skip_only_the_per_ip_bucket() {
        let l = Limits {
            max_connections: 100,
            connect_burst_global: 5,
            ..limits()
        };
        let g = EdgeGuard::new(&l);
        let results: Vec<_> = (0..6).map(|_| g.check(None, false)).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            5,
            "per-IP burst 2 ignored, global burst 5 holds: {results:?}"
        );
        assert_eq!(results[5], Err(Refusal::ServerBusy));
        let g = EdgeGuard::new(&limits());
        g.live().opened();
        g.live().opened();
        assert_eq!(g.check(None, false), Err(Refusal::ServerBusy), "the cap");
        assert_eq!(g.check(None, true), Err(Refusal::Draining));
    }

    #[tokio::test(start_paused = true)]
    async fn the_unknown_client_warning_is_logged_at_most_once_a_minute() {
        let g = EdgeGuard::new(&limits());
        assert!(g.warn_unknown_client());
        assert!(!g.warn_unknown_client());
        tokio::time::advance(UNKNOWN_CLIENT_WARN_EVERY - Duration::from_secs(1)).await;
        assert!(!g.warn_unknown_client());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(g.warn_unknown_client());
        assert!(!g.warn_unknown_client());
    }

    #[test]
    fn device_pace_and_message_budget() {
        let d = DeviceLimiter::new(&limits());
        assert_eq!(d.wait_time("a"), Duration::ZERO);
        assert!(d.wait_time("a") > Duration::ZERO);
        assert_eq!(d.wait_time("b"), Duration::ZERO);
        let m = MessageLimiter::new(&limits());
        assert!(m.allow());
        assert!(!m.allow());
    }
}
