//! Issue 3, persistence: heartbeats never write `devices`; the bulk flush is one statement per
//! replica per interval; transitions stay ordered per device through a PostgreSQL pause; rows
//! that say online with no lease behind them are reconciled to offline, once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::json;
use vizora_gateway_tests::gateway::{DbTarget, seeded_db};
use vizora_gateway_tests::proxy::PausableProxy;
use vizora_gateway_tests::*;

const T: Duration = Duration::from_secs(15);

async fn rows(conn: &DatabaseConnection, sql: &str) -> Vec<sea_orm::QueryResult> {
    conn.query_all_raw(Statement::from_string(
        conn.get_database_backend(),
        sql.to_string(),
    ))
    .await
    .unwrap()
}

/// Row versions of the load devices: `xmin` changes whenever an UPDATE rewrites a row, so this is
/// PostgreSQL's own record of every write, immediate and exact.
async fn versions(conn: &DatabaseConnection) -> HashMap<String, String> {
    rows(
        conn,
        r#"SELECT "id" AS id, xmin::text AS v FROM devices WHERE "id" LIKE 'load-%'"#,
    )
    .await
    .into_iter()
    .map(|r| {
        (
            r.try_get::<String>("", "id").unwrap(),
            r.try_get::<String>("", "v").unwrap(),
        )
    })
    .collect()
}

/// `n_tup_upd` of `devices` from the statistics views.
async fn updates_counted(conn: &DatabaseConnection) -> i64 {
    let r = rows(
        conn,
        "SELECT n_tup_upd AS n FROM pg_stat_user_tables WHERE relname = 'devices'",
    )
    .await;
    r[0].try_get::<i64>("", "n").unwrap()
}

#[tokio::test]
async fn a_thousand_heartbeats_write_nothing_to_devices() {
    let n = 10;
    let c = Cluster::start(2, n, |o| o.env("LAST_SEEN_FLUSH_MS", 600_000)).await;
    let conn = c.pg().await;
    // PostgreSQL's own log of every UPDATE of `devices` from here on (the seed only inserted):
    // the count the statistics must reach before they are compared.
    log_device_updates(&conn).await;
    let counted_at_start = updates_counted(&conn).await;
    let mut screens = Vec::new();
    for i in 0..n {
        screens.push(ws_device(c.replicas[i % 2].client(), &load_device(i)).await);
    }
    for i in 0..n {
        c.wait_db_status(&load_device(i), "online").await;
    }
    // Each backend hands its statistics over some seconds after its writes: the baseline is
    // taken once they count every UPDATE logged so far (the online transitions).
    let (logged, counted_before) = statistics_caught_up(&conn, counted_at_start).await;
    let logged_before = logged.last().map_or(0, |u| u.n);
    let before = versions(&conn).await;
    let mut acked = 0;
    for round in 0..(1000 / n) {
        for s in &screens {
            let ack = s
                .emit_with_ack(
                    "heartbeat",
                    json!({"metrics": {"cpuUsage": round % 100, "memoryUsage": 10}}),
                    T,
                )
                .await
                .unwrap();
            assert_eq!(ack["success"], true);
            acked += 1;
        }
    }
    assert_eq!(acked, 1000);
    // Positive control: one online transition through each replica after the heartbeats. Once
    // they are in the rows and the statistics count every UPDATE logged (theirs included),
    // whatever the heartbeats had left to write, on either replica, would be there too.
    let controls = [(DEV_A1, 0), (DEV_A2, 1)];
    let mut held = Vec::new();
    for (dev, r) in controls {
        held.push(ws_device(c.replicas[r].client(), dev).await);
    }
    for (dev, _) in controls {
        c.wait_db_status(dev, "online").await;
    }
    let (logged, counted) = statistics_caught_up(&conn, counted_at_start).await;
    assert_eq!(
        versions(&conn).await,
        before,
        "no devices row was rewritten by heartbeats"
    );
    let window: Vec<DeviceUpdate> = logged.into_iter().filter(|u| u.n > logged_before).collect();
    let touched: BTreeSet<String> = window.iter().flat_map(|u| u.ids.clone()).collect();
    assert_eq!(
        touched,
        controls.iter().map(|(d, _)| d.to_string()).collect(),
        "only the controls' transitions updated devices: {window:?}"
    );
    let rows_updated: usize = window.iter().map(|u| u.ids.len()).sum();
    assert_eq!(
        counted - counted_before,
        rows_updated as i64,
        "pg_stat_user_tables counts the controls' updates and nothing else"
    );
    // The heartbeats did reach Redis.
    let status = c
        .redis
        .get(&format!("device:status:{}", load_device(0)))
        .await
        .unwrap();
    assert!(status.contains("cpuUsage"), "{status}");
}

