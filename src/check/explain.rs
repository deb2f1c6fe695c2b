//! Violations told as stories, in the lab's terms.
//!
//! The checker says *that* no order fits; a student needs to know *why*.
//! For each key the checker rejected, this looks for the simplest pattern
//! that proves it, and tells it with what the cluster was doing then:
//!
//! - **stale read**: a read returned an older version than one already
//!   acknowledged (or already read) before the read was sent. The story
//!   names who served it, its sets then (read, sync, async), its delay, and
//!   whether W + R > N promised overlap;
//! - **wrong value**: a read returned a value at a version that write never had;
//! - **lost write**: after the faults healed, a key's newest state is older
//!   than an acknowledged write;
//! - otherwise, the operation the search could not place.

use serde::Serialize;

use super::history::{Op, Outcome};
use super::observe::Observations;
use super::verdict::{KeyResult, Verdict};

/// The cluster's shape, for the stories.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub followers: usize,
    pub w: usize,
    pub r: usize,
    /// Replication delays in seconds, when known (a cluster we started).
    pub sync_delay: Option<f64>,
    pub async_delay: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Story {
    pub key: String,
    /// `stale-read`, `wrong-value`, `lost-write`, `not-linearizable`.
    pub kind: String,
    pub text: String,
    /// The operations at fault (highlighted in the report).
    pub ops: Vec<usize>,
    /// The operations that prove it.
    pub witnesses: Vec<usize>,
}

/// A story for every key the checker rejected.
pub fn explain(
    history: &[Op],
    results: &[KeyResult],
    shape: &Shape,
    obs: &Observations,
) -> Vec<Story> {
    results
        .iter()
        .filter(|r| r.verdict == Verdict::Violation)
        .map(|r| {
            let ops: Vec<&Op> = history
                .iter()
                .filter(|op| op.key() == r.key && op.output.counts())
                .collect();
            stale_read(&ops, shape, obs)
                .or_else(|| wrong_value(&ops))
                .unwrap_or_else(|| unplaced(&r.key, history, r))
        })
        .collect()
}

/// The first read that returned an older version than something that had
/// already returned before it was sent.
fn stale_read(ops: &[&Op], shape: &Shape, obs: &Observations) -> Option<Story> {
    for read in ops.iter().filter(|op| !op.is_write()) {
        let Some(seen) = read.output.version() else {
            continue;
        };
        let newer = ops
            .iter()
            .filter(|o| o.ret.is_some_and(|ret| ret < read.call))
            .filter(|o| matches!(o.output, Outcome::Written { .. } | Outcome::Found { .. }))
            .filter_map(|o| Some((o, o.output.version()?)))
            .filter(|(_, v)| *v > seen)
            .max_by_key(|(o, v)| (*v, o.ret));
        if let Some((witness, version)) = newer {
            return Some(Story {
                key: read.key().to_string(),
                kind: "stale-read".into(),
                text: stale_story(read, witness, version, shape, obs),
                ops: vec![read.id],
                witnesses: vec![witness.id],
            });
        }
    }
    None
}

fn stale_story(read: &Op, witness: &Op, version: u64, shape: &Shape, obs: &Observations) -> String {
    let got = match &read.output {
        Outcome::Found {
            version, served_by, ..
        } => {
            format!(
                "version {version} from {}",
                who(served_by, read.call_s(), shape, obs)
            )
        }
        _ => match read_set(read.call_s(), shape, obs) {
            Some(set) => format!("not found (version 0) from the read set: {set}"),
            None => "not found (version 0)".to_string(),
        },
    };
    let before = match &witness.output {
        Outcome::Written { .. } => format!(
            "write version {version} (`{}`) had been acknowledged at {:.3} s",
            witness.written_value().unwrap_or("?"),
            witness.end_s()
        ),
        _ => format!(
            "another read had returned version {version} at {:.3} s",
            witness.end_s()
        ),
    };
    let (w, r, n) = (shape.w, shape.r, shape.followers);
    let why = if w + r <= n {
        format!("W + R = {w} + {r} <= N = {n}: the sets do not overlap")
    } else {
        format!("W + R = {w} + {r} > N = {n}: the sets overlap, so the cluster broke its promise")
    };
    format!(
        "read of `{}` at {:.3} s returned {got} after {before}; {why}",
        read.key(),
        read.call_s(),
    )
}

