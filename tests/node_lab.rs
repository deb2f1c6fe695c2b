//! The node lab end to end: a student's node (here the Python reference,
//! the starter and the deliberately broken nodes of `labs/node/`) as a real
//! member of a `kvlab up` cluster, and graded by `kvlab grade-node`.
//!
//! The Python nodes use only the standard library, so the system's
//! `python3` runs them as they are: CI installs nothing for them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Cluster, DEMO_3_2_2, FAST_2_1_1};
use serde_json::{json, Value};

fn lab(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("labs/node")
        .join(path)
}

/// `python3 <the file>`, as a course would write it in `--node-cmd`.
fn python(path: &str) -> String {
    format!("python3 {}", lab(path).display())
}

/// Runs `kvlab grade-node` on its own port block and scratch folder.
fn grade(node: &str, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let scratch = common::scratch();
    let base = common::free_port_block().to_string();
    let out = common::kvlab_in(&scratch)
        .args([
            "grade-node",
            "--node-cmd",
            node,
            "--base-port",
            &base,
            "--out",
        ])
        .arg(scratch.path().join("out"))
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run kvlab grade-node");
    (out, scratch)
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The JSON report's tests, by id: (passed, detail).
fn tests_of(out: &Output) -> Vec<(String, bool, String)> {
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{}", text(out)));
    report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["passed"].as_bool().unwrap(),
                t["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The seed's demos 1-4 on a cluster whose followers are the Python
/// reference: writes, reads, a killed follower, its catch-up; and the live
/// view shows those nodes like kvlab's own.
#[test]
fn python_reference_followers_run_the_demos() {
    let node = python("instructor/node.py");
    let c = Cluster::start_plus(
        &format!("{DEMO_3_2_2} --sync-delay 0.1 --async-delay 0.5"),
        &["--node-cmd", &node],
    );
    // Demo 1: writes reach W followers and reads come back.
    for i in 1..=5 {
        let (code, w) = c.write(&format!("cart:{i}"), &format!("item-{i}"));
        assert_eq!(code, 200, "{w}");
        assert_eq!(w["sync_acks"], 2, "{w}");
    }
    let (code, r) = c.read("cart:3");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["value"], "item-3", "{r}");
    // The followers really are the Python program.
    let stats = c.get_json(&format!("{}/", c.node_url(1)));
    let pid = c.follower("follower-1")["pid"].as_u64().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.contains("instructor/node.py"),
        "{cmdline} / {stats}"
    );
    // Demo 3: kill a follower; writes go on with the other two.
    let (code, k) = c.post("/kill/follower-2", json!({}));
    assert_eq!(code, 200, "{k}");
    c.wait_status("follower-2 dead", Duration::from_secs(15), |s| {
        s["followers"][1]["status"] == "dead"
    });
    for i in 6..=10 {
        let (code, w) = c.write(&format!("cart:{i}"), &format!("item-{i}"));
        assert_eq!(code, 200, "{w}");
    }
    // Demo 4: it comes back and catches up on what it missed.
    let (code, s) = c.post("/spawn", json!({"node_id": "follower-2"}));
    assert_eq!(code, 200, "{s}");
    let (code, caught) = c.wait_caught_up("follower-2");
    assert_eq!(code, 200, "{caught}");
    let data = c.node_data(&c.node_url(2));
    assert_eq!(data["cart:10"]["value"], "item-10", "{data}");
    assert_eq!(data.as_object().unwrap().len(), 10, "{data}");
    // The live view shows the Python nodes like kvlab's own: alive, with
    // the seq their own /stats report.
    if let Some(browser) = common::browser::Browser::start(c.base + 30) {
        let mut steps = vec![json!({"goto": format!("{}/ui", c.coordinator)})];
        for id in ["follower-1", "follower-2", "follower-3"] {
            steps.push(json!({
                "wait": format!("!!document.querySelector('#node-{id}[data-state=alive]')"),
                "timeout": 20
            }));
        }
        steps.push(json!({
            "wait": "document.querySelector('#node-follower-2 .meta').textContent.includes('applied 10 ')",
            "timeout": 20
        }));
        browser.drive(Value::Array(steps));
    }
    // No protocol violation was narrated: the reference keeps the protocol.
    let (_, events) = c.get("/events?since=0&limit=100000");
    assert!(
        !events.to_string().contains("protocol_violation"),
        "{events:#}"
    );
}

/// A node that breaks the protocol is named in the event log with what it
/// did, not left to stall the cluster silently.
#[test]
fn a_node_that_breaks_the_protocol_is_named_in_the_event_log() {
    let c = Cluster::start_plus(FAST_2_1_1, &["--node-cmd", &python("starter/node.py")]);
    // The starter takes entries but applies none: the write cannot get its ack.
    let (code, w) = c.write("k", "v");
    assert_eq!(code, 503, "{w}");
    let e = c.wait_for_event("protocol_violation", None, Duration::from_secs(15));
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("follower-") && message.contains("acknowledged only seq 0"),
        "{e}"
    );
}

/// A failover never promotes a student's node that does not say it can
/// lead (no --node-cmd-leader): the refusal says why.
#[test]
fn a_student_follower_is_not_promoted_without_node_cmd_leader() {
    let c = Cluster::start_plus(
        &format!("{FAST_2_1_1} --failure-timeout 1"),
        &["--node-cmd", &python("instructor/node.py")],
    );
    assert_eq!(c.write("k", "v").0, 200);
    let (code, k) = c.post("/kill/leader?mode=crash", json!({}));
    assert_eq!(code, 200, "{k}");
    let e = c.wait_for_event("failover_refused", None, Duration::from_secs(20));
    assert!(
        e["message"].as_str().unwrap().contains("--node-cmd-leader"),
        "{e}"
    );
}

