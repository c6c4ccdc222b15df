//! Read-only schema check used by `serve` when `DB_MIGRATE=false`: names every table or column
//! the gateway needs that the database lacks, so the process can exit with one clear line per
//! problem instead of failing on the first query.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

/// The tables the gateway needs and, for each, the columns it reads or writes (reference §6.3,
/// §3.3, §2.4.2 and §5.4). Columns Vizora has but the gateway never touches are not required,
/// so an older Vizora schema that lacks them still passes.
pub const REQUIRED_COLUMNS: &[(&str, &[&str])] = &[
    ("organizations", &["id"]),
    ("Playlist", &["id", "name", "organizationId"]),
    (
        "Content",
        &[
            "id",
            "name",
            "type",
            "url",
            "thumbnail",
            "duration",
            "mimeType",
            "metadata",
        ],
    ),
    (
        "PlaylistItem",
        &["id", "order", "duration", "playlistId", "contentId"],
    ),
    (
        "devices",
        &[
            "id",
            "organizationId",
            "deviceIdentifier",
            "nickname",
            "status",
            "lastHeartbeat",
            "metadata",
            "lastScreenshot",
            "lastScreenshotAt",
            "currentPlaylistId",
            "updatedAt",
        ],
    ),
    (
        "content_impressions",
        &[
            "id",
            "organizationId",
            "contentId",
            "displayId",
            "playlistId",
            "duration",
            "completionPercentage",
            "timestamp",
            "date",
            "hour",
        ],
    ),
    (
        "notifications",
        &[
            "id",
            "type",
            "title",
            "message",
            "severity",
            "read",
            "metadata",
            "organizationId",
            "createdAt",
            "updatedAt",
        ],
    ),
    (
        "realtime_presence",
        &["deviceId", "epoch", "status", "replicaId", "updatedAt"],
    ),
    (
        "realtime_replicas",
        &["replicaId", "seenAt", "redisOkAt", "redisOkSince"],
    ),
];

/// Human-readable names of what the gateway needs but the database lacks, e.g.
/// `"table devices"` or `"column devices.lastScreenshot"`; empty when the schema is usable.
/// A missing table is reported once, without its columns. Only base tables of the current
/// schema (PostgreSQL) or the main database (SQLite) count. Issues no DDL.
pub async fn missing_schema<C>(db: &C) -> Result<Vec<String>, DbErr>
where
    C: ConnectionTrait,
{
    let backend = db.get_database_backend();
    let present = match backend {
        DbBackend::Postgres => pg_columns(db).await?,
        DbBackend::Sqlite => sqlite_columns(db).await?,
        other => {
            return Err(DbErr::BackendNotSupported {
                db: other.as_str(),
                ctx: "missing_schema",
            });
        }
    };
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED_COLUMNS {
        let Some(have) = present.get(*table) else {
            missing.push(format!("table {table}"));
            continue;
        };
        for column in *columns {
            if !have.contains(*column) {
                missing.push(format!("column {table}.{column}"));
            }
        }
    }
    Ok(missing)
}

type Columns = BTreeMap<String, BTreeSet<String>>;

fn required_table_values() -> Vec<Value> {
    REQUIRED_COLUMNS
        .iter()
        .map(|(t, _)| Value::from(*t))
        .collect()
}

/// Columns of the required tables that exist as base tables in `current_schema()`.
async fn pg_columns<C: ConnectionTrait>(db: &C) -> Result<Columns, DbErr> {
    // One placeholder per table keeps this free of PostgreSQL array binding.
    let placeholders: Vec<String> = (1..=REQUIRED_COLUMNS.len())
        .map(|i| format!("${i}"))
        .collect();
    let sql = format!(
        r#"SELECT c.table_name::text AS "t", c.column_name::text AS "c"
             FROM information_schema.columns c
             JOIN information_schema.tables t
               ON t.table_schema = c.table_schema AND t.table_name = c.table_name
            WHERE c.table_schema = current_schema()
              AND t.table_type = 'BASE TABLE'
              AND c.table_name IN ({})"#,
        placeholders.join(", ")
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            required_table_values(),
        ))
        .await?;
    let mut out = Columns::new();
    for row in rows {
        let table: String = row.try_get("", "t")?;
        let column: String = row.try_get("", "c")?;
        out.entry(table).or_default().insert(column);
    }
    Ok(out)
}

/// Columns of the required tables of the main SQLite database.
async fn sqlite_columns<C: ConnectionTrait>(db: &C) -> Result<Columns, DbErr> {
    let placeholders = vec!["?"; REQUIRED_COLUMNS.len()].join(", ");
    // `name = ?` in sqlite_master is case-sensitive, matching how the tables are created.
    let sql = format!(
        r#"SELECT m.name AS "t", p.name AS "c"
             FROM sqlite_master m, pragma_table_info(m.name) p
            WHERE m.type = 'table' AND m.name IN ({placeholders})"#
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            required_table_values(),
        ))
        .await?;
    let mut out = Columns::new();
    for row in rows {
        let table: String = row.try_get("", "t")?;
        let column: String = row.try_get("", "c")?;
        out.entry(table).or_default().insert(column);
    }
    Ok(out)
}
