//! One device's Socket.IO session over a raw websocket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::Counters;

pub struct Device {
    pub id: String,
    pub org: String,
    pub index: usize,
}

#[derive(Default)]
pub struct Outcome {
    pub ack_us: Vec<u32>,
    /// Delivery latency of `loadtest:ping` broadcasts (now − their `sentAt`), in µs.
    pub fanout_us: Vec<u32>,
    /// With `--reconnect`: from losing a connected socket to being connected again, in µs.
    pub recovery_us: Vec<u64>,
}

/// socket.io-client's reconnection delay: `reconnectionDelay` 1000 ms with
/// `randomizationFactor` 0.5, doubling up to `reconnectionDelayMax` 5000 ms.
fn reconnect_delay(index: usize, attempt: u32) -> Duration {
    let base = 1000u64.saturating_mul(1 << attempt.min(3)).min(5000);
    let jitter = (index as u64 * 7919 + u64::from(attempt) * 104_729) % base;
    Duration::from_millis(base / 2 + jitter)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `sentAt` of a `42["loadtest:ping",{"sentAt":…}]` packet.
fn sent_at(packet: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(packet.strip_prefix("42")?).ok()?;
    v.get(1)?.get("sentAt")?.as_u64()
}

pub fn token(secret: &str, d: &Device) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "sub": d.id, "deviceIdentifier": d.id, "organizationId": d.org, "type": "device",
        "iat": now, "exp": now + 86_400,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Where and how one device connects.
pub struct Target {
    /// The gateway addresses; the device starts at `first` and, with `reconnect`, moves to the
    /// next one when its connection is lost (what a load balancer does when a replica dies).
    pub addrs: Vec<SocketAddr>,
    /// Where it goes after the first connection was lost or refused: `addrs` and the replicas
    /// that joined (`--join-addr`).
    pub again: Vec<SocketAddr>,
    pub first: usize,
    pub source: IpAddr,
    pub reconnect: bool,
}

/// Connects (retrying refused handshakes with socket.io-client's backoff), then heartbeats until
/// `stop` fires. Never panics on what the server sends.
pub async fn run(
    target: Target,
    dev: Device,
    token: String,
    heartbeat_ms: u64,
    c: Arc<Counters>,
    stop: CancellationToken,
) -> Outcome {
    let mut out = Outcome::default();
    let mut at = target.first;
    let mut lost_at: Option<Instant> = None;
    let mut attempt = 0u32;
    // Once the first connection was lost (or a handshake refused), the balancer's view grows to
    // the replicas that joined since.
    let mut moved = false;
    while attempt < 10 {
        let addrs = if moved { &target.again } else { &target.addrs };
        let addr = addrs[at % addrs.len()];
        match session(
            addr,
            target.source,
            &dev,
            &token,
            heartbeat_ms,
            &c,
            &mut out,
            &stop,
            &mut lost_at,
        )
        .await
        {
            Ok(()) => return out,
            Err(End::Refused) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                if target.reconnect {
                    // A balancer picks the next replica for the retried connection.
                    moved = true;
                    at += 1;
                }
                tokio::time::sleep(reconnect_delay(dev.index, attempt)).await;
                attempt += 1;
            }
            Err(End::Lost) if target.reconnect && !stop.is_cancelled() => {
                c.lost.fetch_add(1, Ordering::Relaxed);
                lost_at = Some(Instant::now());
                moved = true;
                at += 1;
                attempt = 0;
                tokio::select! {
                    _ = tokio::time::sleep(reconnect_delay(dev.index, 0)) => {}
                    _ = stop.cancelled() => return out,
                }
            }
            Err(End::Lost | End::Failed) => break,
        }
    }
    c.failed.fetch_add(1, Ordering::Relaxed);
    out
}

enum End {
    /// The handshake was refused or the transport closed before the Socket.IO connect.
    Refused,
    /// A connected socket's transport was lost.
    Lost,
    Failed,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    addr: SocketAddr,
    source: IpAddr,
    dev: &Device,
    token: &str,
    heartbeat_ms: u64,
    c: &Counters,
    out: &mut Outcome,
    stop: &CancellationToken,
    lost_at: &mut Option<Instant>,
) -> Result<(), End> {
    let sock = TcpSocket::new_v4().map_err(|_| End::Failed)?;
    sock.bind(SocketAddr::new(source, 0))
        .map_err(|_| End::Failed)?;
    let stream = sock.connect(addr).await.map_err(|_| End::Refused)?;
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|_| End::Refused)?;
    let auth = serde_json::json!({ "token": token });
    let mut connected = false;
    let period = Duration::from_millis(heartbeat_ms.max(1));
    // Spread the first heartbeat over one period so a ramp does not synchronise the fleet.
    let first = Duration::from_millis((dev.index as u64 * 7919) % heartbeat_ms.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    let mut ack_id = 0u64;
    let mut in_flight: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = ws.send(Message::text("41")).await;
                let _ = ws.close(None).await;
                return Ok(());
            }
            _ = tick.tick(), if connected && heartbeat_ms > 0 => {
                if in_flight.is_some() {
                    c.ack_errors.fetch_add(1, Ordering::Relaxed);
                }
                ack_id += 1;
                let hb = format!(
                    r#"42{ack_id}["heartbeat",{{"status":"online","metrics":{{"cpuUsage":{},"memoryUsage":40}},"currentContent":{{"contentId":"load-content","status":"playing"}}}}]"#,
                    dev.index % 100
                );
                in_flight = Some((ack_id, Instant::now()));
                if ws.send(Message::text(hb)).await.is_err() {
                    return Err(End::Lost);
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ if connected => return Err(End::Lost),
                    _ => return Err(End::Refused),
                };
                let t = text.as_str();
                if t == "2" {
                    if ws.send(Message::text("3")).await.is_err() {
                        return Err(if connected { End::Lost } else { End::Refused });
                    }
                } else if t.starts_with('0') {
                    if ws.send(Message::text(format!("40{auth}"))).await.is_err() {
                        return Err(End::Failed);
                    }
                } else if t.starts_with("40") {
                    connected = true;
                    match lost_at.take() {
                        Some(t0) => {
                            c.recovered.fetch_add(1, Ordering::Relaxed);
                            out.recovery_us.push(t0.elapsed().as_micros().min(u128::from(u64::MAX)) as u64);
                        }
                        None => {
                            c.connected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else if t.starts_with("44") {
                    return Err(End::Failed);
                } else if t.starts_with("41") {
                    c.server_disconnects.fetch_add(1, Ordering::Relaxed);
                    return Err(End::Failed);
                } else if let Some(rest) = t.strip_prefix("43") {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let id: Option<u64> = rest[..digits].parse().ok();
                    if let Some((want, sent)) = in_flight
                        && id == Some(want)
                    {
                        in_flight = None;
                        if rest[digits..].contains(r#""success":true"#) {
                            c.acks.fetch_add(1, Ordering::Relaxed);
                            out.ack_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        } else {
                            c.ack_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else if t.starts_with("42[\"loadtest:ping\"") {
                    if let Some(at) = sent_at(t) {
                        out.fanout_us.push((now_ms().saturating_sub(at) * 1000).min(u64::from(u32::MAX)) as u32);
                    }
                } else if t.starts_with("42[\"command\"") {
                    c.commands.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
