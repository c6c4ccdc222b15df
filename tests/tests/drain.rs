//! Graceful drain on SIGTERM: readiness 503, new handshakes 503 `draining`, live sockets'
//! transports closed (never a Socket.IO disconnect) in batches spread over the drain window while
//! the process keeps serving, long-polling sessions closed by the server at the end, screens
//! reconnect elsewhere and are never reported offline, the process exits on its own.
//!
//! "While the process keeps serving" is what separates a drain from an exit: a dying process also
//! closes every transport without a Socket.IO disconnect. So the test probes the draining replica
//! over HTTP all along and stamps every close it observes with the number of answers received so
//! far. Closes spread over several batches carry several different stamps, and an answer after
//! the last close proves the process was alive when it happened. No millisecond thresholds: only
//! the order of closes and answers is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use crate::common::{metric_sum, metrics_text};
use serde_json::json;
use vizora_gateway_tests::*;
use vizora_sioclient::{Client, ClientOptions, CloseReason, ConnectError, Transport, connect};

const T: Duration = Duration::from_secs(15);
/// Long enough for the whole drain window.
const DRAIN_T: Duration = Duration::from_secs(40);
const WEBSOCKETS: usize = 20;
const POLLING: usize = 2;

async fn device(opts: ClientOptions, dev: &str, t: Transport) -> Result<Client, ConnectError> {
    connect(
        opts.transport(t)
            .auth(json!({"token": device_token(dev, ORG_A)})),
    )
    .await
}

/// One close seen by the test: its place among all closes seen, and how many answers the
/// draining replica had given by then.
#[derive(Clone, Copy, Debug)]
struct Seen {
    seq: usize,
    answers: usize,
}

/// The order of observations shared by the prober and the watchers.
#[derive(Default)]
struct Clock {
    closes: AtomicUsize,
    answers: AtomicUsize,
}

impl Clock {
    fn close(&self) -> Seen {
        Seen {
            seq: self.closes.fetch_add(1, SeqCst),
            answers: self.answers.load(SeqCst),
        }
    }
}

/// How a raw long-polling session ended.
#[derive(Debug, PartialEq)]
enum PollEnd {
    /// The server sent the Engine.IO close packet `1`: it closed the session itself.
    ClosePacket,
    /// The server answered a poll with an HTTP error (the session it closed is unknown to it
    /// when the close packet found no poll waiting): the session was ended by a live server.
    Refused(u16),
    /// A Socket.IO DISCONNECT (`41`): would stop the player retrying.
    SioDisconnect,
    /// The request failed: the connection died under it (e.g. the process exited).
    Failed(String),
}

/// A device on Engine.IO long-polling, spoken by hand so that how the session ends is visible
/// (an Engine.IO close packet from a live server, or a dead connection). Every request opens a
/// new TCP connection: the session is tied to no connection the drain could kill, so only the
/// drain's final `io.close()` can end it.
struct Poller {
    http: reqwest::Client,
    url: String,
}

impl Poller {
    async fn connect(base: &str, dev: &str) -> Poller {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let open = http
            .get(format!("{base}/socket.io/?EIO=4&transport=polling"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let hs: serde_json::Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        let url = format!(
            "{base}/socket.io/?EIO=4&transport=polling&sid={}",
            hs["sid"].as_str().unwrap()
        );
        let p = Poller { http, url };
        p.post(&format!("40{}", json!({"token": device_token(dev, ORG_A)})))
            .await;
        // Polls (answering pings) until the CONNECT is answered.
        loop {
            let packets = p.poll().await.unwrap();
            for pk in &packets {
                match pk.as_str() {
                    "2" => p.post("3").await,
                    pk if pk.starts_with("40{") => return p,
                    pk if pk.starts_with("44") || pk == "1" => {
                        panic!("{dev}: the CONNECT is refused: {packets:?}")
                    }
                    _ => {}
                }
            }
        }
    }

    async fn post(&self, body: &str) {
        let r = self
            .http
            .post(&self.url)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "POST {body}: {}", r.status());
    }

    async fn poll(&self) -> Result<Vec<String>, PollEnd> {
        let r = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| PollEnd::Failed(format!("{e:?}")))?;
        if !r.status().is_success() {
            return Err(PollEnd::Refused(r.status().as_u16()));
        }
        let text = r
            .text()
            .await
            .map_err(|e| PollEnd::Failed(format!("{e:?}")))?;
        Ok(text.split('\x1e').map(str::to_string).collect())
    }

