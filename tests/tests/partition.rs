//! Issue 16, self-fencing: a replica whose path to Redis freezes while the other replica reaches
//! it fences itself off (readiness 503, handshakes 503 `unavailable`, its sockets' transports
//! closed in batches) well inside the lease TTL, so its screens and dashboards reconnect to the
//! healthy replica and supersede their leases before any expires; when Redis answers it again
//! it serves again. A Redis outage every replica sees (a stall, a restart) fences nobody.
//!
//! Real processes: two replicas, one `redis-server`, PostgreSQL (the witness), a TCP balancer
//! that follows readiness as a Kubernetes Service does (`balancer.rs`), and the cut-off
//! replica's own path to Redis through a proxy whose `pause()` freezes it (no reset: packets
//! just stop). Each test has a positive control (the fence happened, or the outage lasted past
//! the fencing bound and was judged shared; a control device's real departure is seen), so a
//! slow machine fails them rather than passing them. They run one at a time (`SERIAL`).
//!
//! With `VIZORA_TEST_FENCE_RULE=never` (the replicas never fence) tests 1 and 2 fail; with
//! `always` (they fence without asking the witness) test 3 fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use vizora_gateway_tests::balancer::{Backend, Balancer};
use vizora_gateway_tests::player::{Player, executed_exactly_once};
use vizora_gateway_tests::proxy::PausableProxy;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, CloseReason, ConnectError, Event, Transport};

use crate::common::metric;

/// These tests time the fence against the lease TTL, on a machine shared with other tests: one
/// at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Twice the harness's default, for headroom on a loaded 2-core machine; the fencing bound is
/// relative to it (decided within TTL/4 + 2 × TTL/20 of the cut, sockets moved over TTL/6,
/// leases refreshed every TTL/3: see ARCHITECTURE.md).
const LEASE_TTL: Duration = Duration::from_millis(6000);
const SWEEP: Duration = Duration::from_millis(500);
const T: Duration = Duration::from_secs(30);
/// Screens on the replica that gets cut off, and on the healthy one.
const CUT: usize = 6;
const HEALTHY: usize = 2;

/// The lease TTL; and `VIZORA_TEST_FENCE_RULE` passed on (`never` or `always`: a gateway that
/// never fences, or fences without its witness, must fail these tests).
fn timings(o: GatewayOptions) -> GatewayOptions {
    let o = o.env("LEASE_TTL_MS", LEASE_TTL.as_millis());
    match std::env::var("VIZORA_TEST_FENCE_RULE") {
        Ok(rule) => o.env("VIZORA_TEST_FENCE_RULE", rule),
        Err(_) => o,
    }
}

async fn fenced(gw: &Gateway) -> f64 {
    metric(gw, "vizora_gateway_fenced{", "").await
}

async fn fence_events(gw: &Gateway, event: &str) -> f64 {
    metric(
        gw,
        "vizora_gateway_fence_events_total",
        &format!("event=\"{event}\""),
    )
    .await
}

/// Witness checks made after Redis had failed for the fencing bound, with `outcome` (or all).
async fn fence_checks(gw: &Gateway, outcome: &str) -> f64 {
    metric(gw, "vizora_gateway_fence_checks_total", outcome).await
}

async fn readiness(gw: &Gateway) -> (u16, Value) {
    gw.api().get("/api/health/ready").await
}

/// Waits until the confirmed lease of `dev` names `replica` and the player's current socket.
async fn wait_lease(c: &Cluster, dev: &str, p: &Player, replica: &str, within: Duration) {
    eventually(
        within,
        &format!("{dev}'s lease on {replica} naming its socket"),
        || async {
            let sid = p.sid()?;
            let l = c.lease(dev).await?;
            (l["replica"] == replica
                && l["sid"] == sid.as_str()
                && l.get("pending").is_none_or(|v| v != true))
            .then_some(())
        },
    )
    .await;
}

