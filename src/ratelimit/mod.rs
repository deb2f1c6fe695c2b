//! Per-client rate limiting: how many requests one address may make per window.
//!
//! The [`RateLimiter`] keeps one small state per client `IpAddr` and asks the
//! chosen [`Strategy`] whether the next request fits. Three strategies, one
//! file each, so they can be read and compared side by side:
//! - [`fixed_window`]: the course's; simple, but a client can burst at a
//!   window's edge (the INC-1 incident);
//! - [`sliding_window`]: a sliding log, exact over any window-long span;
//! - [`token_bucket`]: a steady refill with bursts up to the maximum.
//!
//! Invariants:
//! - **Exact under concurrency.** A client's state is read, decided on and
//!   updated under one lock (its shard's), so 100 simultaneous requests
//!   against a max of 10 admit exactly 10.
//! - **Bounded memory.** At most `max_clients` states are kept. Idle states
//!   (ones that would behave exactly like a fresh state) are removed by
//!   [`RateLimiter::sweep`], which the gateway runs periodically. When the
//!   table is full of *active* clients, a new address is refused (fail
//!   closed) rather than evicting someone else's count, which would let a
//!   flood of addresses reset the limits of everyone.
//! - **Time is injected.** Strategies read time only through a [`Clock`], so
//!   tests advance a [`MockClock`] instead of sleeping.

pub mod fixed_window;
pub mod sliding_window;
pub mod token_bucket;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{RateLimitedClient, RateLimiterStats};

use fixed_window::FixedWindow;
use sliding_window::SlidingLog;
use token_bucket::TokenBucket;

/// Default cap on the number of clients tracked at once.
pub const DEFAULT_MAX_CLIENTS: usize = 100_000;

/// Number of independently locked shards. Requests from different clients
/// rarely wait on each other; requests from one client always share a lock.
const SHARDS: usize = 16;

/// Which algorithm decides (`--rate-limit-strategy`). Its name is written
/// with an underscore (`fixed_window`), as the original's `/stats` spells
/// it; the flag takes either spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A new window of `window` seconds opens with the first request after the
    /// previous one expired, and admits `max` requests (the course's).
    #[default]
    #[value(name = "fixed_window", alias = "fixed-window")]
    FixedWindow,
    /// At most `max` requests in any span of `window` seconds (a sliding log).
    #[value(name = "sliding_window", alias = "sliding-window")]
    SlidingWindow,
    /// A bucket of `max` tokens refilled at `max / window` tokens per second.
    #[value(name = "token_bucket", alias = "token-bucket")]
    TokenBucket,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::FixedWindow => "fixed_window",
            Strategy::SlidingWindow => "sliding_window",
            Strategy::TokenBucket => "token_bucket",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limit itself: `max` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max: u32,
    pub window: Duration,
}

/// A limiter setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LimitError {
    #[error("--rate-limit-max must be at least 1")]
    ZeroMax,
    #[error("--rate-limit-window must be a number of seconds between 0.001 and 86400, got {0}")]
    BadWindow(f64),
    #[error("the limiter must be allowed to track at least one client")]
    ZeroClients,
}

impl Limits {
    /// Checks the flags' values; the window is given in (fractional) seconds.
    pub fn new(max: u32, window_secs: f64) -> Result<Limits, LimitError> {
        if max == 0 {
            return Err(LimitError::ZeroMax);
        }
        if !window_secs.is_finite() || !(0.001..=86_400.0).contains(&window_secs) {
            return Err(LimitError::BadWindow(window_secs));
        }
        Ok(Limits {
            max,
            window: Duration::from_secs_f64(window_secs),
        })
    }
}

/// The answer for one request, with what the response headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The configured maximum per window.
    pub limit: u32,
    /// Requests still admitted right now (after this one, if it was admitted).
    pub remaining: u32,
    /// When refused: whole seconds until a retry can succeed (at least 1).
    /// When admitted: 0.
    pub retry_after_secs: u64,
    /// Whole seconds until the quota is fully available again.
    pub reset_secs: u64,
}

impl Decision {
    pub(crate) fn allow(limits: &Limits, remaining: u32, reset: Duration) -> Decision {
        Decision {
            allowed: true,
            limit: limits.max,
            remaining,
            retry_after_secs: 0,
            reset_secs: ceil_secs(reset),
        }
    }

