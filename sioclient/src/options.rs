//! Connection options and the URL building shared by both transports.

use std::time::Duration;

use url::Url;

use crate::ConnectError;

/// Which Engine.IO transport(s) to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Websocket only, straight away (no polling handshake).
    Websocket,
    /// HTTP long-polling only.
    Polling,
    /// Handshake over polling, then upgrade to websocket (socket.io-client's default).
    PollingUpgrade,
}

/// Options for [`crate::connect`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Server base URL, e.g. `http://127.0.0.1:3002`; [`Self::path`] is appended.
    pub base_url: String,
    /// Transport strategy.
    pub transport: Transport,
    /// Auth payload sent in the CONNECT packet (`40{"token":"..."}`).
    pub auth: Option<serde_json::Value>,
    /// Extra HTTP headers sent on the handshake and on every polling request.
    pub headers: Vec<(String, String)>,
    /// Extra query parameters sent on every request.
    pub query: Vec<(String, String)>,
    /// Bound on the whole connect (handshake, CONNECT ack and, if any, the upgrade).
    pub connect_timeout: Duration,
    /// Engine.IO path, `/socket.io/` by default.
    pub path: String,
    /// Socket.IO namespace, `/` by default.
    pub namespace: String,
    /// Arguments of the automatic ack sent for server events that request one
    /// (`42<id>[...]` → `43<id>[...auto_ack]`); empty by default. Servers that
    /// decode the first ack argument (e.g. socketioxide's `emit_with_ack::<_, Value>`)
    /// need at least one.
    pub auto_ack: Vec<serde_json::Value>,
    /// When true, server events that request an ack are not answered automatically: the
    /// test answers (or deliberately does not) with [`crate::Client::ack`], using
    /// [`crate::Event::ack_id`].
    pub manual_acks: bool,
    /// Keep the cookies the server sets and send them back on every later request of the
    /// connection, like a browser (off by default, like socket.io-client outside a browser).
    pub keep_cookies: bool,
    /// Cookies the jar starts with (only with [`Self::keep_cookies`]).
    pub cookies: Vec<(String, String)>,
}

impl ClientOptions {
    /// Websocket transport, no auth, 10 s connect timeout, path `/socket.io/`,
    /// namespace `/`, empty automatic acks.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            transport: Transport::Websocket,
            auth: None,
            headers: Vec::new(),
            query: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            path: "/socket.io/".to_owned(),
            namespace: "/".to_owned(),
            auto_ack: Vec::new(),
            manual_acks: false,
            keep_cookies: false,
            cookies: Vec::new(),
        }
    }

    /// Sets the transport strategy.
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// Sets the CONNECT auth payload.
    pub fn auth(mut self, v: serde_json::Value) -> Self {
        self.auth = Some(v);
        self
    }

    /// Adds an HTTP header.
    pub fn header(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Adds a query parameter.
    pub fn query(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.query.push((k.into(), v.into()));
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets the Engine.IO path (default `/socket.io/`).
    pub fn path(mut self, p: impl Into<String>) -> Self {
        self.path = p.into();
        self
    }

    /// Sets the Socket.IO namespace (default `/`).
    pub fn namespace(mut self, n: impl Into<String>) -> Self {
        self.namespace = n.into();
        self
    }

    /// Leaves acks of server events to the caller ([`crate::Client::ack`]).
    pub fn manual_acks(mut self) -> Self {
        self.manual_acks = true;
        self
    }

    /// Keeps cookies (see [`Self::keep_cookies`](ClientOptions#structfield.keep_cookies)).
    pub fn keep_cookies(mut self) -> Self {
        self.keep_cookies = true;
        self
    }

    /// Keeps cookies, starting with this one (a cookie the server may later replace).
    pub fn cookie(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.keep_cookies = true;
        self.cookies.push((name.into(), value.into()));
        self
    }

    /// Sets the arguments of automatic acks (default none).
    pub fn auto_ack(mut self, args: Vec<serde_json::Value>) -> Self {
        self.auto_ack = args;
        self
    }
}

/// Builds the Engine.IO URLs for one server.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    base: Url,
    query: Vec<(String, String)>,
}

impl Endpoint {
    pub(crate) fn new(opts: &ClientOptions) -> Result<Self, ConnectError> {
        let mut base = Url::parse(&opts.base_url).map_err(|e| {
            ConnectError::Other(format!("invalid base_url {:?}: {e}", opts.base_url))
        })?;
        if !matches!(base.scheme(), "http" | "https" | "ws" | "wss") {
            return Err(ConnectError::Other(format!(
                "unsupported scheme {:?}",
                base.scheme()
            )));
        }
        base.set_path(&opts.path);
        base.set_query(None);
        Ok(Self {
            base,
            query: opts.query.clone(),
        })
    }

    fn with_scheme(&self, secure: &str, plain: &str, transport: &str, sid: Option<&str>) -> Url {
        let mut u = self.base.clone();
        let scheme = if matches!(u.scheme(), "https" | "wss") {
            secure
        } else {
            plain
        };
        // Switching among http/https/ws/wss is always allowed (all are "special" schemes).
        let _ = u.set_scheme(scheme);
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("EIO", "4")
                .append_pair("transport", transport);
            if let Some(sid) = sid {
                q.append_pair("sid", sid);
            }
            for (k, v) in &self.query {
                q.append_pair(k, v);
            }
        }
        u
    }

    /// `ws(s)://host/path/?EIO=4&transport=websocket[&sid=..]`
    pub(crate) fn websocket(&self, sid: Option<&str>) -> Url {
        self.with_scheme("wss", "ws", "websocket", sid)
    }

    /// `http(s)://host/path/?EIO=4&transport=polling[&sid=..]`
    pub(crate) fn polling(&self, sid: Option<&str>) -> Url {
        self.with_scheme("https", "http", "polling", sid)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = ClientOptions::new("http://127.0.0.1:3002").query("token", "a b");
        let e = Endpoint::new(&o).unwrap();
        assert_eq!(
            e.websocket(None).as_str(),
            "ws://127.0.0.1:3002/socket.io/?EIO=4&transport=websocket&token=a+b"
        );
        assert_eq!(
            e.polling(Some("xyz")).as_str(),
            "http://127.0.0.1:3002/socket.io/?EIO=4&transport=polling&sid=xyz&token=a+b"
        );
        let e = Endpoint::new(&ClientOptions::new("wss://h/x?y=1").path("/rt/")).unwrap();
        assert_eq!(
            e.polling(None).as_str(),
            "https://h/rt/?EIO=4&transport=polling"
        );
        assert!(Endpoint::new(&ClientOptions::new("nope")).is_err());
        assert!(Endpoint::new(&ClientOptions::new("ftp://h")).is_err());
    }
}
