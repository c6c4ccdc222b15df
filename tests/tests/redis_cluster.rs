//! Issue 19: the gateway on a six-node Redis Cluster (three primaries, one replica each,
//! `cluster-node-timeout` 2000): the sharded keyspace spreads the fleet over every primary, the
//! replicas behave as one gateway through sharded pub/sub, and a primary killed under load
//! strands no screen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use vizora_gateway::config::{ClusterConfig, RedisConfig, RedisTls};
use vizora_gateway::store::keys::{Keyspace, shard_of};
use vizora_gateway::store::redis::RedisStore;
use vizora_gateway::store::{PresenceStore, StateStore};
use vizora_gateway_tests::gateway::seeded_db;
use vizora_gateway_tests::redis_cluster::ClusterOptions;
use vizora_gateway_tests::scenarios::{broadcast_reaches, command_reaches};
use vizora_gateway_tests::tls::TestCerts;
use vizora_gateway_tests::*;
use vizora_sioclient::Client;

const T: Duration = Duration::from_secs(10);

fn config(rc: &RedisCluster) -> RedisConfig {
    RedisConfig::Cluster(ClusterConfig {
        nodes: rc
            .ports()
            .into_iter()
            .map(|p| ("127.0.0.1".to_string(), p))
            .collect(),
        username: None,
        password: None,
        tls: RedisTls::Off,
    })
}

/// One heartbeat acknowledged with success within 2 s (`None` otherwise), for `eventually`.
async fn heartbeat_acked(screen: &Client) -> Option<()> {
    let ack = screen
        .emit_with_ack("heartbeat", json!({}), Duration::from_secs(2))
        .await
        .ok()?;
    (ack["success"] == true).then_some(())
}

/// Gateway replicas on a Redis Cluster and one PostgreSQL database.
struct Fleet {
    rc: RedisCluster,
    replicas: Vec<Gateway>,
    db: DbTarget,
    _pg: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

async fn fleet(n: usize, load_devices: usize, lease_ttl_ms: u64) -> Fleet {
    fleet_on(
        RedisCluster::start().await,
        n,
        load_devices,
        lease_ttl_ms,
        |o| o,
    )
    .await
}

/// [`fleet`] on a cluster already started, each replica's options passed through `opts` last
/// (it may replace `REDIS_CLUSTER_NODES`, the plain seeds by default).
async fn fleet_on(
    rc: RedisCluster,
    n: usize,
    load_devices: usize,
    lease_ttl_ms: u64,
    opts: impl Fn(GatewayOptions) -> GatewayOptions,
) -> Fleet {
    let (db, pg, dir) = seeded_db("postgres", load_devices).await;
    let mut replicas = Vec::new();
    for i in 0..n {
        let o = GatewayOptions::new(db.clone())
            .replica(&format!("r{i}"))
            .env("REDIS_CLUSTER_NODES", rc.seeds_env())
            .env("LEASE_TTL_MS", lease_ttl_ms);
        replicas.push(Gateway::start(opts(o)).await);
    }
    Fleet {
        rc,
        replicas,
        db,
        _pg: pg,
        _dir: dir,
    }
}

impl Fleet {
    /// The device's lease, read from the node that holds its shard.
    async fn lease(&self, device: &str) -> Option<serde_json::Value> {
        let key = Keyspace::Sharded.of(device).lease(device);
        self.rc
            .get(&key)
            .await
            .and_then(|s| serde_json::from_str(&s).ok())
    }
}

/// The fleet's keys land on every primary: 300 devices' leases, statuses and shard sets are
/// spread over the three, and each device's keys and its shard's deadlines share one slot.
#[tokio::test]
async fn the_fleet_keys_spread_over_every_primary() {
    let rc = RedisCluster::start().await;
    let store = RedisStore::from_config(&config(&rc)).unwrap();
    assert_eq!(store.keyspace(), Keyspace::Sharded);
    for i in 0..300 {
        let d = load_device(i);
        store.acquire(&d, "o", "r", "s", 30_000).await.unwrap();
    }
    let per_primary = rc.keys_per_primary().await;
    assert_eq!(per_primary.len(), 3, "{per_primary:?}");
    let total: u64 = per_primary.iter().map(|(_, n)| n).sum();
    for (port, n) in &per_primary {
        assert!(
            *n * 6 > total,
            "primary {port} holds {n} of {total} keys: the shards must spread"
        );
    }
    // One device's keys and its shard's set hash to one slot (what lets the scripts run).
    let d = load_device(7);
    let p = Keyspace::Sharded.of(&d);
    let slot = rc.slot_of(&p.lease(&d)).await;
    for k in [p.epoch(&d), p.status(&d), p.deadlines(), p.notices_due()] {
        assert_eq!(rc.slot_of(&k).await, slot, "{k}");
    }
    assert_eq!(
        store.online(&[d.clone(), "nobody".into()]).await.unwrap(),
        vec![true, false]
    );
    // The sweep covers every shard: with a zero TTL all 300 leases expire, each exactly once.
    let short = RedisStore::from_config(&config(&rc)).unwrap();
    for i in 0..300 {
        short
            .acquire(&load_device(i), "o", "r", "s2", 0)
            .await
            .unwrap();
    }
    let mut expired: Vec<String> = short
        .sweep(1000, 60_000, vizora_gateway::store::SweepGuard::NONE)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.device_id)
        .collect();
    expired.sort();
    expired.dedup();
    assert_eq!(expired.len(), 300);
    assert!(
        short
            .sweep(1000, 60_000, vizora_gateway::store::SweepGuard::NONE)
            .await
            .unwrap()
            .is_empty(),
        "each lease is swept once"
    );
    let shards: std::collections::HashSet<u16> = expired.iter().map(|d| shard_of(d)).collect();
    assert!(shards.len() > 100, "{} shards swept", shards.len());
    assert!(short.ping().await.is_ok());
}