    pub(crate) fn deny(limits: &Limits, retry_after: Duration, reset: Duration) -> Decision {
        Decision {
            allowed: false,
            limit: limits.max,
            remaining: 0,
            // Never "retry in 0 s": that invites an immediate, refused retry.
            retry_after_secs: ceil_secs(retry_after).max(1),
            reset_secs: ceil_secs(reset).max(1),
        }
    }
}

/// Rounds up: a client told "1 s" when 0.2 s remain is early by nothing; told
/// "0 s" when 0.2 s remain, it would be refused again.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// A monotonic clock: time elapsed since some fixed start.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Clone, Default)]
pub struct MockClock {
    nanos: Arc<AtomicU64>,
}

impl MockClock {
    pub fn new() -> MockClock {
        MockClock::default()
    }

    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for MockClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

// ---------------------------------------------------------------------------
// Per-client state
// ---------------------------------------------------------------------------

/// One client's state, in the shape its strategy needs.
#[derive(Debug, Clone)]
enum ClientState {
    Fixed(FixedWindow),
    Sliding(SlidingLog),
    Bucket(TokenBucket),
}

impl ClientState {
    fn fresh(strategy: Strategy, now: Duration, limits: &Limits) -> ClientState {
        match strategy {
            Strategy::FixedWindow => ClientState::Fixed(FixedWindow::new(now, limits)),
            Strategy::SlidingWindow => ClientState::Sliding(SlidingLog::new()),
            Strategy::TokenBucket => ClientState::Bucket(TokenBucket::new(now, limits)),
        }
    }

    fn admit(&mut self, now: Duration, limits: &Limits) -> Decision {
        match self {
            ClientState::Fixed(s) => s.admit(now, limits),
            ClientState::Sliding(s) => s.admit(now, limits),
            ClientState::Bucket(s) => s.admit(now, limits),
        }
    }

    /// True when forgetting this state changes nothing: a fresh one would
    /// answer the next request the same way.
    fn is_idle(&self, now: Duration, limits: &Limits) -> bool {
        match self {
            ClientState::Fixed(s) => s.is_idle(now, limits),
            ClientState::Sliding(s) => s.is_idle(now, limits),
            ClientState::Bucket(s) => s.is_idle(now, limits),
        }
    }
}

struct Shard {
    clients: HashMap<IpAddr, ClientState>,
    /// When this shard was last swept because it was full; a full shard of
    /// active clients is not rescanned on every new address.
    last_full_sweep: Option<Duration>,
}

// ---------------------------------------------------------------------------
// The limiter
// ---------------------------------------------------------------------------

pub struct RateLimiter {
    strategy: Strategy,
    limits: Limits,
    clock: Arc<dyn Clock>,
    shards: Vec<Mutex<Shard>>,
    /// Fixed at start so that an address always lands in the same shard.
    hasher: RandomState,
    per_shard_cap: usize,
    allowed: AtomicU64,
    rejected: AtomicU64,
    evicted: AtomicU64,
    refused_full: AtomicU64,
}

impl RateLimiter {
    /// A limiter on the real clock.
    pub fn new(
        strategy: Strategy,
        limits: Limits,
        max_clients: usize,
    ) -> Result<RateLimiter, LimitError> {
        RateLimiter::with_clock(strategy, limits, max_clients, Arc::new(SystemClock::new()))
    }

    pub fn with_clock(
        strategy: Strategy,
        limits: Limits,
        max_clients: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<RateLimiter, LimitError> {
        if max_clients == 0 {
            return Err(LimitError::ZeroClients);
        }
        // Rounding down keeps the total at or under `max_clients`; a tiny cap
        // still leaves each shard room for one client.
        let per_shard_cap = (max_clients / SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    clients: HashMap::new(),
                    last_full_sweep: None,
                })
            })
            .collect();
        Ok(RateLimiter {
            strategy,
            limits,
            clock,
            shards,
            hasher: RandomState::new(),
            per_shard_cap,
            allowed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
        })
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The most clients tracked at once.
    pub fn capacity(&self) -> usize {
        self.per_shard_cap * SHARDS
    }

