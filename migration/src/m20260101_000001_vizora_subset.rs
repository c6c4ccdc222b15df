//! Migration 1: create the Vizora table subset, each table only where it is absent.
//!
//! An existing Vizora database already has these tables (owned by Prisma); we must neither
//! alter nor drop them, so a present table is skipped entirely (columns, indexes and FKs
//! included). A table we do create gets exactly the Prisma definition, so that a later Prisma
//! migration or an operator cannot tell our table from Vizora's.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement, Value};

use crate::vizora::{TABLES, Table, in_subset};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Decide once, before creating anything, which tables are ours to create.
        let mut absent: Vec<&Table> = Vec::new();
        for table in TABLES.iter() {
            if !manager.has_table(table.name).await? {
                absent.push(table);
            }
        }
        if absent.is_empty() {
            return Ok(());
        }
        match manager.get_database_backend() {
            DbBackend::Postgres => up_postgres(manager, &absent).await,
            DbBackend::Sqlite => up_sqlite(manager, &absent).await,
            other => Err(DbErr::BackendNotSupported {
                db: other.as_str(),
                ctx: "m20260101_000001_vizora_subset",
            }),
        }
    }

    /// Deliberately a no-op: these tables may be Vizora's own (when they already existed we
    /// created nothing) and, even when we created them, they hold devices, playlists and content
    /// that other services use. Rolling back the gateway must never destroy that data, so only
    /// the bookkeeping row is removed.
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }

    /// Run inside a transaction on every backend (sea-orm only does so on PostgreSQL by
    /// default) so an interrupted run on SQLite leaves no half-created subset behind.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// PostgreSQL: tables and indexes first, then FKs with ALTER TABLE, the way Prisma's own
/// migrations do it (so referenced tables exist whatever the creation order).
async fn up_postgres(manager: &SchemaManager<'_>, absent: &[&Table]) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    for table in absent {
        conn.execute_unprepared(&table.create_table_sql(DbBackend::Postgres, &[]))
            .await?;
        for sql in table.create_index_sqls() {
            conn.execute_unprepared(&sql).await?;
        }
    }
    for table in absent {
        for fk in table.fks {
            // FKs to tables outside the subset (users, content_folders) exist only when those
            // tables do; the constraint check makes a re-run after a partial failure harmless.
            if !in_subset(fk.ref_table) && !manager.has_table(fk.ref_table).await? {
                continue;
            }
            if pg_has_constraint(manager, table.name, &table.fk_name(fk)).await? {
                continue;
            }
            conn.execute_unprepared(&table.add_fk_sql(fk)).await?;
        }
    }
    Ok(())
}

/// SQLite cannot add a FK to an existing table, so FKs go inline in CREATE TABLE. SQLite does
/// not require the referenced table to exist at CREATE time, so in-subset FKs are always
/// included; FKs to tables outside the subset only if that table exists now.
async fn up_sqlite(manager: &SchemaManager<'_>, absent: &[&Table]) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    for table in absent {
        let mut inline = Vec::new();
        for fk in table.fks {
            if in_subset(fk.ref_table) || manager.has_table(fk.ref_table).await? {
                inline.push(fk);
            }
        }
        conn.execute_unprepared(&table.create_table_sql(DbBackend::Sqlite, &inline))
            .await?;
        for sql in table.create_index_sqls() {
            conn.execute_unprepared(&sql).await?;
        }
    }
    Ok(())
}

/// Whether `table` (in the current schema) already carries a constraint named `name`.
async fn pg_has_constraint(
    manager: &SchemaManager<'_>,
    table: &str,
    name: &str,
) -> Result<bool, DbErr> {
    let stmt = Statement::from_sql_and_values(
        DbBackend::Postgres,
        r#"SELECT COUNT(*) AS "n"
             FROM pg_constraint c
             JOIN pg_class t ON t.oid = c.conrelid
             JOIN pg_namespace ns ON ns.oid = t.relnamespace
            WHERE ns.nspname = current_schema() AND t.relname = $1 AND c.conname = $2"#,
        [Value::from(table), Value::from(name)],
    );
    let row = manager
        .get_connection()
        .query_one_raw(stmt)
        .await?
        .ok_or_else(|| DbErr::Custom("constraint probe returned no row".to_owned()))?;
    let n: i64 = row.try_get("", "n")?;
    Ok(n > 0)
}
