//! The command line as an operator meets it: configuration errors, token minting, the demo.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use vizora_gateway_tests::gateway::gateway_bin;
use vizora_gateway_tests::*;

fn cmd() -> Command {
    let mut c = Command::new(gateway_bin());
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn serve_refuses_bad_configuration_with_one_line_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = cmd()
        .current_dir(dir.path())
        .arg("serve")
        .env("JWT_SECRET", "too-short")
        .env("PORT", "not-a-port")
        .env("REDIS_URL", "http://nope")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "configuration errors exit 64");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("config error:"))
        .collect();
    for var in [
        "DEVICE_JWT_SECRET",
        "JWT_SECRET",
        "INTERNAL_API_SECRET",
        "PORT",
        "REDIS_URL",
    ] {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains(&format!(" {var}:")))
                .count(),
            1,
            "one line for {var}:\n{err}"
        );
    }
    assert!(
        !dir.path().join("vizora-gateway.sqlite").exists(),
        "nothing was created"
    );
}

#[tokio::test]
async fn token_command_mints_tokens_the_gateway_accepts() {
    let out = cmd()
        .args([
            "token",
            "device",
            "--device-id",
            DEV_A1,
            "--org",
            ORG_A,
            "--ttl",
            "10m",
        ])
        .env("DEVICE_JWT_SECRET", DEVICE_SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let verifier = vizora_gateway::auth::TokenVerifier::new(DEVICE_SECRET, USER_SECRET);
    match verifier.verify(&token).unwrap() {
        vizora_gateway::auth::Principal::Device(d) => {
            assert_eq!(d.device_id, DEV_A1);
            assert_eq!(d.organization_id, ORG_A);
        }
        other => panic!("expected a device principal, got {other:?}"),
    }
    let out = cmd()
        .args(["token", "user", "--user-id", "u1", "--org", ORG_A])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "no JWT_SECRET: refused");
}