/// "follower-5 (in the read set, async, 5 s behind)", from the sample
/// closest to `t`.
fn who(node: &str, t: f64, shape: &Shape, obs: &Observations) -> String {
    let Some(sample) = obs.at(t) else {
        return node.to_string();
    };
    let Some(n) = sample.nodes.iter().find(|n| n.id == node) else {
        return node.to_string();
    };
    let mut parts = Vec::new();
    if n.sets.iter().any(|s| s == "read") {
        parts.push("in the read set".to_string());
    }
    if n.sets.iter().any(|s| s == "sync") {
        parts.push(match shape.sync_delay {
            Some(d) if d > 0.0 => format!("sync, {d} s behind"),
            _ => "sync".to_string(),
        });
    } else if n.sets.iter().any(|s| s == "async") {
        parts.push(match shape.async_delay {
            Some(d) if d > 0.0 => format!("async, {d} s behind"),
            _ => "async".to_string(),
        });
    }
    if n.status != "alive" {
        parts.push(n.status.clone());
    }
    if parts.is_empty() {
        node.to_string()
    } else {
        format!("{node} ({})", parts.join(", "))
    }
}

/// The read set at `t`, each member told with [`who`].
fn read_set(t: f64, shape: &Shape, obs: &Observations) -> Option<String> {
    let sample = obs.at(t)?;
    let members: Vec<String> = sample
        .nodes
        .iter()
        .filter(|n| n.sets.iter().any(|s| s == "read"))
        .map(|n| who(&n.id, t, shape, obs))
        .collect();
    (!members.is_empty()).then(|| members.join(", "))
}

/// A read of a value at a version its write never had (or of a value
/// nobody wrote). The key's state from before the run (a start read) is
/// not a wrong value.
fn wrong_value(ops: &[&Op]) -> Option<Story> {
    let before_the_run = |v: &str, ver: u64| {
        ops.iter().any(|o| {
            o.start && matches!(&o.output, Outcome::Found { value, version, .. } if value == v && *version == ver)
        })
    };
    for read in ops.iter().filter(|op| !op.is_write() && !op.start) {
        let Outcome::Found {
            value,
            version,
            served_by,
        } = &read.output
        else {
            continue;
        };
        if before_the_run(value, *version) {
            continue;
        }
        let write = ops
            .iter()
            .find(|o| o.written_value() == Some(value.as_str()));
        let text = match write.map(|w| (w, &w.output)) {
            None => format!(
                "read of `{}` at {:.3} s returned `{value}` (version {version}) from {served_by}, a value no client wrote",
                read.key(), read.call_s()
            ),
            Some((_, Outcome::Written { version: wv })) if wv != version => format!(
                "read of `{}` at {:.3} s returned `{value}` as version {version} from {served_by}, but that write was acknowledged as version {wv}",
                read.key(), read.call_s()
            ),
            Some((w, _)) if w.call > read.end => format!(
                "read of `{}` at {:.3} s returned `{value}` from {served_by} before anyone had written it (written at {:.3} s)",
                read.key(), read.call_s(), w.call_s()
            ),
            _ => continue,
        };
        return Some(Story {
            key: read.key().to_string(),
            kind: "wrong-value".into(),
            text,
            ops: vec![read.id],
            witnesses: write.map(|w| vec![w.id]).unwrap_or_default(),
        });
    }
    None
}

fn unplaced(key: &str, history: &[Op], r: &KeyResult) -> Story {
    let describe = |id: usize| {
        history.get(id).map_or(format!("#{id}"), |op| {
            format!(
                "#{id} (client {}, {} at {:.3} s → {})",
                op.client_id,
                match op.is_write() {
                    true => "write",
                    false => "read",
                },
                op.call_s(),
                short_outcome(&op.output)
            )
        })
    };
    let stuck: Vec<String> = r.stuck.iter().map(|&i| describe(i)).collect();
    let last: Vec<String> = r
        .longest
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(|&i| describe(i))
        .collect();
    Story {
        key: key.to_string(),
        kind: "not-linearizable".into(),
        text: format!(
            "no order of the {} operations on `{key}` explains what the clients saw: after {} operations in order (last: {}), {} cannot be placed",
            r.ops,
            r.longest.len(),
            if last.is_empty() { "none".into() } else { last.join(", ") },
            stuck.join(" or ")
        ),
        ops: r.stuck.clone(),
        witnesses: r.longest.iter().rev().take(3).copied().collect(),
    }
}

