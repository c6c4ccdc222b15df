//! `vizora-swarm`: many device connections from one process, spread over 127.0.0.x source
//! addresses (one source address reaches about 28,000 connections to one destination). It
//! speaks just enough Socket.IO v4 over websocket: CONNECT with `auth.token`, heartbeats with
//! acks, PONGs, and it counts commands and server disconnects. It prints the figures that
//! `loadtest/bench.sh` puts into BENCHMARKS.md: connect rate and latency, heartbeat ack
//! percentiles, and — given the gateway's pid — resident memory per connection and CPU per
//! 1,000 heartbeats. `--cycles N` turns it into a churn soak (connect, heartbeat, all close).

mod proc_stat;
mod session;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Clone)]
#[command(
    name = "vizora-swarm",
    about = "Socket.IO device swarm for Vizora Gateway benchmarks"
)]
pub struct Args {
    /// Gateway addresses (host:port of replicas or a load balancer), comma separated; device k
    /// connects to address k mod n.
    #[arg(long, default_value = "127.0.0.1:3002", value_delimiter = ',')]
    pub addr: Vec<SocketAddr>,
    /// Devices to connect (`{prefix}-dev-{i}`, seeded by `vizora-gateway seed`).
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    #[arg(long, default_value = "load")]
    pub prefix: String,
    #[arg(long, default_value_t = 10)]
    pub orgs: usize,
    /// Connects started per second during the ramp.
    #[arg(long, default_value_t = 1000)]
    pub ramp_per_s: u32,
    /// Heartbeat interval per device; 0 = idle sockets (memory measurement).
    #[arg(long, default_value_t = 15000)]
    pub heartbeat_ms: u64,
    /// Seconds to hold the fleet after the ramp.
    #[arg(long, default_value_t = 30)]
    pub hold_s: u64,
    /// Number of source addresses, 127.0.0.2 upwards.
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// The gateway's pid, for RSS and CPU figures from /proc.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Touch `PATH.hold` when the hold starts and `PATH.end` when it ends, so a script can take
    /// its own readings (database counters) over exactly the steady phase.
    #[arg(long)]
    pub mark: Option<std::path::PathBuf>,
    /// Churn soak: repeat connect → hold → close-all this many times, printing RSS after each.
    #[arg(long, default_value_t = 1)]
    pub cycles: u32,
    /// A device whose connection is lost reconnects to the next address (socket.io-client's
    /// backoff), and the time it took to be connected again is reported: the killed-replica
    /// recovery figure.
    #[arg(long)]
    pub reconnect: bool,
    /// With `--reconnect`: addresses that take part only in reconnects (a replica that joins the
    /// balancer after the ramp). A device that lost its connection, or whose handshake was
    /// refused, goes on round-robin over `--addr` and these, as a balancer would send it.
    #[arg(long, value_delimiter = ',')]
    pub join_addr: Vec<SocketAddr>,
}

/// Shared counters; latencies are collected per task and merged at the end of a cycle.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub acks: AtomicU64,
    pub ack_errors: AtomicU64,
    pub commands: AtomicU64,
    pub server_disconnects: AtomicU64,
    /// Connected sockets whose transport was lost (with `--reconnect`).
    pub lost: AtomicU64,
    /// Of those, connected again.
    pub recovered: AtomicU64,
}