/// Calls of `command` (from clients and from scripts) over every primary, from `INFO commandstats`.
async fn calls_of(rc: &RedisCluster, command: &str) -> u64 {
    let mut total = 0;
    for port in rc.primaries().await {
        let info: String = rc
            .query(port, redis::cmd("INFO").arg("commandstats"))
            .await
            .unwrap();
        let line = format!("cmdstat_{command}:calls=");
        total += info
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap());
    }
    total
}

/// The impression outbox on a cluster: impressions of devices in many shards are handed out
/// once, held entries come back to their reader first, a stale reader's entries move to another,
/// acknowledged ones are gone; and a drain round over an empty outbox costs one script per shard
/// that reads nothing (`XLEN`), not three stream reads per shard.
#[tokio::test]
async fn the_impression_outbox_spans_the_shards_and_an_empty_round_reads_nothing() {
    use vizora_gateway::store::outbox::{ImpressionOutbox, OutboxImpression, RedisOutbox};
    let rc = RedisCluster::start().await;
    let store = RedisStore::from_config(&config(&rc)).unwrap();
    let outbox = RedisOutbox::new(store.pool(), store.keyspace());
    let devices: Vec<String> = (0..20).map(load_device).collect();
    for (i, d) in devices.iter().enumerate() {
        let row = OutboxImpression {
            id: format!("i{i}"),
            organization_id: "o".into(),
            content_id: "c".into(),
            device_id: d.clone(),
            playlist_id: None,
            duration: None,
            completion_percentage: None,
            timestamp: vizora_gateway::db::now(),
            hour: 0,
        };
        outbox.append(&row, "2026-01-01").await.unwrap();
    }
    let shards: std::collections::HashSet<u16> = devices.iter().map(|d| shard_of(d)).collect();
    assert!(shards.len() > 10, "{} shards", shards.len());
    let ids = |c: &[vizora_gateway::store::outbox::Claimed]| {
        let mut v: Vec<String> = c
            .iter()
            .map(|e| e.row.as_ref().unwrap().id.clone())
            .collect();
        v.sort();
        v
    };
    let mut all: Vec<String> = (0..20).map(|i| format!("i{i}")).collect();
    all.sort();
    let hour = Duration::from_secs(3600);
    let first = outbox.claim("a", 100, hour).await.unwrap();
    assert_eq!(ids(&first), all);
    // Not acknowledged: the same reader gets them again, another reader does not.
    assert_eq!(ids(&outbox.claim("a", 100, hour).await.unwrap()), all);
    assert!(outbox.claim("b", 100, hour).await.unwrap().is_empty());
    // Once held longer than `stale`, they move to the other reader.
    let moved = outbox.claim("b", 100, Duration::ZERO).await.unwrap();
    assert_eq!(ids(&moved), all);
    let entries: Vec<String> = moved.iter().map(|c| c.entry.clone()).collect();
    outbox.ack(&entries).await.unwrap();
    assert_eq!(outbox.backlog().await.unwrap(), 0);
    assert!(outbox.claim("b", 100, hour).await.unwrap().is_empty());

    let reads = calls_of(&rc, "xreadgroup").await + calls_of(&rc, "xautoclaim").await;
    let lens = calls_of(&rc, "xlen").await;
    assert!(outbox.claim("b", 100, hour).await.unwrap().is_empty());
    let shards = Keyspace::Sharded.shards().len() as u64;
    assert_eq!(
        calls_of(&rc, "xlen").await - lens,
        shards,
        "one XLEN per shard"
    );
    assert_eq!(
        calls_of(&rc, "xreadgroup").await + calls_of(&rc, "xautoclaim").await - reads,
        0,
        "an empty stream is not read"
    );
}

