//! Helpers for Tenure's end-to-end tests: start a real server on `127.0.0.1:0` with a
//! fresh database and data directory, and talk to it through real gRPC clients.

// Test support: a broken fixture should fail loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod binaries;
pub mod cluster;
pub mod harness;
pub mod sinks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tenure_platform::auth::DevIssuer;
use tenure_platform::clock::{SharedClock, SystemClock};
use tenure_platform::config::Config;
use tokio_util::sync::CancellationToken;

/// A server started for a test.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its contexts (for reaching into a log in tests).
    pub contexts: tenure_server::Contexts,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts a server for `config` (listen address, data directory and database set by
    /// the caller).
    pub async fn start(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let (addr, contexts, task) =
            tenure_server::spawn(config, clock, stop.clone().cancelled_owned()).await?;
        Ok(Self {
            addr,
            contexts,
            stop,
            task,
        })
    }

    /// A lazily connecting channel to the server (reconnects after restarts).
    pub fn channel(&self) -> tonic::transport::Channel {
        channel_to(self.addr)
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await??
    }
}

/// A lazily connecting channel to `addr`.
pub fn channel_to(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(Duration::from_secs(5)))
        .expect("valid address")
        .connect_lazy()
}

/// A configuration for a test server: loopback, the given data directory and database.
pub fn config(listen: SocketAddr, data_dir: &std::path::Path, database_url: &str) -> Config {
    Config {
        listen,
        data_dir: data_dir.to_path_buf(),
        database_url: Some(database_url.to_owned()),
        ..Config::default()
    }
}

/// A development token for `subject`, from the issuer key in `data_dir`.
pub fn dev_token(data_dir: &std::path::Path, subject: &str, mfa: bool) -> anyhow::Result<Arc<str>> {
    let issuer = DevIssuer::load_or_create(&data_dir.join("dev-issuer"), Arc::new(SystemClock))?;
    Ok(Arc::from(issuer.mint(
        subject,
        mfa,
        chrono::TimeDelta::hours(1),
    )?))
}
