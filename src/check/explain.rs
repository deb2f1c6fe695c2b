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
//! - **versions went back**: a write acknowledged at a version no higher
//!   than one acknowledged before it was sent (a leader that restarted
//!   empty starts each key over at version 1), told with what happened to
//!   the leader;
//! - **lost write**, **lost on a replica**: after the faults healed, a
//!   node lacks a key's newest acknowledged write (see [`super::replicas`]);
//! - otherwise, the operation the search could not place.
//!
//! Each story names the node that answered when the answer says (a read's
//! `served_by`), or the read set when it does not (from `/status`, or by
//! the lab's rule: the R alive followers with the highest ports), and what
//! the faults had done to that node by then ([`fault_context`]).

use serde::Serialize;

use super::history::{Op, Outcome};
use super::nemesis::{FaultKind, FaultRecord};
use super::observe::Observations;
use super::verdict::{KeyResult, Verdict};

/// The cluster's shape, for the stories.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Shape {
    pub followers: usize,
    pub w: usize,
    pub r: usize,
    /// Replication delays in seconds, when known (a cluster we started).
    pub sync_delay: Option<f64>,
    pub async_delay: Option<f64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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

impl Shape {
    /// `N=3 W=3 R=1`, as the first line and the card print it.
    pub fn describe(&self) -> String {
        format!("N={} W={} R={}", self.followers, self.w, self.r)
    }
}

/// What the run knew around the operations: the cluster's shape, the
/// `/status` samples and the faults (the nemesis's and those made by hand).
pub struct Context<'a> {
    pub shape: &'a Shape,
    pub obs: &'a Observations,
    pub faults: &'a [FaultRecord],
}

/// A story for every key the checker rejected.
pub fn explain(history: &[Op], results: &[KeyResult], cx: &Context) -> Vec<Story> {
    results
        .iter()
        .filter(|r| r.verdict == Verdict::Violation)
        .map(|r| {
            let ops: Vec<&Op> = history
                .iter()
                .filter(|op| op.key() == r.key && op.output.counts())
                .collect();
            versions_went_back(&ops, cx)
                .or_else(|| stale_read(&ops, cx))
                .or_else(|| wrong_value(&ops))
                .unwrap_or_else(|| unplaced(&r.key, history, r))
        })
        .collect()
}

/// What the faults had done to `node` by `t` (seconds): the last injected
/// fault on it that started before `t`, as words that follow the node's
/// name ("crashed by the fault command at 3.100 s and restarted at 5.000
/// s"). `None` when no fault touched it.
pub fn fault_context(node: &str, t: f64, faults: &[FaultRecord]) -> Option<String> {
    let f = faults
        .iter()
        .filter(|f| f.injected && f.node == node && f.start < t)
        .max_by(|a, b| a.start.total_cmp(&b.start))?;
    let by = f.by.map_or("", |b| b.words());
    let how = f.how.first().map(String::as_str);
    let crash =
        matches!(f.kind, FaultKind::Crash) || (f.kind == FaultKind::Leader && how == Some("crash"));
    let (s, e) = (f.start, f.end);
    Some(match f.kind {
        _ if crash => format!("crashed {by} at {s:.3} s and restarted at {e:.3} s"),
        FaultKind::Kill => format!("stopped {by} at {s:.3} s and restarted at {e:.3} s"),
        FaultKind::PowerLoss => {
            format!("had its power cut {by} at {s:.3} s and restarted at {e:.3} s")
        }
        FaultKind::Pause | FaultKind::Leader => format!("paused {by} from {s:.3} s to {e:.3} s"),
        FaultKind::Heartbeats => format!("silent (heartbeats paused) from {s:.3} s to {e:.3} s"),
        FaultKind::Partition => format!(
            "cut off from {} from {s:.3} s to {e:.3} s",
            f.how.join(", ")
        ),
        FaultKind::SlowDisk => format!(
            "on a slow disk ({}) from {s:.3} s to {e:.3} s",
            f.how.join(", ")
        ),
        FaultKind::Coordinator => format!(
            "(the active coordinator) {} {by} from {s:.3} s to {e:.3} s",
            match how {
                Some("kill") => "killed (SIGKILL)",
                Some("stop") => "stopped (SIGTERM)",
                _ => "paused (SIGSTOP)",
            }
        ),
        FaultKind::Crash => unreachable!("told above"),
    })
}

