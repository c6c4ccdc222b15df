//! The load balancer as a real process: Debian's `nginx` running the compose cluster's own
//! `deploy/nginx/nginx.conf`, rendered for loopback (upstreams on the given replicas' ports, the
//! `vizora_replica` map keyed on their replica ids, a free listen port (see `ports`), its `/tmp/`
//! paths in a temp dir). Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nginx {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The configuration file docker-compose.yml mounts into the load balancer.
pub fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/nginx.conf")
}

fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "nginx".into())
}

/// `conf` with `gateway-N:3002` → `127.0.0.1:upstreams[N-1].0`, the `gateway-N` key of the
/// `vizora_replica` map (a line starting with it) → `upstreams[N-1].1` (compose's REPLICA_IDs are
/// the service names; the tests' are `r0`..), the listen port and `/tmp/` → `dir`.
pub fn render(conf: &str, upstreams: &[(u16, &str)], listen: u16, dir: &Path) -> String {
    let mut out = conf.replace("/tmp/", &format!("{}/", dir.display()));
    out = out.replace("listen 3002;", &format!("listen 127.0.0.1:{listen};"));
    for (i, (port, id)) in upstreams.iter().enumerate() {
        out = out.replace(
            &format!("server gateway-{}:3002", i + 1),
            &format!("server 127.0.0.1:{port}"),
        );
        let key = format!("gateway-{} ", i + 1);
        let mut keyed = false;
        out = out
            .lines()
            .map(|l| match l.trim_start().strip_prefix(&key) {
                Some(rest) => {
                    keyed = true;
                    let indent = &l[..l.len() - l.trim_start().len()];
                    format!("{indent}{id} {rest}\n")
                }
                None => format!("{l}\n"),
            })
            .collect();
        assert!(
            keyed,
            "nginx.conf's vizora_replica map names no gateway-{}",
            i + 1
        );
    }
    assert!(
        !out.contains("gateway-"),
        "nginx.conf names more upstreams than the test started"
    );
    out
}

impl Nginx {
    /// nginx in front of `replicas` (in order: the first is compose's `gateway-1`).
    pub async fn start(replicas: &[crate::Gateway]) -> Nginx {
        let upstreams: Vec<(u16, &str)> = replicas
            .iter()
            .map(|g| (g.port, g.opts.replica_id.as_str()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let conf = std::fs::read_to_string(config_path()).expect("deploy/nginx/nginx.conf");
        let conf_path = dir.path().join("nginx.conf");
        let (ports, child) = crate::ports::start_on_free_ports(1, "nginx", |p| {
            std::fs::write(&conf_path, render(&conf, &upstreams, p[0], dir.path())).unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("nginx.log"))
                .unwrap();
            Command::new(nginx_bin())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nginx (apt-get install nginx-light; scripts/test installs it)")
        })
        .await;
        let n = Nginx {
            port: ports[0],
            child: Some(child),
            dir,
        };
        let health = format!("{}/lb/health", n.url());
        let client = reqwest::Client::new();
        crate::eventually(Duration::from_secs(10), "nginx to listen", || {
            let (client, health) = (client.clone(), health.clone());
            async move {
                let r = client.get(health).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        n
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nginx.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM lets the master take its workers down with it.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- nginx log ----\n{}", self.logs());
        }
    }
}