    /// Decides on one request from `client` and records it.
    pub fn check(&self, client: IpAddr) -> Decision {
        let decision = self.decide(client);
        let counter = if decision.allowed {
            &self.allowed
        } else {
            &self.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decision
    }

    fn decide(&self, client: IpAddr) -> Decision {
        let mut shard = self.shard(client).lock().unwrap();
        // Read the clock under the lock, so that the decisions on one client
        // are made in the order of their times.
        let now = self.clock.now();
        if !shard.clients.contains_key(&client) && !self.make_room(&mut shard, now) {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            return self.table_full();
        }
        shard
            .clients
            .entry(client)
            .or_insert_with(|| ClientState::fresh(self.strategy, now, &self.limits))
            .admit(now, &self.limits)
    }

    /// Ensures the shard can take one more client; false if it cannot.
    fn make_room(&self, shard: &mut Shard, now: Duration) -> bool {
        if shard.clients.len() < self.per_shard_cap {
            return true;
        }
        // Sweeping is a full scan: do it at most once per window while full.
        let swept_recently = shard
            .last_full_sweep
            .is_some_and(|t| now.saturating_sub(t) < self.limits.window);
        if !swept_recently {
            shard.last_full_sweep = Some(now);
            self.sweep_shard(shard, now);
        }
        shard.clients.len() < self.per_shard_cap
    }

    /// The answer when the table is full of active clients: refused, and
    /// asked to come back once a window has passed (when states go idle).
    fn table_full(&self) -> Decision {
        Decision::deny(&self.limits, self.limits.window, self.limits.window)
    }

    fn shard(&self, client: IpAddr) -> &Mutex<Shard> {
        let index = self.hasher.hash_one(client) as usize % SHARDS;
        &self.shards[index]
    }

    /// Forgets every idle client. The gateway calls this periodically.
    pub fn sweep(&self) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap();
            let now = self.clock.now();
            removed += self.sweep_shard(&mut shard, now);
        }
        removed
    }

    fn sweep_shard(&self, shard: &mut Shard, now: Duration) -> usize {
        let before = shard.clients.len();
        shard
            .clients
            .retain(|_, state| !state.is_idle(now, &self.limits));
        let removed = before - shard.clients.len();
        self.evicted.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    pub fn tracked_clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().clients.len())
            .sum()
    }

    /// Every tracked client's quota now, by address. Looking does not count
    /// as a request: each state is asked on a copy.
    pub fn clients(&self) -> std::collections::BTreeMap<String, RateLimitedClient> {
        let mut out = std::collections::BTreeMap::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap();
            let now = self.clock.now();
            for (addr, state) in &shard.clients {
                let next = state.clone().admit(now, &self.limits);
                // Admitting one more leaves `remaining`; before it, one more.
                let remaining = if next.allowed { next.remaining + 1 } else { 0 };
                out.insert(
                    addr.to_string(),
                    RateLimitedClient {
                        requests: self.limits.max.saturating_sub(remaining),
                        remaining,
                        reset_seconds: next.reset_secs,
                    },
                );
            }
        }
        out
    }

    /// Settings and counters, as the gateway's `/stats` shows them.
    pub fn stats(&self) -> RateLimiterStats {
        RateLimiterStats {
            strategy: self.strategy.as_str().to_string(),
            max_requests: self.limits.max,
            window_seconds: self.limits.window.as_secs_f64(),
            allowed_requests: self.allowed.load(Ordering::Relaxed),
            rejected_requests: self.rejected.load(Ordering::Relaxed),
            clients: self.clients(),
            tracked_clients: self.tracked_clients(),
            max_tracked_clients: self.capacity(),
            evicted_clients: self.evicted.load(Ordering::Relaxed),
            refused_table_full: self.refused_full.load(Ordering::Relaxed),
        }
    }
}