/// Sends a command through `via` once `at` has come, on its own task (the answer waits for the
/// owner's confirmation or the bound): the command id and the answer's `delivery`.
fn command_at(via: &Gateway, dev: &str, at: Instant) -> tokio::task::JoinHandle<(String, Value)> {
    let (api, dev) = (via.api(), dev.to_string());
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        let (st, body) = api.command(&dev, "reload", None).await;
        assert_eq!(st, 201, "{body}");
        (
            body["commandId"].as_str().unwrap().to_string(),
            body["delivery"].clone(),
        )
    })
}

/// Two replicas on one Redis, r1 through a proxy the test can freeze.
async fn partitionable_cluster(devices: usize) -> (Cluster, PausableProxy) {
    let redis = RedisServer::start().await;
    let proxy = PausableProxy::start(&redis.addr()).await;
    let (direct, via_proxy) = (redis.url(), format!("redis://{}", proxy.addr()));
    let c = Cluster::start_connected(redis, 2, devices, |o| {
        let url = if o.replica_id == "r1" {
            &via_proxy
        } else {
            &direct
        };
        timings(o).redis(url)
    })
    .await;
    (c, proxy)
}

/// A handshake straight to the fenced replica is refused transiently: 503 `unavailable`.
async fn assert_handshake_unavailable(gw: &Gateway) {
    let r = vizora_sioclient::connect(
        gw.client()
            .transport(Transport::Websocket)
            .auth(json!({"token": device_token(DEV_A2, ORG_A)})),
    )
    .await;
    match r {
        Err(ConnectError::Http { status, body, .. }) => {
            assert_eq!(status, 503, "{body}");
            let cause: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            assert_eq!(cause["error"], "unavailable", "{body}");
        }
        other => panic!("a fenced replica must refuse handshakes with 503: {other:?}"),
    }
}

