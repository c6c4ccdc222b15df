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
        self.db.connect().await
    }

    /// `devices.status` straight from PostgreSQL.
    pub async fn db_status(&self, device: &str) -> String {
        self.db.device_status(device).await
    }

    /// Waits (up to 15 s) until `devices.status` of `device` is `want`.
    pub async fn wait_db_status(&self, device: &str, want: &str) {
        self.db.wait_device_status(device, want).await
    }

    /// Number of `notifications` rows of a type for a device.
    pub async fn notifications(&self, device: &str, kind: &str) -> i64 {
        self.db.notifications(device, kind).await
    }

    /// Number of `notifications` rows of a type, all devices together.
    pub async fn all_notifications(&self, kind: &str) -> i64 {
        self.db.all_notifications(kind).await
    }

    /// The device's lease deadline in `presence:deadlines` (ms, Redis TIME), if it has one.
    pub async fn lease_deadline_ms(&self, device: &str) -> Option<f64> {
        let d: Option<String> = self
            .redis
            .cmd(&["ZSCORE", "presence:deadlines", device])
            .await;
        d.and_then(|d| d.parse().ok())
    }

    /// Whether Redis holds a lease for the device.
    pub async fn lease(&self, device: &str) -> Option<serde_json::Value> {
        self.redis
            .get(&format!("device:lease:{device}"))
            .await
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    /// The positive control of a test that asserts the sweep did nothing to some devices: a
    /// lease for `device` (of `org`) that no replica holds, as if its replica had just died,
    /// due when the latest lease now in Redis is due (at once if there is none). Nobody
    /// refreshes it, so a sweep expires it with a full offline transition: `device:status`
    /// offline to the organisation's dashboards, the row, an offline notice after the grace
    /// delay. Once that offline is seen, a sweep has run past the deadline of every lease that
    /// was not refreshed since this call, and past the sweep grace (which holds back every
    /// expiry). Same keys and epoch rule as `acquire.lua`.
    pub async fn abandon_lease(&self, device: &str, org: &str) {
        const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local due = math.floor(now_us / 1000)
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
if last[2] then due = math.max(due, tonumber(last[2])) end
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local epoch = string.format('%.0f', math.max(stored + 1, now_us))
redis.call('SET', KEYS[1], epoch)
redis.call('SET', KEYS[2], cjson.encode({epoch = epoch, replica = 'abandoned', sid = 'abandoned', org = ARGV[2]}))
redis.call('ZADD', KEYS[3], due, ARGV[1])
return due"#;
        let _due: i64 = self
            .redis
            .cmd(&[
                "EVAL",
                SCRIPT,
                "3",
                &format!("device:epoch:{device}"),
                &format!("device:lease:{device}"),
                "presence:deadlines",
                device,
                org,
            ])
            .await;
    }
}

/// The checks tests make straight on the replicas' database.
impl DbTarget {
    pub async fn connect(&self) -> sea_orm::DatabaseConnection {
        sea_orm::Database::connect(self.url()).await.unwrap()
    }

    /// The one value (`AS v`) of a query's one row.
    async fn scalar<T: sea_orm::TryGetable>(&self, sql: String) -> T {
        use sea_orm::ConnectionTrait;
        let conn = self.connect().await;
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                sql,
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<T>("", "v").unwrap()
    }

    /// `devices.status` straight from PostgreSQL.
    pub async fn device_status(&self, device: &str) -> String {
        self.scalar(format!(
            r#"SELECT "status" AS v FROM devices WHERE "id" = '{device}'"#
        ))
        .await
    }

    /// Waits (up to 15 s) until `devices.status` of `device` is `want`.
    pub async fn wait_device_status(&self, device: &str, want: &str) {
        crate::eventually(
            std::time::Duration::from_secs(15),
            &format!("devices.status of {device} to be {want}"),
            || async { (self.device_status(device).await == want).then_some(()) },
        )
        .await;
    }

    /// Number of `notifications` rows of a type for a device.
    pub async fn notifications(&self, device: &str, kind: &str) -> i64 {
        self.scalar(format!(
            r#"SELECT COUNT(*) AS v FROM notifications WHERE "type" = '{kind}' AND "metadata"->>'deviceId' = '{device}'"#
        ))
        .await
    }

    /// Number of `notifications` rows of a type, all devices together.
    pub async fn all_notifications(&self, kind: &str) -> i64 {
        self.scalar(format!(
            r#"SELECT COUNT(*) AS v FROM notifications WHERE "type" = '{kind}'"#
        ))
        .await
    }
}
