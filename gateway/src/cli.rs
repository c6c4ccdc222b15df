//! The command line: `serve` (default), `migrate`, `token device|user`, `demo`, `check-config`,
//! `seed`, `healthcheck`, and the hidden `pause` (preStop hook).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Exit code for configuration errors (EX_CONFIG-like; sysexits' EX_USAGE is 64).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "vizora-gateway",
    version,
    about = "Realtime Socket.IO gateway for Vizora signage fleets"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Socket.IO and the internal API (the default).
    Serve,
    /// Create the gateway's tables (and the Vizora subset where absent), then exit.
    Migrate,
    /// Mint a token with the configured secrets.
    Token {
        #[command(subcommand)]
        kind: TokenKind,
    },
    /// Embedded mode with a seeded organisation and simulated screens: the whole loop in a minute.
    Demo {
        /// Number of simulated screens.
        #[arg(long, default_value_t = 3)]
        screens: usize,
    },
    /// Load and validate the configuration, print problems, exit.
    CheckConfig,
    /// Insert load-test organisations `{prefix}-org-{k}` and devices `{prefix}-dev-{i}` (device
    /// `i` in organisation `i % orgs`) into DATABASE_URL, idempotently. Needs no secrets.
    Seed {
        #[arg(long, default_value = "load")]
        prefix: String,
        #[arg(long, default_value_t = 10)]
        orgs: usize,
        #[arg(long, default_value_t = 1000)]
        devices: usize,
    },
    /// Probe the local readiness route: exit 0 on HTTP 200, 1 otherwise (container HEALTHCHECK).
    Healthcheck {
        /// Target URL (plain http); default `http://127.0.0.1:$PORT/api/health/ready`.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this long, e.g. 5s.
        #[arg(long, default_value = "5s", value_parser = parse_ttl)]
        timeout: Duration,
    },
    /// Wait, then exit 0: the Kubernetes preStop pause in an image without a shell or `sleep`.
    #[command(hide = true)]
    Pause {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

#[derive(Subcommand)]
enum TokenKind {
    /// A device token (`type: "device"`, signed with DEVICE_JWT_SECRET).
    Device {
        #[arg(long)]
        device_id: String,
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "")]
        identifier: String,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// A dashboard user token (`type: "user"`, signed with JWT_SECRET).
    User {
        #[arg(long)]
        user_id: String,
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "admin")]
        role: String,
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

/// `90s`, `30m`, `1h`, `7d` (or plain seconds).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}`: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn load_config() -> Result<Config, ExitCode> {
    Config::from_env().map_err(|errs| {
        for e in &errs.0 {
            eprintln!("config error: {e}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// The command line. `demo` runs the seeded demo: it lives with the binary, not in the library
/// (it drives the gateway through a Socket.IO client), so the binary passes it in.
pub async fn main<D, F>(demo: D) -> ExitCode
where
    D: FnOnce(usize) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let cfg = match load_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            crate::telemetry::init_logging(cfg.log_json);
            raise_open_file_limit();
            let listener = match tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)).await
            {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("cannot listen on {}:{}: {e}", cfg.host, cfg.port);
                    return ExitCode::FAILURE;
                }
            };
            let token = CancellationToken::new();
            report(
                crate::shutdown::until_signal(token.clone(), crate::app::run(cfg, listener, token))
                    .await,
            )
        }
        Command::Migrate => {
            let cfg = match load_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            crate::telemetry::init_logging(cfg.log_json);
            let cfg = Config {
                db_migrate: true,
                ..cfg
            };
            report(
                crate::app::open_database(&cfg)
                    .await
                    .map(|_| eprintln!("migrations applied")),
            )
        }
        Command::CheckConfig => match load_config() {
            Ok(_) => {
                eprintln!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Token { kind } => token(kind),
        Command::Seed {
            prefix,
            orgs,
            devices,
        } => report(seed(&prefix, orgs, devices).await),
        Command::Pause { seconds } => {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            ExitCode::SUCCESS
        }
        Command::Healthcheck { url, timeout } => {
            let url = url.unwrap_or_else(crate::healthcheck::default_url);
            match crate::healthcheck::probe(&url, timeout).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {url}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { screens } => {
            crate::telemetry::init_logging(false);
            report(demo(screens).await)
        }
    }
}

/// Seeding needs only the database: fill in throwaway secrets so the rest of the configuration
/// (DATABASE_URL, DB_MIGRATE) loads and is validated as `serve` would.
async fn seed(prefix: &str, orgs: usize, devices: usize) -> anyhow::Result<()> {
    let placeholder = "seed-needs-no-secret-".repeat(2);
    let cfg = Config::load(|k| {
        std::env::var(k).ok().or_else(|| {
            matches!(
                k,
                "DEVICE_JWT_SECRET" | "JWT_SECRET" | "INTERNAL_API_SECRET"
            )
            .then(|| placeholder.clone())
        })
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = crate::app::open_database(&cfg).await?;
    crate::seed::run(&db, prefix, orgs, devices).await?;
    eprintln!("seeded {orgs} organisations and {devices} devices with prefix `{prefix}`");
    Ok(())
}

/// Every connection is a file descriptor, and the usual soft limit (1024) would cap a replica at
/// about a thousand screens: raise it to the hard limit, as servers commonly do, and log both.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => tracing::info!(
            open_files = now,
            "Open-file limit raised to the hard limit."
        ),
        Err(e) => tracing::warn!(error = %e, "Could not raise the open-file limit."),
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(kind: TokenKind) -> ExitCode {
    // Only the secrets matter here; read them without requiring the rest of the configuration.
    let secret = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|s| s.len() >= crate::config::MIN_SECRET_BYTES)
    };
    let minted = match kind {
        TokenKind::Device {
            device_id,
            org,
            identifier,
            ttl,
        } => match secret("DEVICE_JWT_SECRET") {
            None => Err("DEVICE_JWT_SECRET must be set (at least 32 bytes)".to_string()),
            Some(s) => crate::auth::mint::device_token(
                &s,
                &device_id,
                &identifier,
                &org,
                ttl.as_secs() as i64,
            )
            .map_err(|e| e.to_string()),
        },
        TokenKind::User {
            user_id,
            org,
            role,
            ttl,
        } => match secret("JWT_SECRET") {
            None => Err("JWT_SECRET must be set (at least 32 bytes)".to_string()),
            Some(s) => {
                crate::auth::mint::user_token(&s, &user_id, &org, &role, ttl.as_secs() as i64)
                    .map_err(|e| e.to_string())
            }
        },
    };
    match minted {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