/// Waits until `pg_stat_user_tables` counts, since `counted_at_start`, exactly the rows every
/// UPDATE in the log changed (each backend hands its counts over within ~10 s of going idle);
/// returns the log and the count that agree.
async fn statistics_caught_up(
    conn: &DatabaseConnection,
    counted_at_start: i64,
) -> (Vec<DeviceUpdate>, i64) {
    eventually(
        Duration::from_secs(30),
        "the statistics to count every logged UPDATE of devices",
        || async {
            let logged = device_updates(conn, 0).await;
            let changed: usize = logged.iter().map(|u| u.ids.len()).sum();
            let counted = updates_counted(conn).await;
            (counted - counted_at_start == changed as i64).then_some((logged, counted))
        },
    )
    .await
}

/// Makes PostgreSQL record every UPDATE statement on `devices`: a statement-level trigger writes
/// one row per statement (however many rows it changed, whatever transaction it shared) with
/// the ids it changed (its transition table) and when the statement began.
async fn log_device_updates(conn: &DatabaseConnection) {
    conn.execute_unprepared(
        r#"CREATE TABLE test_device_updates (
               n bigserial PRIMARY KEY,
               at timestamptz NOT NULL DEFAULT statement_timestamp(),
               ids text[] NOT NULL,
               query text NOT NULL DEFAULT current_query());
           CREATE FUNCTION test_log_device_update() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO test_device_updates (ids)
               SELECT coalesce(array_agg("id" ORDER BY "id"), '{}') FROM changed;
             RETURN NULL;
           END $$;
           CREATE TRIGGER test_log_device_update AFTER UPDATE ON devices
             REFERENCING NEW TABLE AS changed
             FOR EACH STATEMENT EXECUTE FUNCTION test_log_device_update();"#,
    )
    .await
    .unwrap();
}

/// One UPDATE statement on `devices`, as the trigger logged it.
#[derive(Debug)]
struct DeviceUpdate {
    n: i64,
    /// Statement start, seconds since the epoch (PostgreSQL's clock).
    at: f64,
    ids: BTreeSet<String>,
    query: String,
}

/// The statements logged after statement `after`, in order.
async fn device_updates(conn: &DatabaseConnection, after: i64) -> Vec<DeviceUpdate> {
    rows(
        conn,
        &format!(
            r#"SELECT n, extract(epoch FROM at)::float8 AS at, array_to_string(ids, ',') AS ids,
                      query FROM test_device_updates WHERE n > {after} ORDER BY n"#
        ),
    )
    .await
    .into_iter()
    .map(|r| DeviceUpdate {
        n: r.try_get("", "n").unwrap(),
        at: r.try_get("", "at").unwrap(),
        ids: r
            .try_get::<String>("", "ids")
            .unwrap()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        query: r.try_get("", "query").unwrap(),
    })
    .collect()
}

