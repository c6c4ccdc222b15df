//! Redis Cluster on loopback: six `redis-server --cluster-enabled yes` nodes on free ports (see
//! `ports`), joined by `redis-cli --cluster create … --cluster-replicas 1` into three primaries
//! with one replica each. The nodes persist like production (`--appendonly yes`) in temp dirs
//! of their own, and are SIGKILLed on drop. `--cluster-node-timeout 2000` makes a killed
//! primary's replica take over within a few seconds ([`RedisCluster::kill9_primary_of`],
//! [`RedisCluster::wait_failover`]).
//!
//! The harness talks to the nodes with plain connections and follows slots itself
//! ([`RedisCluster::cmd`] goes to the primary serving the key's slot and follows MOVED/ASK), so
//! it does not depend on a cluster client: the gateway's own cluster client is what the tests
//! check.
//!
//! [`RedisCluster::start_with`] runs the cluster the way managed services do: a password on
//! every node (`requirepass`, and `masterauth` for the replicas), and TLS (`tls-cluster` and
//! `tls-replication`, so the bus and the replication links are TLS too). Each TLS node also
//! keeps its plain port, which the harness and `redis-cli --cluster create` use; with
//! `tls-cluster yes` Redis 7 names the TLS ports to TLS clients (`CLUSTER SLOTS`, `MOVED`) and the
//! plain ports to plain ones, so the gateway, given the TLS seeds, only ever sees TLS ports
//! ([`RedisCluster::slot_ports_over_tls`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use redis::IntoConnectionInfo;
use redis::aio::MultiplexedConnection;

use crate::tls::TestCerts;

/// Slots of a Redis Cluster.
pub const SLOTS: u32 = 16384;
/// `--cluster-node-timeout`: a primary unreachable this long is failed over.
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// How long the cluster may take to form, and a failover to finish.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

fn bin(env: &str, default: &str) -> PathBuf {
    std::env::var(env)
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(default))
}

/// How [`RedisCluster::start_with`] runs the nodes: by default like [`RedisCluster::start`] (no
/// password, no TLS).
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    password: Option<String>,
    tls: Option<TlsFiles>,
}

/// The certificate files of [`TestCerts`] (read by each node at start).
#[derive(Clone, Debug)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl ClusterOptions {
    /// Every node requires `password` from its clients (`--requirepass`) and its replica sends
    /// it to its primary (`--masterauth`). The harness's own connections send it too.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    /// Every node also listens with TLS (server certificate from `certs`, clients not
    /// authenticated), and the cluster bus and replication run over TLS. `certs` must outlive
    /// the start only: the nodes read the files once.
    pub fn tls(mut self, certs: &TestCerts) -> Self {
        self.tls = Some(TlsFiles {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            ca: certs.ca_cert.clone(),
        });
        self
    }
}

/// One `redis-server` of the cluster.
struct Node {
    /// The client port: the plain one, which the harness uses and which `CLUSTER NODES` and
    /// MOVED replies name to a plain connection.
    port: u16,
    /// The TLS client port, when started with [`ClusterOptions::tls`].
    tls_port: Option<u16>,
    /// `None` once killed.
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// A node as one node's `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    /// Flagged `master` (a failed primary keeps the flag; see `failed`).
    pub primary: bool,
    /// Flagged `fail` or `fail?`.
    pub failed: bool,
    /// The primary's node id, for a replica.
    pub primary_id: Option<String>,
    /// Slot ranges served (inclusive), importing/migrating markers left out.
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// What the harness remembers of a primary it killed, for [`RedisCluster::wait_failover`].
struct Killed {
    port: u16,
    replicas: Vec<u16>,
    slots: Vec<(u16, u16)>,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    killed: Vec<Killed>,
    /// [`ClusterOptions::password`], sent on every connection of the harness.
    password: Option<String>,
    /// The CA of [`ClusterOptions::tls`], for [`Self::slot_ports_over_tls`].
    tls_ca: Option<PathBuf>,
    /// One multiplexed connection per node port, opened on first use.
    conns: Mutex<HashMap<u16, MultiplexedConnection>>,
}

impl RedisCluster {
    /// Six nodes, three primaries and three replicas; returns once `CLUSTER INFO` says
    /// `cluster_state:ok` with every slot covered on every node and each replica has finished
    /// its first sync (so `WAIT 1` is answered at once).
    pub async fn start() -> RedisCluster {
        Self::start_with(ClusterOptions::default()).await
    }

