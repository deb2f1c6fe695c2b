//! `kvlab assess`: the CloudCart exercise's autograder.
//!
//! It reads the student's config, refuses impossible settings, starts a
//! cluster with those settings (`kvlab up` as a child process), runs the
//! instructor's scenarios against it (all of them, or those `--only`
//! names), stops it, and reports: a score card on a terminal, or JSON,
//! Gradescope's or PrairieLearn's `results.json`, or JUnit XML. A config
//! that cannot be graded still gives a grading platform its file, with the
//! reason; the scenario file's unknown fields are warnings.
//!
//! The pieces:
//! - [`scenario`]: the scenario file's types, loaded and checked up front;
//! - [`settings`]: the student's settings as `up` resolves them, and the ports;
//! - [`cluster`]: starting, waiting for and stopping the child cluster;
//! - [`checks`]: one function per test type;
//! - [`runner`]: scenario order, the reset between scenarios, the spinner;
//! - [`grade`]: the pure scoring rules; [`report`]: the results;
//!   [`render`]: the four output formats.
//!
//! Invariant: whatever happens (a failed test, a bad answer, Ctrl-C or
//! SIGTERM mid-run), the cluster it started is stopped before it exits,
//! nodes included, unless `--no-stop-cluster` asked to keep it after a
//! completed run.

pub mod checks;
pub use crate::child_cluster as cluster;
pub mod grade;
pub mod render;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod settings;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use crate::labconfig::StudentConfig;
use cluster::ClusterProcess;
use render::Format;
use report::Report;
use scenario::ScenarioFile;
use settings::{Ports, Settings};

/// The default scenarios, built in so that `kvlab assess` works from any
/// folder (the same text as `labs/cloudcart/instructor_config.json`).
const DEFAULT_SCENARIOS: &str = include_str!("../../labs/cloudcart/instructor_config.json");

/// Exit codes beyond 0 (success) and 1 (an error, bad input included).
pub const EXIT_BELOW_MIN_SCORE: i32 = 2;
pub use crate::child_cluster::EXIT_INTERRUPTED;

#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// The student's config (`student_config.json`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The scenario file (default: the built-in CloudCart scenarios).
    #[arg(long, value_name = "FILE")]
    pub instructor_config: Option<PathBuf>,
    /// Assess a cluster that is already running (on the same ports).
    #[arg(long)]
    pub no_start_cluster: bool,
    /// Leave the cluster running after a completed run (for a look around).
    #[arg(long)]
    pub no_stop_cluster: bool,
    #[command(flatten)]
    pub secret: crate::auth::SecretArgs,
    /// Move the whole cluster to one block of ports: coordinator P,
    /// registry P+1, gateway P+2, leader P+3, follower-i P+3+i.
    /// Default: the lab's ports (7000, 9000, 8000, 7001+).
    #[arg(long, value_name = "P")]
    pub base_port: Option<u16>,
    /// The report's format: a score card, JSON, or a grading platform's file.
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    pub format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Exit with code 2 when the score (in points) is below N.
    #[arg(long, value_name = "N")]
    pub min_score: Option<f64>,
    /// Run only these scenarios (`--only INC-3`, or `--only INC-1,INC-3`;
    /// case and `-`/`_` do not matter, so `INC-3` also names `inc_3`);
    /// exit 2 unless every test in them passes: one autograding step each.
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Gradescope: add a leaderboard (score, and cost per hour).
    #[arg(long)]
    pub leaderboard: bool,
}

/// Everything checked before a cluster starts.
struct Prepared {
    config: StudentConfig,
    settings: Settings,
    file: ScenarioFile,
    file_name: String,
    ports: Ports,
}

/// Why a run could not start.
enum Refusal {
    /// The student's config cannot be graded: the student's to fix, so a
    /// grading platform still gets a report saying why.
    Config(anyhow::Error),
    /// Anything else (the scenario file, the flags): the instructor's.
    Other(anyhow::Error),
}

fn prepare(args: &Args) -> Result<Prepared, Refusal> {
    let config = StudentConfig::load(&args.config).map_err(|e| Refusal::Config(e.into()))?;
    let settings = Settings::resolve(&config)
        .with_context(|| {
            format!(
                "{} asks for a cluster that cannot work",
                args.config.display()
            )
        })
        .map_err(Refusal::Config)?;
    prepare_run(args, config, settings).map_err(Refusal::Other)
}

fn prepare_run(args: &Args, config: StudentConfig, settings: Settings) -> anyhow::Result<Prepared> {
    let (file, file_name) = match &args.instructor_config {
        Some(path) => (ScenarioFile::load(path)?, path.display().to_string()),
        None => (
            ScenarioFile::parse(DEFAULT_SCENARIOS, Path::new("built-in scenarios"))?,
            "built-in CloudCart scenarios (labs/cloudcart/instructor_config.json)".to_string(),
        ),
    };
    for warning in &file.warnings {
        eprintln!("kvlab assess: warning: {file_name}: {warning}");
    }
    let file = if args.only.is_empty() {
        file
    } else {
        file.only(&args.only).map_err(anyhow::Error::msg)?
    };
    let ports = match args.base_port {
        None => Ports::DEFAULT,
        Some(p) => Ports::from_base(p)
            .filter(|ports| ports.leader as usize + settings.followers <= u16::MAX as usize)
            .with_context(|| format!("--base-port {p} leaves no room for the cluster's ports"))?,
    };
    if let Some(min) = args.min_score {
        anyhow::ensure!(min.is_finite(), "--min-score must be a number");
    }
    Ok(Prepared {
        config,
        settings,
        file,
        file_name,
        ports,
    })
}