/// Two replicas on the cluster act as one gateway: a command crosses replicas (confirmed
/// delivery over sharded pub/sub), an organisation broadcast reaches both, a second socket of
/// a device supersedes the first wherever it is, a command queued for an offline device is
/// delivered when it connects, and a disconnect is one offline transition and, after the
/// grace, one notification.
#[tokio::test]
async fn replicas_on_a_redis_cluster_act_as_one_gateway() {
    let f = fleet(2, 1, 3_000).await;
    let control = load_device(0);
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let dash = ws_dashboard(a.client(), ORG_A).await;
    let batch = dash.wait_for("device:status:batch", T).await.unwrap();
    assert!(batch.is_array());

    let dev = ws_device(b.client(), DEV_A1).await;
    eventually(T, "the lease in the cluster", || async {
        f.lease(DEV_A1).await.map(|_| ())
    })
    .await;
    let online = dash.wait_for("device:status", T).await.unwrap();
    assert_eq!(online["deviceId"], DEV_A1, "{online}");
    assert_eq!(online["status"], "online");

    command_reaches(a, DEV_A1, &dev).await;
    let dev2 = ws_device(a.client(), DEV_A2).await;
    broadcast_reaches(b, &[&dev, &dev2, &dash], "on:cluster").await;

    // A second connection of DEV_A1, on the other replica, supersedes the first.
    let again = ws_device(a.client(), DEV_A1).await;
    eventually(T, "the older socket disconnected", || async {
        (!dev.is_connected()).then_some(())
    })
    .await;
    assert!(again.is_connected());
    command_reaches(b, DEV_A1, &again).await;

    // A command for an offline device is queued in its shard and delivered at connect.
    let (st, body) = b.api().command(DEV_A3, "reload", None).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["delivery"], "queued", "{body}");
    let dev3 = ws_device(a.client(), DEV_A3).await;
    let cmd = dev3
        .wait_for("command", T)
        .await
        .expect("the queued command");
    assert_eq!(cmd["id"], body["commandId"]);

    // Offline exactly once: one transition, one notice after the grace (1.5 s here).
    f.db.wait_device_status(DEV_A2, "online").await;
    dev2.disconnect().await;
    f.db.wait_device_status(DEV_A2, "offline").await;
    eventually(
        Duration::from_secs(15),
        "the offline notification",
        || async { (f.db.notifications(DEV_A2, "device_offline").await >= 1).then_some(()) },
    )
    .await;
    // The positive control: a lease nobody refreshes, taken after DEV_A2 went, expires and is
    // notified too, so the sweeps and notice claims ran past DEV_A2's notice.
    abandon_in_cluster(&f, &control).await;
    let mut seen = Vec::new();
    record_until(&dash, &mut seen, 2 * T, "the control offline", |evs| {
        offline_events(evs).contains(&control)
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the control's notification",
        || async { (f.db.notifications(&control, "device_offline").await >= 1).then_some(()) },
    )
    .await;
    assert_eq!(f.db.notifications(DEV_A2, "device_offline").await, 1);
    assert!(again.is_connected() && dev3.is_connected());
}

/// A lease for `device` that no replica holds, in its shard (see `Cluster::abandon_lease`):
/// the sweep must expire it.
async fn abandon_in_cluster(f: &Fleet, device: &str) {
    let store = RedisStore::from_config(&config(&f.rc)).unwrap();
    store
        .acquire(device, ORG_A, "abandoned", "abandoned", 0)
        .await
        .unwrap();
}

