//! The table printed at the end and the JSON written beside it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::loadgen::RunStats;

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The workload ("1 access", ...).
    pub workload: String,
    /// What was measured.
    pub metric: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The health-check baseline under the same generator, same unit.
    pub baseline: Option<f64>,
    /// value / baseline.
    pub ratio: Option<f64>,
    /// Server CPU per call, µs.
    pub cpu_us: Option<f64>,
    /// The goal, in words.
    pub goal: Option<String>,
    /// Whether the goal is met.
    pub met: Option<bool>,
}

impl Row {
    /// A p99 latency next to the baseline's.
    pub fn latency(
        w: &str,
        m: &str,
        s: &RunStats,
        base: &RunStats,
        goal: Option<(&str, bool)>,
    ) -> Self {
        Self {
            workload: w.into(),
            metric: format!(
                "{m} [p50 {:.3} / p99.9 {:.3} / max {:.3} ms]",
                s.latency.p50_ms, s.latency.p999_ms, s.latency.max_ms
            ),
            value: s.latency.p99_ms,
            unit: "ms".into(),
            baseline: Some(base.latency.p99_ms),
            ratio: Some(s.latency.p99_ms / base.latency.p99_ms.max(1e-9)),
            cpu_us: s.server_cpu_us_per_call,
            goal: goal.map(|g| g.0.to_owned()),
            met: goal.map(|g| g.1),
        }
    }

    /// A throughput next to the baseline's.
    pub fn throughput(
        w: &str,
        m: &str,
        s: &RunStats,
        base: &RunStats,
        goal: Option<(&str, bool)>,
    ) -> Self {
        Self {
            workload: w.into(),
            metric: m.into(),
            value: s.throughput,
            unit: "/s".into(),
            baseline: Some(base.throughput),
            ratio: Some(s.throughput / base.throughput.max(1e-9)),
            cpu_us: s.server_cpu_us_per_call,
            goal: goal.map(|g| g.0.to_owned()),
            met: goal.map(|g| g.1),
        }
    }

    /// A figure without a baseline.
    pub fn plain(w: &str, m: &str, v: f64, unit: &str, goal: Option<(String, bool)>) -> Self {
        Self {
            workload: w.into(),
            metric: m.into(),
            value: v,
            unit: unit.into(),
            baseline: None,
            ratio: None,
            cpu_us: None,
            met: goal.as_ref().map(|g| g.1),
            goal: goal.map(|g| g.0),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// When, what, where.
    pub meta: BTreeMap<String, serde_json::Value>,
    /// The table.
    pub rows: Vec<Row>,
    /// Per-workload details (every histogram summary, error counts, CPU).
    pub details: BTreeMap<String, serde_json::Value>,
    /// What went wrong in the harness's view (failed calls, missing events...): a
    /// non-empty list fails the run.
    pub failures: Vec<String>,
    /// Findings that do not fail the run (a slow shutdown...).
    pub notes: Vec<String>,
}

impl Report {
    /// Notes runs whose calls failed.
    pub fn check(&mut self, runs: &[&RunStats]) {
        for r in runs {
            if r.error_count() > 0 || r.ok == 0 {
                self.failures.push(format!(
                    "{} loop run: {} ok, errors {:?}",
                    r.mode, r.ok, r.errors
                ));
            }
        }
    }

    /// The table, as text.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let fmt = |v: f64| {
            if v.is_nan() {
                "-".to_owned()
            } else if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.3}")
            }
        };
        out.push_str(&format!(
            "{:<13} {:<78} {:>10} {:<3} {:>10} {:>7} {:>8}  {}\n",
            "workload", "metric", "value", "", "baseline", "ratio", "cpu µs", "goal"
        ));
        for r in &self.rows {
            out.push_str(&format!(
                "{:<13} {:<78} {:>10} {:<3} {:>10} {:>7} {:>8}  {}\n",
                r.workload,
                r.metric,
                fmt(r.value),
                r.unit,
                r.baseline.map(fmt).unwrap_or_default(),
                r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
                r.cpu_us.map(|x| format!("{x:.1}")).unwrap_or_default(),
                match (&r.goal, r.met) {
                    (Some(g), Some(true)) => format!("{g}: met"),
                    (Some(g), Some(false)) => format!("{g}: MISSED"),
                    _ => String::new(),
                }
            ));
        }
        out
    }
}
