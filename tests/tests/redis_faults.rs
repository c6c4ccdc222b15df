//! Issue 6: Redis as it really runs. A Redis that comes back with OLDER data (a snapshot, a
//! truncated AOF, a promoted replica that lagged) or that stalls for longer than the lease TTL
//! must not strand a screen, report a live device offline, or write a notification; a device
//! that really leaves meanwhile still goes offline once, everywhere.
//!
//! Absence is asserted on everything recorded: the dashboards' events are never consumed by a
//! waiting helper, they are drained once at the end and searched for anything forbidden.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vizora_gateway_tests::proxy::PausableProxy;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, CloseReason, Event};

const T: Duration = Duration::from_secs(15);
/// The harness's LEASE_TTL_MS and PRESENCE_SWEEP_INTERVAL_MS (see `tests/src/gateway.rs`).
const LEASE_TTL: Duration = Duration::from_millis(3000);
const SWEEP: Duration = Duration::from_millis(500);
const DEVICES: usize = 12;

/// Screens of org A spread over the replicas, and one dashboard per replica recording all.
struct Fleet {
    screens: Vec<(String, Client)>,
    dashboards: Vec<Client>,
}

impl Fleet {
    async fn connect(c: &Cluster, devices: usize) -> Fleet {
        let mut dashboards = Vec::new();
        for r in &c.replicas {
            dashboards.push(ws_dashboard(r.client(), ORG_A).await);
        }
        let mut f = Fleet {
            screens: Vec::new(),
            dashboards,
        };
        for i in 0..devices {
            f.add(c, i).await;
        }
        f
    }

    /// Connects `load_device(i)` to replica `i % n` and waits for its confirmed lease.
    async fn add(&mut self, c: &Cluster, i: usize) {
        let dev = load_device(i);
        let s = ws_device(c.replicas[i % c.replicas.len()].client(), &dev).await;
        wait_lease(c, &dev, s.sid()).await;
        self.screens.push((dev, s));
    }

    /// The device of screen `k` connects again on the next replica: a newer epoch supersedes
    /// the old socket (which the server disconnects, as it must) without any offline.
    async fn reconnect(&mut self, c: &Cluster, k: usize) {
        let dev = self.screens[k].0.clone();
        let n = c.replicas.len();
        let new = ws_device(c.replicas[(k + 1) % n].client(), &dev).await;
        let old = std::mem::replace(&mut self.screens[k].1, new);
        assert_eq!(old.closed(T).await, Some(CloseReason::ServerDisconnect));
        wait_lease(c, &dev, self.screens[k].1.sid()).await;
    }

    /// Every event the dashboards received since they connected.
    fn dashboard_events(&self) -> Vec<Event> {
        self.dashboards
            .iter()
            .flat_map(|d| d.drain_events())
            .collect()
    }

    fn screen(&self, k: usize) -> &Client {
        &self.screens[k].1
    }
}

async fn wait_lease(c: &Cluster, dev: &str, sid: &str) {
    eventually(T, &format!("the confirmed lease of {dev}"), || async {
        c.lease(dev)
            .await
            .filter(|l| l["sid"] == sid && l.get("pending").is_none_or(|p| p != true))
            .map(|_| ())
    })
    .await;
}

/// Gives a false sweep every chance to happen: past any grace window the gateways opened, then
/// longer than a lease TTL plus a sweep interval and a second.
async fn let_sweeps_run(c: &Cluster) {
    eventually(T, "no sweep grace pending", || async {
        (!c.redis.exists("presence:grace-until").await).then_some(())
    })
    .await;
    tokio::time::sleep(LEASE_TTL + SWEEP + Duration::from_secs(1)).await;
}

/// A command sent through `via` reaches screen `k` (on another replica).
async fn command_reaches(c: &Cluster, f: &Fleet, via: usize, k: usize) {
    let dev = f.screens[k].0.clone();
    eventually(
        T,
        &format!("a command through r{via} reaches {dev}"),
        || async {
            let (st, body) = c.replicas[via].api().command(&dev, "reload", None).await;
            if st != 201 {
                return None;
            }
            let got = f
                .screen(k)
                .wait_for("command", Duration::from_millis(500))
                .await?;
            (got["id"] == body["commandId"]).then_some(())
        },
    )
    .await;
}

