//! The timing rules under a paused clock: lease TTL and sweep, the sweep grace after a stall, the
//! offline-notification delay, and reconnect pacing. They run at the shipped timings (a 30 s
//! lease, a 5 s sweep, a 2 min notification delay, 12 connects a minute per device) in
//! milliseconds of real time, on in-process replicas over one `MemoryStore`
//! (`vizora_gateway_tests::inproc`, whose module doc explains the held clock). Virtual time is
//! exact, so each rule is checked at both edges of its window, not only "eventually".
//!
//! What only processes can show stays in the process-level suites: a SIGKILLed replica's
//! sockets moving elsewhere (`cluster_faults`), one notice claimed by one of three replicas
//! through Redis, Redis restarts and failovers (`redis_faults`, `redis_failover`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::{Instant, advance};
use vizora_gateway::limits::{DeviceLimiter, EdgeGuard, Refusal};
use vizora_gateway_tests::inproc::{ClockHold, InProc, Recorder, Replica, Server, settle, until};
use vizora_gateway_tests::{
    DEV_A1, DEV_A2, ORG_A, device_token, status_events, ws_dashboard, ws_device,
};

const SECOND: Duration = Duration::from_secs(1);

/// Moves the clock by `total`, one second at a time, letting every timer's work run each step.
async fn step(total: Duration) {
    let end = Instant::now() + total;
    while Instant::now() < end {
        advance(SECOND.min(end - Instant::now())).await;
        settle().await;
    }
}

/// Steps until `done` holds and returns the time that took; panics past `limit`.
async fn step_until(limit: Duration, what: &str, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() <= limit,
            "not within {limit:?} (virtual): {what}"
        );
        advance(SECOND).await;
        settle().await;
    }
    start.elapsed()
}

struct Timings {
    ttl: Duration,
    sweep: Duration,
    notify: Duration,
}

fn timings(c: &InProc) -> Timings {
    Timings {
        ttl: c.cfg.lease_ttl,
        sweep: c.cfg.presence_sweep_interval,
        notify: c.cfg.offline_notify_delay,
    }
}

/// A fresh store cannot tell a first start from a restart, so its first sweep starts the grace
/// (TTL + sweep interval). Steady-state rules are checked after it.
async fn past_the_first_grace(c: &InProc) {
    let t = timings(c);
    step(t.ttl + 2 * t.sweep).await;
}

/// The shipped configuration, opened with the clock held and released again: the limiter tests
/// below step the clock themselves and wait for nothing.
async fn hold_and_start() -> InProc {
    let _hold = ClockHold::new();
    InProc::start(&[]).await
}

/// The shipped configuration with two replicas, "a" and "b", sharing its stores; the clock stays
/// held for as long as the returned guard lives.
async fn two_replicas() -> (ClockHold, InProc, Timings, Replica, Replica) {
    let hold = ClockHold::new();
    let c = InProc::start(&[]).await;
    let t = timings(&c);
    let (a, b) = (c.replica("a"), c.replica("b"));
    (hold, c, t, a, b)
}

fn offline(r: &Recorder, dev: &str) -> usize {
    r.statuses(dev, "offline")
}