#[tokio::test]
async fn demo_shows_the_whole_loop() {
    // A fresh directory per attempt: an attempt that lost its port leaves a seeded demo behind.
    let mut dirs = Vec::new();
    let (bound, mut child) = ports::start_on_free_ports(1, "vizora-gateway demo", |p| {
        let dir = tempfile::tempdir().unwrap();
        let child = cmd()
            .current_dir(dir.path())
            .args(["demo", "--screens", "2"])
            .env("PORT", p[0].to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        dirs.push(dir);
        child
    })
    .await;
    let port = bound[0];
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    // The printed curl commands carry the generated internal key.
    let key = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(rest) = line.split("x-internal-api-key: ").nth(1) {
                return rest.split('\'').next().unwrap().to_string();
            }
        }
        panic!("the demo printed no curl command");
    })
    .await
    .expect("the demo starts within 30 s");
    let log = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            let done = line.contains("screenshot uploaded");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually(
        Duration::from_secs(20),
        "both simulated screens online",
        || {
            let (http, base, key) = (http.clone(), base.clone(), key.clone());
            async move {
                for i in 1..=2 {
                    let r = http
                        .get(format!(
                            "{base}/api/internal/devices/demo-screen-{i}/presence"
                        ))
                        .header("x-internal-api-key", &key)
                        .send()
                        .await
                        .ok()?;
                    let v: serde_json::Value = r.json().await.ok()?;
                    if v["online"] != true {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let r = http
        .post(format!("{base}/api/internal/command"))
        .header("x-internal-api-key", &key)
        .json(&serde_json::json!({"deviceId": "demo-screen-2", "command": "screenshot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let lines = tokio::time::timeout(Duration::from_secs(20), log)
        .await
        .expect("a screenshot within 20 s")
        .unwrap();
    let uploaded = lines
        .iter()
        .find(|l| l.contains("screenshot uploaded"))
        .unwrap();
    let url = uploaded
        .rsplit(' ')
        .next()
        .unwrap()
        .replace("localhost", "127.0.0.1");
    let img = http.get(url).send().await.unwrap();
    assert_eq!(img.status().as_u16(), 200);
    assert!(img.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let _ = child.kill().await;
}

/// Runs `vizora-gateway healthcheck` with `args` and `PORT` (if any); returns (exit code, stderr).
async fn healthcheck(port: Option<u16>, args: &[&str]) -> (Option<i32>, String) {
    let mut c = cmd();
    c.arg("healthcheck").args(args);
    if let Some(p) = port {
        c.env("PORT", p.to_string());
    }
    let out = c.output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn healthcheck_passes_on_a_ready_gateway_and_fails_otherwise() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let mut gw = Gateway::start(GatewayOptions::new(db)).await;
    // Default target: the readiness route on $PORT.
    let (code, err) = healthcheck(Some(gw.port), &[]).await;
    assert_eq!(code, Some(0), "ready gateway: {err}");
    let live = format!("{}/api/health/live", gw.url());
    assert_eq!(healthcheck(None, &["--url", &live]).await.0, Some(0));
    // A route that is not 200 fails the probe.
    let missing = format!("{}/api/health/nope", gw.url());
    let (code, err) = healthcheck(None, &["--url", &missing]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("status 404"), "{err}");
    // Nothing listening any more.
    let port = gw.port;
    gw.terminate().await;
    let (code, err) = healthcheck(Some(port), &[]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test]
async fn healthcheck_fails_on_503_garbage_silence_and_bad_urls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A peer answering with a fixed reply, or holding the connection silent when `reply` is None.
    async fn peer(reply: Option<&'static [u8]>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                match reply {
                    Some(r) => {
                        let _ = s.write_all(r).await;
                    }
                    None => {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            drop(s)
                        });
                    }
                }
            }
        });
        port
    }
    let draining = peer(Some(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    ))
    .await;
    let (code, err) = healthcheck(Some(draining), &[]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("status 503"), "{err}");
    let garbage = peer(Some(b"SSH-2.0-OpenSSH_9\r\n")).await;
    let (code, err) = healthcheck(Some(garbage), &[]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("not an HTTP response"), "{err}");
    let silent = peer(None).await;
    let (code, err) = healthcheck(Some(silent), &["--timeout", "1s"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("no answer within"), "{err}");
    let (code, err) = healthcheck(None, &["--url", "https://127.0.0.1:1/"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("not an http:// URL"), "{err}");
}

#[tokio::test]
async fn pause_for_the_prestop_hook_exits_zero_and_refuses_garbage() {
    let out = cmd()
        .args(["pause", "--seconds", "0"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let out = cmd()
        .args(["pause", "--seconds", "soon"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

/// `check-config` reports a Redis Cluster mixed with another Redis mode, and a cluster-only
/// setting without the cluster, one line each (issue 19).
#[tokio::test]
async fn check_config_reports_a_redis_cluster_mixed_with_another_mode() {
    /// `check-config` with the three secrets and `vars`: its exit code and standard error.
    async fn check_config(vars: &[(&str, &str)]) -> (Option<i32>, String) {
        let secret = "0123456789abcdef0123456789abcdef";
        let mut c = cmd();
        c.arg("check-config")
            .env("DEVICE_JWT_SECRET", secret)
            .env("JWT_SECRET", secret)
            .env("INTERNAL_API_SECRET", secret)
            .envs(vars.iter().copied());
        let out = c.output().await.unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    for (other, value) in [
        ("REDIS_URL", "redis://127.0.0.1:6379/"),
        ("REDIS_SENTINELS", "127.0.0.1:26379"),
    ] {
        let (code, err) = check_config(&[
            ("REDIS_CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001"),
            ("REDIS_SENTINEL_MASTER", "primary"),
            (other, value),
        ])
        .await;
        assert_eq!(code, Some(64));
        assert!(
            err.lines().any(|l| l.contains("set only one of")
                && l.contains("REDIS_CLUSTER_NODES")
                && l.contains(other)),
            "{err}"
        );
    }
    let (code, err) = check_config(&[
        ("REDIS_URL", "redis://127.0.0.1:6379/"),
        ("REDIS_CLUSTER_TLS", "true"),
    ])
    .await;
    assert_eq!(code, Some(64));
    assert!(
        err.contains("REDIS_CLUSTER_TLS: is only used with REDIS_CLUSTER_NODES"),
        "{err}"
    );
}