/// A write acknowledged at a version no higher than a write acknowledged
/// before it was sent: the key's versions went back (a leader that lost
/// its state starts every key over at 1).
fn versions_went_back(ops: &[&Op], cx: &Context) -> Option<Story> {
    let acked = |o: &&&Op| matches!(o.output, Outcome::Written { .. });
    for later in ops.iter().filter(acked) {
        let v = later.output.version()?;
        let earlier = ops
            .iter()
            .filter(acked)
            .filter(|o| o.ret.is_some_and(|ret| ret < later.call))
            .filter_map(|o| Some((o, o.output.version()?)))
            .filter(|(_, ev)| *ev >= v)
            .max_by_key(|(o, ev)| (*ev, o.ret));
        let Some((earlier, ev)) = earlier else {
            continue;
        };
        let change = if v == 1 {
            "the key's versions restarted at 1".to_string()
        } else {
            format!("the key's versions went back from {ev} to {v}")
        };
        let leader = cx
            .faults
            .iter()
            .filter(|f| f.injected && f.start < later.call_s())
            .filter(|f| f.kind == FaultKind::Leader || f.node == crate::api::LEADER_ID)
            .max_by(|a, b| a.start.total_cmp(&b.start));
        let why = match leader {
            Some(f) => format!(
                " after the leader's restart ({} was {})",
                f.node,
                fault_context(&f.node, later.call_s(), cx.faults).unwrap_or_default()
            ),
            None => ": the leader forgot the key's history (no fault on the leader was recorded: a restart nobody logged?)".to_string(),
        };
        return Some(Story {
            key: later.key().to_string(),
            kind: "versions-went-back".into(),
            text: format!(
                "write `{}` = {} was acknowledged as version {v} at {:.3} s, after write {} had been acknowledged as version {ev} at {:.3} s: {change}{why}",
                later.key(),
                later.written_value().unwrap_or("?"),
                later.end_s(),
                earlier.written_value().unwrap_or("?"),
                earlier.end_s(),
            ),
            ops: vec![later.id],
            witnesses: vec![earlier.id],
        });
    }
    None
}

/// The first read that returned an older version than something that had
/// already returned before it was sent.
fn stale_read(ops: &[&Op], cx: &Context) -> Option<Story> {
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
                text: stale_story(read, witness, version, cx),
                ops: vec![read.id],
                witnesses: vec![witness.id],
            });
        }
    }
    None
}

