//! `kvlab check`: a Jepsen-style checker of a real cluster.
//!
//! It starts a cluster (`kvlab up` as a child, like `assess`) or uses a
//! running one (`--no-start-cluster --gateway URL`), runs concurrent clients
//! against it while a nemesis injects faults on a seeded schedule, heals
//! everything, reads every key once more, and checks the whole history for
//! linearizability; it then tells what it found and writes the artifacts.
//!
//! The pieces, in the order a run uses them:
//! - [`workload`]: the clients and what each answer means;
//! - [`nemesis`]: the fault schedule and the hooks that inject and heal;
//! - [`observe`]: `/status` samples (for the stories, and the check that
//!   no two processes of one node id run at once);
//! - [`history`]: the operation records; [`model`]: the versioned register;
//! - [`linearizability`]: the checker; [`verdict`]: the run's checks;
//! - [`replicas`]: after healing, every node's copy of every key against
//!   what was acknowledged (losses no read saw);
//! - [`faults_log`]: faults made by hand (`--faults-log`), joined in;
//! - [`explain`]: violations as stories; [`report`]: results and the
//!   summary card; [`html`]: `report.html` (with the shared timeline
//!   renderer, `src/coordinator/ui/timeline.js`).
//!
//! Exit codes: 0 valid, 1 a violation, 2 unknown (the checker gave up).
//! Invariant: a cluster this started is stopped before it returns.

pub mod explain;
pub mod faults_log;
pub mod history;
pub mod html;
pub mod linearizability;
pub mod model;
pub mod nemesis;
pub mod observe;
pub mod replicas;
pub mod report;
pub mod verdict;
pub mod workload;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::child_cluster::{secret_fallback, ClusterProcess, Ports, EXIT_INTERRUPTED};
use explain::Shape;
use history::{Input, Op};
use nemesis::{Control, FaultKind};
use report::{Counts, HistoryMeta, RunConfig, RunReport};
use verdict::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The summary card (with `--repeat`, a line per seed).
    Terminal,
    /// The whole report, as in results.json (with `--repeat`, a list).
    Json,
}

