//! Issue 3 under faults: slow disconnect handlers, a SIGKILLed replica, a Redis restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::metric;
use serde_json::json;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, CloseReason, Event};

const T: Duration = Duration::from_secs(15);
const FENCE_CHECKS: &str = "vizora_gateway_fence_checks_total";
const STORE_ERRORS: &str = "vizora_gateway_store_errors_total";

fn statuses(events: &[Event], dev: &str, status: &str) -> usize {
    status_events(events, dev, status).len()
}

/// Waits until the dashboard has recorded `dev` going offline (`seen` keeps every event).
async fn until_offline(dash: &Client, seen: &mut Vec<Event>, dev: &str) {
    record_until(dash, seen, T, &format!("{dev} offline"), |evs| {
        statuses(evs, dev, "offline") > 0
    })
    .await;
}

#[tokio::test]
async fn reconnect_elsewhere_while_old_disconnect_is_slow_is_never_offline() {
    // Every release waits 1.5 s before it runs: the reconnect on B always wins the race.
    let c = Cluster::start(2, 0, |o| o.env("VIZORA_TEST_RELEASE_DELAY_MS", 1500)).await;
    let dash = ws_dashboard(c.replicas[1].client(), ORG_A).await;
    // Markers: devices that really leave, right after each slow release has started on the same
    // replica. Their offline, which passes through the same delay, tells when that release has
    // run, and shows the dashboard does receive status events (a positive control).
    let marker_a = ws_device(c.replicas[0].client(), DEV_A2).await;
    let marker_b = ws_device(c.replicas[1].client(), DEV_A3).await;
    let old = ws_device(c.replicas[0].client(), DEV_A1).await;
    for d in [DEV_A1, DEV_A2, DEV_A3] {
        c.wait_db_status(d, "online").await;
    }
    let mut seen = Vec::new();
    old.disconnect().await;
    let new = ws_device(c.replicas[1].client(), DEV_A1).await;
    marker_a.disconnect().await;
    until_offline(&dash, &mut seen, DEV_A2).await; // old's slow release on A has run by now
    assert!(new.is_connected());
    assert_eq!(c.lease(DEV_A1).await.unwrap()["sid"], new.sid());
    assert_eq!(c.db_status(DEV_A1).await, "online");
    new.disconnect().await;
    let again = ws_device(c.replicas[0].client(), DEV_A1).await;
    marker_b.disconnect().await;
    until_offline(&dash, &mut seen, DEV_A3).await; // new's slow release on B has run by now
    assert!(again.is_connected());
    assert_eq!(c.lease(DEV_A1).await.unwrap()["sid"], again.sid());
    seen.extend(dash.drain_events());
    assert_eq!(
        statuses(&seen, DEV_A1, "offline"),
        0,
        "never reported offline: {seen:?}"
    );
    for d in [DEV_A2, DEV_A3] {
        assert_eq!(statuses(&seen, d, "offline"), 1, "{d}: {seen:?}");
    }
    again.disconnect().await;
}