/// Acceptance 1: a frozen Redis path under r1 of two replicas behind a balancer that follows
/// readiness, for twice the lease TTL.
#[tokio::test]
async fn a_replica_cut_off_from_redis_hands_its_screens_to_the_healthy_one_before_any_lease_expires()
 {
    let _serial = SERIAL.lock().await;
    let control = CUT + HEALTHY;
    let (c, proxy) = partitionable_cluster(control + 1).await;
    let (healthy, cut) = (&c.replicas[0], &c.replicas[1]);
    let (r0, r1) = (healthy.opts.replica_id.clone(), cut.opts.replica_id.clone());
    let lb = Balancer::start(vec![Backend::of(healthy), Backend::of(cut)]).await;

    // A dashboard on the healthy replica records everything from before the cut; one on the
    // cut-off replica must move too.
    let watcher = Player::dashboard(healthy.client(), lb.client()).await;
    let moving = Player::dashboard(cut.client(), lb.client()).await;
    let mut screens = Vec::new();
    for i in 0..CUT + HEALTHY {
        let first = if i < CUT { cut } else { healthy };
        screens.push(Player::device(&load_device(i), first.client(), lb.client()).await);
    }
    // The positive control for the sweep and the notices: a device on the healthy replica
    // that really leaves during the partition must be reported, once.
    let departing = load_device(control);
    let departing_screen = ws_device(healthy.client(), &departing).await;
    for (i, p) in screens.iter().enumerate() {
        let replica = if i < CUT { &r1 } else { &r0 };
        wait_lease(&c, &load_device(i), p, replica, T).await;
        c.wait_db_status(&load_device(i), "online").await;
    }
    c.wait_db_status(&departing, "online").await;
    assert_eq!((fenced(healthy).await, fenced(cut).await), (0.0, 0.0));

    proxy.pause();
    let cut_at = Instant::now();
    // Confirmed delivery: a command sent through the healthy replica 1 s into the partition,
    // for a screen whose lease still names r1, is executed exactly once (checked at the end).
    let command = command_at(healthy, &load_device(0), cut_at + Duration::from_secs(1));

    // Every screen of the cut-off replica reconnects through the balancer to the healthy one
    // and supersedes its lease there, while r1's path is still frozen.
    for (i, p) in screens.iter().enumerate().take(CUT) {
        wait_lease(&c, &load_device(i), p, &r0, LEASE_TTL * 2).await;
    }
    let moved = cut_at.elapsed();
    eprintln!("screens moved {moved:?} after the cut (lease TTL {LEASE_TTL:?})");
    assert!(
        moved < LEASE_TTL,
        "the screens moved {moved:?} after the cut, not within the lease TTL"
    );
    assert_eq!(fenced(cut).await, 1.0, "r1 is fenced");
    assert_eq!(fence_events(cut, "fence").await, 1.0);
    let (status, body) = readiness(cut).await;
    assert_eq!((status, &body["reason"]), (503, &json!("fenced")), "{body}");
    assert_handshake_unavailable(cut).await;
    assert_eq!(readiness(healthy).await.0, 200, "r0 stays ready");
    assert_eq!(fenced(healthy).await, 0.0, "r0 is not fenced");
    eventually(T, "the moved dashboard on r0", || async {
        moving.sid().filter(|_| !moving.closes().is_empty())
    })
    .await;

    departing_screen.disconnect().await;
    eventually(
        T,
        "the departed device's offline at the dashboard",
        || async {
            offline_events(&watcher.events())
                .contains(&departing)
                .then_some(())
        },
    )
    .await;
    // The rest of twice the lease TTL, still cut off: long past any lease left on r1.
    tokio::time::sleep_until(cut_at + LEASE_TTL * 2).await;
    assert_eq!(fenced(cut).await, 1.0, "r1 stays fenced while cut off");
    proxy.resume();

    eventually(T, "r1 ready again, and the balancer sees it", || async {
        (readiness(cut).await.0 == 200 && lb.ready() == vec![true, true]).then_some(())
    })
    .await;
    assert_eq!(fenced(cut).await, 0.0);
    assert_eq!(fence_events(cut, "unfence").await, 1.0);
    assert!(
        lb.changes().contains(&(1, false)),
        "the balancer saw r1 unready: {:?}",
        lb.changes()
    );

    // Nothing was lost on the way: no server disconnect (only transport closes on r1's
    // sockets, none on r0's), no offline but the departed device's, no notification but its.
    for (i, p) in screens.iter().enumerate() {
        let closes = p.closes();
        if i < CUT {
            assert!(
                !closes.is_empty() && closes.iter().all(|r| *r == CloseReason::TransportClose),
                "{}: {closes:?}",
                load_device(i)
            );
        } else {
            assert!(closes.is_empty(), "{}: {closes:?}", load_device(i));
        }
    }
    assert_eq!(moving.closes(), vec![CloseReason::TransportClose]);
    assert!(watcher.closes().is_empty(), "{:?}", watcher.closes());
    for d in [&watcher, &moving] {
        let offline = offline_events(&d.events());
        assert!(
            offline.iter().all(|d| *d == departing),
            "false offline events: {offline:?}"
        );
    }
    for i in 0..CUT + HEALTHY {
        assert_eq!(
            c.notifications(&load_device(i), "device_offline").await,
            0,
            "device_offline notification for {}",
            load_device(i)
        );
    }
    assert_eq!(c.all_notifications("device_online").await, 0);
    eventually(T, "the departed device's notification", || async {
        (c.notifications(&departing, "device_offline").await == 1).then_some(())
    })
    .await;

    // After the heal, Redis, devices.status and both dashboards agree every screen is online.
    for (i, p) in screens.iter().enumerate() {
        let dev = load_device(i);
        wait_lease(&c, &dev, p, &r0, T).await;
        assert_eq!(c.db_status(&dev).await, "online", "devices.status of {dev}");
    }
    let (id, delivery) = command.await.unwrap();
    eprintln!("the command sent into the partition was answered {delivery}");
    executed_exactly_once(&screens[0], &id, cut, &load_device(0)).await;
    for (name, shown) in [
        ("watcher", dashboard_view(&watcher.events())),
        ("moved dashboard", dashboard_view(&moving.current_events())),
    ] {
        for i in 0..CUT + HEALTHY {
            let dev = load_device(i);
            assert_eq!(
                shown.get(&dev).map(String::as_str),
                Some("online"),
                "the {name} shows {dev}"
            );
        }
    }
}