/// Test helpers shared by the strategy modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub const ALICE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    pub const BOB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    /// A limiter of `max` per `window_secs` on a clock the test moves.
    pub fn limiter(strategy: Strategy, max: u32, window_secs: f64) -> (RateLimiter, MockClock) {
        let clock = MockClock::new();
        let limits = Limits::new(max, window_secs).unwrap();
        let limiter =
            RateLimiter::with_clock(strategy, limits, 1000, Arc::new(clock.clone())).unwrap();
        (limiter, clock)
    }

    /// How many of `n` back-to-back requests from `client` are admitted.
    pub fn burst(limiter: &RateLimiter, client: IpAddr, n: usize) -> usize {
        (0..n).filter(|_| limiter.check(client).allowed).count()
    }

    pub fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Barrier;

    #[test]
    fn limits_refuse_unusable_values() {
        assert_eq!(Limits::new(0, 60.0), Err(LimitError::ZeroMax));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(matches!(
                Limits::new(10, bad),
                Err(LimitError::BadWindow(_))
            ));
        }
        assert_eq!(Limits::new(10, 0.5).unwrap().window, secs(0.5));
    }

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn clients_are_limited_separately() {
        for strategy in [
            Strategy::FixedWindow,
            Strategy::SlidingWindow,
            Strategy::TokenBucket,
        ] {
            let (l, _clock) = limiter(strategy, 3, 60.0);
            assert_eq!(burst(&l, ALICE, 5), 3, "{strategy}");
            assert_eq!(burst(&l, BOB, 5), 3, "{strategy}: Bob has his own quota");
        }
    }

    #[test]
    fn counters_count_decisions() {
        let (l, _clock) = limiter(Strategy::FixedWindow, 2, 60.0);
        burst(&l, ALICE, 5);
        let s = l.stats();
        assert_eq!((s.allowed_requests, s.rejected_requests), (2, 3));
        assert_eq!(s.strategy, "fixed_window");
        assert_eq!(s.max_requests, 2);
        assert_eq!(s.window_seconds, 60.0);
        assert_eq!(s.tracked_clients, 1);
    }

    /// 100 threads released at once, one client, max 10: exactly 10 admitted,
    /// for every strategy.
    #[test]
    fn concurrent_requests_admit_exactly_max() {
        for strategy in [
            Strategy::FixedWindow,
            Strategy::SlidingWindow,
            Strategy::TokenBucket,
        ] {
            let limits = Limits::new(10, 60.0).unwrap();
            let l = Arc::new(RateLimiter::new(strategy, limits, 1000).unwrap());
            let start = Arc::new(Barrier::new(100));
            let threads: Vec<_> = (0..100)
                .map(|_| {
                    let (l, start) = (l.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        l.check(ALICE).allowed
                    })
                })
                .collect();
            let admitted = threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|&a| a)
                .count();
            assert_eq!(admitted, 10, "{strategy}");
            assert_eq!(l.stats().rejected_requests, 90, "{strategy}");
        }
    }

    /// A million distinct addresses cannot grow the table past its cap; once
    /// their windows pass, a sweep empties it and new clients get in.
    #[test]
    fn a_flood_of_addresses_stays_under_the_cap() {
        let clock = MockClock::new();
        let limits = Limits::new(10, 60.0).unwrap();
        let cap = 10_000;
        let l =
            RateLimiter::with_clock(Strategy::FixedWindow, limits, cap, Arc::new(clock.clone()))
                .unwrap();
        // Alice is tracked before the flood and keeps her quota through it.
        assert!(l.check(ALICE).allowed);
        for i in 0..1_000_000u32 {
            l.check(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)));
        }
        let s = l.stats();
        assert!(s.tracked_clients <= cap, "{} tracked", s.tracked_clients);
        assert!(s.refused_table_full > 0);
        assert!(l.check(ALICE).allowed, "a tracked client is not pushed out");

        clock.advance(secs(60.0));
        assert!(l.sweep() >= s.tracked_clients - 1);
        assert_eq!(l.tracked_clients(), 0);
        assert!(l.check(BOB).allowed, "room again once the flood went idle");
    }

    /// A full shard whose clients have gone idle makes room by itself, even
    /// before the periodic sweep runs.
    #[test]
    fn a_full_table_reclaims_idle_entries_on_demand() {
        let clock = MockClock::new();
        let limits = Limits::new(1, 1.0).unwrap();
        let l = RateLimiter::with_clock(Strategy::TokenBucket, limits, 16, Arc::new(clock.clone()))
            .unwrap();
        for i in 0..1000u32 {
            l.check(IpAddr::V4(Ipv4Addr::from(i)));
        }
        assert!(l.tracked_clients() <= 16);
        clock.advance(secs(1.0));
        let newcomers = (0..16u32)
            .filter(|i| l.check(IpAddr::V4(Ipv4Addr::from(5000 + i))).allowed)
            .count();
        assert!(newcomers > 0, "idle entries were reclaimed");
        assert!(l.tracked_clients() <= 16);
    }
}
