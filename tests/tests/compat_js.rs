//! Compatibility with the official JavaScript client: runs the `node:test` suite in `tests/js`
//! (socket.io-client 4.8.4 with the shipped players' and dashboard's exact options) against three
//! gateways — one with the default test settings, one with a per-IP handshake limit of 1/s,
//! burst 1, for the transient-refusal scenario, and one on its own redis-server with a 1 s
//! session sweep for the credential lifecycle (`lifecycle.test.mjs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use vizora_gateway::auth::{mint, token_hash};
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
    // Devices of `credentials.test.mjs` only.
    insert_devices(
        &db,
        &[
            ("dev-c1", ORG_A, None),
            ("dev-c2", ORG_A, None),
            ("dev-c3", ORG_A, None),
        ],
    )
    .await;
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

    // `lifecycle.test.mjs`: its own Redis-backed gateway with a 1 s session sweep, so a suspended
    // organisation or a revoked user never reaches the other files' tests. Its device rows are
    // bound the three ways a fleet holds them at cut-over: a hash, NULL, the raw token.
    let redis = RedisServer::start().await;
    let (db3, _pg3, _dir3) = gateway::seeded_db("sqlite", 0).await;
    let repaired_old = device_token("dev-l1", ORG_A);
    // Another pairing of the same device: a later `iat` makes it a different token.
    let now = chrono::Utc::now().timestamp();
    let repaired_new = mint::device_token_at(
        DEVICE_SECRET,
        "dev-l1",
        "mac-dev-l1",
        ORG_A,
        now + 1,
        now + 3600,
    )
    .unwrap();
    let raw_row = device_token("dev-l3", ORG_A);
    insert_devices(
        &db3,
        &[
            ("dev-l1", ORG_A, Some(token_hash(&repaired_new))),
            ("dev-l2", ORG_A, None),
            ("dev-l3", ORG_A, Some(raw_row.clone())),
            ("dev-s1", ORG_B, None),
            ("dev-s2", ORG_B, None),
        ],
    )
    .await;
    let lifecycle = Gateway::start(
        GatewayOptions::new(db3)
            .redis(&redis.url())
            .env("SESSION_SWEEP_INTERVAL_MS", 1000),
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

    // Spec output for people, TAP into a file for the counts checked below.
    let tap_dir = tempfile::tempdir().unwrap();
    let tap = tap_dir.path().join("report.tap");
    let child = Command::new("node")
        .args([
            "--test",
            "--test-reporter=spec",
            "--test-reporter-destination=stdout",
        ])
        .arg("--test-reporter=tap")
        .arg(format!("--test-reporter-destination={}", tap.display()))
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
        .env("ORG_B", ORG_B)
        .env("LIFECYCLE_GATEWAY_URL", lifecycle.url())
        .env("LIFECYCLE_REDIS_URL", redis.url())
        .env("REPAIRED_OLD_TOKEN_L1", repaired_old)
        .env("REPAIRED_NEW_TOKEN_L1", repaired_new)
        .env("NULL_ROW_TOKEN_L2", device_token("dev-l2", ORG_A))
        .env("RAW_ROW_TOKEN_L3", raw_row)
        .env("SUSPEND_DEVICE_TOKEN_S1", device_token("dev-s1", ORG_B))
        .env("SUSPEND_DEVICE_TOKEN_S2", device_token("dev-s2", ORG_B))
        .env("SUSPEND_USER_TOKEN", user_token("ops-b", ORG_B))
        .env("USER_REVOKED", "u-js-revoked")
        .env("USER_TOKEN_REVOKED", user_token("u-js-revoked", ORG_A))
        .env("USER_PWD_CHANGED", "u-js-changed")
        .env("USER_TOKEN_PWD_CHANGED", user_token("u-js-changed", ORG_A))
        .env("USER_KEPT", "u-js-kept")
        .env("USER_TOKEN_KEPT", user_token("u-js-kept", ORG_A))
        .env("NOTIFY_USER_2", "u-js-n2")
        .env("NOTIFY_USER_TOKEN_1", user_token("u-js-n1", ORG_A))
        .env("NOTIFY_USER_TOKEN_2", user_token("u-js-n2", ORG_A))
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
        eprintln!("---- lifecycle gateway log ----\n{}", lifecycle.logs());
    }
    assert!(
        out.status.success(),
        "the JS compatibility suite failed ({})",
        out.status
    );
    // `node --test` exits 0 when it finds no test file at all, or when a file stops registering
    // its tests: the exit code alone proves nothing. Every test written must have run and passed.
    let report = std::fs::read_to_string(&tap).expect("the TAP report of node --test");
    let written = written_tests(&dir);
    assert!(written > 0, "no test() in {}", dir.display());
    for (key, want) in [
        ("tests", written),
        ("pass", written),
        ("fail", 0),
        ("cancelled", 0),
        ("skipped", 0),
        ("todo", 0),
    ] {
        assert_eq!(
            tap_count(&report, key),
            Some(want),
            "`# {key}` of the JS suite's TAP summary ({written} tests in tests/js/*.test.mjs)"
        );
    }
}

/// Device rows beside the seeded ones: `(id, organisation, devices."jwtToken")`.
async fn insert_devices(db: &DbTarget, rows: &[(&str, &str, Option<String>)]) {
    use sea_orm::ConnectionTrait;
    let conn = sea_orm::Database::connect(db.url()).await.unwrap();
    for (id, org, jwt) in rows {
        let jwt = jwt
            .as_ref()
            .map_or("NULL".to_string(), |t| format!("'{t}'"));
        conn.execute_unprepared(&format!(
            r#"INSERT INTO devices ("id","organizationId","deviceIdentifier","jwtToken","updatedAt")
               VALUES ('{id}','{org}','mac-{id}',{jwt},CURRENT_TIMESTAMP)"#
        ))
        .await
        .unwrap();
    }
    conn.close().await.unwrap();
}

/// The `test(` calls in `tests/js/*.test.mjs`: every test of the suite is declared on a line of
/// its own that starts with `test(` (inside `describe` blocks), none is generated in a loop.
fn written_tests(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".test.mjs") {
            let src = std::fs::read_to_string(&path).unwrap();
            n += src
                .lines()
                .filter(|l| l.trim_start().starts_with("test("))
                .count();
        }
    }
    n
}

/// `N` from the summary line `# key N` of a TAP report.
fn tap_count(report: &str, key: &str) -> Option<usize> {
    report.lines().find_map(|l| {
        let rest = l.strip_prefix("# ")?.strip_prefix(key)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

#[test]
fn tap_summary_lines_are_read() {
    let report = "TAP version 13\n# Subtest: x\nok 1 - x\n1..1\n# tests 24\n# suites 7\n# pass 23\n# fail 1\n";
    assert_eq!(tap_count(report, "tests"), Some(24));
    assert_eq!(tap_count(report, "pass"), Some(23));
    assert_eq!(tap_count(report, "fail"), Some(1));
    assert_eq!(tap_count(report, "todo"), None);
}
