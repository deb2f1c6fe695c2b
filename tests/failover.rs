//! Leader failover on real clusters: a follower is promoted with a new term
//! when the leader dies, acknowledged writes survive, a deposed leader is
//! fenced and truncated, and an election that would lose acknowledged
//! writes is refused unless `--unclean-failover` allows it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, millis, secs, test_seed, wait, Cluster, Lcg, FAST_2_2_2, FAST_3_2_2};
use serde_json::{json, Value};

/// The current leader's node id and URL, from `/status`.
fn leader(c: &Cluster) -> (String, String) {
    let s = c.status();
    (
        s["leader"]["node_id"].as_str().unwrap().to_string(),
        s["leader"]["url"].as_str().unwrap().to_string(),
    )
}

/// Every slot of the status, leader first.
fn nodes(status: &Value) -> Vec<Value> {
    std::iter::once(status["leader"].clone())
        .chain(status["followers"].as_array().unwrap().iter().cloned())
        .collect()
}

fn url_of(c: &Cluster, id: &str) -> String {
    nodes(&c.status())
        .into_iter()
        .find(|n| n["node_id"] == id)
        .map(|n| n["url"].as_str().unwrap().to_string())
        .unwrap()
}

/// Waits until every alive node holds exactly the leader's data, at the
/// leader's applied seq. Returns that data.
fn wait_converged(c: &Cluster) -> BTreeMap<String, Value> {
    c.eventually(
        "every alive node to converge on the leader's data",
        secs(30),
        || {
            let s = c.status();
            let leader_url = s["leader"]["url"].as_str().unwrap().to_string();
            let seq_of = |url: &str| c.get_json(&format!("{url}/stats"))["applied_seq"].as_u64();
            let target = seq_of(&leader_url);
            let alive: Vec<String> = nodes(&s)
                .iter()
                .filter(|n| n["status"] == "alive")
                .map(|n| n["url"].as_str().unwrap().to_string())
                .collect();
            if alive.iter().all(|u| seq_of(u) == target) {
                let data: Vec<BTreeMap<String, Value>> = alive
                    .iter()
                    .map(|u| serde_json::from_value(c.node_data(u)).unwrap())
                    .collect();
                if data.windows(2).all(|w| w[0] == w[1]) {
                    return Ok(data.into_iter().next().unwrap());
                }
            }
            Err(format!(
                "nodes did not converge: {s}\n{}",
                alive
                    .iter()
                    .map(|u| format!("{u}: {:?}", seq_of(u)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        },
    )
}

/// Writes until one succeeds; returns how long that took.
fn first_write_after(c: &Cluster, key: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    wait("a write to succeed", timeout)
        .every(millis(5))
        .events(c)
        .until(|| {
            let (code, body) = c.write(key, "after");
            if code == 200 {
                Ok(started.elapsed())
            } else {
                Err(format!(
                    "no write succeeded within {timeout:?}: {code} {body}"
                ))
            }
        })
}

#[test]
fn graceful_leader_kill_promotes_a_follower_and_the_old_leader_rejoins() {
    let c = Cluster::start(FAST_3_2_2);
    let s = c.status();
    assert_eq!(
        (s["term"].as_u64(), s["leader"]["role"].as_str()),
        (Some(1), Some("leader"))
    );
    for i in 0..20 {
        assert_eq!(c.write(&format!("k{i}"), &format!("v{i}")).0, 200);
    }
    // The cluster's first election is not a leader change.
    assert_eq!(leader_changes(&c), 0.0);
    let (code, body) = c.post("/kill/leader", json!({}));
    assert_eq!(code, 200, "{body}");
    let took = first_write_after(&c, "after-kill", Duration::from_secs(5));
    assert_eq!(leader_changes(&c), 1.0, "the failover is a leader change");
    eprintln!("first write after a graceful leader kill succeeded in {took:?}");
    assert!(took < Duration::from_millis(500), "took {took:?}");

    let s = c.status();
    assert_eq!(s["term"], 2, "{s}");
    assert_eq!(s["leader"]["node_id"], "follower-1", "{s}");
    assert_eq!(s["leader"]["role"], "leader");
    let old = c.follower("leader");
    assert_eq!(
        (old["status"].as_str(), old["role"].as_str()),
        (Some("dead"), Some("follower")),
        "{s}"
    );
    assert_eq!(
        s["followers"].as_array().unwrap().len(),
        3,
        "N stays N: {s}"
    );
    assert_eq!(s["failover"]["state"], "none");
    for kind in [
        "failover_candidates",
        "failover_chosen",
        "leader_promoted",
        "old_leader_fenced",
    ] {
        c.wait_for_event(kind, None, Duration::from_secs(1));
    }
    // Reads kept working, and see the writes of both terms.
    assert_eq!(c.read("k7").1["value"], "v7");
    assert_eq!(c.read("after-kill").1["value"], "after");
    let health = c.get_json(&format!("{}/health", url_of(&c, "follower-1")));
    assert_eq!(
        (health["role"].as_str(), health["term"].as_u64()),
        (Some("leader"), Some(2))
    );

    // `leader` names the current leader; respawning it means the dead node
    // called `leader`, which comes back as a follower and catches up.
    let (code, body) = c.post("/spawn", json!({"node_id": "leader"}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["node_id"], "leader");
    let data = wait_converged(&c);
    assert_eq!(data.len(), 21);
    let old = c.get_json(&format!("{}/health", c.node_url(0)));
    assert_eq!(
        (old["role"].as_str(), old["term"].as_u64()),
        (Some("follower"), Some(2))
    );
    assert_eq!(c.status()["leader"]["node_id"], "follower-1");
    // The old leader came back as a follower: no new leader.
    assert_eq!(leader_changes(&c), 1.0);
}

/// The coordinator's `kvlab_leader_changes_total`, from its `/metrics`.
fn leader_changes(c: &Cluster) -> f64 {
    let url = format!("{}/metrics", c.coordinator);
    let text = c.http.get(&url).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("kvlab_leader_changes_total "))
        .unwrap_or_else(|| panic!("no kvlab_leader_changes_total in {url}:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A write the cluster acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
}

fn writers(
    c: &Cluster,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Acked>>> {
    (0..n)
        .map(|t| {
            let (url, stop) = (format!("{}/write", c.coordinator), stop.clone());
            std::thread::spawn(move || {
                let http = http().timeout(secs(10)).build();
                let mut acked = vec![];
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (key, value) = (format!("w{t}-{n}"), format!("value {t}/{n}"));
                    let sent = http
                        .post(&url)
                        .json(&json!({"key": key, "value": value}))
                        .send();
                    match sent {
                        Ok(r) if r.status() == 200 => acked.push(Acked { key, value }),
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                acked
            })
        })
        .collect()
}

#[test]
fn twenty_leader_crashes_lose_no_acknowledged_write() {
    let c = Cluster::start(&format!("{FAST_3_2_2} --fsync always --failure-timeout 1"));
    let seed = test_seed("crash moments", std::process::id() as u64 ^ 0x5eed);
    let mut rng = Lcg(seed);
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(&c, 4, &stop);
    let mut crash_to_write = vec![];
    for round in 0..20 {
        // A random moment: 50 to 300 ms of writes.
        std::thread::sleep(Duration::from_millis(50 + rng.below(250)));
        let term = c.status()["term"].as_u64().unwrap();
        let (old, _) = leader(&c);
        let (code, body) = c.post("/kill/leader?mode=crash", json!({}));
        assert_eq!(code, 200, "round {round}: {body}");
        // From the crash to the first write the new leader acknowledges:
        // the failure timeout (1 s), then the election.
        crash_to_write.push(first_write_after(
            &c,
            &format!("probe-{round}"),
            Duration::from_secs(10),
        ));
        c.wait_status("a new leader", Duration::from_secs(10), |s| {
            s["term"].as_u64() > Some(term) && s["leader"]["status"] == "alive"
        });
        // N stays N: the crashed node comes back as a follower.
        let (code, body) = c.post("/spawn", json!({"node_id": old}));
        assert_eq!(code, 200, "round {round}: respawn {old}: {body}");
    }
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Acked> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let data = wait_converged(&c);
    let lost: Vec<&Acked> = acked
        .iter()
        .filter(|a| data.get(&a.key).and_then(|v| v["value"].as_str()) != Some(a.value.as_str()))
        .collect();
    crash_to_write.sort();
    eprintln!(
        "20 leader crashes: {} acknowledged writes, {} lost; crash to first acknowledged \
         write: median {:?}, max {:?} (failure timeout 1 s); final term {}",
        acked.len(),
        lost.len(),
        crash_to_write[10],
        crash_to_write[19],
        c.status()["term"]
    );
    assert!(
        acked.len() > 100,
        "too few writes succeeded: {}",
        acked.len()
    );
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    assert_eq!(c.status()["followers"].as_array().unwrap().len(), 3);
    // The target is timeout + 0.5 s; the bound leaves room for a loaded CI box.
    assert!(
        crash_to_write[10] < Duration::from_millis(2500),
        "{crash_to_write:?}"
    );
}

#[test]
fn a_paused_leader_is_fenced_steps_down_and_truncates() {
    let c = Cluster::start(&format!("{FAST_3_2_2} --failure-timeout 1"));
    for i in 0..10 {
        assert_eq!(c.write(&format!("k{i}"), "before").0, 200);
    }
    let zombie = c.status()["leader"].clone();
    let pid = zombie["pid"].as_u64().unwrap() as i32;
    let zombie_url = zombie["url"].as_str().unwrap().to_string();
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let since = c.last_event_id();
    c.wait_for_event_after(since, "leader_promoted", None, Duration::from_secs(10));
    for i in 0..10 {
        assert_eq!(c.write(&format!("k{i}"), "during").0, 200);
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Right after waking it still believes it leads term 1: a write sent to
    // it directly (no coordinator, so never acknowledged to a client) may
    // land in its log, but nothing it streams is accepted.
    let ghost = c
        .http
        .post(format!("{zombie_url}/data"))
        .json(&json!({"key": "ghost", "value": "boo", "sync": []}))
        .send()
        .unwrap();
    eprintln!("write to the woken zombie: {}", ghost.status());
    c.wait_status(
        "the old leader back as a follower",
        Duration::from_secs(15),
        |s| {
            s["followers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["node_id"] == "leader" && f["status"] == "alive")
        },
    );
    let data = wait_converged(&c);
    assert!(!data.contains_key("ghost"), "the zombie's write survived");
    assert_eq!(data["k3"]["value"], "during");
    let health = c.get_json(&format!("{zombie_url}/health"));
    assert_eq!(
        (health["role"].as_str(), health["term"].as_u64()),
        (Some("follower"), Some(2))
    );
    assert_eq!(c.read("k9").1["value"], "during");
}

#[test]
fn failover_that_would_lose_acknowledged_writes_is_refused_unless_unclean() {
    for unclean in [false, true] {
        let mut flags = "--followers 3 -W 2 -R 1 --sync-delay 0 --async-delay 60".to_string();
        if unclean {
            flags.push_str(" --unclean-failover");
        }
        let c = Cluster::start(&flags);
        for i in 0..5 {
            assert_eq!(c.write(&format!("k{i}"), "v").0, 200);
        }
        // The sync set crashes (unnoticed for now, so follower-3 stays on
        // its 60 s link), then the leader stops: follower-3 holds nothing.
        for id in ["follower-1", "follower-2"] {
            assert_eq!(c.post(&format!("/kill/{id}?mode=crash"), json!({})).0, 200);
        }
        assert_eq!(c.post("/kill/leader", json!({})).0, 200);
        if !unclean {
            let e = c.wait_for_event("failover_refused", None, Duration::from_secs(5));
            let msg = e["message"].as_str().unwrap();
            assert!(msg.contains("1..=5"), "{msg}");
            let s = c.status();
            assert_eq!(s["failover"]["state"], "refused", "{s}");
            assert_eq!(s["failover"]["at_risk"], json!({"from": 1, "to": 5}), "{s}");
            assert_eq!(s["leader"]["node_id"], "leader", "{s}");
            let (code, body) = c.write("x", "y");
            assert_eq!(code, 503, "{body}");
            let cause = body["detail"]["cause"].as_str().unwrap();
            assert!(
                cause.contains("failover refused") && cause.contains("--unclean-failover"),
                "{cause}"
            );
            // A sync follower returning holds them all: failover completes.
            assert_eq!(c.post("/spawn", json!({"node_id": "follower-1"})).0, 200);
            c.wait_status("follower-1 promoted", Duration::from_secs(10), |s| {
                s["leader"]["node_id"] == "follower-1"
            });
            assert_eq!(c.status()["failover"]["state"], "none");
        } else {
            let e = c.wait_for_event("failover_unclean", None, Duration::from_secs(5));
            let msg = e["message"].as_str().unwrap();
            assert!(msg.contains("1..=5") && msg.contains("LOST"), "{msg}");
            let s = c.wait_status("follower-3 promoted", Duration::from_secs(5), |s| {
                s["leader"]["node_id"] == "follower-3"
            });
            assert_eq!(s["term"], 2);
        }
    }
}

/// Issue 10, case 3: the leader's last record is damaged, so it restarts one
/// entry behind its followers. The most advanced node leads; no seq is used
/// twice; the restarted node catches up.
#[test]
fn a_leader_restarted_behind_its_followers_does_not_reuse_a_seq() {
    let c = Cluster::start(FAST_2_2_2);
    for i in 1..=10 {
        assert_eq!(c.write(&format!("k{i}"), &format!("v{i}")).0, 200);
    }
    assert_eq!(c.post("/kill/leader?mode=crash", json!({})).0, 200);
    let dir = c.data_dir.as_ref().unwrap().path().join("leader");
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end - 1] ^= 0x5a; // inside the last record: a torn tail
    std::fs::write(&seg, bytes).unwrap();

    let (code, body) = c.post("/spawn", json!({"node_id": "leader"}));
    assert_eq!(code, 200, "{body}");
    let s = c.wait_status("an election", Duration::from_secs(5), |s| s["term"] == 2);
    assert_eq!(
        s["leader"]["node_id"], "follower-1",
        "the most advanced node leads: {s}"
    );
    let (code, w) = c.write("after", "x");
    assert_eq!(code, 200, "{w}");
    assert_eq!(w["seq"], 11, "seq 10 is taken: {w}");
    assert_eq!(c.read("after").1["value"], "x");
    assert_eq!(c.read("k10").1["value"], "v10");
    let data = wait_converged(&c);
    assert_eq!(data.len(), 11);
}

/// The gap closed by reconciled terms: a deposed leader comes back holding
/// entries the new leader will cut (here written straight to it while it
/// was cut off from its followers), at seqs the new term has since reused
/// and committed. Until the new leader has reconciled its log, its answers
/// must not count: before the fix a read returned such an entry, and a
/// later read the committed, older version.
#[test]
fn a_returning_leader_serves_no_read_before_the_new_leader_reconciles_it() {
    let c = Cluster::start(&format!("{FAST_3_2_2} --failure-timeout 1"));
    assert_eq!(c.write("cart", "v1").0, 200);
    let zombie = c.status()["leader"].clone();
    let pid = zombie["pid"].as_u64().unwrap() as i32;
    let zombie_url = zombie["url"].as_str().unwrap().to_string();
    // Cut the leader off from every follower for long enough, then write
    // to it directly: the entries stay in its log alone.
    let cut = c
        .http
        .post(format!("{zombie_url}/admin/partition"))
        .json(&json!({"peers": ["follower-1", "follower-2", "follower-3"], "seconds": 120}))
        .send()
        .unwrap();
    assert!(
        cut.status().is_success(),
        "partition refused: {}",
        cut.status()
    );
    for ghost in ["ghost-1", "ghost-2", "ghost-3"] {
        let resp = c
            .http
            .post(format!("{zombie_url}/data"))
            .json(&json!({"key": "cart", "value": ghost, "sync": []}))
            .send()
            .unwrap();
        assert!(
            resp.status().is_success(),
            "direct write: {}",
            resp.status()
        );
    }
    // The leader goes silent; a follower is promoted and the new term
    // reuses (and commits) the seqs the ghosts hold on the old leader.
    let since = c.last_event_id();
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    c.wait_for_event_after(since, "leader_promoted", None, Duration::from_secs(15));
    assert_eq!(c.write("cart", "v2").0, 200);
    for i in 0..5 {
        assert_eq!(c.write(&format!("other-{i}"), "x").0, 200);
    }
    // The old leader wakes up, still cut off from the new leader, and is
    // taken back as a follower. Leave it and one other follower alive, so
    // that with R=2 every read must ask it.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    c.wait_status(
        "the old leader back as a follower",
        Duration::from_secs(15),
        |s| {
            s["followers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["node_id"] == "leader" && f["status"] == "alive")
        },
    );
    let status = c.status();
    let mut others: Vec<(u64, String)> = status["followers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["node_id"] != "leader" && f["status"] == "alive")
        .map(|f| {
            let port = f["url"].as_str().unwrap().rsplit(':').next().unwrap();
            (
                port.parse().unwrap(),
                f["node_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    others.sort();
    let (_, highest) = others.pop().unwrap();
    assert_eq!(
        c.post(&format!("/kill/{highest}?mode=crash"), json!({})).0,
        200
    );
    // Each of these waits up to 2 s for a reconciliation that cannot come.
    for _ in 0..3 {
        let (code, body) = c.read("cart");
        assert!(
            !body["value"].as_str().unwrap_or("").starts_with("ghost"),
            "a read returned an entry the new leader will cut: {code} {body}"
        );
    }
    // Healed, the old leader is reconciled (its ghosts cut) and reads work.
    let heal = c
        .http
        .post(format!("{zombie_url}/admin/partition"))
        .json(&json!({"peers": [], "seconds": 0}))
        .send()
        .unwrap();
    assert!(heal.status().is_success());
    let body = c.eventually("reads to recover", secs(15), || {
        let (code, body) = c.read("cart");
        if code == 200 {
            Ok(body)
        } else {
            Err(format!("reads never recovered: {code} {body}"))
        }
    });
    assert_eq!(body["value"], "v2", "{body}");
}
