//! Compatibility with the official JavaScript client: runs the `node:test` suite in `tests/js`
//! (socket.io-client 4.8.4 with the shipped players' and dashboard's exact options) against two
//! gateways — one with the default test settings and one with a per-IP handshake limit of 1/s,
//! burst 1, for the transient-refusal scenario.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use vizora_gateway::auth::mint;
use vizora_gateway_tests::*;

const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// `tests/js/node_modules` from the committed lock file (`npm ci`) when it is absent.
async fn ensure_node_modules(dir: &Path) {
    if dir.join("node_modules").join("socket.io-client").is_dir() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "`npm` is needed to install socket.io-client for the JS compatibility suite \
                 (install Node.js 20+ and npm, or run `npm ci` in {}): {e}",
                dir.display()
            )
        });
    assert!(
        out.status.success(),
        "`npm ci` in {} failed ({}):\n{}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn official_socket_io_client_drives_the_gateway_like_the_shipped_clients() {
    let dir = js_dir();
    ensure_node_modules(&dir).await;

    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    {
        // Devices of `credentials.test.mjs` only.
        use sea_orm::ConnectionTrait;
        let conn = sea_orm::Database::connect(db.url()).await.unwrap();
        conn.execute_unprepared(&format!(
            r#"INSERT INTO devices ("id","organizationId","deviceIdentifier","updatedAt") VALUES
               ('dev-c1','{ORG_A}','mac-c1',CURRENT_TIMESTAMP),('dev-c2','{ORG_A}','mac-c2',CURRENT_TIMESTAMP),
               ('dev-c3','{ORG_A}','mac-c3',CURRENT_TIMESTAMP)"#
        ))
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let gw = Gateway::start(GatewayOptions::new(db)).await;
    let now = chrono::Utc::now().timestamp();
    // A 90-day pairing token with 10 days left.
    let near_expiry = mint::device_token_at(
        DEVICE_SECRET,
        "dev-c1",
        "mac-c1",
        ORG_A,
        now - 80 * 86_400,
        now + 10 * 86_400,
    )
    .unwrap();
    // Its own database: two SQLite-backed gateways must not share a file.
    let (db2, _pg2, _dir2) = gateway::seeded_db("sqlite", 0).await;
    let limited = Gateway::start(
        GatewayOptions::new(db2)
            .env("CONNECT_RATE_PER_IP", 1)
            .env("CONNECT_BURST_PER_IP", 1),
    )
    .await;

    let bad_secret = mint::device_token(
        "not-the-device-secret-not-the-device-secret",
        DEV_A1,
        &format!("mac-{DEV_A1}"),
        ORG_A,
        3600,
    )
    .unwrap();
    // Well past the 30 s leeway.
    let expired = mint::device_token(
        DEVICE_SECRET,
        DEV_A1,
        &format!("mac-{DEV_A1}"),
        ORG_A,
        -3600,
    )
    .unwrap();

    let child = Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .current_dir(&dir)
        .env("GATEWAY_URL", gw.url())
        .env("LIMITED_GATEWAY_URL", limited.url())
        .env("DEVICE_TOKEN_A1", device_token(DEV_A1, ORG_A))
        .env("DEVICE_TOKEN_A2", device_token(DEV_A2, ORG_A))
        .env("DEVICE_TOKEN_A3", device_token(DEV_A3, ORG_A))
        .env("DEVICE_TOKEN_B1", device_token(DEV_B1, ORG_B))
        .env("USER_TOKEN_A", user_token("user-a", ORG_A))
        .env("BAD_SECRET_DEVICE_TOKEN", bad_secret)
        .env("MISSING_DEVICE_TOKEN", device_token("dev-missing", ORG_A))
        .env("WRONG_ORG_DEVICE_TOKEN", device_token(DEV_B1, ORG_A))
        .env("EXPIRED_DEVICE_TOKEN", expired)
        .env("NEAR_EXPIRY_TOKEN_C1", near_expiry)
        .env("DEVICE_TOKEN_C2", device_token("dev-c2", ORG_A))
        .env("DEVICE_TOKEN_C3", device_token("dev-c3", ORG_A))
        .env("INTERNAL_KEY", INTERNAL_KEY)
        .env("ORG_A", ORG_A)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("`node` (20+) is needed for the JS compatibility suite: {e}"));

    let out = tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the JS suite did not finish within {SUITE_TIMEOUT:?}"))
        .expect("node --test");
    println!(
        "---- node --test stdout ----\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!(
        "---- node --test stderr ----\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        eprintln!("---- gateway log ----\n{}", gw.logs());
        eprintln!("---- limited gateway log ----\n{}", limited.logs());
    }
    assert!(
        out.status.success(),
        "the JS compatibility suite failed ({})",
        out.status
    );
}
