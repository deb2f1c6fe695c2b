//! What one client saw: latencies and outcome counts, per operation kind.
//!
//! Every client owns a [`Recorder`] and fills it without any locking; the
//! driver merges them once the run is over. Latencies go into HDR histograms,
//! which keep every percentile within 0.1% using a fixed few tens of KiB,
//! however many samples arrive; a sorted list of samples would grow without
//! bound and cost a sort at the end.
//!
//! Only answers (200, and 404 for a read) are timed. An error such as a 429
//! comes back in microseconds and would make the latency look better than
//! what a client that got its data experienced; errors are counted instead.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::keys::OpKind;
use super::target::Outcome;

/// Lowest and highest latency a histogram tracks, in microseconds. Anything
/// slower than the top is recorded as the top (a minute is past any timeout).
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 60_000_000;
/// Significant decimal digits kept: 3 means a 0.1% resolution.
const SIGFIGS: u8 = 3;

/// How many requests ended each way.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeCounts {
    pub ok: u64,
    pub not_found: u64,
    pub rate_limited_429: u64,
    pub unavailable_503: u64,
    pub timeout: u64,
    pub connect: u64,
    pub other: u64,
}

impl OutcomeCounts {
    pub fn add(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::NotFound => &mut self.not_found,
            Outcome::RateLimited => &mut self.rate_limited_429,
            Outcome::Unavailable => &mut self.unavailable_503,
            Outcome::Timeout => &mut self.timeout,
            Outcome::Connect => &mut self.connect,
            Outcome::Other => &mut self.other,
        };
        *slot += 1;
    }

    pub fn merge(&mut self, other: &OutcomeCounts) {
        self.ok += other.ok;
        self.not_found += other.not_found;
        self.rate_limited_429 += other.rate_limited_429;
        self.unavailable_503 += other.unavailable_503;
        self.timeout += other.timeout;
        self.connect += other.connect;
        self.other += other.other;
    }

    /// Requests that got a valid answer.
    pub fn answers(&self) -> u64 {
        self.ok + self.not_found
    }

    /// Requests that failed, of every kind.
    pub fn errors(&self) -> u64 {
        self.rate_limited_429 + self.unavailable_503 + self.timeout + self.connect + self.other
    }

    /// Every request sent.
    pub fn requests(&self) -> u64 {
        self.answers() + self.errors()
    }
}

/// The figures of one operation kind.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latency of answers, in microseconds.
    pub latency_us: Histogram<u64>,
    pub outcomes: OutcomeCounts,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency_us: Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIGS)
                .expect("constant histogram bounds are valid"),
            outcomes: OutcomeCounts::default(),
        }
    }
}

impl OpStats {
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        self.outcomes.add(outcome);
        if outcome.is_answer() {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            // Clamp into the tracked range rather than drop the sample.
            self.latency_us
                .saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
        }
    }

    pub fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides, so adding cannot fail.
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
        self.outcomes.merge(&other.outcomes);
    }
}

/// Everything one client (or, once merged, the whole run) recorded.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub read: OpStats,
    pub write: OpStats,
}

impl Recorder {
    pub fn record(&mut self, op: OpKind, outcome: Outcome, latency: Duration) {
        self.kind_mut(op).record(outcome, latency);
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.read.merge(&other.read);
        self.write.merge(&other.write);
    }

    /// Reads and writes together.
    pub fn all(&self) -> OpStats {
        let mut all = self.read.clone();
        all.merge(&self.write);
        all
    }

    fn kind_mut(&mut self, op: OpKind) -> &mut OpStats {
        match op {
            OpKind::Read => &mut self.read,
            OpKind::Write => &mut self.write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_but_not_timed() {
        let mut r = Recorder::default();
        r.record(OpKind::Read, Outcome::Ok, Duration::from_micros(500));
        r.record(OpKind::Read, Outcome::NotFound, Duration::from_micros(700));
        r.record(
            OpKind::Read,
            Outcome::RateLimited,
            Duration::from_micros(10),
        );
        r.record(OpKind::Write, Outcome::Timeout, Duration::from_secs(5));
        assert_eq!(r.read.latency_us.len(), 2);
        assert_eq!(r.write.latency_us.len(), 0);
        assert_eq!(r.read.outcomes.answers(), 2);
        assert_eq!(r.read.outcomes.errors(), 1);
        assert_eq!(r.write.outcomes.timeout, 1);
    }

    #[test]
    fn merging_adds_counts_and_samples() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.record(OpKind::Write, Outcome::Ok, Duration::from_millis(1));
        b.record(OpKind::Write, Outcome::Ok, Duration::from_millis(3));
        b.record(OpKind::Read, Outcome::Unavailable, Duration::from_millis(1));
        a.merge(&b);
        assert_eq!(a.write.outcomes.ok, 2);
        assert_eq!(a.read.outcomes.unavailable_503, 1);
        assert_eq!(a.all().outcomes.requests(), 3);
        assert_eq!(
            a.write.latency_us.max(),
            a.write.latency_us.highest_equivalent(3000)
        );
    }

    #[test]
    fn huge_latencies_are_clamped_not_lost() {
        let mut s = OpStats::default();
        s.record(Outcome::Ok, Duration::from_secs(3600));
        assert_eq!(s.latency_us.len(), 1);
    }
}
