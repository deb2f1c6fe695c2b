//! The figures of a run, as text for a person or JSON for a script.
//!
//! [`Report::new`] condenses the merged histograms and counts into plain
//! numbers; [`render_text`] and `serde_json` then show those same numbers, so
//! the two forms cannot disagree. Both are pure: tests build a report from a
//! hand-made recorder and check its shape.
//!
//! Throughput counts answers (200s, and 404s for reads) per second of the
//! measured window; errors are listed by kind and never counted as work done.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::args::{Distribution, Plan, TargetKind};
use super::cpu::CpuCost;
use super::stats::{OpStats, OutcomeCounts, Recorder};

/// Latency percentiles of answers, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    /// `None` when nothing was answered: there is no latency to speak of.
    fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        })
    }
}

/// The figures of one operation kind (or of all of them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpReport {
    /// Requests sent in the measured window.
    pub requests: u64,
    /// Answers per second of the measured window.
    pub ops_per_sec: f64,
    /// Requests that failed, of every kind (the sum of the error outcomes).
    pub errors: u64,
    pub outcomes: OutcomeCounts,
    pub latency_us: Option<Latency>,
}

impl OpReport {
    fn new(stats: &OpStats, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        let answers = stats.outcomes.answers() as f64;
        OpReport {
            requests: stats.outcomes.requests(),
            ops_per_sec: if secs > 0.0 { answers / secs } else { 0.0 },
            errors: stats.outcomes.errors(),
            outcomes: stats.outcomes.clone(),
            latency_us: Latency::from_histogram(&stats.latency_us),
        }
    }
}

/// Everything a run measured, and the settings it ran with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub target: TargetKind,
    pub url: String,
    pub clients: usize,
    pub read_pct: u32,
    pub keys: u64,
    pub distribution: Distribution,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipf_s: Option<f64>,
    pub value_size: usize,
    pub warmup_secs: f64,
    /// Wall time of the measured window.
    pub elapsed_secs: f64,
    pub all: OpReport,
    pub read: OpReport,
    pub write: OpReport,
    /// The generator's own CPU use over the measured window.
    pub generator_cpu: CpuCost,
    /// Cores of this machine, to put `generator_cpu.cores` in proportion.
    pub machine_cores: usize,
}