/// Acceptance 2: the same partition without a balancer: the screens can only retry the cut-off
/// replica. They are refused while it is fenced and all get back in once it serves again.
#[tokio::test]
async fn without_a_balancer_the_screens_of_a_fenced_replica_get_back_in_once_it_serves_again() {
    let _serial = SERIAL.lock().await;
    let (c, proxy) = partitionable_cluster(CUT).await;
    let cut = &c.replicas[1];
    let r1 = cut.opts.replica_id.clone();
    let mut screens = Vec::new();
    for i in 0..CUT {
        screens.push(Player::device(&load_device(i), cut.client(), cut.client()).await);
    }
    for (i, p) in screens.iter().enumerate() {
        wait_lease(&c, &load_device(i), p, &r1, T).await;
    }

    proxy.pause();
    let cut_at = Instant::now();
    let command = command_at(
        &c.replicas[0],
        &load_device(0),
        cut_at + Duration::from_secs(1),
    );
    // Positive control: the fence closed every screen's transport, and their retries are
    // refused with 503 `unavailable` (not left hanging on a replica that cannot serve them).
    eventually(LEASE_TTL * 2, "every screen closed and refused", || async {
        screens
            .iter()
            .all(|p| {
                !p.closes().is_empty()
                    && p.refusals()
                        .iter()
                        .any(|r| r.starts_with("503") && r.contains("unavailable"))
            })
            .then_some(())
    })
    .await;
    assert_eq!(fenced(cut).await, 1.0);
    tokio::time::sleep_until(cut_at + LEASE_TTL * 2).await;
    assert!(
        screens.iter().all(|p| p.sid().is_none()),
        "no screen gets in while r1 is fenced"
    );
    proxy.resume();

    // Nobody stranded: every screen is connected again, on r1, holding its lease.
    for (i, p) in screens.iter().enumerate() {
        wait_lease(&c, &load_device(i), p, &r1, T).await;
        c.wait_db_status(&load_device(i), "online").await;
        assert!(
            p.closes().iter().all(|r| *r == CloseReason::TransportClose),
            "{}: {:?}",
            load_device(i),
            p.closes()
        );
    }
    assert_eq!(readiness(cut).await.0, 200);
    assert_eq!(fenced(cut).await, 0.0);
    assert_eq!(fence_events(cut, "fence").await, 1.0);
    assert_eq!(fence_events(cut, "unfence").await, 1.0);
    // The command sent through r0 1 s into the partition: r1 could not confirm it, so it was
    // queued, and it reached its screen once the screen got back in.
    let (id, delivery) = command.await.unwrap();
    assert_eq!(
        delivery, "queued",
        "r1 was cut off: nothing could confirm the write"
    );
    executed_exactly_once(&screens[0], &id, &c.replicas[0], &load_device(0)).await;
}

/// Whether every screen's socket holds its device's lease.
async fn all_leased(redis: &RedisServer, screens: &[(String, Client)]) -> Option<()> {
    for (dev, s) in screens {
        let l = redis
            .get(&format!("device:lease:{dev}"))
            .await
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())?;
        if l["sid"] != s.sid() {
            return None;
        }
    }
    Some(())
}