#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// Number of followers, N.
    #[arg(long, default_value_t = 3)]
    pub followers: usize,
    /// Write quorum W.
    #[arg(short = 'W', long = "write-quorum", default_value_t = 2)]
    pub write_quorum: usize,
    /// Read quorum R.
    #[arg(short = 'R', long = "read-quorum", default_value_t = 2)]
    pub read_quorum: usize,
    /// Replication delay to sync followers, seconds (default: `up`'s, 0.5).
    #[arg(long)]
    pub sync_delay: Option<f64>,
    /// Replication delay to async followers, seconds (default: `up`'s, 5).
    #[arg(long)]
    pub async_delay: Option<f64>,
    /// No replication delays.
    #[arg(long, conflicts_with_all = ["sync_delay", "async_delay"])]
    pub no_delay: bool,
    /// Faults: a comma-separated list of kill, crash, pause, heartbeats,
    /// partition, slow-disk, leader, power-loss; `all` (a random mix of the
    /// first seven, leader included) or `none`. `power-loss` cuts a node's
    /// power: its unsynced log writes are lost and the last one torn. It is
    /// simulated in kvlab nodes' storage (no root or /dev/fuse needed): it
    /// runs on a cluster `check` starts itself, and on a kvlab cluster
    /// started with the hidden `kvlab up --simulate-power-loss`; elsewhere
    /// (another lab's cluster, a student's nodes under --node-cmd) it is
    /// not carried out, and the verdict counts it as not injected.
    /// `coordinator` kills (SIGKILL), stops (SIGTERM) or pauses (SIGSTOP,
    /// longer than etcd's lease) the active coordinator: it implies --ha,
    /// and under --ha `all` includes it.
    #[arg(long, default_value = "none", value_name = "LIST")]
    pub nemesis: String,
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 20.0, value_name = "S")]
    pub time_limit: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5, value_name = "C")]
    pub clients: usize,
    /// Keys the clients share (`k0`, `k1`, ...). 12 by default: on a few
    /// keys each is overwritten almost at once, so a write a node lost is
    /// replaced before a read or the final comparison can notice (runs that
    /// exposed lost writes needed 10 to 30); more keys also split the history
    /// into smaller searches, so the checker stays fast.
    #[arg(long, default_value_t = 12, value_name = "K")]
    pub keys: usize,
    /// The seed of the workload's choices and the fault schedule (default: random).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Move the cluster to one block of ports: coordinator P, registry P+1,
    /// gateway P+2, leader P+3, follower-i P+3+i.
    #[arg(long, value_name = "P")]
    pub base_port: Option<u16>,
    /// Write history.jsonl, faults.json, results.json, the nodes' logs and
    /// report.html here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// How to print the result: `terminal` (the summary card) or `json` (the
    /// report that results.json holds).
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    pub format: Format,
    /// Run N times with seeds seed, seed+1, ...; keep the artifacts of
    /// failing runs only.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub repeat: u32,
    /// Check a cluster that is already running (needs --gateway).
    #[arg(long, requires = "gateway")]
    pub no_start_cluster: bool,
    /// The running cluster's entry point (gateway or coordinator); several
    /// gateways comma-separated (a client moves to the next when one stops
    /// answering).
    #[arg(long, value_name = "URL[,URL...]")]
    pub gateway: Option<String>,
    /// The running cluster's coordinator (for faults, `/status`, its shape
    /// and the comparison of the replicas after healing). Several, comma
    /// separated, for a control plane with standbys: faults and `/status`
    /// go to whichever is active.
    #[arg(long, value_name = "URL")]
    pub coordinator: Option<String>,
    /// Carry out crashes and pauses with this shell command (`sh -c CMD`),
    /// for a cluster whose processes kvlab check cannot signal. It gets
    /// KVLAB_FAULT (crash, kill, pause, resume or restart), KVLAB_NODE_ID,
    /// KVLAB_NODE_PORT and KVLAB_NODE_URL; exit 0 means done. Crashed
    /// nodes are brought back with the lab's POST /spawn.
    #[arg(long, value_name = "CMD")]
    pub fault_cmd: Option<String>,
    /// Faults made by hand during the run, joined into its timeline and
    /// stories: one `TIME EVENT NODE` a line (RFC 3339 time; crash, kill,
    /// pause, resume, restart), or the same as JSON. Read at the end of the run.
    #[arg(long, value_name = "FILE")]
    pub faults_log: Option<PathBuf>,
    /// Seconds to wait after healing for every node to hold every
    /// acknowledged write, before what is missing counts as lost on a
    /// replica (default: the async delay + 3 for a cluster check started,
    /// 8 otherwise).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub replica_wait: Option<f64>,
    /// Seconds the checker may search before answering "unknown".
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub check_budget: f64,
    /// Check a saved history.jsonl again (no cluster, no workload): prints
    /// each key's verdict and the stories.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["no_start_cluster", "repeat"])]
    pub history: Option<PathBuf>,
    /// Seconds a request may take before its outcome counts as unknown.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub request_timeout: f64,
    #[command(flatten)]
    pub secret: crate::auth::SecretArgs,
    /// Where the cluster's nodes run (`kvlab up --hosts`): `netns` makes
    /// partitions real dropped packets (root only).
    #[arg(long, value_enum, default_value_t = crate::up::Hosts::Processes)]
    pub hosts: crate::up::Hosts,
    /// Check a cluster whose followers run this command instead of `kvlab
    /// node` (a node you wrote; see `kvlab up --node-cmd`).
    #[arg(long, value_name = "CMD", conflicts_with = "no_start_cluster")]
    pub node_cmd: Option<String>,
    /// ... and whose leader's slot runs this one (`kvlab up --node-cmd-leader`).
    #[arg(long, value_name = "CMD", conflicts_with = "no_start_cluster")]
    pub node_cmd_leader: Option<String>,
    /// Start the cluster with a replicated control plane (`kvlab up --ha`:
    /// etcd, three coordinators, two gateways); `--nemesis coordinator`
    /// implies it, and with it `all` includes `coordinator`.
    #[arg(long, conflicts_with = "no_start_cluster")]
    pub ha: bool,
    /// The leader's `--log-retain`: small, followers that fall behind are
    /// caught up by snapshot.
    #[arg(long, value_name = "N", hide = true)]
    pub log_retain: Option<usize>,
}

/// Everything checked before anything starts.
struct Plan {
    kinds: Vec<FaultKind>,
    ports: Ports,
    first_seed: u64,
}

