//! Domain services: the rules of presence, commands, playlists, screenshots and notifications.
//! Handlers (socket and HTTP) only translate between the wire and these functions.
//!
//! `Gateway`'s fields are private: the stores, the database, storage and the metric
//! instruments are reachable only from this module and its children, so a handler that wants
//! one does not compile. What the edge needs is a method here (`observe.rs` for its counts,
//! `health.rs` for its probes); `tests::edge_modules_name_no_store_database_or_metric` keeps
//! the edge from importing them by path either.

pub mod commands;
pub mod credentials;
pub mod delivery;
pub mod device_auth;
pub mod device_events;
pub mod fence;
pub mod health;
pub mod impressions;
pub mod live;
pub mod notifications;
pub mod observe;
pub mod pending;
pub mod persist;
pub mod playlist;
pub mod presence;
pub mod rebalance;
pub mod reconcile;
pub mod relay;
pub mod rooms;
pub mod screenshots;
pub mod sessions;

/// What the services' store-backed methods fail with, for the edges' one translation of it
/// (`http/error.rs`): an error type to render, not a way to a store.
pub use crate::store::StoreError;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::TokenVerifier;
use crate::config::Config;
use crate::db::Db;
use crate::emitter::Emitter;
use crate::storage::Storage;
use crate::store::outbox::ImpressionOutbox;
use crate::store::{PresenceStore, StateStore};
use crate::telemetry::Metrics;

/// Room naming in one place.
pub mod room {
    pub fn device(id: &str) -> String {
        format!("device:{id}")
    }
    pub fn org(id: &str) -> String {
        format!("org:{id}")
    }
    /// Dashboards only: status events go here so N screens do not cost N² emits.
    pub fn dashboards(org: &str) -> String {
        format!("dashboards:{org}")
    }
    /// Each device socket's private room, so any replica can disconnect exactly that socket.
    pub fn socket(sid: &str) -> String {
        format!("socket:{sid}")
    }
    /// A device's sockets that acknowledge deliveries (`auth.capabilities.deliveryAck`).
    /// Not a client-joinable pattern.
    pub fn device_acked(id: &str) -> String {
        format!("device-ack:{id}")
    }
    /// A dashboard user's sockets (per-user notifications). Not a client-joinable pattern.
    pub fn user(sub: &str) -> String {
        format!("user:{sub}")
    }
}

/// What a gateway is built on, chosen by the mode (embedded or cluster) before the adapter is:
/// `app::run` fills it, the in-process test fixture too.
pub struct Backends {
    pub cfg: Arc<Config>,
    pub db: Db,
    pub presence: Arc<dyn PresenceStore>,
    pub state: Arc<dyn StateStore>,
    /// Where accepted impressions wait for the database.
    pub outbox: Arc<dyn ImpressionOutbox>,
    pub storage: Storage,
    pub metrics: Metrics,
}

/// Everything the services share. Built once by `app::run`. Private fields: see the module doc.
pub struct Gateway {
    cfg: Arc<Config>,
    db: Db,
    presence: Arc<dyn PresenceStore>,
    state: Arc<dyn StateStore>,
    /// Where accepted impressions wait for the database.
    outbox: Arc<dyn ImpressionOutbox>,
    storage: Storage,
    metrics: Metrics,
    emitter: Arc<dyn Emitter>,
    verifier: TokenVerifier,
    live: live::LiveRegistry,
    persister: persist::Persister,
    device_limiter: crate::limits::DeviceLimiter,
    auth_cache: device_auth::DeviceAuthCache,
    /// This replica's dashboard sockets (the session sweep walks them).
    dashboards: sessions::DashboardRegistry,
    /// Organisations suspended through the internal API, as this replica last read them.
    suspended: sessions::SuspendedOrgs,
    draining: AtomicBool,
    /// Self-fencing: the Redis probe record and whether this replica fenced itself off.
    fence: fence::Fence,
    redis_healthy: AtomicBool,
    /// Test-only delays between lease steps (feature `test-hooks`).
    hooks: crate::hooks::Hooks,
    /// Confirmed delivery to sockets on other replicas.
    relay: relay::Relay,
    /// Rebalancing: whether this replica sheds, and when it refuses handshakes for it.
    rebalance: rebalance::Rebalance,
    /// Every task spawned for this gateway (background loops and the services' own follow-ups),
    /// so the drain stops and awaits them all.
    tasks: crate::shutdown::Tasks,
}