/// Acceptance 3: Redis stopped for everyone (SIGSTOP, then SIGCONT) and then restarted empty,
/// each for twice the lease TTL: nothing fences, no transport closes, no offline, no
/// notification. The positive control: on both replicas the fencing rule was consulted after
/// each outage had lasted past its bound, and judged it shared.
#[tokio::test]
async fn a_redis_outage_every_replica_sees_fences_nobody() {
    let _serial = SERIAL.lock().await;
    let per = 3;
    let departing = load_device(2 * per);
    let mut c = Cluster::start(2, 2 * per + 1, timings).await;
    let mut dashboards = Vec::new();
    for r in &c.replicas {
        dashboards.push(ws_dashboard(r.client(), ORG_A).await);
    }
    let mut screens = Vec::new();
    for i in 0..2 * per {
        let dev = load_device(i);
        screens.push((
            dev.clone(),
            ws_device(c.replicas[i % 2].client(), &dev).await,
        ));
    }
    let departing_screen = ws_device(c.replicas[0].client(), &departing).await;
    eventually(T, "every lease", || all_leased(&c.redis, &screens)).await;
    for (dev, _) in &screens {
        c.wait_db_status(dev, "online").await;
    }

    for fault in ["stall", "restart"] {
        let mut before = Vec::new();
        for r in &c.replicas {
            before.push((
                fence_checks(r, "outcome=").await,
                fence_checks(r, "outcome=\"shared_outage\"").await,
            ));
        }
        let at = Instant::now();
        if fault == "stall" {
            c.redis.pause();
        } else {
            c.redis.stop();
        }
        // The outage outlasted the fencing bound: each replica consulted its witness.
        for (k, r) in c.replicas.iter().enumerate() {
            eventually(
                LEASE_TTL * 2,
                &format!("{fault}: r{k} asked its witness"),
                || async { (fence_checks(r, "outcome=").await > before[k].0).then_some(()) },
            )
            .await;
        }
        tokio::time::sleep_until(at + LEASE_TTL * 2).await;
        if fault == "stall" {
            c.redis.resume();
        } else {
            c.redis.start_again().await;
        }
        eventually(T, &format!("{fault}: every lease re-asserted"), || {
            all_leased(&c.redis, &screens)
        })
        .await;
        for (k, r) in c.replicas.iter().enumerate() {
            assert_eq!(fence_events(r, "fence").await, 0.0, "{fault}: r{k} fenced");
            assert_eq!(fenced(r).await, 0.0, "{fault}: r{k} fenced");
            assert_eq!(readiness(r).await.0, 200, "{fault}: r{k} readiness");
            assert!(
                fence_checks(r, "outcome=\"shared_outage\"").await > before[k].1,
                "{fault}: r{k} judged the outage shared"
            );
        }
        for (dev, s) in &screens {
            assert_eq!(s.close_reason(), None, "{fault}: {dev} lost its transport");
        }
    }

    // Past the sweep grace the restart opened: a lease left behind would be swept now. Then a
    // device really leaves; its offline reaching both dashboards shows they would have seen
    // any other.
    eventually(T, "the sweep grace over", || async {
        (!c.redis.exists("presence:grace-until").await).then_some(())
    })
    .await;
    tokio::time::sleep(SWEEP * 3).await;
    departing_screen.disconnect().await;
    let mut seen: Vec<Vec<Event>> = vec![Vec::new(); dashboards.len()];
    for (d, seen) in dashboards.iter().zip(seen.iter_mut()) {
        record_until(d, seen, T, "the departed device's offline", |ev| {
            offline_events(ev).contains(&departing)
        })
        .await;
    }
    for (k, events) in seen.iter().enumerate() {
        let offline = offline_events(events);
        assert_eq!(offline, vec![departing.clone()], "dashboard {k}");
    }
    for (dev, s) in &screens {
        assert_eq!(s.close_reason(), None, "{dev} lost its transport");
        assert_eq!(c.db_status(dev).await, "online", "devices.status of {dev}");
        assert_eq!(c.notifications(dev, "device_offline").await, 0, "{dev}");
    }
    for (k, d) in dashboards.iter().enumerate() {
        assert_eq!(d.close_reason(), None, "dashboard {k} lost its transport");
    }
    assert_eq!(c.all_notifications("device_online").await, 0);
}
