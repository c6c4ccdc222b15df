//! Domain services: the rules of presence, commands, playlists, screenshots and notifications.
//! Handlers (socket and HTTP) only translate between the wire and these functions.

pub mod commands;
pub mod credentials;
pub mod delivery;
pub mod device_auth;
pub mod device_events;
pub mod impressions;
pub mod live;
pub mod notifications;
pub mod persist;
pub mod playlist;
pub mod presence;
pub mod reconcile;
pub mod rooms;
pub mod screenshots;
pub mod sessions;

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

/// Everything the services share. Built once by `app::run`.
pub struct Gateway {
    pub cfg: Arc<Config>,
    pub db: Db,
    pub presence: Arc<dyn PresenceStore>,
    pub state: Arc<dyn StateStore>,
    /// Where accepted impressions wait for the database.
    pub outbox: Arc<dyn ImpressionOutbox>,
    pub storage: Storage,
    pub metrics: Metrics,
    pub emitter: Arc<dyn Emitter>,
    pub verifier: TokenVerifier,
    pub live: live::LiveRegistry,
    pub persister: persist::Persister,
    pub device_limiter: crate::limits::DeviceLimiter,
    pub auth_cache: device_auth::DeviceAuthCache,
    /// This replica's dashboard sockets (the session sweep walks them).
    pub dashboards: sessions::DashboardRegistry,
    /// Organisations suspended through the internal API, as this replica last read them.
    pub suspended: sessions::SuspendedOrgs,
    draining: AtomicBool,
    redis_healthy: AtomicBool,
    /// Test-only delays between lease steps (feature `test-hooks`).
    pub hooks: crate::hooks::Hooks,
    /// Every task spawned for this gateway (background loops and the services' own follow-ups),
    /// so the drain stops and awaits them all.
    tasks: crate::shutdown::Tasks,
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        db: Db,
        presence: Arc<dyn PresenceStore>,
        state: Arc<dyn StateStore>,
        outbox: Arc<dyn ImpressionOutbox>,
        storage: Storage,
        metrics: Metrics,
        emitter: Arc<dyn Emitter>,
        persister: persist::Persister,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            verifier: TokenVerifier::new(&cfg.device_jwt_secret, &cfg.jwt_secret),
            device_limiter: crate::limits::DeviceLimiter::new(&cfg.limits),
            auth_cache: device_auth::DeviceAuthCache::default(),
            dashboards: sessions::DashboardRegistry::default(),
            suspended: sessions::SuspendedOrgs::default(),
            live: live::LiveRegistry::default(),
            hooks: crate::hooks::Hooks::from_env(),
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
            redis_healthy: AtomicBool::new(true),
            tasks: crate::shutdown::Tasks::default(),
        })
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