fn stale_story(read: &Op, witness: &Op, version: u64, cx: &Context) -> String {
    let shape = cx.shape;
    let got = match &read.output {
        Outcome::Found {
            version, served_by, ..
        } => {
            format!(
                "version {version} from {}",
                who(served_by, read.call_s(), cx)
            )
        }
        _ => match read_set(read.call_s(), read.end_s(), cx) {
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
/// closest to `t`, with what the faults had done to it by then.
fn who(node: &str, t: f64, cx: &Context) -> String {
    let (shape, obs) = (cx.shape, cx.obs);
    let mut parts = Vec::new();
    if let Some(n) = obs
        .at(t)
        .and_then(|sample| sample.nodes.iter().find(|n| n.id == node))
    {
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
    }
    if let Some(fault) = fault_context(node, t, cx.faults) {
        parts.push(fault);
    }
    if parts.is_empty() {
        node.to_string()
    } else {
        format!("{node} ({})", parts.join(", "))
    }
}

/// The read set of a read called at `t` and answered at `end`, each
/// member told with [`who`]: as `/status` gave it, or, when `/status` gives
/// no sets (the original's), by the lab's rule: the R alive followers with
/// the highest ports. `/status` is sampled every 250 ms, so the samples
/// from just before the call to just after the answer are all looked at:
/// when the set changed among them (a node came back), every candidate is
/// named.
fn read_set(t: f64, end: f64, cx: &Context) -> Option<String> {
    let first = cx.obs.at(t)?;
    let around = cx
        .obs
        .samples
        .iter()
        .filter(|s| s.t > first.t && s.t <= end + 0.3);
    let mut candidates: Vec<Vec<&str>> = Vec::new();
    let mut by_rule = false;
    for sample in std::iter::once(first).chain(around) {
        let (members, rule) = members_of(sample, cx.shape.r);
        by_rule |= rule;
        if !members.is_empty() && !candidates.contains(&members) {
            candidates.push(members);
        }
    }
    let named: Vec<String> = candidates
        .iter()
        .map(|set| {
            set.iter()
                .map(|id| who(id, t, cx))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    let rule = match by_rule {
        true => " (by the lab's rule: the R alive followers with the highest ports)",
        false => "",
    };
    match named.len() {
        0 => None,
        1 => Some(format!("{}{rule}", named[0])),
        _ => Some(format!(
            "{}{rule}, as the set changed around the read",
            named.join(" or ")
        )),
    }
}

/// The read set in one sample, and whether it came from the lab's rule.
fn members_of(sample: &super::observe::Sample, r: usize) -> (Vec<&str>, bool) {
    let named: Vec<&str> = sample
        .nodes
        .iter()
        .filter(|n| n.sets.iter().any(|s| s == "read"))
        .map(|n| n.id.as_str())
        .collect();
    if !named.is_empty() {
        return (named, false);
    }
    let mut alive: Vec<_> = sample
        .nodes
        .iter()
        .filter(|n| !n.leader && n.status == "alive" && n.port > 0)
        .collect();
    alive.sort_by_key(|n| std::cmp::Reverse(n.port));
    let members: Vec<&str> = alive.into_iter().take(r).map(|n| n.id.as_str()).collect();
    let rule = !members.is_empty();
    (members, rule)
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
                    port: 0,
                    leader: false,
                }],
            }],
            overlaps: vec![],
        };
        let cx = Context {
            shape: &shape,
            obs: &obs,
            faults: &[],
        };
        let stories = explain(&history, &results, &cx);
        assert_eq!(stories.len(), 1);
        assert_eq!(stories[0].text,
            "read of `cart` at 12.301 s returned version 1 from follower-5 (in the read set, async, 5 s behind) \
             after write version 2 (`c0-2`) had been acknowledged at 12.110 s; W + R = 4 + 1 <= N = 5: the sets do not overlap");
        assert_eq!(
            (stories[0].ops.clone(), stories[0].witnesses.clone()),
            (vec![2], vec![1])
        );
    }

    fn write(id: usize, value: &str, call: u64, end: u64, version: u64) -> Op {
        op(
            id,
            0,
            Input::Write {
                key: "k3".into(),
                value: value.into(),
            },
            call,
            end,
            Outcome::Written { version },
        )
    }

    fn crash(node: &str, kind: FaultKind, start: f64, end: f64) -> FaultRecord {
        FaultRecord {
            kind,
            node: node.into(),
            how: if kind == FaultKind::Leader {
                vec!["crash".into()]
            } else {
                vec![]
            },
            start,
            end,
            injected: true,
            error: None,
            by: Some(super::super::nemesis::By::Hand),
        }
    }

    fn shape_3_3_1() -> Shape {
        Shape {
            followers: 3,
            w: 3,
            r: 1,
            sync_delay: None,
            async_delay: None,
        }
    }

    #[test]
    fn versions_that_restart_at_1_are_told_with_the_leaders_restart() {
        let s = 1_000_000_000;
        let history = vec![
            write(0, "c0-1", 0, s, 1),
            write(1, "c0-2", 2 * s, 3 * s, 2),
            write(2, "c1-1", 6 * s, 7 * s, 1),
        ];
        let results = check_keys(&history, std::time::Duration::from_secs(5));
        assert_eq!(results[0].verdict, Verdict::Violation);
        let faults = [crash("leader", FaultKind::Leader, 4.0, 5.5)];
        let cx = Context {
            shape: &shape_3_3_1(),
            obs: &Observations::default(),
            faults: &faults,
        };
        let stories = explain(&history, &results, &cx);
        assert_eq!(stories[0].kind, "versions-went-back");
        assert_eq!(
            stories[0].text,
            "write `k3` = c1-1 was acknowledged as version 1 at 7.000 s, after write c0-2 had been \
             acknowledged as version 2 at 3.000 s: the key's versions restarted at 1 after the leader's \
             restart (leader was crashed by hand at 4.000 s and restarted at 5.500 s)"
        );
    }

    #[test]
    fn a_not_found_read_names_the_read_set_by_the_labs_rule_and_its_crash() {
        let s = 1_000_000_000;
        let history = vec![
            write(0, "c0-1", 0, s, 1),
            op(
                1,
                1,
                Input::Read { key: "k3".into() },
                6 * s,
                7 * s,
                Outcome::NotFound,
            ),
        ];
        let results = check_keys(&history, std::time::Duration::from_secs(5));
        let node = |id: &str, port, leader| NodeSample {
            id: id.into(),
            status: "alive".into(),
            incarnation: 0,
            sets: vec![],
            port,
            leader,
        };
        // The original's /status: no sets, ports only in the URLs.
        let obs = Observations {
            samples: vec![Sample {
                t: 5.0,
                nodes: vec![
                    node("leader", 7001, true),
                    node("follower-1", 7002, false),
                    node("follower-2", 7003, false),
                    node("follower-3", 7004, false),
                ],
            }],
            overlaps: vec![],
        };
        let faults = [crash("follower-3", FaultKind::Crash, 2.0, 4.0)];
        let cx = Context {
            shape: &shape_3_3_1(),
            obs: &obs,
            faults: &faults,
        };
        let stories = explain(&history, &results, &cx);
        assert_eq!(
            stories[0].text,
            "read of `k3` at 6.000 s returned not found (version 0) from the read set: follower-3 \
             (crashed by hand at 2.000 s and restarted at 4.000 s) (by the lab's rule: the R alive \
             followers with the highest ports) after write version 1 (`c0-1`) had been acknowledged \
             at 1.000 s; W + R = 3 + 1 > N = 3: the sets overlap, so the cluster broke its promise"
        );
    }
}
