//! `tenure-bench`: measures Tenure on this machine, reproducibly (issue 8).
//!
//! It starts `tenure serve` as a child on 127.0.0.1:0 with a fresh data directory (and,
//! with `--database-url`, a fresh PostgreSQL database), or uses `--addr`; loads a data
//! set through the public gRPC API; drives load over several connections on loopback;
//! and prints a table and writes JSON. See BENCHMARKS.md.
//!
//!   cargo build --release -p tenure-server -p tenure-bench
//!   target/release/tenure-bench                      # SQLite, every default workload
//!   target/release/tenure-bench --database-url postgres://postgres@127.0.0.1:5432/postgres
//!   target/release/tenure-bench --workloads expiry --principals 2000 --assignments 2000   # workload 4, ~7 min
//!   target/release/tenure-bench --smoke --tenure-bin target/debug/tenure   # CI

mod client;
mod data;
mod expiry;
mod loadgen;
mod report;
mod server;
mod workloads;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;

/// The bootstrap administrator the harness starts servers with.
pub const ADMIN: &str = "admin";

/// The workloads run when `--workloads` is not given (`--smoke` adds `expiry`).
const DEFAULT_WORKLOADS: &str =
    "access,overload,activation,throughput,streams,alerts,audit,restart";

/// The clock the expiry workload runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExpiryClock {
    /// Real time on the server under test: activations last their 5 minutes.
    Wall,
    /// A second server started with `--dev-clock`, whose clock the harness moves with
    /// real time and jumps over the 5 minutes.
    Dev,
}

#[derive(Parser, Debug)]
#[command(
    name = "tenure-bench",
    about = "Measures Tenure on this machine (see BENCHMARKS.md)"
)]
struct Args {
    /// The `tenure` binary to start.
    #[arg(long, default_value = "target/release/tenure")]
    tenure_bin: PathBuf,
    /// Use a running server at this loopback address instead of starting one (it must
    /// run the development issuer with the bootstrap administrator "admin", on an empty
    /// database).
    #[arg(long)]
    addr: Option<std::net::SocketAddr>,
    /// With --addr: the server's process id, to read its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// PostgreSQL server URL (loopback only); a fresh database is created on it for the
    /// run and dropped after. Unset: SQLite in a fresh data directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Keep the PostgreSQL database after the run.
    #[arg(long)]
    keep_db: bool,
    /// Tiny sizes, about a second per workload: checks the harness works (CI), not timings.
    #[arg(long)]
    smoke: bool,
    /// Workloads to run, comma-separated: access, overload (CheckAccess at 3x its
    /// saturation; runs access first), activation, throughput, streams, alerts
    /// (activation → alert stream), audit (CSV export), restart (cold start and memory;
    /// only when the harness starts the server), expiry (workload 4; opt-in: about
    /// 7 minutes on the wall clock). Default: all but expiry (with --smoke: all).
    #[arg(long)]
    workloads: Option<String>,
    /// Principals of the access data set (one in ten is a group).
    #[arg(long, default_value_t = 10_000)]
    principals: usize,
    /// Assignments of the access data set.
    #[arg(long, default_value_t = 100_000)]
    assignments: usize,
    /// Management groups (each with 10 subscriptions of 10 resource groups).
    #[arg(long, default_value_t = 10)]
    management_groups: usize,
    /// CreateAssignments calls in flight while loading.
    #[arg(long, default_value_t = 4)]
    load_in_flight: usize,
    /// Assignments per CreateAssignments call while loading (at most 1000).
    #[arg(long, default_value_t = 500)]
    load_batch: usize,
    /// gRPC connections (HTTP/2, one TCP connection each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Warm-up before each measured window, seconds.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Each measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// CheckAccess (and health) open-loop rate, per second.
    #[arg(long, default_value_t = 5_000.0)]
    access_rate: f64,
    /// Calls in flight for the saturation runs.
    #[arg(long, default_value_t = 64)]
    saturation_concurrency: usize,
    /// Activation-to-effect open-loop rate, per second.
    #[arg(long, default_value_t = 50.0)]
    activation_rate: f64,
    /// ActivateRoles calls in flight for the throughput run.
    #[arg(long, default_value_t = 64)]
    activation_concurrency: usize,
    /// Principals that activate (each eligible for "contributor" at "/").
    #[arg(long, default_value_t = 200)]
    activators: usize,
    /// Stream subscribers.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Events per second for the stream workload.
    #[arg(long, default_value_t = 1_000.0)]
    stream_event_rate: f64,
    /// Principals re-synced per UpsertPrincipals call in the stream workload.
    #[arg(long, default_value_t = 10)]
    stream_batch: usize,
    /// How many events behind the catching-up subscriber starts.
    #[arg(long, default_value_t = 10_000)]
    catch_up: i64,
    /// Audit workload: first grow the audit trail to at least this many entries through
    /// the API (principals re-synced by UpsertPrincipals, 5,000 per call); 0 exports the
    /// trail as the other workloads left it. The goal is set at 1000000. Smoke: 3,000.
    #[arg(long, default_value_t = 0)]
    audit_entries: i64,
    /// Expiry: activations (each its own principal and scope), all of 5 minutes.
    #[arg(long, default_value_t = 10_000)]
    expiry_activations: usize,
    /// Expiry: the window the activations' starts, and so their ends, are spread over,
    /// seconds.
    #[arg(long, default_value_t = 60.0)]
    expiry_spread: f64,
    /// Expiry: seconds from the first request to the first start (default: 5 s plus
    /// 5 ms per activation, so the requests are all made before the starts come).
    #[arg(long)]
    expiry_lead: Option<f64>,
    /// Expiry: CheckAccess rate of the checker around the ends (open loop), per second.
    #[arg(long, default_value_t = 2_000.0)]
    expiry_check_rate: f64,
    /// Expiry: how the ends are spread: each activation starting in its call with a
    /// duration that ends it at its planned instant (now), or each starting at a
    /// scheduled instant in the window, provisioned by the activation context's timer,
    /// and lasting 5 minutes (scheduled).
    #[arg(long, value_enum, default_value_t = expiry::Start::Now)]
    expiry_start: expiry::Start,
    /// Expiry: the clock it runs on.
    #[arg(long, value_enum, default_value_t = ExpiryClock::Wall)]
    expiry_clock: ExpiryClock,
    /// Do not pin the server (CPU 0) and the generator (CPU 1) with taskset.
    #[arg(long)]
    no_pin: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/tenure-bench/results.json")]
    out: PathBuf,
}

