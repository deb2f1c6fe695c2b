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
//!
//! A node that comes back empty and is never caught up may look complete
//! at the end: the workload overwrites every key within a second or two.
//! So the copies are also *probed* during the run ([`probe`], four times a
//! second), and each probe is held to a rule that needs no timing
//! assumption: a node applies the log in order, so a node that holds a
//! write A must also hold every write acknowledged before A was even sent
//! (or a newer version of its key). A probe that breaks it is lost on a
//! replica too ([`probe_findings`]). kvlab's `GET /data` reads the whole
//! state under one lock; a node without it is read key by key, and then
//! only keys read earlier vouch for the keys read later.

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
    let names: Vec<String> = keys.keys().cloned().collect();
    let (copy, _) = read_copy(control, url, &names, Duration::from_secs(5)).await?;
    Ok(copy.into_iter().collect())
}

/// One node's copy of `keys`, in the order read, and whether it was read
/// at one instant (kvlab's `GET /data`, the whole state under one lock)
/// rather than key by key (`GET /data/{key}`, which every node answers).
async fn read_copy(
    control: &Control,
    url: &str,
    keys: &[String],
    timeout: Duration,
) -> Result<(Vec<(String, Option<(u64, String)>)>, bool), String> {
    let url = url.trim_end_matches('/');
    if let Ok(resp) = control
        .http
        .get(format!("{url}/data"))
        .timeout(timeout)
        .send()
        .await
    {
        if resp.status().is_success() {
            if let Ok(v) = resp.json::<serde_json::Value>().await {
                if let Some(data) = v["data"].as_object() {
                    let versioned = data.values().all(|e| e["version"].is_u64());
                    if versioned {
                        let copy = keys
                            .iter()
                            .map(|k| (k.clone(), data.get(k).map(versioned_value)))
                            .collect();
                        return Ok((copy, true));
                    }
                }
            }
        }
    }
    let mut held = Vec::new();
    for key in keys {
        let resp = control
            .http
            .get(format!("{url}/data/{key}"))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| crate::http::describe_reqwest_error(&e))?;
        let copy = match resp.status().as_u16() {
            404 => None,
            200 => {
                let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
                Some(versioned_value(&v))
            }
            s => return Err(format!("HTTP {s} for `{key}`")),
        };
        held.push((key.clone(), copy));
    }
    Ok((held, false))
}