/// A primary SIGKILLed under load: its replica is promoted, the gateways follow, no screen is
/// disconnected or reported offline, heartbeats are acknowledged again within seconds, and the
/// epochs of the devices on the killed primary's shards only moved forward.
#[tokio::test]
async fn a_killed_primary_strands_no_screen() {
    const N: usize = 12;
    // A lease TTL well above the failover (node timeout 2 s plus the election): this test is
    // about following the promoted replica, not about leases that expired meanwhile.
    let mut f = fleet(2, N + 1, 10_000).await;
    let control = load_device(N);
    let dash = ws_dashboard(f.replicas[0].client(), ORG_A).await;
    dash.wait_for("device:status:batch", T).await.unwrap();
    let mut screens: Vec<Client> = Vec::new();
    for i in 0..N {
        screens.push(ws_device(f.replicas[i % 2].client(), &load_device(i)).await);
    }
    let mut epochs = Vec::new();
    for i in 0..N {
        let d = load_device(i);
        let lease = eventually(T, "every screen's lease", || async { f.lease(&d).await }).await;
        epochs.push(lease["epoch"].as_str().unwrap().parse::<u64>().unwrap());
    }
    for s in &screens {
        assert_heartbeat_acked(s, T).await;
    }
    // Under load: every screen keeps heartbeating (ten rounds a second) through the kill and
    // the promotion; what is answered meanwhile is not asserted, only what comes after.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rounds = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // All screens at once: one waiting out the failover holds up no other.
                futures_util::future::join_all(
                    screens
                        .iter()
                        .map(|s| s.emit_with_ack("heartbeat", json!({}), Duration::from_secs(1))),
                )
                .await;
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (screens, rounds)
        })
    };
    // The primary holding screen 0's shard goes, with the writes its replica acknowledged.
    f.rc.sync_replicas().await;
    let victim = Keyspace::Sharded.of(&load_device(0)).lease(&load_device(0));
    let port = f.rc.kill9_primary_of(&victim).await;
    f.rc.wait_failover(port).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (screens, rounds) = load.await.unwrap();
    assert!(rounds > 0, "the screens heartbeated through the failover");
    // The adapter lost its connection to that node: once the cluster answers again, the
    // dashboards get their organisation's status batch again (what pub/sub lost meanwhile).
    let mut events = Vec::new();
    record_until(
        &dash,
        &mut events,
        3 * T,
        "a status batch after the failover",
        |evs| evs.iter().any(|e| e.name == "device:status:batch"),
    )
    .await;

    // Heartbeats are acknowledged again, by every screen, within seconds.
    for (i, s) in screens.iter().enumerate() {
        eventually(
            Duration::from_secs(15),
            "heartbeats acknowledged again",
            || heartbeat_acked(s),
        )
        .await;
        assert!(s.is_connected(), "screen {i} kept its socket");
    }
    command_reaches(&f.replicas[1], &load_device(0), &screens[0]).await;
    command_reaches(&f.replicas[0], &load_device(1), &screens[1]).await;

    // Epochs only move forward: every screen's lease names its own epoch or a newer one.
    for (i, before) in epochs.iter().enumerate() {
        let d = load_device(i);
        let lease = eventually(T, "the lease after the failover", || async {
            f.lease(&d).await
        })
        .await;
        let now: u64 = lease["epoch"].as_str().unwrap().parse().unwrap();
        assert!(now >= *before, "{d}: epoch {now} < {before}");
    }
    // Nobody was reported offline: the positive control's offline (a lease nobody holds,
    // taken after the failover) shows the sweeps ran on every shard after it.
    abandon_in_cluster(&f, &control).await;
    record_until(&dash, &mut events, 2 * T, "the control offline", |evs| {
        offline_events(evs).contains(&control)
    })
    .await;
    for (i, screen) in screens.iter().enumerate() {
        let d = load_device(i);
        assert!(
            status_events(&events, &d, "offline").is_empty(),
            "no false offline for {d}"
        );
        assert_eq!(f.db.device_status(&d).await, "online");
        assert!(screen.is_connected());
    }
    for r in &f.replicas {
        let (st, body) = r.api().get_text("/api/health/ready", &[]).await;
        assert_eq!(st, 200, "{body}");
    }
}

