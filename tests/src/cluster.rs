//! A split deployment of real `tenure` processes for tests: each node is the binary
//! started with `--config` naming its contexts and the addresses of its peers, all on one
//! database. Nodes can be killed with SIGKILL, as a crashed pod would be.
//!
//! The binary is built once per test run by [`crate::binaries`] (or taken from
//! `TENURE_BIN_DIR`).
//!
//! A cluster made with [`Cluster::with_dev_clock`] starts every node with
//! `--dev-clock`: each process has a clock of its own that stands still until
//! [`Cluster::advance`] moves them all by the same amount, and the test's tokens are
//! minted at that time (a server checks `exp`/`nbf` against its own clock).

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tenure_platform::auth::DevIssuer;
use tenure_platform::clock::{Clock as _, ManualClock, SharedClock, SystemClock, from_proto};
use tenure_proto::devauth::v1 as devauth;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The `tenure` binary, built fresh for this test run (see [`crate::binaries`]).
pub fn tenure_bin() -> PathBuf {
    crate::binaries::binaries().tenure.clone()
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// One `tenure serve` process.
pub struct Node {
    /// Its name in the test, for example "activation-2".
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    config: PathBuf,
}

impl Node {
    /// A channel to the node.
    pub fn channel(&self) -> Channel {
        crate::channel_to(self.addr)
    }

    /// Kills the process with SIGKILL: no shutdown, no flush, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaped");
        }
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// What one node serves and whom it calls.
pub struct NodeSpec<'a> {
    /// Its name in the test.
    pub name: &'a str,
    /// `contexts` (comma-separated).
    pub contexts: &'a str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The peers: (context, address) for every context it does not serve.
    pub peers: Vec<(&'a str, SocketAddr)>,
}

/// Several nodes on one database, sharing one data directory (for the development
/// issuer's key, so tokens minted by the test are accepted by every node).
pub struct Cluster {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    /// The shared data directory.
    pub dir: tempfile::TempDir,
    database_url: String,
    issuer: DevIssuer,
    /// With the development clock: the time every node stands at, which the issuer
    /// mints the test's tokens at.
    dev_time: Option<ManualClock>,
    /// TOML tables appended to every node's configuration (for example `[limits]`).
    pub extra_toml: String,
}

impl Cluster {
    /// An empty cluster over `database_url`.
    pub fn new(database_url: &str) -> Self {
        Self::make(database_url, None)
    }

    /// An empty cluster over `database_url` whose nodes run `tenure serve --dev-clock`.
    /// They share the data directory, so each starts from the time kept there (the
    /// first one's start); move them with [`Cluster::advance`].
    pub fn with_dev_clock(database_url: &str) -> Self {
        Self::make(database_url, Some(ManualClock::new(SystemClock.now())))
    }

    fn make(database_url: &str, dev_time: Option<ManualClock>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock: SharedClock = match &dev_time {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(SystemClock),
        };
        let issuer = DevIssuer::load_or_create(&dir.path().join("dev-issuer"), clock)
            .expect("dev issuer key");
        Self {
            nodes: Vec::new(),
            dir,
            database_url: database_url.to_owned(),
            issuer,
            dev_time,
            extra_toml: String::new(),
        }
    }

    /// The nodes' time: the development clock's, or the wall clock's.
    pub fn now(&self) -> DateTime<Utc> {
        self.issuer.now()
    }

    /// Moves the development clock of every running node forward by `by`, one node
    /// after the other in start order, and checks that each lands on the same time.
    /// Panics without the development clock.
    pub async fn advance(&self, by: TimeDelta) {
        let clock = self
            .dev_time
            .as_ref()
            .expect("advance needs Cluster::with_dev_clock");
        let before = clock.now();
        let by_proto = prost_types::Duration {
            seconds: by.num_seconds(),
            nanos: by.subsec_nanos(),
        };
        // Minted at the time every node stands at: each checks it before it moves.
        let token = self.token("admin", true);
        for n in self.nodes.iter().filter(|n| n.running()) {
            let r = devauth::dev_clock_service_client::DevClockServiceClient::new(n.channel())
                .advance_clock(crate::harness::authed(
                    devauth::AdvanceClockRequest { by: Some(by_proto) },
                    &token,
                ))
                .await
                .unwrap_or_else(|e| panic!("advancing the clock of {}: {e}", n.name))
                .into_inner();
            let now = r.now.as_ref().and_then(from_proto);
            assert_eq!(now, Some(before + by), "{} moved elsewhere", n.name);
        }
        clock.set(before + by);
    }

    /// A development token for `subject`.
    pub fn token(&self, subject: &str, mfa: bool) -> String {
        self.issuer
            .mint(subject, mfa, chrono::TimeDelta::hours(1))
            .expect("token")
    }

    /// `msg` with a bearer token for `subject`.
    pub fn req<T>(&self, subject: &str, mfa: bool, msg: T) -> tonic::Request<T> {
        crate::harness::authed(msg, &self.token(subject, mfa))
    }

    /// Starts a node and waits until it serves health.
    pub async fn start(&mut self, spec: NodeSpec<'_>) -> &Node {
        let mut toml = format!(
            "listen = \"{}\"\ndata_dir = \"{}\"\ndatabase_url = \"{}\"\ncontexts = \"{}\"\n[peers]\n",
            spec.addr,
            self.dir.path().display(),
            self.database_url,
            spec.contexts
        );
        for (ctx, addr) in &spec.peers {
            toml.push_str(&format!("{ctx} = \"http://{addr}\"\n"));
        }
        toml.push_str(&self.extra_toml);
        let config = self.dir.path().join(format!("{}.toml", spec.name));
        std::fs::write(&config, toml).expect("config written");
        let log = self.dir.path().join(format!("{}.log", spec.name));
        let first = self.nodes.is_empty();
        let node = spawn(spec.name, spec.addr, config, log, self.dev_time.is_some()).await;
        self.nodes.push(node);
        let node = self.nodes.last().expect("just pushed");
        if let Some(clock) = &self.dev_time {
            let at = dev_now(node).await;
            if first {
                clock.set(at);
            }
            assert_eq!(at, clock.now(), "{} stands at another time", node.name);
        }
        node
    }

    /// Starts the node called `name` again (killing it first if it runs), on the same
    /// address and configuration, and waits until it serves health.
    pub async fn restart(&mut self, name: &str) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        self.nodes[i].kill9();
        let (addr, config, log) = {
            let n = &self.nodes[i];
            (n.addr, n.config.clone(), n.log.clone())
        };
        self.nodes[i] = spawn(name, addr, config, log, self.dev_time.is_some()).await;
    }

    /// The node called `name`.
    pub fn node(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// A channel to the node called `name`.
    pub fn channel(&self, name: &str) -> Channel {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
            .channel()
    }
}

/// The development clock's time on `node`.
async fn dev_now(node: &Node) -> DateTime<Utc> {
    devauth::dev_clock_service_client::DevClockServiceClient::new(node.channel())
        .get_time(devauth::GetTimeRequest {})
        .await
        .unwrap_or_else(|e| panic!("the time of {}: {e}", node.name))
        .into_inner()
        .now
        .as_ref()
        .and_then(from_proto)
        .expect("a time")
}

async fn spawn(
    name: &str,
    addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    dev_clock: bool,
) -> Node {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let mut cmd = Command::new(tenure_bin());
    cmd.arg("serve").arg("--config").arg(&config);
    if dev_clock {
        cmd.arg("--dev-clock");
    }
    let child = cmd
        .env("RUST_LOG", "warn")
        .env_remove("TENURE_DATABASE_URL")
        .env_remove("TENURE_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("tenure started");
    let mut node = Node {
        name: name.to_owned(),
        addr,
        child: Some(child),
        log,
        config,
    };
    let stdout = node
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        line
    })
    .await
    .expect("reader");
    assert!(
        line.starts_with("tenure listening on"),
        "{name} did not start: {line:?}\n{}",
        tail(&node.log)
    );
    let mut health = HealthClient::new(node.channel());
    let mut serving = false;
    for _ in 0..200 {
        if let Ok(r) = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            && r.into_inner().status() == ServingStatus::Serving
        {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "{name} never served\n{}", tail(&node.log));
    node
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for n in &mut self.nodes {
            if panicking {
                eprintln!("---- log of {} ----\n{}", n.name, tail(&n.log));
            }
            n.kill9();
        }
    }
}

/// Polls `f` every 50 ms for at most `secs` seconds until it holds, for what follows
/// another process's work (a stream consumer, a timer); panics naming `what` otherwise.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 20 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within {secs} s: {what}");
}