pub fn short_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Written { version } => format!("ok v{version}"),
        Outcome::Refused { .. } => "refused".into(),
        Outcome::Unknown { .. } => "unknown".into(),
        Outcome::Found {
            value,
            version,
            served_by,
        } => format!("`{value}` v{version} from {served_by}"),
        Outcome::NotFound => "not found".into(),
        Outcome::ReadFailed { .. } => "failed".into(),
    }
}

/// After healing: each key's newest state (read from the leader) must be
/// at least as new as the newest acknowledged write. `finals` holds
/// (key, version found, value found) per key.
pub fn lost_writes(history: &[Op], finals: &[(String, u64, Option<String>)]) -> Vec<Story> {
    let mut stories = Vec::new();
    for (key, version, _) in finals {
        let newest = history
            .iter()
            .filter(|op| op.key() == key)
            .filter_map(|op| match op.output {
                Outcome::Written { version } => Some((op, version)),
                _ => None,
            })
            .max_by_key(|(_, v)| *v);
        if let Some((write, acked)) = newest {
            if acked > *version {
                stories.push(Story {
                    key: key.clone(),
                    kind: "lost-write".into(),
                    text: format!(
                        "acknowledged write `{key}` = {} (version {acked}) is missing after recovery: the leader holds version {version}",
                        write.written_value().unwrap_or("?")
                    ),
                    ops: vec![write.id],
                    witnesses: vec![],
                });
            }
        }
    }
    stories
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::history::Input;
    use crate::check::observe::{NodeSample, Sample};
    use crate::check::verdict::check_keys;

    fn op(id: usize, client: usize, input: Input, call: u64, end: u64, output: Outcome) -> Op {
        Op {
            start: false,
            id,
            client_id: client,
            input,
            call,
            ret: Some(end),
            end,
            output,
        }
    }

    #[test]
    fn a_stale_read_is_told_in_the_labs_terms() {
        let k = || "cart".to_string();
        let s = 1_000_000_000;
        let history = vec![
            op(
                0,
                0,
                Input::Write {
                    key: k(),
                    value: "c0-1".into(),
                },
                0,
                s,
                Outcome::Written { version: 1 },
            ),
            op(
                1,
                0,
                Input::Write {
                    key: k(),
                    value: "c0-2".into(),
                },
                2 * s,
                12_110_000_000,
                Outcome::Written { version: 2 },
            ),
            op(
                2,
                1,
                Input::Read { key: k() },
                12_301_000_000,
                12_400_000_000,
                Outcome::Found {
                    value: "c0-1".into(),
                    version: 1,
                    served_by: "follower-5".into(),
                },
            ),
        ];
        let results = check_keys(&history, std::time::Duration::from_secs(5));
        assert_eq!(results[0].verdict, Verdict::Violation);
        let shape = Shape {
            followers: 5,
            w: 4,
            r: 1,
            sync_delay: Some(0.5),
            async_delay: Some(5.0),
        };
        let obs = Observations {
            samples: vec![Sample {
                t: 12.0,
                nodes: vec![NodeSample {
                    id: "follower-5".into(),
                    status: "alive".into(),
                    incarnation: 1,
                    sets: vec!["async".into(), "read".into()],
                }],
            }],
            overlaps: vec![],
        };
        let stories = explain(&history, &results, &shape, &obs);
        assert_eq!(stories.len(), 1);
        assert_eq!(stories[0].text,
            "read of `cart` at 12.301 s returned version 1 from follower-5 (in the read set, async, 5 s behind) \
             after write version 2 (`c0-2`) had been acknowledged at 12.110 s; W + R = 4 + 1 <= N = 5: the sets do not overlap");
        assert_eq!(
            (stories[0].ops.clone(), stories[0].witnesses.clone()),
            (vec![2], vec![1])
        );
    }

    #[test]
    fn a_missing_acknowledged_write_is_a_lost_write() {
        let history = vec![op(
            0,
            0,
            Input::Write {
                key: "k2".into(),
                value: "v17".into(),
            },
            0,
            1,
            Outcome::Written { version: 9 },
        )];
        let stories = lost_writes(&history, &[("k2".into(), 8, Some("v16".into()))]);
        assert_eq!(stories[0].text, "acknowledged write `k2` = v17 (version 9) is missing after recovery: the leader holds version 8");
        assert!(lost_writes(&history, &[("k2".into(), 9, None)]).is_empty());
    }
}
