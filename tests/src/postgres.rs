//! A throwaway PostgreSQL database per test on the local server (trust auth), started with the
//! machine's `pg_ctlcluster` when it is not running. `DATABASE_ADMIN_URL` overrides the server.

use std::sync::OnceLock;
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

pub fn admin_url() -> String {
    std::env::var("DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn base_of(url: &str) -> &str {
    url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url)
}

/// Makes sure a server answers, starting the local cluster once if needed.
async fn ensure_server() -> DatabaseConnection {
    static STARTED: OnceLock<()> = OnceLock::new();
    if let Ok(c) = Database::connect(admin_url()).await {
        return c;
    }
    STARTED.get_or_init(|| {
        let versions = std::fs::read_dir("/etc/postgresql")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok());
        if let Some(v) = versions {
            let _ = std::process::Command::new("pg_ctlcluster")
                .args([
                    "--skip-systemctl-redirect",
                    &v.file_name().to_string_lossy(),
                    "main",
                    "start",
                ])
                .status();
        }
    });
    crate::eventually(
        Duration::from_secs(30),
        "PostgreSQL to accept connections",
        || async { Database::connect(admin_url()).await.ok() },
    )
    .await
}

/// A database that is dropped when this value is.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let admin = ensure_server().await;
        let name = format!(
            "vgt_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        let url = format!("{}/{name}", base_of(&admin_url()));
        PgDatabase { name, url }
    }

    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(&self.url).await.unwrap()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop from a fresh runtime on another thread: Drop may run inside a test's runtime.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = Database::connect(admin_url()).await {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}
