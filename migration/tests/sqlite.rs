//! SQLite (the embedded default): the migrations build the whole schema in an empty database,
//! are idempotent, never touch Vizora tables on `down`, and `missing_schema` agrees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use migration::sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use migration::{MIGRATION_TABLE, Migrator, MigratorTrait, REALTIME_TABLES, VIZORA_TABLES};

async fn memory_db() -> DatabaseConnection {
    // sea-orm caps an SQLite pool at one connection unless told otherwise, so every statement
    // sees the same in-memory database.
    Database::connect("sqlite::memory:").await.unwrap()
}

async fn tables(db: &DatabaseConnection) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get::<String>("", "name").unwrap())
        .collect()
}

async fn index_names(db: &DatabaseConnection) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get::<String>("", "name").unwrap())
        .collect()
}

/// `(from column, referenced table)` of every FK of `table`.
async fn fks(db: &DatabaseConnection, table: &str) -> Vec<(String, String)> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            r#"SELECT "from" AS f, "table" AS t FROM pragma_foreign_key_list(?) ORDER BY "from""#,
            [table.into()],
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.try_get::<String>("", "f").unwrap(),
                r.try_get::<String>("", "t").unwrap(),
            )
        })
        .collect()
}

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute_unprepared(sql).await.unwrap();
}

#[tokio::test]
async fn sqlite_up_creates_all_tables_and_indexes() {
    let db = memory_db().await;
    Migrator::up(&db, None).await.unwrap();

    let have = tables(&db).await;
    for t in VIZORA_TABLES.iter().chain(REALTIME_TABLES.iter()) {
        assert!(have.iter().any(|h| h == t), "table {t} missing in {have:?}");
    }
    assert!(have.iter().any(|h| h == MIGRATION_TABLE), "{have:?}");
    assert!(!have.iter().any(|h| h == "seaql_migrations"), "{have:?}");
    // The stubs of the real schema are not ours to create.
    assert!(!have.iter().any(|h| h == "users" || h == "content_folders"));

    let idx = index_names(&db).await;
    for name in [
        "PlaylistItem_playlistId_order_key",
        "devices_deviceIdentifier_key",
        "content_impressions_organizationId_date_idx",
        "content_impressions_contentId_date_idx",
        "content_impressions_displayId_date_idx",
        "notifications_organizationId_read_idx",
        "notifications_organizationId_createdAt_idx",
        "notifications_userId_idx",
    ] {
        assert!(
            idx.iter().any(|i| i == name),
            "index {name} missing in {idx:?}"
        );
    }

    // In-subset FKs are inline; FKs to absent users/content_folders are left out.
    assert_eq!(
        fks(&db, "notifications").await,
        vec![("organizationId".to_owned(), "organizations".to_owned())]
    );
    let content_fks = fks(&db, "Content").await;
    assert_eq!(content_fks.len(), 3, "{content_fks:?}");
    assert!(!content_fks.iter().any(|(_, t)| t == "content_folders"));
    assert_eq!(fks(&db, "realtime_presence").await, vec![]);
    assert_eq!(fks(&db, "realtime_replicas").await, vec![]);
}