impl Args {
    fn apply_smoke(&mut self) {
        if !self.smoke {
            return;
        }
        self.principals = 100;
        self.assignments = 200;
        self.management_groups = 2;
        self.warmup = 0.3;
        self.duration = 1.0;
        self.access_rate = 200.0;
        self.saturation_concurrency = 8;
        self.activation_rate = 10.0;
        self.activation_concurrency = 4;
        self.activators = 40;
        self.subscribers = 5;
        self.stream_event_rate = 100.0;
        self.stream_batch = 10;
        self.catch_up = 200;
        self.connections = 2;
        self.load_in_flight = 2;
        self.load_batch = 50;
        self.audit_entries = 3_000;
        self.expiry_activations = 8;
        self.expiry_spread = 1.0;
        // Over 2 s: the activation context provisions a future start no sooner than 2 s
        // after the request.
        self.expiry_lead = Some(2.5);
        self.expiry_check_rate = 200.0;
        self.expiry_clock = ExpiryClock::Dev;
        if self.workloads.is_none() {
            self.workloads = Some(format!("{DEFAULT_WORKLOADS},expiry"));
        }
    }

    fn expiry_knobs(&self) -> expiry::Knobs {
        expiry::Knobs {
            start: self.expiry_start,
            activations: self.expiry_activations,
            spread: Duration::from_secs_f64(self.expiry_spread.max(0.0)),
            lead: self
                .expiry_lead
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
            check_rate: self.expiry_check_rate,
            in_flight: self.activation_concurrency,
        }
    }
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    args.apply_smoke();
    let pin = !args.no_pin && args.addr.is_none() && server::can_pin();
    if pin {
        // The generator on CPU 1 (threads started from now on inherit it), the server
        // on CPU 0: neither steals the other's core.
        if let Err(e) = server::pin_self("1") {
            eprintln!("tenure-bench: cannot pin the generator: {e}");
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenure-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, pin)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tenure-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    json!({
        "nproc": sh("nproc", &[]),
        "cpu": cpu,
        "memory": sh("free", &["-h"]),
        "kernel": sh("uname", &["-r"]),
    })
}

async fn run(args: Args, pin: bool) -> anyhow::Result<bool> {
    let wanted: Vec<&str> = args
        .workloads
        .as_deref()
        .unwrap_or(DEFAULT_WORKLOADS)
        .split(',')
        .map(str::trim)
        .collect();
    let want = |w: &str| wanted.contains(&w);
    let mut rep = report::Report::default();
    // The real date of the measurement (the harness runs on the wall clock).
    #[allow(clippy::disallowed_methods)]
    let date = chrono::Utc::now().to_rfc3339();
    rep.meta.insert("date".into(), json!(date));
    rep.meta.insert(
        "commit".into(),
        json!(sh("git", &["rev-parse", "--short", "HEAD"])),
    );
    rep.meta.insert("machine".into(), machine());
    rep.meta.insert(
        "backend".into(),
        json!(if args.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }),
    );
    rep.meta.insert("smoke".into(), json!(args.smoke));
    rep.meta.insert("pinned".into(), json!(pin));
    rep.meta.insert("args".into(), json!(format!("{args:?}")));

