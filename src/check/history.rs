//! Operation records: what each client asked, when, and what it got.
//!
//! Times are nanoseconds since the run started, on one monotonic clock (the
//! checker's), so the clients' records compare directly. An operation's
//! `call` is taken just before its request leaves and its `ret` just after
//! the answer arrived: the real operation happened somewhere in between.
//!
//! One record is one line of `history.jsonl`, in Porcupine's operation shape
//! (`client_id`, `input`, `call`, `output`, `return`), with `return: null`
//! for an operation whose outcome is unknown; `end` says when the client
//! stopped waiting for it (for the timeline), and `id` names it in reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::linearizability::Operation;
use super::model::{self, ValueId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub id: usize,
    pub client_id: usize,
    pub input: Input,
    /// Nanoseconds since the start of the run.
    pub call: u64,
    pub output: Outcome,
    /// `None` when the outcome is unknown: it may take effect any time.
    #[serde(rename = "return")]
    pub ret: Option<u64>,
    /// When the client stopped waiting (the answer, the error or the timeout).
    pub end: u64,
    /// A read taken before the workload (`--no-start-cluster`): what the key
    /// held when the run began. The checker starts the key's register from
    /// it instead of from "absent".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Input {
    Write { key: String, value: String },
    Read { key: String },
}

impl Input {
    pub fn key(&self) -> &str {
        match self {
            Input::Write { key, .. } | Input::Read { key } => key,
        }
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// The write was acknowledged at this version.
    Written {
        version: u64,
    },
    /// The write was refused before the leader saw it: it did not happen.
    Refused {
        reason: String,
    },
    /// The write may or may not have happened (quorum not met, timeout,
    /// connection reset).
    Unknown {
        reason: String,
    },
    Found {
        value: String,
        version: u64,
        served_by: String,
    },
    NotFound,
    /// A read that got no answer: it tells nothing about the state.
    ReadFailed {
        reason: String,
    },
}

impl Outcome {
    /// Does this operation take part in the check? Refused writes did not
    /// happen and failed reads observed nothing.
    pub fn counts(&self) -> bool {
        !matches!(self, Outcome::Refused { .. } | Outcome::ReadFailed { .. })
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown { .. })
    }

    pub fn version(&self) -> Option<u64> {
        match self {
            Outcome::Written { version } | Outcome::Found { version, .. } => Some(*version),
            Outcome::NotFound => Some(0),
            _ => None,
        }
    }
}

impl Op {
    pub fn key(&self) -> &str {
        self.input.key()
    }

    pub fn is_write(&self) -> bool {
        matches!(self.input, Input::Write { .. })
    }

    /// The written value, for a write.
    pub fn written_value(&self) -> Option<&str> {
        match &self.input {
            Input::Write { value, .. } => Some(value),
            Input::Read { .. } => None,
        }
    }

    pub fn call_s(&self) -> f64 {
        self.call as f64 / 1e9
    }

    pub fn end_s(&self) -> f64 {
        self.end as f64 / 1e9
    }
}

/// One key's operations, ready for the checker.
#[derive(Debug, Clone)]
pub struct KeyHistory {
    pub key: String,
    /// The checker's operations; `ids[i]` is the [`Op::id`] of `ops[i]`.
    pub ops: Vec<Operation<model::Input, model::Output>>,
    pub ids: Vec<usize>,
    /// The key's state when the run began (its [`Op::start`] read), absent
    /// when there was none.
    pub start: model::RegisterState,
}

/// Splits a history by key (keys are independent registers, so each is
/// checked alone: far smaller searches), keeping only the operations that
/// count. Values are interned per key; a read of a value nobody wrote gets
/// an id of its own, which no write matches; an unknown write whose value
/// nobody read gets [`model::UNREAD`]. A start read ([`Op::start`]) is not an
/// operation: it sets the key's starting state.
pub fn by_key(history: &[Op]) -> BTreeMap<String, KeyHistory> {
    let read: std::collections::HashSet<(&str, &str)> = history
        .iter()
        .filter_map(|op| match &op.output {
            Outcome::Found { value, .. } => Some((op.key(), value.as_str())),
            _ => None,
        })
        .collect();
    let mut values: BTreeMap<String, BTreeMap<String, ValueId>> = BTreeMap::new();
    let mut keys: BTreeMap<String, KeyHistory> = BTreeMap::new();
    for op in history.iter().filter(|op| op.output.counts()) {
        let key = op.key().to_string();
        let table = values.entry(key.clone()).or_default();
        let mut intern = |v: &str| {
            let next = table.len() as ValueId;
            *table.entry(v.to_string()).or_insert(next)
        };
        if op.start {
            let start = match &op.output {
                Outcome::Found { value, version, .. } => Some((intern(value), *version)),
                _ => None,
            };
            keys.entry(key.clone())
                .or_insert_with(|| KeyHistory {
                    key,
                    ops: Vec::new(),
                    ids: Vec::new(),
                    start: None,
                })
                .start = start;
            continue;
        }
        let (input, output) = match (&op.input, &op.output) {
            (Input::Write { value, .. }, Outcome::Written { version }) => (
                model::Input::Write(intern(value)),
                model::Output::Written(*version),
            ),
            (Input::Write { key, value }, _) if !read.contains(&(key.as_str(), value.as_str())) => {
                (
                    model::Input::Write(model::UNREAD),
                    model::Output::WriteUnknown,
                )
            }
            (Input::Write { value, .. }, _) => (
                model::Input::Write(intern(value)),
                model::Output::WriteUnknown,
            ),
            (Input::Read { .. }, Outcome::Found { value, version, .. }) => (
                model::Input::Read,
                model::Output::Found(intern(value), *version),
            ),
            (Input::Read { .. }, _) => (model::Input::Read, model::Output::NotFound),
        };
        let entry = keys.entry(key.clone()).or_insert_with(|| KeyHistory {
            key,
            ops: Vec::new(),
            ids: Vec::new(),
            start: None,
        });
        entry.ops.push(Operation {
            call: op.call as f64,
            ret: if op.output.is_unknown() {
                None
            } else {
                Some(op.ret.unwrap_or(op.end) as f64)
            },
            input,
            output,
        });
        entry.ids.push(op.id);
    }
    keys
}

/// Reads `history.jsonl` back (one [`Op`] a line).
pub fn parse_jsonl(text: &str) -> Result<Vec<Op>, serde_json::Error> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

/// Writes a history as `history.jsonl`.
pub fn to_jsonl(history: &[Op]) -> String {
    let mut out = String::new();
    for op in history {
        out.push_str(&serde_json::to_string(op).expect("an Op always serializes"));
        out.push('\n');
    }
    out
}
