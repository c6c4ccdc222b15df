//! A minimal cookie jar, off unless [`crate::ClientOptions::keep_cookies`] (or
//! [`crate::ClientOptions::cookie`]) turns it on: what the server sets with `Set-Cookie` on any
//! response of the connection is sent back on every later request (polling GETs and POSTs, the
//! websocket handshake and upgrade), as a browser does for one origin. Behind a load balancer this
//! is what keeps a long-polling session on its replica (a `vizora_replica` or a stickiness cookie).
//!
//! Attributes (`Path`, `Domain`, `Expires`, `Secure`) are ignored, since a client talks to one
//! endpoint; `Max-Age=0` or an empty value removes a cookie. One jar per connection.

use std::sync::{Mutex, PoisonError};

use crate::ClientOptions;

#[derive(Debug)]
pub(crate) struct Jar {
    /// The caller's own `Cookie` headers ([`ClientOptions::header`]), sent first, unchanged.
    fixed: Vec<String>,
    /// Name → value, in the order first set.
    kept: Mutex<Vec<(String, String)>>,
}

impl Jar {
    /// The connection's jar, or `None` when cookies are not kept.
    pub(crate) fn new(opts: &ClientOptions) -> Option<Jar> {
        opts.keep_cookies.then(|| Jar {
            fixed: opts
                .headers
                .iter()
                .filter(|(k, _)| is_cookie_header(k))
                .map(|(_, v)| v.clone())
                .collect(),
            kept: Mutex::new(opts.cookies.clone()),
        })
    }

    /// Takes in a response's `Set-Cookie` values.
    pub(crate) fn store<'a>(&self, set_cookies: impl IntoIterator<Item = &'a str>) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        for sc in set_cookies {
            let mut parts = sc.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() {
                continue;
            }
            let expired = parts.any(|a| {
                a.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("max-age") && v.trim().starts_with(['0', '-'])
                })
            });
            kept.retain(|(n, _)| n != name);
            if !value.is_empty() && !expired {
                kept.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// The `Cookie` header value to send, if any.
    pub(crate) fn header(&self) -> Option<String> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let all: Vec<String> = self
            .fixed
            .iter()
            .cloned()
            .chain(kept.iter().map(|(n, v)| format!("{n}={v}")))
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}

/// With a jar the `Cookie` header is the jar's (which includes the caller's own).
pub(crate) fn is_cookie_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("cookie")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sets_and_removes() {
        assert!(Jar::new(&ClientOptions::new("http://h")).is_none());
        let jar = Jar::new(
            &ClientOptions::new("http://h")
                .header("Cookie", "mine=1")
                .cookie("vizora_lb", "k1"),
        )
        .unwrap();
        assert_eq!(jar.header().unwrap(), "mine=1; vizora_lb=k1");
        jar.store([
            "vizora_replica=r2; Path=/socket.io/; HttpOnly; SameSite=Lax",
            "broken",
            "vizora_lb=k2",
        ]);
        assert_eq!(
            jar.header().unwrap(),
            "mine=1; vizora_replica=r2; vizora_lb=k2"
        );
        jar.store(["vizora_replica=r0; Path=/", "vizora_lb=x; Max-Age=0"]);
        assert_eq!(jar.header().unwrap(), "mine=1; vizora_replica=r0");
        jar.store(["vizora_replica="]);
        assert_eq!(jar.header().unwrap(), "mine=1");
        let empty = Jar::new(&ClientOptions::new("http://h").keep_cookies()).unwrap();
        assert_eq!(empty.header(), None);
    }
}
