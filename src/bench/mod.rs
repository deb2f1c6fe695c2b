//! `kvlab bench`: a closed-loop load generator for kvlab (and for etcd, to
//! compare against).
//!
//! The pieces, each testable on its own:
//! - [`args`]: flags, and their validation into a [`Plan`];
//! - [`keys`]: which key and which operation come next;
//! - [`target`]: the request each system expects, and what its answer means;
//! - [`conn`]: each client's own keep-alive HTTP connection;
//! - [`stats`]: per-client histograms and counters;
//! - [`driver`]: the clients, the warm-up and the measured window;
//! - [`report`]: the figures, as text or JSON;
//! - [`cpu`]: what the generator itself costs;
//! - [`bare`]: the ceiling, a bare HTTP server (`kvlab bench-server`);
//! - [`disk`]: the disk's floor, concurrent fsyncs timed (`kvlab bench-disk`);
//! - [`skeleton`]: the lab's shape with no logic in it, on a binary wire: the
//!   ceiling of any implementation of the lab (`kvlab bench-skeleton`).
//!
//! [`run`] is the edge that ties them together for the command line;
//! [`execute`] does the same but hands the [`Report`] back, for tests and for
//! callers that want the numbers rather than the printout.

pub mod args;
pub mod bare;
pub mod conn;
pub mod cpu;
pub mod disk;
pub mod driver;
pub mod keys;
pub mod progress;
pub mod report;
pub mod skeleton;
pub mod stats;
pub mod target;

use thiserror::Error;

pub use args::{Args, ArgsError, Plan};
pub use report::{render_text, Report};

use target::Outcome;

/// Why a run could not produce a report.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("no answer from {url} ({outcome:?}): is the cluster up, and is the URL right?")]
    Unreachable { url: String, outcome: Outcome },
    #[error(
        "preload failed: {failed} of {total} writes did not succeed (first failure: {first:?})"
    )]
    Preload {
        failed: u64,
        total: u64,
        first: Outcome,
    },
    #[error("bad URL: {0}")]
    BadUrl(#[source] url::ParseError),
    #[error("a client task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Run a validated plan and return its figures.
pub async fn execute(plan: &Plan) -> Result<Report, BenchError> {
    let measured = driver::drive(plan).await?;
    Ok(Report::new(
        plan,
        &measured.stats,
        measured.elapsed,
        measured.cpu,
    ))
}

/// `kvlab bench`: validate the flags, run, print the report on stdout.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let plan = args.validate()?;
    let report = execute(&plan).await?;
    if plan.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(())
}