#[tokio::test(start_paused = true)]
async fn a_lease_not_refreshed_for_the_ttl_is_swept_once_and_a_refreshed_one_never() {
    let (_hold, c, t, a, b) = two_replicas().await;
    past_the_first_grace(&c).await;

    a.connect(DEV_A1, ORG_A).await;
    b.connect(DEV_A2, ORG_A).await;
    // Several TTLs: both replicas refresh their leases every TTL/3; nothing is swept.
    step(3 * t.ttl).await;
    for r in [&a, &b] {
        assert_eq!(offline(&r.emitted, DEV_A1) + offline(&r.emitted, DEV_A2), 0);
    }

    // B dies: its lease was last refreshed at most TTL/3 ago, so it is swept (by A, the only
    // sweeper left) no sooner than 2/3 TTL from now and no later than TTL + one sweep interval.
    b.crash();
    let took = step_until(t.ttl + t.sweep, "the dead replica's lease swept", || {
        offline(&a.emitted, DEV_A2) == 1
    })
    .await;
    assert!(took >= t.ttl - t.ttl / 3, "swept {took:?} after the crash");
    let status = a
        .emitted
        .all()
        .into_iter()
        .find(|e| e.event == "device:status" && e.data["deviceId"] == DEV_A2)
        .unwrap();
    assert_eq!(status.room, format!("dashboards:{ORG_A}"));
    until("the offline transition written", || async {
        (c.db.device_status(DEV_A2).await.unwrap().as_deref() == Some("offline")).then_some(())
    })
    .await;

    // Exactly once, and the live device never.
    step(3 * t.ttl).await;
    assert_eq!(offline(&a.emitted, DEV_A2), 1, "one offline transition");
    assert_eq!(
        offline(&a.emitted, DEV_A1),
        0,
        "the refreshed lease is never swept"
    );
    assert_eq!(
        offline(&b.emitted, DEV_A2),
        0,
        "a dead replica emits nothing"
    );
    assert_eq!(
        c.db.device_status(DEV_A1).await.unwrap().as_deref(),
        Some("online")
    );
}

