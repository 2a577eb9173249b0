//! Workload 4 (expiry): activations whose ends are spread over a window; a checker asks
//! CheckAccess about them around their ends (open loop) and a subscriber of the
//! assignments stream times each `InstanceExpired` from the activation's end.
//!
//! Activations last at least 5 minutes (the activation context's minimum), so a run on
//! the wall clock takes the lead, plus 5 minutes, plus the window. Two ways to spread
//! the ends ([`Start`]):
//! - `now` (the default): every activation starts in its ActivateRoles call (provisioned
//!   before the reply, 64 calls in flight) with a duration that ends it at its planned
//!   instant in the window, at least 5 minutes later. The requests are over long before
//!   the ends, so the window measures expiry alone.
//! - `scheduled`: every activation asks for a start in the future, spread over the
//!   window, and lasts exactly 5 minutes: the server grants it and the activation
//!   context's timer provisions it at its start. This measures that timer too; when it
//!   provisions slower than the starts come, the provisioning runs into the ends.
//!
//! With `--expiry-clock dev` (the smoke mode's choice) the workload runs against a
//! server started with `--dev-clock` instead: the harness moves that clock forward
//! along with real time every few milliseconds (so timers fire and ends pass at the
//! pace they would), and jumps it over the idle minutes before the ends. Every instant
//! the workload reads is then the development clock as the last `AdvanceClock` reply
//! gave it: a lower bound of the server's clock, so a check counted as "sent at or after
//! the end" was, and an expired event's delay is accurate to a tick (~5 ms).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde_json::json;
use tenure_proto::activation::v1 as act;
use tenure_proto::assignments::v1 as asg;
use tenure_proto::common::v1::{AssignmentType, PrincipalType, ScopeType};
use tenure_proto::devauth::v1 as dev;
use tonic::transport::Channel;

use crate::client::{Bearer, Conns, req};
use crate::data::{ACTIVATION_ROLE, approval_free_activation};
use crate::loadgen::{self, CallResult, Latency, histogram, kind, record};
use crate::report::{Report, Row};
use crate::server::Proc;
use crate::workloads::{lock, mix};

/// How long each activation lasts: the activation context's minimum
/// (`tenure_activation::engine::MIN_DURATION`).
pub const ACTIVATION_SECONDS: i64 = 5 * 60;

/// Activations per principal: below the default threshold (3) of the "roles activated
/// too frequently" alert, so the notifications context is not busy rewriting that alert
/// while the ends are timed (see BENCHMARKS.md, workload 4).
const ACTIVATIONS_PER_PRINCIPAL: usize = 2;

/// The development clock's ticker period.
const TICK: Duration = Duration::from_millis(5);

/// How the workload spreads the activations' ends (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Start {
    /// Each starts in its call; its duration sets its end.
    Now,
    /// Each starts at a scheduled instant in the window; all last 5 minutes.
    Scheduled,
}

/// Sizes and rates of the expiry workload.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// How the ends are spread.
    pub start: Start,
    /// Activations, each its own (principal, scope).
    pub activations: usize,
    /// The window their starts, and so their ends, are spread over.
    pub spread: Duration,
    /// From the first request to the first planned start (scheduled) or to 5 minutes
    /// before the first planned end (now); `None`: 5 s plus 5 ms per activation.
    pub lead: Option<Duration>,
    /// CheckAccess rate of the checker (open loop), per second.
    pub check_rate: f64,
    /// ActivateRoles calls in flight while requesting.
    pub in_flight: usize,
}

/// Microseconds since the Unix epoch of a protobuf timestamp, rounded up (an end is
/// compared with instants rounded down, so "at or after" never errs early).
fn end_micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1_000_000 + (i64::from(ts.nanos) + 999) / 1000
}

