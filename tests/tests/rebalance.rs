//! Issue 17, rebalancing: a replica whose device sockets exceed the mean of the ready replicas by
//! more than `REBALANCE_TOLERANCE` closes transports (handing their leases over, never a
//! Socket.IO disconnect) at most `REBALANCE_MAX_PER_S` a second until it is back near the mean,
//! and answers handshakes 503 `server_busy` meanwhile, so the screens land elsewhere.
//!
//! Real processes: replicas on one `redis-server` and PostgreSQL, behind a round-robin TCP
//! balancer that follows readiness (`balancer.rs`; a replica joins it as a pod joins a Service),
//! and screens that reconnect by themselves through it (`player.rs`). The shipped defaults of
//! the rebalancing knobs. The fleet is 300 screens, not the 600: enough to prove the rule
//! (the tolerance is 10 % of a mean of 100), and light enough beside the other tests on a 2-core
//! machine. Each test has a positive control; they run one at a time (`SERIAL`).
//!
//! With `REBALANCE=off` passed on through `VIZORA_TEST_REBALANCE`, tests 1, 2 (its control) and
//! 3 (its control) fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use vizora_gateway_tests::balancer::{Backend, Balancer};
use vizora_gateway_tests::player::{Player, executed_exactly_once};
use vizora_gateway_tests::*;
use vizora_sioclient::CloseReason;

use crate::common::metric;

/// Timed against the shipped rates, on a machine shared with other tests: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Screens in tests 1, 3 and 4.
const N: usize = 300;
/// The shipped `REBALANCE_MAX_PER_S`.
const MAX_PER_S: f64 = 20.0;
const T: Duration = Duration::from_secs(30);

/// Rebalancing on, as shipped (the harness turns it off for the other tests); or
/// `VIZORA_TEST_REBALANCE` passed on as `REBALANCE` (`off`: a gateway that never sheds must fail
/// these tests).
fn knobs(o: GatewayOptions) -> GatewayOptions {
    let v = std::env::var("VIZORA_TEST_REBALANCE").unwrap_or_else(|_| "on".into());
    o.env("REBALANCE", v)
}

async fn devices_on(gw: &Gateway) -> usize {
    metric(gw, "vizora_gateway_sockets{", "principal=\"device\"").await as usize
}

async fn split(c: &Cluster) -> Vec<usize> {
    let mut out = Vec::new();
    for r in &c.replicas {
        out.push(devices_on(r).await);
    }
    out
}

async fn closed(gw: &Gateway) -> f64 {
    metric(gw, "vizora_gateway_rebalance_closed_total", "").await
}

async fn total_closed(c: &Cluster) -> f64 {
    let mut n = 0.0;
    for r in &c.replicas {
        n += closed(r).await;
    }
    n
}

async fn shedding(c: &Cluster) -> bool {
    for r in &c.replicas {
        if metric(r, "vizora_gateway_rebalancing{", "").await > 0.0 {
            return true;
        }
    }
    false
}

async fn ratio(gw: &Gateway) -> f64 {
    metric(gw, "vizora_gateway_rebalance_load_ratio{", "").await
}

/// A replica joining the cluster as `id`.
async fn join(c: &mut Cluster, id: &str, tweak: impl Fn(GatewayOptions) -> GatewayOptions) {
    let o = GatewayOptions::new(c.db.clone())
        .replica(id)
        .redis(&c.redis.url());
    c.replicas.push(Gateway::start(tweak(knobs(o))).await);
}

