//! Sliding window, as a sliding *log*: at most `max` requests in any span of
//! `window`.
//!
//! Which variant, and why: the log keeps the times of the admitted requests
//! that are still inside the window, and admits a request if fewer than `max`
//! are. It is exact, which is the point of the lesson: where the fixed window
//! lets `2 * max` through across an edge, this one never admits more than
//! `max` in any window-long span. The other common variant, the sliding
//! *counter* (two fixed windows, the previous one weighted by how much of it
//! still overlaps), needs O(1) memory but only estimates, assuming the
//! previous window's requests were evenly spread. The log's price is memory:
//! up to `max` timestamps per client, so the whole table holds at most
//! `max_clients * max` of them. Refused requests are not logged: a client
//! that keeps knocking does not push its own retry further away.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Decision, Limits};

#[derive(Debug, Clone, Default)]
pub struct SlidingLog {
    /// Times of admitted requests still inside the window, oldest first.
    admitted: VecDeque<Duration>,
}

impl SlidingLog {
    pub fn new() -> SlidingLog {
        SlidingLog::default()
    }

    /// Drops the requests that have left the window `(now - window, now]`.
    fn forget_old(&mut self, now: Duration, limits: &Limits) {
        while let Some(&t) = self.admitted.front() {
            if t + limits.window <= now {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn admit(&mut self, now: Duration, limits: &Limits) -> Decision {
        self.forget_old(now, limits);
        let used = self.admitted.len() as u32;
        if used < limits.max {
            self.admitted.push_back(now);
            Decision::allow(
                limits,
                limits.max - used - 1,
                self.until_all_free(now, limits),
            )
        } else {
            // A slot frees when the oldest admitted request leaves the window.
            let oldest = self.admitted[0];
            let retry = oldest + limits.window - now;
            Decision::deny(limits, retry, self.until_all_free(now, limits))
        }
    }

    /// Time until every logged request has left the window.
    fn until_all_free(&self, now: Duration, limits: &Limits) -> Duration {
        self.admitted
            .back()
            .map_or(Duration::ZERO, |&newest| newest + limits.window - now)
    }

    /// Idle when no admitted request is inside the window any more.
    pub fn is_idle(&self, now: Duration, limits: &Limits) -> bool {
        self.admitted
            .back()
            .is_none_or(|&newest| newest + limits.window <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Strategy;

    #[test]
    fn admits_max_in_any_window_long_span() {
        let (l, clock) = limiter(Strategy::SlidingWindow, 3, 10.0);
        assert!(l.check(ALICE).allowed); // t=0
        clock.advance(secs(4.0));
        assert_eq!(burst(&l, ALICE, 2), 2); // t=4
        let refused = l.check(ALICE);
        assert!(!refused.allowed);
        assert_eq!(
            refused.retry_after_secs, 6,
            "the t=0 request leaves at t=10"
        );
        assert_eq!(refused.reset_secs, 10, "the t=4 ones leave at t=14");
        clock.advance(secs(6.0)); // t=10: one slot free, not three
        assert_eq!(burst(&l, ALICE, 3), 1);
        clock.advance(secs(4.0)); // t=14: the two from t=4 have left
        assert_eq!(burst(&l, ALICE, 3), 2);
    }

    /// The edge burst the fixed window allows (INC-1) is refused here.
    #[test]
    fn no_burst_across_a_window_edge() {
        let (l, clock) = limiter(Strategy::SlidingWindow, 10, 2.0);
        assert_eq!(burst(&l, ALICE, 1), 1);
        clock.advance(secs(1.99));
        assert_eq!(burst(&l, ALICE, 20), 9);
        clock.advance(secs(0.01));
        assert_eq!(burst(&l, ALICE, 20), 1, "only the t=0 slot has freed");
    }

    #[test]
    fn remaining_counts_down() {
        let (l, _clock) = limiter(Strategy::SlidingWindow, 3, 10.0);
        let left: Vec<u32> = (0..4).map(|_| l.check(ALICE).remaining).collect();
        assert_eq!(left, [2, 1, 0, 0]);
    }

    #[test]
    fn refused_requests_do_not_delay_the_retry() {
        let (l, clock) = limiter(Strategy::SlidingWindow, 1, 10.0);
        assert!(l.check(ALICE).allowed);
        for _ in 0..9 {
            clock.advance(secs(1.0));
            assert!(!l.check(ALICE).allowed);
        }
        clock.advance(secs(1.0));
        assert!(
            l.check(ALICE).allowed,
            "10 s after the one admitted request"
        );
    }

    #[test]
    fn idle_once_the_newest_request_left_the_window() {
        let (l, clock) = limiter(Strategy::SlidingWindow, 3, 10.0);
        l.check(ALICE);
        clock.advance(secs(5.0));
        l.check(ALICE);
        clock.advance(secs(5.0));
        assert_eq!(l.sweep(), 0, "the t=5 request is still inside");
        clock.advance(secs(5.0));
        assert_eq!(l.sweep(), 1);
    }
}
