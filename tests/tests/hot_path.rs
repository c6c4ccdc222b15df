//! Issue 18: the hot path costs what the design says. A heartbeat is one Redis command (the
//! `device_heartbeat.lua` EVALSHA) and nothing else: no per-call health check, no second read.
//!
//! The commands are counted from `MONITOR`, which shows each command a client sent once, and
//! the commands a script ran inside it marked `[… lua]` (skipped here: `INFO commandstats` would
//! count those too). A run with 1,000 heartbeats is compared with an idle run of the same fleet
//! and length, so the periodic work (the adapter's role check, the probes) cancels out; the
//! periodic intervals are lengthened so that little of it falls in either window.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;
use vizora_gateway_tests::*;

const T: Duration = Duration::from_secs(20);
const DEVICES: usize = 50;
const BEATS_EACH: usize = 20;

/// What `MONITOR` has shown so far: client commands, and the runs of the heartbeat script
/// among them.
#[derive(Default, Clone, Copy, Debug)]
struct Counts {
    commands: u64,
    heartbeat_scripts: u64,
}

/// The running counts, and the counts at each marker seen.
type Seen = Arc<Mutex<(Counts, Vec<(String, Counts)>)>>;

/// `redis-cli monitor` on the server, counting client commands until each marker it is asked
/// to wait for (an `ECHO` the test sends, so a count is taken at a known point of the stream).
struct Monitor {
    child: tokio::process::Child,
    seen: Seen,
    marks: u64,
}

impl Monitor {
    /// `script_sha`: the SHA1 the heartbeat script runs under.
    async fn start(redis: &RedisServer, script_sha: String) -> Monitor {
        let mut child = tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "monitor"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-cli (redis-tools) must be installed");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // MONITOR answers OK once it is attached.
        let first = lines.next_line().await.unwrap();
        assert_eq!(first.as_deref(), Some("OK"));
        let seen: Seen = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut g = s.lock().await;
                if line.contains(" lua] ") {
                    continue;
                }
                if let Some(mark) = line.split("\"ECHO\" \"").nth(1) {
                    let mark = mark.trim_end_matches('"').to_string();
                    if mark.starts_with("mark-") {
                        let now = g.0;
                        g.1.push((mark, now));
                        continue;
                    }
                }
                g.0.commands += 1;
                if line.contains(&script_sha) {
                    g.0.heartbeat_scripts += 1;
                }
            }
        });
        Monitor {
            child,
            seen,
            marks: 0,
        }
    }

    /// The counts at this point of the command stream.
    async fn mark(&mut self, redis: &RedisServer) -> Counts {
        self.marks += 1;
        let name = format!("mark-{}", self.marks);
        let _: String = redis.cmd(&["ECHO", &name]).await;
        eventually(T, &format!("MONITOR showing {name}"), || async {
            let g = self.seen.lock().await;
            g.1.iter().find(|(m, _)| *m == name).map(|(_, c)| *c)
        })
        .await
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_costs_one_redis_command() {
    let c = Cluster::start(1, DEVICES, |o| {
        o.env("LEASE_TTL_MS", 120_000)
            .env("PRESENCE_SWEEP_INTERVAL_MS", 60_000)
            .env("PRESENCE_RECONCILE_INTERVAL_MS", 60_000)
            .env("SESSION_SWEEP_INTERVAL_MS", 60_000)
            .env("OFFLINE_NOTIFY_DELAY_MS", 60_000)
    })
    .await;
    let gw = &c.replicas[0];
    let mut screens = Vec::new();
    for i in 0..DEVICES {
        screens.push(ws_device(gw.client(), &load_device(i)).await);
    }
    // Warm-up: the script is loaded and every session has beaten once, so neither window pays
    // a first-time cost.
    for s in &screens {
        let a = s.emit_with_ack("heartbeat", json!({}), T).await.unwrap();
        assert_eq!(a["success"], true, "{a:?}");
    }

    // The production heartbeat script's SHA1, as Redis names it (loading it again is a no-op).
    let sha: String = c
        .redis
        .cmd(&[
            "SCRIPT",
            "LOAD",
            include_str!("../../gateway/src/store/lua/device_heartbeat.lua"),
        ])
        .await;
    let mut mon = Monitor::start(&c.redis, sha).await;
    let start = mon.mark(&c.redis).await;
    let began = tokio::time::Instant::now();
    let beats = futures_util::future::join_all(screens.iter().map(|s| async move {
        for _ in 0..BEATS_EACH {
            let a = s
                .emit_with_ack(
                    "heartbeat",
                    json!({"metrics": {"cpuUsage": 12, "memoryUsage": 40}}),
                    T,
                )
                .await
                .unwrap();
            assert_eq!(a["success"], true, "{a:?}");
        }
    }));
    beats.await;
    // Each window lasts at least a few seconds, so the periodic work is spread alike over both.
    let window = began.elapsed().max(Duration::from_secs(3));
    tokio::time::sleep_until(began + window).await;
    let after_beats = mon.mark(&c.redis).await;
    let idle_began = tokio::time::Instant::now();
    tokio::time::sleep_until(idle_began + window).await;
    let after_idle = mon.mark(&c.redis).await;

    let heartbeats = (DEVICES * BEATS_EACH) as f64;
    let busy = after_beats.commands - start.commands;
    let idle = after_idle.commands - after_beats.commands;
    let per_beat = (busy as f64 - idle as f64) / heartbeats;
    eprintln!(
        "window {window:?}: {busy} commands with {heartbeats} heartbeats, {idle} idle; \
         {per_beat:.3} per heartbeat; {} heartbeat scripts",
        after_beats.heartbeat_scripts - start.heartbeat_scripts
    );
    // Positive control: MONITOR saw the heartbeats' scripts, one each.
    assert_eq!(
        after_beats.heartbeat_scripts - start.heartbeat_scripts,
        DEVICES as u64 * BEATS_EACH as u64,
        "every heartbeat runs device_heartbeat.lua once"
    );
    assert!(
        per_beat <= 1.01,
        "{per_beat:.3} Redis commands per heartbeat (busy {busy}, idle {idle})"
    );
}
