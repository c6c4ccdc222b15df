//! Websocket transport: one Engine.IO packet per text frame.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use super::{Inbound, Out, TransportConn};
use crate::cookies::{Jar, is_cookie_header};
use crate::{ConnectError, Transport};

pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the websocket (sending the jar's cookies, keeping what the 101 sets); a non-101 answer
/// becomes [`ConnectError::Http`].
pub(crate) async fn open(
    url: &Url,
    headers: &[(String, String)],
    jar: Option<&Jar>,
) -> Result<WsStream, ConnectError> {
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Other(format!("bad websocket url: {e}")))?;
    for (k, v) in headers {
        if jar.is_some() && is_cookie_header(k) {
            continue; // sent by the jar
        }
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ConnectError::Other(format!("bad header name {k:?}: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| ConnectError::Other(format!("bad header value for {k:?}: {e}")))?;
        req.headers_mut().append(name, value);
    }
    if let Some(c) = jar.and_then(Jar::header) {
        let value = HeaderValue::from_str(&c)
            .map_err(|e| ConnectError::Other(format!("bad cookie header: {e}")))?;
        req.headers_mut().append("cookie", value);
    }
    // Nagle off: small frames (acks, pongs) must not wait for the peer's delayed ACK.
    match tokio_tungstenite::connect_async_with_config(req, None, true).await {
        Ok((ws, resp)) => {
            if let Some(jar) = jar {
                jar.store(
                    resp.headers()
                        .get_all("set-cookie")
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
            }
            Ok(ws)
        }
        Err(WsError::Http(resp)) => Err(http_error(&resp)),
        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Err(
            ConnectError::TransportClosed("websocket closed during handshake".to_owned()),
        ),
        Err(e) => Err(ConnectError::Other(format!(
            "websocket connect failed: {e}"
        ))),
    }
}

/// Maps a refused upgrade response (tungstenite keeps whatever body bytes it read).
fn http_error(resp: &Response<Option<Vec<u8>>>) -> ConnectError {
    ConnectError::Http {
        status: resp.status().as_u16(),
        body: resp
            .body()
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default(),
        retry_after: resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// Reads until the next text frame; `Err` carries why the socket ended.
pub(crate) async fn next_text(ws: &mut WsStream) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            // Control frames are handled by tungstenite; binary is out of scope.
            Some(Ok(
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
            )) => {}
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(f) => format!("websocket closed by server ({} {})", f.code, f.reason),
                    None => "websocket closed by server".to_owned(),
                });
            }
            Some(Err(e)) => return Err(format!("websocket error: {e}")),
            None => return Err("websocket ended".to_owned()),
        }
    }
}

/// Runs the socket in one task: inbound frames go to `inbound`, `Out`s are written.
pub(crate) fn spawn(
    ws: WsStream,
    generation: u32,
    inbound: mpsc::UnboundedSender<Inbound>,
) -> TransportConn {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(ws, generation, inbound, rx));
    TransportConn::new(Transport::Websocket, generation, tx, task, None)
}

async fn run(
    mut ws: WsStream,
    generation: u32,
    inbound: mpsc::UnboundedSender<Inbound>,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    loop {
        tokio::select! {
            // `next_text` only holds state inside the stream, so losing the race is harmless.
            msg = next_text(&mut ws) => match msg {
                Ok(text) => {
                    if inbound.send(Inbound::Packet { text }).is_err() {
                        break;
                    }
                }
                Err(reason) => {
                    let _ = inbound.send(Inbound::Closed { generation, reason });
                    return;
                }
            },
            out = rx.recv() => match out {
                Some(Out::Packet(text, done)) => {
                    let res = ws.send(Message::text(text)).await.map_err(|e| e.to_string());
                    let failed = res.clone().err();
                    if let Some(d) = done {
                        let _ = d.send(res);
                    }
                    if let Some(reason) = failed {
                        let _ = inbound.send(Inbound::Closed { generation, reason: format!("websocket write failed: {reason}") });
                        return;
                    }
                }
                Some(Out::Close) | None => break,
            },
        }
    }
    // Client-side close: best effort close frame, bounded so a dead peer cannot hold us.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ws.close(None)).await;
}