    // The server.
    let fresh_db = match &args.database_url {
        Some(url) if args.addr.is_none() => Some(server::FreshDb::create(url).await?),
        Some(_) => None,
        None => None,
    };
    let launch = server::Launch {
        bin: args.tenure_bin.clone(),
        database_url: fresh_db.as_ref().map(|d| d.url.clone()),
        pin: pin.then(|| "0".to_owned()),
        dev_clock: false,
    };
    let dir = tempfile::Builder::new().prefix("tenure-bench-").tempdir()?;
    let mut owned = None;
    let (addr, proc) = match args.addr {
        Some(a) => {
            server::ensure_loopback_host(&a.ip().to_string())?;
            (a, args.server_pid.map(server::Proc::new))
        }
        None => {
            let s = server::Server::start(&launch, dir.path()).await?;
            eprintln!(
                "server: {} (pid {}), log {}",
                s.addr,
                s.proc.pid,
                s.log().display()
            );
            let r = (s.addr, Some(s.proc));
            owned = Some(s);
            r
        }
    };
    let result = measure(&args, &want, addr, proc, &mut rep).await;

    // Expiry on a development clock: a server of its own, so no other workload runs on
    // a clock the harness moves.
    if result.is_ok()
        && want("expiry")
        && args.expiry_clock == ExpiryClock::Dev
        && let Err(e) = expiry_on_dev_clock(&args, &launch, &mut rep).await
    {
        rep.failures.push(format!("expiry: {e:#}"));
    }

    // Cold start: the same data directory and database, a new process.
    if let (Ok(ds), Some(s), true) = (&result, owned.take(), want("restart")) {
        let t_stop = Instant::now();
        if let Err(e) = s.stop().await {
            // A finding, not a harness failure: note it and go on with the cold start.
            eprintln!("restart: {e}");
            rep.notes.push(format!("{e}"));
        }
        rep.details
            .insert("shutdown_s".into(), json!(t_stop.elapsed().as_secs_f64()));
        eprintln!("restart: cold start over the loaded data");
        let t = Instant::now();
        let s2 = server::Server::start(&launch, dir.path()).await?;
        let listening = s2.started_in;
        let c = client::Conns::open(s2.addr, 1).await?;
        workloads::head(&c, ds).await?;
        let serving = t.elapsed();
        let rss_loaded = s2.proc.rss_mib();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle_loaded = s2.proc.rss_mib();
        rep.rows.push(report::Row::plain(
            "6 scale",
            &format!(
                "cold start to first CheckAccess answer ({} assignments; listening after {:.0} ms)",
                ds.shape.assignments,
                listening.as_secs_f64() * 1000.0
            ),
            serving.as_secs_f64() * 1000.0,
            "ms",
            Some((
                "≤ 3,000 ms (at 1M)".into(),
                serving <= Duration::from_secs(3),
            )),
        ));
        if let Some(r) = rss_idle_loaded {
            rep.rows.push(report::Row::plain(
                "6 scale",
                &format!(
                    "RSS after restart, idle ({} assignments)",
                    ds.shape.assignments
                ),
                r,
                "MiB",
                None,
            ));
        }
        rep.details.insert(
            "restart".into(),
            json!({
                "listening_ms": listening.as_secs_f64() * 1000.0,
                "serving_ms": serving.as_secs_f64() * 1000.0,
                "rss_after_first_call_mib": rss_loaded,
                "rss_idle_mib": rss_idle_loaded,
            }),
        );
        owned = Some(s2);
    }
    if let Some(s) = owned
        && let Err(e) = s.stop().await
    {
        eprintln!("{e}");
        rep.notes.push(format!("{e}"));
    }

