//! Who the client is behind proxies (contract §2 "Behind proxies").
//!
//! `TRUSTED_PROXIES` lists addresses and CIDR ranges (IPv4 and IPv6). A proxy appends the peer it
//! saw to `X-Forwarded-For`; everything to the left of that was written by someone further out,
//! ultimately by the client itself. So the client address is found by walking the header from the
//! right, starting at the TCP peer, for as long as the hop at hand is a trusted proxy: the first
//! hop that is not is the client. A client that writes extra hops on the left changes nothing.
//! Every address-based rule (connect limits, the metrics loopback exemption) uses [`client_ip`].
//!
//! When the walk never meets an untrusted hop (the peer and every hop are trusted proxies), the
//! client address is [`ClientAddr::Unknown`]: an ingress that replaces `X-Forwarded-For` with
//! the node address it saw, or a cloud balancer in `externalTrafficPolicy: Cluster`, hands the
//! gateway only its own infrastructure's addresses. Keying a per-IP bucket on such an address
//! would throttle a whole fleet's reconnect storm as one venue, so the edge skips the per-IP
//! limits for such handshakes (contract §2) and says so.
//!
//! [`client_ip`]: TrustedProxies::client_ip

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Who sent a request, as far as the trusted proxies let us see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddr {
    /// The right-most hop that is not a trusted proxy (or an untrusted peer).
    Known(IpAddr),
    /// Every hop is a trusted proxy. `nearest` is the last address the walk reached (the
    /// left-most trusted hop, or the peer with no header): infrastructure, never a client.
    Unknown { nearest: IpAddr },
}

impl ClientAddr {
    /// The client's address, when one is visible.
    pub fn known(self) -> Option<IpAddr> {
        match self {
            ClientAddr::Known(ip) => Some(ip),
            ClientAddr::Unknown { .. } => None,
        }
    }

    /// The address the walk ended on, known or not: what the loopback rules compare.
    pub fn nearest(self) -> IpAddr {
        match self {
            ClientAddr::Known(ip) | ClientAddr::Unknown { nearest: ip } => ip,
        }
    }
}

/// The `TRUSTED_PROXIES` list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    /// One list entry: a CIDR range (`10.0.0.0/8`, `::1/128`) or a plain address (`127.0.0.1`,
    /// a range of one).
    pub fn parse_entry(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(net.trunc());
        }
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR range"))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request from `peer` carrying these `X-Forwarded-For` values (in
    /// header order; several header lines are one list). The right-most hop that is not a
    /// trusted proxy, walking left from the peer; the peer itself when it is not trusted. A hop
    /// that is not an address stops the walk at the last address known (a trusted proxy wrote
    /// nonsense: nothing to its left can be believed), and so does the end of the header; if
    /// that address is a trusted proxy, the client is [`ClientAddr::Unknown`].
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = Option<&'a str>>,
    ) -> ClientAddr {
        let mut current = peer.to_canonical();
        if !self.contains(current) {
            return ClientAddr::Known(current);
        }
        let hops: Vec<Option<&str>> = forwarded_for
            .into_iter()
            .flat_map(|line| match line {
                Some(l) => l.split(',').map(Some).collect::<Vec<_>>(),
                None => vec![None],
            })
            .collect();
        for hop in hops.into_iter().rev() {
            match hop.and_then(parse_hop) {
                None => break,
                Some(ip) => {
                    current = ip;
                    if !self.contains(ip) {
                        return ClientAddr::Known(ip);
                    }
                }
            }
        }
        ClientAddr::Unknown { nearest: current }
    }

    /// [`Self::client_ip`] with the request's `X-Forwarded-For` headers.
    pub fn client_ip_of(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        self.client_ip(
            peer,
            headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.to_str().ok()),
        )
    }
}