/// Impossible student-node settings are refused at start, with the reason.
#[test]
fn node_cmd_is_refused_where_kvlab_does_not_start_the_nodes() {
    let scratch = common::scratch();
    for (flags, says) in [
        (vec!["--node-cmd", "  "], "--node-cmd is empty"),
        (
            vec!["--node-cmd", "python3 x.py", "--runtime", "external"],
            "need --runtime process",
        ),
    ] {
        let base = common::free_port_block();
        let out = common::kvlab_in(&scratch)
            .arg("up")
            .args(common::up_ports(base))
            .args(&flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?}");
        assert!(text(&out).contains(says), "{flags:?}: {}", text(&out));
    }
}

/// The reference passes level 3 with a full score (and in under two
/// minutes); the starter fails with its failing tests named.
#[test]
fn grade_node_gives_the_reference_a_full_score_and_names_the_starters_failures() {
    let began = std::time::Instant::now();
    let (out, _scratch) = grade(
        &python("instructor/node.py"),
        &["--level", "3", "--format", "json"],
    );
    let took = began.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["score"], report["max_score"], "{report:#}");
    let ids: Vec<String> = tests_of(&out).into_iter().map(|t| t.0).collect();
    for id in [
        "refuses_gaps",
        "vouches_for_reads",
        "survives_crash",
        "cluster",
    ] {
        assert!(ids.iter().any(|i| i == id), "{id} did not run: {ids:?}");
    }
    assert!(took < Duration::from_secs(120), "level 3 took {took:?}");
    assert!(report["replay"].as_str().unwrap().contains("--seed"));

    let (out, _scratch) = grade(
        &python("starter/node.py"),
        &["--level", "1", "--time-limit", "3"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let card = String::from_utf8_lossy(&out.stdout);
    assert!(card.contains("FAIL  L1 applies_in_order"), "{card}");
    assert!(card.contains("failed: "), "{card}");
    assert!(
        card.contains("replay: kvlab grade-node --level 1"),
        "{card}"
    );
}

/// Each broken node fails the test that targets its bug, with the words a
/// student needs; the reference passes the same test.
#[test]
fn each_broken_node_fails_for_the_right_reason() {
    for (file, test, says) in [
        ("out_of_order.py", "refuses_gaps", "seq 3 is missing"),
        (
            "ack_before_persist.py",
            "survives_crash",
            "must be on disk before the answer",
        ),
        ("stale_read.py", "vouches_for_reads", "\"term\": 1"),
        ("no_fencing.py", "fencing", "stale term"),
    ] {
        let (out, _s) = grade(
            &python(&format!("instructor/broken/{file}")),
            &["--level", "3", "--only", test, "--format", "json"],
        );
        assert_eq!(out.status.code(), Some(2), "{file}: {}", text(&out));
        let tests = tests_of(&out);
        assert_eq!(tests.len(), 1, "{file}: {tests:?}");
        let (id, passed, detail) = &tests[0];
        assert!(id == test && !passed, "{file}: {tests:?}");
        assert!(detail.contains(says), "{file}: {detail}");
        let (out, _s) = grade(
            &python("instructor/node.py"),
            &["--level", "3", "--only", test],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "reference, {test}: {}",
            text(&out)
        );
    }
}

/// The LMS outputs: Gradescope, PrairieLearn and JUnit files that their
/// readers parse, with the failed test marked; `--output` writes the file.
#[test]
fn grade_node_writes_every_platforms_file() {
    let only = ["--level", "1", "--only", "refuses_gaps,missing_key"];
    let node = python("instructor/broken/out_of_order.py");
    for format in ["gradescope", "prairielearn", "junit"] {
        let scratch = common::scratch();
        let file = scratch.path().join("results");
        let mut extra: Vec<&str> = only.to_vec();
        let file_arg = file.display().to_string();
        extra.extend(["--format", format, "--output", &file_arg]);
        let (out, _s) = grade(&node, &extra);
        assert_eq!(out.status.code(), Some(2), "{format}: {}", text(&out));
        let body = std::fs::read_to_string(&file).unwrap();
        match format {
            "junit" => {
                assert!(body.contains("failures=\"1\""), "{body}");
                assert!(body.contains("<testcase classname=\"level1\" name=\"refuses_gaps\""));
            }
            _ => {
                let v: Value = serde_json::from_str(&body).unwrap();
                let tests = v["tests"].as_array().unwrap();
                assert_eq!(tests.len(), 2, "{v:#}");
                let score = if format == "gradescope" {
                    &v["score"]
                } else {
                    &v["tests"][1]["points"]
                };
                assert_eq!(score.as_f64(), Some(1.0), "{format}: {v:#}");
            }
        }
    }
    // Bad flags are refused before anything starts, with the reason.
    let (out, _s) = grade(&node, &["--level", "1", "--only", "no_such_test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no such test at level 1"),
        "{}",
        text(&out)
    );
}

/// `kvlab lab export DIR --lab node` writes the student's files, the
/// starter and not the reference, with the protocol beside them.
#[test]
fn lab_export_node_writes_the_starter_without_the_instructors_folder() {
    let scratch = common::scratch();
    let dir = scratch.path().join("handout");
    let out = Command::new(env!("CARGO_BIN_EXE_kvlab"))
        .args(["lab", "export", "--lab", "node"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(dir.join("starter/node.py")).unwrap(),
        std::fs::read(lab("starter/node.py")).unwrap()
    );
    assert!(dir.join("node-protocol.md").exists());
    assert!(!dir.join("instructor").exists());
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(!readme.contains("../../docs/"), "{readme}");
}
