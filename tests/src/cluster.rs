//! A split deployment of real `tenure` processes for tests: each node is the binary
//! started with `--config` naming its contexts and the addresses of its peers, all on one
//! database. Nodes can be killed with SIGKILL, as a crashed pod would be.
//!
//! The binary is built once per test run by [`crate::binaries`] (or taken from
//! `TENURE_BIN_DIR`).

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tenure_platform::auth::DevIssuer;
use tenure_platform::clock::SystemClock;
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
    /// TOML tables appended to every node's configuration (for example `[limits]`).
    pub extra_toml: String,
}

impl Cluster {
    /// An empty cluster over `database_url`.
    pub fn new(database_url: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let issuer =
            DevIssuer::load_or_create(&dir.path().join("dev-issuer"), Arc::new(SystemClock))
                .expect("dev issuer key");
        Self {
            nodes: Vec::new(),
            dir,
            database_url: database_url.to_owned(),
            issuer,
            extra_toml: String::new(),
        }
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
        let node = spawn(spec.name, spec.addr, config, log).await;
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
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
        self.nodes[i] = spawn(name, addr, config, log).await;
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

async fn spawn(name: &str, addr: SocketAddr, config: PathBuf, log: PathBuf) -> Node {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let child = Command::new(tenure_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
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
