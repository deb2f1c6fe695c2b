//! `kvlab grade-node`: grades a node a student wrote against the node
//! protocol (docs/node-protocol.md), level by level.
//!
//! Two parts, in this order:
//! 1. **Conformance** ([`conformance`]): the grader starts the student's
//!    node alone ([`harness`]) and plays its registry, its leader and its
//!    coordinator, one exchange per named test, each failing with what was
//!    sent, what came back and what the protocol requires.
//! 2. **The cluster** (`cluster`, one test): a real `kvlab up` whose
//!    followers are the student's node (and, at level 4, its leader too),
//!    under `kvlab check` with the faults of the level, seeded and
//!    replayable; its `report.html` stays in the artifacts.
//!
//! Scores: 1 point a conformance test, [`CLUSTER_POINTS`] for the cluster.
//! Exit codes as `kvlab assess`: 0 when every test run passed (or the
//! score reaches `--min-score`), 2 otherwise, 130 on Ctrl-C; so each
//! `--only TEST` can be its own GitHub Classroom step.

mod conformance;
mod harness;
pub mod report;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use crate::assess::render::Format;
use crate::assess::{EXIT_BELOW_MIN_SCORE, EXIT_INTERRUPTED};
use crate::child_cluster::Ports;
use harness::Stage;
use report::{Report, TestResult};

/// The cluster run is worth more than one exchange: it is the protocol as
/// a whole, under faults.
pub const CLUSTER_POINTS: f64 = 5.0;
/// The id of the cluster test (for `--only`).
pub const CLUSTER_TEST: &str = "cluster";

#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// The protocol level to grade: 1 follower, 2 catch-up, 3 durable,
    /// 4 leader. The tests of every level up to it run.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub level: u8,
    /// The command that starts your node, as `kvlab up --node-cmd` runs
    /// it (for example 'python3 node.py').
    #[arg(long, value_name = "CMD")]
    pub node_cmd: String,
    /// Level 4: the command of the leader's slot (default: --node-cmd).
    #[arg(long, value_name = "CMD")]
    pub node_cmd_leader: Option<String>,
    /// Move everything to one block of ports: coordinator P, registry
    /// P+1, gateway P+2, leader P+3, follower-i P+3+i (default: the lab's
    /// ports), so that graders can run side by side.
    #[arg(long, value_name = "P")]
    pub base_port: Option<u16>,
    /// The seed of the cluster run's workload and faults (printed; give it
    /// again to replay a failure).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Seconds of traffic and faults in the cluster run.
    #[arg(long, default_value_t = 15.0, value_name = "S")]
    pub time_limit: f64,
    /// The report's format: a card, JSON, or a grading platform's file.
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    pub format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Where the node logs and the cluster run's artifacts go (report.html,
    /// history.jsonl). Default: ./grade-node-out.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run only these tests (`--only refuses_gaps`, `--only cluster`);
    /// exit 2 unless each passes.
    #[arg(long, value_name = "TEST", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Exit 0 when the score (in points) reaches N, even if a test failed.
    #[arg(long, value_name = "N")]
    pub min_score: Option<f64>,
}

/// The command line's entry: returns the exit code.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let plan = prepare(&args)?;
    crate::auth::install(crate::auth::Secret::random()?);
    let interrupted = crate::http::shutdown_signal();
    let report = tokio::select! {
        r = grade(&args, &plan) => r?,
        _ = interrupted => {
            eprintln!("kvlab grade-node: interrupted; every node it started was stopped");
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let color =
        args.output.is_none() && std::io::stdout().is_terminal() && crate::events::color_on(true);
    let text = report::render(&report, args.format, color);
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(exit_code(&report, &args))
}

/// Everything checked before anything starts.
struct Plan {
    ports: Ports,
    seed: u64,
    out: PathBuf,
    tests: Vec<&'static conformance::Test>,
    cluster: bool,
}

fn prepare(args: &Args) -> anyhow::Result<Plan> {
    anyhow::ensure!(
        !args.node_cmd.trim().is_empty(),
        "--node-cmd is empty: give the command that starts your node, e.g. 'python3 node.py'"
    );
    anyhow::ensure!(
        args.time_limit.is_finite() && (1.0..=3600.0).contains(&args.time_limit),
        "--time-limit must be between 1 and 3600 seconds, got {}",
        args.time_limit
    );
    let known: Vec<&str> = conformance::for_level(args.level)
        .map(|t| t.id)
        .chain([CLUSTER_TEST])
        .collect();
    for id in &args.only {
        anyhow::ensure!(
            known.contains(&id.as_str()),
            "--only {id}: no such test at level {}; the tests are: {}",
            args.level,
            known.join(", ")
        );
    }
    let chosen = |id: &str| args.only.is_empty() || args.only.iter().any(|o| o == id);
    let ports = match args.base_port {
        None => Ports::DEFAULT,
        Some(p) => Ports::from_base(p)
            .filter(|ports| ports.leader as usize + 3 <= u16::MAX as usize)
            .with_context(|| format!("--base-port {p} leaves no room for the cluster's ports"))?,
    };
    Ok(Plan {
        ports,
        seed: args.seed.unwrap_or_else(crate::check::random_seed),
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("grade-node-out")),
        tests: conformance::for_level(args.level)
            .filter(|t| chosen(t.id))
            .collect(),
        cluster: chosen(CLUSTER_TEST),
    })
}

