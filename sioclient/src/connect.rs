//! [`connect`]: Engine.IO handshake, Socket.IO CONNECT, optional upgrade, then
//! hand-off to the driver task.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, Shared};
use crate::driver::Driver;
use crate::options::Endpoint;
use crate::packet::{EnginePacket, OpenInfo, SioKind, SioPacket};
use crate::transport::{Inbound, TransportConn, polling, ws};
use crate::{ClientOptions, ConnectError, Transport};

/// Bound on the websocket probe; past it we stay on polling, like socket.io-client.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on letting the last poll return before the websocket takes over.
const PAUSE_GRACE: Duration = Duration::from_secs(5);

/// Connects to a Socket.IO v4 server, bounded by `opts.connect_timeout`.
pub async fn connect(opts: ClientOptions) -> Result<Client, ConnectError> {
    // Dropping the inner future on timeout drops any transport, which aborts its tasks.
    tokio::time::timeout(opts.connect_timeout, connect_inner(opts))
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn connect_inner(opts: ClientOptions) -> Result<Client, ConnectError> {
    let endpoint = Endpoint::new(&opts)?;
    let nsp = normalize_nsp(&opts.namespace);
    let jar = crate::cookies::Jar::new(&opts).map(Arc::new);
    let (in_tx, mut in_rx) = mpsc::unbounded_channel();

    let (open, conn) = match opts.transport {
        Transport::Websocket => {
            let mut socket =
                ws::open(&endpoint.websocket(None), &opts.headers, jar.as_deref()).await?;
            let first = ws::next_text(&mut socket)
                .await
                .map_err(ConnectError::TransportClosed)?;
            let open = match EnginePacket::decode(&first) {
                Ok(EnginePacket::Open(data)) => OpenInfo::parse(&data)
                    .map_err(|e| ConnectError::Other(format!("bad OPEN packet: {e}")))?,
                _ => {
                    return Err(ConnectError::Other(format!(
                        "expected OPEN packet, got {first:?}"
                    )));
                }
            };
            (open, ws::spawn(socket, 0, in_tx.clone()))
        }
        Transport::Polling | Transport::PollingUpgrade => {
            let http = polling::Http::new(&opts.headers, jar.clone())?;
            let (open, rest) = polling::handshake(&http, endpoint.polling(None)).await?;
            for text in rest {
                let _ = in_tx.send(Inbound::Packet { text });
            }
            let session = polling::Session {
                url: endpoint.polling(Some(&open.sid)),
                poll_timeout: ping_window(&open) + Duration::from_secs(5),
                max_payload: open
                    .max_payload
                    .and_then(|m| usize::try_from(m).ok())
                    .unwrap_or(100_000),
            };
            (
                open.clone(),
                polling::spawn(http, session, 0, in_tx.clone()),
            )
        }
    };

    conn.send(
        SioPacket::connect(&nsp, opts.auth.clone()).to_engine(),
        None,
    );
    let sid = await_connect_ack(&mut in_rx, &conn, &nsp).await?;

    let conn = if opts.transport == Transport::PollingUpgrade
        && open.upgrades.iter().any(|u| u == "websocket")
    {
        upgrade(
            conn,
            &endpoint,
            &opts.headers,
            jar.as_deref(),
            &open.sid,
            in_tx.clone(),
        )
        .await
    } else {
        conn
    };
    // Only transports may hold senders: the driver treats "all gone" as a close.
    drop(in_tx);

    let shared = Arc::new(Shared::new(conn.kind));
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let driver = Driver {
        shared: shared.clone(),
        nsp: nsp.clone(),
        conn,
        inbound: in_rx,
        commands: cmd_rx,
        ping_window: ping_window(&open),
        auto_ack: opts.auto_ack,
        manual_acks: opts.manual_acks,
    };
    tokio::spawn(driver.run());
    Ok(Client::new(sid, open.sid, nsp, shared, cmd_tx))
}

fn normalize_nsp(n: &str) -> String {
    if n.starts_with('/') {
        n.to_owned()
    } else {
        format!("/{n}")
    }
}

fn ping_window(open: &OpenInfo) -> Duration {
    Duration::from_millis(open.ping_interval.saturating_add(open.ping_timeout))
}

/// Reads until the CONNECT ack (returns the Socket.IO sid) or a refusal.
/// Packets after the ack stay in the channel for the driver.
async fn await_connect_ack(
    in_rx: &mut mpsc::UnboundedReceiver<Inbound>,
    conn: &TransportConn,
    nsp: &str,
) -> Result<String, ConnectError> {
    loop {
        let text = match in_rx.recv().await {
            Some(Inbound::Packet { text, .. }) => text,
            Some(Inbound::Closed { reason, .. }) => {
                return Err(ConnectError::TransportClosed(reason));
            }
            None => return Err(ConnectError::TransportClosed("transport ended".to_owned())),
        };
        let msg = match EnginePacket::decode(&text) {
            Ok(EnginePacket::Message(m)) => m,
            Ok(EnginePacket::Ping(data)) => {
                conn.send(EnginePacket::Pong(data).encode(), None);
                continue;
            }
            Ok(EnginePacket::Close) => {
                return Err(ConnectError::TransportClosed(
                    "server sent engine.io close".to_owned(),
                ));
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed engine.io packet before connect");
                continue;
            }
        };
        let p = match SioPacket::decode(&msg) {
            Ok(p) if p.nsp == nsp => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed socket.io packet before connect");
                continue;
            }
        };
        match p.kind {
            SioKind::Connect => {
                return match p
                    .data
                    .as_ref()
                    .and_then(|d| d.get("sid"))
                    .and_then(|s| s.as_str())
                {
                    Some(sid) => Ok(sid.to_owned()),
                    None => Err(ConnectError::Other(format!(
                        "CONNECT ack without sid: {msg:?}"
                    ))),
                };
            }
            SioKind::ConnectError => return Err(refused(p.data)),
            SioKind::Disconnect => {
                return Err(ConnectError::TransportClosed(
                    "server disconnected before connect ack".to_owned(),
                ));
            }
            SioKind::Event | SioKind::Ack => {
                tracing::debug!(packet = %msg, "ignoring packet before connect ack");
            }
        }
    }
}