    /// [`Self::start`] with a password and/or TLS on every node (see [`ClusterOptions`]).
    pub async fn start_with(opts: ClusterOptions) -> RedisCluster {
        let nodes = futures_util::future::join_all((0..6).map(|_| Self::start_node(&opts))).await;
        let cluster = RedisCluster {
            nodes,
            killed: Vec::new(),
            password: opts.password,
            tls_ca: opts.tls.map(|t| t.ca),
            conns: Mutex::new(HashMap::new()),
        };
        cluster.create().await;
        cluster.wait_formed().await;
        cluster
    }

    /// A cluster-enabled node on a free client port and a free bus port (and a free TLS port
    /// with TLS). The bus port is given (`--cluster-port`) rather than left at port + 10000,
    /// which may be taken or above 65535.
    async fn start_node(opts: &ClusterOptions) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let n = if opts.tls.is_some() { 3 } else { 2 };
        let (ports, child) = crate::ports::start_on_free_ports(n, "redis-server (cluster)", |p| {
            let mut cmd = Command::new(bin("REDIS_SERVER_BIN", "redis-server"));
            if let Some(password) = &opts.password {
                cmd.args(["--requirepass", password, "--masterauth", password]);
            }
            if let (Some(t), Some(tls_port)) = (&opts.tls, p.get(2)) {
                cmd.args(["--tls-port", &tls_port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&t.cert)
                    .arg("--tls-key-file")
                    .arg(&t.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&t.ca)
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .args(["--tls-auth-clients", "no"]);
            }
            cmd.args([
                "--port",
                &p[0].to_string(),
                "--cluster-port",
                &p[1].to_string(),
            ])
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(dir.path().join("nodes.conf"))
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--appendonly", "yes", "--save", ""])
            // Redis 7 delays a diskless full sync 5 s waiting for more replicas; a test has
            // one replica per primary and nothing to wait for.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)")
        })
        .await;
        Node {
            port: ports[0],
            tls_port: ports.get(2).copied(),
            child: Some(child),
            _dir: dir,
        }
    }