fn prepare(args: &Args) -> anyhow::Result<Plan> {
    let kinds = nemesis::parse_list(&args.nemesis, args.ha).map_err(anyhow::Error::msg)?;
    for (name, v) in [
        ("--time-limit", args.time_limit),
        ("--check-budget", args.check_budget),
        ("--request-timeout", args.request_timeout),
    ] {
        anyhow::ensure!(
            v.is_finite() && v > 0.0 && v <= 86_400.0,
            "{name} must be a number of seconds above 0, got {v}"
        );
    }
    anyhow::ensure!(
        args.clients >= 1 && args.clients <= 1000,
        "--clients must be between 1 and 1000"
    );
    anyhow::ensure!(
        args.keys >= 1 && args.keys <= 10_000,
        "--keys must be between 1 and 10000"
    );
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    if let Some(w) = args.replica_wait {
        anyhow::ensure!(
            w.is_finite() && (0.0..=600.0).contains(&w),
            "--replica-wait must be a number of seconds from 0 to 600, got {w}"
        );
    }
    if let Some(cmd) = &args.fault_cmd {
        anyhow::ensure!(!cmd.trim().is_empty(), "--fault-cmd is empty");
    }
    // A log that exists already is checked now (one written during the run
    // is checked at its end).
    if let Some(path) = &args.faults_log {
        if let Ok(text) = std::fs::read_to_string(path) {
            faults_log::parse(&text)
                .map_err(|e| anyhow::anyhow!("--faults-log {}: {e}", path.display()))?;
        }
    }
    if args.no_start_cluster && !kinds.is_empty() {
        anyhow::ensure!(
            args.coordinator.is_some(),
            "--nemesis {} needs --coordinator URL with --no-start-cluster (faults go through it)",
            args.nemesis
        );
    }
    if !args.no_start_cluster {
        let cluster = up_args(args);
        cluster.cluster.validate()?;
    }
    if wants_ha(args) {
        anyhow::ensure!(
            args.base_port.is_none() || args.followers <= 5,
            "--ha with --base-port fits at most 5 followers (the other coordinators \
             listen from P+10)"
        );
    }
    let ports = match args.base_port {
        None => Ports::DEFAULT,
        Some(p) if wants_ha(args) => Ports::from_base_ha(p)
            .with_context(|| format!("--base-port {p} leaves no room for the cluster's ports"))?,
        Some(p) => Ports::from_base(p)
            .filter(|ports| ports.leader as usize + args.followers <= u16::MAX as usize)
            .with_context(|| format!("--base-port {p} leaves no room for the cluster's ports"))?,
    };
    let first_seed = args.seed.unwrap_or_else(random_seed);
    Ok(Plan {
        kinds,
        ports,
        first_seed,
    })
}

/// A seed from the clock and the pid (small, so it is easy to type back).
pub(crate) fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (nanos ^ (std::process::id() as u64) << 7) % 1_000_000
}

/// The `kvlab up` flags of the cluster under test.
fn up_flags(args: &Args) -> Vec<String> {
    let mut flags = vec![
        "--followers".to_string(),
        args.followers.to_string(),
        "--write-quorum".into(),
        args.write_quorum.to_string(),
        "--read-quorum".into(),
        args.read_quorum.to_string(),
    ];
    if args.no_delay {
        flags.push("--no-delay".into());
    }
    if let Some(d) = args.sync_delay {
        flags.extend(["--sync-delay".into(), d.to_string()]);
    }
    if let Some(d) = args.async_delay {
        flags.extend(["--async-delay".into(), d.to_string()]);
    }
    if args.hosts == crate::up::Hosts::Netns {
        flags.extend(["--hosts".into(), "netns".into()]);
    }
    if let Some(cmd) = &args.node_cmd {
        flags.extend(["--node-cmd".into(), cmd.clone()]);
    }
    if let Some(cmd) = &args.node_cmd_leader {
        flags.extend(["--node-cmd-leader".into(), cmd.clone()]);
    }
    if let Some(n) = args.log_retain {
        flags.extend(["--log-retain".into(), n.to_string()]);
    }
    if nemesis::parse_list(&args.nemesis, args.ha).is_ok_and(|k| k.contains(&FaultKind::PowerLoss))
    {
        flags.push("--simulate-power-loss".into());
    }
    if wants_ha(args) {
        flags.push("--ha".into());
    }
    flags
}

/// `--ha`, or a nemesis that kills coordinators: the cluster gets several
/// (one can only be killed if another can take over).
fn wants_ha(args: &Args) -> bool {
    args.ha
        || nemesis::parse_list(&args.nemesis, false)
            .is_ok_and(|k| k.contains(&FaultKind::Coordinator))
}

fn up_args(args: &Args) -> crate::up::Args {
    let mut all = vec!["up".to_string()];
    all.extend(up_flags(args));
    crate::up::Args::parse_from(all)
}