impl Gateway {
    pub fn new(
        b: Backends,
        emitter: Arc<dyn Emitter>,
        persister: persist::Persister,
    ) -> Arc<Gateway> {
        let Backends {
            cfg,
            db,
            presence,
            state,
            outbox,
            storage,
            metrics,
        } = b;
        // Both dependencies were reached before the gateway is built (`app::run`); the periodic
        // probe (`record_dependencies`) keeps the gauges current from here.
        let g = &metrics.gauges;
        g.redis_up
            .store(if cfg.redis.is_some() { 1 } else { -1 }, Ordering::Relaxed);
        g.database_up.store(1, Ordering::Relaxed);
        Arc::new(Gateway {
            verifier: TokenVerifier::new(&cfg.device_jwt_secret, &cfg.jwt_secret),
            device_limiter: crate::limits::DeviceLimiter::new(&cfg.limits),
            auth_cache: device_auth::DeviceAuthCache::default(),
            dashboards: sessions::DashboardRegistry::default(),
            suspended: sessions::SuspendedOrgs::default(),
            live: live::LiveRegistry::default(),
            hooks: crate::hooks::Hooks::from_env(),
            relay: relay::Relay::new(cfg.delivery_confirm_timeout),
            rebalance: rebalance::Rebalance::new(),
            cfg,
            db,
            presence,
            state,
            outbox,
            storage,
            metrics,
            emitter,
            persister,
            draining: AtomicBool::new(false),
            fence: fence::Fence::new(),
            redis_healthy: AtomicBool::new(true),
            tasks: crate::shutdown::Tasks::default(),
        })
    }

