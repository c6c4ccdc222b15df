//! Issue 6, proof-of-play: every acknowledged `content:impression` reaches `content_impressions`
//! exactly once, through database outages (connections reset, port refused) and a replica killed
//! with impressions still buffered; impressions are written in batches; rows the database refuses
//! for good are dropped and counted without holding up the rest.
//!
//! Each impression of a test carries a unique `duration`, so a stored row can be traced back to
//! the acknowledgement it answers (the ack itself carries no id, as in the original).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sea_orm::DatabaseConnection;
use serde_json::json;
use vizora_gateway_tests::proxy::PausableProxy;
use vizora_gateway_tests::*;
use vizora_sioclient::Client;

/// Long enough for a PostgreSQL connection to be re-established and a retry backoff to expire.
const SETTLE: Duration = Duration::from_secs(60);

/// A seeded PostgreSQL database, a proxy in front of it, and Redis.
struct Rig {
    _pg: Option<PgDatabase>,
    _dir: tempfile::TempDir,
    direct: DbTarget,
    proxy: PausableProxy,
    redis: RedisServer,
    conn: DatabaseConnection,
}

impl Rig {
    async fn start() -> Rig {
        let (db, pg, dir) = gateway::seeded_db("postgres", 0).await;
        let DbTarget::Postgres(url) = &db else {
            unreachable!()
        };
        let proxy = PausableProxy::start("127.0.0.1:5432").await;
        assert!(url.contains("127.0.0.1:5432"), "{url}");
        let conn = db_conn(&db).await;
        Rig {
            _pg: pg,
            _dir: dir,
            direct: db,
            proxy,
            redis: RedisServer::start().await,
            conn,
        }
    }

    fn via_proxy(&self) -> DbTarget {
        DbTarget::Postgres(self.direct.url().replacen(
            "127.0.0.1:5432",
            &format!("127.0.0.1:{}", self.proxy.port),
            1,
        ))
    }

    /// A replica whose database is behind the proxy, draining every 200 ms.
    fn replica(&self, id: &str, db: DbTarget) -> GatewayOptions {
        GatewayOptions::new(db)
            .redis(&self.redis.url())
            .replica(id)
            .env("IMPRESSION_FLUSH_MS", 200)
    }