fn mark(args: &Args, what: &str) {
    if let Some(p) = &args.mark {
        let _ = std::fs::write(p.with_extension(what), b"");
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret = std::env::var("DEVICE_JWT_SECRET")
        .map_err(|_| anyhow::anyhow!("DEVICE_JWT_SECRET (the gateway's) must be set"))?;
    anyhow::ensure!(args.orgs > 0, "--orgs must be at least 1");
    anyhow::ensure!(args.sources > 0, "--sources must be at least 1");
    anyhow::ensure!(!args.addr.is_empty(), "--addr: at least one address");
    let base_rss = args.gateway_pid.and_then(proc_stat::rss_kib);
    if let Some(kib) = base_rss {
        println!("gateway RSS before: {kib} KiB");
    }
    for cycle in 1..=args.cycles {
        run_cycle(&args, &secret, cycle, base_rss).await?;
    }
    Ok(())
}

async fn run_cycle(
    args: &Args,
    secret: &str,
    cycle: u32,
    base_rss: Option<u64>,
) -> anyhow::Result<()> {
    let counters = Arc::new(Counters::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::with_capacity(args.devices);
    let ramp_started = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.ramp_per_s.max(1)));
    let mut next = tokio::time::Instant::now();
    for k in 0..args.devices {
        let i = args.offset + k;
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (k % args.sources as usize) as u8,
        ));
        let dev = session::Device {
            id: format!("{}-dev-{i}", args.prefix),
            org: format!("{}-org-{}", args.prefix, i % args.orgs),
            index: i,
        };
        let token = session::token(secret, &dev)?;
        let target = session::Target {
            addrs: args.addr.clone(),
            again: args.addr.iter().chain(&args.join_addr).copied().collect(),
            first: k % args.addr.len(),
            source,
            reconnect: args.reconnect,
        };
        tasks.push(tokio::spawn(session::run(
            target,
            dev,
            token,
            args.heartbeat_ms,
            counters.clone(),
            stop.clone(),
        )));
        next += gap;
        tokio::time::sleep_until(next).await;
    }
    // Wait for the ramp to settle: every device connected or given up.
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while (counters.connected.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed))
        < args.devices as u64
        && Instant::now() < settle_deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp = ramp_started.elapsed().as_secs_f64();
    let connected = counters.connected.load(Ordering::Relaxed);
    println!(
        "cycle {cycle}: connected {connected}/{} in {ramp:.1} s ({:.0}/s), {} handshake refusals retried, {} gave up",
        args.devices,
        connected as f64 / ramp,
        counters.refused.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
    );
    mark(args, "hold");
    let cpu0 = args.gateway_pid.and_then(proc_stat::cpu_seconds);
    let acks0 = counters.acks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    let acks = counters.acks.load(Ordering::Relaxed) - acks0;
    mark(args, "end");
    println!("cycle {cycle}: {acks} heartbeats acknowledged during the hold");
    if let (Some(pid), Some(base)) = (args.gateway_pid, base_rss)
        && let Some(now) = proc_stat::rss_kib(pid)
    {
        println!(
            "cycle {cycle}: gateway RSS {now} KiB with {connected} sockets: {:.1} KiB per connection",
            now.saturating_sub(base) as f64 / connected.max(1) as f64
        );
    }
    if let (Some(pid), Some(c0)) = (args.gateway_pid, cpu0)
        && let Some(c1) = proc_stat::cpu_seconds(pid)
        && acks > 0
    {
        println!(
            "cycle {cycle}: gateway CPU {:.2} s for {acks} heartbeats: {:.3} s per 1,000",
            c1 - c0,
            (c1 - c0) * 1000.0 / acks as f64
        );
    }
    stop.cancel();
    let mut lat = Vec::new();
    let mut fan = Vec::new();
    let mut recovery = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l.ack_us);
            fan.extend(l.fanout_us);
            recovery.extend(l.recovery_us);
        }
    }
    recovery.sort_unstable();
    let lost = counters.lost.load(Ordering::Relaxed);
    if lost > 0 {
        let s = |p: f64| {
            let i = ((recovery.len() as f64 * p) as usize).min(recovery.len().saturating_sub(1));
            recovery.get(i).map_or(f64::NAN, |us| *us as f64 / 1e6)
        };
        println!(
            "cycle {cycle}: {lost} sockets lost their replica, {} back online elsewhere; recovery p50 {:.2} s, p99 {:.2} s, max {:.2} s",
            counters.recovered.load(Ordering::Relaxed),
            s(0.5),
            s(0.99),
            s(1.0)
        );
    }
    lat.sort_unstable();
    fan.sort_unstable();
    if !fan.is_empty() {
        println!(
            "cycle {cycle}: {} broadcast deliveries; fan-out p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            fan.len(),
            pct(&fan, 0.5),
            pct(&fan, 0.99),
            pct(&fan, 1.0)
        );
    }
    if !lat.is_empty() {
        println!(
            "cycle {cycle}: {} heartbeat acks ({:.0}/s over the hold), {} errors; ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            acks as f64 / args.hold_s.max(1) as f64,
            counters.ack_errors.load(Ordering::Relaxed),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
    }
    println!(
        "cycle {cycle}: {} commands received, {} server disconnects",
        counters.commands.load(Ordering::Relaxed),
        counters.server_disconnects.load(Ordering::Relaxed)
    );
    if args.cycles > 1 {
        // Let the gateway finish the disconnects before reading its memory.
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(kib) = args.gateway_pid.and_then(proc_stat::rss_kib) {
            println!("cycle {cycle}: gateway RSS after all sockets closed: {kib} KiB");
        }
    }
    Ok(())
}