#[tokio::test(start_paused = true)]
async fn a_fresh_store_sweeps_nothing_before_its_grace() {
    let (_hold, _c, t, a, b) = two_replicas().await;
    b.connect(DEV_A2, ORG_A).await;
    b.crash();
    // The lease is past its deadline after one TTL, but the first sweep (one interval in)
    // started the grace: nothing goes before interval + TTL + interval.
    let took = step_until(t.ttl + 3 * t.sweep, "swept after the grace", || {
        offline(&a.emitted, DEV_A2) == 1
    })
    .await;
    assert!(
        took >= t.sweep + t.ttl + t.sweep,
        "swept {took:?} after start"
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_stall_longer_than_the_ttl_nothing_is_swept_until_the_grace_ends() {
    let (_hold, c, t, a, b) = two_replicas().await;
    past_the_first_grace(&c).await;
    a.connect(DEV_A1, ORG_A).await;
    b.connect(DEV_A2, ORG_A).await;
    step(t.ttl).await;
    b.crash();

    // The process stalls for longer than a TTL: no task runs while the clock jumps, so every
    // deadline is in the past when the loops resume, the live lease's included.
    advance(t.ttl + 10 * SECOND).await;
    settle().await;
    // The first sweep after the stall starts the grace (TTL + one interval): the live lease is
    // refreshed meanwhile and never swept; the dead replica's goes when the grace ends.
    let took = step_until(
        t.ttl + 2 * t.sweep,
        "the dead lease swept after the grace",
        || offline(&a.emitted, DEV_A2) == 1,
    )
    .await;
    assert!(took >= t.ttl + t.sweep, "swept {took:?} after the stall");
    step(2 * t.ttl).await;
    assert_eq!(
        offline(&a.emitted, DEV_A1),
        0,
        "the live device never went offline"
    );
    assert_eq!(offline(&a.emitted, DEV_A2), 1);
}

#[tokio::test(start_paused = true)]
async fn an_offline_notification_waits_out_the_delay_and_comes_once() {
    let (_hold, c, t, a, b) = two_replicas().await;
    past_the_first_grace(&c).await;

    // A2 leaves and comes back (through the other replica) a second before its notice is due;
    // A1 ("Lobby screen") leaves three seconds after A2 (so their notices are claimed on different ticks) and
    // stays away.
    let back_soon = a.connect(DEV_A2, ORG_A).await;
    let gone = a.connect(DEV_A1, ORG_A).await;
    a.disconnect(&back_soon).await;
    settle().await;
    assert_eq!(offline(&a.emitted, DEV_A2), 1, "a release is a transition");
    step(3 * SECOND).await;
    a.disconnect(&gone).await;
    step(t.notify - 4 * SECOND).await;
    b.connect(DEV_A2, ORG_A).await;

    // A1's notice: one row, written no sooner than the delay after it left and no later than
    // the next notice tick (once a second). Both times are read on the same clock, to within
    // its precision (a millisecond each).
    step(5 * SECOND).await;
    until("the device_offline row", || async {
        (c.notifications(DEV_A1, "device_offline").await > 0).then_some(())
    })
    .await;
    step(2 * t.notify).await;
    let rows = c.notification_rows(DEV_A1, "device_offline").await;
    assert_eq!(rows.len(), 1, "exactly once: {rows:?}");
    let (written, left) = rows[0];
    let waited = (written - left.unwrap()).to_std().unwrap();
    assert!(
        waited + Duration::from_millis(2) >= t.notify && waited <= t.notify + SECOND,
        "written {waited:?} after the device left"
    );
    // Had A2's notice been claimed, it would have been written on an earlier tick than A1's.
    assert_eq!(
        c.notifications(DEV_A2, "device_offline").await,
        0,
        "a return within the delay cancels the notice"
    );

    // A1's return after a fired notice owes one "back online" notice.
    a.connect(DEV_A1, ORG_A).await;
    until("one device_online row", || async {
        (c.notifications(DEV_A1, "device_online").await == 1).then_some(())
    })
    .await;
    step(t.notify).await;
    let notes: Vec<_> = a
        .emitted
        .events("notification:new")
        .into_iter()
        .chain(b.emitted.events("notification:new"))
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["type"], "device_online");
    assert_eq!(notes[0]["deviceId"], DEV_A1);
    assert_eq!(notes[0]["deviceName"], "Lobby screen");
    let to = a
        .emitted
        .all()
        .into_iter()
        .find(|e| e.event == "notification:new")
        .map(|e| e.room);
    assert_eq!(
        to,
        Some(format!("dashboards:{ORG_A}")),
        "the organisation's dashboards"
    );
    assert_eq!(c.notifications(DEV_A1, "device_online").await, 1);
    assert_eq!(c.notifications(DEV_A2, "device_online").await, 0);
}

/// The whole embedded app — `app::run` on port 0, real sockets, its own schedule — under the
/// paused clock: ten minutes connected (twenty lease TTLs, Engine.IO pings answered over
/// loopback) is ten minutes online, and leaving is one offline status on the dashboard.
#[tokio::test(start_paused = true)]
async fn through_app_run_a_connected_screen_stays_online_for_minutes() {
    let _hold = ClockHold::new();
    let s = Server::start(&[]).await;
    let dash = ws_dashboard(s.client(), ORG_A).await;
    let screen = ws_device(s.client(), DEV_A1).await;
    let mut seen = Vec::new();
    until("the online status", || {
        seen.extend(dash.drain_events());
        let n = status_events(&seen, DEV_A1, "online").len();
        async move { (n == 1).then_some(()) }
    })
    .await;

    step(Duration::from_secs(600)).await;
    assert!(screen.is_connected(), "{:?}", screen.close_reason());
    assert!(dash.is_connected(), "{:?}", dash.close_reason());
    seen.extend(dash.drain_events());
    assert_eq!(status_events(&seen, DEV_A1, "offline").len(), 0);

    screen.disconnect().await;
    until("the offline status", || {
        seen.extend(dash.drain_events());
        let n = status_events(&seen, DEV_A1, "offline").len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    step(Duration::from_secs(60)).await;
    seen.extend(dash.drain_events());
    assert_eq!(status_events(&seen, DEV_A1, "offline").len(), 1);
    assert_eq!(status_events(&seen, DEV_A1, "online").len(), 1);
    // Dropped, not drained: the drain sleeps on the held clock (`drain.rs` covers it).
    drop(s);
}

#[tokio::test(start_paused = true)]
async fn a_device_reconnecting_faster_than_its_pace_waits_for_its_bucket() {
    let c = hold_and_start().await;
    let limits = &c.cfg.limits;
    let d = DeviceLimiter::new(limits);
    let burst = limits.connect_burst_per_device;
    let every = Duration::from_secs(60) / limits.connect_per_device_per_min;
    for i in 0..burst {
        assert_eq!(
            d.wait_time(DEV_A1),
            Duration::ZERO,
            "connect {i} of the burst"
        );
    }
    assert_eq!(
        d.wait_time(DEV_A1),
        every,
        "past the burst: one per interval"
    );
    assert_eq!(
        d.wait_time(DEV_A2),
        Duration::ZERO,
        "devices are independent"
    );
    advance(every - Duration::from_millis(1)).await;
    assert_eq!(d.wait_time(DEV_A1), Duration::from_millis(1));
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        d.wait_time(DEV_A1),
        Duration::ZERO,
        "the bucket allows it now"
    );
    assert_eq!(d.wait_time(DEV_A1), every, "and not the one after");
    // A device that stays away a whole burst's worth of intervals gets its burst back.
    advance(every * burst).await;
    for i in 0..burst {
        assert_eq!(
            d.wait_time(DEV_A1),
            Duration::ZERO,
            "refilled burst, connect {i}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn handshakes_past_the_per_ip_burst_get_their_retry_after() {
    let c = hold_and_start().await;
    let limits = &c.cfg.limits;
    let g = EdgeGuard::new(limits);
    let ip: IpAddr = [192, 0, 2, 7].into();
    for _ in 0..limits.connect_burst_per_ip {
        assert_eq!(g.check(Some(ip), false), Ok(()));
    }
    let every = Duration::from_secs(1) / limits.connect_rate_per_ip;
    assert_eq!(
        g.check(Some(ip), false),
        Err(Refusal::RateLimited { retry_after: every })
    );
    // Retrying before Retry-After is refused again (with what is left); at it, admitted.
    advance(every / 2).await;
    assert_eq!(
        g.check(Some(ip), false),
        Err(Refusal::RateLimited {
            retry_after: every - every / 2
        })
    );
    advance(every - every / 2).await;
    assert_eq!(g.check(Some(ip), false), Ok(()));
    assert!(matches!(
        g.check(Some(ip), false),
        Err(Refusal::RateLimited { .. })
    ));
    assert_eq!(g.check(Some([192, 0, 2, 8].into()), false), Ok(()));
}

/// The per-device pace through a real handshake (`app::run`, shipped limits): past the burst,
/// a connect is held — not refused — until the device's bucket allows it, then admitted.
#[tokio::test(start_paused = true)]
async fn through_app_run_a_connect_past_the_burst_is_held_until_the_bucket_allows_it() {
    let _hold = ClockHold::new();
    let s = Server::start(&[]).await;
    let limits = s.cfg.limits.clone();
    let every = Duration::from_secs(60) / limits.connect_per_device_per_min;
    // The burst, all at this instant of the held clock.
    for _ in 0..limits.connect_burst_per_device {
        let c = ws_device(s.client(), DEV_A1).await;
        c.disconnect().await;
    }
    let opts = s
        .client()
        .transport(vizora_sioclient::Transport::Websocket)
        .auth(serde_json::json!({"token": device_token(DEV_A1, ORG_A)}))
        .connect_timeout(Duration::from_secs(60));
    let held = tokio::spawn(vizora_sioclient::connect(opts));
    // Real time for the handshake to reach the pace (loopback and SQLite, no timers): a
    // connect admitted without waiting would have finished by then.
    let real = std::time::Instant::now();
    while real.elapsed() < Duration::from_millis(300) {
        settle().await;
    }
    assert!(!held.is_finished(), "admitted past the burst at once");
    advance(every - Duration::from_millis(1)).await;
    settle().await;
    assert!(!held.is_finished(), "admitted before the bucket allowed it");
    advance(Duration::from_millis(1)).await;
    let h = &held;
    until("the held connect admitted", || async move {
        h.is_finished().then_some(())
    })
    .await;
    let c = held
        .await
        .unwrap()
        .expect("held, then admitted (not refused)");
    assert!(c.is_connected());
}