    /// The configuration (settings only: no store or instrument is reachable through it).
    pub fn cfg(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// The ordered transition writer's database side, for `app::run` to spawn.
    pub fn persist_writer(&self) -> persist::Writer {
        persist::Writer {
            db: self.db.clone(),
            replica: self.cfg.replica_id.clone(),
            metrics: self.metrics.clone(),
            hooks: self.hooks.clone(),
        }
    }

    /// The background set-up of object storage (`storage::keep_ready`), for `app::run` to spawn.
    pub fn keep_storage_ready(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        crate::storage::keep_ready(self.storage.clone(), stop)
    }

    /// The instruments the listener (`net.rs`) counts TCP refusals and connections with; the
    /// wiring hands them over once, nothing at the edge asks for them.
    pub fn listener_metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Forgets idle per-device connect buckets (periodic).
    pub fn limiter_housekeeping(&self) {
        self.device_limiter.housekeeping();
    }

    /// Where the gateway's tasks are spawned and stopped.
    pub fn tasks(&self) -> &crate::shutdown::Tasks {
        &self.tasks
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.gauges.draining.store(1, Ordering::Relaxed);
    }
    pub fn redis_healthy(&self) -> bool {
        self.redis_healthy.load(Ordering::Relaxed)
    }
    pub fn set_redis_healthy(&self, ok: bool) {
        let was = self.redis_healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!("Shared store reachable again.");
            } else {
                tracing::warn!("Shared store unreachable; serving live sockets from what we have.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    /// The edge (`socket/`, `http/`) reaches stores, the database, storage and metric
    /// instruments only through `Gateway` methods. Private fields make `gw.db` a compile error;
    /// this keeps the other door shut: naming those modules or types by path.
    #[test]
    fn edge_modules_name_no_store_database_or_metric() {
        // Type and path names, not words: "Metrics access denied" is a message, not a use.
        const FORBIDDEN: [&str; 15] = [
            "crate::store",
            "crate::db",
            "crate::storage",
            "crate::telemetry",
            "StateStore",
            "PresenceStore",
            "ImpressionOutbox",
            ": Metrics",
            "Metrics::",
            "Metrics>",
            "Gauges",
            ".gauges",
            ".metrics.",
            "gw.metrics",
            "Db::",
        ];
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut checked = 0;
        for dir in ["socket", "http"] {
            for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                for word in FORBIDDEN {
                    assert!(
                        !text.contains(word),
                        "{} names `{word}`: go through a Gateway method",
                        path.display()
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 10, "the edge modules were not found");
    }

    /// Services hand clients typed events only: no `json!` left in an emit or an answer, and
    /// no `names::` or `Outgoing::broadcast` (commands excepted). Internal records are not
    /// client payloads and may use `json!`, each line named in `INTERNAL_RECORDS`; unit tests
    /// (after `#[cfg(test)]`) build inputs with it freely.
    #[test]
    fn services_emit_only_typed_events() {
        /// Every `json!` line of the services' code, by file: records kept in Redis or in the
        /// database, never sent to a client as they are. A line gone must leave the list too.
        const INTERNAL_RECORDS: [(&str, &[&str]); 4] = [
            // The Redis list entry of a content error.
            (
                "device_events.rs",
                &[
                    r#"entry.insert("deviceId".into(), json!(device));"#,
                    r#"entry.insert("contentId".into(), json!(e.content_id));"#,
                    r#"entry.insert("errorType".into(), json!(e.error_type));"#,
                    r#"entry.insert(k.into(), json!(v));"#,
                    r#"entry.insert("timestamp".into(), json!(now_ms()));"#,
                ],
            ),
            // The `metadata` column of notification rows.
            (
                "notifications.rs",
                &[
                    r#"metadata: json!({"deviceId": n.device_id, "deviceName": n.device_name, "disconnectedAt": iso(disconnected)}),"#,
                    r#"metadata: json!({"deviceId": device, "deviceName": name}),"#,
                ],
            ),
            // The Redis record of a stored screenshot.
            (
                "screenshots.rs",
                &[
                    r#"let record = json!({"url": url, "width": r.width, "height": r.height}).to_string();"#,
                ],
            ),
            // The Redis record of a token rotation's grace.
            (
                "credentials.rs",
                &[r#"let grace = json!({"prev": s.presented, "next": next}).to_string();"#],
            ),
        ];
        let records: Vec<(&str, &str)> = INTERNAL_RECORDS
            .iter()
            .flat_map(|&(file, lines)| lines.iter().map(move |&l| (file, l)))
            .collect();
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src/service");
        let mut named = vec![false; records.len()];
        for entry in std::fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            // This file's tests name the words below.
            if file != "mod.rs" {
                for word in ["names::", "Outgoing::broadcast"] {
                    let allowed = word == "Outgoing::broadcast" && file == "commands.rs";
                    assert!(
                        allowed || !text.contains(word),
                        "{} uses `{word}`: emit a `wire::outgoing` type",
                        path.display()
                    );
                }
            }
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for line in code.lines().map(str::trim).filter(|l| l.contains("json!")) {
                let Some(i) = records.iter().position(|&(f, l)| f == file && l == line) else {
                    panic!(
                        "{} builds JSON with `json!`: `{line}`; emit or answer a \
                         `wire::outgoing` type (an internal record, never sent as it is, goes \
                         in INTERNAL_RECORDS)",
                        path.display()
                    );
                };
                named[i] = true;
            }
        }
        for ((file, line), seen) in records.iter().zip(named) {
            assert!(
                seen,
                "{file} no longer has `{line}`: drop it from INTERNAL_RECORDS"
            );
        }
    }
}
