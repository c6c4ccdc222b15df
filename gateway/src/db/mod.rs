//! Relational storage: the Vizora tables (quoted Prisma names) and `realtime_presence`, through
//! sea-orm on PostgreSQL or SQLite with the same SQL.
//!
//! Statements are written once with `$n` placeholders; on SQLite they become `?n`, which SQLite
//! understands natively. Every write sets `"updatedAt"` and inserts generate cuid ids, because the
//! Vizora schema leaves both to its writers.

pub mod replicas;
pub mod rows;

use std::time::Duration;

use chrono::{NaiveDateTime, Utc};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    Statement, TransactionTrait, Value,
};
use serde_json::Value as Json;

pub use rows::*;

use crate::config::DatabaseConfig;

/// Why a database call failed. The text reads "database: …", as logs have always said.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The driver or the database failed the statement.
    #[error("database: {0}")]
    Sql(#[from] sea_orm::DbErr),
    /// The caller's bound on the call ran out (`what` names the call).
    #[error("database: {0} timed out")]
    Timeout(&'static str),
}

pub type DbResult<T> = Result<T, DbError>;

/// A failed write, split by whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database refuses these values and always will (a foreign key to a row that does not
    /// exist, a check or not-null constraint, a value out of range). `reason` is a fixed label.
    #[error("database refused the rows ({reason}): {source}")]
    Refused {
        reason: &'static str,
        #[source]
        source: sea_orm::DbErr,
    },
    /// Anything else: connection reset or refused, pool or statement timeout, shutdown,
    /// serialization failure. Worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sea_orm::DbErr),
}

impl WriteError {
    /// Integrity violations and data exceptions (SQLSTATE classes 23 and 22 on PostgreSQL, the
    /// constraint family on SQLite) are refusals; every other failure is transient.
    pub fn classify(e: sea_orm::DbErr) -> WriteError {
        use sea_orm::sqlx::error::ErrorKind;
        use sea_orm::{DbErr, RuntimeErr};
        if let DbErr::Exec(RuntimeErr::SqlxError(x)) | DbErr::Query(RuntimeErr::SqlxError(x)) = &e
            && let sea_orm::sqlx::Error::Database(d) = &**x
        {
            let reason = match d.kind() {
                ErrorKind::ForeignKeyViolation => Some("foreign_key"),
                ErrorKind::NotNullViolation | ErrorKind::CheckViolation => Some("constraint"),
                ErrorKind::UniqueViolation => Some("constraint"),
                _ => match d.code().as_deref() {
                    Some(c) if c.starts_with("23") && c.len() == 5 => Some("constraint"),
                    Some(c) if c.starts_with("22") && c.len() == 5 => Some("invalid_value"),
                    _ => None,
                },
            };
            if let Some(reason) = reason {
                return WriteError::Refused { reason, source: e };
            }
        }
        WriteError::Unavailable(e)
    }
}

/// A presence transition to persist (only transitions write `devices.status`), or the epoch of
/// an acquire that replaced a lease (`is_transition: false`): recorded so the row agrees with
/// Redis even when the replica that queued the transition died before writing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub device_id: String,
    pub epoch: u64,
    pub online: bool,
    pub at: NaiveDateTime,
    /// False for an epoch record: `devices` is written only if it does not say online already.
    pub is_transition: bool,
}

/// A device the database calls online that has not been seen for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleOnline {
    pub id: String,
    pub org: String,
    /// The epoch of the last transition written for it (0 if none, e.g. rows the original
    /// service left behind).
    pub epoch: u64,
    pub last_heartbeat: Option<NaiveDateTime>,
}

/// The database handle shared by every service.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    backend: DbBackend,
    /// Whether `devices."isDisabled"` exists (later Vizora schemas add it).
    has_disabled: bool,
    /// Whether `organizations."subscriptionStatus"` exists (later Vizora schemas add it).
    has_subscription: bool,
}

/// Now, on the stores' clock (`store::now_ms`: the system clock, or a paused test clock).
pub fn now() -> NaiveDateTime {
    // TIMESTAMP(3): keep millisecond precision so values round-trip exactly.
    chrono::DateTime::from_timestamp_millis(crate::store::now_ms())
        .unwrap_or_else(Utc::now)
        .naive_utc()
}