fn refused(data: Option<serde_json::Value>) -> ConnectError {
    match data {
        Some(serde_json::Value::String(message)) => ConnectError::Refused {
            message,
            data: None,
        },
        Some(mut obj) => {
            let message = obj
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_owned();
            let data = obj.as_object_mut().and_then(|o| o.remove("data"));
            ConnectError::Refused { message, data }
        }
        None => ConnectError::Refused {
            message: String::new(),
            data: None,
        },
    }
}

/// Probes a websocket for this session; on success pauses polling and sends
/// the upgrade packet. On any probe failure the polling transport is kept.
async fn upgrade(
    polling: TransportConn,
    endpoint: &Endpoint,
    headers: &[(String, String)],
    jar: Option<&crate::cookies::Jar>,
    sid: &str,
    in_tx: mpsc::UnboundedSender<Inbound>,
) -> TransportConn {
    let mut socket =
        match tokio::time::timeout(PROBE_TIMEOUT, probe(endpoint, headers, jar, sid)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "websocket upgrade probe failed; staying on polling");
                return polling;
            }
            Err(_) => {
                tracing::warn!("websocket upgrade probe timed out; staying on polling");
                return polling;
            }
        };
    let generation = polling.generation + 1;
    // The server releases the pending GET with a noop once it answered the probe.
    polling.pause(PAUSE_GRACE).await;
    if let Err(e) = socket
        .send(Message::text(EnginePacket::Upgrade.encode()))
        .await
    {
        // Polling is already paused, so this connection cannot continue; the driver sees the close.
        let _ = in_tx.send(Inbound::Closed {
            generation,
            reason: format!("upgrade packet failed: {e}"),
        });
    }
    ws::spawn(socket, generation, in_tx)
}

async fn probe(
    endpoint: &Endpoint,
    headers: &[(String, String)],
    jar: Option<&crate::cookies::Jar>,
    sid: &str,
) -> Result<ws::WsStream, String> {
    let mut socket = ws::open(&endpoint.websocket(Some(sid)), headers, jar)
        .await
        .map_err(|e| e.to_string())?;
    socket
        .send(Message::text(
            EnginePacket::Ping("probe".to_owned()).encode(),
        ))
        .await
        .map_err(|e| e.to_string())?;
    let reply = ws::next_text(&mut socket).await?;
    if reply == EnginePacket::Pong("probe".to_owned()).encode() {
        Ok(socket)
    } else {
        Err(format!("unexpected probe reply {reply:?}"))
    }
}
