//! After healing: every node's copy of every key, against what was
//! acknowledged.
//!
//! Reads ask R followers, so a follower outside the read set can lack
//! acknowledged writes for ever without a read noticing (a restarted node
//! that was never caught up, a node that drops appends). After the faults
//! are healed, this reads every key from every node the coordinator's
//! `/status` lists (`GET {node}/data/{key}`, which every node of the lab
//! answers) and compares each copy with the newest acknowledged write of
//! the key: a node must hold that write, or a newer version. A node still
//! lacking one when the wait is over is a finding of its own, *lost on a
//! replica* (on the leader: a *lost write*), apart from linearizability.
//!
//! Replication takes time (an async follower is 5 s behind in the lab), so
//! the comparison is repeated until every copy is complete or the wait
//! (`--replica-wait`) is over; only what is still missing then counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::explain::{fault_context, Story};
use super::history::{Op, Outcome};
use super::nemesis::{Control, FaultRecord};
use crate::api::NodeStatus;

/// What one node held after healing.
#[derive(Debug, Clone, Serialize)]
pub struct Copy {
    pub node: String,
    /// The node led when it was read.
    pub leader: bool,
    /// Key → (version, value), `None` when the node does not have the key.
    pub held: BTreeMap<String, Option<(u64, String)>>,
}

/// The newest acknowledged write of each key: (version, value, op id),
/// the highest version (ties: the one acknowledged last).
pub fn newest_acked(history: &[Op]) -> BTreeMap<String, (u64, String, usize)> {
    let mut newest: BTreeMap<String, (u64, String, usize, u64)> = BTreeMap::new();
    for op in history {
        let (Outcome::Written { version }, Some(value)) = (&op.output, op.written_value()) else {
            continue;
        };
        let ret = op.ret.unwrap_or(op.end);
        let e = newest.entry(op.key().to_string());
        let newer = |old: &(u64, String, usize, u64)| (*version, ret) > (old.0, old.3);
        match e {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((*version, value.to_string(), op.id, ret));
            }
            std::collections::btree_map::Entry::Occupied(mut o) if newer(o.get()) => {
                o.insert((*version, value.to_string(), op.id, ret));
            }
            _ => {}
        }
    }
    newest
        .into_iter()
        .map(|(k, (v, val, id, _))| (k, (v, val, id)))
        .collect()
}

/// Does a copy hold the write `(version, value)`, or something newer?
fn holds(copy: &Option<(u64, String)>, version: u64, value: &str) -> bool {
    match copy {
        Some((v, _)) if *v > version => true,
        Some((v, held)) => *v == version && held == value,
        None => false,
    }
}