fn to_ts(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

fn wall_micros() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The clock the workload reads "now" from and waits by.
#[derive(Clone)]
pub enum BenchClock {
    /// The wall clock (the server's clock reads the same one).
    Wall,
    /// A server's development clock, moved along with real time by a ticker.
    Dev(Arc<DevTicker>),
}

/// Moves a `--dev-clock` server's clock forward with real time.
pub struct DevTicker {
    /// The server's time as the last AdvanceClock reply gave it, µs since the epoch.
    acked: AtomicI64,
    state: tokio::sync::Mutex<TickState>,
    admin: Bearer,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct TickState {
    client: dev::dev_clock_service_client::DevClockServiceClient<Channel>,
    /// The real instant up to which real time has been added to the clock.
    last: Instant,
}

impl DevTicker {
    /// Reads the server's development clock and starts moving it with real time.
    pub async fn start(c: &Conns) -> anyhow::Result<Arc<Self>> {
        let mut client = c.dev_clock(0);
        let now = client
            .get_time(dev::GetTimeRequest {})
            .await
            .context("GetTime (was the server started with --dev-clock?)")?
            .into_inner()
            .now
            .context("GetTime without a time")?;
        let this = Arc::new(Self {
            acked: AtomicI64::new(end_micros(&now)),
            state: tokio::sync::Mutex::new(TickState {
                client,
                last: Instant::now(),
            }),
            admin: c.admin.clone(),
            task: Mutex::new(None),
        });
        let t = this.clone();
        let task = tokio::spawn(async move {
            let mut warned = false;
            loop {
                tokio::time::sleep(TICK).await;
                if let Err(e) = t.advance(Duration::ZERO).await
                    && !warned
                {
                    warned = true;
                    eprintln!("expiry: moving the development clock failed: {e:#}");
                }
            }
        });
        *lock(&this.task) = Some(task);
        Ok(this)
    }

    /// Adds the real time since the last move, plus `extra`, to the server's clock.
    async fn advance(&self, extra: Duration) -> anyhow::Result<()> {
        let mut s = self.state.lock().await;
        let now = Instant::now();
        let by = now.saturating_duration_since(s.last) + extra;
        if by.is_zero() {
            return Ok(());
        }
        let r = s
            .client
            .advance_clock(req(
                dev::AdvanceClockRequest {
                    by: Some(prost_types::Duration {
                        seconds: i64::try_from(by.as_secs()).unwrap_or(i64::MAX),
                        nanos: i32::try_from(by.subsec_nanos()).unwrap_or(0),
                    }),
                },
                &self.admin,
            ))
            .await
            .context("AdvanceClock")?
            .into_inner();
        s.last = now;
        if let Some(t) = r.now {
            // Rounded down: a lower bound of the server's time.
            let us = t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
            self.acked.fetch_max(us, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Stops moving the clock.
    pub fn stop(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

impl BenchClock {
    /// Now, µs since the epoch (for the development clock: a lower bound of the
    /// server's time).
    pub fn now_us(&self) -> i64 {
        match self {
            Self::Wall => wall_micros(),
            Self::Dev(d) => d.acked.load(Ordering::SeqCst),
        }
    }

    fn is_dev(&self) -> bool {
        matches!(self, Self::Dev(_))
    }

    /// Waits until `t_us`. With `jump`, the development clock is moved over the wait
    /// (to a second before `t_us`, then along with real time); without, it runs at the
    /// pace of real time throughout.
    async fn wait_until(&self, t_us: i64, jump: bool, what: &str) -> anyhow::Result<()> {
        if let Self::Dev(d) = self
            && jump
        {
            let ahead = t_us - self.now_us();
            if ahead > 1_500_000 {
                let by = u64::try_from(ahead - 1_000_000).unwrap_or(0);
                d.advance(Duration::from_micros(by)).await?;
            }
        }
        let mut said = Instant::now();
        loop {
            let left = t_us - self.now_us();
            if left <= 0 {
                return Ok(());
            }
            if said.elapsed() >= Duration::from_secs(60) {
                said = Instant::now();
                eprintln!("expiry: {:.0} s until {what}", left as f64 / 1e6);
            }
            let step = if self.is_dev() {
                Duration::from_millis(1)
            } else {
                Duration::from_micros(u64::try_from(left).unwrap_or(0)).min(Duration::from_secs(1))
            };
            tokio::time::sleep(step).await;
        }
    }
}

/// The activation a check sent at `t` asks about: one whose end is within `w` of `t`
/// (the `h`-th of them, round robin), else the one ending nearest `t`. `ends` is sorted.
pub(crate) fn pick(ends: &[i64], t: i64, w: i64, h: u64) -> Option<usize> {
    if ends.is_empty() {
        return None;
    }
    let lo = ends.partition_point(|&e| e < t - w);
    let hi = ends.partition_point(|&e| e <= t + w);
    if hi > lo {
        return Some(lo + (h % (hi - lo) as u64) as usize);
    }
    let i = ends.partition_point(|&e| e < t);
    Some(if i == 0 {
        0
    } else if i == ends.len() || t - ends[i - 1] <= ends[i] - t {
        i - 1
    } else {
        i
    })
}

/// One activation of the workload.
#[derive(Debug, Clone)]
struct Activation {
    principal: String,
    scope: String,
    request_id: String,
    start_us: i64,
    end_us: i64,
}

/// A request's outcome: the activation and whether it started at once (its planned
/// start had passed), or the error's kind.
type Requested = Result<(Activation, bool), String>;

/// What the checker saw.
#[derive(Default)]
struct Tally {
    before: AtomicU64,
    allowed_before: AtomicU64,
    after: AtomicU64,
    after_within_10ms: AtomicU64,
    violations: AtomicU64,
    examples: Mutex<Vec<String>>,
}

/// The subscriber's arrivals by request id (µs on the workload's clock), and the end
/// each expired event carried.
#[derive(Default)]
struct Arrivals {
    activated: HashMap<String, i64>,
    expired: HashMap<String, (i64, i64)>,
}

/// The principals, scopes and eligibilities the workload activates from: `p` principals
/// `exp00000…` eligible for the activation role at "/", and `r` resource groups under
/// their own management group (leaves: none is another's ancestor, so an ALLOW at one
/// comes only from the activation there).
async fn setup(c: &Conns, p: usize, r: usize) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let principals: Vec<String> = (0..p).map(|i| format!("exp{i:05}")).collect();
    for chunk in principals.chunks(5_000) {
        c.principals(0)
            .upsert_principals(req(
                asg::UpsertPrincipalsRequest {
                    principals: chunk
                        .iter()
                        .map(|id| asg::Principal {
                            id: id.clone(),
                            r#type: PrincipalType::User.into(),
                            display_name: format!("Bench {id}"),
                            user_principal_name: format!("{id}@bench.test"),
                            source: "tenure-bench".into(),
                            ..Default::default()
                        })
                        .collect(),
                    request_id: String::new(),
                },
                &c.admin,
            ))
            .await
            .context("UpsertPrincipals (expiry)")?;
    }
    let mg = "/managementGroups/mg-expiry".to_owned();
    let mut tree = vec![asg::Scope {
        id: mg.clone(),
        parent_id: "/".into(),
        r#type: ScopeType::ManagementGroup.into(),
        ..Default::default()
    }];
    let mut rgs = Vec::with_capacity(r);
    for k in 0..r.div_ceil(10) {
        let sub = format!("/subscriptions/sub-expiry-{k:03}");
        tree.push(asg::Scope {
            id: sub.clone(),
            parent_id: mg.clone(),
            r#type: ScopeType::Subscription.into(),
            ..Default::default()
        });
        for j in 0..(r - 10 * k).min(10) {
            let rg = format!("{sub}/resourceGroups/rg{j:03}");
            tree.push(asg::Scope {
                id: rg.clone(),
                parent_id: sub.clone(),
                r#type: ScopeType::ResourceGroup.into(),
                ..Default::default()
            });
            rgs.push(rg);
        }
    }
    c.scopes(0)
        .import_scopes(req(
            asg::ImportScopesRequest {
                root_id: "/".into(),
                scopes: tree,
                prune: false,
                request_id: String::new(),
            },
            &c.admin,
        ))
        .await
        .context("ImportScopes (expiry)")?;
    approval_free_activation(c).await?;
    for chunk in principals.chunks(32) {
        let futs = chunk.iter().enumerate().map(|(i, a)| {
            let mut client = c.assignments(i);
            let r = req(
                asg::CreateAssignmentRequest {
                    assignment_type: AssignmentType::Eligible.into(),
                    principal_id: a.clone(),
                    role_id: ACTIVATION_ROLE.into(),
                    scope_id: "/".into(),
                    justification: "benchmark expiry".into(),
                    ..Default::default()
                },
                &c.admin,
            );
            async move { client.create_assignment(r).await }
        });
        for r in futures::future::join_all(futs).await {
            r.context("CreateAssignment (expiry eligibility)")?;
        }
    }
    Ok((principals, rgs))
}

/// Subscribes to InstanceActivated and InstanceExpired from `after`, resubscribing from
/// the last sequence seen if the stream ends.
fn subscribe(
    c: &Conns,
    clock: &BenchClock,
    after: i64,
    arrivals: Arc<Mutex<Arrivals>>,
    reconnects: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let (c, clock) = (c.clone(), clock.clone());
    tokio::spawn(async move {
        let mut after = after;
        loop {
            let stream = c
                .events(0)
                .subscribe_events(req(
                    asg::SubscribeEventsRequest {
                        after_sequence: after,
                        event_types: vec!["InstanceActivated".into(), "InstanceExpired".into()],
                    },
                    &c.admin,
                ))
                .await;
            if let Ok(s) = stream {
                let mut s = s.into_inner();
                while let Some(Ok(m)) = s.next().await {
                    let now = clock.now_us();
                    let Some(e) = m.event else { continue };
                    if let Some(meta) = &e.meta {
                        after = after.max(meta.sequence);
                    }
                    let mut a = lock(&arrivals);
                    match e.payload {
                        Some(asg::event::Payload::InstanceActivated(x)) => {
                            if let Some(i) = x.instance {
                                a.activated.entry(i.request_id).or_insert(now);
                            }
                        }
                        Some(asg::event::Payload::InstanceExpired(x)) => {
                            if let Some(i) = x.instance {
                                let end = i.end_time.as_ref().map_or(0, end_micros);
                                a.expired.entry(i.request_id).or_insert((now, end));
                            }
                        }
                        _ => {}
                    }
                }
            }
            reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The assignments log's head (CheckAccess reports it).
async fn head(c: &Conns, principal: &str) -> anyhow::Result<i64> {
    Ok(c.access(0)
        .check_access(req(
            asg::CheckAccessRequest {
                principal_id: principal.to_owned(),
                target: Some(asg::check_access_request::Target::RoleId(
                    ACTIVATION_ROLE.into(),
                )),
                scope_id: "/".into(),
                ..Default::default()
            },
            &c.admin,
        ))
        .await
        .context("CheckAccess")?
        .into_inner()
        .sequence)
}

/// Workload 4: see the module documentation.
pub async fn expiry(
    c: &Conns,
    clock: &BenchClock,
    k: &Knobs,
    server: Option<&Proc>,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let n = k.activations.max(1);
    // p principals × r leaf scopes ≥ n distinct (principal, scope) pairs, each principal
    // activating at most twice: "roles activated too frequently" fires at 3 by default,
    // and 100 principals activating 100 times each made that alert change with every
    // activation (an AlertUpdated of ~130 KB each) while the ends were timed.
    let r = n.min(ACTIVATIONS_PER_PRINCIPAL);
    let p = n.div_ceil(r);
    let clock_name = if clock.is_dev() {
        "development clock"
    } else {
        "wall clock"
    };
    eprintln!(
        "expiry: {n} activations of {ACTIVATION_SECONDS} s over {p} principals × {r} scopes, ends spread over {:.1} s ({clock_name})",
        k.spread.as_secs_f64()
    );
    let (principals, scopes) = setup(c, p, r).await?;
    let tokens = Arc::new(c.tokens(&principals).await?);
    let from = head(c, &principals[0]).await?;
    let arrivals: Arc<Mutex<Arrivals>> = Arc::default();
    let reconnects = Arc::new(AtomicU64::new(0));
    let sub = subscribe(c, clock, from, arrivals.clone(), reconnects.clone());

    // Requests. Scheduled: item i starts at s0 + i·spread/n and lasts exactly 5 minutes.
    // Now: item i starts in its call and ends at s0 + 5 min + i·spread/n (or 5 minutes
    // after the call, whichever is later).
    let lead = k
        .lead
        .unwrap_or_else(|| Duration::from_secs(5) + Duration::from_millis(5) * n as u32);
    let s0 = clock.now_us() + micros(lead);
    let spread = micros(k.spread);
    let planned_start = move |i: usize| s0 + spread * i as i64 / n as i64;
    let min_us = ACTIVATION_SECONDS * 1_000_000;
    eprintln!(
        "expiry: requesting ({:?}), first planned {} in {:.1} s",
        k.start,
        if k.start == Start::Now {
            "end"
        } else {
            "start"
        },
        (lead.as_secs_f64() + if k.start == Start::Now { 300.0 } else { 0.0 })
    );
    let next = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let t_req = Instant::now();
    let cpu0 = server.and_then(Proc::cpu_seconds);
    let mut workers = Vec::new();
    for w in 0..k.in_flight.max(1) {
        let (c, next, tokens, first_error) =
            (c.clone(), next.clone(), tokens.clone(), first_error.clone());
        let (principals, scopes, clock, mode) =
            (principals.clone(), scopes.clone(), clock.clone(), k.start);
        workers.push(tokio::spawn(async move {
            let mut done: Vec<Requested> = Vec::new();
            let mut hist = histogram();
            let mut client = c.activation(w);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let who = &principals[i % principals.len()];
                let scope = &scopes[i / principals.len()];
                let Some(token) = tokens.get(who) else {
                    done.push(Err("no token".into()));
                    continue;
                };
                // Scheduled: late when its start had passed (it starts at once). Now: late
                // when the 5-minute minimum ends it after its planned end.
                let (duration_us, start_time, clamped) = match mode {
                    Start::Scheduled => (min_us, Some(to_ts(planned_start(i))), false),
                    Start::Now => {
                        let want = planned_start(i) + min_us - clock.now_us();
                        (want.max(min_us), None, want < min_us)
                    }
                };
                let t = Instant::now();
                let r = client
                    .activate_roles(req(
                        act::ActivateRolesRequest {
                            items: vec![act::ActivationItem {
                                role_id: ACTIVATION_ROLE.into(),
                                scope_id: scope.clone(),
                                duration: Some(prost_types::Duration {
                                    seconds: duration_us / 1_000_000,
                                    nanos: i32::try_from(duration_us % 1_000_000 * 1000)
                                        .unwrap_or(0),
                                }),
                                start_time,
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                        token,
                    ))
                    .await;
                record(&mut hist, t.elapsed());
                let out = match r {
                    Err(e) => {
                        lock(&first_error)
                            .get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                        Err(kind(&e))
                    }
                    Ok(resp) => {
                        let item = resp.into_inner().results.into_iter().next();
                        match item {
                            None => Err("no result".to_owned()),
                            Some(item) => {
                                let outcome = item.outcome();
                                let rq = item.request.unwrap_or_default();
                                match (outcome, rq.start_time, rq.end_time) {
                                    (
                                        act::ItemOutcome::Granted | act::ItemOutcome::Provisioned,
                                        Some(s),
                                        Some(e),
                                    ) => Ok((
                                        Activation {
                                            principal: who.clone(),
                                            scope: scope.clone(),
                                            request_id: rq.id,
                                            start_us: end_micros(&s),
                                            end_us: end_micros(&e),
                                        },
                                        match mode {
                                            Start::Scheduled => {
                                                outcome == act::ItemOutcome::Provisioned
                                            }
                                            Start::Now => clamped,
                                        },
                                    )),
                                    (o, _, _) => Err(format!("{o:?}")),
                                }
                            }
                        }
                    }
                };
                done.push(out);
            }
            (done, hist)
        }));
    }
    let mut acts: Vec<Activation> = Vec::with_capacity(n);
    let mut req_hist = histogram();
    let (mut late, mut req_errors) = (0u64, Counts::default());
    for wk in workers {
        let (done, hist) = wk.await.context("request worker")?;
        let _ = req_hist.add(&hist);
        for r in done {
            match r {
                Ok((a, was_late)) => {
                    late += u64::from(was_late);
                    acts.push(a);
                }
                Err(e) => req_errors.add(e),
            }
        }
    }
    let req_s = t_req.elapsed().as_secs_f64();
    let req_cpu = match (cpu0, server.and_then(Proc::cpu_seconds)) {
        (Some(a), Some(b)) => Some((b - a) * 1e6 / n as f64),
        _ => None,
    };
    let req_lat = Latency::of(&req_hist);
    let late_means = match k.start {
        Start::Scheduled => "started late (at once)",
        Start::Now => "end later than planned (5-minute minimum)",
    };
    eprintln!(
        "expiry: {} requests in {req_s:.1} s ({:.0}/s), {late} {late_means}, {} failed",
        acts.len(),
        acts.len() as f64 / req_s.max(1e-9),
        req_errors.total()
    );
    if let Some(e) = lock(&first_error).clone() {
        eprintln!("  first ActivateRoles error: {e}");
    }
    anyhow::ensure!(!acts.is_empty(), "expiry: no activation was granted");
    acts.sort_by_key(|a| a.end_us);
    let first_end = acts[0].end_us;
    let last_end = acts[acts.len() - 1].end_us;
    let last_start = acts.iter().map(|a| a.start_us).max().unwrap_or(s0);

    // Provisioning: every start has passed; wait for the InstanceActivated events, at
    // most until two seconds before the first end (on the development clock, a minute
    // of real time: the clock then jumps), saying how many are still missing.
    let first_start = acts.iter().map(|a| a.start_us).min().unwrap_or(s0);
    clock
        .wait_until(first_start, false, "the first start")
        .await?;
    let (prov_t0, prov_cpu0) = (Instant::now(), server.and_then(Proc::cpu_seconds));
    clock
        .wait_until(last_start + 1_000_000, false, "the last start")
        .await?;
    let t_wait = Instant::now();
    let mut said = Instant::now();
    let prov_cores;
    loop {
        let missing = {
            let a = lock(&arrivals);
            acts.iter()
                .filter(|x| !a.activated.contains_key(&x.request_id))
                .count()
        };
        let out_of_time = clock.now_us() >= first_end - 2_000_000
            || (clock.is_dev() && t_wait.elapsed() > Duration::from_secs(60));
        if missing == 0 || out_of_time {
            prov_cores = match (prov_cpu0, server.and_then(Proc::cpu_seconds)) {
                (Some(a), Some(b)) => Some((b - a) / prov_t0.elapsed().as_secs_f64().max(1e-9)),
                _ => None,
            };
            eprintln!(
                "expiry: {} of {} provisioned {:.1} s after the last start; first end in {:.1} s",
                acts.len() - missing,
                acts.len(),
                (clock.now_us() - last_start) as f64 / 1e6,
                (first_end - clock.now_us()) as f64 / 1e6
            );
            break;
        }
        if said.elapsed() >= Duration::from_secs(10) {
            said = Instant::now();
            eprintln!("expiry: {missing} activations not provisioned yet");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The checker: from a second before the first end to a second after the last.
    clock
        .wait_until(first_end - 1_000_000, true, "the first end")
        .await?;
    let window = Duration::from_micros(u64::try_from(last_end - first_end).unwrap_or(0))
        + Duration::from_secs(2);
    // Checks go to activations ending within `w` of the send instant.
    let w = (2 * spread / n as i64).max(50_000);
    let ends: Arc<Vec<i64>> = Arc::new(acts.iter().map(|a| a.end_us).collect());
    let acts = Arc::new(acts);
    let tally = Arc::new(Tally::default());
    eprintln!(
        "expiry: checker at {}/s for {:.1} s around the ends",
        k.check_rate,
        window.as_secs_f64()
    );
    let checks = {
        let (c, clock, ends, acts, tally) = (
            c.clone(),
            clock.clone(),
            ends.clone(),
            acts.clone(),
            tally.clone(),
        );
        loadgen::open_loop(k.check_rate, Duration::ZERO, window, server, move |i| {
            let (c, clock, ends, acts, tally) = (
                c.clone(),
                clock.clone(),
                ends.clone(),
                acts.clone(),
                tally.clone(),
            );
            Box::pin(async move {
                let mut a = c.access(i as usize);
                let sent = clock.now_us();
                let j = pick(&ends, sent, w, mix(i)).ok_or("no activation")?;
                let x = &acts[j];
                let allowed = a
                    .check_access(req(
                        asg::CheckAccessRequest {
                            principal_id: x.principal.clone(),
                            target: Some(asg::check_access_request::Target::RoleId(
                                ACTIVATION_ROLE.into(),
                            )),
                            scope_id: x.scope.clone(),
                            ..Default::default()
                        },
                        &c.admin,
                    ))
                    .await
                    .map_err(|e| kind(&e))?
                    .into_inner()
                    .allowed;
                if sent >= x.end_us {
                    tally.after.fetch_add(1, Ordering::Relaxed);
                    if sent - x.end_us < 10_000 {
                        tally.after_within_10ms.fetch_add(1, Ordering::Relaxed);
                    }
                    if allowed {
                        tally.violations.fetch_add(1, Ordering::Relaxed);
                        let mut ex = lock(&tally.examples);
                        if ex.len() < 5 {
                            ex.push(format!(
                                "{} {} at {}: ALLOW for a check sent {} µs after its end",
                                x.principal,
                                x.scope,
                                x.request_id,
                                sent - x.end_us
                            ));
                        }
                    }
                } else {
                    tally.before.fetch_add(1, Ordering::Relaxed);
                    if allowed {
                        tally.allowed_before.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            }) as futures::future::BoxFuture<'static, CallResult>
        })
        .await
    };

    // The last expired events.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let missing = {
            let a = lock(&arrivals);
            acts.iter()
                .filter(|x| !a.expired.contains_key(&x.request_id))
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sub.abort();
    if let BenchClock::Dev(d) = clock {
        d.stop();
    }
    // Scheduled start → InstanceActivated, over the whole run.
    let mut prov_hist = histogram();
    let mut not_provisioned = 0u64;
    let mut last_activated = i64::MIN;
    {
        let a = lock(&arrivals);
        for x in acts.iter() {
            match a.activated.get(&x.request_id) {
                Some(&t) => {
                    last_activated = last_activated.max(t);
                    record(
                        &mut prov_hist,
                        Duration::from_micros(u64::try_from(t - x.start_us).unwrap_or(0)),
                    );
                }
                None => not_provisioned += 1,
            }
        }
    }
    let prov = Latency::of(&prov_hist);
    // From the first start to the last InstanceActivated: the rate the starts were
    // provisioned at (they were due at n / spread per second).
    let provisioned_per_s =
        prov.count as f64 / ((last_activated - first_start) as f64 / 1e6).max(1e-9);
    let mut exp_hist = histogram();
    let (mut early, mut missing, mut end_mismatch) = (0u64, 0u64, 0u64);
    {
        let a = lock(&arrivals);
        for x in acts.iter() {
            match a.expired.get(&x.request_id) {
                Some(&(t, end)) => {
                    // The reply's end may carry nanoseconds; the stored instance (and so
                    // its event and the access model) keeps microseconds.
                    if (end - x.end_us).abs() > 1 {
                        end_mismatch += 1;
                    }
                    if t < x.end_us {
                        early += 1;
                    }
                    record(
                        &mut exp_hist,
                        Duration::from_micros(u64::try_from(t - x.end_us).unwrap_or(0)),
                    );
                }
                None => missing += 1,
            }
        }
    }
    let exp = Latency::of(&exp_hist);
    let t = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (before, allowed_before, after, after_10, violations) = (
        t(&tally.before),
        t(&tally.allowed_before),
        t(&tally.after),
        t(&tally.after_within_10ms),
        t(&tally.violations),
    );
    let dev_note = if clock.is_dev() {
        " [development clock]"
    } else {
        ""
    };
    let (requests, started) = match k.start {
        Start::Scheduled => (
            "ActivateRoles with a future start (GRANTED)",
            format!(
                "scheduled start → InstanceActivated at subscriber p99 ({} of {} arrived; provisioned at {provisioned_per_s:.0}/s, due at {:.0}/s)",
                prov.count,
                acts.len(),
                n as f64 / k.spread.as_secs_f64().max(1e-9),
            ),
        ),
        Start::Now => (
            "ActivateRoles provisioned in the call, durations set to the planned ends",
            format!(
                "start (in the call) → InstanceActivated at subscriber p99 ({} of {} arrived)",
                prov.count,
                acts.len(),
            ),
        ),
    };
    rep.rows.push(Row::plain(
        "4 expiry",
        &format!(
            "{requests}, {} in flight ({n}; p99 {:.1} ms; {late} {late_means}){dev_note}",
            k.in_flight, req_lat.p99_ms
        ),
        acts.len() as f64 / req_s.max(1e-9),
        "/s",
        None,
    ));
    rep.rows.push(Row::plain(
        "4 expiry",
        &format!(
            "{started} [p50 {:.1} / max {:.1} ms]{dev_note}",
            prov.p50_ms, prov.max_ms
        ),
        prov.p99_ms,
        "ms",
        None,
    ));
    rep.rows.push(Row::plain(
        "4 expiry",
        &format!(
            "ALLOW answers to checks sent at or after the end ({after} such checks, {after_10} within 10 ms of it; {allowed_before} of {before} before it allowed){dev_note}"
        ),
        violations as f64,
        "",
        Some(("0".into(), violations == 0 && after > 0)),
    ));
    rep.rows.push(Row::plain(
        "4 expiry",
        &format!(
            "CheckAccess p99 during the ends at {}/s, open loop [p50 {:.3} / p99.9 {:.3} / max {:.3} ms]{dev_note}",
            k.check_rate, checks.latency.p50_ms, checks.latency.p999_ms, checks.latency.max_ms
        ),
        checks.latency.p99_ms,
        "ms",
        None,
    ));
    rep.rows.push(Row::plain(
        "4 expiry",
        &format!(
            "end → InstanceExpired at subscriber p99 ({} of {} arrived; p50 {:.1} / max {:.1} ms){dev_note}",
            exp.count,
            acts.len(),
            exp.p50_ms,
            exp.max_ms
        ),
        exp.p99_ms,
        "ms",
        Some(("≤ 100 ms".into(), exp.p99_ms <= 100.0 && missing == 0)),
    ));
    let examples = lock(&tally.examples).clone();
    rep.details.insert(
        "expiry".into(),
        json!({
            "clock": clock_name,
            "start": format!("{:?}", k.start),
            "activations": n,
            "granted": acts.len(),
            "principals": p,
            "scopes": r,
            "activation_seconds": ACTIVATION_SECONDS,
            "spread_s": k.spread.as_secs_f64(),
            "lead_s": lead.as_secs_f64(),
            "ends_spread_s": (last_end - first_end) as f64 / 1e6,
            "requests": {
                "in_flight": k.in_flight,
                "seconds": req_s,
                "per_s": acts.len() as f64 / req_s.max(1e-9),
                "latency": req_lat,
                "late": late,
                "late_means": late_means,
                "errors": req_errors.0,
                "server_cpu_us_per_request": req_cpu,
            },
            "start_to_activated": prov,
            "provisioned_per_s": provisioned_per_s,
            "server_cpu_cores_while_provisioning": prov_cores,
            "not_provisioned": not_provisioned,
            "checker": {
                "window_around_end_ms": w as f64 / 1000.0,
                "run": serde_json::to_value(&checks).unwrap_or_default(),
                "checks_before_end": before,
                "allowed_before_end": allowed_before,
                "checks_at_or_after_end": after,
                "checks_within_10ms_after_end": after_10,
                "allow_at_or_after_end": violations,
                "violation_examples": examples,
            },
            "end_to_expired_event": exp,
            "expired_events_missing": missing,
            "expired_events_before_end": early,
            "expired_event_end_mismatch": end_mismatch,
            "stream_reconnects": reconnects.load(Ordering::Relaxed),
        }),
    );
    rep.check(&[&checks]);
    if req_errors.total() > 0 {
        rep.failures.push(format!(
            "expiry: {} ActivateRoles calls failed: {:?}",
            req_errors.total(),
            req_errors.0
        ));
    }
    if violations > 0 {
        rep.failures.push(format!(
            "expiry: {violations} checks sent at or after an activation's end were allowed: {examples:?}"
        ));
    }
    if after == 0 || allowed_before == 0 {
        rep.failures.push(format!(
            "expiry: the checker tested nothing ({after} checks after an end, {allowed_before} allowed before one)"
        ));
    }
    // On the development clock an event may arrive before the harness's lower bound of
    // the server's time reaches the end; on the wall clock that would be a bug.
    let early_is_bug = if clock.is_dev() { 0 } else { early };
    if missing > 0 || not_provisioned > 0 || early_is_bug > 0 || end_mismatch > 0 {
        rep.failures.push(format!(
            "expiry: {not_provisioned} activations never reported activated, {missing} expired events missing, {early} before the end, {end_mismatch} with another end"
        ));
    }
    Ok(())
}

/// Failed calls by kind.
#[derive(Default)]
struct Counts(std::collections::BTreeMap<String, u64>);

impl Counts {
    fn add(&mut self, k: String) {
        *self.0.entry(k).or_default() += 1;
    }
    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_chooses_among_the_ends_near_the_instant() {
        let ends = [100, 200, 300, 400];
        // Within 60 of 210: only 200.
        assert_eq!(pick(&ends, 210, 60, 7), Some(1));
        // Within 110 of 250: 200 and 300, in turn.
        assert_eq!(pick(&ends, 250, 110, 0), Some(1));
        assert_eq!(pick(&ends, 250, 110, 1), Some(2));
        // None within the window: the nearest, before the first and after the last too.
        assert_eq!(pick(&ends, 260, 10, 3), Some(2));
        assert_eq!(pick(&ends, 240, 10, 3), Some(1));
        assert_eq!(pick(&ends, 0, 10, 3), Some(0));
        assert_eq!(pick(&ends, 1_000, 10, 3), Some(3));
        assert_eq!(pick(&[], 5, 10, 0), None);
    }

    #[test]
    fn ends_round_up_and_timestamps_round_trip() {
        let ts = prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 1_500,
        };
        assert_eq!(end_micros(&ts), 1_800_000_000_000_002);
        assert_eq!(
            end_micros(&to_ts(1_800_000_000_123_456)),
            1_800_000_000_123_456
        );
        assert_eq!(to_ts(-1).nanos, 999_999_000);
    }
}