async fn grade(args: &Args, plan: &Plan) -> anyhow::Result<Report> {
    let began = Instant::now();
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("cannot make {}", plan.out.display()))?;
    let out = plan.out.canonicalize()?;
    let progress = args.format == Format::Terminal && std::io::stderr().is_terminal();
    let mut results = Vec::new();
    for test in &plan.tests {
        if progress {
            // On one line, rewritten for each test ("\x1b[2K" clears it).
            eprint!("\r\x1b[2K  L{} {:<24} ...", test.level, test.id);
        }
        results.push(conformance_test(args, plan, &out, test).await?);
    }
    if progress {
        eprint!("\r\x1b[2K");
    }
    if plan.cluster {
        if progress {
            eprintln!(
                "  the cluster run: {} s of traffic and faults ...",
                args.time_limit
            );
        }
        let failed_start = results.iter().any(|t| t.id == "starts" && !t.passed);
        results.push(cluster_test(args, plan, &out, failed_start).await);
    }
    Ok(Report::new(
        &args.node_cmd,
        args.level,
        plan.seed,
        results,
        began.elapsed().as_secs_f64(),
        out.display().to_string(),
        replay(args, plan.seed),
    ))
}

/// Runs one test on a fresh stage (its own directory, a new process).
async fn conformance_test(
    args: &Args,
    plan: &Plan,
    out: &Path,
    test: &conformance::Test,
) -> anyhow::Result<TestResult> {
    let dir = out.join("tests").join(test.id);
    let _ = std::fs::remove_dir_all(&dir);
    let mut stage = Stage::new(
        &args.node_cmd,
        &dir,
        plan.ports.registry,
        plan.ports.leader + 1,
        test.durable,
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen on port {} for the grader's registry (use --base-port)",
            plan.ports.registry
        )
    })?;
    let began = Instant::now();
    let outcome = (test.run)(&mut stage).await;
    stage.close().await;
    let (passed, detail) = match outcome {
        Ok(detail) => (true, detail),
        Err(f) => (false, f.0),
    };
    Ok(TestResult {
        id: test.id.into(),
        level: test.level,
        what: test.what.into(),
        passed,
        points: if passed { 1.0 } else { 0.0 },
        max_points: 1.0,
        detail,
        duration_ms: began.elapsed().as_millis() as u64,
    })
}

/// The faults of each level: what a node of that level must survive.
fn nemesis(level: u8) -> &'static str {
    match level {
        1 => "kill,crash",
        2 | 3 => "kill,crash,pause",
        _ => "kill,crash,pause,leader",
    }
}

/// The `kvlab check` flags of the cluster run.
fn check_flags(args: &Args, plan: &Plan, out: &Path) -> Vec<String> {
    let mut flags: Vec<String> = [
        "check",
        "--followers",
        "3",
        "-W",
        "2",
        "-R",
        "2",
        "--no-delay",
        "--clients",
        "4",
        "--keys",
        "10",
        "--format",
        "json",
    ]
    .map(String::from)
    .to_vec();
    let mut flag = |name: &str, value: String| flags.extend([name.to_string(), value]);
    flag("--nemesis", nemesis(args.level).into());
    flag("--time-limit", args.time_limit.to_string());
    flag("--seed", plan.seed.to_string());
    flag("--base-port", plan.ports.coordinator.to_string());
    flag("--out", out.display().to_string());
    flag("--node-cmd", args.node_cmd.clone());
    if args.level >= 2 {
        // Followers that fall behind by more than this get a snapshot.
        flag("--log-retain", "50".into());
    }
    if args.level >= 4 {
        let leader = args.node_cmd_leader.as_ref().unwrap_or(&args.node_cmd);
        flag("--node-cmd-leader", leader.clone());
    }
    flags
}

/// The cluster run, as one test.
async fn cluster_test(args: &Args, plan: &Plan, out: &Path, failed_start: bool) -> TestResult {
    let began = Instant::now();
    let dir = out.join("cluster");
    let (passed, detail) = if failed_start {
        (
            false,
            "not run: your node does not start (see the test `starts`)".to_string(),
        )
    } else {
        let check = crate::check::Args::parse_from(check_flags(args, plan, &dir));
        match crate::check::run_one(&check, plan.seed, Some(&dir)).await {
            Ok(run) => judge(&run, &dir),
            Err(e) => (
                false,
                format!(
                    "the cluster did not run: {e:#}\nthe nodes' logs are in {}",
                    dir.display()
                ),
            ),
        }
    };
    TestResult {
        id: CLUSTER_TEST.into(),
        level: args.level,
        what: format!(
            "a real cluster of your nodes stays linearizable and available under {}",
            nemesis(args.level)
        ),
        passed,
        points: if passed { CLUSTER_POINTS } else { 0.0 },
        max_points: CLUSTER_POINTS,
        detail,
        duration_ms: began.elapsed().as_millis() as u64,
    }
}