    /// `redis-cli --cluster create` over the six nodes (it assigns the slots, pairs replicas
    /// with primaries and waits until the nodes agree on the configuration).
    async fn create(&self) {
        let mut cmd = tokio::process::Command::new(bin("REDIS_CLI_BIN", "redis-cli"));
        if let Some(password) = &self.password {
            cmd.args(["-a", password, "--no-auth-warning"]);
        }
        let out = cmd
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn wait_formed(&self) {
        crate::eventually(
            FORM_TIMEOUT,
            "the Redis Cluster to form (cluster_state:ok, all slots, replicas synced)",
            || async {
                for n in self.live() {
                    let info = self.cluster_info(n).await?;
                    let ok = info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_slots_ok:{SLOTS}"))
                        && info.contains("cluster_known_nodes:6");
                    if !ok {
                        return None;
                    }
                }
                let view = self.view().await?;
                let primaries = view.iter().filter(|v| v.primary).count();
                if primaries != 3 {
                    return None;
                }
                // Every replica has finished its first sync with its primary.
                for v in view.iter().filter(|v| !v.primary) {
                    let info: String = self
                        .query(v.port, redis::cmd("INFO").arg("replication"))
                        .await
                        .ok()?;
                    if !info.contains("master_link_status:up") {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    /// `REDIS_CLUSTER_NODES` for the gateway: `127.0.0.1:port` of all six nodes.
    pub fn seeds_env(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client ports of all six nodes, killed ones included.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The TLS ports of all six nodes (started with [`ClusterOptions::tls`]).
    pub fn tls_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(|n| {
                n.tls_port
                    .expect("a cluster started with ClusterOptions::tls")
            })
            .collect()
    }

    /// `REDIS_CLUSTER_NODES` for a gateway with `REDIS_CLUSTER_TLS`: `127.0.0.1:tls_port` of all
    /// six nodes (the certificate names 127.0.0.1).
    pub fn tls_seeds_env(&self) -> String {
        self.tls_ports()
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports `CLUSTER SLOTS` names (primaries and replicas) when asked over TLS, verified
    /// against the test CA, on the first node's TLS port: what a cluster client given the TLS
    /// seeds goes on to connect to.
    pub async fn slot_ports_over_tls(&self) -> Vec<u16> {
        vizora_gateway::store::target::install_crypto_provider();
        let ca = self
            .tls_ca
            .as_ref()
            .expect("a cluster started with ClusterOptions::tls");
        let info = self.connection_info(&format!("rediss://127.0.0.1:{}/", self.tls_ports()[0]));
        let client = redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca).unwrap()),
            },
        )
        .unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // `[[start, end, [ip, port, id, …], [ip, port, id, …]…], …]`
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut ports = Vec::new();
        for range in slots {
            let redis::Value::Array(fields) = range else {
                panic!("CLUSTER SLOTS: {range:?}");
            };
            for node in &fields[2..] {
                let port = match node {
                    redis::Value::Array(n) => match n.get(1) {
                        Some(redis::Value::Int(p)) => u16::try_from(*p).ok(),
                        _ => None,
                    },
                    _ => None,
                };
                ports.push(port.unwrap_or_else(|| panic!("CLUSTER SLOTS node: {node:?}")));
            }
        }
        ports
    }

    /// `url` with the cluster's password, if it has one.
    fn connection_info(&self, url: &str) -> redis::ConnectionInfo {
        let info = url.into_connection_info().unwrap();
        match &self.password {
            Some(p) => {
                let settings = info.redis_settings().clone().set_password(p);
                info.set_redis_settings(settings)
            }
            None => info,
        }
    }

    /// Ports of the nodes still running.
    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// A connection to the node on `port` (cached; a 5 s response timeout, so `WAIT` fits).
    pub async fn conn(&self, port: u16) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.conns.lock().unwrap().get(&port) {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(2)));
        let c = redis::Client::open(self.connection_info(&format!("redis://127.0.0.1:{port}/")))?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.conns.lock().unwrap().insert(port, c.clone());
        Ok(c)
    }

    /// `cmd` on the node on `port`, without following redirections.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut c = self.conn(port).await?;
        let r = cmd.query_async(&mut c).await;
        if r.as_ref()
            .is_err_and(|e| e.is_connection_dropped() || e.is_io_error())
        {
            self.conns.lock().unwrap().remove(&port);
        }
        r
    }

    async fn cluster_info(&self, port: u16) -> Option<String> {
        self.query(port, redis::cmd("CLUSTER").arg("INFO"))
            .await
            .ok()
    }

    /// `CLUSTER NODES` as the node on `port` sees the cluster.
    pub async fn view_from(&self, port: u16) -> Option<Vec<NodeView>> {
        let text: String = self
            .query(port, redis::cmd("CLUSTER").arg("NODES"))
            .await
            .ok()?;
        Some(text.lines().filter_map(parse_node_line).collect())
    }

    /// The cluster as the first live node that answers sees it.
    async fn view(&self) -> Option<Vec<NodeView>> {
        for port in self.live() {
            if let Some(v) = self.view_from(port).await {
                return Some(v);
            }
        }
        None
    }