#[tokio::test]
async fn sqlite_up_twice_is_harmless() {
    let db = memory_db().await;
    Migrator::up(&db, None).await.unwrap();
    exec(
        &db,
        r#"INSERT INTO organizations (id, name, "updatedAt") VALUES ('o1', 'Org', CURRENT_TIMESTAMP)"#,
    )
    .await;
    // Second run: nothing pending.
    Migrator::up(&db, None).await.unwrap();
    // Forget the bookkeeping so every migration body runs again over existing tables.
    exec(&db, &format!(r#"DELETE FROM "{MIGRATION_TABLE}""#)).await;
    Migrator::up(&db, None).await.unwrap();

    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT id FROM organizations",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "existing rows survive");
    assert_eq!(
        Migrator::get_pending_migrations(&db).await.unwrap().len(),
        0
    );
}

#[tokio::test]
async fn sqlite_missing_schema_before_and_after() {
    let db = memory_db().await;
    let before = migration::missing_schema(&db).await.unwrap();
    assert!(before.contains(&"table devices".to_owned()), "{before:?}");
    assert!(before.contains(&"table Playlist".to_owned()), "{before:?}");
    assert!(
        before.contains(&"table realtime_presence".to_owned()),
        "{before:?}"
    );
    assert!(
        before.contains(&"table realtime_replicas".to_owned()),
        "{before:?}"
    );
    assert_eq!(before.len(), 9, "{before:?}");

    Migrator::up(&db, None).await.unwrap();
    assert_eq!(
        migration::missing_schema(&db).await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn sqlite_missing_schema_names_missing_columns() {
    let db = memory_db().await;
    Migrator::up(&db, None).await.unwrap();
    // Simulate a Vizora database predating the screenshot columns.
    exec(&db, r#"ALTER TABLE devices DROP COLUMN "lastScreenshotAt""#).await;
    exec(&db, r#"ALTER TABLE devices DROP COLUMN "lastScreenshot""#).await;
    exec(&db, r#"DROP TABLE "realtime_presence""#).await;
    assert_eq!(
        migration::missing_schema(&db).await.unwrap(),
        vec![
            "column devices.lastScreenshot".to_owned(),
            "column devices.lastScreenshotAt".to_owned(),
            "table realtime_presence".to_owned(),
        ]
    );
}

#[tokio::test]
async fn sqlite_external_fks_only_when_target_exists() {
    let db = memory_db().await;
    exec(
        &db,
        r#"CREATE TABLE "users" ("id" TEXT NOT NULL PRIMARY KEY)"#,
    )
    .await;
    exec(
        &db,
        r#"CREATE TABLE "content_folders" ("id" TEXT NOT NULL PRIMARY KEY)"#,
    )
    .await;
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(
        fks(&db, "notifications").await,
        vec![
            ("organizationId".to_owned(), "organizations".to_owned()),
            ("userId".to_owned(), "users".to_owned()),
        ]
    );
    assert!(
        fks(&db, "Content")
            .await
            .contains(&("folderId".to_owned(), "content_folders".to_owned()))
    );
}

#[tokio::test]
async fn sqlite_existing_table_is_left_untouched() {
    let db = memory_db().await;
    // A pre-existing, differently shaped table must survive as is.
    exec(
        &db,
        r#"CREATE TABLE "organizations" ("id" TEXT NOT NULL PRIMARY KEY, "name" TEXT NOT NULL, "legacy" INTEGER)"#,
    )
    .await;
    Migrator::up(&db, None).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            r#"SELECT name FROM pragma_table_info('organizations') ORDER BY cid"#,
        ))
        .await
        .unwrap();
    let cols: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String>("", "name").unwrap())
        .collect();
    assert_eq!(cols, vec!["id", "name", "legacy"]);
}

#[tokio::test]
async fn sqlite_down_drops_only_realtime_tables() {
    let db = memory_db().await;
    Migrator::up(&db, None).await.unwrap();
    Migrator::down(&db, None).await.unwrap();
    let have = tables(&db).await;
    for t in VIZORA_TABLES {
        assert!(have.iter().any(|h| h == t), "{t} was dropped: {have:?}");
    }
    for t in REALTIME_TABLES {
        assert!(!have.iter().any(|h| h == t), "{t} survived: {have:?}");
    }
    // And back up again.
    Migrator::up(&db, None).await.unwrap();
    assert!(migration::missing_schema(&db).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_defaults_and_foreign_keys_work() {
    let db = memory_db().await;
    Migrator::up(&db, None).await.unwrap();
    exec(
        &db,
        r#"INSERT INTO organizations (id, name, "updatedAt") VALUES ('o1', 'Org', CURRENT_TIMESTAMP)"#,
    )
    .await;
    exec(
        &db,
        r#"INSERT INTO "Playlist" (id, name, "updatedAt", "organizationId") VALUES ('p1', 'P', CURRENT_TIMESTAMP, 'o1')"#,
    )
    .await;
    exec(
        &db,
        r#"INSERT INTO devices (id, "organizationId", "deviceIdentifier", "updatedAt", "currentPlaylistId")
           VALUES ('d1', 'o1', 'ident-1', CURRENT_TIMESTAMP, 'p1')"#,
    )
    .await;
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            r#"SELECT d.status AS s, d.orientation AS o, d.timezone AS tz, p."isDefault" AS def
                 FROM devices d JOIN "Playlist" p ON p.id = d."currentPlaylistId""#,
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<String>("", "s").unwrap(), "offline");
    assert_eq!(row.try_get::<String>("", "o").unwrap(), "landscape");
    assert_eq!(row.try_get::<String>("", "tz").unwrap(), "UTC");
    assert!(!row.try_get::<bool>("", "def").unwrap());

    // Unique deviceIdentifier and FK enforcement (sqlx turns foreign_keys on).
    let dup = db
        .execute_unprepared(
            r#"INSERT INTO devices (id, "organizationId", "deviceIdentifier", "updatedAt")
               VALUES ('d2', 'o1', 'ident-1', CURRENT_TIMESTAMP)"#,
        )
        .await;
    assert!(dup.is_err(), "duplicate deviceIdentifier accepted");
    let orphan = db
        .execute_unprepared(
            r#"INSERT INTO devices (id, "organizationId", "deviceIdentifier", "updatedAt")
               VALUES ('d3', 'nope', 'ident-3', CURRENT_TIMESTAMP)"#,
        )
        .await;
    assert!(orphan.is_err(), "FK to organizations not enforced");

    // ON DELETE SET NULL for the current playlist.
    exec(&db, r#"DELETE FROM "Playlist" WHERE id = 'p1'"#).await;
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            r#"SELECT "currentPlaylistId" AS p FROM devices WHERE id = 'd1'"#,
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<Option<String>>("", "p").unwrap(), None);
}