/// Two replicas, three screens each, heartbeating all along. PostgreSQL's statement-level log of
/// `devices` shows what the flush does: each statement carries exactly one replica's live
/// devices (not one device, not both replicas' devices), and a replica's statements come at most
/// one per interval, however many heartbeats arrive. Nothing depends on how fast the test runs:
/// it waits for the statements and counts them against PostgreSQL's own timestamps.
#[tokio::test]
async fn the_bulk_flush_is_one_statement_per_replica_per_interval() {
    let n = 6;
    let interval = Duration::from_millis(1000);
    let c = Cluster::start(2, n, |o| o.env("LAST_SEEN_FLUSH_MS", interval.as_millis())).await;
    let conn = c.pg().await;
    log_device_updates(&conn).await;
    let mut screens = Vec::new();
    let mut per_replica = vec![BTreeSet::new(), BTreeSet::new()];
    for i in 0..n {
        screens.push(ws_device(c.replicas[i % 2].client(), &load_device(i)).await);
        per_replica[i % 2].insert(load_device(i));
    }
    for i in 0..n {
        c.wait_db_status(&load_device(i), "online").await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let beating = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = 0usize;
            while !stop.load(SeqCst) {
                for s in &screens {
                    let ack = s
                        .emit_with_ack("heartbeat", json!({"metrics": {"cpuUsage": 1}}), T)
                        .await
                        .unwrap();
                    assert_eq!(ack["success"], true, "{ack}");
                    acked += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acked
        })
    };
    // From the first statement after which both replicas have flushed their full set: a flush
    // that read its live devices before the last connect may land after the connects.
    let full_flushes = tokio::time::timeout(T, async {
        loop {
            let u = device_updates(&conn, 0).await;
            let last: Option<Vec<i64>> = per_replica
                .iter()
                .map(|set| u.iter().filter(|x| &x.ids == set).map(|x| x.n).max())
                .collect();
            if let Some(n) = last.and_then(|l| l.into_iter().max()) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let Ok(start) = full_flushes else {
        panic!(
            "no replica flushed its devices {per_replica:?} in one statement; \
             UPDATEs of devices: {:#?}",
            device_updates(&conn, 0).await
        );
    };
    let updates = eventually(
        Duration::from_secs(30),
        "three flushes per replica",
        || async {
            let u = device_updates(&conn, start).await;
            per_replica
                .iter()
                .all(|set| u.iter().filter(|x| &x.ids == set).count() >= 3)
                .then_some(u)
        },
    )
    .await;
    stop.store(true, SeqCst);
    let acked = beating.await.unwrap();

    // Every UPDATE of `devices` meanwhile was a flush of exactly one replica's devices: one
    // statement per replica, never one per device or per heartbeat, never the whole cluster.
    for u in &updates {
        assert!(
            per_replica.contains(&u.ids),
            "an UPDATE of devices that is not one replica's flush: {:?} by `{}`",
            u.ids,
            u.query
        );
    }
    // At most one per interval: k statements of a replica span at least (k - 1) intervals,
    // less whatever delayed the first one (a full interval of slack).
    for set in &per_replica {
        let at: Vec<f64> = updates
            .iter()
            .filter(|u| &u.ids == set)
            .map(|u| u.at)
            .collect();
        let span = at[at.len() - 1] - at[0];
        assert!(
            (at.len() - 1) as f64 <= span / interval.as_secs_f64() + 1.0,
            "{} flushes of {set:?} within {span:.3} s: {updates:?}",
            at.len()
        );
    }
    assert!(
        acked >= 4 * updates.len(),
        "heartbeats kept coming meanwhile: {acked} for {} statements",
        updates.len()
    );
    let hb = rows(
        &conn,
        &format!(
            r#"SELECT "lastHeartbeat" AS hb FROM devices WHERE "id" = '{}'"#,
            load_device(0)
        ),
    )
    .await;
    assert!(
        hb[0]
            .try_get::<Option<chrono::NaiveDateTime>>("", "hb")
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn transitions_stay_ordered_through_a_postgres_pause() {
    let (db, _pg, _dir) = seeded_db("postgres", 0).await;
    let DbTarget::Postgres(url) = &db else {
        unreachable!()
    };
    // Both replicas reach PostgreSQL through a proxy that the test can freeze.
    let proxy = PausableProxy::start("127.0.0.1:5432").await;
    let via_proxy = url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1);
    let redis = RedisServer::start().await;
    let a = Gateway::start(
        GatewayOptions::new(DbTarget::Postgres(via_proxy.clone()))
            .redis(&redis.url())
            .replica("a"),
    )
    .await;
    let b = Gateway::start(
        GatewayOptions::new(DbTarget::Postgres(via_proxy))
            .redis(&redis.url())
            .replica("b"),
    )
    .await;
    let direct = sea_orm::Database::connect(url.as_str()).await.unwrap();
    let status = || async {
        let r = rows(
            &direct,
            &format!(r#"SELECT "status" AS s FROM devices WHERE "id" = '{DEV_A1}'"#),
        )
        .await;
        r[0].try_get::<String>("", "s").unwrap()
    };
    // Warm both replicas (their device checks are cached for reconnects during the pause), one
    // transition at a time so nothing is still in flight when the pause starts.
    for g in [&a, &b] {
        let s = ws_device(g.client(), DEV_A1).await;
        eventually(T, "online", || async {
            (status().await == "online").then_some(())
        })
        .await;
        s.disconnect().await;
        eventually(T, "offline", || async {
            (status().await == "offline").then_some(())
        })
        .await;
    }

    proxy.pause();
    for g in [&a, &b, &a, &b] {
        let s = ws_device(g.client(), DEV_A1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.disconnect().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last = ws_device(a.client(), DEV_A1).await; // the flap ends online
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status().await,
        "offline",
        "nothing was written while PostgreSQL was paused"
    );
    proxy.resume();

    let lease: serde_json::Value =
        serde_json::from_str(&redis.get(&format!("device:lease:{DEV_A1}")).await.unwrap()).unwrap();
    let epoch: i64 = lease["epoch"].as_str().unwrap().parse().unwrap();
    eventually(Duration::from_secs(30), "the last transition applied", || async {
        let r = rows(&direct, &format!(r#"SELECT "epoch" AS e, "status" AS s FROM realtime_presence WHERE "deviceId" = '{DEV_A1}'"#)).await;
        let e: i64 = r.first()?.try_get("", "e").ok()?;
        (e == epoch).then_some(())
    })
    .await;
    // Both replicas' queues have drained by now; an older epoch never overwrote the newest one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status().await, "online");
    assert!(last.is_connected());
}

/// Rows that say online with no lease behind them (left by the original service at cut-over, or
/// by a transition that never happened) are set offline by one replica, once: dashboards hear it
/// with the row's real `lastSeen`, `lastHeartbeat` is kept, no notification is sent, and a live
/// device is left alone.
#[tokio::test]
async fn rows_online_without_a_lease_are_reconciled_once() {
    let c = Cluster::start(2, 0, |o| {
        o.env("PRESENCE_RECONCILE_INTERVAL_MS", 500)
            .env("LAST_SEEN_FLUSH_MS", 500)
    })
    .await;
    let dash = ws_dashboard(c.replicas[1].client(), ORG_A).await;
    let live = ws_device(c.replicas[0].client(), DEV_A1).await;
    c.wait_db_status(DEV_A1, "online").await;
    let conn = c.pg().await;
    conn.execute_unprepared(&format!(
        r#"UPDATE devices SET "status" = 'online', "lastHeartbeat" = TIMESTAMP '2026-01-02 03:04:05'
           WHERE "id" IN ('{DEV_A2}', '{DEV_A3}')"#
    ))
    .await
    .unwrap();
    for d in [DEV_A2, DEV_A3] {
        c.wait_db_status(d, "offline").await;
    }
    // Several reconcile periods on both replicas later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = dash.drain_events();
    let offline = |dev: &str| status_events(&events, dev, "offline");
    for d in [DEV_A2, DEV_A3] {
        let evs = offline(d);
        assert_eq!(evs.len(), 1, "{d}: exactly one offline event: {events:?}");
        assert_eq!(evs[0]["lastSeen"], "2026-01-02T03:04:05.000Z", "{d}");
        assert_eq!(c.notifications(d, "device_offline").await, 0, "{d}");
    }
    assert!(offline(DEV_A1).is_empty(), "the live device: {events:?}");
    let kept = rows(
        &conn,
        &format!(
            r#"SELECT "lastHeartbeat"::text AS hb FROM devices WHERE "id" IN ('{DEV_A2}', '{DEV_A3}')"#
        ),
    )
    .await;
    for r in kept {
        assert_eq!(
            r.try_get::<String>("", "hb").unwrap(),
            "2026-01-02 03:04:05",
            "lastHeartbeat is kept"
        );
    }
    assert!(live.is_connected());
    assert_eq!(c.db_status(DEV_A1).await, "online");
}

/// The same reconciliation on the embedded default (SQLite, in-process presence).
#[tokio::test]
async fn embedded_rows_online_without_a_lease_go_offline() {
    let (db, _pg, _dir) = seeded_db("sqlite", 0).await;
    let conn = sea_orm::Database::connect(db.url()).await.unwrap();
    let gw = Gateway::start(
        GatewayOptions::new(db)
            .env("PRESENCE_RECONCILE_INTERVAL_MS", 300)
            .env("LAST_SEEN_FLUSH_MS", 300),
    )
    .await;
    let live = ws_device(gw.client(), DEV_A1).await;
    let old = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
        .unwrap()
        .and_hms_opt(3, 4, 5)
        .unwrap();
    conn.execute_raw(Statement::from_sql_and_values(
        conn.get_database_backend(),
        r#"UPDATE devices SET "status" = 'online', "lastHeartbeat" = ? WHERE "id" = ?"#,
        [old.into(), DEV_A2.into()],
    ))
    .await
    .unwrap();
    let status = |dev: &'static str| {
        let conn = conn.clone();
        async move {
            rows(
                &conn,
                &format!(r#"SELECT "status" AS s FROM devices WHERE "id" = '{dev}'"#),
            )
            .await[0]
                .try_get::<String>("", "s")
                .unwrap()
        }
    };
    eventually(T, "the stale row offline", || async {
        (status(DEV_A2).await == "offline").then_some(())
    })
    .await;
    assert!(live.is_connected());
    assert_eq!(
        status(DEV_A1).await,
        "online",
        "the live device is left alone"
    );
}
