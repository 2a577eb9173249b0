//! The server under test: a `tenure serve` child on 127.0.0.1:0 with a fresh data
//! directory (and, for PostgreSQL, a fresh database), or a running server at a given
//! address; its CPU time and resident memory from /proc.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};

/// A process whose CPU time and memory are read from /proc.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    /// Its process id.
    pub pid: u32,
    ticks_per_second: f64,
}

impl Proc {
    /// `pid`, with the kernel's clock tick rate.
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            ticks_per_second: clock_ticks(),
        }
    }

    /// User + system CPU time so far, seconds (fields 14 and 15 of /proc/PID/stat).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name (field 2) may hold spaces: count fields after its ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) / self.ticks_per_second)
    }

    /// Resident set size, MiB (VmRSS of /proc/PID/status).
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Whether `taskset` can pin processes here (and there are at least two CPUs).
pub fn can_pin() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && std::process::Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Pins this process (and the threads it starts from now on) to `cpus`.
pub fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "taskset failed");
    Ok(())
}

/// How the harness starts servers.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `tenure` binary.
    pub bin: PathBuf,
    /// `--database-url` for the server (None: SQLite in the data directory).
    pub database_url: Option<String>,
    /// CPUs to pin the server to (`taskset -c`), if any.
    pub pin: Option<String>,
    /// Start it with `--dev-clock` (time stands still until AdvanceClock moves it).
    pub dev_clock: bool,
}

/// A `tenure serve` child process.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its process, for CPU and memory.
    pub proc: Proc,
    /// From spawning the process to its "listening" line.
    pub started_in: Duration,
    log: PathBuf,
}

impl Server {
    /// Starts `tenure serve` on 127.0.0.1:0 over `data_dir` with the bootstrap
    /// administrator "admin", and waits for its "tenure listening on ADDR" line.
    pub async fn start(launch: &Launch, data_dir: &Path) -> anyhow::Result<Self> {
        let log = data_dir.join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = match &launch.pin {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&launch.bin);
                c
            }
            None => Command::new(&launch.bin),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(launch.dev_clock.then_some("--dev-clock"))
            .env("TENURE_AUTH__BOOTSTRAP_PRINCIPAL", crate::ADMIN)
            // The data set is loaded by one administrator as fast as the server takes
            // it; the per-principal mutation limit would turn that into a wait.
            .env("TENURE_LIMITS__MUTATIONS_PER_PRINCIPAL_PER_SEC", "0")
            .env(
                "RUST_LOG",
                std::env::var("TENURE_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("TENURE_CONFIG")
            .env_remove("TENURE_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true);
        match &launch.database_url {
            Some(url) => {
                cmd.arg("--database-url").arg(url);
            }
            None => {
                cmd.env_remove("TENURE_DATABASE_URL");
            }
        }
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", launch.bin.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("tenure listening on ") {
                    return Ok::<_, anyhow::Error>(Some(a.trim().parse()?));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match addr {
            Ok(Ok(Some(a))) => a,
            other => {
                let _ = child.start_kill();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "the server did not report its address ({other:?}); its log:\n{}",
                    tail.join("\n")
                );
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            addr,
            proc: Proc::new(pid),
            started_in: t0.elapsed(),
            log,
        })
    }

    /// Stops the server with SIGTERM (graceful), then SIGKILL after 10 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.proc.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                bail!("the server did not stop within 10 s of SIGTERM (killed)")
            }
        }
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// Refuses anything but a loopback address: the harness only ever loads this machine.
pub fn ensure_loopback_host(host: &str) -> anyhow::Result<()> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let ok = h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        ok,
        "refusing non-loopback host {host:?}: the harness only targets 127.0.0.1"
    );
    Ok(())
}

/// A fresh PostgreSQL database for one run, dropped at the end.
pub struct FreshDb {
    admin_url: String,
    /// The new database's name.
    pub name: String,
    /// Its URL, for the server.
    pub url: String,
}

impl FreshDb {
    /// Creates `tenure_bench_<pid>_<time>` on the server of `base` (a postgres:// URL;
    /// its database is where the CREATE DATABASE runs).
    pub async fn create(base: &str) -> anyhow::Result<Self> {
        use sqlx::Connection as _;
        let (head, query) = match base.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (base, None),
        };
        let after_scheme = head
            .split_once("://")
            .map(|(_, r)| r)
            .context("database URL without a scheme")?;
        let host_part = after_scheme.split('/').next().unwrap_or_default();
        let host = host_part.rsplit('@').next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        ensure_loopback_host(host)?;
        let server_root = match after_scheme.split_once('/') {
            Some(_) => &head[..head.len() - after_scheme.len() + host_part.len()],
            None => head,
        };
        let with_db = |db: &str| match query {
            Some(q) => format!("{server_root}/{db}?{q}"),
            None => format!("{server_root}/{db}"),
        };
        let admin_url = if after_scheme.contains('/') {
            base.to_owned()
        } else {
            with_db("postgres")
        };
        // The wall clock names the database: the harness measures real time. A run may
        // create more than one (the expiry workload's development-clock server).
        static CREATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        #[allow(clippy::disallowed_methods)]
        let name = format!(
            "tenure_bench_{}_{}_{}",
            std::process::id(),
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut c = sqlx::PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await?;
        c.close().await?;
        Ok(Self {
            admin_url,
            url: with_db(&name),
            name,
        })
    }

    /// Drops the database.
    pub async fn drop_db(self) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let mut c = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut c)
        .await?;
        c.close().await?;
        Ok(())
    }
}
