//! Readiness as a Kubernetes Service reads it (contract §7, issue 15): it answers within a second
//! whatever the dependencies do, stays 200 through a database outage and a Redis outage (the
//! replica keeps serving its screens; emptying the Service would gain nothing), and turns 503
//! for a drain. The outages themselves show in the deep health and in
//! `vizora_gateway_dependency_up`, which is what each test waits for: the positive control that
//! the outage was real and lasted past the gateway's own probes while readiness was sampled.
//!
//! Also `INTERNAL_PORT`: the operator routes move to their own port and the public one answers
//! them 404.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::metrics_text;
use serde_json::json;
use tokio::time::Instant;
use vizora_gateway_tests::proxy::PausableProxy;
use vizora_gateway_tests::*;

const T: Duration = Duration::from_secs(30);
/// How often readiness is probed, as a kubelet with `periodSeconds` below one would.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// What every readiness answer must beat.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// At least this much probing inside each outage (the 5 s).
const MIN_PROBING: Duration = Duration::from_secs(5);

/// One readiness probe: its status and how long the answer took (the client gives up at 5 s,
/// so a hung route is measured, not waited out).
async fn probe(http: &reqwest::Client, url: &str) -> (u16, Duration) {
    let t = Instant::now();
    let status = match http.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    };
    (status, t.elapsed())
}

/// Probes readiness every [`PROBE_EVERY`] in the background until stopped; returns every answer.
struct Prober {
    answers: Arc<Mutex<Vec<(u16, Duration)>>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    fn start(gw: &Gateway) -> Prober {
        let url = format!("{}/api/health/ready", gw.api_url());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let (answers, stop) = (answers.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PROBE_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    let a = probe(&http, &url).await;
                    answers.lock().unwrap().push(a);
                }
            })
        };
        Prober {
            answers,
            stop,
            task,
        }
    }

    async fn finish(self) -> Vec<(u16, Duration)> {
        self.stop.cancel();
        self.task.await.unwrap();
        self.answers.lock().unwrap().clone()
    }
}

