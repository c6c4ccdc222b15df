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
