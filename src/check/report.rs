//! The result of one run (`results.json`), and its summary card.
//!
//! [`RunReport`] is plain data: everything the terminal card, the JSON
//! output and the HTML report show comes from it, so the three agree.

use std::fmt::Write as _;

use serde::Serialize;

use super::explain::{Shape, Story};
use super::history::{Op, Outcome};
use super::nemesis::{By, FaultRecord};
use super::observe::Overlap;
use super::verdict::{KeyResult, Verdict};

/// What `history.jsonl` does not hold, saved next to it as
/// `history.meta.json` (the history itself stays one operation a line, in
/// Porcupine's shape), so that `--history FILE` explains with the
/// cluster's real shape and the run's faults. Histories saved before it
/// existed have none and are read as before.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HistoryMeta {
    pub seed: u64,
    pub shape: Shape,
    /// When the run's clock started (RFC 3339): where `--faults-log` times
    /// are measured from.
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub faults: Vec<FaultRecord>,
    /// What the comparison of the replicas found (it is not in the
    /// history, so `--history` reports it from here).
    #[serde(default)]
    pub replicas: Vec<Story>,
}

impl HistoryMeta {
    /// `dir/history.jsonl` → `dir/history.meta.json`.
    pub fn path_for(history: &std::path::Path) -> std::path::PathBuf {
        let stem = history
            .file_stem()
            .map_or("history".into(), |s| s.to_string_lossy().to_string());
        history.with_file_name(format!("{stem}.meta.json"))
    }
}

/// What was run.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub followers: usize,
    pub w: usize,
    pub r: usize,
    pub sync_delay: Option<f64>,
    pub async_delay: Option<f64>,
    pub nemesis: Vec<String>,
    pub time_limit: f64,
    pub clients: usize,
    pub keys: usize,
    /// The URL the clients used.
    pub target: String,
}

/// How the operations ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub total: usize,
    pub writes: usize,
    pub reads: usize,
    pub ok: usize,
    pub refused: usize,
    pub unknown: usize,
    pub read_failed: usize,
}

impl Counts {
    pub fn of(history: &[Op]) -> Counts {
        let mut c = Counts {
            total: history.len(),
            ..Counts::default()
        };
        for op in history {
            if op.is_write() {
                c.writes += 1;
            } else {
                c.reads += 1;
            }
            match op.output {
                Outcome::Written { .. } | Outcome::Found { .. } | Outcome::NotFound => c.ok += 1,
                Outcome::Refused { .. } => c.refused += 1,
                Outcome::Unknown { .. } => c.unknown += 1,
                Outcome::ReadFailed { .. } => c.read_failed += 1,
            }
        }
        c
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub verdict: Verdict,
    pub exit_code: i32,
    pub config: RunConfig,
    pub ops: Counts,
    pub keys: Vec<KeyResult>,
    /// Violations as stories (linearizability and lost writes).
    pub stories: Vec<Story>,
    pub faults: Vec<FaultRecord>,
    /// Two processes of one node id running at once.
    pub overlaps: Vec<Overlap>,
    /// Things that went wrong around the check (a fault hook that failed,
    /// a node that did not come back): they do not change the verdict.
    pub notes: Vec<String>,
    pub checker_millis: f64,
    pub duration_s: f64,
    /// Where the artifacts went (`--out`).
    pub artifacts: Option<String>,
    /// A nemesis was asked for, but not one fault could be injected: the
    /// run tested the cluster without faults, whatever the verdict.
    pub quiet: bool,
}

impl RunReport {
    /// How many faults were injected.
    pub fn injected(&self) -> usize {
        self.faults.iter().filter(|f| f.injected).count()
    }

    /// Is the run quiet: a nemesis asked for, and no fault injected?
    pub fn is_quiet(config: &RunConfig, faults: &[FaultRecord]) -> bool {
        !config.nemesis.is_empty() && faults.iter().all(|f| !f.injected)
    }