#[tokio::test]
async fn killed_replica_devices_move_and_the_missing_one_goes_offline_once() {
    let mut c = Cluster::start(3, 0, |o| o).await;
    let dash = ws_dashboard(c.replicas[0].client(), ORG_A).await;
    let moving = ws_device(c.replicas[2].client(), DEV_A1).await;
    let lost = ws_device(c.replicas[2].client(), DEV_A2).await;
    for d in [DEV_A1, DEV_A2] {
        c.wait_db_status(d, "online").await;
    }
    dash.drain_events();

    c.replicas[2].kill9();
    // The screen notices its connection died and reconnects to a surviving replica; the other
    // screen is gone for good.
    assert!(moving.closed(T).await.is_some());
    let moved = ws_device(c.replicas[1].client(), DEV_A1).await;
    assert!(lost.closed(T).await.is_some());

    // Lease TTL (3 s) + sweep interval (0.5 s), with slack for scheduling.
    eventually(
        Duration::from_secs(8),
        "the lost device offline in Redis",
        || async {
            c.redis
                .get(&format!("device:status:{DEV_A2}"))
                .await
                .filter(|s| s.contains("\"offline\""))
                .map(|_| ())
        },
    )
    .await;
    c.wait_db_status(DEV_A2, "offline").await;
    // Positive control: a device whose replica "died" now. Its offline shows a sweep ran past
    // the deadline of every lease left behind (a second expiry of the lost device's, the moved
    // device's old one); its notification, that the notices ran past the lost device's.
    c.abandon_lease(DEV_A3, ORG_A).await;
    let mut events = Vec::new();
    until_offline(&dash, &mut events, DEV_A3).await;
    eventually(T, "the control device's offline notification", || async {
        (c.notifications(DEV_A3, "device_offline").await > 0).then_some(())
    })
    .await;
    events.extend(dash.drain_events());
    assert_eq!(
        statuses(&events, DEV_A2, "offline"),
        1,
        "exactly one offline transition: {events:?}"
    );
    assert_eq!(
        statuses(&events, DEV_A1, "offline"),
        0,
        "the moved device never went offline: {events:?}"
    );
    assert!(moved.is_connected());
    assert_eq!(c.db_status(DEV_A1).await, "online");
    assert_eq!(
        c.notifications(DEV_A2, "device_offline").await,
        1,
        "one offline notification"
    );
    assert_eq!(c.notifications(DEV_A1, "device_offline").await, 0);
}

#[tokio::test]
async fn redis_restart_under_load_reports_nobody_offline_and_recovers() {
    let n = 100;
    let mut c = Cluster::start(3, n, |o| o).await;
    let dash = ws_dashboard(c.replicas[0].client(), ORG_A).await;
    let mut screens = Vec::new();
    for i in 0..n {
        screens.push(ws_device(c.replicas[i % 3].client(), &load_device(i)).await);
    }
    let pids: Vec<_> = c.replicas.iter().map(|r| r.pid()).collect();
    dash.drain_events();

    c.redis.restart().await;

    // Commands and broadcasts work again within seconds (sent through another replica).
    let target = &screens[2]; // on replica 2
    eventually(
        T,
        "a command crosses replicas after the restart",
        || async {
            let (st, body) = c.replicas[0]
                .api()
                .command(&load_device(2), "reload", None)
                .await;
            if st != 201 {
                return None;
            }
            let id = body["commandId"].clone();
            let got = target
                .wait_for("command", Duration::from_millis(500))
                .await?;
            (got["id"] == id).then_some(())
        },
    )
    .await;
    eventually(T, "an org broadcast reaches every replica", || async {
        let (st, _) = c.replicas[1]
            .api()
            .post(
                "/api/push/broadcast",
                json!({"organizationId": ORG_A, "event": "ping:all", "data": {}}),
            )
            .await;
        if st != 201 {
            return None;
        }
        let a = screens[0]
            .wait_for("ping:all", Duration::from_millis(500))
            .await;
        let b = screens[1]
            .wait_for("ping:all", Duration::from_millis(500))
            .await;
        (a.is_some() && b.is_some()).then_some(())
    })
    .await;
    // Positive control: a device whose replica "died" now. Its offline shows a sweep ran,
    // past the grace the restart started, past the deadline of every lease not refreshed since
    // the replicas re-asserted them: the sweeps had their chance to do damage.
    c.abandon_lease(DEV_A1, ORG_A).await;
    let mut events = Vec::new();
    until_offline(&dash, &mut events, DEV_A1).await;
    events.extend(dash.drain_events());
    let offline: Vec<String> = offline_events(&events)
        .into_iter()
        .filter(|d| d != DEV_A1)
        .collect();
    assert_eq!(
        offline,
        Vec::<String>::new(),
        "no device reported offline after the Redis restart"
    );
    assert!(
        screens.iter().all(Client::is_connected),
        "every screen kept its socket"
    );
    for i in [0, 1, 2, n - 1] {
        assert_eq!(c.db_status(&load_device(i)).await, "online");
        assert!(
            c.lease(&load_device(i)).await.is_some(),
            "leases re-asserted"
        );
    }
    let now: Vec<_> = c.replicas.iter().map(|r| r.pid()).collect();
    assert_eq!(pids, now, "no replica restarted");
    for r in &c.replicas {
        let (st, _) = r.api().get_text("/api/health/ready", &[]).await;
        assert_eq!(st, 200);
    }
    let _ = CloseReason::TransportClose;
}