    /// Answers a ping; how the session ended if the answer shows it has.
    async fn pong(&self) -> Option<PollEnd> {
        match self.http.post(&self.url).body("3").send().await {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(PollEnd::Refused(r.status().as_u16())),
            Err(e) => Some(PollEnd::Failed(format!("{e:?}"))),
        }
    }

    /// Long-polls (answering pings) until the session ends.
    async fn run(self) -> PollEnd {
        loop {
            let packets = match self.poll().await {
                Ok(p) => p,
                Err(end) => return end,
            };
            for p in packets {
                match p.as_str() {
                    "1" => return PollEnd::ClosePacket,
                    "2" => {
                        if let Some(end) = self.pong().await {
                            return end;
                        }
                    }
                    p if p.starts_with("41") => return PollEnd::SioDisconnect,
                    _ => {}
                }
            }
        }
    }
}

#[tokio::test]
async fn sigterm_drains_in_batches_to_the_other_replica_without_offline_reports() {
    let n = WEBSOCKETS + POLLING;
    // A 6 s drain: a 1 s settle, then 10 batches ~0.38 s apart (`drain_sockets` in app.rs).
    // Pings far apart: a long-polling session then always has a poll waiting for the close
    // packet, instead of sometimes being between polls as the server stops listening.
    let mut c = Cluster::start(2, n, |o| {
        o.env("DRAIN_SECONDS", 6)
            .env("PING_INTERVAL_MS", 20_000)
            .env("PING_TIMEOUT_MS", 20_000)
    })
    .await;
    let dash = connect(
        c.replicas[1]
            .client()
            .transport(Transport::Websocket)
            .auth(json!({"token": user_token("ops", ORG_A)})),
    )
    .await
    .unwrap();
    let mut screens = Vec::new();
    for i in 0..WEBSOCKETS {
        screens.push(
            device(
                c.replicas[0].client(),
                &load_device(i),
                Transport::Websocket,
            )
            .await
            .unwrap(),
        );
    }
    let mut pollers = Vec::new();
    for i in WEBSOCKETS..n {
        pollers.push(Poller::connect(&c.replicas[0].url(), &load_device(i)).await);
    }
    for i in 0..n {
        c.wait_db_status(&load_device(i), "online").await;
    }
    dash.drain_events();

    // Watchers: each records its close and reconnects the screen to the surviving replica at
    // once, as a player would (the lease is handed over, not released).
    let clock = Arc::new(Clock::default());
    let survivor = c.replicas[1].client();
    let mut ws_watch = Vec::new();
    for (i, s) in screens.into_iter().enumerate() {
        let (clock, survivor) = (clock.clone(), survivor.clone());
        ws_watch.push(tokio::spawn(async move {
            let reason = s.closed(DRAIN_T).await;
            let seen = clock.close();
            let moved = device(survivor, &load_device(i), Transport::Websocket)
                .await
                .unwrap();
            (reason, seen, moved)
        }));
    }
    let mut poll_watch = Vec::new();
    for (k, p) in pollers.into_iter().enumerate() {
        let (clock, survivor) = (clock.clone(), survivor.clone());
        poll_watch.push(tokio::spawn(async move {
            let end = tokio::time::timeout(DRAIN_T, p.run()).await.ok();
            let seen = clock.close();
            let moved = device(survivor, &load_device(WEBSOCKETS + k), Transport::Websocket)
                .await
                .unwrap();
            (end, seen, moved)
        }));
    }
    // The prober: counts the draining replica's answers until it stops answering.
    let prober = {
        let clock = clock.clone();
        let url = format!("{}/api/health/live", c.replicas[0].url());
        let http = reqwest::Client::builder().timeout(T).build().unwrap();
        tokio::spawn(async move {
            while http.get(&url).send().await.is_ok() {
                clock.answers.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    c.replicas[0].sigterm();
    let api = c.replicas[0].api();
    eventually(T, "readiness 503 while draining", || async {
        let (st, body) = api.get_text("/api/health/ready", &[]).await;
        (st == 503 && body.contains("draining")).then_some(())
    })
    .await;
    match device(c.replicas[0].client(), DEV_A3, Transport::Websocket).await {
        Err(ConnectError::Http { status, body, .. }) => {
            assert_eq!(status, 503);
            assert!(body.contains("draining"), "{body}");
        }
        other => {
            panic!("a new handshake on a draining replica must be refused with 503, got {other:?}")
        }
    }

    // Drain progress for the dashboard: the gauge is up from the moment readiness says draining,
    // and the closes counted are never fewer than the closes the screens have seen.
    let draining = metric_sum(
        &metrics_text(&c.replicas[0]).await,
        "vizora_gateway_draining{",
    );
    assert_eq!(
        draining,
        Some(1.0),
        "vizora_gateway_draining while draining"
    );
    eventually(DRAIN_T, "a first drain close seen by a screen", || async {
        (clock.closes.load(SeqCst) > 0).then_some(())
    })
    .await;
    let seen = clock.closes.load(SeqCst);
    let counted = metric_sum(
        &metrics_text(&c.replicas[0]).await,
        "vizora_gateway_drain_closed_total",
    )
    .unwrap_or(0.0);
    assert!(
        counted >= seen as f64,
        "vizora_gateway_drain_closed_total is {counted} after {seen} close(s) seen"
    );
    let idle = metric_sum(
        &metrics_text(&c.replicas[1]).await,
        "vizora_gateway_draining{",
    );
    assert_eq!(idle, Some(0.0), "the other replica is not draining");

    let mut moved = Vec::new();
    let mut ws_seen = Vec::new();
    for (i, w) in ws_watch.into_iter().enumerate() {
        let (reason, seen, m) = w.await.unwrap();
        let reason = reason.expect("the drain closes every websocket transport");
        assert_ne!(
            reason,
            CloseReason::ServerDisconnect,
            "screen {i}: a Socket.IO disconnect would stop the player retrying"
        );
        ws_seen.push(seen);
        moved.push((load_device(i), m));
    }
    let mut poll_seen = Vec::new();
    let mut poll_ends = Vec::new();
    for (k, w) in poll_watch.into_iter().enumerate() {
        let (end, seen, m) = w.await.unwrap();
        poll_seen.push(seen);
        poll_ends.push(end);
        moved.push((load_device(WEBSOCKETS + k), m));
    }
    let status = c.replicas[0]
        .wait_exit(T)
        .await
        .expect("the draining replica exits by itself");
    assert!(status.success(), "exit status {status:?}");
    prober.await.unwrap();
    let answers = clock.answers.load(SeqCst);

    // Batches, not one blow: the websocket closes were seen between different answers of the
    // live process (ten batches a few hundred ms apart; half of them is plenty of margin for a
    // slow machine, while a single kill of everything, or the exit, gives one or two).
    let groups: BTreeSet<usize> = ws_seen.iter().map(|s| s.answers).collect();
    assert!(
        groups.len() >= 5,
        "websocket closes in {} group(s) only, want about ten: {ws_seen:?}",
        groups.len()
    );
    let last_ws = ws_seen.iter().map(|s| s.answers).max().unwrap();
    assert!(
        answers > last_ws,
        "the process still answered after the last websocket close ({last_ws} answers then, \
         {answers} in all)"
    );
    // Long-polling sessions have no connection to kill: they are closed at the end, by the
    // server itself (a dead connection would mean the process exited first).
    for (k, end) in poll_ends.iter().enumerate() {
        assert!(
            matches!(end, Some(PollEnd::ClosePacket | PollEnd::Refused(400))),
            "polling screen {k}: the draining server itself ends the session, got {end:?}"
        );
    }
    let last_ws_seq = ws_seen.iter().map(|s| s.seq).max().unwrap();
    for p in &poll_seen {
        assert!(
            p.seq > last_ws_seq,
            "polling closed after every websocket batch: {p:?} vs {ws_seen:?}"
        );
    }

    // Positive control: a device whose replica "died" now. Its offline shows a sweep ran past
    // the deadline of every lease the drained replica left behind: nothing else expired.
    c.abandon_lease(DEV_A2, ORG_A).await;
    let mut events = Vec::new();
    record_until(&dash, &mut events, T, "the control device offline", |evs| {
        offline_events(evs).iter().any(|d| d == DEV_A2)
    })
    .await;
    events.extend(dash.drain_events());
    let offline: Vec<String> = offline_events(&events)
        .into_iter()
        .filter(|d| d != DEV_A2)
        .collect();
    assert_eq!(
        offline,
        Vec::<String>::new(),
        "drained screens are handed over, never reported offline"
    );
    for (dev, m) in &moved {
        assert_eq!(c.db_status(dev).await, "online");
        assert_eq!(c.lease(dev).await.unwrap()["sid"], m.sid());
    }
}

/// A screen the drain closed keeps its lease for three lease TTLs (`HANDOVER_TTLS`), not for
/// what was left of one since the last refresh: a player that needs longer than a TTL to get in
/// elsewhere (its backoff, replicas refusing while they shed) is not reported offline. The
/// control: a screen that never comes back is reported offline once that longer lease runs out.
#[tokio::test]
async fn a_screen_the_drain_closed_may_take_two_lease_ttls_to_come_back() {
    let (slow, gone) = (load_device(0), load_device(1));
    let c = Cluster::start(2, 2, |o| o.env("DRAIN_SECONDS", 2)).await;
    let dash = ws_dashboard(c.replicas[1].client(), ORG_A).await;
    let mut screens = Vec::new();
    for dev in [&slow, &gone] {
        let s = device(c.replicas[0].client(), dev, Transport::Websocket)
            .await
            .unwrap();
        c.wait_db_status(dev, "online").await;
        screens.push(s);
    }
    dash.drain_events();

    c.replicas[0].sigterm();
    for s in &screens {
        let reason = s.closed(T).await.expect("the drain closes the transport");
        assert_ne!(reason, CloseReason::ServerDisconnect);
    }
    // What the sweep sees: the deadline is more than two TTLs away, where a refresh gives one.
    let now_ms = c.redis.time_us().await / 1000;
    let deadline = c.lease_deadline_ms(&slow).await.unwrap();
    let left = Duration::from_millis((deadline as u64).saturating_sub(now_ms));
    assert!(
        left > LEASE_TTL * 2,
        "the handed-over lease has {left:?} left"
    );

    // The slow player: back two lease TTLs after the close (the scenario, not a wait).
    tokio::time::sleep(LEASE_TTL * 2).await;
    let back = device(c.replicas[1].client(), &slow, Transport::Websocket)
        .await
        .unwrap();
    let mut events = Vec::new();
    record_until(
        &dash,
        &mut events,
        T * 2,
        "the screen that never came back offline",
        |evs| offline_events(evs).contains(&gone),
    )
    .await;
    events.extend(dash.drain_events());
    let offline: Vec<String> = offline_events(&events)
        .into_iter()
        .filter(|d| *d != gone)
        .collect();
    assert!(offline.is_empty(), "{offline:?}");
    assert_eq!(c.db_status(&slow).await, "online");
    assert_eq!(c.lease(&slow).await.unwrap()["sid"], back.sid());
    assert_eq!(c.db_status(&gone).await, "offline");
}