/// A `"Content"` row selected with the `c_*` column aliases both content queries use.
fn content_row(r: &sea_orm::QueryResult) -> Result<ContentRow, sea_orm::DbErr> {
    Ok(ContentRow {
        id: r.try_get("", "c_id")?,
        name: r.try_get("", "c_name")?,
        kind: r.try_get("", "c_type")?,
        url: r.try_get("", "c_url")?,
        thumbnail: r.try_get("", "c_thumb")?,
        mime_type: r.try_get("", "c_mime")?,
        duration: r.try_get::<i32>("", "c_dur")? as i64,
        metadata: r.try_get("", "c_meta")?,
    })
}

impl Db {
    pub async fn connect(cfg: &DatabaseConfig) -> DbResult<Db> {
        let mut opt = ConnectOptions::new(cfg.url().to_string());
        opt.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5));
        if cfg.is_sqlite() {
            opt.max_connections(1);
        } else {
            opt.max_connections(10).min_connections(1);
        }
        let conn = Database::connect(opt).await?;
        let backend = conn.get_database_backend();
        if backend == DbBackend::Sqlite {
            // WAL keeps readers from blocking the single writer in the embedded default.
            let _ = conn
                .execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;")
                .await;
        }
        let mut db = Db {
            conn,
            backend,
            has_disabled: false,
            has_subscription: false,
        };
        db.has_disabled = db
            .column_exists("devices", "isDisabled")
            .await
            .unwrap_or(false);
        db.has_subscription = db
            .column_exists("organizations", "subscriptionStatus")
            .await
            .unwrap_or(false);
        Ok(db)
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub fn is_sqlite(&self) -> bool {
        self.backend == DbBackend::Sqlite
    }

    fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        let sql = if self.is_sqlite() {
            sql.replace('$', "?")
        } else {
            sql.to_string()
        };
        Statement::from_sql_and_values(self.backend, sql, values)
    }

    async fn column_exists(&self, table: &str, column: &str) -> DbResult<bool> {
        let sql = if self.is_sqlite() {
            "SELECT 1 AS x FROM pragma_table_info($1) WHERE name = $2"
        } else {
            "SELECT 1 AS x FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
        };
        Ok(self
            .conn
            .query_one_raw(self.stmt(sql, vec![table.into(), column.into()]))
            .await?
            .is_some())
    }

    pub async fn ping(&self) -> DbResult<()> {
        self.conn.execute_unprepared("SELECT 1").await?;
        Ok(())
    }

    /// The auth check: organisation, disabled flag, bound token and tenant suspension of a
    /// device (optional columns read where the schema has them).
    pub async fn device_auth(&self, id: &str) -> DbResult<Option<DeviceAuth>> {
        let disabled = if self.has_disabled {
            r#"d."isDisabled""#
        } else {
            "false"
        };
        let suspended = if self.has_subscription {
            r#"o."subscriptionStatus""#
        } else {
            "NULL"
        };
        let sql = format!(
            r#"SELECT d."organizationId" AS org, {disabled} AS disabled, d."jwtToken" AS jwt, {suspended} AS sub
               FROM devices d LEFT JOIN organizations o ON o."id" = d."organizationId" WHERE d."id" = $1"#
        );
        let row = self
            .conn
            .query_one_raw(self.stmt(&sql, vec![id.into()]))
            .await?;
        row.map(|r| {
            Ok(DeviceAuth {
                organization_id: r.try_get("", "org")?,
                disabled: r.try_get::<Option<bool>>("", "disabled")?.unwrap_or(false),
                jwt_token: r.try_get::<Option<String>>("", "jwt")?,
                suspended: r.try_get::<Option<String>>("", "sub")?.as_deref() == Some("suspended"),
            })
        })
        .transpose()
    }

    /// Rotates `devices."jwtToken"` to `new_hash`, only if it still holds `expected` (a
    /// concurrent re-pair or revocation wins). True when the row was rotated.
    pub async fn rotate_device_token(
        &self,
        id: &str,
        org: &str,
        expected: Option<&str>,
        new_hash: &str,
    ) -> DbResult<bool> {
        let (guard, mut values): (&str, Vec<Value>) = match expected {
            Some(e) => (r#""jwtToken" = $5"#, vec![e.into()]),
            None => (r#""jwtToken" IS NULL"#, vec![]),
        };
        let sql = format!(
            r#"UPDATE devices SET "jwtToken" = $1, "updatedAt" = $2 WHERE "id" = $3 AND "organizationId" = $4 AND {guard}"#
        );
        let mut all: Vec<Value> = vec![new_hash.into(), now().into(), id.into(), org.into()];
        all.append(&mut values);
        let r = self.conn.execute_raw(self.stmt(&sql, all)).await?;
        Ok(r.rows_affected() == 1)
    }

    /// What the connect-time `config` and playlist need.
    pub async fn device_settings(&self, id: &str) -> DbResult<Option<DeviceSettings>> {
        let sql =
            r#"SELECT "currentPlaylistId" AS pl, "metadata" AS meta FROM devices WHERE "id" = $1"#;
        let row = self
            .conn
            .query_one_raw(self.stmt(sql, vec![id.into()]))
            .await?;
        row.map(|r| {
            Ok(DeviceSettings {
                current_playlist_id: r.try_get("", "pl")?,
                metadata: r.try_get::<Option<Json>>("", "meta")?,
            })
        })
        .transpose()
    }

    pub async fn device_org(&self, id: &str) -> DbResult<Option<String>> {
        let sql = r#"SELECT "organizationId" AS org FROM devices WHERE "id" = $1"#;
        let row = self
            .conn
            .query_one_raw(self.stmt(sql, vec![id.into()]))
            .await?;
        Ok(row.map(|r| r.try_get("", "org")).transpose()?)
    }

    /// `nickname || deviceIdentifier || id`, as the original names devices in notifications.
    pub async fn device_name(&self, id: &str) -> DbResult<String> {
        let sql = r#"SELECT "nickname" AS n, "deviceIdentifier" AS i FROM devices WHERE "id" = $1"#;
        let row = self
            .conn
            .query_one_raw(self.stmt(sql, vec![id.into()]))
            .await?;
        let name = row.and_then(|r| {
            let n: Option<String> = r.try_get("", "n").ok().flatten();
            let i: Option<String> = r.try_get("", "i").ok();
            n.filter(|s| !s.is_empty()).or(i.filter(|s| !s.is_empty()))
        });
        Ok(name.unwrap_or_else(|| id.to_string()))
    }

    /// The organisation's devices, newest heartbeat first (for `device:status:batch`).
    pub async fn org_devices(&self, org: &str, limit: u64) -> DbResult<Vec<DeviceStatusRow>> {
        let sql = r#"SELECT "id" AS id, "status" AS st, "lastHeartbeat" AS hb FROM devices
                     WHERE "organizationId" = $1 ORDER BY "lastHeartbeat" DESC NULLS LAST, "id" LIMIT $2"#;
        let rows = self
            .conn
            .query_all_raw(self.stmt(sql, vec![org.into(), (limit as i64).into()]))
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(DeviceStatusRow {
                    id: r.try_get("", "id")?,
                    status: r.try_get("", "st")?,
                    last_heartbeat: r.try_get("", "hb")?,
                })
            })
            .collect()
    }

    pub async fn playlist(&self, id: &str) -> DbResult<Option<PlaylistRows>> {
        let sql = r#"SELECT "id" AS id, "name" AS name FROM "Playlist" WHERE "id" = $1"#;
        let Some(p) = self
            .conn
            .query_one_raw(self.stmt(sql, vec![id.into()]))
            .await?
        else {
            return Ok(None);
        };
        let items_sql = r#"SELECT i."id" AS iid, i."contentId" AS cid, i."order" AS ord, i."duration" AS dur,
                c."id" AS c_id, c."name" AS c_name, c."type" AS c_type, c."url" AS c_url, c."thumbnail" AS c_thumb,
                c."mimeType" AS c_mime, c."duration" AS c_dur, c."metadata" AS c_meta
            FROM "PlaylistItem" i LEFT JOIN "Content" c ON c."id" = i."contentId"
            WHERE i."playlistId" = $1 ORDER BY i."order" ASC, i."id" ASC"#;
        let rows = self
            .conn
            .query_all_raw(self.stmt(items_sql, vec![id.into()]))
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            // LEFT JOIN: no content columns when the content row is missing.
            let content = match r.try_get::<Option<String>>("", "c_id")? {
                None => None,
                Some(_) => Some(content_row(&r)?),
            };
            items.push(ItemRow {
                id: r.try_get("", "iid")?,
                content_id: r.try_get("", "cid")?,
                order: r.try_get::<i32>("", "ord")? as i64,
                duration: r.try_get::<Option<i32>>("", "dur")?.map(i64::from),
                content,
            });
        }
        Ok(Some(PlaylistRows {
            id: p.try_get("", "id")?,
            name: p.try_get("", "name")?,
            items,
        }))
    }

    pub async fn content(&self, id: &str) -> DbResult<Option<ContentRow>> {
        let sql = r#"SELECT "id" AS c_id, "name" AS c_name, "type" AS c_type, "url" AS c_url, "thumbnail" AS c_thumb,
                "mimeType" AS c_mime, "duration" AS c_dur, "metadata" AS c_meta FROM "Content" WHERE "id" = $1"#;
        let row = self
            .conn
            .query_one_raw(self.stmt(sql, vec![id.into()]))
            .await?;
        Ok(row.map(|r| content_row(&r)).transpose()?)
    }

    /// Writes impressions with ONE multi-row statement, idempotent by id (`ON CONFLICT DO
    /// NOTHING` on the primary key, valid on PostgreSQL and SQLite). Returns the rows inserted
    /// (ids already stored are skipped). A refusal is classified so the caller can drop rows the
    /// database will never accept and retry everything else.
    pub async fn insert_impressions(&self, rows: &[NewImpression]) -> Result<u64, WriteError> {
        if rows.is_empty() {
            return Ok(0);
        }
        const COLS: usize = 10;
        let mut sql = String::from(
            r#"INSERT INTO content_impressions ("id","organizationId","contentId","displayId","playlistId",
                "duration","completionPercentage","timestamp","date","hour") VALUES "#,
        );
        let mut values: Vec<Value> = Vec::with_capacity(rows.len() * COLS);
        for (n, i) in rows.iter().enumerate() {
            let slots: Vec<String> = (1..=COLS).map(|c| format!("${}", n * COLS + c)).collect();
            if n > 0 {
                sql.push(',');
            }
            sql.push('(');
            sql.push_str(&slots.join(","));
            sql.push(')');
            values.extend([
                i.id.clone().into(),
                i.organization_id.clone().into(),
                i.content_id.clone().into(),
                i.device_id.clone().into(),
                i.playlist_id.clone().into(),
                i.duration.map(|d| d as i32).into(),
                i.completion_percentage.map(|d| d as i32).into(),
                i.timestamp.into(),
                i.timestamp.date().into(),
                (i.hour as i32).into(),
            ]);
        }
        sql.push_str(r#" ON CONFLICT ("id") DO NOTHING"#);
        match self.conn.execute_raw(self.stmt(&sql, values)).await {
            Ok(r) => Ok(r.rows_affected()),
            Err(e) => Err(WriteError::classify(e)),
        }
    }

    pub async fn insert_notification(&self, n: &NewNotification) -> DbResult<String> {
        let id = cuid2::create_id();
        let at = now();
        let sql = r#"INSERT INTO notifications ("id","type","title","message","severity","read","metadata",
                "organizationId","createdAt","updatedAt") VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"#;
        let values: Vec<Value> = vec![
            id.clone().into(),
            n.kind.clone().into(),
            n.title.clone().into(),
            n.message.clone().into(),
            n.severity.clone().into(),
            false.into(),
            n.metadata.clone().into(),
            n.organization_id.clone().into(),
            at.into(),
            at.into(),
        ];
        self.conn.execute_raw(self.stmt(sql, values)).await?;
        Ok(id)
    }

    pub async fn update_screenshot(&self, device: &str, org: &str, json: &str) -> DbResult<()> {
        let at = now();
        let sql = r#"UPDATE devices SET "lastScreenshot" = $1, "lastScreenshotAt" = $2, "updatedAt" = $2
                     WHERE "id" = $3 AND "organizationId" = $4"#;
        self.conn
            .execute_raw(self.stmt(sql, vec![json.into(), at.into(), device.into(), org.into()]))
            .await?;
        Ok(())
    }

    /// Records `t` in `realtime_presence` unless a newer epoch is recorded there; whether it did.
    async fn upsert_presence(
        &self,
        txn: &DatabaseTransaction,
        t: &Transition,
        replica: &str,
    ) -> DbResult<bool> {
        let status = if t.online { "online" } else { "offline" };
        let upsert = r#"INSERT INTO realtime_presence ("deviceId","epoch","status","replicaId","updatedAt")
            VALUES ($1,$2,$3,$4,$5)
            ON CONFLICT ("deviceId") DO UPDATE SET "epoch" = excluded."epoch", "status" = excluded."status",
                "replicaId" = excluded."replicaId", "updatedAt" = excluded."updatedAt"
            WHERE realtime_presence."epoch" <= excluded."epoch"
            RETURNING "deviceId""#;
        Ok(txn
            .query_one_raw(self.stmt(
                upsert,
                vec![
                    t.device_id.clone().into(),
                    (t.epoch as i64).into(),
                    status.into(),
                    replica.into(),
                    t.at.into(),
                ],
            ))
            .await?
            .is_some())
    }

    /// Applies a presence transition unless a newer epoch was already applied: the presence row
    /// and `devices` change in one transaction, so an older epoch can never overwrite a newer one.
    /// Returns whether anything changed.
    pub async fn apply_transition(&self, t: &Transition, replica: &str) -> DbResult<bool> {
        let txn = self.conn.begin().await?;
        let won = self.write_transition(&txn, t, replica).await?;
        txn.commit().await?;
        Ok(won)
    }

    /// Several transitions in submission order, in one transaction: after a connect storm the
    /// writer has thousands queued, and one commit (one WAL flush) per transition was what
    /// bounded its pace. All or nothing, so a failed batch is simply retried.
    pub async fn apply_transitions(&self, ts: &[Transition], replica: &str) -> DbResult<()> {
        let txn = self.conn.begin().await?;
        for t in ts {
            self.write_transition(&txn, t, replica).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    async fn write_transition(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        t: &Transition,
        replica: &str,
    ) -> DbResult<bool> {
        let status = if t.online { "online" } else { "offline" };
        let won = self.upsert_presence(txn, t, replica).await?;
        if won {
            let sql = if t.is_transition {
                r#"UPDATE devices SET "status" = $1, "lastHeartbeat" = $2, "updatedAt" = $2 WHERE "id" = $3"#
            } else {
                // An epoch record repairs a lost transition only: a row that already says so
                // is left alone, so a reconnect costs no `devices` write.
                r#"UPDATE devices SET "status" = $1, "lastHeartbeat" = $2, "updatedAt" = $2
                   WHERE "id" = $3 AND ("status" IS NULL OR "status" <> $1)"#
            };
            txn.execute_raw(self.stmt(
                sql,
                vec![status.into(), t.at.into(), t.device_id.clone().into()],
            ))
            .await?;
        }
        Ok(won)
    }

    /// The reconciliation's offline write for a row [`Db::stale_online`] returned: applied only
    /// if the row still says online, is still unseen since `cutoff`, and no newer epoch is
    /// recorded, so a second run (or a device that came back) changes nothing. `lastHeartbeat`
    /// is kept: nobody saw the device leave. Returns whether it was applied.
    pub async fn reconcile_offline(
        &self,
        device: &str,
        epoch: u64,
        cutoff: NaiveDateTime,
        replica: &str,
    ) -> DbResult<bool> {
        let t = Transition {
            device_id: device.into(),
            epoch,
            online: false,
            at: now(),
            is_transition: true,
        };
        let txn = self.conn.begin().await?;
        if !self.upsert_presence(&txn, &t, replica).await? {
            txn.rollback().await?;
            return Ok(false);
        }
        let sql = r#"UPDATE devices SET "status" = 'offline', "updatedAt" = $1
            WHERE "id" = $2 AND "status" = 'online' AND ("lastHeartbeat" IS NULL OR "lastHeartbeat" < $3)"#;
        let changed = txn
            .execute_raw(self.stmt(sql, vec![t.at.into(), device.into(), cutoff.into()]))
            .await?
            .rows_affected();
        if changed == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        txn.commit().await?;
        Ok(true)
    }

    /// Devices whose row says online but whose `lastHeartbeat` is older than `cutoff` (or absent),
    /// by id after `after`, for the reconciliation. Keyset-paged so each call is one short query.
    pub async fn stale_online(
        &self,
        cutoff: NaiveDateTime,
        after: &str,
        limit: u64,
    ) -> DbResult<Vec<StaleOnline>> {
        let sql = r#"SELECT d."id" AS id, d."organizationId" AS org, p."epoch" AS epoch,
                d."lastHeartbeat" AS hb
            FROM devices d LEFT JOIN realtime_presence p ON p."deviceId" = d."id"
            WHERE d."status" = 'online' AND (d."lastHeartbeat" IS NULL OR d."lastHeartbeat" < $1)
              AND d."id" > $2
            ORDER BY d."id" LIMIT $3"#;
        let rows = self
            .conn
            .query_all_raw(self.stmt(
                sql,
                vec![cutoff.into(), after.into(), (limit as i64).into()],
            ))
            .await?;
        rows.into_iter()
            .map(|r| {
                let epoch: Option<i64> = r.try_get("", "epoch")?;
                Ok(StaleOnline {
                    id: r.try_get("", "id")?,
                    org: r.try_get("", "org")?,
                    epoch: epoch.unwrap_or(0).max(0) as u64,
                    last_heartbeat: r.try_get("", "hb")?,
                })
            })
            .collect()
    }

    /// The periodic bulk flush: ONE statement for all of a replica's live devices, setting
    /// `lastHeartbeat` and re-asserting `status = 'online'` (repairing an online transition lost
    /// with a dead replica), skipped for devices whose presence moved to a newer epoch.
    pub async fn flush_last_seen(
        &self,
        live: &[(String, u64)],
        at: NaiveDateTime,
    ) -> DbResult<u64> {
        if live.is_empty() {
            return Ok(0);
        }
        let json: Json = live
            .iter()
            .map(|(id, e)| serde_json::json!({"id": id, "epoch": *e as i64}))
            .collect();
        let sql = if self.is_sqlite() {
            r#"UPDATE devices SET "lastHeartbeat" = $1, "status" = 'online', "updatedAt" = $1
               FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.epoch') AS epoch FROM json_each($2)) AS x
               WHERE devices."id" = x.id AND NOT EXISTS
                 (SELECT 1 FROM realtime_presence p WHERE p."deviceId" = x.id AND p."epoch" > x.epoch)"#
        } else {
            r#"UPDATE devices AS d SET "lastHeartbeat" = $1, "status" = 'online', "updatedAt" = $1
               FROM jsonb_to_recordset($2::jsonb) AS x(id text, epoch bigint)
               WHERE d."id" = x.id AND NOT EXISTS
                 (SELECT 1 FROM realtime_presence p WHERE p."deviceId" = x.id AND p."epoch" > x.epoch)"#
        };
        // `$.id` inside the SQLite JSON path must not be rewritten like a placeholder.
        let sql = if self.is_sqlite() {
            sql.replace("$1", "?1").replace("$2", "?2")
        } else {
            sql.to_string()
        };
        let stmt = Statement::from_sql_and_values(
            self.backend,
            sql,
            vec![at.into(), json.to_string().into()],
        );
        Ok(self.conn.execute_raw(stmt).await?.rows_affected())
    }

    /// Current `devices.status` (tests and the presence route).
    pub async fn device_status(&self, id: &str) -> DbResult<Option<String>> {
        let sql = r#"SELECT "status" AS st FROM devices WHERE "id" = $1"#;
        let row = self
            .conn
            .query_one_raw(self.stmt(sql, vec![id.into()]))
            .await?;
        Ok(row.map(|r| r.try_get("", "st")).transpose()?)
    }

    /// `devices."lastHeartbeat"` of one device.
    pub async fn org_last_heartbeat(&self, id: &str) -> DbResult<Option<NaiveDateTime>> {
        let sql = r#"SELECT "lastHeartbeat" AS hb FROM devices WHERE "id" = $1"#;
        let row = self
            .conn
            .query_one_raw(self.stmt(sql, vec![id.into()]))
            .await?;
        Ok(row
            .map(|r| r.try_get::<Option<NaiveDateTime>>("", "hb"))
            .transpose()?
            .flatten())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use migration::MigratorTrait;

    use super::*;

    /// An in-memory SQLite database with the gateway's schema.
    pub(super) async fn memory_db() -> Db {
        let db = Db::connect(&DatabaseConfig::Sqlite {
            url: "sqlite::memory:".into(),
        })
        .await
        .unwrap();
        migration::Migrator::up(db.connection(), None)
            .await
            .unwrap();
        db
    }

    async fn db_with_device() -> Db {
        let db = memory_db().await;
        db.connection()
            .execute_unprepared(
                r#"INSERT INTO organizations ("id","name","updatedAt") VALUES ('o','O',CURRENT_TIMESTAMP);
                   INSERT INTO devices ("id","organizationId","deviceIdentifier","status","lastHeartbeat","updatedAt")
                   VALUES ('d','o','mac','online','2026-01-02 03:04:05',CURRENT_TIMESTAMP)"#,
            )
            .await
            .unwrap();
        db
    }

    async fn row(db: &Db) -> (String, String, Option<i64>) {
        let r = db
            .connection()
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                r#"SELECT d."status" AS s, d."lastHeartbeat" AS hb, p."epoch" AS e
                   FROM devices d LEFT JOIN realtime_presence p ON p."deviceId" = d."id""#,
            ))
            .await
            .unwrap()
            .unwrap();
        (
            r.try_get("", "s").unwrap(),
            r.try_get("", "hb").unwrap(),
            r.try_get("", "e").unwrap(),
        )
    }

    fn impression(id: &str, content: &str) -> NewImpression {
        NewImpression {
            id: id.into(),
            organization_id: "o".into(),
            content_id: content.into(),
            device_id: "d".into(),
            playlist_id: None,
            duration: Some(5),
            completion_percentage: None,
            timestamp: now(),
            hour: 3,
        }
    }

    #[tokio::test]
    async fn impression_batches_are_idempotent_and_refusals_are_classified() {
        let db = db_with_device().await;
        db.connection()
            .execute_unprepared(
                r#"INSERT INTO "Content" ("id","name","type","url","duration","organizationId","updatedAt")
                   VALUES ('c','C','image','u',10,'o',CURRENT_TIMESTAMP)"#,
            )
            .await
            .unwrap();
        let batch = [impression("i1", "c"), impression("i2", "c")];
        assert_eq!(db.insert_impressions(&batch).await.unwrap(), 2);
        // The same ids again (a retried batch) insert nothing and do not fail.
        assert_eq!(db.insert_impressions(&batch).await.unwrap(), 0);
        // An unknown content id is a refusal, not an outage: the whole statement is refused.
        let bad = [impression("i3", "c"), impression("i4", "no-such-content")];
        match db.insert_impressions(&bad).await {
            Err(WriteError::Refused { reason, .. }) => assert_eq!(reason, "foreign_key"),
            other => panic!("expected a foreign-key refusal, got {other:?}"),
        }
        // A closed connection is an outage.
        db.connection().clone().close().await.unwrap();
        match db.insert_impressions(&[impression("i5", "c")]).await {
            Err(WriteError::Unavailable(_)) => {}
            other => panic!("expected an outage, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reconciliation_applies_once_keeps_last_seen_and_loses_to_real_transitions() {
        let db = db_with_device().await;
        let cutoff = now();
        let stale = db.stale_online(cutoff, "", 10).await.unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!((stale[0].id.as_str(), stale[0].epoch), ("d", 0));

        assert!(db.reconcile_offline("d", 0, cutoff, "r").await.unwrap());
        assert_eq!(
            row(&db).await,
            ("offline".into(), "2026-01-02 03:04:05".into(), Some(0)),
            "offline, lastHeartbeat kept"
        );
        assert!(
            !db.reconcile_offline("d", 0, cutoff, "r").await.unwrap(),
            "a second run changes nothing"
        );
        assert!(db.stale_online(cutoff, "", 10).await.unwrap().is_empty());

        // The device comes back with a real epoch: a late reconciliation of the old state loses,
        // whether by epoch or because the row has been seen since the cutoff.
        let back = Transition {
            device_id: "d".into(),
            epoch: 5,
            online: true,
            at: now(),
            is_transition: true,
        };
        assert!(db.apply_transition(&back, "r").await.unwrap());
        assert!(!db.reconcile_offline("d", 0, cutoff, "r").await.unwrap());
        let old_cutoff = cutoff - chrono::Duration::hours(1);
        assert!(!db.reconcile_offline("d", 5, old_cutoff, "r").await.unwrap());
        let (status, _, epoch) = row(&db).await;
        assert_eq!((status.as_str(), epoch), ("online", Some(5)));
    }
}