/// The command line's entry: returns the exit code.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    if let Some(path) = &args.history {
        return recheck(path, &args).await;
    }
    let plan = prepare(&args)?;
    // The nemesis calls the nodes' hooks, internal routes: a cluster it
    // starts gets its secret; a running one's must be given.
    crate::auth::load_and_install(&args.secret, secret_fallback(args.no_start_cluster))?;
    let mut reports = Vec::new();
    for i in 0..args.repeat {
        let seed = plan.first_seed.wrapping_add(i as u64);
        let out = args.out.as_ref().map(|dir| match args.repeat {
            1 => dir.clone(),
            _ => dir.join(format!("seed-{seed}")),
        });
        let interrupted = crate::http::shutdown_signal();
        let report = tokio::select! {
            r = run_once(&args, &plan, seed, out.as_deref()) => r?,
            _ = interrupted => {
                eprintln!("kvlab check: interrupted; the cluster was stopped");
                return Ok(EXIT_INTERRUPTED);
            }
        };
        match args.format {
            Format::Terminal => print!("{}", report::card(&report)),
            Format::Json if args.repeat == 1 => {
                println!("{}", serde_json::to_string_pretty(&report)?)
            }
            Format::Json => {}
        }
        reports.push(report);
    }
    if args.repeat > 1 {
        match args.format {
            Format::Terminal => print!("{}", report::table(&reports)),
            Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        }
    }
    let worst = reports.iter().fold(Verdict::Valid, |v, r| v.and(r.verdict));
    Ok(worst.exit_code())
}

/// One run, as a library call (for `kvlab grade-node`): the flags are
/// checked, the cluster started and stopped, the report returned, not
/// printed. The secret must already be installed.
pub async fn run_one(args: &Args, seed: u64, out: Option<&Path>) -> anyhow::Result<RunReport> {
    let plan = prepare(args)?;
    run_once(args, &plan, seed, out).await
}

/// `--history FILE`: checks a saved history again.
async fn recheck(path: &Path, args: &Args) -> anyhow::Result<i32> {
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let history = history::parse_jsonl(&text).with_context(|| {
        format!(
            "{} is not a kvlab check history (one operation a line)",
            path.display()
        )
    })?;
    let budget = Duration::from_secs_f64(args.check_budget);
    let started = Instant::now();
    let keys = tokio::task::spawn_blocking({
        let history = history.clone();
        move || verdict::check_keys(&history, budget)
    })
    .await?;
    let millis = started.elapsed().as_secs_f64() * 1e3;
    // The shape and faults saved next to the history, if any (histories
    // from before they were saved have none: the flags' shape then).
    let meta_path = HistoryMeta::path_for(path);
    let meta: Option<HistoryMeta> = std::fs::read_to_string(&meta_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let (shape, mut faults, from) = match &meta {
        Some(m) => (
            m.shape.clone(),
            m.faults.clone(),
            format!("saved in {}", meta_path.display()),
        ),
        None => (
            Shape {
                followers: args.followers,
                w: args.write_quorum,
                r: args.read_quorum,
                sync_delay: None,
                async_delay: None,
            },
            vec![],
            format!("from the flags: no {} next to it", meta_path.display()),
        ),
    };
    if let Some(log) = &args.faults_log {
        match meta.as_ref().and_then(|m| m.started_at.as_deref()) {
            Some(at) => {
                let began = chrono::DateTime::parse_from_rfc3339(at)
                    .context("history.meta.json: started_at")?
                    .with_timezone(&chrono::Utc);
                let length = history.iter().map(|op| op.end_s()).fold(0.0, f64::max);
                let (hand, notes) = read_faults_log(log, began, length)?;
                faults.extend(hand);
                notes.iter().for_each(|n| eprintln!("kvlab check: {n}"));
            }
            None => anyhow::bail!(
                "--faults-log needs the run's start time, saved in {} (not found)",
                meta_path.display()
            ),
        }
    }
    eprintln!("kvlab check: {} ({from})", shape.describe());
    let cx = explain::Context {
        shape: &shape,
        obs: &Default::default(),
        faults: &faults,
    };
    let mut stories = explain::explain(&history, &keys, &cx);
    // The replicas' findings of the run are not in the history: saved.
    let replicas = meta.map(|m| m.replicas).unwrap_or_default();
    let lost = !replicas.is_empty();
    stories.extend(replicas);
    let mut verdict = keys.iter().fold(Verdict::Valid, |v, k| v.and(k.verdict));
    if lost {
        verdict = Verdict::Violation;
    }
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "verdict": verdict, "keys": keys, "stories": stories, "checker_millis": millis,
            }))?
        ),
        Format::Terminal => {
            for k in &keys {
                println!(
                    "{:<12} {:<10} {:>7} ops {:>9.1} ms",
                    k.key,
                    k.verdict.as_str(),
                    k.ops,
                    k.millis
                );
            }
            for s in &stories {
                println!("✗ {}", s.text);
            }
            println!(
                "verdict: {} ({} operations in {millis:.0} ms)",
                verdict.as_str(),
                history.len()
            );
        }
    }
    Ok(verdict.exit_code())
}

/// Where the cluster under test answers.
struct Target {
    gateway: String,
    control: Option<Control>,
    cluster: Option<ClusterProcess>,
}