/// One `X-Forwarded-For` hop: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn list(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            entries
                .iter()
                .map(|e| TrustedProxies::parse_entry(e).unwrap())
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_are_ranges_or_addresses_v4_and_v6() {
        let t = list(&[
            "10.0.0.0/8",
            "127.0.0.1",
            "::1/128",
            "127.0.0.1/32",
            "fd00::/8",
        ]);
        for inside in [
            "10.1.2.3",
            "10.255.255.255",
            "127.0.0.1",
            "::1",
            "fd12::5",
            "::ffff:10.9.9.9",
        ] {
            assert!(t.contains(ip(inside)), "{inside}");
        }
        for outside in ["11.0.0.1", "127.0.0.2", "::2", "fe80::1", "203.0.113.9"] {
            assert!(!t.contains(ip(outside)), "{outside}");
        }
        // Host bits set in a range are accepted and mean the range.
        assert_eq!(
            TrustedProxies::parse_entry("10.1.2.3/8").unwrap(),
            TrustedProxies::parse_entry("10.0.0.0/8").unwrap()
        );
        for bad in [
            "10.0.0.0/33",
            "localhost",
            "1.2.3",
            "::1/129",
            "",
            "10.0.0.0/",
        ] {
            assert!(TrustedProxies::parse_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn right_most_untrusted_hop_is_the_client() {
        let t = list(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let known = |s: &str| ClientAddr::Known(ip(s));
        let one = |h: &str| t.client_ip(peer, [Some(h)]);
        // nginx appended the real client; the client forged the left hops.
        assert_eq!(one("1.1.1.1, 203.0.113.9"), known("203.0.113.9"));
        assert_eq!(one("127.0.0.1, 203.0.113.9"), known("203.0.113.9"));
        // Two proxies in a row: skip both.
        assert_eq!(one("1.1.1.1, 203.0.113.9, 10.0.0.7"), known("203.0.113.9"));
        // Ports and brackets.
        assert_eq!(one("203.0.113.9:5555"), known("203.0.113.9"));
        assert_eq!(one("[2001:db8::1]:443"), known("2001:db8::1"));
        // Several header lines are one list, in order.
        assert_eq!(
            t.client_ip(peer, [Some("1.1.1.1"), Some("203.0.113.9")]),
            known("203.0.113.9")
        );
        // An untrusted peer's header is not read at all.
        assert_eq!(
            t.client_ip(ip("198.51.100.4"), [Some("203.0.113.9")]),
            known("198.51.100.4")
        );
        // No list: nothing is believed.
        assert_eq!(
            TrustedProxies::default().client_ip(peer, [Some("203.0.113.9")]),
            known("127.0.0.1")
        );
    }

    /// An ingress that replaced the header with a node address, a proxy that sent none, or a
    /// trusted proxy that wrote nonsense: no untrusted hop, so no client address.
    #[test]
    fn a_chain_of_trusted_hops_hides_the_client() {
        let t = list(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let one = |h: &str| t.client_ip(peer, [Some(h)]);
        let unknown = |s: &str| ClientAddr::Unknown { nearest: ip(s) };
        assert_eq!(one("10.20.30.40"), unknown("10.20.30.40"));
        assert_eq!(one("10.0.0.8, 10.0.0.7"), unknown("10.0.0.8"));
        assert_eq!(t.client_ip(peer, []), unknown("127.0.0.1"));
        assert_eq!(one("203.0.113.9, junk, 10.0.0.7"), unknown("10.0.0.7"));
        assert_eq!(one("10.20.30.40").known(), None);
        assert_eq!(one("203.0.113.9").known(), Some(ip("203.0.113.9")));
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u16; 8]>().prop_map(IpAddr::from),
        ]
    }

    fn trusted() -> TrustedProxies {
        list(&["10.0.0.0/8", "127.0.0.0/8", "::1/128"])
    }

    proptest! {
        /// Whatever the client writes to the left, a trusted chain resolves to the address the
        /// first proxy saw.
        #[test]
        fn forged_left_hops_never_change_the_client(
            forged in proptest::collection::vec(prop_oneof![any_ip().prop_map(|i| i.to_string()), ".{0,12}"], 0..6),
            real in any_ip(),
            chain in proptest::collection::vec(0u8..=255, 0..4),
        ) {
            let t = trusted();
            prop_assume!(!t.contains(real));
            let mut hops: Vec<String> = forged;
            hops.push(real.to_string());
            hops.extend(chain.iter().map(|b| format!("10.0.0.{b}")));
            let header = hops.join(", ");
            prop_assert_eq!(t.client_ip(ip("127.0.0.1"), [Some(header.as_str())]), ClientAddr::Known(real.to_canonical()));
        }

        /// A peer that is not a trusted proxy is the client, whatever its header says.
        #[test]
        fn untrusted_peers_are_taken_at_their_word(peer in any_ip(), header in ".{0,60}") {
            let t = trusted();
            prop_assume!(!t.contains(peer));
            prop_assert_eq!(t.client_ip(peer, [Some(header.as_str())]), ClientAddr::Known(peer.to_canonical()));
        }

        /// The answer is the peer or one of the hops; a known client is never a trusted proxy,
        /// and an unknown one is only reported when no untrusted address was reached.
        #[test]
        fn answer_is_a_known_address(header in ".{0,80}") {
            let t = trusted();
            let peer = ip("10.0.0.1");
            let got = t.client_ip(peer, [Some(header.as_str())]);
            let hops: Vec<IpAddr> = header.split(',').filter_map(parse_hop).collect();
            prop_assert!(got.nearest() == peer || hops.contains(&got.nearest()));
            match got {
                ClientAddr::Known(ip) => prop_assert!(!t.contains(ip)),
                ClientAddr::Unknown { nearest } => prop_assert!(t.contains(nearest)),
            }
        }
    }
}