/// `n` screens from `from` on, each connecting first through `first` and reconnecting through
/// the balancer; waits until the replicas count `from + n` screens (every screen so far).
async fn screens(
    c: &Cluster,
    lb: &Balancer,
    from: usize,
    n: usize,
    first: impl Fn() -> vizora_sioclient::ClientOptions,
) -> Vec<Player> {
    let mut handles = Vec::new();
    for i in from..from + n {
        let (first, again) = (first(), lb.client());
        handles.push(tokio::spawn(async move {
            Player::device(&load_device(i), first, again).await
        }));
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    eventually(T, "every screen counted", || async {
        (split(c).await.iter().sum::<usize>() == from + n).then_some(())
    })
    .await;
    out
}

/// Screens that have been closed at least once.
fn moved(players: &[Player]) -> usize {
    players.iter().filter(|p| !p.closes().is_empty()).count()
}

fn closes(players: &[Player]) -> usize {
    players.iter().map(|p| p.closes().len()).sum()
}

/// Every screen is connected and its device's lease names its socket, confirmed.
async fn all_connected(c: &Cluster, players: &[Player]) {
    for (i, p) in players.iter().enumerate() {
        let dev = load_device(i);
        eventually(
            T,
            &format!("{dev} connected and holding its lease"),
            || async {
                let sid = p.sid()?;
                let l: Value = c.lease(&dev).await?;
                (l["sid"] == sid.as_str() && l.get("pending").is_none_or(|v| v != true))
                    .then_some(())
            },
        )
        .await;
    }
}

fn within(count: usize, mean: f64, share: f64) -> bool {
    (count as f64 - mean).abs() <= mean * share
}

/// Two replicas holding `N` screens half and half through the balancer, a dashboard watching.
async fn two_replicas_full(
    tweak: impl Fn(GatewayOptions) -> GatewayOptions + Copy,
) -> (Cluster, Balancer, Player, Vec<Player>) {
    let c = Cluster::start(2, N, |o| tweak(knobs(o))).await;
    let lb = Balancer::start(vec![
        Backend::of(&c.replicas[0]),
        Backend::of(&c.replicas[1]),
    ])
    .await;
    let watcher = Player::dashboard(c.replicas[0].client(), c.replicas[0].client()).await;
    let players = screens(&c, &lb, 0, N, || lb.client()).await;
    let s = split(&c).await;
    eprintln!("before the join: {s:?}");
    assert!(
        s.iter().all(|n| within(*n, N as f64 / 2.0, 0.05)),
        "round-robin split {s:?}"
    );
    (c, lb, watcher, players)
}

/// Acceptance 1: `N` screens on two replicas, a third joins the balancer. Within 100 s each
/// replica holds N/3 ± 20 % and rebalancing has stopped; in the next 20 s fewer than 3 % of the
/// screens move; at most two transport closes per screen moved; no offline event, no Socket.IO
/// server disconnect, every screen connected at the end, and each command sent while screens
/// moved executed exactly once. The control: screens did move (this is what test 4 lacks).
#[tokio::test]
#[ignore = "run alone by scripts/test (its screens would load the machine under the other tests)"]
async fn a_replica_joining_gets_its_share_of_the_screens_and_nobody_notices() {
    let _serial = SERIAL.lock().await;
    let (mut c, lb, watcher, players) = two_replicas_full(|o| o).await;
    assert_eq!(closes(&players), 0);

    join(&mut c, "r2", |o| o).await;
    lb.add(Backend::of(&c.replicas[2])).await;
    let joined = Instant::now();
    // Commands for the screens connected first (shed first: oldest first), while they move.
    let mut commands = Vec::new();
    for i in 0..10 {
        let (api, dev) = (c.replicas[2].api(), load_device(i));
        let at = joined + Duration::from_millis(400 * i as u64);
        commands.push((
            i,
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let (st, body) = api.command(&dev, "reload", None).await;
                assert_eq!(st, 201, "{body}");
                body["commandId"].as_str().unwrap().to_string()
            }),
        ));
    }

    let mean = N as f64 / 3.0;
    eventually(
        Duration::from_secs(100),
        "each replica within N/3 ± 20 %, not shedding",
        || async {
            let s = split(&c).await;
            (s.iter().sum::<usize>() == N
                && s.iter().all(|n| within(*n, mean, 0.2))
                && !shedding(&c).await)
                .then_some(())
        },
    )
    .await;
    let balanced = joined.elapsed();
    let moved_then = moved(&players);
    eprintln!(
        "balanced {balanced:?} after the join: {:?}, {moved_then} screens moved, {} closes",
        split(&c).await,
        closes(&players)
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let late = moved(&players) - moved_then;
    eprintln!(
        "in the next 20 s: {late} more screens moved; {:?}",
        split(&c).await
    );
    if let Some(p) = players.iter().max_by_key(|p| p.gaps().into_iter().max()) {
        eprintln!(
            "slowest reconnect: {:?}, refusals {:?}",
            p.gaps(),
            p.refusals()
        );
    }
    assert!(
        (late as f64) < N as f64 * 0.03,
        "{late} screens moved after the cluster was balanced"
    );

    // The positive control: screens moved, about the excess (2 × (N/2 − N/3 × 1.05)).
    let moved_all = moved(&players);
    assert!(
        moved_all as f64 >= N as f64 / 3.0 * 0.8,
        "{moved_all} moved"
    );
    assert_eq!(total_closed(&c).await as usize, closes(&players));
    for (i, p) in players.iter().enumerate() {
        let closes = p.closes();
        assert!(closes.len() <= 2, "{}: {closes:?}", load_device(i));
        assert!(
            closes.iter().all(|r| *r == CloseReason::TransportClose),
            "{}: {closes:?}",
            load_device(i)
        );
    }
    all_connected(&c, &players).await;
    assert!(watcher.closes().is_empty(), "{:?}", watcher.closes());
    let offline = offline_events(&watcher.events());
    let why: Vec<String> = offline
        .iter()
        .filter_map(|d| d.strip_prefix("load-")?.parse::<usize>().ok())
        .filter_map(|i| players.get(i))
        .map(|p| {
            format!(
                "closes {:?}, reconnected after {:?}, refusals {:?}",
                p.closes(),
                p.gaps(),
                p.refusals()
            )
        })
        .collect();
    assert!(offline.is_empty(), "offline events: {offline:?} ({why:?})");
    assert_eq!(c.all_notifications("device_offline").await, 0);
    assert_eq!(c.all_notifications("device_online").await, 0);
    let mut moving = 0;
    for (i, h) in commands {
        let id = h.await.unwrap();
        moving += usize::from(!players[i].closes().is_empty());
        executed_exactly_once(&players[i], &id, &c.replicas[0], &load_device(i)).await;
    }
    eprintln!("{moving} of the 10 commanded screens moved");
    assert!(moving > 0, "no command was sent to a screen that moved");
    // Every refusal the screens met was the transient 503 `server_busy` (the others are
    // connections the balancer closed while it had no ready backend to offer).
    for (i, p) in players.iter().enumerate() {
        assert!(
            p.refusals()
                .iter()
                .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                .all(|r| r.starts_with("503") && r.contains("server_busy")),
            "{}: {:?}",
            load_device(i),
            p.refusals()
        );
    }
}