    /// The verdict's word, and for a quiet run why it is quiet:
    /// `valid (quiet: none of the 3 faults could be injected)`.
    pub fn quiet_reason(&self) -> Option<String> {
        self.quiet.then(|| match self.faults.len() {
            0 => "quiet: no fault was tried in the time limit".to_string(),
            1 => "quiet: the one fault could not be injected".to_string(),
            n => format!("quiet: none of the {n} faults could be injected"),
        })
    }
}

/// The terminal's summary card.
pub fn card(r: &RunReport) -> String {
    let c = &r.config;
    let mut s = String::new();
    let delays = match (c.sync_delay, c.async_delay) {
        (Some(sd), Some(ad)) if sd > 0.0 || ad > 0.0 => {
            format!("delays sync {sd} s / async {ad} s")
        }
        (Some(_), Some(_)) => "no delays".to_string(),
        _ => "delays unknown".to_string(),
    };
    let nemesis = if c.nemesis.is_empty() {
        "none".to_string()
    } else {
        c.nemesis.join(",")
    };
    let _ = writeln!(
        s,
        "┌─ kvlab check ─ seed {} ─────────────────────────────",
        r.seed
    );
    let _ = writeln!(
        s,
        "│ cluster     N={} W={} R={} · {delays}",
        c.followers, c.w, c.r
    );
    let _ = writeln!(
        s,
        "│ workload    {} clients, {} keys, {} s → {}",
        c.clients, c.keys, c.time_limit, c.target
    );
    let o = &r.ops;
    let _ = writeln!(
        s,
        "│ operations  {} ({} writes, {} reads): ok {}, unknown {}, refused {}, read failed {}",
        o.total, o.writes, o.reads, o.ok, o.unknown, o.refused, o.read_failed
    );
    let by_whom = [By::FaultCmd, By::Hand]
        .iter()
        .map(|b| (b, r.faults.iter().filter(|f| f.by == Some(*b)).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(b, n)| format!("{n} {}", b.words()))
        .collect::<Vec<_>>();
    let _ = writeln!(
        s,
        "│ nemesis     {nemesis}: {} faults, {} injected{}",
        r.faults.len(),
        r.injected(),
        match by_whom.is_empty() {
            true => String::new(),
            false => format!(" ({})", by_whom.join(", ")),
        }
    );
    for f in &r.faults {
        let how = if f.how.is_empty() {
            String::new()
        } else {
            format!(" ({})", f.how.join(", "))
        };
        let err = f
            .error
            .as_deref()
            .map(|e| format!("  ⚠ {e}"))
            .unwrap_or_default();
        let by =
            f.by.map(|b| format!(" [{}]", b.words()))
                .unwrap_or_default();
        let _ = writeln!(
            s,
            "│   {:>7.3}-{:<7.3} {} {}{how}{by}{err}",
            f.start,
            f.end,
            f.kind.name(),
            f.node
        );
    }
    let ops: usize = r.keys.iter().map(|k| k.ops).sum();
    let _ = writeln!(
        s,
        "│ checker     {} keys, {ops} operations in {:.0} ms",
        r.keys.len(),
        r.checker_millis
    );
    for note in &r.notes {
        let _ = writeln!(s, "│ note        {note}");
    }
    for o in &r.overlaps {
        let _ = writeln!(
            s,
            "│ ✗ two processes of {} at {:.3} s: incarnation {} (pid {}) still ran after incarnation {} started",
            o.node_id, o.t, o.old_incarnation, o.old_pid, o.new_incarnation
        );
    }
    let verdict = match (r.verdict, r.quiet_reason()) {
        (Verdict::Valid, Some(quiet)) => format!(
            "✓ VALID ({quiet}): every operation fits one order, but the run tested no faults"
        ),
        (Verdict::Valid, None) => {
            "✓ VALID: every operation fits one order (linearizable)".to_string()
        }
        (Verdict::Violation, _) => {
            let lost = r
                .stories
                .iter()
                .filter(|s| s.kind == "lost-on-replica" || s.kind == "lost-write")
                .count();
            let unlinearizable = r.keys.iter().any(|k| k.verdict == Verdict::Violation);
            let mut what = Vec::new();
            if unlinearizable {
                what.push("not linearizable".to_string());
            }
            if lost > 0 {
                what.push(format!(
                    "{lost} acknowledged write{} missing on a replica",
                    if lost == 1 { "" } else { "s" }
                ));
            }
            if what.is_empty() {
                what.push("two processes of one node id ran at once".to_string());
            }
            format!("✗ VIOLATION: {}", what.join("; "))
        }
        (Verdict::Unknown, _) => "? UNKNOWN: the checker ran out of time".to_string(),
    };
    let _ = writeln!(s, "│ verdict     {verdict} (exit {})", r.exit_code);
    // The verdict holds for the faults that happened, not those planned.
    if !r.quiet && r.injected() < r.faults.len() {
        let _ = writeln!(
            s,
            "│ tested      {} of the {} faults really happened; the others were not carried out (⚠ above)",
            r.injected(),
            r.faults.len()
        );
    }
    // Losses on replicas can be many (a key on every node): the first few.
    const LOSSES_SHOWN: usize = 8;
    let mut losses = 0;
    for story in &r.stories {
        if story.kind == "lost-on-replica" {
            losses += 1;
            if losses > LOSSES_SHOWN {
                continue;
            }
        }
        let _ = writeln!(s, "│ ✗ {}", story.text);
    }
    if losses > LOSSES_SHOWN {
        let _ = writeln!(
            s,
            "│ ✗ ... and {} more writes lost on replicas (results.json)",
            losses - LOSSES_SHOWN
        );
    }
    if let Some(dir) = &r.artifacts {
        let _ = writeln!(s, "│ artifacts   {dir}/report.html");
    }
    let _ = writeln!(s, "│ replay      kvlab check ... --seed {}", r.seed);
    let _ = writeln!(s, "└──────────────────────────────────────────────────────");
    s
}

/// `--repeat`: one line per seed.
pub fn table(reports: &[RunReport]) -> String {
    let mut s = String::from("seed        verdict    ops     unknown  faults  artifacts\n");
    for r in reports {
        let _ = writeln!(
            s,
            "{:<11} {:<10} {:<7} {:<8} {:<7} {}",
            r.seed,
            match r.quiet {
                true => format!("{} (quiet)", r.verdict.as_str()),
                false => r.verdict.as_str().to_string(),
            },
            r.ops.total,
            r.ops.unknown,
            r.faults.len(),
            r.artifacts.as_deref().unwrap_or("-")
        );
    }
    s
}
