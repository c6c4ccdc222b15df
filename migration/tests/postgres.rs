//! PostgreSQL: against a fresh database the migrations reproduce Vizora's Prisma schema (same
//! names, types, defaults, constraints and indexes); against an existing Vizora database they
//! change nothing but add the gateway's own tables.
//!
//! Each test creates its own database (`mig_<pid>_<nanos>_<n>`) through the admin connection
//! (`DATABASE_ADMIN_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`) and drops it
//! afterwards, even when the test body panics. An unreachable server fails the tests unless
//! `SKIP_PG_TESTS=1`, so CI cannot pass them silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use migration::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use migration::{MIGRATION_TABLE, Migrator, MigratorTrait, REALTIME_TABLES, VIZORA_TABLES};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The Vizora subset schema as plain SQL (a copy of shared/reference/vizora-schema.sql, kept in
/// the crate so the tests do not depend on the workspace layout).
const VIZORA_SQL: &str = include_str!("fixtures/vizora-schema.sql");

fn admin_url() -> String {
    std::env::var("DATABASE_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// `admin` with its database name replaced by `name` (query string kept).
fn url_for_db(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{}", &base[..authority_end], name);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

fn unique_db_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "mig_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects to the admin database, or returns `None` when the test should be skipped.
async fn admin() -> Option<DatabaseConnection> {
    let url = admin_url();
    // Short timeouts: an absent server should fail the test quickly, not after sqlx's 30 s.
    let mut opts = ConnectOptions::new(url.clone());
    opts.connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
    match Database::connect(opts).await {
        Ok(db) => Some(db),
        Err(e) if std::env::var("SKIP_PG_TESTS").as_deref() == Ok("1") => {
            eprintln!("SKIP_PG_TESTS=1: skipping, PostgreSQL not reachable at {url}: {e}");
            None
        }
        Err(e) => panic!(
            "PostgreSQL not reachable at {url} ({e}). Start it, point DATABASE_ADMIN_URL at one, \
             or set SKIP_PG_TESTS=1 to skip the PostgreSQL tests."
        ),
    }
}

/// Runs `body` with the URLs of `count` fresh databases, then drops them whatever happened.
async fn with_temp_dbs<F, Fut>(count: usize, body: F)
where
    F: FnOnce(Vec<String>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(admin_db) = admin().await else {
        return;
    };
    let admin = admin_url();
    let names: Vec<String> = (0..count).map(|_| unique_db_name()).collect();
    for name in &names {
        admin_db
            .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
            .await
            .unwrap();
    }
    let urls = names.iter().map(|n| url_for_db(&admin, n)).collect();
    // A spawned task turns a panic into a JoinError, so cleanup still runs.
    let outcome = tokio::spawn(body(urls)).await;
    for name in &names {
        let dropped = admin_db
            .execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
            .await;
        if let Err(e) = dropped {
            eprintln!("could not drop test database {name}: {e}");
        }
    }
    admin_db.close().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn connect(url: &str) -> DatabaseConnection {
    Database::connect(url).await.unwrap()
}

async fn strings(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
        .collect()
}

fn sql_list(tables: &[&str]) -> String {
    tables
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Base tables of the current schema.
async fn table_names(db: &DatabaseConnection) -> Vec<String> {
    migration::inspect::postgres_tables(db).await.unwrap()
}

async fn snapshot(db: &DatabaseConnection, tables: &[&str]) -> Vec<String> {
    migration::inspect::describe_postgres(db, tables)
        .await
        .unwrap()
}

async fn constraint_names(db: &DatabaseConnection, tables: &[&str]) -> Vec<String> {
    strings(
        db,
        &format!(
            "SELECT c.conname::text FROM pg_constraint c
               JOIN pg_class t ON t.oid = c.conrelid
               JOIN pg_namespace ns ON ns.oid = t.relnamespace
              WHERE ns.nspname = current_schema() AND t.relname IN ({})
              ORDER BY 1",
            sql_list(tables)
        ),
    )
    .await
}

async fn index_names(db: &DatabaseConnection, tables: &[&str]) -> Vec<String> {
    strings(
        db,
        &format!(
            "SELECT indexname::text FROM pg_indexes
              WHERE schemaname = current_schema() AND tablename IN ({}) ORDER BY 1",
            sql_list(tables)
        ),
    )
    .await
}

/// Like `assert_eq!` on two snapshots, but reports only the differing lines.
#[track_caller]
fn assert_same_schema(actual: &[String], expected: &[String]) {
    let only_actual: Vec<&String> = actual.iter().filter(|l| !expected.contains(l)).collect();
    let only_expected: Vec<&String> = expected.iter().filter(|l| !actual.contains(l)).collect();
    assert!(
        only_actual.is_empty() && only_expected.is_empty() && actual == expected,
        "schemas differ (both lists empty: only the order differs)\n  unexpected: {only_actual:#?}\n  missing: {only_expected:#?}"
    );
}

fn sorted(mut v: Vec<&str>) -> Vec<String> {
    v.sort_unstable();
    v.into_iter().map(str::to_owned).collect()
}

fn all_tables_with_presence() -> Vec<&'static str> {
    let mut t = VIZORA_TABLES.to_vec();
    t.extend(REALTIME_TABLES);
    t
}

#[tokio::test]
async fn pg_fresh_database_gets_subset_with_prisma_names() {
    with_temp_dbs(1, |urls| async move {
        let db = connect(&urls[0]).await;
        assert_eq!(migration::missing_schema(&db).await.unwrap().len(), 9);

        Migrator::up(&db, None).await.unwrap();

        let mut expected_tables = all_tables_with_presence();
        expected_tables.push(MIGRATION_TABLE);
        assert_eq!(table_names(&db).await, sorted(expected_tables));

        let tables = all_tables_with_presence();
        assert_eq!(
            constraint_names(&db, &tables).await,
            sorted(vec![
                "organizations_pkey",
                "Playlist_pkey",
                "Playlist_organizationId_fkey",
                "Content_pkey",
                "Content_organizationId_fkey",
                "Content_replacementContentId_fkey",
                "Content_previousVersionId_fkey",
                "PlaylistItem_pkey",
                "PlaylistItem_playlistId_fkey",
                "PlaylistItem_contentId_fkey",
                "devices_pkey",
                "devices_organizationId_fkey",
                "devices_currentPlaylistId_fkey",
                "content_impressions_pkey",
                "content_impressions_organizationId_fkey",
                "content_impressions_contentId_fkey",
                "content_impressions_displayId_fkey",
                "content_impressions_playlistId_fkey",
                "notifications_pkey",
                "notifications_organizationId_fkey",
                "realtime_presence_pkey",
                "realtime_replicas_pkey",
            ])
        );
        assert_eq!(
            index_names(&db, &tables).await,
            sorted(vec![
                "organizations_pkey",
                "Playlist_pkey",
                "Content_pkey",
                "PlaylistItem_pkey",
                "PlaylistItem_playlistId_order_key",
                "devices_pkey",
                "devices_deviceIdentifier_key",
                "content_impressions_pkey",
                "content_impressions_organizationId_date_idx",
                "content_impressions_contentId_date_idx",
                "content_impressions_displayId_date_idx",
                "notifications_pkey",
                "notifications_organizationId_read_idx",
                "notifications_organizationId_createdAt_idx",
                "notifications_userId_idx",
                "realtime_presence_pkey",
                "realtime_replicas_pkey",
            ])
        );
        assert!(migration::missing_schema(&db).await.unwrap().is_empty());

        // Idempotent: nothing pending, and re-running every body over existing tables (as after
        // losing the bookkeeping) changes nothing.
        let before = snapshot(&db, &tables).await;
        Migrator::up(&db, None).await.unwrap();
        db.execute_unprepared(&format!(r#"DELETE FROM "{MIGRATION_TABLE}""#))
            .await
            .unwrap();
        Migrator::up(&db, None).await.unwrap();
        assert_same_schema(&snapshot(&db, &tables).await, &before);
        assert_eq!(
            strings(
                &db,
                &format!(r#"SELECT version FROM "{MIGRATION_TABLE}" ORDER BY 1"#)
            )
            .await,
            vec![
                "m20260101_000001_vizora_subset",
                "m20260101_000002_realtime_tables",
                "m20260101_000003_realtime_replicas"
            ]
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn pg_existing_vizora_database_is_left_untouched() {
    with_temp_dbs(1, |urls| async move {
        let db = connect(&urls[0]).await;
        db.execute_unprepared(VIZORA_SQL).await.unwrap();

        let mut watched = VIZORA_TABLES.to_vec();
        watched.extend(["users", "content_folders"]);
        let before = snapshot(&db, &watched).await;
        assert!(
            before
                .iter()
                .any(|l| l.contains("notifications_userId_fkey")),
            "fixture should carry the external FKs"
        );
        assert_eq!(
            migration::missing_schema(&db).await.unwrap(),
            vec!["table realtime_presence", "table realtime_replicas"]
        );

        Migrator::up(&db, None).await.unwrap();

        assert_same_schema(&snapshot(&db, &watched).await, &before);
        let names = constraint_names(&db, &watched).await;
        assert!(names.contains(&"notifications_userId_fkey".to_owned()));
        assert!(names.contains(&"Content_folderId_fkey".to_owned()));
        assert!(
            table_names(&db)
                .await
                .contains(&"realtime_presence".to_owned())
        );
        assert_eq!(
            constraint_names(&db, &["realtime_presence"]).await,
            vec!["realtime_presence_pkey"]
        );
        let tables = table_names(&db).await;
        assert!(tables.contains(&MIGRATION_TABLE.to_owned()), "{tables:?}");
        assert!(
            !tables.contains(&"seaql_migrations".to_owned()),
            "{tables:?}"
        );
        assert!(migration::missing_schema(&db).await.unwrap().is_empty());
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn pg_migrated_schema_matches_vizora_schema() {
    // Database 0 is Vizora's schema; database 1 only has the two stub tables the subset points
    // at and gets everything else from the migrations. Both must look the same.
    with_temp_dbs(2, |urls| async move {
        let vizora = connect(&urls[0]).await;
        vizora.execute_unprepared(VIZORA_SQL).await.unwrap();

        let ours = connect(&urls[1]).await;
        ours.execute_unprepared(
            r#"CREATE TABLE "users" ("id" TEXT NOT NULL, CONSTRAINT "users_pkey" PRIMARY KEY ("id"));
               CREATE TABLE "content_folders" ("id" TEXT NOT NULL, CONSTRAINT "content_folders_pkey" PRIMARY KEY ("id"));"#,
        )
        .await
        .unwrap();
        Migrator::up(&ours, None).await.unwrap();

        assert_same_schema(
            &snapshot(&ours, &VIZORA_TABLES).await,
            &snapshot(&vizora, &VIZORA_TABLES).await,
        );
        vizora.close().await.unwrap();
        ours.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn pg_partial_vizora_database_gets_only_missing_tables() {
    with_temp_dbs(1, |urls| async move {
        let db = connect(&urls[0]).await;
        db.execute_unprepared(VIZORA_SQL).await.unwrap();
        let full = snapshot(&db, &VIZORA_TABLES).await;

        // An older Vizora database: no notifications table, no screenshot column on devices.
        db.execute_unprepared(
            r#"DROP TABLE "notifications"; ALTER TABLE "devices" DROP COLUMN "lastScreenshot";"#,
        )
        .await
        .unwrap();
        Migrator::up(&db, None).await.unwrap();

        // notifications is back exactly as Prisma makes it (FK to users included); devices was
        // not altered, so its column is still missing and reported.
        let expected: Vec<String> = full
            .into_iter()
            .filter(|l| !l.starts_with("column devices.lastScreenshot #"))
            .collect();
        assert_same_schema(&snapshot(&db, &VIZORA_TABLES).await, &expected);
        assert_eq!(
            migration::missing_schema(&db).await.unwrap(),
            vec!["column devices.lastScreenshot"]
        );
        db.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn pg_down_drops_only_realtime_tables() {
    with_temp_dbs(1, |urls| async move {
        let db = connect(&urls[0]).await;
        Migrator::up(&db, None).await.unwrap();
        Migrator::down(&db, None).await.unwrap();
        let tables = table_names(&db).await;
        for t in VIZORA_TABLES {
            assert!(tables.contains(&t.to_owned()), "{t} dropped: {tables:?}");
        }
        for t in REALTIME_TABLES {
            assert!(!tables.contains(&t.to_owned()), "{t} survived: {tables:?}");
        }
        Migrator::up(&db, None).await.unwrap();
        assert!(migration::missing_schema(&db).await.unwrap().is_empty());
        db.close().await.unwrap();
    })
    .await;
}

#[test]
fn url_for_db_replaces_only_the_database() {
    assert_eq!(
        url_for_db("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        url_for_db("postgres://u:p@h/admin?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(url_for_db("postgres://h:5432", "x"), "postgres://h:5432/x");
}