    if let Some(db) = fresh_db {
        if args.keep_db {
            eprintln!("kept database {}", db.url);
        } else {
            db.drop_db().await?;
        }
    }
    if let Err(e) = &result {
        rep.failures.push(format!("{e:#}"));
    }

    println!(
        "\nTenure benchmark — {} on {}, commit {}{}",
        rep.meta["backend"].as_str().unwrap_or_default(),
        rep.meta["machine"]["cpu"].as_str().unwrap_or_default(),
        rep.meta["commit"].as_str().unwrap_or_default(),
        if args.smoke {
            " (SMOKE: sizes too small for timings to mean anything)"
        } else {
            ""
        },
    );
    println!("{}", rep.table());
    if let Some(l) = rep.details.get("load") {
        println!("load: {l}");
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&rep)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("JSON: {}", args.out.display());
    for n in &rep.notes {
        println!("note: {n}");
    }
    for f in &rep.failures {
        eprintln!("FAILED: {f}");
    }
    Ok(rep.failures.is_empty())
}

async fn measure(
    args: &Args,
    want: &dyn Fn(&str) -> bool,
    addr: std::net::SocketAddr,
    proc: Option<server::Proc>,
    rep: &mut report::Report,
) -> anyhow::Result<data::Dataset> {
    let c = client::Conns::open(addr, args.connections).await?;
    if let Some(p) = &proc {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(r) = p.rss_mib() {
            rep.rows.push(report::Row::plain(
                "6 scale",
                "RSS of a fresh server, idle (empty database)",
                r,
                "MiB",
                Some(("≤ 30 MiB".into(), r <= 30.0)),
            ));
        }
    }
    let shape = data::Shape {
        principals: args.principals,
        group_every: 10,
        assignments: args.assignments,
        management_groups: args.management_groups,
        subscriptions_per_mg: if args.smoke { 3 } else { 10 },
        resource_groups_per_subscription: if args.smoke { 4 } else { 10 },
        activators: args.activators,
        stream_principals: if args.smoke { 50 } else { 1_000 },
    };
    eprintln!(
        "load: {} principals, {} assignments, {} management groups",
        shape.principals, shape.assignments, shape.management_groups
    );
    let (ds, load) = data::load(
        &c,
        &shape,
        args.load_in_flight,
        args.load_batch,
        proc.as_ref(),
    )
    .await?;
    eprintln!(
        "load: {} assignments in {:.1} s ({:.0}/s)",
        shape.assignments, load.assignments_s, load.assignments_per_s
    );
    rep.rows.push(report::Row::plain(
        "1 access",
        &format!(
            "load: assignments created/s, CreateAssignments of {} in {} calls in flight ({} in {:.1} s)",
            load.assignments_per_call, load.calls_in_flight, shape.assignments, load.assignments_s
        ),
        load.assignments_per_s,
        "/s",
        None,
    ));
    if load.failed_calls > 0 {
        rep.failures.push(format!(
            "load: {} CreateAssignments calls failed ({} assignments not created)",
            load.failed_calls, load.failed_assignments
        ));
    }
    // The bulk load commits far faster than the downstream consumers (audit, alerts,
    // notification projections) apply its events: measure the steady state, not the
    // catch-up, by waiting until the server is idle again.
    if let Some(p) = &proc {
        let settled = settle(p, Duration::from_secs(if args.smoke { 10 } else { 600 })).await;
        eprintln!(
            "load: server idle again after {:.1} s",
            settled.as_secs_f64()
        );
        rep.rows.push(report::Row::plain(
            "1 access",
            "load: the server's consumers catch up with the load (until it idles), s",
            settled.as_secs_f64(),
            "s",
            None,
        ));
        rep.details.insert(
            "settle_after_load_s".into(),
            serde_json::json!(settled.as_secs_f64()),
        );
    }
    rep.details
        .insert("load".into(), serde_json::to_value(&load)?);
    rep.details
        .insert("shape".into(), serde_json::to_value(&shape)?);
    if let Some(r) = proc.as_ref().and_then(server::Proc::rss_mib) {
        rep.rows.push(report::Row::plain(
            "6 scale",
            &format!("RSS after loading {} assignments", shape.assignments),
            r,
            "MiB",
            None,
        ));
    }

    let knobs = workloads::Knobs {
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        access_rate: args.access_rate,
        saturation_concurrency: args.saturation_concurrency,
        activation_rate: args.activation_rate,
        activation_concurrency: args.activation_concurrency,
        subscribers: args.subscribers,
        stream_event_rate: args.stream_event_rate,
        stream_batch: args.stream_batch,
        catch_up_events: args.catch_up,
    };
    let p = proc.as_ref();
    if want("access") || want("overload") {
        let saturation = workloads::access(&c, &ds, &knobs, p, rep).await?;
        if want("overload") {
            workloads::overload(&c, &ds, &knobs, p, rep, saturation).await?;
        }
    }
    if want("alerts") || want("audit") {
        workloads::notifications_catch_up(&c, &ds, rep).await?;
    }
    if want("activation") || want("throughput") || want("alerts") {
        let tokens = c.tokens(&ds.activators).await?;
        let slots = workloads::Slots::new(&ds, tokens.clone());
        let goal = if args.database_url.is_some() {
            50.0
        } else {
            20.0
        };
        if want("activation") {
            workloads::activation_to_effect(&c, &ds, &slots, &knobs, p, goal, rep).await?;
        }
        if want("throughput") {
            workloads::activation_throughput(&c, &slots, &knobs, p, rep).await?;
        }
        // Last of the three: it lowers the "activated too frequently" threshold.
        if want("alerts") {
            workloads::alerts(&c, &ds, &tokens, &knobs, p, rep).await?;
        }
    }
    if want("streams") {
        workloads::streams(&c, &ds, &knobs, p, rep).await?;
    }
    if want("audit") {
        if args.audit_entries > 0 {
            workloads::grow_audit(&c, &ds, args.audit_entries, rep).await?;
        }
        workloads::audit_export(&c, rep).await?;
    }
    // Last: it takes minutes.
    if want("expiry") && args.expiry_clock == ExpiryClock::Wall {
        expiry::expiry(&c, &expiry::BenchClock::Wall, &args.expiry_knobs(), p, rep).await?;
    }
    Ok(ds)
}