/// `{"value", "version"}` as (version, value); a value that is not a
/// string is kept as its JSON text.
fn versioned_value(v: &serde_json::Value) -> (u64, String) {
    let value = match &v["value"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (v["version"].as_u64().unwrap_or(0), value)
}

/// One node's copy, read during the run.
#[derive(Debug, Clone)]
pub struct Probe {
    pub node: String,
    /// Seconds since the start of the run, when the read began.
    pub t: f64,
    /// The keys in the order read.
    pub held: Vec<(String, Option<(u64, String)>)>,
    /// Read at one instant (see [`read_copy`]).
    pub atomic: bool,
}

/// Probes every alive node's copy of `keys` four times a second until
/// `stop` fires (see the module's notes). A node that just came back is
/// the one most likely to lack writes, and only until the clients
/// overwrite them (a fraction of a second on a fast cluster), so for 3 s
/// after it comes back it is probed every 20 ms: when the nemesis says it
/// healed it (`healed` receives its id), or when `/status` shows it alive
/// again or under a new incarnation.
pub async fn probe(
    control: Control,
    keys: Vec<String>,
    epoch: Instant,
    mut healed: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Probe> {
    use std::collections::HashMap;
    const ROUND: Duration = Duration::from_millis(250);
    const FAST: Duration = Duration::from_millis(20);
    const CLOSELY_FOR: Duration = Duration::from_secs(3);
    let mut probes = Vec::new();
    // node id -> (url, incarnation, alive), from the last /status.
    let mut seen: HashMap<String, (String, u64, bool)> = HashMap::new();
    // node id -> until when it is probed closely.
    let mut closely: HashMap<String, Instant> = HashMap::new();
    let read = |node: String, url: String| {
        let (control, keys) = (&control, &keys);
        async move {
            let t = epoch.elapsed().as_secs_f64();
            let copy = read_copy(control, &url, keys, Duration::from_secs(1)).await;
            copy.ok().map(|(held, atomic)| Probe {
                node,
                t,
                held,
                atomic,
            })
        }
    };
    loop {
        let round = Instant::now();
        if let Ok(status) = control.status().await {
            let mut alive = Vec::new();
            for n in status.leader.iter().chain(status.followers.iter()) {
                let up = n.status == NodeStatus::Alive;
                let back = seen
                    .get(&n.node_id)
                    .is_some_and(|(_, inc, was)| (up && !was) || *inc != n.incarnation);
                if back {
                    closely.insert(n.node_id.clone(), Instant::now() + CLOSELY_FOR);
                }
                seen.insert(n.node_id.clone(), (n.url.clone(), n.incarnation, up));
                if up {
                    alive.push(read(n.node_id.clone(), n.url.clone()));
                }
            }
            probes.extend(futures::future::join_all(alive).await.into_iter().flatten());
        }
        // Until the next round: the nodes just back, every 20 ms.
        while round.elapsed() < ROUND {
            while let Ok(id) = healed.try_recv() {
                closely.insert(id, Instant::now() + CLOSELY_FOR);
            }
            closely.retain(|_, until| Instant::now() < *until);
            let fast = closely.keys().filter_map(|id| {
                let (url, _, _) = seen.get(id)?;
                Some(read(id.clone(), url.clone()))
            });
            probes.extend(futures::future::join_all(fast).await.into_iter().flatten());
            tokio::select! {
                _ = tokio::time::sleep(FAST) => {}
                _ = stop.wait_for(|s| *s) => return probes,
            }
        }
    }
}

/// The probes that caught a node holding a write without one acknowledged
/// before that write was sent (see the module's notes): one story per
/// node and key, the first time it was seen.
pub fn probe_findings(history: &[Op], probes: &[Probe], faults: &[FaultRecord]) -> Vec<Story> {
    use std::collections::{HashMap, HashSet};
    // Who wrote each value (values are unique to a write).
    let writer: HashMap<(&str, &str), &Op> = history
        .iter()
        .filter(|op| !op.start)
        .filter_map(|op| Some(((op.key(), op.written_value()?), op)))
        .collect();
    // Each key's acknowledged writes.
    let mut acked: HashMap<&str, Vec<(&Op, u64)>> = HashMap::new();
    for op in history {
        if let Outcome::Written { version } = op.output {
            acked.entry(op.key()).or_default().push((op, version));
        }
    }
    let mut told: HashSet<(String, String)> = HashSet::new();
    let mut stories = Vec::new();
    for p in probes {
        let call_of = |(key, copy): &(String, Option<(u64, String)>)| {
            let (_, value) = copy.as_ref()?;
            writer.get(&(key.as_str(), value.as_str())).copied()
        };
        // The held write sent last, among the keys that vouch.
        let mut latest: Option<&Op> = None;
        if p.atomic {
            latest = p.held.iter().filter_map(call_of).max_by_key(|w| w.call);
        }
        for entry in &p.held {
            let (key, copy) = entry;
            if let Some(a) = latest {
                let owed = acked.get(key.as_str()).and_then(|ws| {
                    ws.iter()
                        .filter(|(w, _)| w.ret.is_some_and(|r| r < a.call))
                        .max_by_key(|(w, v)| (*v, w.ret))
                });
                if let Some((b, version)) = owed {
                    let value = b.written_value().unwrap_or("");
                    if !holds(copy, *version, value) && told.insert((p.node.clone(), key.clone())) {
                        stories.push(gap_story(p, key, copy, b, *version, a, faults));
                    }
                }
            }
            if !p.atomic {
                if let Some(w) = call_of(entry) {
                    latest = match latest {
                        Some(l) if l.call >= w.call => Some(l),
                        _ => Some(w),
                    };
                }
            }
        }
    }
    stories
}

fn gap_story(
    p: &Probe,
    key: &str,
    copy: &Option<(u64, String)>,
    owed: &Op,
    version: u64,
    held: &Op,
    faults: &[FaultRecord],
) -> Story {
    let instead = match copy {
        None => "did not have the key".to_string(),
        Some((v, val)) => format!("held version {v} (`{val}`)"),
    };
    let context = fault_context(&p.node, p.t, faults)
        .map(|c| format!("; {} was {c}", p.node))
        .unwrap_or_else(|| format!("; no fault had touched {}", p.node));
    Story {
        key: key.to_string(),
        kind: "lost-on-replica".into(),
        text: format!(
            "{node} lacked acknowledged write `{key}` = {value} (version {version}, acknowledged at {acked:.3} s) \
             at {t:.3} s: it {instead}, though it held `{hkey}` = {hvalue}, a write sent after that \
             acknowledgement (at {sent:.3} s), so it applied a later write without an earlier one{context}",
            node = p.node,
            value = owed.written_value().unwrap_or("?"),
            acked = owed.end_s(),
            t = p.t,
            hkey = held.key(),
            hvalue = held.written_value().unwrap_or("?"),
            sent = held.call_s(),
        ),
        ops: vec![owed.id],
        witnesses: vec![held.id],
    }
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

    #[test]
    fn a_probe_holding_a_later_write_without_an_earlier_one_is_a_finding() {
        let s = 1_000_000_000;
        let history = vec![
            write(0, "k0", "a", 1, s),     // acknowledged at 1 s
            write(1, "k1", "b", 1, 2 * s), // acknowledged at 2 s
            write(2, "k1", "c", 2, 5 * s), // sent at 5 s - 1 ns
        ];
        let probe = |node: &str, atomic, held: Vec<(&str, Option<(u64, &str)>)>| Probe {
            node: node.into(),
            t: 6.0,
            held: held
                .into_iter()
                .map(|(k, c)| (k.to_string(), c.map(|(v, s)| (v, s.to_string()))))
                .collect(),
            atomic,
        };
        let probes = vec![
            // Holds `c` (sent after `a` was acknowledged) but not `a`.
            probe(
                "follower-1",
                true,
                vec![("k0", None), ("k1", Some((2, "c")))],
            ),
            // A prefix: `b` without `c` is fine, as is nothing at all.
            probe(
                "follower-2",
                true,
                vec![("k0", Some((1, "a"))), ("k1", Some((1, "b")))],
            ),
            probe("follower-3", true, vec![("k0", None), ("k1", None)]),
            // Read key by key: k0 was read before `c` was seen, so it is not owed.
            probe("leader", false, vec![("k0", None), ("k1", Some((2, "c")))]),
        ];
        let stories = probe_findings(&history, &probes, &[]);
        assert_eq!(stories.len(), 1, "{stories:#?}");
        assert_eq!(
            stories[0].text,
            "follower-1 lacked acknowledged write `k0` = a (version 1, acknowledged at 1.000 s) at 6.000 s: \
             it did not have the key, though it held `k1` = c, a write sent after that acknowledgement \
             (at 5.000 s), so it applied a later write without an earlier one; no fault had touched follower-1"
        );
        assert_eq!(
            (stories[0].ops.clone(), stories[0].witnesses.clone()),
            (vec![0], vec![2])
        );
    }
}
