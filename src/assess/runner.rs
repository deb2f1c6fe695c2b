//! Runs a scenario file against a cluster: scenario by scenario, test by
//! test, with a reset in between.
//!
//! The reset is what makes scenarios independent: a scenario that killed
//! followers must not make the next one fail. Before every scenario after
//! the first, each follower `/status` shows as `dead` is respawned in its
//! slot (`POST /spawn {"node_id"}`), and every follower not yet alive is
//! waited for and caught up (`POST /catchup`) before the first test runs.
//! (The original read a field `/status` does not have, so it never
//! respawned anything; this reads `followers[].status`, which it does.)
//! A dead leader is restarted first, on its data directory. Scenarios that
//! only look at the settings (a `budget` test) need no reset.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::checks::Target;
use super::report::{ScenarioResult, TestResult};
use super::scenario::{Scenario, ScenarioFile, TestKind};
use crate::api::NodeStatus;

/// How long the reset waits for respawned followers to be alive.
const RESET_TIMEOUT: Duration = Duration::from_secs(30);

/// The spinner on stderr, with the running test's name. Hidden when stderr
/// is not a terminal (CI logs, pipes, tests).
pub struct Progress(ProgressBar);

impl Progress {
    pub fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(ProgressBar::hidden());
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(bar)
    }

    pub fn say(&self, message: String) {
        self.0.set_message(message);
    }

    pub fn done(&self) {
        self.0.finish_and_clear();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// Runs every scenario in order and returns their results.
pub async fn run_all(
    target: &Target,
    file: &ScenarioFile,
    progress: &Progress,
) -> Vec<ScenarioResult> {
    let mut results = Vec::with_capacity(file.scenarios.len());
    for (i, scenario) in file.scenarios.iter().enumerate() {
        let reset = if i > 0 && needs_cluster(scenario) {
            progress.say(format!("{}: resetting the cluster", scenario.id));
            reset(target).await
        } else {
            None
        };
        let tests = run_scenario(target, scenario, progress).await;
        results.push(ScenarioResult::new(scenario, tests, reset));
    }
    progress.done();
    results
}

async fn run_scenario(target: &Target, s: &Scenario, progress: &Progress) -> Vec<TestResult> {
    let mut out = Vec::with_capacity(s.tests.len());
    for t in &s.tests {
        let kind = type_name(&t.kind);
        progress.say(format!("{} {} › {} ({kind})", s.id, s.name, t.id));
        let started = Instant::now();
        let outcome = target.run(&t.kind).await;
        out.push(TestResult {
            id: t.id.clone(),
            kind,
            passed: outcome.passed,
            description: t.description.clone(),
            detail: outcome.detail,
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }
    out
}

/// The test's `type` as the file spells it.
pub fn type_name(kind: &TestKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn needs_cluster(s: &Scenario) -> bool {
    s.tests
        .iter()
        .any(|t| !matches!(t.kind, TestKind::Budget {}))
}

/// Respawns dead nodes (the leader first: it restarts on its data
/// directory) and waits until every follower is alive and caught up.
/// Returns what it did, if anything; problems are reported, not fatal (the
/// scenario's tests will show what they mean).
pub async fn reset(target: &Target) -> Option<String> {
    let status = match target.status().await {
        Ok(s) => s,
        Err(e) => return Some(format!("could not read the cluster's status: {e}")),
    };
    let mut notes = Vec::new();
    if let Some(leader) = status
        .leader
        .as_ref()
        .filter(|l| l.status == NodeStatus::Dead)
    {
        notes.push(respawn(target, &leader.node_id).await);
        notes.push(
            wait_alive(target, &leader.node_id)
                .await
                .err()
                .unwrap_or_default(),
        );
    }
    let mut waiting = Vec::new();
    for f in &status.followers {
        match f.status {
            NodeStatus::Alive => continue,
            NodeStatus::Dead => notes.push(respawn(target, &f.node_id).await),
            NodeStatus::Starting => notes.push(format!("{} was already starting", f.node_id)),
        }
        waiting.push(f.node_id.clone());
    }
    for id in &waiting {
        notes.push(settle(target, id).await);
    }
    notes.retain(|n| !n.is_empty());
    (!notes.is_empty()).then(|| notes.join("; "))
}

async fn respawn(target: &Target, id: &str) -> String {
    let url = format!("{}/spawn", target.coordinator);
    let resp = target
        .http
        .post(&url)
        .timeout(Duration::from_secs(35))
        .json(&json!({"node_id": id}))
        .send()
        .await;
    match resp.map(|r| r.status().as_u16()) {
        Ok(200) => format!("respawned {id}"),
        // The registry's auto-spawn got there first: fine.
        Ok(409) => format!("{id} was already coming back"),
        Ok(s) => format!("respawning {id} failed: HTTP {s}"),
        Err(e) => format!(
            "respawning {id} failed: {}",
            crate::http::describe_reqwest_error(&e)
        ),
    }
}

/// Waits for one follower to be alive, then for it to hold the whole log.
async fn settle(target: &Target, id: &str) -> String {
    if let Err(e) = wait_alive(target, id).await {
        return e;
    }
    match target.catch_up(id).await {
        Ok(seq) => format!("{id} caught up to {seq}"),
        Err(e) => format!("{id} did not catch up: {e}"),
    }
}

/// Polls `/status` until the node shows as alive.
async fn wait_alive(target: &Target, id: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + RESET_TIMEOUT;
    loop {
        let alive = target.status().await.is_ok_and(|s| {
            s.leader
                .iter()
                .chain(s.followers.iter())
                .any(|n| n.node_id == id && n.status == NodeStatus::Alive)
        });
        if alive {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{id} not alive after {RESET_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
