//! Migration 2: the gateway's own tables (`realtime_*`), created if absent and dropped on `down`.
//!
//! `realtime_presence` records, per device, the connection epoch of the last presence transition
//! applied, so a stale replica (older epoch) can never overwrite a newer online/offline state.
//! It has no FK to `devices`: Vizora deletes devices on its own schedule and a presence row
//! must never block that.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Identical on PostgreSQL and SQLite (BIGINT and TIMESTAMP(3) are valid SQLite type names).
const CREATE_PRESENCE: &str = r#"CREATE TABLE IF NOT EXISTS "realtime_presence" (
    "deviceId"  TEXT         NOT NULL,
    "epoch"     BIGINT       NOT NULL,
    "status"    TEXT         NOT NULL,
    "replicaId" TEXT,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "realtime_presence_pkey" PRIMARY KEY ("deviceId")
)"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(CREATE_PRESENCE)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(r#"DROP TABLE IF EXISTS "realtime_presence""#)
            .await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