impl Report {
    pub fn new(plan: &Plan, stats: &Recorder, elapsed: Duration, cpu: CpuCost) -> Self {
        Report {
            target: plan.target,
            url: plan.url.clone(),
            clients: plan.clients,
            read_pct: plan.read_pct,
            keys: plan.keys,
            distribution: plan.distribution,
            zipf_s: (plan.distribution == Distribution::Zipf).then_some(plan.zipf_s),
            value_size: plan.value_size,
            warmup_secs: plan.warmup.as_secs_f64(),
            elapsed_secs: elapsed.as_secs_f64(),
            all: OpReport::new(&stats.all(), elapsed),
            read: OpReport::new(&stats.read, elapsed),
            write: OpReport::new(&stats.write, elapsed),
            generator_cpu: cpu,
            machine_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The rows of the tables: read and write when they were sent, then all.
    fn rows(&self) -> Vec<(&'static str, &OpReport)> {
        let mut rows = Vec::new();
        for (name, op) in [("read", &self.read), ("write", &self.write)] {
            if op.requests > 0 {
                rows.push((name, op));
            }
        }
        rows.push(("all", &self.all));
        rows
    }
}

/// The report as a person reads it. Latencies are in milliseconds.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    render_header(&mut out, r);
    render_throughput(&mut out, r);
    render_errors(&mut out, r);
    render_cpu(&mut out, r);
    out
}

fn render_header(out: &mut String, r: &Report) {
    let target = match r.target {
        TargetKind::Kvlab => "kvlab",
        TargetKind::Etcd => "etcd",
        TargetKind::Bare => "a bare HTTP server",
    };
    let dist = match r.zipf_s {
        Some(s) => format!("zipf s={s}"),
        None => "uniform".to_string(),
    };
    let _ = writeln!(out, "kvlab bench: {target} at {}", r.url);
    let _ = writeln!(
        out,
        "  {} clients, {:.2} s measured after {:.2} s warm-up; {}% reads; {} keys ({dist}); {} B values",
        r.clients, r.elapsed_secs, r.warmup_secs, r.read_pct, r.keys, r.value_size
    );
    out.push('\n');
}

fn render_throughput(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "{:<6} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ops/s", "answers", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for (name, op) in r.rows() {
        let _ = write!(
            out,
            "{name:<6} {:>10.1} {:>9} {:>7}",
            op.ops_per_sec,
            op.outcomes.answers(),
            op.errors
        );
        match &op.latency_us {
            Some(l) => {
                for us in [l.p50, l.p90, l.p99, l.p99_9, l.max] {
                    let _ = write!(out, " {:>9.3}", us as f64 / 1000.0);
                }
            }
            None => {
                let _ = write!(out, " {:>9}", "-");
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

fn render_errors(out: &mut String, r: &Report) {
    let _ = writeln!(
        out,
        "{:<6} {:>9} {:>7} {:>7} {:>8} {:>8} {:>6}   {:>9}",
        "errors", "429", "503", "timeout", "connect", "other", "", "not found"
    );
    for (name, op) in r.rows() {
        let o = &op.outcomes;
        let _ = writeln!(
            out,
            "{name:<6} {:>9} {:>7} {:>7} {:>8} {:>8} {:>6}   {:>9}",
            o.rate_limited_429, o.unavailable_503, o.timeout, o.connect, o.other, "", o.not_found
        );
    }
    let _ = writeln!(
        out,
        "(\"not found\" counts reads of missing keys: answers, not errors)\n"
    );
}

fn render_cpu(out: &mut String, r: &Report) {
    let c = &r.generator_cpu;
    let share = 100.0 * c.cores / r.machine_cores.max(1) as f64;
    let _ = writeln!(
        out,
        "generator CPU: {:.2} cores ({:.2} s CPU over {:.2} s wall), {share:.0}% of this {}-core machine",
        c.cores, c.cpu_secs, c.wall_secs, r.machine_cores
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::args::Stop;
    use crate::bench::keys::OpKind;
    use crate::bench::target::Outcome;

    fn plan() -> Plan {
        Plan {
            url: "http://127.0.0.1:8000".into(),
            urls: vec!["http://127.0.0.1:8000".into()],
            target: TargetKind::Kvlab,
            clients: 4,
            stop: Stop::Ops(10),
            read_pct: 50,
            keys: 100,
            distribution: Distribution::Uniform,
            zipf_s: 1.0,
            value_size: 16,
            warmup: Duration::ZERO,
            preload: false,
            timeout: Duration::from_secs(1),
            seed: 1,
            json: false,
        }
    }

    /// 3 reads (one of them a miss), 2 writes answered, one 429, one 503.
    fn sample() -> Report {
        let mut rec = Recorder::default();
        for ms in [1, 2] {
            rec.record(OpKind::Read, Outcome::Ok, Duration::from_millis(ms));
        }
        rec.record(OpKind::Read, Outcome::NotFound, Duration::from_millis(3));
        rec.record(OpKind::Write, Outcome::Ok, Duration::from_millis(4));
        rec.record(OpKind::Write, Outcome::Ok, Duration::from_millis(10));
        rec.record(
            OpKind::Write,
            Outcome::RateLimited,
            Duration::from_micros(50),
        );
        rec.record(
            OpKind::Read,
            Outcome::Unavailable,
            Duration::from_micros(50),
        );
        let cpu = CpuCost::new(Duration::from_millis(100), Duration::from_secs(2));
        Report::new(&plan(), &rec, Duration::from_secs(2), cpu)
    }

    #[test]
    fn figures_add_up() {
        let r = sample();
        assert_eq!(r.read.requests, 4);
        assert_eq!(r.write.requests, 3);
        assert_eq!(r.all.requests, 7);
        assert_eq!(r.all.errors, 2);
        // 5 answers over 2 s.
        assert!((r.all.ops_per_sec - 2.5).abs() < 1e-9);
        assert!((r.read.ops_per_sec - 1.5).abs() < 1e-9);
        let w = r.write.latency_us.as_ref().unwrap();
        assert!(
            (3_996..=4_004).contains(&w.p50),
            "4 ms within 0.1%: {}",
            w.p50
        );
        assert!(w.max >= 9_990 && w.max <= 10_010);
        assert!((r.generator_cpu.cores - 0.05).abs() < 1e-9);
    }

    #[test]
    fn text_has_every_table_and_figure() {
        let text = render_text(&sample());
        for needle in [
            "kvlab at http://127.0.0.1:8000",
            "4 clients",
            "50% reads",
            "100 keys (uniform)",
            "ops/s",
            "p50 ms",
            "p99.9 ms",
            "max ms",
            "429",
            "503",
            "timeout",
            "connect",
            "not found",
            "generator CPU: 0.05 cores",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} row in:\n{text}"))
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        // op, ops/s, answers, errors, then five latencies.
        assert_eq!(
            row("write"),
            ["write", "1.0", "2", "1", "4.001", "10.007", "10.007", "10.007", "10.007"]
        );
        assert_eq!(row("all")[1..4], ["2.5", "5", "2"]);
    }

    #[test]
    fn text_skips_op_kinds_that_were_not_sent() {
        let mut rec = Recorder::default();
        rec.record(OpKind::Write, Outcome::Ok, Duration::from_millis(1));
        let cpu = CpuCost::new(Duration::ZERO, Duration::from_secs(1));
        let text = render_text(&Report::new(&plan(), &rec, Duration::from_secs(1), cpu));
        assert!(!text.lines().any(|l| l.starts_with("read ")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("write ")), "{text}");
    }

    #[test]
    fn json_has_the_same_figures() {
        let r = sample();
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["target"], "kvlab");
        assert_eq!(v["distribution"], "uniform");
        assert!(v.get("zipf_s").is_none());
        assert_eq!(v["clients"], 4);
        for kind in ["all", "read", "write"] {
            let op = &v[kind];
            for field in [
                "requests",
                "ops_per_sec",
                "errors",
                "outcomes",
                "latency_us",
            ] {
                assert!(op.get(field).is_some(), "{kind}.{field} missing in {op}");
            }
            for field in ["p50", "p90", "p99", "p99_9", "max", "mean"] {
                assert!(
                    op["latency_us"].get(field).is_some(),
                    "{kind}.latency_us.{field}"
                );
            }
        }
        let o = &v["all"]["outcomes"];
        assert_eq!(o["ok"], 4);
        assert_eq!(o["not_found"], 1);
        assert_eq!(o["rate_limited_429"], 1);
        assert_eq!(o["unavailable_503"], 1);
        assert_eq!(o["timeout"], 0);
        assert_eq!(o["connect"], 0);
        assert_eq!(o["other"], 0);
        assert_eq!(
            v["read"]["latency_us"]["max"],
            r.read.latency_us.as_ref().unwrap().max
        );
        assert!(v["generator_cpu"]["cores"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn json_latency_is_null_without_answers() {
        let rec = Recorder::default();
        let cpu = CpuCost::new(Duration::ZERO, Duration::from_secs(1));
        let v =
            serde_json::to_value(Report::new(&plan(), &rec, Duration::from_secs(1), cpu)).unwrap();
        assert!(v["read"]["latency_us"].is_null());
        assert_eq!(v["all"]["ops_per_sec"], 0.0);
    }
}
