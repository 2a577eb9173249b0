//! The load generator: open loop at a constant arrival rate (sends scheduled by the
//! clock, latency measured from the scheduled instant, so a slow server cannot slow the
//! generator down and hide its own delay: no coordinated omission), and closed loop
//! (a fixed number of callers, each sending when its previous call returned: the
//! saturation throughput). Both record into HDR histograms after a warm-up and read
//! the server's CPU time around the measured window.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::server::Proc;

/// The outcome of one call: `Err` carries a short error kind ("Unavailable", ...).
pub type CallResult = Result<(), String>;

/// A latency histogram in microseconds (1 µs to 120 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Records `d` (saturating at the histogram's maximum).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl Latency {
    /// Summarises `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// What one run of the generator measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    /// "open" or "closed".
    pub mode: String,
    /// Target arrival rate (open loop), per second.
    pub target_rate: Option<f64>,
    /// Callers in flight (closed loop).
    pub concurrency: Option<usize>,
    /// Successful calls in the measured window.
    pub ok: u64,
    /// Failed calls in the measured window, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Calls the open-loop generator could not send because too many were in flight.
    pub dropped: u64,
    /// Completed calls per second over the measured window.
    pub throughput: f64,
    /// Latency of successful calls (open loop: from the scheduled send instant).
    pub latency: Latency,
    /// How late the open-loop scheduler dispatched sends (its own health), p99 ms.
    pub dispatch_lag_p99_ms: Option<f64>,
    /// Server CPU time (user + system) per completed call, microseconds.
    pub server_cpu_us_per_call: Option<f64>,
    /// Server CPU utilisation over the window, in cores.
    pub server_cpu_cores: Option<f64>,
    /// Measured window, seconds.
    pub window_s: f64,
}

impl RunStats {
    /// All failed calls.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

struct Recorder {
    hist: Histogram<u64>,
    lag: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            hist: histogram(),
            lag: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }
    fn add(&mut self, r: &CallResult, d: Duration) {
        match r {
            Ok(()) => {
                self.ok += 1;
                record(&mut self.hist, d);
            }
            Err(kind) => *self.errors.entry(kind.clone()).or_default() += 1,
        }
    }
}

fn lock(r: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Most calls the open-loop generator keeps in flight before it counts sends as dropped.
const MAX_IN_FLIGHT: usize = 20_000;

/// Sends `call(i)` at `rate` per second for `warmup + duration`; measures the calls
/// scheduled after the warm-up, each from its scheduled instant to its completion.
/// The schedule is kept by a dedicated thread (`std::thread::sleep` has tens of
/// microseconds of resolution; tokio's timer has a millisecond), which spawns each call
/// on the runtime.
pub async fn open_loop<F, Fut>(
    rate: f64,
    warmup: Duration,
    duration: Duration,
    server: Option<&Proc>,
    call: F,
) -> RunStats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    let call = Arc::new(call);
    let rec = Arc::new(Mutex::new(Recorder::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = ((warmup + duration).as_secs_f64() * rate).ceil() as u64;
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + warmup;
    let handle = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler = {
        let (rec, in_flight, dropped) = (rec.clone(), in_flight.clone(), dropped.clone());
        std::thread::spawn(move || {
            for i in 0..total {
                let target = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if target > now {
                    // A dedicated OS thread, not a runtime thread: its sleep has tens of
                    // microseconds of resolution where tokio's timer has a millisecond.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(target - now);
                }
                let measured = target >= measure_from;
                if measured {
                    record(
                        &mut lock(&rec).lag,
                        Instant::now().saturating_duration_since(target),
                    );
                }
                if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    if measured {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (call, rec, in_flight) = (call.clone(), rec.clone(), in_flight.clone());
                handle.spawn(async move {
                    let r = call(i).await;
                    let d = Instant::now().saturating_duration_since(target);
                    if measured {
                        lock(&rec).add(&r, d);
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            let _ = done_tx.send(());
        })
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = server.and_then(Proc::cpu_seconds);
    let _ = done_rx.await;
    let _ = scheduler.join();
    // Wait for the calls still in flight (bounded: a call's deadline is well below).
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let end = Instant::now();
    let cpu1 = server.and_then(Proc::cpu_seconds);
    let r = lock(&rec);
    let window = end.saturating_duration_since(measure_from).as_secs_f64();
    let done = r.ok + r.errors.values().sum::<u64>();
    let mut s = RunStats {
        mode: "open".into(),
        target_rate: Some(rate),
        ok: r.ok,
        errors: r.errors.clone(),
        dropped: dropped.load(Ordering::Relaxed),
        throughput: done as f64 / duration.as_secs_f64(),
        latency: Latency::of(&r.hist),
        dispatch_lag_p99_ms: Some(r.lag.value_at_quantile(0.99) as f64 / 1000.0),
        window_s: window,
        ..Default::default()
    };
    cpu(&mut s, cpu0, cpu1, done, window);
    s
}

/// Runs `workers` callers, each calling `call(worker, n)` again as soon as its previous
/// call returned, for `warmup + duration`; measures the calls started after the
/// warm-up.
pub async fn closed_loop<F, Fut>(
    workers: usize,
    warmup: Duration,
    duration: Duration,
    server: Option<&Proc>,
    call: F,
) -> RunStats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop = measure_from + duration;
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                if t >= stop {
                    break;
                }
                let r = call(w, n).await;
                n += 1;
                if t >= measure_from {
                    rec.add(&r, t.elapsed());
                }
            }
            rec
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = server.and_then(Proc::cpu_seconds);
    let mut all = Recorder::new();
    for t in tasks {
        if let Ok(r) = t.await {
            let _ = all.hist.add(&r.hist);
            all.ok += r.ok;
            for (k, v) in r.errors {
                *all.errors.entry(k).or_default() += v;
            }
        }
    }
    let cpu1 = server.and_then(Proc::cpu_seconds);
    let window = measure_from.elapsed().as_secs_f64();
    let done = all.ok + all.errors.values().sum::<u64>();
    let mut s = RunStats {
        mode: "closed".into(),
        concurrency: Some(workers),
        ok: all.ok,
        errors: all.errors,
        throughput: done as f64 / window,
        latency: Latency::of(&all.hist),
        window_s: window,
        ..Default::default()
    };
    cpu(&mut s, cpu0, cpu1, done, window);
    s
}

fn cpu(s: &mut RunStats, cpu0: Option<f64>, cpu1: Option<f64>, done: u64, window: f64) {
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let used = (b - a).max(0.0);
        if done > 0 {
            s.server_cpu_us_per_call = Some(used * 1e6 / done as f64);
        }
        if window > 0.0 {
            s.server_cpu_cores = Some(used / window);
        }
    }
}

/// The short kind of a gRPC error, for counting.
pub fn kind(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}
