//! Logs (tracing, text or JSON) and metrics (OpenTelemetry instruments exported in Prometheus
//! text through opentelemetry-prometheus). Every label takes values from a fixed set: event
//! names, results, reasons, transports — never device ids, socket ids or addresses.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// Installs the global tracing subscriber (once; later calls are ignored, which suits tests).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,sqlx=warn,sea_orm=warn,socketioxide=warn,engineioxide=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Live gauges sampled at scrape time.
#[derive(Default)]
pub struct Gauges {
    pub device_sockets: AtomicI64,
    pub dashboard_sockets: AtomicI64,
    pub pending_transitions: AtomicI64,
    pub tcp_connections: AtomicI64,
    /// Impression outbox length (cluster-wide), as last seen by this replica's drain.
    pub impressions_buffered: AtomicI64,
    /// 1 from the moment this replica starts its SIGTERM drain.
    pub draining: AtomicI64,
    /// 1 while this replica is fenced off (cut off from Redis while its peers reach it).
    pub fenced: AtomicI64,
    /// 1 while this replica sheds device sockets to rebalance the cluster.
    pub rebalancing: AtomicI64,
    /// This replica's device sockets over the mean of the ready replicas, in millionths (0: no
    /// mean known: alone, embedded mode, or the store unreachable).
    pub rebalance_load_ratio_micros: AtomicI64,
    /// The connection cap in force (`MAX_CONNECTIONS`): the capacity alert divides by it.
    pub connection_cap: AtomicI64,
    /// 1 while the last probe of Redis answered, 0 while not, -1 without Redis (not exported).
    pub redis_up: AtomicI64,
    /// 1 while the last probe of the database answered, 0 while not.
    pub database_up: AtomicI64,
}