/// The command line's entry: returns the exit code.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let started = Instant::now();
    // Scenarios pause a node's heartbeats through its internal hooks.
    crate::auth::load_and_install(
        &args.secret,
        crate::child_cluster::secret_fallback(args.no_start_cluster),
    )?;
    let prep = match prepare(&args) {
        Ok(p) => p,
        Err(Refusal::Other(e)) => return Err(e),
        Err(Refusal::Config(e)) => return refuse_config(&args, e).await,
    };
    // Listen for Ctrl-C / SIGTERM from here on: an interrupted start or run
    // still stops the cluster (dropping a half-started one kills it too).
    let interrupted = crate::http::shutdown_signal();
    tokio::pin!(interrupted);
    let cluster = tokio::select! {
        c = start_cluster(&prep, &args) => c?,
        _ = &mut interrupted => {
            eprintln!("kvlab assess: interrupted while the cluster was starting; stopped it");
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let target = target_for(&prep);
    let progress = runner::Progress::new();
    let results = tokio::select! {
        results = runner::run_all(&target, &prep.file, &progress) => results,
        _ = &mut interrupted => {
            progress.done();
            eprintln!("kvlab assess: interrupted; stopping the cluster");
            if let Some(c) = cluster {
                c.stop().await;
            }
            return Ok(EXIT_INTERRUPTED);
        }
    };
    finish_cluster(cluster, &args).await;
    let report = Report::new(
        &args.config.display().to_string(),
        &prep.file_name,
        &prep.config,
        &prep.settings,
        &prep.file,
        results,
        started.elapsed().as_secs_f64(),
    );
    emit(&report, &args).await?;
    Ok(exit_code(&report, &args))
}

/// An ungradable config: a grading platform gets its report with the
/// reason (and the run exits 1 all the same).
async fn refuse_config(args: &Args, e: anyhow::Error) -> anyhow::Result<i32> {
    let config = args.config.display().to_string();
    let Some(text) = render::config_error(args.format, &config, &format!("{e:#}")) else {
        return Err(e);
    };
    write_out(args, &text).await?;
    eprintln!("kvlab: error: {e:#}");
    Ok(1)
}

async fn start_cluster(prep: &Prepared, args: &Args) -> anyhow::Result<Option<ClusterProcess>> {
    if args.no_start_cluster {
        check_running(prep).await?;
        return Ok(None);
    }
    eprintln!(
        "kvlab assess: starting a cluster with {} followers, W={} R={} (coordinator :{})",
        prep.settings.followers,
        prep.settings.write_quorum,
        prep.settings.read_quorum,
        prep.ports.coordinator
    );
    let flags = prep.settings.up_flags();
    let c = ClusterProcess::start(
        &flags,
        prep.settings.followers,
        &prep.ports,
        "assess",
        args.no_stop_cluster,
    )
    .await?;
    Ok(Some(c))
}

/// With `--no-start-cluster`: is a cluster there, and does it run the
/// student's quorums? A different one is graded anyway, with a warning.
async fn check_running(prep: &Prepared) -> anyhow::Result<()> {
    let target = target_for(prep);
    let status = target.status().await.map_err(|e| {
        anyhow::anyhow!(
            "--no-start-cluster: no cluster answers at {} ({e}); start one with `kvlab up --config ...` on the same ports",
            target.coordinator
        )
    })?;
    let s = &prep.settings;
    let running = (status.followers.len(), status.quorum.w, status.quorum.r);
    if running != (s.followers, s.write_quorum, s.read_quorum) {
        eprintln!(
            "kvlab assess: warning: the running cluster has N={} W={} R={}, the config asks for N={} W={} R={}",
            running.0, running.1, running.2, s.followers, s.write_quorum, s.read_quorum
        );
    }
    Ok(())
}

fn target_for(prep: &Prepared) -> checks::Target {
    checks::Target {
        http: crate::http::client(),
        coordinator: Ports::url(prep.ports.coordinator),
        gateway: Ports::url(prep.ports.gateway),
        registry: Ports::url(prep.ports.registry),
        settings: prep.settings.clone(),
        cost_model: prep.file.cost_model,
    }
}

async fn finish_cluster(cluster: Option<ClusterProcess>, args: &Args) {
    let Some(c) = cluster else { return };
    if args.no_stop_cluster {
        let log = c.log.clone();
        let pid = c.detach();
        eprintln!(
            "kvlab assess: the cluster keeps running (kvlab up, pid {pid}; log {}); stop it with `kill {pid}`",
            log.display()
        );
    } else {
        c.stop().await;
    }
}

/// Writes the report where it was asked for.
async fn emit(report: &Report, args: &Args) -> anyhow::Result<()> {
    let style = render::Style {
        color: args.output.is_none() && crate::events::color_on(std::io::stdout().is_terminal()),
        leaderboard: args.leaderboard,
    };
    write_out(args, &render::render(report, args.format, style)).await
}

async fn write_out(args: &Args, text: &str) -> anyhow::Result<()> {
    match &args.output {
        Some(path) => tokio::fs::write(path, text)
            .await
            .with_context(|| format!("cannot write the report to {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// 0, or [`EXIT_BELOW_MIN_SCORE`] when `--min-score` is not reached or,
/// with `--only`, when a test of the chosen scenarios failed.
pub fn exit_code(report: &Report, args: &Args) -> i32 {
    let below_min = args.min_score.is_some_and(|min| report.score + 1e-9 < min);
    let only_failed = !args.only.is_empty() && report.scenarios.iter().any(|s| s.passed < s.total);
    if below_min || only_failed {
        EXIT_BELOW_MIN_SCORE
    } else {
        0
    }
}
