//! Running against an existing Vizora PostgreSQL database: `migrate` adds only the gateway's own
//! tables and leaves every Vizora table exactly as it was (columns, constraints, indexes); `serve`
//! with `DB_MIGRATE=false` then works on it, and refuses to start — naming what is missing —
//! against a database that lacks the schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::json;
use vizora_gateway_tests::*;
use vizora_sioclient::Transport;

/// The Vizora subset as plain SQL, like a database Prisma created (plus stub `users` and
/// `content_folders`, so the foreign keys to them exist).
const VIZORA_SQL: &str = include_str!("../../migration/tests/fixtures/vizora-schema.sql");

async fn strings(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
        .collect()
}

/// Columns, constraints and indexes of the seven Vizora tables, one line each.
async fn snapshot(db: &DatabaseConnection) -> Vec<String> {
    migration::inspect::describe_postgres(db, &migration::VIZORA_TABLES)
        .await
        .unwrap()
}

async fn tables(db: &DatabaseConnection) -> Vec<String> {
    migration::inspect::postgres_tables(db).await.unwrap()
}

/// Runs the gateway binary with only the variables an operator would set.
fn run_bin(args: &[&str], db_url: &str, extra: &[(&str, &str)], timeout: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(gateway::gateway_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("DEVICE_JWT_SECRET", DEVICE_SECRET)
        .env("JWT_SECRET", USER_SECRET)
        .env("INTERNAL_API_SECRET", INTERNAL_KEY)
        .env("HOST", "127.0.0.1")
        // Nothing here connects to it: any port the kernel picks will do, and none is contended.
        .env("PORT", "0")
        .env("STORAGE_DIR", dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("gateway binary");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`{}` did not exit within {timeout:?}\nstderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_leaves_an_existing_vizora_schema_untouched_and_serve_works_on_it() {
    let pg = PgDatabase::create().await;
    let conn = pg.connect().await;
    conn.execute_unprepared(VIZORA_SQL).await.unwrap();
    fixture::seed(&conn, 0).await;
    let before = snapshot(&conn).await;
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("index devices.devices_pkey")),
        "the snapshot covers the tables: {before:?}"
    );
    assert!(
        before.len() > 80,
        "columns, constraints and indexes: {before:?}"
    );
    let tables_before = tables(&conn).await;

    // Without the gateway's own tables, `serve` refuses and says what to do.
    let out = run_bin(
        &["serve"],
        &pg.url,
        &[("DB_MIGRATE", "false")],
        Duration::from_secs(30),
    );
    assert!(
        !out.status.success(),
        "serve must refuse a schema without realtime_presence"
    );
    assert!(
        stderr(&out).contains("realtime_presence"),
        "stderr names the missing table:\n{}",
        stderr(&out)
    );
    assert_eq!(
        snapshot(&conn).await,
        before,
        "the schema check changed nothing"
    );
    assert_eq!(
        tables(&conn).await,
        tables_before,
        "the schema check created nothing"
    );

    // `migrate` exits 0 and adds only the gateway's tables.
    for round in 0..2 {
        let out = run_bin(&["migrate"], &pg.url, &[], Duration::from_secs(60));
        assert!(
            out.status.success(),
            "migrate (round {round}) failed:\n{}",
            stderr(&out)
        );
        let after = snapshot(&conn).await;
        let changed: Vec<_> = before
            .iter()
            .filter(|l| !after.contains(l))
            .chain(after.iter().filter(|l| !before.contains(l)))
            .collect();
        assert!(
            changed.is_empty(),
            "round {round}: migrate altered Vizora tables: {changed:#?}"
        );
        let now = tables(&conn).await;
        assert!(now.contains(&"realtime_migrations".to_string()), "{now:?}");
        assert!(now.contains(&"realtime_presence".to_string()), "{now:?}");
        assert!(!now.contains(&"seaql_migrations".to_string()), "{now:?}");
        let added: Vec<_> = now.iter().filter(|t| !tables_before.contains(t)).collect();
        assert!(
            added.iter().all(|t| t.starts_with("realtime_")),
            "only realtime_ tables are added: {added:?}"
        );
    }
    let seeded = count(&conn, "SELECT COUNT(*) FROM devices", vec![]).await;
    assert_eq!(seeded, 4, "migrate kept the rows");

    // `serve` with DB_MIGRATE=false works on it.
    let db = DbTarget::Postgres(pg.url.clone());
    let gw = Gateway::start(GatewayOptions::new(db).env("DB_MIGRATE", "false")).await;
    for t in TRANSPORTS {
        let what = format!("{t:?}");
        let c = device(&gw, DEV_A1, ORG_A, t).await;
        let cfg = expect_event(&c, "config", &what).await;
        assert_eq!(cfg["qrOverlay"]["url"], "https://vizora.test/qr");
        let upd = expect_event(&c, "playlist:update", &what).await;
        assert_eq!(upd["playlist"]["id"], PLAYLIST_MAIN);
        assert_eq!(upd["playlist"]["items"].as_array().unwrap().len(), 3);
        wait_status(&conn, DEV_A1, "online").await;
        let ack = c
            .emit_with_ack(
                "content:impression",
                json!({"contentId": "c-img", "playlistId": PLAYLIST_MAIN, "duration": 10}),
                T,
            )
            .await
            .unwrap();
        assert_ok_ack(&ack, &what);
        assert_heartbeat_works(&c, &what).await;
        c.disconnect().await;
        wait_status(&conn, DEV_A1, "offline").await;
    }
    let n = count(
        &conn,
        r#"SELECT COUNT(*) FROM content_impressions WHERE "displayId" = 'dev-a1' AND "organizationId" = 'org-a'"#,
        vec![],
    )
    .await;
    assert_eq!(n, 2, "impressions written into the existing table");
    let hb = strings(
        &conn,
        r#"SELECT CAST("lastHeartbeat" AS TEXT) FROM devices WHERE "id" = 'dev-a1' AND "lastHeartbeat" IS NOT NULL"#,
    )
    .await;
    assert_eq!(hb.len(), 1, "transitions wrote lastHeartbeat");
    drop(gw);
    assert_eq!(
        snapshot(&conn).await,
        before,
        "serving changed no Vizora table"
    );
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_migration_refuses_an_empty_or_incomplete_database() {
    // An empty database: every required table is named.
    let pg = PgDatabase::create().await;
    let out = run_bin(
        &["serve"],
        &pg.url,
        &[("DB_MIGRATE", "false")],
        Duration::from_secs(30),
    );
    assert!(
        !out.status.success(),
        "serve must not start on an empty database"
    );
    let err = stderr(&out);
    for table in [
        "devices",
        "Playlist",
        "content_impressions",
        "realtime_presence",
        "realtime_replicas",
    ] {
        assert!(
            err.contains(&format!("table {table}")),
            "stderr names table {table}:\n{err}"
        );
    }
    assert!(err.contains("migrate"), "stderr says how to fix it:\n{err}");
    let conn = pg.connect().await;
    assert!(tables(&conn).await.is_empty(), "nothing was created");

    // A Vizora schema missing a column the gateway writes: named precisely.
    let pg2 = PgDatabase::create().await;
    let conn2 = pg2.connect().await;
    conn2.execute_unprepared(VIZORA_SQL).await.unwrap();
    let out = run_bin(&["migrate"], &pg2.url, &[], Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    conn2
        .execute_unprepared(r#"ALTER TABLE devices DROP COLUMN "lastScreenshotAt""#)
        .await
        .unwrap();
    let out = run_bin(
        &["serve"],
        &pg2.url,
        &[("DB_MIGRATE", "false")],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("column devices.lastScreenshotAt"),
        "{}",
        stderr(&out)
    );
    conn.close().await.unwrap();
    conn2.close().await.unwrap();
}

/// For completeness: the default SQLite mode migrates itself and serves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_default_migrates_itself() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbTarget::Sqlite(dir.path().join("fresh.sqlite"));
    let gw = Gateway::start(GatewayOptions::new(db.clone())).await;
    let conn = db_conn(&db).await;
    let n = count(
        &conn,
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('devices', 'realtime_presence', 'realtime_replicas', 'realtime_migrations')",
        vec![],
    )
    .await;
    assert_eq!(n, 4);
    // No devices yet: a device token is refused as not found, not as a server error.
    let r = vizora_sioclient::connect(
        gw.client()
            .transport(Transport::Websocket)
            .auth(json!({"token": device_token(DEV_A1, ORG_A)})),
    )
    .await;
    assert_refused(r, "unauthorized: device_not_found", "fresh database");
}
