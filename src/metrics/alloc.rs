//! Counting allocations, for `bench/per-op.sh`: how many heap allocations a
//! write or a read costs each process.
//!
//! The binary's global allocator is [`Counting`] around mimalloc (see
//! `main.rs`). It counts only when the process started with
//! `KVLAB_COUNT_ALLOCATIONS=1` in its environment ([`ENV_COUNT`]; nodes
//! inherit it from `kvlab up`); then each component's `/metrics` shows
//! `kvlab_process_allocations_total`. Otherwise an allocation costs one
//! load of a flag that never changes, and nothing is shown.
//!
//! Invariant: nothing here allocates. An allocator that allocated would
//! call itself.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// The environment variable that turns counting on, at start.
pub const ENV_COUNT: &str = "KVLAB_COUNT_ALLOCATIONS";

/// Whether allocations are counted (set once, at start).
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Allocations (and reallocations) since counting started.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// A global allocator that counts the allocations it passes to `A`.
pub struct Counting<A>(pub A);

// SAFETY: every call is passed to `A` unchanged; counting touches atomics only.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on as is.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

#[inline]
fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Turns counting on if the environment asks for it. Called once, at start.
pub fn count_if_asked() {
    if std::env::var_os(ENV_COUNT).is_some_and(|v| v == "1") {
        COUNTING.store(true, Ordering::Relaxed);
    }
}

/// Allocations so far, if this process counts them.
pub fn allocations() -> Option<u64> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| ALLOCATIONS.load(Ordering::Relaxed))
}

/// `kvlab_process_allocations_total`, read when scraped.
#[derive(Debug, Default)]
pub(super) struct AllocationsMetric;

impl TypedMetric for AllocationsMetric {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for AllocationsMetric {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
            &allocations().unwrap_or(0),
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_is_off_unless_asked() {
        // The test binary's allocator is the system's, and nobody set the
        // variable: nothing is counted, and the metric is absent.
        assert_eq!(allocations(), None);
        let text = {
            let reg = super::super::registry("test");
            let mut body = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut body, &reg).unwrap();
            body
        };
        assert!(!text.contains("allocations"), "{text}");
    }
}