/// Reads every key of `newest` from every node of the cluster, again and
/// again until every copy holds its newest write or `wait` is over.
/// Returns the last copies read, and notes on nodes that could not be read.
pub async fn read_all(
    control: &Control,
    newest: &BTreeMap<String, (u64, String, usize)>,
    wait: Duration,
) -> Result<(Vec<Copy>, Vec<String>), String> {
    let deadline = Instant::now() + wait;
    loop {
        let status = control.status().await?;
        let leader = status.leader.as_ref().map(|l| l.node_id.clone());
        let nodes: Vec<_> = status
            .leader
            .iter()
            .chain(status.followers.iter())
            .filter(|n| n.status != NodeStatus::Dead)
            .cloned()
            .collect();
        let reads = nodes.iter().map(|n| read_node(control, &n.url, newest));
        let results = futures::future::join_all(reads).await;
        let mut copies = Vec::new();
        let mut notes = Vec::new();
        for (n, held) in nodes.iter().zip(results) {
            match held {
                Ok(held) => copies.push(Copy {
                    node: n.node_id.clone(),
                    leader: leader.as_deref() == Some(n.node_id.as_str()),
                    held,
                }),
                Err(e) => notes.push(format!("could not read {}'s copy: {e}", n.node_id)),
            }
        }
        let complete = notes.is_empty()
            && copies.iter().all(|c| {
                newest
                    .iter()
                    .all(|(k, (v, val, _))| holds(&c.held[k], *v, val))
            });
        if complete || Instant::now() >= deadline {
            return Ok((copies, notes));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One node's copy of each key.
async fn read_node(
    control: &Control,
    url: &str,
    keys: &BTreeMap<String, (u64, String, usize)>,
) -> Result<BTreeMap<String, Option<(u64, String)>>, String> {
    let mut held = BTreeMap::new();
    for key in keys.keys() {
        let resp = control
            .http
            .get(format!("{}/data/{key}", url.trim_end_matches('/')))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| crate::http::describe_reqwest_error(&e))?;
        let copy = match resp.status().as_u16() {
            404 => None,
            200 => {
                let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
                let value = match &v["value"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((v["version"].as_u64().unwrap_or(0), value))
            }
            s => return Err(format!("HTTP {s} for `{key}`")),
        };
        held.insert(key.clone(), copy);
    }
    Ok(held)
}

/// One story per (node, key) whose copy lacks the key's newest
/// acknowledged write: `lost-write` on the leader, `lost-on-replica` on
/// a follower. Each says what the node holds instead, and what happened
/// to that node during the run.
pub fn findings(
    history: &[Op],
    newest: &BTreeMap<String, (u64, String, usize)>,
    copies: &[Copy],
    faults: &[FaultRecord],
) -> Vec<Story> {
    let mut stories = Vec::new();
    for copy in copies {
        for (key, (version, value, id)) in newest {
            let held = copy.held.get(key).cloned().flatten();
            if holds(&held, *version, value) {
                continue;
            }
            let acked_at = history.get(*id).map_or(0.0, |op| op.end_s());
            let instead = match &held {
                None => "does not have the key at all".to_string(),
                Some((v, val)) if *v == *version => {
                    format!("holds another value at that version (`{val}`)")
                }
                Some((v, val)) => format!("holds version {v} (`{val}`)"),
            };
            let (kind, whose) = if copy.leader {
                ("lost-write", format!("the leader ({})", copy.node))
            } else {
                ("lost-on-replica", copy.node.clone())
            };
            let context = fault_context(&copy.node, f64::INFINITY, faults)
                .map(|c| format!("; {} was {c}", copy.node))
                .unwrap_or_else(|| format!("; no fault touched {}", copy.node));
            stories.push(Story {
                key: key.clone(),
                kind: kind.into(),
                text: format!(
                    "acknowledged write `{key}` = {value} (version {version}, acknowledged at {acked_at:.3} s) \
                     is missing on {whose} after healing: it {instead}{context}"
                ),
                ops: vec![*id],
                witnesses: vec![],
            });
        }
    }
    stories
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::history::Input;
    use crate::check::nemesis::{By, FaultKind};

    fn write(id: usize, key: &str, value: &str, version: u64, end: u64) -> Op {
        Op {
            id,
            client_id: 0,
            input: Input::Write {
                key: key.into(),
                value: value.into(),
            },
            call: end - 1,
            output: Outcome::Written { version },
            ret: Some(end),
            end,
            start: false,
        }
    }

    #[test]
    fn a_copy_without_the_newest_acknowledged_write_is_a_finding() {
        let s = 1_000_000_000;
        let history = vec![
            write(0, "k0", "c0-1", 1, s),
            write(1, "k0", "c0-2", 2, 2 * s),
            write(2, "k1", "c1-1", 1, 3 * s),
        ];
        let newest = newest_acked(&history);
        assert_eq!(newest["k0"], (2, "c0-2".to_string(), 1));
        let copy = |node: &str, leader, k0: Option<(u64, &str)>| Copy {
            node: node.into(),
            leader,
            held: [
                ("k0".to_string(), k0.map(|(v, s)| (v, s.to_string()))),
                ("k1".to_string(), Some((1, "c1-1".to_string()))),
            ]
            .into(),
        };
        let copies = vec![
            copy("leader", true, Some((2, "c0-2"))),
            copy("follower-1", false, Some((3, "other"))),
            copy("follower-2", false, Some((1, "c0-1"))),
            copy("follower-3", false, None),
        ];
        let faults = vec![FaultRecord {
            kind: FaultKind::Crash,
            node: "follower-3".into(),
            how: vec![],
            start: 1.5,
            end: 2.5,
            injected: true,
            error: None,
            by: Some(By::FaultCmd),
        }];
        let stories = findings(&history, &newest, &copies, &faults);
        assert_eq!(stories.len(), 2, "{stories:#?}");
        assert_eq!(stories[0].kind, "lost-on-replica");
        assert_eq!(
            stories[0].text,
            "acknowledged write `k0` = c0-2 (version 2, acknowledged at 2.000 s) is missing on follower-2 \
             after healing: it holds version 1 (`c0-1`); no fault touched follower-2"
        );
        assert!(
            stories[1].text.contains(
                "is missing on follower-3 after healing: it does not have the key at all; \
                 follower-3 was crashed by the fault command at 1.500 s and restarted at 2.500 s"
            ),
            "{}",
            stories[1].text
        );
    }
}