/// Slots moved under a running fleet (a reshard): the stores follow `ASK` and `MOVED` for a
/// device's shard, and sharded pub/sub follows the relay's and the adapter's channels to their
/// new primaries, so heartbeats, commands across replicas and broadcasts keep working.
#[tokio::test]
async fn moved_slots_are_followed() {
    let f = fleet(2, 0, 10_000).await;
    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let dash = ws_dashboard(a.client(), ORG_A).await;
    dash.wait_for("device:status:batch", T).await.unwrap();
    let dev = ws_device(b.client(), DEV_A1).await;
    command_reaches(a, DEV_A1, &dev).await;
    let lease_key = Keyspace::Sharded.of(DEV_A1).lease(DEV_A1);
    // The device's shard, the replica's relay channel and the adapter's request channel.
    let moved = [
        lease_key.clone(),
        vizora_gateway::service::relay::deliver_channel("r1"),
        "socket.io-request#/#".to_string(),
    ];
    for key in &moved {
        let slot = f.rc.slot_of(key).await;
        let from = f.rc.node_for_key(key).await;
        let to =
            f.rc.primaries()
                .await
                .into_iter()
                .find(|p| *p != from)
                .unwrap();
        assert_eq!(f.rc.move_slot(slot, to).await, from);
        assert_eq!(f.rc.node_for_key(key).await, to, "{key} moved");
    }
    assert!(
        f.lease(DEV_A1).await.is_some(),
        "the lease moved with its slot"
    );
    eventually(T, "a heartbeat acknowledged after the move", || {
        heartbeat_acked(&dev)
    })
    .await;
    command_reaches(a, DEV_A1, &dev).await;
    broadcast_reaches(b, &[&dev, &dash], "after:reshard").await;
    assert!(dev.is_connected() && dash.is_connected());
}

