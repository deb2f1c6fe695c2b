//! The checks of one run, and the verdict they add up to.
//!
//! - Linearizability, key by key ([`check_keys`]), within one time budget
//!   shared by all keys: past it, the keys not yet settled are "unknown".
//! - After the faults are healed: every acknowledged write is still there
//!   (the final state of each key is at least as new as its newest
//!   acknowledged write), see [`super::explain`].
//!
//! A violation anywhere makes the run a violation; otherwise an unknown
//! anywhere makes it unknown; otherwise it is valid.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::history::{self, Op};
use super::linearizability::{self, Outcome};
use super::model::VersionedRegister;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Violation,
    Unknown,
}

impl Verdict {
    /// Maelstrom's exit codes: 0 valid, 1 a violation, 2 unknown.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Violation => 1,
            Verdict::Unknown => 2,
        }
    }

    /// The worse of two verdicts (a violation beats unknown beats valid).
    pub fn and(self, other: Verdict) -> Verdict {
        use Verdict::*;
        match (self, other) {
            (Violation, _) | (_, Violation) => Violation,
            (Unknown, _) | (_, Unknown) => Unknown,
            _ => Valid,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Violation => "violation",
            Verdict::Unknown => "unknown",
        }
    }
}

/// The checker's result for one key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub verdict: Verdict,
    /// Operations that took part (refused writes and failed reads do not).
    pub ops: usize,
    pub millis: f64,
    /// For a violation: the ids of the operations the search could not
    /// place, and of the longest order it could build.
    pub stuck: Vec<usize>,
    pub longest: Vec<usize>,
}

/// Checks every key's history for linearizability within `budget`.
pub fn check_keys(history: &[Op], budget: Duration) -> Vec<KeyResult> {
    let deadline = Instant::now() + budget;
    history::by_key(history)
        .into_values()
        .map(|k| {
            let started = Instant::now();
            let mut model = VersionedRegister::for_ops(&k.ops);
            model.start = k.start;
            let outcome = linearizability::check(&model, &k.ops, deadline);
            let to_ids = |v: &[usize]| v.iter().map(|&i| k.ids[i]).collect::<Vec<_>>();
            let (verdict, stuck, longest) = match outcome {
                Outcome::Linearizable => (Verdict::Valid, vec![], vec![]),
                Outcome::Unknown => (Verdict::Unknown, vec![], vec![]),
                Outcome::Violation { longest, stuck } => {
                    (Verdict::Violation, to_ids(&stuck), to_ids(&longest))
                }
            };
            KeyResult {
                key: k.key,
                verdict,
                ops: k.ops.len(),
                millis: started.elapsed().as_secs_f64() * 1e3,
                stuck,
                longest,
            }
        })
        .collect()
}
