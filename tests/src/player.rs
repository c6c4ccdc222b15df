//! A screen or a dashboard that reconnects by itself whenever its connection closes, as a player
//! does, recording why each connection closed and every event it received; and how to count the
//! executions of a command at such a screen (`partition.rs`, `rebalance.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use vizora_sioclient::{Client, ClientOptions, CloseReason, ConnectError, Event, Transport};

use crate::Gateway;
use crate::fixture::{ORG_A, device_token, user_token};

/// What happened to one client that reconnects by itself, as a player does.
#[derive(Default)]
pub struct Seen {
    client: Option<Client>,
    closes: Vec<CloseReason>,
    /// Refused connect attempts: the HTTP status and body, or the error.
    refusals: Vec<String>,
    /// Events of the clients closed so far (the current client keeps its own).
    events: Vec<Event>,
    /// How long each reconnect took, from the close seen to the next client in.
    gaps: Vec<Duration>,
}

/// A screen or a dashboard that reconnects with `again` (every 100 ms until it gets in) each
/// time its connection closes, whatever the reason: the test asserts the reasons.
pub struct Player {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Player {
    pub async fn start(auth: Value, first: ClientOptions, again: ClientOptions) -> Player {
        let ws = |o: ClientOptions| o.transport(Transport::Websocket).auth(auth.clone());
        // The first connect is retried for a while too (a replica may refuse transiently).
        let first = ws(first);
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = loop {
            match vizora_sioclient::connect(first.clone()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("first connect: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let seen = Arc::new(Mutex::new(Seen {
            client: Some(client.clone()),
            ..Seen::default()
        }));
        let s = seen.clone();
        let again = ws(again);
        let task = tokio::spawn(async move {
            let mut current = client;
            loop {
                let Some(reason) = current.closed(Duration::from_secs(3600)).await else {
                    continue;
                };
                {
                    let mut s = s.lock().unwrap();
                    s.closes.push(reason);
                    s.events.extend(current.drain_events());
                    s.client = None;
                }
                let closed_at = Instant::now();
                current = loop {
                    match vizora_sioclient::connect(again.clone()).await {
                        Ok(c) => break c,
                        Err(e) => {
                            let why = match e {
                                ConnectError::Http { status, body, .. } => {
                                    format!("{status} {body}")
                                }
                                e => e.to_string(),
                            };
                            s.lock().unwrap().refusals.push(why);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                };
                let mut s = s.lock().unwrap();
                s.client = Some(current.clone());
                s.gaps.push(closed_at.elapsed());
            }
        });
        Player { seen, task }
    }

    pub async fn device(dev: &str, first: ClientOptions, again: ClientOptions) -> Player {
        Player::start(json!({"token": device_token(dev, ORG_A)}), first, again).await
    }

    pub async fn dashboard(first: ClientOptions, again: ClientOptions) -> Player {
        Player::start(json!({"token": user_token("ops", ORG_A)}), first, again).await
    }

    /// The connected client, if connected.
    pub fn client(&self) -> Option<Client> {
        let s = self.seen.lock().unwrap();
        s.client.clone().filter(Client::is_connected)
    }

    /// The sid of the connected client, if connected.
    pub fn sid(&self) -> Option<String> {
        let s = self.seen.lock().unwrap();
        s.client
            .as_ref()
            .filter(|c| c.is_connected())
            .map(|c| c.sid().to_string())
    }

    pub fn closes(&self) -> Vec<CloseReason> {
        self.seen.lock().unwrap().closes.clone()
    }

    /// How long each reconnect took so far.
    pub fn gaps(&self) -> Vec<Duration> {
        self.seen.lock().unwrap().gaps.clone()
    }

    pub fn refusals(&self) -> Vec<String> {
        self.seen.lock().unwrap().refusals.clone()
    }

    /// Every event received so far, over every connection, in order.
    pub fn events(&self) -> Vec<Event> {
        let mut s = self.seen.lock().unwrap();
        let more = s.client.as_ref().map(Client::drain_events);
        s.events.extend(more.into_iter().flatten());
        s.events.clone()
    }

    /// Events received on the current connection only (since its status batch).
    pub fn current_events(&self) -> Vec<Event> {
        let all = self.events();
        let from = all
            .iter()
            .rposition(|e| e.name == "device:status:batch")
            .unwrap_or(0);
        all[from..].to_vec()
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many times screen `p` was handed command `id`: as a `command` event on any of its
/// connections, or in a heartbeat ack (a command queued after the screen's connect waits for
/// its next heartbeat; these players send none by themselves, so this sends one).
pub async fn executions(p: &Player, id: &str, from_acks: &mut usize) -> usize {
    if let Some(c) = p.client()
        && let Ok(ack) = c
            .emit_with_ack("heartbeat", json!({}), Duration::from_secs(5))
            .await
    {
        *from_acks += ack["commands"]
            .as_array()
            .map(|a| a.iter().filter(|c| c["id"] == id).count())
            .unwrap_or(0);
    }
    let as_events = p
        .events()
        .iter()
        .filter(|e| e.name == "command" && e.args.first().is_some_and(|a| a["id"] == id))
        .count();
    as_events + *from_acks
}

/// The command sent into the partition reaches the moved screen exactly once. The control: a
/// second command, sent after the first was seen, arrives too (nothing in flight is left to
/// repeat the first).
pub async fn executed_exactly_once(p: &Player, id: &str, control_via: &Gateway, dev: &str) {
    let mut from_acks = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while executions(p, id, &mut from_acks).await == 0 {
        assert!(
            Instant::now() < deadline,
            "command {id} never reached {dev}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, body) = control_via.api().command(dev, "reload", None).await;
    assert_eq!(st, 201, "{body}");
    let control = body["commandId"].as_str().unwrap().to_string();
    let mut control_acks = 0;
    while executions(p, &control, &mut control_acks).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the control command never reached {dev}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        executions(p, id, &mut from_acks).await,
        1,
        "command {id} executed once on {dev}"
    );
}