    /// Stored rows of the test device by duration (each duration is one acknowledged event).
    async fn stored(&self) -> BTreeMap<i64, i64> {
        rows(
            &self.conn,
            r#"SELECT CAST("duration" AS TEXT) AS d, CAST(COUNT(*) AS TEXT) AS n
                 FROM content_impressions WHERE "displayId" = $1 GROUP BY "duration""#,
            vec![DEV_A1.into()],
        )
        .await
        .iter()
        .map(|r| {
            (
                r["d"].as_str().unwrap().parse().unwrap(),
                r["n"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
    }

    /// Waits until exactly the acknowledged durations are stored, each once.
    async fn expect_exactly_once(&self, acked: &[i64]) {
        let want: BTreeMap<i64, i64> = acked.iter().map(|d| (*d, 1)).collect();
        let mut last = BTreeMap::new();
        let done = tokio::time::timeout(SETTLE, async {
            loop {
                last = self.stored().await;
                if last == want {
                    return;
                }
                // A duplicate or a stranger never goes away: fail at once.
                assert!(
                    last.iter().all(|(d, n)| *n == 1 && want.contains_key(d)),
                    "rows stored more than once or never acknowledged: {last:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            done.is_ok(),
            "every acknowledged impression stored once; missing: {:?}",
            want.keys()
                .filter(|d| !last.contains_key(d))
                .collect::<Vec<_>>()
        );
        let ids = count(
            &self.conn,
            r#"SELECT COUNT(DISTINCT "id") FROM content_impressions WHERE "displayId" = $1"#,
            vec![DEV_A1.into()],
        )
        .await;
        assert_eq!(ids as usize, acked.len(), "one id per acknowledged event");
    }

    async fn stored_count(&self, durations: &[i64]) -> usize {
        let s = self.stored().await;
        durations.iter().filter(|d| s.contains_key(d)).count()
    }

    async fn redis_int(&self, cmd: &mut redis::Cmd) -> i64 {
        cmd.query_async(&mut self.redis.conn().await).await.unwrap()
    }

    /// Entries still in the outbox, and those claimed by a replica but not acknowledged.
    async fn outbox(&self) -> (i64, i64) {
        let len = self
            .redis_int(redis::cmd("XLEN").arg("impressions:outbox"))
            .await;
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg("impressions:outbox")
            .arg("writers")
            .query_async(&mut self.redis.conn().await)
            .await
            .unwrap_or(redis::Value::Nil);
        let pending = match pending {
            redis::Value::Array(v) => match v.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        };
        (len, pending)
    }
}

/// Sends one impression per duration and asserts each is acknowledged with success.
async fn send(c: &Client, durations: impl IntoIterator<Item = i64>, content: &str) -> Vec<i64> {
    let mut acked = Vec::new();
    for d in durations {
        let ack = c
            .emit_with_ack(
                "content:impression",
                json!({"contentId": content, "playlistId": PLAYLIST_MAIN, "duration": d,
                       "timestamp": chrono::Utc::now().timestamp_millis()}),
                T,
            )
            .await
            .unwrap();
        assert_ok_ack(&ack, &format!("impression {d}"));
        acked.push(d);
    }
    acked
}

async fn metric(gw: &Gateway, line_start: &str) -> Option<f64> {
    metric_sum(&metrics_text(gw).await, line_start)
}

#[tokio::test]
async fn acknowledged_impressions_survive_reset_and_refused_database_connections() {
    let rig = Rig::start().await;
    let gw = Gateway::start(rig.replica("a", rig.via_proxy())).await;
    let screen = ws_device(gw.client(), DEV_A1).await;
    let mut acked = send(&screen, 1..=5, "c-img").await;
    rig.expect_exactly_once(&acked).await;

    // Connections reset: every open one, and every new one as soon as it is accepted.
    rig.proxy.reset_connections();
    let during_reset = send(&screen, 101..=105, "c-img").await;
    assert_eq!(
        rig.stored_count(&during_reset).await,
        0,
        "nothing can be written while the database resets connections"
    );
    let (buffered, _) = rig.outbox().await;
    assert!(buffered >= 5, "the acknowledged rows wait in the outbox");
    rig.proxy.restore();
    acked.extend(during_reset);
    acked.extend(send(&screen, 201..=203, "c-vid").await);
    rig.expect_exactly_once(&acked).await;

    // The port refused: the database is down.
    rig.proxy.refuse_connections();
    let during_refusal = send(&screen, 301..=305, "c-img").await;
    assert_eq!(rig.stored_count(&during_refusal).await, 0);
    rig.proxy.restore();
    acked.extend(during_refusal);
    acked.extend(send(&screen, 401..=405, "c-vid").await);
    rig.expect_exactly_once(&acked).await;

    eventually(
        SETTLE,
        "outbox empty and the buffered gauge at 0",
        || async {
            let (len, pending) = rig.outbox().await;
            let gauge = metric(&gw, "vizora_gateway_impressions_buffered").await;
            (len == 0 && pending == 0 && gauge == Some(0.0)).then_some(())
        },
    )
    .await;
    let written = metric(&gw, "vizora_gateway_impressions_written_total")
        .await
        .unwrap();
    assert_eq!(written as usize, acked.len(), "written counter");
}

#[tokio::test]
async fn a_killed_replica_s_buffered_impressions_are_written_once_by_another() {
    let rig = Rig::start().await;
    let mut a = Gateway::start(rig.replica("a", rig.via_proxy())).await;
    let screen = ws_device(a.client(), DEV_A1).await;
    rig.proxy.refuse_connections();
    let acked = send(&screen, 1..=10, "c-img").await;
    // Replica a has taken (some of) them for writing and cannot commit: the worst moment to die.
    eventually(SETTLE, "replica a to hold impressions", || async {
        let (len, pending) = rig.outbox().await;
        (len == 10 && pending > 0).then_some(())
    })
    .await;
    a.kill9();
    drop(screen);
    rig.proxy.restore();
    assert_eq!(rig.stored_count(&acked).await, 0);

    let b = Gateway::start(rig.replica("b", rig.direct.clone())).await;
    rig.expect_exactly_once(&acked).await;
    eventually(SETTLE, "outbox empty", || async {
        (rig.outbox().await == (0, 0)).then_some(())
    })
    .await;

    // And a restart under the same replica id takes its own unfinished entries back (no other
    // replica is left to claim them).
    drop(b);
    let mut c = Gateway::start(rig.replica("c", rig.via_proxy())).await;
    let screen = ws_device(c.client(), DEV_A1).await;
    rig.proxy.refuse_connections();
    let mut all = acked.clone();
    all.extend(send(&screen, 11..=15, "c-img").await);
    eventually(SETTLE, "replica c to hold impressions", || async {
        let (len, pending) = rig.outbox().await;
        (len == 5 && pending > 0).then_some(())
    })
    .await;
    drop(screen);
    c.kill9();
    rig.proxy.restore();
    c.restart().await;
    rig.expect_exactly_once(&all).await;
}

#[tokio::test]
async fn impressions_are_written_in_batches_not_one_insert_each() {
    let rig = Rig::start().await;
    let batch_max = 20;
    let gw = Gateway::start(
        rig.replica("a", rig.via_proxy())
            .env("IMPRESSION_BATCH_MAX", batch_max),
    )
    .await;
    let screen = ws_device(gw.client(), DEV_A1).await;
    // A hung database: the first round that finds impressions waits inside its insert while the
    // rest accumulate in the outbox.
    rig.proxy.pause();
    let acked = send(&screen, 1..=50, "c-img").await;
    rig.proxy.resume();
    rig.expect_exactly_once(&acked).await;
    // All rows of one statement share the inserting transaction id (`xmin`).
    let groups: Vec<i64> = rows(
        &rig.conn,
        r#"SELECT CAST(COUNT(*) AS TEXT) AS n FROM content_impressions
            WHERE "displayId" = $1 GROUP BY xmin::text"#,
        vec![DEV_A1.into()],
    )
    .await
    .iter()
    .map(|r| r["n"].as_str().unwrap().parse().unwrap())
    .collect();
    assert!(
        groups.len() <= 4,
        "50 impressions in at most 4 statements (one round in flight, then batches of 20): {groups:?}"
    );
    assert!(
        groups.iter().all(|n| *n <= batch_max),
        "no statement above IMPRESSION_BATCH_MAX: {groups:?}"
    );
}

#[tokio::test]
async fn rows_the_database_refuses_are_dropped_and_counted_the_rest_are_stored() {
    let rig = Rig::start().await;
    let gw = Gateway::start(rig.replica("a", rig.via_proxy())).await;
    let screen = ws_device(gw.client(), DEV_A1).await;
    // Held so good and bad rows share one batch.
    rig.proxy.pause();
    let mut good = send(&screen, 1..=4, "c-img").await;
    send(&screen, [901, 902], "c-no-such-content").await;
    good.extend(send(&screen, 5..=8, "c-vid").await);
    rig.proxy.resume();
    rig.expect_exactly_once(&good).await;
    eventually(
        SETTLE,
        "two rows dropped as foreign-key refusals",
        || async {
            let n = metric(
                &gw,
                r#"vizora_gateway_impressions_dropped_total{reason="foreign_key""#,
            )
            .await;
            (n == Some(2.0)).then_some(())
        },
    )
    .await;
    eventually(SETTLE, "outbox empty", || async {
        (rig.outbox().await == (0, 0)).then_some(())
    })
    .await;
    // The outbox is not stuck behind them.
    good.extend(send(&screen, 9..=10, "c-img").await);
    rig.expect_exactly_once(&good).await;
}

/// Measurement, not a check: `cargo test -p vizora-gateway-tests --release --test main
/// impressions::impression_throughput -- --ignored --nocapture`. Devices send impressions back to back; prints
/// the acknowledged rate, the time until all rows are stored, and how many statements wrote them.
#[tokio::test]
#[ignore]
async fn impression_throughput() {
    let devices = 20;
    let per_device: i64 = 200;
    let (db, _pg, _dir) = gateway::seeded_db("postgres", devices).await;
    let redis = RedisServer::start().await;
    let gw = Gateway::start(GatewayOptions::new(db.clone()).redis(&redis.url())).await;
    let conn = db_conn(&db).await;
    let mut screens = Vec::new();
    for i in 0..devices {
        screens.push(ws_device(gw.client(), &load_device(i)).await);
    }
    let start = std::time::Instant::now();
    let sends = screens.iter().map(|s| async move {
        for d in 0..per_device {
            let ack = s
                .emit_with_ack(
                    "content:impression",
                    json!({"contentId": "c-img", "duration": d}),
                    T,
                )
                .await
                .unwrap();
            assert_ok_ack(&ack, "throughput");
        }
    });
    futures_util::future::join_all(sends).await;
    let acked = start.elapsed();
    let total = devices as i64 * per_device;
    eventually(SETTLE, "all rows stored", || async {
        let n = count(&conn, "SELECT COUNT(*) FROM content_impressions", vec![]).await;
        (n == total).then_some(())
    })
    .await;
    let stored = start.elapsed();
    let statements = count(
        &conn,
        "SELECT COUNT(DISTINCT xmin::text) FROM content_impressions",
        vec![],
    )
    .await;
    println!(
        "{total} impressions from {devices} devices: acknowledged in {:.2} s ({:.0}/s), all stored after {:.2} s, by {statements} INSERT statements",
        acked.as_secs_f64(),
        total as f64 / acked.as_secs_f64(),
        stored.as_secs_f64()
    );
}

/// Readers of replicas that are gone are forgotten, but never one that still holds entries (its
/// entries would be orphaned).
#[tokio::test]
async fn idle_readers_are_forgotten_only_when_they_hold_nothing() {
    use vizora_gateway::store::outbox::{ImpressionOutbox, RedisOutbox};
    let redis = RedisServer::start().await;
    let store = vizora_gateway::store::redis::RedisStore::new(&redis.url()).unwrap();
    let outbox = RedisOutbox::new(store.pool(), store.keyspace());
    let row = vizora_gateway::store::outbox::OutboxImpression {
        id: "imp-1".into(),
        organization_id: ORG_A.into(),
        content_id: "c-img".into(),
        device_id: DEV_A1.into(),
        playlist_id: None,
        duration: Some(1),
        completion_percentage: None,
        timestamp: chrono::Utc::now().naive_utc(),
        hour: 1,
    };
    outbox.append(&row, "2026-01-01").await.unwrap();
    let stale = Duration::from_secs(3600);
    let held = outbox.claim("holder", 10, stale).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].row.as_ref(),
        Some(&row),
        "the row comes back as appended"
    );
    assert!(outbox.claim("empty", 10, stale).await.unwrap().is_empty());
    let consumers = || async {
        let v: redis::Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("impressions:outbox")
            .arg("writers")
            .query_async(&mut redis.conn().await)
            .await
            .unwrap();
        match v {
            redis::Value::Array(a) => a.len(),
            _ => 0,
        }
    };
    assert_eq!(consumers().await, 2);
    eventually(T, "the empty reader forgotten", || async {
        outbox.forget_idle_readers(Duration::ZERO).await.unwrap();
        (consumers().await == 1).then_some(())
    })
    .await;
    // The holder was kept, with its entry: it can still acknowledge it.
    assert_eq!(outbox.backlog().await.unwrap(), 1);
    let again = outbox.claim("holder", 10, stale).await.unwrap();
    assert_eq!(again.len(), 1, "the holder still has its entry");
    outbox.ack(&[again[0].entry.clone()]).await.unwrap();
    assert_eq!(outbox.backlog().await.unwrap(), 0);
}

/// Nothing is acknowledged that could not be kept: with the outbox unreachable (Redis down in
/// cluster mode; the database down in embedded mode, where the row is written before the ack)
/// the ack is the original's error, and the socket keeps working once the store is back.
#[tokio::test]
async fn an_impression_that_cannot_be_kept_is_not_acknowledged() {
    let mut rig = Rig::start().await;
    let what = "cluster, Redis down";
    let gw = Gateway::start(rig.replica("a", rig.direct.clone())).await;
    let screen = ws_device(gw.client(), DEV_A1).await;
    rig.redis.stop();
    let ack = screen
        .emit_with_ack(
            "content:impression",
            json!({"contentId": "c-img", "duration": 7}),
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        assert_err_ack(&ack, what),
        "Failed to log impression",
        "{what}"
    );
    rig.redis.start_again().await;
    let ok = eventually(SETTLE, "Redis back for impressions", || async {
        let ack = screen
            .emit_with_ack(
                "content:impression",
                json!({"contentId": "c-img", "duration": 8}),
                T,
            )
            .await
            .ok()?;
        (ack["success"] == true).then_some(8)
    })
    .await;
    rig.expect_exactly_once(&[ok]).await;
    drop(screen);
    drop(gw);

    let what = "embedded, database down";
    let gw = Gateway::start(GatewayOptions::new(rig.via_proxy())).await;
    let screen = ws_device(gw.client(), DEV_A1).await;
    rig.proxy.refuse_connections();
    let ack = screen
        .emit_with_ack(
            "content:impression",
            json!({"contentId": "c-img", "duration": 9}),
            // The database pool gives up after its 5 s acquire timeout.
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(
        assert_err_ack(&ack, what),
        "Failed to log impression",
        "{what}"
    );
    rig.proxy.restore();
    rig.expect_exactly_once(&[ok]).await;
}
