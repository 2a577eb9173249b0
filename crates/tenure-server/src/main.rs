//! `tenure`: the Tenure server.
//!
//! `tenure serve` runs every context on one port (the embedded default: SQLite under
//! `./tenure-data`, `127.0.0.1:50051`); `--contexts` runs a subset for a split
//! deployment. `tenure token` mints a development token from the local issuer's key.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tenure_platform::auth::DevIssuer;
use tenure_platform::clock::{Clock as _, SharedClock, SystemClock};
use tenure_platform::config::{Config, Overrides};
use tenure_platform::telemetry::Telemetry;
use tenure_server::DevClock;

// mimalloc instead of glibc's malloc: the server's hot paths (gRPC frames, rows, CSV
// chunks) allocate and free many short-lived buffers across threads, where glibc spent
// about half of the CSV export in `_int_malloc`/`malloc_consolidate` (a perf profile,
// BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, unless the operator asked for them
/// (`MIMALLOC_ALLOW_THP=1`). mimalloc reserves its arenas in 2 MiB-aligned regions; on a
/// kernel with THP "always" (a common default) the first touch of each made a whole
/// huge page resident: a fresh idle server held 68.5 MiB, 33.7 MiB without THP
/// (measured, BENCHMARKS.md session 6). Called first in `main`, before the runtime's
/// threads start; the flag is the whole process's and its children's.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var("MIMALLOC_ALLOW_THP").map_or(true, |v| v != "1")
        && let Err(e) = rustix::thread::disable_transparent_huge_pages(true)
    {
        eprintln!(
            "tenure: cannot turn transparent huge pages off ({e}); idle memory will be higher"
        );
    }
}

#[derive(Parser)]
#[command(
    name = "tenure",
    version,
    about = "Tenure: just-in-time privileged roles, approvals, reviews, alerts and audit, over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    ///
    /// Examples:
    ///   tenure serve                                  # everything, SQLite in ./tenure-data
    ///   tenure serve --listen 0.0.0.0:50051 --database-url postgres://tenure@db/tenure --config tenure.toml
    ///   tenure serve --contexts activation --config split.toml
    ///   tenure serve --dev-clock                      # time stands still; `tenurectl dev advance 2h`
    Serve(ServeArgs),
    /// Print a development token for a principal, signed with the local development
    /// issuer's key in the data directory (the embedded default only).
    ///
    /// Example:
    ///   tenure token --subject ferry --mfa
    Token {
        /// The principal the token names.
        #[arg(long)]
        subject: String,
        /// Mark the token as MFA-authenticated.
        #[arg(long)]
        mfa: bool,
        /// Lifetime in minutes.
        #[arg(long, default_value_t = 480)]
        minutes: i64,
        /// The data directory holding the issuer's key.
        #[arg(long, env = "TENURE_DATA_DIR", default_value = "tenure-data")]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML configuration file (see deploy/tenure.example.toml).
    #[arg(long, env = "TENURE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "TENURE_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Data directory for the embedded database and local keys [default: tenure-data].
    #[arg(long, env = "TENURE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://…` [default: SQLite in the data directory].
    #[arg(long, env = "TENURE_DATABASE_URL")]
    database_url: Option<String>,
    /// Contexts to serve: "all" or a list such as "activation,reviews" [default: all].
    #[arg(long, env = "TENURE_CONTEXTS")]
    contexts: Option<String>,
    /// Development only: the server's time stands still and the bootstrap administrator
    /// moves it forward (`tenurectl dev advance 2h`), to see activations end, requests
    /// time out and review rounds close without waiting. Kept in the data directory
    /// across restarts. Refused unless the development issuer is on and the address is
    /// loopback. Not read from the environment or a file, so it is never on by accident.
    #[arg(long)]
    dev_clock: bool,
}

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenure: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenure: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Token {
            subject,
            mfa,
            minutes,
            data_dir,
        } => {
            let issuer =
                DevIssuer::load_or_create(&data_dir.join("dev-issuer"), Arc::new(SystemClock))?;
            println!(
                "{}",
                issuer.mint(&subject, mfa, chrono::TimeDelta::minutes(minutes))?
            );
            Ok(())
        }
        Command::Serve(args) => {
            let overrides = Overrides {
                listen: args.listen,
                data_dir: args.data_dir,
                database_url: args.database_url,
                contexts: args.contexts,
            };
            let config = Config::load(args.config.as_deref(), &overrides)?;
            let telemetry = Telemetry::init(&config.telemetry)?;
            let dev_clock = if args.dev_clock {
                tenure_server::check_dev_clock_allowed(&config)?;
                Some(DevClock::open(&config.data_dir, SystemClock.now())?)
            } else {
                let kept = DevClock::file_in(&config.data_dir);
                if kept.exists() {
                    tracing::warn!(
                        file = %kept.display(),
                        "this data directory was last served with --dev-clock: its times may lie ahead of the wall clock"
                    );
                }
                None
            };
            let clock: SharedClock = match &dev_clock {
                Some(c) => Arc::new(c.clock()),
                None => Arc::new(SystemClock),
            };
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            let addr = listener.local_addr()?;
            let mut app = tenure_server::App::build(config, clock, addr).await?;
            if let Some(c) = dev_clock {
                app.enable_dev_clock(c)?;
            }
            // Tests and scripts read the bound address from this line (port 0 picks one).
            println!("tenure listening on {addr}");
            let result = app.serve(listener, tenure_server::shutdown_signal()).await;
            telemetry.shutdown();
            result
        }
    }
}