async fn start(args: &Args, plan: &Plan) -> anyhow::Result<Target> {
    let http = crate::http::client();
    if args.no_start_cluster {
        let listed = args.gateway.clone().unwrap_or_default();
        // Checked here, so a typo stops the run before anything starts.
        let gateway = crate::http::Endpoints::parse("--gateway", &[listed])?
            .urls()
            .join(",");
        // Whether it is kvlab's is learnt from its `/status` (see `shape`).
        let control = args
            .coordinator
            .as_deref()
            .map(|list| Control::new(http.clone(), list, args.fault_cmd.clone(), false));
        return Ok(Target {
            gateway,
            control,
            cluster: None,
        });
    }
    let cluster =
        ClusterProcess::start(&up_flags(args), args.followers, &plan.ports, "check", false).await?;
    // `up --ha` runs a second gateway one port below the first: the
    // clients use both, as clients of such a cluster should.
    let gateway = match wants_ha(args) {
        false => Ports::url(plan.ports.gateway),
        true => format!(
            "{},{}",
            Ports::url(plan.ports.gateway),
            Ports::url(plan.ports.gateway - 1)
        ),
    };
    Ok(Target {
        gateway,
        control: Some(Control::new(
            http,
            &Ports::url(plan.ports.coordinator),
            args.fault_cmd.clone(),
            true,
        )),
        cluster: Some(cluster),
    })
}

/// The cluster's shape: from `/status` when there is a coordinator, from
/// the flags otherwise; and where it came from, in words. Learns on the way
/// whether the coordinator is kvlab's (its `/status` has kvlab's fields).
async fn shape(args: &Args, control: Option<&mut Control>) -> (Shape, String) {
    let (mut followers, mut w, mut r) = (args.followers, args.write_quorum, args.read_quorum);
    let mut from = match (args.no_start_cluster, &control) {
        (false, _) => "the cluster check started".to_string(),
        (true, None) => "from the flags: no --coordinator to ask".to_string(),
        (true, Some(_)) => "from the flags: the coordinator's /status did not answer".to_string(),
    };
    if let Some(c) = control {
        match c.status().await {
            Ok(status) => {
                (followers, w, r) = (status.followers.len(), status.quorum.w, status.quorum.r);
                if args.no_start_cluster {
                    c.kvlab = !status.liveness.is_empty();
                    from = format!(
                        "from the coordinator's /status{}",
                        if c.kvlab {
                            ""
                        } else {
                            "; not a kvlab coordinator"
                        }
                    );
                }
            }
            Err(e) if args.no_start_cluster => from = format!("{from} ({e})"),
            Err(_) => {}
        }
    }
    let defaults = up_args(args).cluster;
    let started = !args.no_start_cluster;
    let delay = |d: f64| started.then_some(if defaults.no_delay { 0.0 } else { d });
    let shape = Shape {
        followers,
        w,
        r,
        sync_delay: delay(defaults.sync_delay),
        async_delay: delay(defaults.async_delay),
    };
    (shape, from)
}

/// What the nemesis can and cannot do on a cluster it did not start,
/// said before the run (and kept in the report's notes).
async fn fault_plan(control: &Control, kinds: &[FaultKind]) -> Vec<String> {
    let mut lines = Vec::new();
    for &kind in kinds {
        if let Some(why) = nemesis::cannot(control, kind) {
            lines.push(format!(
                "cannot carry out {why}: these faults are recorded as not injected"
            ));
        }
    }
    let process_faults = kinds
        .iter()
        .any(|k| matches!(k, FaultKind::Crash | FaultKind::Pause | FaultKind::Leader));
    match &control.fault_cmd {
        Some(cmd) if process_faults => {
            lines.push(format!("crashes and pauses go through --fault-cmd `{cmd}`"))
        }
        None if kinds.contains(&FaultKind::Pause) => {
            let pids = control.status().await.is_ok_and(|s| {
                s.leader
                    .iter()
                    .chain(s.followers.iter())
                    .all(|n| n.pid.is_some())
            });
            if !pids {
                lines.push(
                    "cannot carry out pause: /status gives no pids to signal; give --fault-cmd"
                        .into(),
                );
            }
        }
        _ => {}
    }
    lines
}

/// `--faults-log`: the faults made by hand during a run that began at
/// `began` and lasted `length` seconds.
fn read_faults_log(
    path: &Path,
    began: chrono::DateTime<chrono::Utc>,
    length: f64,
) -> anyhow::Result<(Vec<nemesis::FaultRecord>, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --faults-log {}", path.display()))?;
    let events = faults_log::parse(&text)
        .map_err(|e| anyhow::anyhow!("--faults-log {}: {e}", path.display()))?;
    Ok(faults_log::faults(&events, began, length))
}