/// Runs the expiry workload against a fresh server started with `--dev-clock` (and, on
/// PostgreSQL, a fresh database of its own).
async fn expiry_on_dev_clock(
    args: &Args,
    launch: &server::Launch,
    rep: &mut report::Report,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.addr.is_none(),
        "--expiry-clock dev starts a server of its own; with --addr use --expiry-clock wall"
    );
    let db = match &args.database_url {
        Some(url) => Some(server::FreshDb::create(url).await?),
        None => None,
    };
    let launch = server::Launch {
        database_url: db.as_ref().map(|d| d.url.clone()),
        dev_clock: true,
        ..launch.clone()
    };
    let dir = tempfile::Builder::new()
        .prefix("tenure-bench-expiry-")
        .tempdir()?;
    let s = server::Server::start(&launch, dir.path()).await?;
    eprintln!(
        "expiry: development-clock server {} (pid {}), log {}",
        s.addr,
        s.proc.pid,
        s.log().display()
    );
    let run = async {
        let c = client::Conns::open(s.addr, args.connections).await?;
        let ticker = expiry::DevTicker::start(&c).await?;
        let r = expiry::expiry(
            &c,
            &expiry::BenchClock::Dev(ticker.clone()),
            &args.expiry_knobs(),
            Some(&s.proc),
            rep,
        )
        .await;
        ticker.stop();
        r
    }
    .await;
    if let Err(e) = s.stop().await {
        rep.notes.push(format!("expiry server: {e}"));
    }
    if let Some(db) = db {
        if args.keep_db {
            eprintln!("kept database {}", db.url);
        } else {
            db.drop_db().await?;
        }
    }
    run
}

/// Waits until `p` uses under 5% of a core over a second (its consumers have caught up),
/// at most `limit`. Returns how long it waited.
async fn settle(p: &server::Proc, limit: Duration) -> Duration {
    let start = std::time::Instant::now();
    let mut last = p.cpu_seconds();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = p.cpu_seconds();
        match (last, now) {
            (Some(a), Some(b)) if b - a < 0.05 => break,
            (_, None) => break,
            _ => {}
        }
        last = now;
    }
    start.elapsed()
}