/// Acceptance 2: a balanced cluster left alone for a minute closes nothing and refuses nothing.
/// The control, in the same run: screens piled onto one replica are then shed from it.
#[tokio::test]
#[ignore = "run alone by scripts/test (its screens would load the machine under the other tests)"]
async fn a_balanced_cluster_left_alone_for_a_minute_closes_nothing() {
    let _serial = SERIAL.lock().await;
    let per = 30;
    let extra = 40;
    let c = Cluster::start(3, 3 * per + extra, knobs).await;
    let lb = Balancer::start(c.replicas.iter().map(Backend::of).collect()).await;
    let players = screens(&c, &lb, 0, 3 * per, || lb.client()).await;
    let s = split(&c).await;
    assert!(s.iter().all(|n| *n == per), "round-robin split {s:?}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    for r in &c.replicas {
        assert_eq!(
            closed(r).await,
            0.0,
            "{} closed transports",
            r.opts.replica_id
        );
        let ratio = ratio(r).await;
        // The load view works: each replica knows it holds the mean.
        assert!((ratio - 1.0).abs() < 0.01, "load ratio {ratio}");
    }
    assert_eq!(closes(&players), 0);
    assert!(players.iter().all(|p| p.refusals().is_empty()));
    assert_eq!(split(&c).await, s);

    // The control: `extra` more screens straight onto r0 (70 of 130: mean 43.3, high 47.7).
    let r0 = c.replicas[0].client();
    let piled = screens(&c, &lb, 3 * per, extra, || r0.clone()).await;
    eventually(T, "r0 shed down to the low mark (46)", || async {
        let s = split(&c).await;
        (s[0] <= 46 && s.iter().sum::<usize>() == 3 * per + extra && !shedding(&c).await)
            .then_some(())
    })
    .await;
    eprintln!("after piling onto r0: {:?}", split(&c).await);
    assert!(closed(&c.replicas[0]).await >= 24.0);
    assert_eq!(
        moved(&players) + moved(&piled),
        closes(&players) + closes(&piled)
    );
}

