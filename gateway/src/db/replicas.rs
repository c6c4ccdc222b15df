//! `realtime_replicas`: each replica's word on when it was last alive and when it last reached
//! Redis, the witness of self-fencing (`service::fence`). Times are written and compared on the
//! database's clock (milliseconds since the epoch), so the replicas' own clocks never meet:
//! a replica writes how long ago it reached Redis, and reads how long ago its peers did.

use sea_orm::{ConnectionTrait, DbBackend, Value};

use super::{Db, DbResult};

/// What one peer's row says, as ages in milliseconds at the moment of the read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAges {
    pub replica: String,
    /// Since the peer last wrote its row.
    pub seen_ms: i64,
    /// Since the start of the peer's last successful Redis probe (None: never reached it).
    pub ok_ms: Option<i64>,
    /// Since the start of the unbroken run of successful probes that one belongs to.
    pub ok_since_ms: Option<i64>,
}

impl Db {
    /// The database's clock in milliseconds since the epoch, as an SQL expression.
    fn now_ms_sql(&self) -> &'static str {
        match self.backend {
            DbBackend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            _ => "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::bigint",
        }
    }

    /// Upserts this replica's row: seen now, Redis last reached `ok_ago_ms` ago in a run of
    /// successes that began `ok_since_ago_ms` ago (None: not reached since the start).
    pub async fn record_replica(
        &self,
        replica: &str,
        ok_ago_ms: Option<i64>,
        ok_since_ago_ms: Option<i64>,
    ) -> DbResult<()> {
        let now = self.now_ms_sql();
        let sql = format!(
            r#"INSERT INTO realtime_replicas ("replicaId","seenAt","redisOkAt","redisOkSince")
               VALUES ($1, {now}, {now} - $2, {now} - $3)
               ON CONFLICT ("replicaId") DO UPDATE SET "seenAt" = excluded."seenAt",
                 "redisOkAt" = excluded."redisOkAt", "redisOkSince" = excluded."redisOkSince""#
        );
        let values: Vec<Value> = vec![replica.into(), ok_ago_ms.into(), ok_since_ago_ms.into()];
        self.conn.execute_raw(self.stmt(&sql, values)).await?;
        Ok(())
    }

    /// The other replicas whose row was written within `within_ms`, with their ages.
    pub async fn peer_replicas(&self, replica: &str, within_ms: i64) -> DbResult<Vec<PeerAges>> {
        let now = self.now_ms_sql();
        let sql = format!(
            r#"SELECT "replicaId" AS r, {now} - "seenAt" AS s, {now} - "redisOkAt" AS k,
                      {now} - "redisOkSince" AS ks
               FROM realtime_replicas WHERE "replicaId" <> $1 AND "seenAt" >= {now} - $2"#
        );
        let rows = self
            .conn
            .query_all_raw(self.stmt(&sql, vec![replica.into(), within_ms.into()]))
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(PeerAges {
                    replica: r.try_get("", "r")?,
                    seen_ms: r.try_get("", "s")?,
                    ok_ms: r.try_get("", "k")?,
                    ok_since_ms: r.try_get("", "ks")?,
                })
            })
            .collect()
    }

    /// Removes the rows of replicas not seen for `older_than_ms` (replicas that are gone).
    pub async fn forget_replicas(&self, older_than_ms: i64) -> DbResult<u64> {
        let now = self.now_ms_sql();
        let sql = format!(r#"DELETE FROM realtime_replicas WHERE "seenAt" < {now} - $1"#);
        let r = self
            .conn
            .execute_raw(self.stmt(&sql, vec![older_than_ms.into()]))
            .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::db::tests::memory_db;

    #[tokio::test]
    async fn rows_are_upserted_read_as_ages_and_forgotten() {
        let db = memory_db().await;
        db.record_replica("a", Some(100), Some(5_000))
            .await
            .unwrap();
        db.record_replica("b", None, None).await.unwrap();
        db.record_replica("b", Some(2_000), Some(3_000))
            .await
            .unwrap();
        assert!(db.peer_replicas("a", 60_000).await.unwrap().len() == 1);
        let peers = db.peer_replicas("c", 60_000).await.unwrap();
        assert_eq!(peers.len(), 2, "{peers:?}");
        let b = peers.iter().find(|p| p.replica == "b").unwrap();
        // Ages on the database's clock: written a moment ago.
        assert!((0..1_000).contains(&b.seen_ms), "{b:?}");
        assert!(
            b.ok_ms.is_some_and(|k| (2_000..3_000).contains(&k)),
            "{b:?}"
        );
        assert!(
            b.ok_since_ms.is_some_and(|k| (3_000..4_000).contains(&k)),
            "{b:?}"
        );
        db.record_replica("n", None, None).await.unwrap();
        let n = db.peer_replicas("c", 60_000).await.unwrap();
        let n = n.iter().find(|p| p.replica == "n").unwrap();
        assert_eq!((n.ok_ms, n.ok_since_ms), (None, None));
        // Old rows: neither read as peers nor kept.
        db.connection()
            .execute_unprepared(r#"UPDATE realtime_replicas SET "seenAt" = "seenAt" - 7200000 WHERE "replicaId" = 'a'"#)
            .await
            .unwrap();
        assert!(
            !db.peer_replicas("c", 60_000)
                .await
                .unwrap()
                .iter()
                .any(|p| p.replica == "a")
        );
        assert_eq!(db.forget_replicas(3_600_000).await.unwrap(), 1);
        assert_eq!(db.peer_replicas("c", 60_000).await.unwrap().len(), 2);
    }
}