/// Nothing forbidden happened to a live fleet: no screen lost its socket, no offline reached a
/// dashboard, no notification row was written, and every device is online in PostgreSQL and
/// holds its own lease in Redis.
async fn assert_fleet_untouched(c: &Cluster, f: &Fleet) {
    for (dev, s) in &f.screens {
        assert_eq!(s.close_reason(), None, "{dev} lost its socket");
        assert!(s.is_connected(), "{dev} stranded");
    }
    let offline: Vec<_> = f
        .dashboard_events()
        .into_iter()
        .filter(|e| e.name == "device:status" && e.args[0]["status"] == "offline")
        .collect();
    assert!(offline.is_empty(), "false offline events: {offline:?}");
    for kind in ["device_offline", "device_online"] {
        assert_eq!(c.all_notifications(kind).await, 0, "{kind} notifications");
    }
    for (dev, s) in &f.screens {
        assert_eq!(c.db_status(dev).await, "online", "devices.status of {dev}");
        wait_lease(c, dev, s.sid()).await;
    }
}

/// The report: `SAVE`, half the devices reconnect (newer epochs), Redis is killed and
/// comes back from that `dump.rdb`, holding their older epochs and leases naming their old
/// sockets.
#[tokio::test]
async fn redis_back_from_an_older_snapshot_strands_nobody() {
    let redis = RedisServer::start_with(&["--appendonly", "no"]).await;
    let url = redis.url();
    let mut c = Cluster::start_on(redis, &url, 2, DEVICES, |o| o).await;
    let mut f = Fleet::connect(&c, DEVICES).await;
    for (dev, _) in &f.screens {
        c.wait_db_status(dev, "online").await;
    }
    let _: String = c.redis.cmd(&["SAVE"]).await;
    for k in 0..DEVICES / 2 {
        f.reconnect(&c, k).await;
    }
    c.redis.stop();
    c.redis.start_again().await;
    assert!(
        c.redis
            .exists(&format!("device:lease:{}", load_device(0)))
            .await,
        "Redis came back from the snapshot"
    );

    command_reaches(&c, &f, 1, 0).await; // reconnected after the snapshot, lives on r1
    command_reaches(&c, &f, 0, 1).await; // and one on r0
    let_sweeps_run(&c).await;
    assert_fleet_untouched(&c, &f).await;
}