/// Acceptance 3: a replica killed, then started again. The others absorb its screens with no
/// storm: nothing is shed while they do (the dead replica's last record still counts for a
/// moment, and a replica sheds only after being above the mark for as long). Then the restarted
/// replica gets its share back, each replica shedding within `REBALANCE_MAX_PER_S`.
#[tokio::test]
#[ignore = "run alone by scripts/test (its screens would load the machine under the other tests)"]
async fn a_replica_killed_or_restarted_causes_no_storm() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, N, knobs).await;
    let lb = Balancer::start(c.replicas.iter().map(Backend::of).collect()).await;
    let players = screens(&c, &lb, 0, N, || lb.client()).await;
    assert!(
        split(&c)
            .await
            .iter()
            .all(|n| within(*n, N as f64 / 3.0, 0.05))
    );

    c.replicas[2].kill9();
    let killed = Instant::now();
    let survivors = |s: &[usize]| s[0] + s[1];
    eventually(T, "the survivors hold every screen", || async {
        let s = vec![
            devices_on(&c.replicas[0]).await,
            devices_on(&c.replicas[1]).await,
        ];
        (survivors(&s) == N).then_some(())
    })
    .await;
    eprintln!("absorbed {:?} after the kill", killed.elapsed());
    // Past the hold-down (the dead replica's record is stale by then): no storm. The survivors
    // may still even out between themselves (round-robin reconnects can leave one above the
    // tolerance), but only at the shipped rate: the acceptance is "shedding afterwards stays
    // within REBALANCE_MAX_PER_S", not "nothing moves".
    tokio::time::sleep(Duration::from_secs(8)).await;
    let since_kill = killed.elapsed().as_secs_f64();
    for r in &c.replicas[..2] {
        let shed = closed(r).await;
        assert!(
            shed <= MAX_PER_S * since_kill + 2.0,
            "{} shed {shed} in the {since_kill:.1} s after the kill",
            r.opts.replica_id
        );
    }
    let moved_by_kill = moved(&players);
    assert!(
        moved_by_kill as f64 >= N as f64 / 3.0 * 0.9,
        "{moved_by_kill}"
    );

    // Restarted: the survivors shed into it, each at most MAX_PER_S closes a second.
    c.replicas[2].restart().await;
    let restarted = Instant::now();
    let mut samples: Vec<Vec<(Instant, f64)>> = vec![Vec::new(); 2];
    let mean = N as f64 / 3.0;
    loop {
        for (k, s) in samples.iter_mut().enumerate() {
            s.push((Instant::now(), closed(&c.replicas[k]).await));
        }
        let s = split(&c).await;
        if s.iter().sum::<usize>() == N
            && s.iter().all(|n| within(*n, mean, 0.2))
            && !shedding(&c).await
        {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(100), "{s:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "rebalanced {:?} after the restart: {:?}",
        restarted.elapsed(),
        split(&c).await
    );
    let mut shed = 0.0;
    for s in &samples {
        shed += s.last().unwrap().1;
        for (i, (ti, ni)) in s.iter().enumerate() {
            for (tj, nj) in &s[i + 1..] {
                let d = tj.duration_since(*ti).as_secs_f64();
                if d >= 1.0 {
                    assert!(
                        nj - ni <= MAX_PER_S * d + 2.0,
                        "{} closes in {d:.2} s",
                        nj - ni
                    );
                }
            }
        }
    }
    assert!(
        shed >= mean * 0.8,
        "the restarted replica got {shed} screens"
    );
    all_connected(&c, &players).await;
    for p in &players {
        assert!(p.closes().iter().all(|r| *r == CloseReason::TransportClose));
    }
}

/// Acceptance 4: `REBALANCE=off`, from the imbalance of test 1, closes nothing in 60 s. The
/// control: the replicas saw the imbalance (load ratio 1.5 on the full ones).
#[tokio::test]
#[ignore = "run alone by scripts/test (its screens would load the machine under the other tests)"]
async fn with_rebalancing_off_the_same_imbalance_closes_nothing() {
    let _serial = SERIAL.lock().await;
    let off = |o: GatewayOptions| o.env("REBALANCE", "off");
    let (mut c, lb, watcher, players) = two_replicas_full(off).await;
    join(&mut c, "r2", off).await;
    lb.add(Backend::of(&c.replicas[2])).await;
    eventually(T, "the imbalance seen", || async {
        (ratio(&c.replicas[0]).await > 1.4 && ratio(&c.replicas[1]).await > 1.4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(total_closed(&c).await, 0.0);
    assert_eq!(closes(&players), 0);
    let s = split(&c).await;
    assert_eq!(s[2], 0, "{s:?}");
    assert!(ratio(&c.replicas[0]).await > 1.4);
    assert!(watcher.closes().is_empty());
}
