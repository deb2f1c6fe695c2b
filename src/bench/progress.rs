//! The progress bar shown while a run is under way.
//!
//! Only drawn when stderr is a terminal: in a script, a pipe or a test it is
//! hidden and costs a couple of relaxed atomic increments per request. The
//! bar is redrawn by its own task a few times a second, never by the clients,
//! so drawing never sits on a request's path.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::args::{Plan, Stop};
use super::target::Outcome;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Counters {
    measured: AtomicU64,
    errors: AtomicU64,
}

/// A handle to the bar; clones share it.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    visible: bool,
    counters: Arc<Counters>,
    stop: Stop,
    start: Instant,
    measure_start: Instant,
}

impl Progress {
    pub fn new(plan: &Plan, measure_start: Instant) -> Self {
        let visible = std::io::stderr().is_terminal();
        let bar = if visible {
            new_bar(plan)
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            visible,
            counters: Arc::default(),
            stop: plan.stop,
            start: Instant::now(),
            measure_start,
        }
    }

    /// Called by a client after each request.
    pub fn count(&self, outcome: Outcome, measured: bool) {
        if !self.visible {
            return;
        }
        if measured {
            self.counters.measured.fetch_add(1, Ordering::Relaxed);
        }
        if !outcome.is_answer() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Redraw until aborted.
    pub async fn tick(self) {
        if !self.visible {
            return;
        }
        let mut interval = tokio::time::interval(TICK);
        loop {
            interval.tick().await;
            self.redraw();
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn redraw(&self) {
        let now = Instant::now();
        let measured = self.counters.measured.load(Ordering::Relaxed);
        let errors = self.counters.errors.load(Ordering::Relaxed);
        let position = match self.stop {
            Stop::After(_) => (now - self.start).as_millis() as u64,
            Stop::Ops(_) => measured,
        };
        self.bar.set_position(position);
        if now < self.measure_start {
            self.bar.set_message(format!("warming up, {errors} errors"));
        } else {
            let secs = (now - self.measure_start).as_secs_f64().max(1e-3);
            let rate = measured as f64 / secs;
            self.bar
                .set_message(format!("{measured} ops, {rate:.0}/s, {errors} errors"));
        }
    }
}

/// A bar over milliseconds for a timed run, over operations for `--ops`.
fn new_bar(plan: &Plan) -> ProgressBar {
    let len = match plan.stop {
        Stop::After(d) => (plan.warmup + d).as_millis() as u64,
        Stop::Ops(n) => n,
    };
    let style = ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {msg}")
        .expect("constant template is valid");
    ProgressBar::new(len).with_style(style)
}
