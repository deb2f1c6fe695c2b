//! Waiting for something to become true, the one way the suites do it: poll
//! a probe until it succeeds or a deadline passes, then fail saying what was
//! awaited and what was last seen (and, given a cluster, its recent events).
//! Never a fixed sleep as synchronisation.
//!
//! A probe returns `bool`, `Option<T>` or `Result<T, E>`; an `Err` carries
//! what it observed, so the failure can show it:
//!
//! ```ignore
//! let s = eventually("follower-1 to catch up", secs(15), || {
//!     let s = c.status();
//!     if s["followers"][0]["seq"] == 5 { Ok(s) } else { Err(s) }
//! });
//! ```

use std::fmt::{Debug, Display};
use std::time::{Duration, Instant};

use super::Cluster;

/// How often a wait polls unless told otherwise.
pub const POLL: Duration = Duration::from_millis(50);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What a probe returns: done (with a value), or not yet (with what it saw).
pub trait Probe {
    type Out;
    fn done(self) -> Result<Self::Out, String>;
}

impl Probe for bool {
    type Out = ();
    fn done(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".into())
        }
    }
}

impl<T> Probe for Option<T> {
    type Out = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

/// `Err` is what the probe observed; shown as `Display` (JSON for a
/// `serde_json::Value`, a string as it is).
impl<T, E: Display> Probe for Result<T, E> {
    type Out = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Wraps a `Debug` observation for a probe's `Err` (tuples, vectors).
pub struct Seen<T>(pub T);

impl<T: Debug> Display for Seen<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A wait being set up: see [`wait`] and [`eventually`].
#[must_use]
pub struct Wait<'a> {
    what: String,
    timeout: Duration,
    every: Duration,
    cluster: Option<&'a Cluster>,
}

/// A wait for `what` (said in the failure: "timed out after 10s waiting
/// for {what}") of at most `timeout`, polling every [`POLL`].
pub fn wait<'a>(what: impl Display, timeout: Duration) -> Wait<'a> {
    Wait {
        what: what.to_string(),
        timeout,
        every: POLL,
        cluster: None,
    }
}

/// Polls `probe` every [`POLL`] until it succeeds, for at most `timeout`;
/// returns its value, or panics with `what` and the last observation.
pub fn eventually<P: Probe>(
    what: impl Display,
    timeout: Duration,
    probe: impl FnMut() -> P,
) -> P::Out {
    wait(what, timeout).until(probe)
}

/// Checks that `check` holds at every poll for the whole of `duration`
/// (the opposite of [`eventually`]: something that must not happen).
pub fn always<P: Probe>(
    what: impl Display,
    duration: Duration,
    every: Duration,
    mut check: impl FnMut() -> P,
) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if let Err(seen) = check().done() {
            panic!("{what} stopped holding: {seen}");
        }
        std::thread::sleep(every);
    }
}

impl<'a> Wait<'a> {
    /// Polls this often instead of every [`POLL`].
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// On timeout, also shows this cluster's recent events.
    pub fn events(mut self, cluster: &'a Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Polls `probe` until it succeeds; returns its value. Panics at the
    /// deadline with what was awaited and what was last seen.
    pub fn until<P: Probe>(self, probe: impl FnMut() -> P) -> P::Out {
        match self.poll(probe) {
            Ok(out) => out,
            Err(last) => {
                let story = self.cluster.map(Cluster::story).unwrap_or_default();
                panic!(
                    "timed out after {:?} waiting for {}\nlast seen: {last}{story}",
                    self.timeout, self.what
                );
            }
        }
    }

    /// As [`Wait::until`], but `None` at the deadline instead of a panic
    /// (for a grace period after which the caller acts, not fails).
    pub fn try_until<P: Probe>(self, probe: impl FnMut() -> P) -> Option<P::Out> {
        self.poll(probe).ok()
    }

    fn poll<P: Probe>(&self, mut probe: impl FnMut() -> P) -> Result<P::Out, String> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match probe().done() {
                Ok(out) => return Ok(out),
                Err(seen) => seen,
            };
            if Instant::now() >= deadline {
                return Err(last);
            }
            std::thread::sleep(self.every);
        }
    }
}