    /// Ports of the current primaries (flagged master, not failed, serving slots), sorted.
    pub async fn primaries(&self) -> Vec<u16> {
        let view = self.view().await.expect("no live cluster node answers");
        let mut ports: Vec<u16> = view
            .iter()
            .filter(|v| v.primary && !v.failed && !v.slots.is_empty())
            .map(|v| v.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// `CLUSTER KEYSLOT key`.
    pub async fn slot_of(&self, key: &str) -> u16 {
        for port in self.live() {
            if let Ok(slot) = self
                .query::<u16>(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
                .await
            {
                return slot;
            }
        }
        panic!("no live cluster node answers CLUSTER KEYSLOT");
    }

    /// The port of the primary serving `key`'s slot.
    pub async fn node_for_key(&self, key: &str) -> u16 {
        let slot = self.slot_of(key).await;
        let view = self.view().await.expect("no live cluster node answers");
        view.iter()
            .find(|v| v.primary && !v.failed && v.serves(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot} of {key}: {view:?}"))
            .port
    }

    /// SIGKILLs the primary holding `key`'s slot (no shutdown, no final AOF write) and returns
    /// its port. Its replica takes over after the node timeout: see [`Self::wait_failover`].
    pub async fn kill9_primary_of(&mut self, key: &str) -> u16 {
        let port = self.node_for_key(key).await;
        let view = self.view().await.expect("no live cluster node answers");
        let me = view.iter().find(|v| v.port == port).unwrap();
        let replicas = view
            .iter()
            .filter(|v| v.primary_id.as_deref() == Some(&me.id) && !v.failed)
            .map(|v| v.port)
            .collect();
        self.killed.push(Killed {
            port,
            replicas,
            slots: me.slots.clone(),
        });
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.conns.lock().unwrap().remove(&port);
        port
    }

    /// Waits until a replica of the primary killed on `port` serves all its slots and every
    /// live node says `cluster_state:ok` with every slot covered again.
    pub async fn wait_failover(&self, port: u16) {
        let killed = self
            .killed
            .iter()
            .find(|k| k.port == port)
            .expect("a port kill9_primary_of returned");
        crate::eventually(
            FAILOVER_TIMEOUT,
            &format!("a replica of {port} ({:?}) to take over", killed.replicas),
            || async {
                for n in self.live() {
                    let info = self.cluster_info(n).await?;
                    if !(info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_slots_ok:{SLOTS}")))
                    {
                        return None;
                    }
                    let view = self.view_from(n).await?;
                    let promoted = killed.slots.iter().all(|&(a, _)| {
                        view.iter().any(|v| {
                            v.primary
                                && !v.failed
                                && v.serves(a)
                                && killed.replicas.contains(&v.port)
                        })
                    });
                    if !promoted {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    /// Moves `slot` and its keys to the primary on `to` the way `redis-cli --cluster reshard`
    /// does (IMPORTING / MIGRATING, `MIGRATE` in batches, then `SETSLOT … NODE` on every
    /// primary), while clients keep running: they meet `ASK` during the move and `MOVED` after
    /// it. Returns the port that held it.
    pub async fn move_slot(&self, slot: u16, to: u16) -> u16 {
        let view = self.view().await.expect("no live cluster node answers");
        let from = view
            .iter()
            .find(|v| v.primary && !v.failed && v.serves(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
            .clone();
        let dst = view
            .iter()
            .find(|v| v.port == to)
            .expect("the target node")
            .clone();
        assert!(
            dst.primary && from.port != to,
            "move {slot} to another primary"
        );
        let setslot = |args: &[&str]| {
            let mut c = redis::cmd("CLUSTER");
            c.arg("SETSLOT").arg(slot);
            for a in args {
                c.arg(*a);
            }
            c
        };
        let ok = |r: redis::RedisResult<String>, what: &str| {
            r.unwrap_or_else(|e| panic!("{what} of slot {slot}: {e}"));
        };
        ok(
            self.query(to, &setslot(&["IMPORTING", &from.id])).await,
            "IMPORTING",
        );
        ok(
            self.query(from.port, &setslot(&["MIGRATING", &dst.id]))
                .await,
            "MIGRATING",
        );
        loop {
            let keys: Vec<String> = self
                .query(
                    from.port,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(100),
                )
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let mut m = redis::cmd("MIGRATE");
            m.arg("127.0.0.1").arg(to).arg("").arg(0).arg(5000);
            if let Some(p) = &self.password {
                m.arg("AUTH").arg(p);
            }
            m.arg("KEYS").arg(&keys);
            ok(self.query(from.port, &m).await, "MIGRATE");
        }
        // The target first, then the source (so neither redirects to the other in a loop),
        // then the other primaries.
        let mut order = vec![to, from.port];
        let others: Vec<u16> = self
            .primaries()
            .await
            .into_iter()
            .filter(|p| !order.contains(p))
            .collect();
        order.extend(others);
        for p in order {
            ok(
                self.query(p, &setslot(&["NODE", &dst.id])).await,
                "SETSLOT NODE",
            );
        }
        from.port
    }

    /// Cuts the replica of `key`'s primary off its replication stream: a wrong `masterauth`, then
    /// its link to the primary is killed, so it cannot sync again and keeps serving what it had
    /// (a lagging replica). Returns its port.
    pub async fn stall_replica_of(&self, key: &str) -> u16 {
        let port = self.node_for_key(key).await;
        let view = self.view().await.expect("no live cluster node answers");
        let me = view.iter().find(|v| v.port == port).unwrap();
        let replica = view
            .iter()
            .find(|v| v.primary_id.as_deref() == Some(&me.id) && !v.failed)
            .unwrap_or_else(|| panic!("a replica of {port}"))
            .port;
        let _: String = self
            .query(
                replica,
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("masterauth")
                    .arg("not-the-password"),
            )
            .await
            .unwrap();
        let _: i64 = self
            .query(
                replica,
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("master"),
            )
            .await
            .unwrap();
        crate::eventually(
            FAILOVER_TIMEOUT,
            &format!("the replica {replica} to lose its primary"),
            || async {
                let info: String = self
                    .query(replica, redis::cmd("INFO").arg("replication"))
                    .await
                    .ok()?;
                info.contains("master_link_status:down").then_some(())
            },
        )
        .await;
        replica
    }

    /// Promotes the replica on `port` at once, however far behind it is (`CLUSTER FAILOVER
    /// TAKEOVER`: no agreement, no catching up), and waits until it serves its slots and every
    /// live node says `cluster_state:ok`. Its old primary becomes its replica and takes its data.
    pub async fn take_over(&self, port: u16) {
        let _: String = self
            .query(port, redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"))
            .await
            .unwrap();
        crate::eventually(
            FAILOVER_TIMEOUT,
            &format!("{port} to take over"),
            || async {
                for n in self.live() {
                    let info = self.cluster_info(n).await?;
                    if !info.contains("cluster_state:ok") {
                        return None;
                    }
                    let view = self.view_from(n).await?;
                    if !view
                        .iter()
                        .any(|v| v.port == port && v.primary && !v.slots.is_empty())
                    {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    /// `DBSIZE` of each current primary: (port, keys), sorted by port.
    pub async fn keys_per_primary(&self) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for port in self.primaries().await {
            let n: u64 = self
                .query(port, &redis::cmd("DBSIZE"))
                .await
                .unwrap_or_else(|e| panic!("DBSIZE on {port}: {e}"));
            out.push((port, n));
        }
        out
    }

    /// Runs `args` on the primary serving the slot of `args[1]` (any live node for a command
    /// without arguments), following MOVED and ASK redirections.
    pub async fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        let mut port = match args.get(1) {
            Some(key) => self.node_for_key(key).await,
            None => self.live().next().expect("a live node"),
        };
        let mut asking = false;
        for _ in 0..5 {
            let r = if asking {
                let mut p = redis::pipe();
                p.cmd("ASKING").ignore().add_command(c.clone());
                // ASKING applies to the next command on the connection: send both in one
                // pipeline so no other command of the shared connection comes between them.
                let mut conn = self.conn(port).await?;
                p.query_async::<(T,)>(&mut conn).await.map(|(v,)| v)
            } else {
                self.query(port, &c).await
            };
            match r {
                Err(e) if e.redirect_node().is_some() => {
                    let (addr, _) = e.redirect_node().unwrap();
                    port = addr
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse().ok())
                        .unwrap_or_else(|| panic!("redirect to {addr}"));
                    asking = matches!(
                        e.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::Ask)
                    );
                }
                other => return other,
            }
        }
        panic!("{args:?}: more than 5 redirections");
    }

    /// [`Self::try_cmd`], panicking on an error.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        self.cmd(&["GET", key]).await
    }

    /// `SET key value` on its primary, then `WAIT 1` on the same connection: returns once the
    /// primary's replica acknowledged the write (so a failover keeps it).
    pub async fn set_replicated(&self, key: &str, value: &str) {
        let port = self.node_for_key(key).await;
        let mut p = redis::pipe();
        p.cmd("SET").arg(key).arg(value).ignore();
        p.cmd("WAIT").arg(1).arg(4000);
        let mut conn = self.conn(port).await.unwrap();
        let (acked,): (i64,) = p.query_async(&mut conn).await.unwrap();
        assert_eq!(acked, 1, "the replica of {port} acknowledged SET {key}");
    }

    /// Waits until every primary's replicas have acknowledged everything that primary had
    /// written when this was called, whoever wrote it (a gateway's writes included), so a
    /// failover keeps it. (`WAIT` would not do: it only covers its own connection's writes.)
    pub async fn sync_replicas(&self) {
        for port in self.primaries().await {
            let info: String = self
                .query(port, redis::cmd("INFO").arg("replication"))
                .await
                .unwrap_or_else(|e| panic!("INFO replication on {port}: {e}"));
            let target = info_field(&info, "master_repl_offset")
                .and_then(|v| v.parse::<u64>().ok())
                .expect("master_repl_offset");
            crate::eventually(
                Duration::from_secs(10),
                &format!("the replicas of {port} to acknowledge offset {target}"),
                || async {
                    let info: String = self
                        .query(port, redis::cmd("INFO").arg("replication"))
                        .await
                        .ok()?;
                    // `slaveN:ip=…,port=…,state=online,offset=…,lag=…`, one per replica.
                    let acked: Vec<u64> = info
                        .lines()
                        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                        .filter_map(|l| {
                            l.split(',')
                                .find_map(|kv| kv.strip_prefix("offset="))
                                .and_then(|v| v.trim().parse().ok())
                        })
                        .collect();
                    (!acked.is_empty() && acked.iter().all(|o| *o >= target)).then_some(())
                },
            )
            .await;
        }
    }
}

/// `name:value` of an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`.
fn parse_node_line(line: &str) -> Option<NodeView> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let addr = f[1].split(['@', ',']).next()?;
    let port = addr.rsplit_once(':')?.1.parse().ok()?;
    let flags: Vec<&str> = f[2].split(',').collect();
    let slots = f[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|a| (a, a)),
        })
        .collect();
    Some(NodeView {
        id: f[0].to_string(),
        port,
        primary: flags.contains(&"master"),
        failed: flags.contains(&"fail") || flags.contains(&"fail?"),
        primary_id: (f[3] != "-").then(|| f[3].to_string()),
        slots,
    })
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let p = parse_node_line(
            "07c3 127.0.0.1:30004@31004,node-a myself,master - 0 0 1 connected 0-5460 5462 [5461->-e7d1]",
        )
        .unwrap();
        assert_eq!(p.port, 30004);
        assert!(p.primary && !p.failed && p.primary_id.is_none());
        assert_eq!(p.slots, vec![(0, 5460), (5462, 5462)]);
        assert!(p.serves(5462) && !p.serves(5461));
        let r = parse_node_line("e7d1 127.0.0.1:30005@31005 slave,fail 07c3 0 0 1 disconnected")
            .unwrap();
        assert!(!r.primary && r.failed);
        assert_eq!(r.primary_id.as_deref(), Some("07c3"));
        assert!(r.slots.is_empty());
    }
}