/// `vizora_gateway_dependency_up{dependency="<name>"}` on this replica.
async fn dependency_up(gw: &Gateway, name: &str) -> Option<f64> {
    let label = format!("dependency=\"{name}\"");
    metrics_text(gw)
        .await
        .lines()
        .find(|l| l.starts_with("vizora_gateway_dependency_up{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn wait_dependency(gw: &Gateway, name: &str, want: f64) {
    eventually(T, &format!("dependency_up {name} = {want}"), || async {
        (dependency_up(gw, name).await == Some(want)).then_some(())
    })
    .await;
}

/// Every answer was 200 and came within [`ANSWER_WITHIN`], and there were enough of them.
fn assert_ready_throughout(answers: &[(u16, Duration)], what: &str) {
    let wanted = (MIN_PROBING.as_millis() / PROBE_EVERY.as_millis()) as usize;
    assert!(
        answers.len() >= wanted,
        "{what}: only {} probes answered (want {wanted})",
        answers.len()
    );
    for (i, (status, took)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{what}: probe {i} of {answers:?}");
        assert!(
            *took < ANSWER_WITHIN,
            "{what}: probe {i} took {took:?}: {answers:?}"
        );
    }
}

/// Waits until readiness says 503 `draining`, every answer on the way within a second.
async fn wait_draining(gw: &Gateway) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("{}/api/health/ready", gw.api_url());
    eventually(T, "readiness 503 draining", || async {
        let t = Instant::now();
        let r = http.get(&url).send().await.ok()?;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert!(t.elapsed() < ANSWER_WITHIN, "a slow readiness answer");
        (status == 503 && body.contains("draining")).then_some(())
    })
    .await;
}

/// Starts the outage with `freeze` while readiness is probed, and holds it until the gateway's
/// own probe saw `dependency` gone (the control that the outage was real), the screen was served
/// through it and the deep health reported it, and at least [`MIN_PROBING`] passed; then checks
/// every readiness answer.
async fn ready_through_outage(
    gw: &Gateway,
    screen: &vizora_sioclient::Client,
    dependency: &str,
    freeze: impl FnOnce(),
) {
    assert_eq!(dependency_up(gw, dependency).await, Some(1.0));
    let prober = Prober::start(gw);
    let outage = Instant::now();
    freeze();
    wait_dependency(gw, dependency, 0.0).await;
    assert_heartbeat_acked(screen, Duration::from_secs(10)).await;
    let (st, health) = gw.api().get("/api/health").await;
    assert_eq!(st, 200, "the deep health always answers 200");
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(
        health["dependencies"][dependency]["status"], "unhealthy",
        "{health}"
    );
    assert_eq!(gw.api().get("/api/health/live").await.0, 200);
    if let Some(rest) = MIN_PROBING.checked_sub(outage.elapsed()) {
        tokio::time::sleep(rest).await; // the window is the 5 s, not an event
    }
    let answers = prober.finish().await;
    assert_ready_throughout(&answers, &format!("{dependency} outage"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_holds_through_a_database_outage_and_drops_for_a_drain() {
    let (db, _pg, _dir) = gateway::seeded_db("postgres", 0).await;
    let DbTarget::Postgres(url) = &db else {
        unreachable!()
    };
    // The replica reaches PostgreSQL through a proxy the test freezes: the worst case for a
    // probe that asks the database.
    let proxy = PausableProxy::start("127.0.0.1:5432").await;
    let via_proxy = url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1);
    let redis = RedisServer::start().await;
    let gw = Gateway::start(
        GatewayOptions::new(DbTarget::Postgres(via_proxy))
            .redis(&redis.url())
            .env("DRAIN_SECONDS", 20),
    )
    .await;
    let screen = ws_device(gw.client(), DEV_A1).await;

    // Packets stop, nothing is refused: every query hangs.
    ready_through_outage(&gw, &screen, "database", || proxy.pause()).await;
    proxy.resume();
    wait_dependency(&gw, "database", 1.0).await;

    // The same probe leaves the Service for a drain.
    gw.sigterm();
    wait_draining(&gw).await;
    drop(screen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_holds_through_a_redis_outage() {
    let redis = RedisServer::start().await;
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).redis(&redis.url())).await;
    let screen = ws_device(gw.client(), DEV_A1).await;

    // SIGSTOP: Redis holds its connections and answers nothing, as a stalled server does.
    ready_through_outage(&gw, &screen, "redis", || redis.pause()).await;
    let (_, health) = gw.api().get("/api/health").await;
    assert_eq!(health["dependencies"]["database"]["status"], "healthy");
    redis.resume();
    wait_dependency(&gw, "redis", 1.0).await;
    drop(screen);
}

/// With `INTERNAL_PORT`, the operator routes answer there only: the public port (what the
/// ingress reaches) answers them 404 like unknown routes and still serves screens; the internal
/// port serves no Socket.IO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_port_takes_the_operator_routes_off_the_public_port() {
    let (db, _pg, _dir) = gateway::seeded_db("sqlite", 0).await;
    let gw = Gateway::start(GatewayOptions::new(db).internal_port()).await;
    let internal = gw.api();
    let public = vizora_gateway_tests::api::Api::new(&gw.url());
    let presence = format!("/api/internal/devices/{DEV_A1}/presence");
    let gets = [
        "/metrics",
        "/api/internal/metrics",
        "/api/health",
        "/api/health/live",
        "/api/health/ready",
        "/api/status",
        presence.as_str(),
    ];
    let key = [("x-internal-api-key", INTERNAL_KEY)];
    for path in gets {
        let (st, body) = internal.get_text(path, &key).await;
        assert_eq!(st, 200, "internal {path}: {body}");
        let (st, body) = public.get_text(path, &key).await;
        assert_eq!(st, 404, "public {path}: {body}");
    }
    let screen = ws_device(gw.client(), DEV_A1).await;
    let posts = [
        (
            "/api/internal/command",
            json!({"deviceId": DEV_A1, "command": "reload"}),
        ),
        (
            "/api/push/content",
            json!({"deviceId": DEV_A1, "content": {"id": "c1"}}),
        ),
        (
            "/api/commands/broadcast",
            json!({"deviceIds": [DEV_A1], "command": "reload"}),
        ),
        (
            "/api/notifications/broadcast",
            json!({"organizationId": ORG_A, "notification": {"title": "t"}}),
        ),
    ];
    for (path, body) in &posts {
        let (st, b) = public.post(path, body.clone()).await;
        assert_eq!(st, 404, "public {path}: {b}");
    }
    // Nothing sent through the public port reached the screen; the internal port delivers.
    let (st, b) = internal.post(posts[0].0, posts[0].1.clone()).await;
    assert_eq!(st, 201, "{b}");
    let got = screen.wait_for("command", T).await.unwrap();
    assert_eq!(
        got["id"], b["commandId"],
        "the first command is the internal one"
    );
    let (st, _) = internal
        .get_text("/socket.io/?EIO=4&transport=polling", &[])
        .await;
    assert_eq!(st, 404, "no Socket.IO on the internal port");
}
