//! `vizora-gateway healthcheck`: a probe for container runtimes whose images have no shell or
//! curl (the Dockerfile's `HEALTHCHECK`). One HTTP/1.1 GET over a plain TCP stream, so the probe
//! costs no TLS stack or HTTP client and works in a distroless image.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a probe failed (printed on stderr; the exit code is 1 for all of them).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("`{0}` is not an http:// URL with a host")]
    BadUrl(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("i/o error talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not an HTTP response: {0:?}")]
    Malformed(String),
    #[error("status {0}")]
    Status(u16),
}

/// The default target: this host's readiness route on `$INTERNAL_PORT` when set (the health
/// routes live there then), else on `$PORT` (3002 when unset or unparsable; the server itself
/// refuses a bad PORT, so the probe then fails to connect, which is right).
pub fn default_url() -> String {
    let port_of = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
    };
    let port = port_of("INTERNAL_PORT")
        .or_else(|| port_of("PORT"))
        .unwrap_or(3002);
    format!("http://127.0.0.1:{port}/api/health/ready")
}

/// GETs `url` and succeeds on status 200 only (a draining replica answers 503).
pub async fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let parsed = url::Url::parse(url).map_err(|_| ProbeError::BadUrl(url.into()))?;
    if parsed.scheme() != "http" {
        return Err(ProbeError::BadUrl(url.into()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| ProbeError::BadUrl(url.into()))?
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    // IPv6 literals keep their brackets in host_str(), which is what both connect and Host want.
    let addr = format!("{host}:{port}");
    let status = tokio::time::timeout(timeout, get_status(&addr, &host, &path))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))??;
    if status == 200 {
        Ok(status)
    } else {
        Err(ProbeError::Status(status))
    }
}

async fn get_status(addr: &str, host: &str, path: &str) -> Result<u16, ProbeError> {
    let io = |source| ProbeError::Io {
        addr: addr.into(),
        source,
    };
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect {
            addr: addr.into(),
            source,
        })?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vizora-gateway-healthcheck\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    // The status line is all we need; read until its end (bounded, the peer may be anything).
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head)
}

/// `HTTP/1.x NNN reason` → NNN.
fn parse_status_line(head: &[u8]) -> Result<u16, ProbeError> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .ok()
            .filter(|c| (100..1000).contains(c))
            .ok_or_else(|| ProbeError::Malformed(line.chars().take(80).collect())),
        _ => Err(ProbeError::Malformed(line.chars().take(80).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n").ok(), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n").ok(), Some(503));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
        assert!(parse_status_line(b"").is_err());
    }
}
