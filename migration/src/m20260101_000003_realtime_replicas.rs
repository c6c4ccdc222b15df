//! Migration 3: `realtime_replicas`, one row per gateway replica saying when it was last alive
//! and when it last reached Redis: the witness a replica consults before fencing itself
//! (ARCHITECTURE.md, "Partitions: self-fencing"). Created if absent, dropped on `down`.
//!
//! Times are milliseconds since the epoch on the database's own clock, so replicas compare
//! them without trusting each other's clocks. `"redisOkAt"` is the start of the replica's last
//! successful Redis probe, `"redisOkSince"` the start of the run of successful probes it
//! belongs to (NULL until the replica has reached Redis).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Identical on PostgreSQL and SQLite.
const CREATE_REPLICAS: &str = r#"CREATE TABLE IF NOT EXISTS "realtime_replicas" (
    "replicaId"    TEXT   NOT NULL,
    "seenAt"       BIGINT NOT NULL,
    "redisOkAt"    BIGINT,
    "redisOkSince" BIGINT,
    CONSTRAINT "realtime_replicas_pkey" PRIMARY KEY ("replicaId")
)"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(CREATE_REPLICAS)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(r#"DROP TABLE IF EXISTS "realtime_replicas""#)
            .await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