/// Epochs only move forward per shard, also when the replica promoted had lagged: the replica of
/// a screen's shard is cut off its primary, the screen reconnects (a newer epoch only the old
/// primary has), then the lagging replica takes over. The live socket keeps working, re-asserts
/// its lease at its own epoch, and nobody is reported offline.
#[tokio::test]
async fn a_promoted_replica_that_lagged_supersedes_nobody() {
    let f = fleet(2, 2, 10_000).await;
    let (d, control) = (load_device(0), load_device(1));
    let dash = ws_dashboard(f.replicas[0].client(), ORG_A).await;
    dash.wait_for("device:status:batch", T).await.unwrap();
    let epoch =
        |lease: &serde_json::Value| -> u64 { lease["epoch"].as_str().unwrap().parse().unwrap() };
    let first = ws_device(f.replicas[0].client(), &d).await;
    let e1 = eventually(T, "the first lease", || async { f.lease(&d).await }).await;
    let e1 = epoch(&e1);
    f.rc.sync_replicas().await;
    let replica =
        f.rc.stall_replica_of(&Keyspace::Sharded.of(&d).lease(&d))
            .await;

    // A newer connection of the screen, on the other replica: its epoch reaches only the old
    // primary.
    let second = ws_device(f.replicas[1].client(), &d).await;
    eventually(T, "the older socket superseded", || async {
        (!first.is_connected()).then_some(())
    })
    .await;
    let e2 = eventually(T, "the newer lease", || async {
        f.lease(&d).await.filter(|l| epoch(l) > e1)
    })
    .await;
    let e2 = epoch(&e2);
    // The fault is real: the stalled replica still holds the older epoch.
    let mut p = redis::pipe();
    p.cmd("READONLY")
        .ignore()
        .cmd("GET")
        .arg(Keyspace::Sharded.of(&d).epoch(&d));
    let (lagging,): (Option<String>,) = p
        .query_async(&mut f.rc.conn(replica).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        lagging,
        Some(e1.to_string()),
        "the replica lags behind e2 = {e2}"
    );

    f.rc.take_over(replica).await;

    // The newer socket is never superseded by the older epoch the promoted node holds: its
    // heartbeats are acknowledged and its lease comes back at its own epoch.
    eventually(Duration::from_secs(15), "heartbeats acknowledged", || {
        heartbeat_acked(&second)
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the lease re-asserted at e2",
        || async { f.lease(&d).await.filter(|l| epoch(l) == e2).map(|_| ()) },
    )
    .await;
    // The positive control: a lease nobody holds, taken now, is swept and reported offline, so
    // the sweeps ran (and passed any grace) after the promotion.
    abandon_in_cluster(&f, &control).await;
    let mut events = Vec::new();
    record_until(&dash, &mut events, 3 * T, "the control offline", |evs| {
        offline_events(evs).contains(&control)
    })
    .await;
    assert!(
        status_events(&events, &d, "offline").is_empty(),
        "{d} was never reported offline"
    );
    assert!(second.is_connected(), "the live socket kept its connection");
    assert_eq!(f.db.device_status(&d).await, "online");
    assert_eq!(f.db.notifications(&d, "device_offline").await, 0);
}

/// A cluster run like a managed one: every node requires a password and serves TLS (the bus and
/// replication too). Given only the TLS seeds, `REDIS_CLUSTER_TLS=true`, the password and the
/// test CA (`SSL_CERT_FILE`), two replicas act as one gateway: a command crosses them, a
/// dashboard on one sees a screen on the other come online, heartbeats are acknowledged. A
/// replica given the wrong password never serves (the negative: the password is really
/// checked), while its twins with the right one are ready.
#[tokio::test]
async fn replicas_on_a_redis_cluster_with_password_and_tls_act_as_one_gateway() {
    const PASSWORD: &str = "cluster-secret-7";
    let certs = TestCerts::generate();
    let rc =
        RedisCluster::start_with(ClusterOptions::default().password(PASSWORD).tls(&certs)).await;
    // A TLS client is sent to TLS ports only (`tls-cluster yes`), never to the plain ports the
    // harness uses: the three primaries at least (Redis leaves a replica out of CLUSTER SLOTS
    // until gossip reports a replication offset for it).
    let mut named = rc.slot_ports_over_tls().await;
    named.sort_unstable();
    named.dedup();
    let (tls_ports, plain) = (rc.tls_ports(), rc.ports());
    assert!(named.len() >= 3, "CLUSTER SLOTS over TLS names {named:?}");
    assert!(
        named
            .iter()
            .all(|p| tls_ports.contains(p) && !plain.contains(p)),
        "CLUSTER SLOTS over TLS names {named:?}; TLS ports {tls_ports:?}, plain {plain:?}"
    );

    let (seeds, ca) = (rc.tls_seeds_env(), certs.ca_cert.display().to_string());
    let tls_env = |o: GatewayOptions| {
        o.env("REDIS_CLUSTER_NODES", &seeds)
            .env("REDIS_CLUSTER_TLS", "true")
            .env("SSL_CERT_FILE", &ca)
    };
    let f = fleet_on(rc, 2, 0, 3_000, |o| {
        tls_env(o).env("REDIS_PASSWORD", PASSWORD)
    })
    .await;
    // Started now, checked at the end: it has had the whole scenario to (not) get in.
    let wrong = Gateway::launch(
        tls_env(GatewayOptions::new(f.db.clone()).replica("wrong-password"))
            .env("REDIS_PASSWORD", "not-the-password"),
    )
    .await;

    let (a, b) = (&f.replicas[0], &f.replicas[1]);
    let dash = ws_dashboard(a.client(), ORG_A).await;
    dash.wait_for("device:status:batch", T).await.unwrap();
    let dev = ws_device(b.client(), DEV_A1).await;
    let online = dash.wait_for("device:status", T).await.unwrap();
    assert_eq!(online["deviceId"], DEV_A1, "{online}");
    assert_eq!(online["status"], "online");
    command_reaches(a, DEV_A1, &dev).await;
    assert_heartbeat_acked(&dev, T).await;
    // The lease really is in the cluster (read by the harness on a plain port, with the password).
    eventually(T, "the lease in the cluster", || async {
        f.lease(DEV_A1).await.map(|_| ())
    })
    .await;
    for r in &f.replicas {
        let (st, body) = r.api().get_text("/api/health/ready", &[]).await;
        assert_eq!(st, 200, "{body}");
    }

    // The wrong password: refused by the nodes, so the replica never serves its routes.
    eventually(T, "the wrong password refused", || async {
        let logs = wrong.logs();
        (logs.contains("Redis adapter not ready") && logs.contains("WRONGPASS")).then_some(())
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let ready = http
        .get(format!("{}/api/health/ready", wrong.api_url()))
        .send()
        .await;
    assert!(
        !ready.as_ref().is_ok_and(|r| r.status() == 200),
        "a replica with the wrong password is not ready: {ready:?}"
    );
    assert!(dev.is_connected() && dash.is_connected());
}