/// A valid history is not enough: a cluster that refused everything is
/// trivially linearizable. At least a quarter of the operations (and 20)
/// must have succeeded.
fn judge(run: &crate::check::report::RunReport, dir: &Path) -> (bool, String) {
    use crate::check::verdict::Verdict;
    let ops = &run.ops;
    let report = dir.join("report.html");
    let mut detail = format!(
        "seed {}: {} operations, {} succeeded, {} refused, {} unknown; {} of {} faults injected; \
         report: {}",
        run.seed,
        ops.total,
        ops.ok,
        ops.refused,
        ops.unknown,
        run.injected(),
        run.faults.len(),
        report.display()
    );
    let stories: Vec<String> = run.stories.iter().take(3).map(|s| s.text.clone()).collect();
    let passed = match run.verdict {
        Verdict::Violation => {
            detail.push_str("\nNOT LINEARIZABLE:\n");
            detail.push_str(&stories.join("\n"));
            false
        }
        Verdict::Unknown => {
            detail.push_str("\nthe checker could not decide within its budget");
            false
        }
        Verdict::Valid if ops.ok * 4 < ops.total || ops.ok < 20 => {
            detail.push_str(
                "\nthe history is valid, but too few requests succeeded: followers must \
                 acknowledge entries (writes need W of them) and answer reads",
            );
            false
        }
        Verdict::Valid => true,
    };
    let console = dir.join("nodes").join("up.log");
    let broken = protocol_lines(&console);
    if !broken.is_empty() {
        detail.push_str(&format!(
            "\nthe cluster's event log ({}) says:\n{}",
            console.display(),
            broken.join("\n")
        ));
    }
    (passed, detail)
}

/// The first few distinct protocol violations the coordinator narrated.
fn protocol_lines(console: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let mut seen: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| l.contains("protocol: ")) {
        let what = line.split("protocol: ").nth(1).unwrap_or(line);
        // The same violation of another follower, or again: once is enough.
        let shape: String = what.split(" (again").next().unwrap_or(what).into();
        if !seen
            .iter()
            .any(|s| s.split_once(' ').map(|x| x.1) == shape.split_once(' ').map(|x| x.1))
        {
            seen.push(shape);
        }
        if seen.len() == 3 {
            break;
        }
    }
    seen
}

/// The command that runs this grading again, with its seed.
fn replay(args: &Args, seed: u64) -> String {
    let mut line = format!(
        "kvlab grade-node --level {} --node-cmd {} --seed {seed}",
        args.level,
        quote(&args.node_cmd)
    );
    if let Some(leader) = &args.node_cmd_leader {
        line.push_str(&format!(" --node-cmd-leader {}", quote(leader)));
    }
    if let Some(p) = args.base_port {
        line.push_str(&format!(" --base-port {p}"));
    }
    line
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn exit_code(report: &Report, args: &Args) -> i32 {
    let enough = args
        .min_score
        .map_or(report.all_passed(), |min| report.score + 1e-9 >= min);
    if enough {
        0
    } else {
        EXIT_BELOW_MIN_SCORE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut all = vec!["grade-node", "--node-cmd", "python3 node.py"];
        all.extend(extra);
        Args::parse_from(all)
    }

    #[test]
    fn the_level_picks_the_tests_and_only_filters_them() {
        let plan = prepare(&args(&["--level", "1"])).unwrap();
        assert!(plan.tests.iter().all(|t| t.level == 1));
        assert!(plan.cluster);
        let plan = prepare(&args(&["--level", "3", "--only", "survives_crash"])).unwrap();
        assert_eq!(plan.tests.len(), 1);
        assert!(!plan.cluster);
        let err = prepare(&args(&["--level", "1", "--only", "survives_crash"]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no such test at level 1"), "{err}");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        assert!(Args::try_parse_from(["grade-node", "--level", "5", "--node-cmd", "x"]).is_err());
        let err = prepare(&args(&["--level", "1", "--time-limit", "0"]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--time-limit"), "{err}");
        let empty = Args::parse_from(["grade-node", "--level", "1", "--node-cmd", " "]);
        assert!(prepare(&empty).err().unwrap().to_string().contains("empty"));
    }

    #[test]
    fn the_replay_line_quotes_the_command() {
        let a = args(&["--level", "2", "--base-port", "20000"]);
        assert_eq!(
            replay(&a, 42),
            "kvlab grade-node --level 2 --node-cmd 'python3 node.py' --seed 42 --base-port 20000"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_cluster_run_gets_the_levels_faults() {
        let a = args(&["--level", "4"]);
        let plan = prepare(&a).unwrap();
        let flags = check_flags(&a, &plan, Path::new("/tmp/x")).join(" ");
        assert!(
            flags.contains("--nemesis kill,crash,pause,leader"),
            "{flags}"
        );
        assert!(
            flags.contains("--node-cmd-leader python3 node.py"),
            "{flags}"
        );
        let parsed = crate::check::Args::try_parse_from(check_flags(&a, &plan, Path::new("/x")));
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
