//! Ports for the servers the tests start as processes, without attaching a test to another
//! test's server.
//!
//! A port from [`free_port`] is only free until somebody binds it: between the probe and the
//! child's own bind, a server of a test running in parallel may take it. The child then fails to
//! bind and exits, while the other test's server answers on "our" port — and a harness that
//! waited for "something answers on the port" would carry on against the wrong server. So a
//! server counts as started only once the very process we spawned holds a socket listening on
//! each of its ports (read from `/proc`, like `ss -ltnp`); if it exits first, it is started again
//! on fresh ports. Letting the children bind port 0 instead does not fit here: redis-server,
//! Sentinel, nginx and s3rver take their ports from the command line or configuration, and the
//! gateway's `PUBLIC_URL` must name its port before it starts.

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::Duration;

/// How long a process may take from spawn to listening (the gateway binds after loading its
/// configuration; nginx retries a taken port for about 2.5 s before it gives up).
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried before giving up: more than one loss in a row means something else is wrong.
const ATTEMPTS: usize = 5;

/// A candidate port on loopback (bound and released). Only a candidate: start servers on it with
/// [`start_on_free_ports`], which notices when another process took it first.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process the harness started (std or tokio).
pub trait Process {
    /// Its pid, while it has not been reaped.
    fn pid(&self) -> Option<u32>;
    /// Kills (if still running) and reaps it.
    fn reap(&mut self);
}

impl Process for std::process::Child {
    fn pid(&self) -> Option<u32> {
        Some(self.id())
    }
    fn reap(&mut self) {
        let _ = self.kill();
        let _ = self.wait();
    }
}

impl Process for tokio::process::Child {
    fn pid(&self) -> Option<u32> {
        self.id()
    }
    fn reap(&mut self) {
        let _ = self.start_kill();
        let _ = self.try_wait();
    }
}

/// The inodes of the TCP sockets listening on `port` (any local address, IPv4 or IPv6).
fn listening_inodes(port: u16) -> HashSet<u64> {
    let port = format!(":{port:04X}");
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // `sl local_address rem_address st … uid timeout inode`; state 0A is LISTEN.
        for fields in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            if fields.len() > 9
                && fields[1].ends_with(&port)
                && fields[3] == "0A"
                && let Ok(inode) = fields[9].parse()
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Whether process `pid` itself holds a socket listening on `port`.
pub fn listens(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|i| i.parse::<u64>().ok())
                .is_some_and(|i| inodes.contains(&i))
        })
    })
}

/// Whether `pid` is still running (a zombie has exited, it only waits to be reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state …`: comm may contain spaces and parentheses, the state follows the last `)`.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Why a spawned server is not listening.
#[derive(Debug, PartialEq, Eq)]
pub enum NotListening {
    /// It exited first: typically a port was taken between the probe and its bind.
    Exited,
    /// Still running, but not listening on every port after [`BIND_TIMEOUT`].
    TimedOut,
}

/// Waits until `child` listens on every one of `ports`.
pub async fn wait_listening(child: &impl Process, ports: &[u16]) -> Result<(), NotListening> {
    let Some(pid) = child.pid() else {
        return Err(NotListening::Exited);
    };
    let deadline = tokio::time::Instant::now() + BIND_TIMEOUT;
    loop {
        if ports.iter().all(|p| listens(pid, *p)) {
            return Ok(());
        }
        if !running(pid) {
            return Err(NotListening::Exited);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(NotListening::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a server on `n` free ports: `spawn` gets the ports and returns the process, and it is
/// started again on fresh ports when it exits before it listens on all of them (another process
/// took one first). Returns the ports it holds and the process.
pub async fn start_on_free_ports<C: Process>(
    n: usize,
    what: &str,
    mut spawn: impl FnMut(&[u16]) -> C,
) -> (Vec<u16>, C) {
    for _ in 0..ATTEMPTS {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut child = spawn(&ports);
        match wait_listening(&child, &ports).await {
            Ok(()) => return (ports, child),
            Err(NotListening::Exited) => child.reap(),
            Err(NotListening::TimedOut) => {
                child.reap();
                panic!("{what} did not listen on {ports:?} within {BIND_TIMEOUT:?}");
            }
        }
    }
    panic!("{what} exited before listening, {ATTEMPTS} times on fresh ports (see its log)");
}

/// Starts a server again on the ports it had (a restart: clients know those ports). A port that
/// is still being released, or was taken meanwhile, is retried for a while; a server that never
/// gets its ports back fails the test rather than leave it talking to someone else's server.
pub async fn start_on_ports<C: Process>(
    ports: &[u16],
    what: &str,
    mut spawn: impl FnMut(&[u16]) -> C,
) -> C {
    for _ in 0..ATTEMPTS * 4 {
        let mut child = spawn(ports);
        match wait_listening(&child, ports).await {
            Ok(()) => return child,
            Err(NotListening::Exited) => child.reap(),
            Err(NotListening::TimedOut) => {
                child.reap();
                panic!("{what} did not listen on {ports:?} within {BIND_TIMEOUT:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} could not listen on {ports:?} again: another process holds a port");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_in_its_own_process_only() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listens(std::process::id(), port));
        assert!(running(std::process::id()));
        drop(l);
        assert!(!listens(std::process::id(), port));
        // pid 1 is not this process: it does not hold this test's sockets.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!listens(1, l.local_addr().unwrap().port()));
    }

    /// The race itself: the first port handed out is taken by someone else (here, this test)
    /// before the server binds it. The old harness would have waited for "something answers on
    /// the port" and carried on against the wrong listener; this one starts the server again on
    /// a fresh port and hands back the port the server really holds.
    #[tokio::test]
    async fn a_server_whose_port_was_taken_starts_again_on_another() {
        let mut taken: Vec<TcpListener> = Vec::new();
        let (ports, mut child) = start_on_free_ports(1, "redis-server", |p| {
            if taken.is_empty() {
                taken.push(TcpListener::bind(("127.0.0.1", p[0])).unwrap());
            }
            std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &p[0].to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("redis-server")
        })
        .await;
        let stolen = taken[0].local_addr().unwrap().port();
        assert_ne!(ports[0], stolen, "not the port someone else holds");
        assert!(listens(child.id(), ports[0]));
        assert!(!listens(child.id(), stolen));
        child.reap();
    }
}
