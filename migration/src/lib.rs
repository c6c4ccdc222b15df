//! Schema migrations of the Vizora gateway: the Vizora table subset (created only where absent,
//! never altered or dropped) plus the gateway's own `realtime_*` tables.
//!
//! Bookkeeping lives in `realtime_migrations` rather than sea-orm's default `seaql_migrations`,
//! so running `vizora-gateway migrate` against an existing Vizora database cannot collide with
//! any other tool's migration table.
//!
//! Never call `Migrator::fresh`/`refresh`/`reset` against a shared Vizora database: `fresh` drops
//! every table in the schema (sea-orm behaviour, not ours). `down` is safe: it only drops the
//! gateway's own tables.

pub use sea_orm_migration::prelude::*;

pub mod inspect;
mod m20260101_000001_vizora_subset;
mod m20260101_000002_realtime_tables;
mod m20260101_000003_realtime_replicas;
mod schema_check;
mod vizora;

pub use schema_check::{REQUIRED_COLUMNS, missing_schema};

/// Name of the migration bookkeeping table.
pub const MIGRATION_TABLE: &str = "realtime_migrations";

/// The Vizora tables the gateway reads or writes, with their exact (case-sensitive) names.
pub const VIZORA_TABLES: [&str; 7] = [
    "organizations",
    "Playlist",
    "Content",
    "PlaylistItem",
    "devices",
    "content_impressions",
    "notifications",
];

/// The gateway's own tables (created and dropped by migrations 2 and 3).
pub const REALTIME_TABLES: [&str; 2] = ["realtime_presence", "realtime_replicas"];

/// The gateway's migrator.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20260101_000001_vizora_subset::Migration),
            Box::new(m20260101_000002_realtime_tables::Migration),
            Box::new(m20260101_000003_realtime_replicas::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        // A dedicated name keeps us clear of `seaql_migrations`, which another sea-orm based
        // service sharing the database might own.
        Alias::new(MIGRATION_TABLE).into_iden()
    }
}
