//! Token bucket: a bucket of `max` tokens, refilled continuously at one
//! token every `window / max`. A request takes one token or is refused.
//!
//! A client that has been quiet can burst up to `max` at once; a client that
//! never stops gets the steady rate of `max` per `window`, evenly spread.
//! Over any span of `window` it gets at most about `2 * max` (a full bucket
//! plus one window of refill), the same ceiling as the fixed window, but the
//! second half trickles in rather than arriving at once.
//!
//! How it is stored: not as a token count that must be topped up, but as the
//! time at which the bucket will be full again (`full_at`). The two say the
//! same thing: the bucket lacks `(full_at - now) / interval` tokens. Taking a
//! token moves `full_at` one interval later; time passing refills by itself.
//! Everything is whole nanoseconds, so there is no floating-point drift (the
//! same bookkeeping is known as GCRA, the generic cell rate algorithm).

use std::time::Duration;

use super::{Decision, Limits};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// When the bucket is full again; at or before `now` means full.
    full_at: Duration,
}

/// Time for one token to drip back in (never zero, even for absurd limits
/// such as a billion requests per millisecond).
fn interval(limits: &Limits) -> Duration {
    (limits.window / limits.max).max(Duration::from_nanos(1))
}

/// Refill time of a whole bucket (the window, give or take rounding).
fn capacity(limits: &Limits) -> Duration {
    interval(limits) * limits.max
}

impl TokenBucket {
    /// A new client starts with a full bucket.
    pub fn new(now: Duration, _limits: &Limits) -> TokenBucket {
        TokenBucket { full_at: now }
    }

    pub fn admit(&mut self, now: Duration, limits: &Limits) -> Decision {
        // How much refill the bucket is owed now: zero when it is full.
        let owed = self.full_at.saturating_sub(now);
        // Taking a token adds one interval; it may not exceed a whole bucket.
        let owed_after = owed + interval(limits);
        if owed_after <= capacity(limits) {
            self.full_at = now + owed_after;
            let missing = owed_after.as_nanos().div_ceil(interval(limits).as_nanos()) as u32;
            Decision::allow(limits, limits.max - missing, owed_after)
        } else {
            // Wait until enough has dripped back for one token.
            Decision::deny(limits, owed_after - capacity(limits), owed)
        }
    }

    /// Idle once the bucket is full again: a fresh bucket is the same.
    pub fn is_idle(&self, now: Duration, _limits: &Limits) -> bool {
        self.full_at <= now
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Strategy;

    #[test]
    fn a_full_bucket_allows_a_burst_of_max() {
        let (l, _clock) = limiter(Strategy::TokenBucket, 10, 60.0);
        let first = l.check(ALICE);
        assert_eq!((first.remaining, first.reset_secs), (9, 6));
        assert_eq!(burst(&l, ALICE, 20), 9);
    }

    #[test]
    fn tokens_drip_back_at_max_per_window() {
        let (l, clock) = limiter(Strategy::TokenBucket, 10, 60.0);
        assert_eq!(burst(&l, ALICE, 10), 10);
        let refused = l.check(ALICE);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 6, "one token every 6 s");
        assert_eq!(refused.reset_secs, 60, "empty to full takes a window");
        clock.advance(secs(5.0));
        assert!(!l.check(ALICE).allowed);
        assert_eq!(l.check(ALICE).retry_after_secs, 1);
        clock.advance(secs(1.0));
        assert_eq!(burst(&l, ALICE, 3), 1, "one token after 6 s");
        clock.advance(secs(18.0));
        assert_eq!(burst(&l, ALICE, 5), 3);
    }

    #[test]
    fn the_bucket_never_holds_more_than_max() {
        let (l, clock) = limiter(Strategy::TokenBucket, 5, 10.0);
        clock.advance(secs(3600.0));
        assert_eq!(burst(&l, ALICE, 20), 5);
    }

    /// INC-1's edge burst: the refill over 0.01 s is a fraction of a token.
    #[test]
    fn no_second_burst_right_after_the_first() {
        let (l, clock) = limiter(Strategy::TokenBucket, 10, 2.0);
        assert_eq!(burst(&l, ALICE, 20), 10);
        clock.advance(secs(0.01));
        assert_eq!(burst(&l, ALICE, 20), 0);
        clock.advance(secs(1.0));
        assert_eq!(burst(&l, ALICE, 20), 5, "half a window refills half");
    }

    #[test]
    fn idle_once_full_again() {
        let (l, clock) = limiter(Strategy::TokenBucket, 10, 60.0);
        assert_eq!(burst(&l, ALICE, 2), 2);
        clock.advance(secs(11.0));
        assert_eq!(l.sweep(), 0, "one token still missing");
        clock.advance(secs(1.0));
        assert_eq!(l.sweep(), 1);
    }
}