/// The gateway's instruments.
#[derive(Clone)]
pub struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    pub gauges: Arc<Gauges>,
    connections: Counter<u64>,
    tcp: Counter<u64>,
    refusals: Counter<u64>,
    events: Counter<u64>,
    transitions: Counter<u64>,
    commands: Counter<u64>,
    http: Counter<u64>,
    store_errors: Counter<u64>,
    notifications: Counter<u64>,
    heartbeat_seconds: Histogram<f64>,
    impressions_written: Counter<u64>,
    impressions_dropped: Counter<u64>,
    drain_closed: Counter<u64>,
    rebalance_closed: Counter<u64>,
    fence_events: Counter<u64>,
    fence_checks: Counter<u64>,
    unknown_client: Counter<u64>,
    delivery_confirmations: Histogram<f64>,
    delivery_fallbacks: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Result<Metrics, String> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .map_err(|e| e.to_string())?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("vizora_gateway");
        let gauges = Arc::new(Gauges::default());
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_sockets")
            .with_description("Live Socket.IO connections on this replica, by principal")
            .with_callback(move |o| {
                o.observe(
                    g.device_sockets.load(Ordering::Relaxed),
                    &[KeyValue::new("principal", "device")],
                );
                o.observe(
                    g.dashboard_sockets.load(Ordering::Relaxed),
                    &[KeyValue::new("principal", "dashboard")],
                );
            })
            .build();
        meter
            .u64_observable_counter("vizora_gateway_adapter_messages_dropped")
            .with_description(
                "Cross-replica messages dropped because the adapter's receive buffer was full (a dashboard may have missed a status change)",
            )
            .with_callback(|o| o.observe(crate::store::pubsub::adapter_messages_dropped(), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_pending_transitions")
            .with_description("Presence transitions waiting to be written to the database")
            .with_callback(move |o| o.observe(g.pending_transitions.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_tcp_connections")
            .with_description("Open TCP connections on this replica (any protocol state)")
            .with_callback(move |o| o.observe(g.tcp_connections.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_impressions_buffered")
            .with_description("Impressions acknowledged but not yet written to the database")
            .with_callback(move |o| o.observe(g.impressions_buffered.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_draining")
            .with_description(
                "1 while this replica drains (readiness 503, handshakes refused, sockets handed over)",
            )
            .with_callback(move |o| o.observe(g.draining.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_fenced")
            .with_description(
                "1 while this replica is fenced: cut off from Redis while its peers reach it (readiness 503, handshakes refused, sockets moved)",
            )
            .with_callback(move |o| o.observe(g.fenced.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_rebalancing")
            .with_description(
                "1 while this replica sheds device sockets to rebalance the cluster (handshakes answered 503 server_busy)",
            )
            .with_callback(move |o| o.observe(g.rebalancing.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .f64_observable_gauge("vizora_gateway_rebalance_load_ratio")
            .with_description(
                "This replica's device sockets over the mean of the ready replicas (0 while unknown)",
            )
            .with_callback(move |o| {
                let micros = g.rebalance_load_ratio_micros.load(Ordering::Relaxed);
                o.observe(micros as f64 / 1e6, &[])
            })
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_connection_cap")
            .with_description("Socket.IO connections this replica accepts (MAX_CONNECTIONS)")
            .with_callback(move |o| o.observe(g.connection_cap.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("vizora_gateway_dependency_up")
            .with_description(
                "1 while the last probe of the dependency answered (readiness does not follow it)",
            )
            .with_callback(move |o| {
                for (name, v) in [("redis", &g.redis_up), ("database", &g.database_up)] {
                    let v = v.load(Ordering::Relaxed);
                    if v >= 0 {
                        o.observe(v, &[KeyValue::new("dependency", name)]);
                    }
                }
            })
            .build();
        let counter = |name: &'static str, desc: &'static str| {
            meter.u64_counter(name).with_description(desc).build()
        };
        Ok(Metrics {
            connections: counter(
                "vizora_gateway_connections",
                "Socket.IO connection attempts by principal and result",
            ),
            tcp: counter(
                "vizora_gateway_tcp_closed",
                "TCP connections refused at accept or closed by a timer, by reason",
            ),
            refusals: counter(
                "vizora_gateway_handshake_refusals",
                "Engine.IO handshakes refused at the edge, by reason",
            ),
            events: counter(
                "vizora_gateway_events",
                "Client events by event name and result",
            ),
            transitions: counter(
                "vizora_gateway_presence_transitions",
                "Presence transitions by status and source",
            ),
            commands: counter("vizora_gateway_commands", "Commands accepted, by delivery"),
            http: counter(
                "vizora_gateway_http_requests",
                "Internal HTTP requests by route and status class",
            ),
            store_errors: counter(
                "vizora_gateway_store_errors",
                "Failed Redis or database operations, by store and operation",
            ),
            notifications: counter(
                "vizora_gateway_notifications",
                "Offline/online notifications created, by type",
            ),
            impressions_written: counter(
                "vizora_gateway_impressions_written",
                "Impression rows written to the database",
            ),
            impressions_dropped: counter(
                "vizora_gateway_impressions_dropped",
                "Impressions the database refused for good, by reason",
            ),
            drain_closed: counter(
                "vizora_gateway_drain_closed",
                "Socket transports the drain closed so their clients reconnect to another replica",
            ),
            rebalance_closed: counter(
                "vizora_gateway_rebalance_closed",
                "Device socket transports closed to rebalance the cluster (their clients reconnect to another replica)",
            ),
            fence_events: counter(
                "vizora_gateway_fence_events",
                "This replica fenced itself off (event=fence) or served again (event=unfence)",
            ),
            fence_checks: counter(
                "vizora_gateway_fence_checks",
                "Witness checks after Redis failed for the fencing bound, by outcome (fence, shared_outage, no_witness)",
            ),
            unknown_client: counter(
                "vizora_gateway_handshakes_unknown_client",
                "Handshakes whose client address the trusted proxies hid (per-IP limits skipped)",
            ),
            delivery_confirmations: meter
                .f64_histogram("vizora_gateway_delivery_confirmation_duration")
                .with_unit("s")
                .with_description(
                    "Time from relaying a delivery to the owning replica's answer, by outcome",
                )
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .build(),
            delivery_fallbacks: counter(
                "vizora_gateway_delivery_fallbacks",
                "Relayed deliveries the owning replica did not confirm, queued instead, by reason",
            ),
            heartbeat_seconds: meter
                .f64_histogram("vizora_gateway_heartbeat_duration")
                .with_unit("s")
                .with_description("Time to process a heartbeat")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                ])
                .build(),
            registry,
            _provider: provider,
            gauges,
        })
    }

    pub fn connection(&self, principal: &'static str, result: &'static str) {
        self.connections.add(
            1,
            &[
                KeyValue::new("principal", principal),
                KeyValue::new("result", result),
            ],
        );
    }
    /// A TCP connection refused at accept (`max_tcp_connections`, `max_tcp_connections_per_ip`)
    /// or closed by a timer (`header_timeout`, `idle_timeout`).
    pub fn tcp(&self, reason: &'static str) {
        self.tcp.add(1, &[KeyValue::new("reason", reason)]);
    }
    pub fn refusal(&self, reason: &'static str) {
        self.refusals.add(1, &[KeyValue::new("reason", reason)]);
    }
    pub fn event(&self, event: &'static str, result: &'static str) {
        self.events.add(
            1,
            &[
                KeyValue::new("event", event),
                KeyValue::new("result", result),
            ],
        );
    }
    pub fn transition(&self, online: bool, source: &'static str) {
        let status = if online { "online" } else { "offline" };
        self.transitions.add(
            1,
            &[
                KeyValue::new("status", status),
                KeyValue::new("source", source),
            ],
        );
    }
    pub fn command(&self, delivery: &'static str) {
        self.commands.add(1, &[KeyValue::new("delivery", delivery)]);
    }
    pub fn http(&self, route: &str, status: u16) {
        let class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http.add(
            1,
            &[
                KeyValue::new("route", route.to_string()),
                KeyValue::new("status", class),
            ],
        );
    }
    pub fn store_error(&self, store: &'static str, op: &'static str) {
        self.store_errors
            .add(1, &[KeyValue::new("store", store), KeyValue::new("op", op)]);
    }
    pub fn notification(&self, kind: &'static str) {
        self.notifications.add(1, &[KeyValue::new("type", kind)]);
    }
    pub fn impressions_written(&self, n: u64) {
        self.impressions_written.add(n, &[]);
    }
    /// `reason` is one of a fixed set: `foreign_key`, `constraint`, `invalid_value`, `malformed`.
    pub fn impression_dropped(&self, reason: &'static str) {
        self.impressions_dropped
            .add(1, &[KeyValue::new("reason", reason)]);
    }
    pub fn drain_closed(&self, n: u64) {
        self.drain_closed.add(n, &[]);
    }
    pub fn rebalance_closed(&self, n: u64) {
        self.rebalance_closed.add(n, &[]);
    }
    /// `outcome`: `written`, `queued`, `declined`, `timeout`.
    pub fn delivery_confirmation(&self, outcome: &'static str, secs: f64) {
        self.delivery_confirmations
            .record(secs, &[KeyValue::new("outcome", outcome)]);
    }
    /// `reason`: `declined` or `timeout`.
    pub fn delivery_fallback(&self, reason: &'static str) {
        self.delivery_fallbacks
            .add(1, &[KeyValue::new("reason", reason)]);
    }
    /// `event`: `fence` or `unfence`.
    pub fn fence_event(&self, event: &'static str) {
        self.fence_events.add(1, &[KeyValue::new("event", event)]);
    }
    /// `outcome`: `fence`, `shared_outage` or `no_witness` (`service::fence::Verdict`).
    pub fn fence_check(&self, outcome: &'static str) {
        self.fence_checks
            .add(1, &[KeyValue::new("outcome", outcome)]);
    }
    pub fn unknown_client(&self) {
        self.unknown_client.add(1, &[]);
    }
    pub fn heartbeat_duration(&self, secs: f64) {
        self.heartbeat_seconds.record(secs, &[]);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = prometheus::Encoder::encode(&enc, &self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "Metrics encoding failed.");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