async fn run_once(
    args: &Args,
    plan: &Plan,
    seed: u64,
    out: Option<&Path>,
) -> anyhow::Result<RunReport> {
    let began = Instant::now();
    let line = |shape: &str| {
        eprintln!(
            "kvlab check: seed {seed} · {shape} · nemesis {} · {} s",
            args.nemesis, args.time_limit
        )
    };
    if !args.no_start_cluster {
        line(&format!(
            "N={} W={} R={}",
            args.followers, args.write_quorum, args.read_quorum
        ));
    }
    let mut target = start(args, plan).await?;
    let (shape, shape_from) = shape(args, target.control.as_mut()).await;
    let mut notes = Vec::new();
    if args.no_start_cluster {
        // The shape printed is the cluster's, not the flags' defaults.
        line(&format!("{} ({shape_from})", shape.describe()));
        if let Some(control) = &target.control {
            for l in fault_plan(control, &plan.kinds).await {
                eprintln!("kvlab check: {l}");
                notes.push(l);
            }
        }
    }
    let heal_by = (args.time_limit - 0.5).max(0.0);
    let schedule = nemesis::schedule(&plan.kinds, seed, shape.followers, heal_by);

    let epoch = Instant::now();
    let started_at = chrono::Utc::now();
    // A running cluster may hold earlier runs' values: read where each key
    // starts, and write values no earlier run wrote.
    let (starts, run) = if args.no_start_cluster {
        let starts = start_state(args, &target.gateway, epoch).await?;
        (starts, format!("r{:06x}.", random_seed() ^ seed))
    } else {
        (Vec::new(), String::new())
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let counters = Arc::new(workload::Counters::default());
    let config = workload::WorkloadConfig {
        target: target.gateway.clone(),
        clients: args.clients,
        keys: args.keys,
        seed,
        run,
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        max_think: Duration::from_millis(if shape.sync_delay.unwrap_or(0.0) > 0.0 {
            100
        } else {
            20
        }),
    };
    let observer = target
        .control
        .clone()
        .map(|c| tokio::spawn(observe::watch(c, epoch, stop_rx.clone())));
    // The replicas' copies during the run (a node restarted empty can look
    // complete by the end); skipped for huge key sets.
    let (healed_tx, healed_rx) = tokio::sync::mpsc::unbounded_channel();
    let prober = target
        .control
        .clone()
        .filter(|_| args.keys <= 1000)
        .map(|c| {
            let keys = (0..args.keys).map(workload::key_name).collect();
            tokio::spawn(replicas::probe(c, keys, epoch, healed_rx, stop_rx.clone()))
        });
    let clients = {
        let (config, counters, stop) = (config.clone(), counters.clone(), stop_rx.clone());
        tokio::spawn(async move { workload::run(&config, epoch, counters, stop).await })
    };
    let current = Arc::new(std::sync::Mutex::new(String::new()));
    let faults = match target.control.clone() {
        Some(control) => {
            let (schedule, stop, current) = (schedule.clone(), stop_rx.clone(), current.clone());
            Some(tokio::spawn(async move {
                nemesis::run(&control, &schedule, epoch, stop, |p, on| {
                    *current.lock().unwrap() = if on {
                        format!("{} {}", p.kind.name(), p.node)
                    } else {
                        // Healed: the prober watches the node closely.
                        let _ = healed_tx.send(p.node.clone());
                        String::new()
                    };
                })
                .await
            }))
        }
        None => None,
    };
    let progress = Progress::new(args.time_limit);
    while epoch.elapsed().as_secs_f64() < args.time_limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress.show(
            epoch.elapsed().as_secs_f64(),
            &counters,
            &current.lock().unwrap(),
        );
    }
    let _ = stop_tx.send(true);
    let mut fault_records = match faults {
        Some(f) => f.await.unwrap_or_default(),
        None => vec![],
    };
    if let Some(log) = &args.faults_log {
        let (hand, log_notes) = read_faults_log(log, started_at, args.time_limit)?;
        fault_records.extend(hand);
        fault_records.sort_by(|a, b| a.start.total_cmp(&b.start));
        notes.extend(log_notes);
    }
    let mut history = clients.await.unwrap_or_default();
    history.extend(starts);
    progress.done();

    // Heal, then read every key once more (those reads are checked too).
    if let Some(control) = &target.control {
        if let Err(e) = nemesis::heal_everything(control, Duration::from_secs(30)).await {
            notes.push(format!("healing: {e}"));
        }
    }
    let final_client = workload::Client::new(
        args.clients,
        &target.gateway,
        Duration::from_secs_f64(args.request_timeout),
        epoch,
    );
    for k in 0..args.keys {
        history.push(
            final_client
                .run(Input::Read {
                    key: workload::key_name(k),
                })
                .await,
        );
    }
    let observations = match observer {
        Some(o) => o.await.unwrap_or_default(),
        None => Default::default(),
    };
    let probes = match prober {
        Some(p) => p.await.unwrap_or_default(),
        None => vec![],
    };
    let history = workload::number(history);

    // Every node's copy of every key, against what was acknowledged.
    let newest = replicas::newest_acked(&history);
    let mut copies = Vec::new();
    match &target.control {
        Some(control) => {
            let wait = args.replica_wait.unwrap_or(match shape.async_delay {
                Some(d) => d + 3.0,
                None => 8.0,
            });
            match replicas::read_all(control, &newest, Duration::from_secs_f64(wait)).await {
                Ok((read, read_notes)) => {
                    copies = read;
                    notes.extend(read_notes);
                }
                Err(e) => notes.push(format!("could not compare the replicas: {e}")),
            }
        }
        None => {
            notes.push("the replicas were not compared: no --coordinator to list the nodes".into())
        }
    }

    // Check.
    let checked = Instant::now();
    let budget = Duration::from_secs_f64(args.check_budget);
    let keys = tokio::task::spawn_blocking({
        let history = history.clone();
        move || verdict::check_keys(&history, budget)
    })
    .await?;
    let checker_millis = checked.elapsed().as_secs_f64() * 1e3;
    let cx = explain::Context {
        shape: &shape,
        obs: &observations,
        faults: &fault_records,
    };
    let mut stories = explain::explain(&history, &keys, &cx);
    let mut lost = replicas::probe_findings(&history, &probes, &fault_records);
    lost.extend(replicas::findings(
        &history,
        &newest,
        &copies,
        &fault_records,
    ));
    let mut verdict = keys.iter().fold(Verdict::Valid, |v, k| v.and(k.verdict));
    if !lost.is_empty() || !observations.overlaps.is_empty() {
        verdict = Verdict::Violation;
    }
    stories.extend(lost);

    let cluster = target.cluster.take();
    let node_logs = cluster.as_ref().map(|c| c.node_log_dir());
    let mut report = RunReport {
        seed,
        verdict,
        exit_code: verdict.exit_code(),
        config: RunConfig {
            followers: shape.followers,
            w: shape.w,
            r: shape.r,
            sync_delay: shape.sync_delay,
            async_delay: shape.async_delay,
            nemesis: plan.kinds.iter().map(|k| k.name().to_string()).collect(),
            time_limit: args.time_limit,
            clients: args.clients,
            keys: args.keys,
            target: target.gateway.clone(),
        },
        ops: Counts::of(&history),
        keys,
        stories,
        faults: fault_records,
        overlaps: observations.overlaps.clone(),
        notes,
        checker_millis,
        duration_s: 0.0,
        artifacts: None,
        quiet: false,
    };
    report.quiet = RunReport::is_quiet(&report.config, &report.faults);
    // Keep the artifacts of every single run, and of failing runs in --repeat.
    let keep = args.repeat == 1 || verdict != Verdict::Valid;
    if let (Some(dir), true) = (out, keep) {
        report.artifacts = Some(dir.display().to_string());
        report.duration_s = began.elapsed().as_secs_f64();
        let meta = HistoryMeta {
            seed,
            shape: shape.clone(),
            started_at: Some(started_at.to_rfc3339()),
            faults: report.faults.clone(),
            replicas: report
                .stories
                .iter()
                .filter(|s| s.kind == "lost-on-replica" || s.kind == "lost-write")
                .cloned()
                .collect(),
        };
        write_artifacts(dir, &report, &history, &meta, node_logs.as_deref()).await?;
    }
    if let Some(c) = cluster {
        c.stop().await;
    }
    report.duration_s = began.elapsed().as_secs_f64();
    Ok(report)
}

