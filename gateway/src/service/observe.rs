//! What the edge reports about itself: counts and gauges recorded through the gateway, so
//! `socket/` and `http/` never hold a metric instrument (the layering test in `service/mod.rs`
//! keeps it so).

use std::sync::atomic::{AtomicI64, Ordering};

use super::Gateway;

impl Gateway {
    /// A client event's outcome (`vizora_socket_events_total`).
    pub fn count_event(&self, event: &'static str, outcome: &'static str) {
        self.metrics.event(event, outcome);
    }

    /// A handshake's outcome, by principal kind.
    pub fn count_connection(&self, kind: &'static str, outcome: &'static str) {
        self.metrics.connection(kind, outcome);
    }

    /// A handshake refused at the edge (rate, cap, drain, origin).
    pub fn count_refusal(&self, reason: &'static str) {
        self.metrics.refusal(reason);
    }

    /// A handshake whose client address the trusted proxies hid.
    pub fn count_unknown_client(&self) {
        self.metrics.unknown_client();
    }

    /// The connection cap in force, for the capacity alert's ratio.
    pub fn set_connection_cap(&self, cap: usize) {
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        self.metrics
            .gauges
            .connection_cap
            .store(cap, Ordering::Relaxed);
    }

    /// A command the internal API could not hand over.
    pub fn count_command(&self, delivery: &'static str) {
        self.metrics.command(delivery);
    }

    /// An HTTP response, by matched route template and status.
    pub fn count_http(&self, route: &str, status: u16) {
        self.metrics.http(route, status);
    }

    /// A socket entered the namespace (the connected-sockets gauges).
    pub fn socket_opened(&self, device: bool) {
        self.socket_gauge(device).fetch_add(1, Ordering::Relaxed);
    }

    /// A socket counted by `socket_opened` left.
    pub fn socket_closed(&self, device: bool) {
        self.socket_gauge(device).fetch_sub(1, Ordering::Relaxed);
    }

    fn socket_gauge(&self, device: bool) -> &AtomicI64 {
        let g = &self.metrics.gauges;
        if device {
            &g.device_sockets
        } else {
            &g.dashboard_sockets
        }
    }

    /// Socket transports the drain is about to close (drain progress on the dashboard).
    pub fn count_drain_closed(&self, sockets: usize) {
        self.metrics.drain_closed(sockets as u64);
    }

    /// The Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}