#[tokio::test]
async fn epoch_stays_monotonic_across_a_redis_restart() {
    let mut c = Cluster::start(2, 0, |o| o).await;
    let old = ws_device(c.replicas[0].client(), DEV_A1).await;
    let first: u64 = eventually(T, "lease", || async { c.lease(DEV_A1).await }).await["epoch"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    c.redis.restart().await; // no persistence: every key, the epoch included, is gone
    // The old replica re-asserts the lease of its live socket with the old epoch.
    let reasserted = eventually(T, "the old replica re-asserts its lease", || async {
        c.lease(DEV_A1).await
    })
    .await;
    assert_eq!(reasserted["sid"], old.sid());
    assert_eq!(
        reasserted["epoch"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        first
    );
    // The device reconnects elsewhere: its new epoch must beat the re-asserted one.
    let new = ws_device(c.replicas[1].client(), DEV_A1).await;
    let lease = eventually(T, "the new socket owns the lease", || async {
        c.lease(DEV_A1).await.filter(|l| l["sid"] == new.sid())
    })
    .await;
    assert!(lease["epoch"].as_str().unwrap().parse::<u64>().unwrap() > first);
    assert_eq!(
        old.closed(T).await,
        Some(CloseReason::ServerDisconnect),
        "the superseded socket is told to go"
    );
    assert!(new.is_connected());

    // `> first` above holds by Redis TIME alone. The other half of the rule, `stored + 1`, is
    // what keeps epochs moving forward when the stored epoch is AHEAD of Redis's clock (written
    // through a primary whose clock ran ahead, or two acquires in one microsecond): store an
    // epoch an hour in Redis's future, and the next connection must get exactly that plus one.
    let now_us = c.redis.time_us().await;
    let ahead = now_us + 3_600 * 1_000_000;
    let _: String = c
        .redis
        .cmd(&["SET", &format!("device:epoch:{DEV_A1}"), &ahead.to_string()])
        .await;
    let newest = ws_device(c.replicas[0].client(), DEV_A1).await;
    let lease = eventually(T, "the newest socket owns the lease", || async {
        c.lease(DEV_A1).await.filter(|l| l["sid"] == newest.sid())
    })
    .await;
    assert_eq!(
        lease["epoch"].as_str().unwrap().parse::<u64>().unwrap(),
        ahead + 1,
        "epoch = max(stored + 1, Redis TIME)"
    );
    assert_eq!(
        new.closed(T).await,
        Some(CloseReason::ServerDisconnect),
        "the socket before it is superseded"
    );
    // The refresh finds it fresh (a stale lease would not have its deadline pushed forward).
    let deadline = || async { c.lease_deadline_ms(DEV_A1).await.unwrap() };
    let first_deadline = deadline().await;
    eventually(T, "a lease refresh after the connect", || async {
        (deadline().await > first_deadline).then_some(())
    })
    .await;
    assert!(newest.is_connected());
    assert_eq!(
        c.redis.get(&format!("device:epoch:{DEV_A1}")).await,
        Some((ahead + 1).to_string())
    );
}

#[tokio::test]
async fn during_a_redis_outage_live_sockets_are_served_and_health_reports_it() {
    let mut c = Cluster::start(2, 0, |o| o).await;
    let screen = ws_device(c.replicas[0].client(), DEV_A1).await;
    let api = c.replicas[0].api();
    let judged_before = metric(&c.replicas[0], FENCE_CHECKS, "").await;
    let refreshes_before = metric(&c.replicas[0], STORE_ERRORS, r#"op="refresh""#).await;
    c.redis.stop();
    // Heartbeats are still answered (presence follows the socket); the deep health reports the
    // outage, readiness does not (contract §7: the replica stays in the Service).
    let ack = screen
        .emit_with_ack("heartbeat", json!({"metrics": {"cpuUsage": 5}}), T)
        .await
        .unwrap();
    assert_eq!(ack["success"], true, "{ack}");
    eventually(T, "the deep health reports the outage", || async {
        let (_, health) = api.get("/api/health").await;
        (health["dependencies"]["redis"]["status"] == "unhealthy").then_some(())
    })
    .await;
    let (st, body) = api.get_text("/api/health/ready", &[]).await;
    assert_eq!(st, 200, "readiness does not follow Redis: {body}");
    // Positive control: the periodic steps that could drop the socket did run in the outage.
    // The fence judged it (not fencing), and the lease refresh failed five times: every TTL/3,
    // so over more than a lease TTL.
    eventually(T, "a fence check and five failed refreshes", || async {
        let judged = metric(&c.replicas[0], FENCE_CHECKS, "").await;
        let refreshes = metric(&c.replicas[0], STORE_ERRORS, r#"op="refresh""#).await;
        (judged > judged_before && refreshes >= refreshes_before + 5.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&c.replicas[0], FENCE_CHECKS, r#"outcome="fence""#).await,
        0.0,
        "an outage every replica sees fences nobody"
    );
    assert!(screen.is_connected(), "the socket outlives the outage");

    c.redis.start_again().await;
    eventually(T, "the deep health recovers without a restart", || async {
        let (_, health) = api.get("/api/health").await;
        (health["dependencies"]["redis"]["status"] == "healthy").then_some(())
    })
    .await;
    eventually(T, "the lease re-asserted", || async {
        c.lease(DEV_A1)
            .await
            .filter(|l| l["sid"] == screen.sid())
            .map(|_| ())
    })
    .await;
    eventually(T, "commands flow again across replicas", || async {
        let (st, body) = c.replicas[1].api().command(DEV_A1, "reload", None).await;
        if st != 201 {
            return None;
        }
        let got = screen
            .wait_for("command", Duration::from_millis(500))
            .await?;
        (got["id"] == body["commandId"]).then_some(())
    })
    .await;
    assert_eq!(c.db_status(DEV_A1).await, "online");
}

/// A screen that leaves while Redis is down, and Redis comes back empty (no persistence): its
/// replica retries the release, so the screen still goes offline — once, in Redis, in the
/// database and on a dashboard of another replica — instead of staying online forever.
#[tokio::test]
async fn a_device_that_leaves_during_a_redis_outage_goes_offline_when_redis_returns() {
    let mut c = Cluster::start(2, 0, |o| o).await;
    let dash = ws_dashboard(c.replicas[1].client(), ORG_A).await;
    let stays = ws_device(c.replicas[0].client(), DEV_A1).await;
    let leaves = ws_device(c.replicas[0].client(), DEV_A2).await;
    for d in [DEV_A1, DEV_A2] {
        c.wait_db_status(d, "online").await;
    }
    dash.drain_events();

    c.redis.stop();
    leaves.disconnect().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.redis.start_again().await;

    c.wait_db_status(DEV_A2, "offline").await;
    eventually(T, "the departed screen offline in Redis", || async {
        c.redis
            .get(&format!("device:status:{DEV_A2}"))
            .await
            .filter(|s| s.contains("\"offline\""))
            .map(|_| ())
    })
    .await;
    // Every dashboard event is kept: a forbidden offline of the screen that stayed cannot be
    // skipped over while waiting for the departed one's.
    let mut seen = Vec::new();
    until_offline(&dash, &mut seen, DEV_A2).await;
    // Several refresh rounds later: still exactly that one transition, and the screen that
    // stayed is online everywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    seen.extend(dash.drain_events());
    assert_eq!(
        statuses(&seen, DEV_A2, "offline"),
        1,
        "no second offline: {seen:?}"
    );
    assert_eq!(statuses(&seen, DEV_A1, "offline"), 0, "{seen:?}");
    assert!(stays.is_connected());
    assert_eq!(c.db_status(DEV_A1).await, "online");
    assert_eq!(c.db_status(DEV_A2).await, "offline");
}

/// A socket whose supersession never reached it (the newer connection's disconnect emit was
/// lost) and which heartbeats before the next refresh: the heartbeat writes no status, takes
/// none of the commands queued for the newer connection, and ends that socket; its own release
/// then changes nothing.
#[tokio::test]
async fn a_heartbeat_from_a_superseded_socket_takes_nothing_and_ends_it() {
    // A long TTL keeps the refresh (every TTL/3) out of the way.
    let c = Cluster::start(1, 0, |o| o.env("LEASE_TTL_MS", 60_000)).await;
    let old = ws_device(c.replicas[0].client(), DEV_A1).await;
    let lease = eventually(T, "the lease confirmed", || async {
        c.lease(DEV_A1)
            .await
            .filter(|l| l["sid"] == old.sid() && l.get("pending") != Some(&json!(true)))
    })
    .await;
    c.wait_db_status(DEV_A1, "online").await;
    // A newer connection's acquire, as another replica would have written it (still pending,
    // so commands for the device are queued rather than emitted).
    let newer = lease["epoch"].as_str().unwrap().parse::<u64>().unwrap() + 1;
    let mut conn = c.redis.conn().await;
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(format!("device:epoch:{DEV_A1}"))
        .arg(newer.to_string())
        .cmd("SET")
        .arg(format!("device:lease:{DEV_A1}"))
        .arg(
            json!({"epoch": newer.to_string(), "replica": "r-elsewhere", "sid": "newer-sid",
                   "org": ORG_A, "pending": true})
            .to_string(),
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    let (st, _) = c.replicas[0].api().command(DEV_A1, "reload", None).await;
    assert_eq!(st, 201);
    let queued_key = format!("device:commands:{DEV_A1}");
    let queued = || {
        let mut conn = conn.clone();
        let key = queued_key.clone();
        async move {
            redis::cmd("LLEN")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(queued().await, 1, "queued for the newer connection");
    let status_before = c.redis.get(&format!("device:status:{DEV_A1}")).await;

    let ack = old
        .emit_with_ack("heartbeat", json!({"metrics": {"cpuUsage": 5}}), T)
        .await
        .unwrap();
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(ack["commands"], json!([]), "{ack}");
    assert_eq!(
        queued().await,
        1,
        "the command is still there for the newer connection"
    );
    assert_eq!(
        c.redis.get(&format!("device:status:{DEV_A1}")).await,
        status_before,
        "the status JSON is not overwritten"
    );
    assert_eq!(old.closed(T).await, Some(CloseReason::ServerDisconnect));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.lease(DEV_A1).await.unwrap()["sid"],
        "newer-sid",
        "the old socket's release changed nothing"
    );
    assert_eq!(c.db_status(DEV_A1).await, "online");
}

/// The worst moment to lose a replica: a screen connects to B, whose transition writer is held
/// (the online write is still queued), B is SIGKILLed, and the screen reconnects to C, whose
/// acquire finds B's lease (so it is no transition). The row must still agree with Redis, and
/// not by the `lastHeartbeat` flush: it is an hour away here.
#[tokio::test]
async fn a_transition_queued_on_a_killed_replica_is_not_lost() {
    let mut c = Cluster::start(3, 0, |o| {
        let o = o.env("LAST_SEEN_FLUSH_MS", 3_600_000);
        if o.replica_id == "r1" {
            o.env("VIZORA_TEST_TRANSITION_DELAY_MS", 600_000)
        } else {
            o
        }
    })
    .await;
    let screen = ws_device(c.replicas[1].client(), DEV_A1).await;
    eventually(T, "B's lease", || async {
        c.lease(DEV_A1)
            .await
            .filter(|l| l["sid"] == screen.sid())
            .map(|_| ())
    })
    .await;
    assert_eq!(
        c.db_status(DEV_A1).await,
        "offline",
        "B's online write is still queued"
    );
    c.replicas[1].kill9();
    assert!(screen.closed(T).await.is_some());
    let moved = ws_device(c.replicas[2].client(), DEV_A1).await;
    let lease = c.lease(DEV_A1).await.unwrap();
    assert_eq!(lease["sid"], moved.sid(), "C superseded B's lease");
    c.wait_db_status(DEV_A1, "online").await;
    assert!(moved.is_connected());
}