/// Each key's state before the workload, read through the entry point
/// like any read ([`history::Op::start`]); a key that cannot be read (after
/// a few tries) stops the run, since nothing could be checked on it.
async fn start_state(args: &Args, target: &str, epoch: Instant) -> anyhow::Result<Vec<Op>> {
    let client = workload::Client::new(
        args.clients,
        target,
        Duration::from_secs_f64(args.request_timeout),
        epoch,
    );
    let mut starts = Vec::new();
    for k in 0..args.keys {
        let key = workload::key_name(k);
        let mut tries = 0;
        let mut op = loop {
            let op = client.run(Input::Read { key: key.clone() }).await;
            tries += 1;
            match &op.output {
                history::Outcome::ReadFailed { reason } if tries >= 5 => anyhow::bail!(
                    "cannot read where `{key}` starts on {target} (needed with --no-start-cluster): {reason}"
                ),
                history::Outcome::ReadFailed { .. } => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                _ => break op,
            }
        };
        op.start = true;
        starts.push(op);
    }
    Ok(starts)
}

async fn write_artifacts(
    dir: &Path,
    report: &RunReport,
    history: &[Op],
    meta: &HistoryMeta,
    node_logs: Option<&Path>,
) -> anyhow::Result<()> {
    let ctx = |what: &str| format!("cannot write {what} in {}", dir.display());
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| ctx("the directory"))?;
    tokio::fs::write(dir.join("history.jsonl"), history::to_jsonl(history))
        .await
        .with_context(|| ctx("history.jsonl"))?;
    tokio::fs::write(
        HistoryMeta::path_for(&dir.join("history.jsonl")),
        serde_json::to_string_pretty(meta)?,
    )
    .await
    .with_context(|| ctx("history.meta.json"))?;
    tokio::fs::write(
        dir.join("faults.json"),
        serde_json::to_string_pretty(&report.faults)?,
    )
    .await
    .with_context(|| ctx("faults.json"))?;
    tokio::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(report)?,
    )
    .await
    .with_context(|| ctx("results.json"))?;
    tokio::fs::write(dir.join("report.html"), html::render(report, history))
        .await
        .with_context(|| ctx("report.html"))?;
    if let Some(logs) = node_logs {
        let into = dir.join("nodes");
        tokio::fs::create_dir_all(&into)
            .await
            .with_context(|| ctx("nodes/"))?;
        if let Ok(mut entries) = tokio::fs::read_dir(logs).await {
            while let Ok(Some(e)) = entries.next_entry().await {
                let _ = tokio::fs::copy(e.path(), into.join(e.file_name())).await;
            }
        }
        if let Some(up_log) = logs.parent().map(|p| p.join("up.log")) {
            let _ = tokio::fs::copy(up_log, into.join("up.log")).await;
        }
    }
    Ok(())
}

