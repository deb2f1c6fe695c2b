//! The closed loop: N clients, each sending its next request as soon as the
//! previous one is answered, for a duration or an operation count.
//!
//! Phases, in order: an optional preload (write every key once), the warm-up
//! (load as usual, nothing recorded), then the measured window. A request
//! belongs to the phase in which it *started*; the window ends when the last
//! request started inside it has been answered, and that instant is what the
//! throughput divides by.
//!
//! Invariants:
//! - Each client has its own HTTP connection ([`Conn`]), as in wrk:
//!   "64 clients" means 64 sockets, and no pool lock is shared.
//! - Each client records into its own [`Recorder`]: the hot path takes no
//!   lock. The only shared state is a few atomic counters for `--ops` and
//!   for the progress bar.
//! - With `--ops N`, exactly N requests are sent in the measured window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::{Plan, Stop};
use super::conn::{Conn, Endpoint};
use super::cpu::{CpuCost, CpuMeter};
use super::keys::{choose_op, client_rng, key_name, KeyChooser, OpKind};
use super::progress::Progress;
use super::stats::Recorder;
use super::target::{Outcome, Target};
use super::BenchError;

/// How long a client waits after a refused connection before trying again,
/// so that a dead server does not turn the generator into a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// What the measured window produced.
pub struct Measured {
    pub stats: Recorder,
    pub elapsed: Duration,
    pub cpu: CpuCost,
}

/// State shared by all clients of one run.
struct Run {
    plan: Plan,
    target: Target,
    chooser: KeyChooser,
    /// When the measured window opens (after the warm-up).
    measure_start: Instant,
    /// Requests started in the measured window (for `--ops`).
    claimed: AtomicU64,
    progress: Progress,
}

impl Run {
    /// May a request start now, and does it count? `None` means stop.
    fn admit(&self, now: Instant) -> Option<bool> {
        if now < self.measure_start {
            return Some(false); // warm-up: send, but do not record
        }
        let more = match self.plan.stop {
            Stop::After(d) => now < self.measure_start + d,
            Stop::Ops(n) => self.claimed.fetch_add(1, Ordering::Relaxed) < n,
        };
        more.then_some(true)
    }
}

/// Run the plan against its target and return the measured window's figures.
pub async fn drive(plan: &Plan) -> Result<Measured, BenchError> {
    let endpoints = plan
        .urls
        .iter()
        .map(|u| Endpoint::from_url(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BenchError::BadUrl)?;
    // Each connection puts its own URL's path in front of the request's.
    let target = Target::new(plan.target, "", plan.value_size);
    let mut conns: Vec<Conn> = (0..plan.clients)
        .map(|_| Conn::new(endpoints.clone(), plan.timeout))
        .collect();
    preflight(&target, &mut conns[0], &plan.url).await?;
    // Every client starts on the one that answered.
    let answering = conns[0].current();
    for conn in &mut conns {
        conn.set_current(answering);
    }
    if plan.preload {
        conns = preload(&target, conns, plan.keys).await?;
    }

    let measure_start = Instant::now() + plan.warmup;
    let run = Arc::new(Run {
        plan: plan.clone(),
        target,
        chooser: KeyChooser::new(plan.distribution, plan.keys, plan.zipf_s),
        measure_start,
        claimed: AtomicU64::new(0),
        progress: Progress::new(plan, measure_start),
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(id, conn)| tokio::spawn(client_loop(run.clone(), id, conn)))
        .collect();
    let ticker = tokio::spawn(run.progress.clone().tick());

    // Start the CPU meter with the measured window, so warm-up costs are out.
    tokio::time::sleep_until(measure_start.into()).await;
    let meter = CpuMeter::start();
    let mut stats = Recorder::default();
    let mut last_answer = measure_start;
    for task in tasks {
        let (rec, last) = task.await?;
        stats.merge(&rec);
        last_answer = last_answer.max(last);
    }
    let cpu = meter.stop();
    run.progress.finish();
    ticker.abort();
    Ok(Measured {
        stats,
        elapsed: last_answer.saturating_duration_since(measure_start),
        cpu,
    })
}

/// One client: request, wait, record, repeat. Returns what it recorded and
/// when its last measured request was answered.
async fn client_loop(run: Arc<Run>, id: usize, mut conn: Conn) -> (Recorder, Instant) {
    let mut rng = client_rng(run.plan.seed, id);
    let mut rec = Recorder::default();
    let mut last_answer = run.measure_start;
    while let Some(measured) = run.admit(Instant::now()) {
        let op = choose_op(&mut rng, run.plan.read_pct);
        let key = key_name(run.chooser.choose(&mut rng));
        let started = Instant::now();
        let outcome = run.target.send(&mut conn, op, &key).await;
        let finished = Instant::now();
        if measured {
            rec.record(op, outcome, finished - started);
            last_answer = finished;
        }
        run.progress.count(outcome, measured);
        if outcome == Outcome::Connect {
            tokio::time::sleep(CONNECT_BACKOFF).await;
        }
    }
    (rec, last_answer)
}

/// One read before anything else, so that a wrong URL or a cluster that is
/// not up fails at once with a clear message instead of a table of errors.
/// Several URLs: the first that answers (the connection moves on by itself).
async fn preflight(target: &Target, conn: &mut Conn, url: &str) -> Result<(), BenchError> {
    let mut outcome = Outcome::Connect;
    for _ in 0..conn.endpoint_count() {
        outcome = target.send(conn, OpKind::Read, &key_name(0)).await;
        if !matches!(outcome, Outcome::Connect | Outcome::Timeout) {
            return Ok(());
        }
    }
    Err(BenchError::Unreachable {
        url: url.to_string(),
        outcome,
    })
}

/// Write every key once, all clients sharing the work, so reads find data.
/// Hands the connections back, open, for the run itself.
async fn preload(target: &Target, conns: Vec<Conn>, keys: u64) -> Result<Vec<Conn>, BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (target, next) = (target.clone(), next.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= keys {
                        return (conn, failures);
                    }
                    let outcome = target.send(&mut conn, OpKind::Write, &key_name(k)).await;
                    if outcome != Outcome::Ok {
                        failures.push(outcome);
                    }
                }
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(tasks.len());
    let mut failures = Vec::new();
    for task in tasks {
        let (conn, failed) = task.await?;
        conns.push(conn);
        failures.extend(failed);
    }
    match failures.first() {
        None => Ok(conns),
        Some(&first) => Err(BenchError::Preload {
            failed: failures.len() as u64,
            total: keys,
            first,
        }),
    }
}
