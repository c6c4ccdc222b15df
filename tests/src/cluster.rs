//! A cluster on loopback: one `redis-server`, one PostgreSQL database, N gateway replicas.

use crate::gateway::{DbTarget, seeded_db};
use crate::{Gateway, GatewayOptions, PgDatabase, RedisServer};

pub struct Cluster {
    pub redis: RedisServer,
    pub replicas: Vec<Gateway>,
    pub db: DbTarget,
    pub pg: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` replicas named r0..r{n-1}; `tweak` adjusts each replica's options.
    pub async fn start(
        n: usize,
        load_devices: usize,
        tweak: impl Fn(GatewayOptions) -> GatewayOptions,
    ) -> Cluster {
        let redis = RedisServer::start().await;
        let url = redis.url();
        Cluster::start_on(redis, &url, n, load_devices, tweak).await
    }

    /// Like [`Cluster::start`] on a Redis the test configured itself, reached at `redis_url`
    /// (the server's own URL, or a proxy standing for a managed endpoint).
    pub async fn start_on(
        redis: RedisServer,
        redis_url: &str,
        n: usize,
        load_devices: usize,
        tweak: impl Fn(GatewayOptions) -> GatewayOptions,
    ) -> Cluster {
        Cluster::start_connected(redis, n, load_devices, |o| tweak(o.redis(redis_url))).await
    }

    /// Like [`Cluster::start_on`], but `connect` tells each replica how to reach Redis itself
    /// (`REDIS_URL`, or the Sentinel variables) and adjusts its options. `redis` is the node
    /// the cluster's own checks read.
    pub async fn start_connected(
        redis: RedisServer,
        n: usize,
        load_devices: usize,
        connect: impl Fn(GatewayOptions) -> GatewayOptions,
    ) -> Cluster {
        let (db, pg, dir) = seeded_db("postgres", load_devices).await;
        let mut replicas = Vec::with_capacity(n);
        for i in 0..n {
            let opts = connect(GatewayOptions::new(db.clone()).replica(&format!("r{i}")));
            replicas.push(Gateway::start(opts).await);
        }
        Cluster {
            redis,
            replicas,
            db,
            pg,
            _dir: dir,
        }
    }

    pub async fn pg(&self) -> sea_orm::DatabaseConnection {
        sea_orm::Database::connect(self.db.url()).await.unwrap()
    }

    /// `devices.status` straight from PostgreSQL.
    pub async fn db_status(&self, device: &str) -> String {
        use sea_orm::ConnectionTrait;
        let conn = self.pg().await;
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                format!(r#"SELECT "status" AS s FROM devices WHERE "id" = '{device}'"#),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<String>("", "s").unwrap()
    }

    /// Waits (up to 15 s) until `devices.status` of `device` is `want`.
    pub async fn wait_db_status(&self, device: &str, want: &str) {
        crate::eventually(
            std::time::Duration::from_secs(15),
            &format!("devices.status of {device} to be {want}"),
            || async { (self.db_status(device).await == want).then_some(()) },
        )
        .await;
    }

    /// Number of `notifications` rows of a type for a device.
    pub async fn notifications(&self, device: &str, kind: &str) -> i64 {
        use sea_orm::ConnectionTrait;
        let conn = self.pg().await;
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                format!(r#"SELECT COUNT(*) AS n FROM notifications WHERE "type" = '{kind}' AND "metadata"->>'deviceId' = '{device}'"#),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap()
    }

    /// Number of `notifications` rows of a type, all devices together.
    pub async fn all_notifications(&self, kind: &str) -> i64 {
        use sea_orm::ConnectionTrait;
        let conn = self.pg().await;
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                format!(r#"SELECT COUNT(*) AS n FROM notifications WHERE "type" = '{kind}'"#),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap()
    }

    /// Whether Redis holds a lease for the device.
    pub async fn lease(&self, device: &str) -> Option<serde_json::Value> {
        self.redis
            .get(&format!("device:lease:{device}"))
            .await
            .and_then(|s| serde_json::from_str(&s).ok())
    }
}