/// The same with an append-only file cut short: the AOF is truncated back to where it stood
/// before the reconnects (plus the first bytes of the next record, so the tail really is a
/// partial command that `aof-load-truncated yes` drops).
#[tokio::test]
async fn redis_back_from_a_truncated_aof_strands_nobody() {
    let redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--aof-load-truncated",
        "yes",
    ])
    .await;
    let url = redis.url();
    let mut c = Cluster::start_on(redis, &url, 2, DEVICES, |o| o).await;
    let mut f = Fleet::connect(&c, DEVICES).await;
    for (dev, _) in &f.screens {
        c.wait_db_status(dev, "online").await;
    }
    // Redis 7 writes a multi-part AOF: the commands since start-up go to the `.incr.aof` part.
    let aof = std::fs::read_dir(c.redis.dir().join("appendonlydir"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .expect("an incremental AOF file");
    let before = std::fs::metadata(&aof).unwrap().len();
    for k in 0..DEVICES / 2 {
        f.reconnect(&c, k).await;
    }
    c.redis.stop();
    let after = std::fs::metadata(&aof).unwrap().len();
    assert!(after > before + 16, "the reconnects were appended");
    let file = std::fs::OpenOptions::new().write(true).open(&aof).unwrap();
    file.set_len(before + 7).unwrap();
    drop(file);
    c.redis.start_again().await;
    assert!(
        c.redis
            .exists(&format!("device:lease:{}", load_device(0)))
            .await,
        "Redis came back from the AOF"
    );

    command_reaches(&c, &f, 1, 0).await;
    command_reaches(&c, &f, 0, 1).await;
    let_sweeps_run(&c).await;
    assert_fleet_untouched(&c, &f).await;
}

/// Redis hangs (SIGSTOP) for longer than the lease TTL: when it answers again every deadline is
/// in the past, and the first script it runs may well be a sweep that was queued meanwhile.
#[tokio::test]
async fn a_redis_stalled_longer_than_the_lease_ttl_reports_nobody_offline() {
    let c = Cluster::start(2, DEVICES, |o| o).await;
    let f = Fleet::connect(&c, DEVICES).await;
    for (dev, _) in &f.screens {
        c.wait_db_status(dev, "online").await;
    }
    c.redis.pause();
    tokio::time::sleep(LEASE_TTL + SWEEP + Duration::from_secs(1)).await;
    c.redis.resume();

    command_reaches(&c, &f, 1, 0).await;
    let_sweeps_run(&c).await;
    assert_fleet_untouched(&c, &f).await;
}

/// A device that really leaves while Redis is rolled back (it reconnected after the snapshot,
/// so Redis remembers only its older connection): offline exactly once, in Redis, in
/// `devices.status` and on the dashboards; the others stay online.
#[tokio::test]
async fn a_device_that_leaves_while_redis_is_rolled_back_goes_offline_once() {
    leaves_while_rolled_back(None).await;
}

/// The same, with every release held back past the sweep grace (as a release that failed while
/// Redis was away is retried later): the older socket's release or the sweep of its lease
/// announces the offline on the rolled-back state first, and the leaving socket's release,
/// landing after it, must not announce it a second time (`release.lua`, returning 2).
#[tokio::test]
async fn a_device_whose_release_lands_after_the_older_lease_went_is_announced_once() {
    leaves_while_rolled_back(Some(LEASE_TTL + SWEEP * 3)).await;
}

async fn leaves_while_rolled_back(release_delay: Option<Duration>) {
    let redis = RedisServer::start_with(&["--appendonly", "no"]).await;
    let url = redis.url();
    let mut c = Cluster::start_on(redis, &url, 2, 4, |o| match release_delay {
        Some(d) => o.env("VIZORA_TEST_RELEASE_DELAY_MS", d.as_millis()),
        None => o,
    })
    .await;
    let mut f = Fleet::connect(&c, 4).await;
    for (dev, _) in &f.screens {
        c.wait_db_status(dev, "online").await;
    }
    let _: String = c.redis.cmd(&["SAVE"]).await;
    f.reconnect(&c, 0).await;
    let leaving = f.screens[0].0.clone();
    c.redis.stop();
    c.redis.start_again().await;
    // Redis holds the older lease again (its deadline in the future or the past): the live
    // socket's replica has not necessarily re-asserted it when the device leaves.
    f.screen(0).disconnect().await;

    c.wait_db_status(&leaving, "offline").await;
    eventually(T, "the departed screen offline in Redis", || async {
        c.redis
            .get(&format!("device:status:{leaving}"))
            .await
            .filter(|s| s.contains("\"offline\""))
            .map(|_| ())
    })
    .await;
    assert!(c.lease(&leaving).await.is_none(), "no ghost lease left");
    let_sweeps_run(&c).await;
    assert_eq!(
        c.db_status(&leaving).await,
        "offline",
        "no older epoch undid it"
    );
    // Each dashboard learns it once: live, or — when its replica's adapter was resubscribing as
    // the offline was published, which pub/sub does not replay — from the status batch re-sent
    // after the reconnect (`a_dashboard_whose_replica_missed_a_status_gets_it_after_the_reconnect`).
    // No dashboard ever sees anyone else offline.
    for (i, d) in f.dashboards.iter().enumerate() {
        let mut seen = d.drain_events();
        seen.extend(events_until_offline(d, &leaving, &seen).await);
        let offline: Vec<&Event> = seen
            .iter()
            .filter(|e| e.name == "device:status" && e.args[0]["status"] == "offline")
            .collect();
        assert!(
            offline.len() <= 1
                && offline
                    .iter()
                    .all(|e| e.args[0]["deviceId"] == leaving.as_str()),
            "dashboard {i}: one offline at most, for the departed device only: {offline:?}"
        );
        let shown = dashboard_view(&seen);
        for (dev, _) in &f.screens[1..] {
            assert_eq!(
                shown.get(dev).map(String::as_str),
                Some("online"),
                "dashboard {i} shows {dev}"
            );
        }
        assert_eq!(
            shown.get(&leaving).map(String::as_str),
            Some("offline"),
            "dashboard {i} shows the departed screen offline"
        );
    }
    for (dev, s) in &f.screens[1..] {
        assert!(s.is_connected(), "{dev} stranded");
        assert_eq!(c.db_status(dev).await, "online");
    }
}

/// Waits (for events, up to `T`) until the dashboard shows `device` offline, counting what it
/// already `seen`; returns the events received meanwhile.
async fn events_until_offline(d: &Client, device: &str, seen: &[Event]) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + T;
    let mut more = Vec::new();
    loop {
        let all: Vec<Event> = seen.iter().chain(more.iter()).cloned().collect();
        if dashboard_view(&all).get(device).map(String::as_str) == Some("offline") {
            return more;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match d.next_event(left).await {
            Some(e) => more.push(e),
            None => panic!("the dashboard never showed {device} offline; it saw {all:?}"),
        }
    }
}

/// A managed endpoint fails over to a replica that lagged: replication stopped before the last
/// devices connected (and before some reconnected), then the primary dies and the endpoint
/// (a proxy whose address the gateways keep) points at the promoted replica.
#[tokio::test]
async fn failover_to_a_lagging_replica_behind_the_same_endpoint_strands_nobody() {
    let primary = RedisServer::start_with(&["--appendonly", "no"]).await;
    let replica = RedisServer::start_with(&[
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &primary.port.to_string(),
    ])
    .await;
    let endpoint = PausableProxy::start(&primary.addr()).await;
    let url = format!("redis://{}/", endpoint.addr());
    let mut c = Cluster::start_on(primary, &url, 2, DEVICES, |o| o).await;
    let first = DEVICES - 4;
    let mut f = Fleet::connect(&c, first).await;
    for (dev, _) in &f.screens {
        c.wait_db_status(dev, "online").await;
    }
    let last = load_device(first - 1);
    eventually(T, "the replica caught up", || async {
        replica
            .exists(&format!("device:lease:{last}"))
            .await
            .then_some(())
    })
    .await;
    let _: String = replica.cmd(&["REPLICAOF", "NO", "ONE"]).await;
    for i in first..DEVICES {
        f.add(&c, i).await;
    }
    for k in 0..2 {
        f.reconnect(&c, k).await;
    }
    c.redis.stop();
    endpoint.retarget(&replica.addr());
    // From here on the cluster's Redis is the promoted replica.
    c.redis = replica;

    command_reaches(&c, &f, 1, 0).await; // reconnected after the split
    command_reaches(&c, &f, 0, DEVICES - 1).await; // connected after the split
    let_sweeps_run(&c).await;
    assert_fleet_untouched(&c, &f).await;
}

/// Pub/sub keeps nothing for a subscriber that is away: replica r1 loses Redis (through a proxy
/// that resets every connection) while a device on r0 leaves, so r1's dashboard cannot receive
/// the live `device:status`. When r1's adapter is back it re-sends the organisation's
/// `device:status:batch`, which shows the device offline.
#[tokio::test]
async fn a_dashboard_whose_replica_missed_a_status_gets_it_after_the_reconnect() {
    let redis = RedisServer::start().await;
    let proxy = PausableProxy::start(&redis.addr()).await;
    let (direct, via_proxy) = (redis.url(), format!("redis://{}", proxy.addr()));
    let c = Cluster::start_connected(redis, 2, 1, |o| {
        let url = if o.replica_id == "r1" {
            &via_proxy
        } else {
            &direct
        };
        o.redis(url)
    })
    .await;
    let dev = load_device(0);
    let screen = ws_device(c.replicas[0].client(), &dev).await;
    wait_lease(&c, &dev, screen.sid()).await;
    let near = ws_dashboard(c.replicas[0].client(), ORG_A).await;
    let far = ws_dashboard(c.replicas[1].client(), ORG_A).await;
    let batch = far.wait_for("device:status:batch", T).await.unwrap();
    assert!(
        batch
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["deviceId"] == dev.as_str() && d["status"] == "online"),
        "{batch}"
    );

    proxy.reset_connections();
    screen.disconnect().await;
    // r0's own dashboard got it: the offline has been published (the adapter publishes first).
    let live = near.wait_for_event("device:status", T).await.unwrap();
    assert_eq!(live.args[0]["status"], "offline");
    assert!(
        far.drain_events()
            .iter()
            .all(|e| e.name != "device:status" || e.args[0]["status"] != "offline"),
        "r1 is cut off from Redis; nothing could reach it"
    );

    proxy.restore();
    let seen = events_until_offline(&far, &dev, &[]).await;
    assert!(
        seen.iter().any(|e| e.name == "device:status:batch"),
        "the dashboard learnt it from the re-sent batch: {seen:?}"
    );
}
