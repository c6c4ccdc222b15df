//! HTTP long-polling transport: a GET loop receives, a POST writer sends;
//! several packets share one body, separated by the `\x1e` record separator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::header::{
    CONTENT_TYPE, COOKIE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, SET_COOKIE,
};
use tokio::sync::mpsc;
use url::Url;

use super::{Done, Inbound, Out, TransportConn};
use crate::cookies::{Jar, is_cookie_header};
use crate::packet::{EnginePacket, OpenInfo, RECORD_SEPARATOR, split_payload};
use crate::{ConnectError, Transport};

/// HTTP client carrying the user's extra headers, and the jar's cookies if any, on every request.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    jar: Option<Arc<Jar>>,
}

impl Http {
    pub(crate) fn new(
        headers: &[(String, String)],
        jar: Option<Arc<Jar>>,
    ) -> Result<Self, ConnectError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            if jar.is_some() && is_cookie_header(k) {
                continue; // sent by the jar
            }
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ConnectError::Other(format!("bad header name {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| ConnectError::Other(format!("bad header value for {k:?}: {e}")))?;
            map.append(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(map)
            // Test/demo traffic targets the local gateway; never route it via an env proxy.
            .no_proxy()
            .build()
            .map_err(|e| ConnectError::Other(format!("http client: {e}")))?;
        Ok(Self { client, jar })
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let req = self.client.request(method, url);
        match self.jar.as_ref().and_then(|j| j.header()) {
            Some(c) => req.header(COOKIE, c),
            None => req,
        }
    }

    fn keep_cookies(&self, resp: &reqwest::Response) {
        if let Some(jar) = &self.jar {
            jar.store(
                resp.headers()
                    .get_all(SET_COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
        }
    }
}

/// Handshake GET: returns the OPEN data and any packets that followed it in the payload.
pub(crate) async fn handshake(
    http: &Http,
    url: Url,
) -> Result<(OpenInfo, Vec<String>), ConnectError> {
    let resp = http
        .request(reqwest::Method::GET, url)
        .send()
        .await
        .map_err(|e| ConnectError::Other(format!("polling handshake failed: {e}")))?;
    http.keep_cookies(&resp);
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .text()
        .await
        .map_err(|e| ConnectError::Other(format!("polling handshake body: {e}")))?;
    if !status.is_success() {
        return Err(ConnectError::Http {
            status: status.as_u16(),
            body,
            retry_after,
        });
    }
    let mut packets = split_payload(&body);
    let open = match packets.next().map(EnginePacket::decode) {
        Some(Ok(EnginePacket::Open(data))) => OpenInfo::parse(&data)
            .map_err(|e| ConnectError::Other(format!("bad OPEN packet: {e}")))?,
        Some(Ok(EnginePacket::Close)) => {
            return Err(ConnectError::TransportClosed(
                "server closed during handshake".to_owned(),
            ));
        }
        _ => {
            return Err(ConnectError::Other(format!(
                "expected OPEN packet, got {body:?}"
            )));
        }
    };
    Ok((open, packets.map(str::to_owned).collect()))
}

/// Per-session settings for the running transport.
pub(crate) struct Session {
    pub(crate) url: Url,
    /// Bound on one GET: a healthy server answers within a ping interval.
    pub(crate) poll_timeout: Duration,
    /// Largest POST body the server accepts.
    pub(crate) max_payload: usize,
}

/// Starts the GET loop and the POST writer.
pub(crate) fn spawn(
    http: Http,
    session: Session,
    generation: u32,
    inbound: mpsc::UnboundedSender<Inbound>,
) -> TransportConn {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let session = Arc::new(session);
    let poller = tokio::spawn(poll_loop(
        http.clone(),
        session.clone(),
        generation,
        inbound.clone(),
        stop.clone(),
    ));
    let writer = tokio::spawn(write_loop(http, session, generation, inbound, rx));
    TransportConn::new(
        Transport::Polling,
        generation,
        tx,
        writer,
        Some((stop, poller)),
    )
}

async fn poll_loop(
    http: Http,
    session: Arc<Session>,
    generation: u32,
    inbound: mpsc::UnboundedSender<Inbound>,
    stop: Arc<AtomicBool>,
) {
    let closed = |reason: String| {
        let _ = inbound.send(Inbound::Closed { generation, reason });
    };
    // The flag is only checked between GETs: during an upgrade the server
    // releases the pending GET with a noop, and we must read what it carries.
    while !stop.load(Ordering::SeqCst) {
        let resp = match http
            .request(reqwest::Method::GET, session.url.clone())
            .timeout(session.poll_timeout)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return closed(format!("poll failed: {e}")),
        };
        http.keep_cookies(&resp);
        let status = resp.status();
        let body = match resp.text().await {
            Ok(b) => b,
            Err(e) => return closed(format!("poll body failed: {e}")),
        };
        if !status.is_success() {
            return closed(format!("poll got HTTP {status}: {body}"));
        }
        for p in split_payload(&body) {
            let is_close = p == "1";
            if inbound
                .send(Inbound::Packet { text: p.to_owned() })
                .is_err()
                || is_close
            {
                return;
            }
        }
    }
}

async fn write_loop(
    http: Http,
    session: Arc<Session>,
    generation: u32,
    inbound: mpsc::UnboundedSender<Inbound>,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    while let Some(first) = rx.recv().await {
        // Batch everything queued so far: the server rejects overlapping POSTs.
        let mut packets = Vec::new();
        let mut dones: Vec<Done> = Vec::new();
        let mut closing = false;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Out::Packet(p, d) => {
                    packets.push(p);
                    dones.extend(d);
                }
                Out::Close => {
                    packets.push(EnginePacket::Close.encode());
                    closing = true;
                    break;
                }
            }
            next = rx.try_recv().ok();
        }
        let mut result = Ok(());
        for body in chunk(&packets, session.max_payload) {
            result = post(&http, &session.url, body).await;
            if result.is_err() {
                break;
            }
        }
        for d in dones {
            let _ = d.send(result.clone());
        }
        if closing {
            return;
        }
        if let Err(reason) = result {
            let _ = inbound.send(Inbound::Closed { generation, reason });
            return;
        }
    }
}

async fn post(http: &Http, url: &Url, body: String) -> Result<(), String> {
    let resp = http
        .request(reqwest::Method::POST, url.clone())
        .header(CONTENT_TYPE, "text/plain;charset=UTF-8")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("post failed: {e}"))?;
    http.keep_cookies(&resp);
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = resp.text().await.unwrap_or_default();
        Err(format!("post got HTTP {status}: {body}"))
    }
}

/// Joins packets into bodies no larger than `max` bytes (an oversized packet goes alone).
fn chunk(packets: &[String], max: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut cur = String::new();
    for p in packets {
        if !cur.is_empty() && cur.len() + 1 + p.len() > max {
            bodies.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(RECORD_SEPARATOR);
        }
        cur.push_str(p);
    }
    if !cur.is_empty() || bodies.is_empty() {
        bodies.push(cur);
    }
    bodies
}

#[cfg(test)]
mod tests {
    use super::chunk;

    #[test]
    fn chunking() {
        let p = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            chunk(&p(&["42[\"a\"]", "3"]), 100),
            vec!["42[\"a\"]\u{1e}3"]
        );
        assert_eq!(
            chunk(&p(&["aaaa", "bbbb", "cc"]), 9),
            vec!["aaaa\u{1e}bbbb", "cc"]
        );
        assert_eq!(
            chunk(&p(&["aaaaaaaaaaaa", "b"]), 4),
            vec!["aaaaaaaaaaaa", "b"]
        );
    }
}
