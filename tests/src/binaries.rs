//! The real binaries, for stories told through them: `tenure serve --dev-clock` as a child
//! process on 127.0.0.1:0 with a fresh data directory (and a fresh database: SQLite, or
//! PostgreSQL with TENURE_TEST_DATABASE_URL), and people typing `tenurectl` commands,
//! each with a saved login of their own (their own `TENURE_HOME`, like their own
//! terminal).
//!
//! A test's `env!("CARGO_BIN_EXE_…")` only names its own package's binaries, so the
//! binaries are built here, once per test process, with the cargo that runs the tests
//! (same profile, same target directory; a no-op when they are fresh). Set
//! `TENURE_BIN_DIR` to a folder holding `tenure` and `tenurectl` to use those instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tenure_platform::testing::TestDb;

/// Where `tenure` and `tenurectl` are.
pub struct Binaries {
    /// The server.
    pub tenure: PathBuf,
    /// The command line.
    pub tenurectl: PathBuf,
}

/// The binaries, built on first use.
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = match std::env::var_os("TENURE_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => build(),
        };
        let bins = Binaries {
            tenure: dir.join("tenure"),
            tenurectl: dir.join("tenurectl"),
        };
        assert!(
            bins.tenure.is_file(),
            "{} is missing",
            bins.tenure.display()
        );
        assert!(
            bins.tenurectl.is_file(),
            "{} is missing",
            bins.tenurectl.display()
        );
        bins
    })
}

/// Builds both binaries with this test's profile into its target directory and returns
/// the folder they are in.
fn build() -> PathBuf {
    // target/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target").to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(p) => p.to_owned(),
        None => "dev".to_owned(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "tenure-server",
            "-p",
            "tenurectl",
            "--bins",
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building tenure and tenurectl failed");
    profile_dir
}

/// A `tenure serve --dev-clock` child process.
pub struct RealServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Option<Child>,
    data_dir: tempfile::TempDir,
    db: TestDb,
    log: PathBuf,
    extra: Vec<(String, String)>,
}

impl RealServer {
    /// Starts a server with a fresh data directory and database.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts with extra `TENURE_*` environment variables (configuration).
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let db = TestDb::new().await.unwrap();
        let data_dir = tempfile::tempdir().unwrap();
        let log = data_dir.path().join("server.log");
        let mut s = Self {
            url: String::new(),
            child: None,
            data_dir,
            db,
            log,
            extra: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let bins = binaries();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(&bins.tenure)
            .args([
                "serve",
                "--dev-clock",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(self.data_dir.path().join("data"))
            .arg("--database-url")
            .arg(&self.db.url)
            .envs(self.extra.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.child = Some(child);
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let addr = line
            .trim()
            .strip_prefix("tenure listening on ")
            .unwrap_or_else(|| panic!("tenure did not start: {line:?}\n{}", self.log()))
            .to_owned();
        self.url = format!("http://{addr}");
    }

    /// What the server logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for a clean exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "tenure exited with {status:?}");
    }

    /// Stops the server and starts it again on the same data directory and database
    /// (on a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// A person at a terminal of their own, signed in to this server.
    pub async fn person(&self, name: &str, mfa: bool) -> Person {
        let p = Person {
            name: name.to_owned(),
            mfa,
            server: self.url.clone(),
            home: tempfile::tempdir().unwrap(),
        };
        p.login().await;
        p
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Someone typing `tenurectl` commands, with their own saved login.
pub struct Person {
    /// Who.
    pub name: String,
    mfa: bool,
    server: String,
    home: tempfile::TempDir,
}

impl Person {
    /// A folder of this person's (for files they write, like an audit export).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Points this person at a server (after a restart on a new port).
    pub fn use_server(&mut self, server: &RealServer) {
        self.server = server.url.clone();
    }

    /// `tenurectl login --as NAME [--mfa] --ttl 24h` (again: tokens age with the dev
    /// clock).
    pub async fn login(&self) {
        let mut args = vec!["login", "--as", self.name.as_str(), "--ttl", "24h"];
        if self.mfa {
            args.push("--mfa");
        }
        self.ok(&args).await;
    }

    /// Runs `tenurectl ARGS` off the async runtime (in UTC).
    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_in("UTC", args).await
    }

    /// Runs `tenurectl ARGS` in the time zone `tz` and expects success; returns stdout.
    pub async fn ok_in(&self, tz: &str, args: &[&str]) -> String {
        let out = self.run_in(tz, args).await;
        assert!(
            out.status.success(),
            "{}: tenurectl {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `tenurectl ARGS` with `TZ=tz`, off the async runtime.
    pub async fn run_in(&self, tz: &str, args: &[&str]) -> Output {
        let tz = tz.to_owned();
        let ctl = binaries().tenurectl.clone();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let server = self.server.clone();
        let home = self.home.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            Command::new(ctl)
                .args(&args)
                .env("TENURE_SERVER", server)
                .env("TENURE_HOME", home)
                .env("TZ", tz)
                .env_remove("TENURE_TOKEN")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{}: tenurectl {args:?} exited {:?}: {}",
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `-o json` and expects success; returns the parsed output.
    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let text = self.ok(&all).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Runs and expects exit code `code`; returns stderr.
    pub async fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args).await;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: tenurectl {args:?}: {err}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        err
    }

    /// Polls `tenurectl -o json ARGS` (bounded, 10 s) until `done` holds for its
    /// output; for what follows the event streams (the audit, alerts, rounds).
    pub async fn json_until(
        &self,
        args: &[&str],
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        for _ in 0..200 {
            last = self.json(args).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{}: tenurectl {args:?} never got there: {last:#}",
            self.name
        );
    }
}
