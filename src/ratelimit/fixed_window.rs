//! Fixed window: the course's strategy.
//!
//! A client's window opens with its first request and lasts `window`; it
//! admits `max` requests. The first request after the window has expired
//! opens a new one, and the count starts over.
//!
//! The weakness this teaches (incident INC-1): windows are per client and
//! start when the client says, so a client that sends `max` requests at the
//! very end of one window and `max` at the start of the next gets `2 * max`
//! through in a moment. The other two strategies do not have this edge.

use std::time::Duration;

use super::{Decision, Limits};

#[derive(Debug, Clone)]
pub struct FixedWindow {
    /// When the current window opened.
    start: Duration,
    /// Requests admitted in it.
    count: u32,
}

impl FixedWindow {
    pub fn new(now: Duration, _limits: &Limits) -> FixedWindow {
        FixedWindow {
            start: now,
            count: 0,
        }
    }

    fn ends(&self, limits: &Limits) -> Duration {
        self.start + limits.window
    }

    pub fn admit(&mut self, now: Duration, limits: &Limits) -> Decision {
        if now >= self.ends(limits) {
            // The old window is over: this request opens the next one.
            *self = FixedWindow {
                start: now,
                count: 0,
            };
        }
        let left_in_window = self.ends(limits) - now;
        if self.count < limits.max {
            self.count += 1;
            Decision::allow(limits, limits.max - self.count, left_in_window)
        } else {
            // Only the next window admits anything again.
            Decision::deny(limits, left_in_window, left_in_window)
        }
    }

    /// Once the window is over, the next request starts from zero anyway.
    pub fn is_idle(&self, now: Duration, limits: &Limits) -> bool {
        now >= self.ends(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Strategy;

    #[test]
    fn admits_max_then_refuses_until_the_window_ends() {
        let (l, clock) = limiter(Strategy::FixedWindow, 3, 60.0);
        let first = l.check(ALICE);
        assert!(first.allowed);
        assert_eq!((first.limit, first.remaining, first.reset_secs), (3, 2, 60));
        assert_eq!(burst(&l, ALICE, 2), 2);
        clock.advance(secs(20.0));
        let refused = l.check(ALICE);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after_secs, 40, "the window opened 20 s ago");
        clock.advance(secs(39.9));
        assert!(!l.check(ALICE).allowed, "still inside the first window");
        assert_eq!(l.check(ALICE).retry_after_secs, 1, "0.1 s rounds up");
    }

    #[test]
    fn the_first_request_after_expiry_opens_a_new_window() {
        let (l, clock) = limiter(Strategy::FixedWindow, 3, 60.0);
        assert_eq!(burst(&l, ALICE, 3), 3);
        // Long after: the new window starts now, not at a multiple of 60 s.
        clock.advance(secs(100.0));
        let d = l.check(ALICE);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset_secs), (2, 60));
        clock.advance(secs(59.0));
        assert_eq!(burst(&l, ALICE, 5), 2, "same window: 2 left");
        clock.advance(secs(1.0));
        assert_eq!(burst(&l, ALICE, 5), 3, "exactly at its end, a new one");
    }

    /// INC-1: max at the end of a window plus max at the start of the next.
    #[test]
    fn a_client_can_burst_twice_max_across_the_edge() {
        let (l, clock) = limiter(Strategy::FixedWindow, 10, 2.0);
        assert_eq!(burst(&l, ALICE, 1), 1);
        clock.advance(secs(1.99));
        assert_eq!(burst(&l, ALICE, 20), 9);
        clock.advance(secs(0.01));
        assert_eq!(burst(&l, ALICE, 20), 10, "19 admitted within 0.01 s");
    }

    #[test]
    fn idle_once_the_window_is_over() {
        let (l, clock) = limiter(Strategy::FixedWindow, 3, 10.0);
        l.check(ALICE);
        clock.advance(secs(9.0));
        assert_eq!(l.sweep(), 0);
        clock.advance(secs(1.0));
        assert_eq!(l.sweep(), 1);
        assert_eq!(l.tracked_clients(), 0);
    }
}