/// The progress line: on a terminal, rewritten in place; otherwise one
/// line every 5 s.
struct Progress {
    tty: bool,
    total: f64,
    last: std::sync::Mutex<f64>,
}

impl Progress {
    fn new(total: f64) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            total,
            last: std::sync::Mutex::new(0.0),
        }
    }

    fn show(&self, t: f64, c: &workload::Counters, fault: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let line = format!(
            "[{t:5.1}/{:.0} s] {} ops: ok {}, unknown {}, refused {}, read failed {}{}",
            self.total,
            c.total(),
            c.ok.load(Relaxed),
            c.unknown.load(Relaxed),
            c.refused.load(Relaxed),
            c.read_failed.load(Relaxed),
            if fault.is_empty() {
                String::new()
            } else {
                format!(" · fault: {fault}")
            }
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            let mut last = self.last.lock().unwrap();
            if t - *last >= 5.0 {
                *last = t;
                eprintln!("{line}");
            }
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut all = vec!["check"];
        all.extend(extra);
        Args::parse_from(all)
    }

    #[test]
    fn bad_settings_are_refused_before_anything_starts() {
        let e = prepare(&args(&["--followers", "2", "-W", "3"]))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("larger than the number of followers"),
            "{e}"
        );
        let e = prepare(&args(&["--nemesis", "chaos"])).err().unwrap();
        assert!(e.to_string().contains("unknown nemesis `chaos`"), "{e}");
        let e = prepare(&args(&["--time-limit", "0"])).err().unwrap();
        assert!(e.to_string().contains("--time-limit"), "{e}");
        let e = prepare(&args(&[
            "--no-start-cluster",
            "--gateway",
            "http://x",
            "--nemesis",
            "kill",
        ]))
        .err()
        .unwrap();
        assert!(e.to_string().contains("--coordinator"), "{e}");
        let e = prepare(&args(&["--replica-wait", "-1"])).err().unwrap();
        assert!(e.to_string().contains("--replica-wait"), "{e}");
        let e = prepare(&args(&["--fault-cmd", " "])).err().unwrap();
        assert!(e.to_string().contains("--fault-cmd is empty"), "{e}");
        let log = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(log.path(), "2026-12-06T07:00:00Z explode follower-1\n").unwrap();
        let e = prepare(&args(&["--faults-log", log.path().to_str().unwrap()]))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("line 1: unknown event `explode`"),
            "{e}"
        );
        assert!(prepare(&args(&["--seed", "5"])).is_ok());
    }

    #[test]
    fn the_cluster_gets_the_asked_shape_and_delays() {
        let f = up_flags(&args(&[
            "--followers",
            "5",
            "-W",
            "4",
            "-R",
            "1",
            "--no-delay",
        ]))
        .join(" ");
        assert_eq!(
            f,
            "--followers 5 --write-quorum 4 --read-quorum 1 --no-delay"
        );
        let f = up_flags(&args(&["--sync-delay", "0.1"])).join(" ");
        assert!(f.ends_with("--sync-delay 0.1"));
    }
}
