//! Gathering concurrent requests into batches.
//!
//! Every client write goes to the leader and every client read to R
//! followers. Sent one HTTP exchange each, a busy cluster spends most of its
//! CPU on the exchanges themselves (syscalls, wake-ups, parsing), not on the
//! work. A [`Batcher`] sends requests for one destination as they come, but
//! with at most `max_in_flight` exchanges outstanding: whatever arrives while
//! those are busy waits, and leaves together in the next one.
//!
//! This adds no waiting of its own: an idle batcher sends a lone request at
//! once (a batch of one), so a single client sees no extra latency. Under
//! load, batches grow by themselves to match the round-trip time; no timer
//! or size threshold has to be tuned.
//!
//! Invariants:
//! - every request gets exactly one answer, in the order of its batch's
//!   answers (the sender returns one answer per item, in order);
//! - a batch holds at most `max_items` items and, past its first item, at
//!   most `max_bytes` by the caller's measure.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// How a batcher sizes its batches.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Exchanges outstanding at once. 1 means strictly one after another.
    pub max_in_flight: usize,
    pub max_items: usize,
    pub max_bytes: usize,
}

/// Sends items of type `T` in batches; each caller gets its own `R` back.
pub struct Batcher<T, R> {
    queue: mpsc::UnboundedSender<(T, oneshot::Sender<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the batching task. `send` turns a batch into one answer per
    /// item, in order; `weigh` gives an item's size for `max_bytes`. The
    /// task ends when the batcher is dropped.
    pub fn spawn<S, Fut>(limits: Limits, weigh: fn(&T) -> usize, send: S) -> Batcher<T, R>
    where
        S: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(rx, limits, weigh, send));
        Batcher { queue }
    }

    /// Queues `item` and waits for its answer; `None` if the batcher's task
    /// is gone (the runtime is shutting down) or the sender answered short.
    pub async fn call(&self, item: T) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((item, tx)).ok()?;
        rx.await.ok()
    }
}

/// The batching loop: wait for a free exchange, then for a first item, then
/// take whatever else is already queued, and send it all as one.
async fn gather<T, R, S, Fut>(
    mut rx: mpsc::UnboundedReceiver<(T, oneshot::Sender<R>)>,
    limits: Limits,
    weigh: fn(&T) -> usize,
    send: S,
) where
    T: Send + 'static,
    R: Send + 'static,
    S: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let exchanges = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    // An item taken off the queue that did not fit the previous batch.
    let mut carried = None;
    loop {
        let Ok(permit) = exchanges.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return, // the batcher was dropped
            },
        };
        let mut bytes = weigh(&first.0);
        let mut batch = vec![first];
        while batch.len() < limits.max_items.max(1) {
            let Ok(next) = rx.try_recv() else { break };
            bytes += weigh(&next.0);
            if bytes > limits.max_bytes {
                carried = Some(next);
                break;
            }
            batch.push(next);
        }
        let (items, waiters): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        let answers = send(items);
        tokio::spawn(async move {
            for (waiter, answer) in waiters.into_iter().zip(answers.await) {
                // The caller may have given up (its request was dropped).
                let _ = waiter.send(answer);
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::watch;

    type Doubler = Arc<Batcher<u32, u32>>;
    type Sizes = Arc<Mutex<Vec<usize>>>;

    /// A batcher whose exchange doubles each item and records batch sizes.
    /// Exchanges wait until the gate is opened, so tests can queue requests
    /// behind a first one that is "on the wire".
    fn doubler(max_items: usize, max_bytes: usize) -> (Doubler, Sizes, watch::Sender<bool>) {
        let (gate, gate_rx) = watch::channel(false);
        let sizes = Arc::new(Mutex::new(vec![]));
        let seen = sizes.clone();
        let limits = Limits {
            max_in_flight: 1,
            max_items,
            max_bytes,
        };
        let b = Batcher::spawn(
            limits,
            |&x| x as usize,
            move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.len());
                let mut gate = gate_rx.clone();
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                    items.into_iter().map(|x| x * 2).collect()
                }
            },
        );
        (Arc::new(b), sizes, gate)
    }

    fn call(b: &Arc<Batcher<u32, u32>>, x: u32) -> tokio::task::JoinHandle<Option<u32>> {
        let b = b.clone();
        tokio::spawn(async move { b.call(x).await })
    }

    /// Queues a first request and waits until its exchange is under way.
    async fn one_on_the_wire(b: &Arc<Batcher<u32, u32>>, sizes: &Mutex<Vec<usize>>) {
        drop(call(b, 0));
        while sizes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_lone_request_goes_at_once() {
        let (b, sizes, gate) = doubler(100, 1000);
        gate.send_replace(true);
        assert_eq!(b.call(21).await, Some(42));
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn requests_arriving_during_an_exchange_share_the_next() {
        let (b, sizes, gate) = doubler(100, 1000);
        one_on_the_wire(&b, &sizes).await;
        let rest: Vec<_> = (1..=5).map(|x| call(&b, x)).collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate.send_replace(true);
        for (x, handle) in (1..=5).zip(rest) {
            assert_eq!(handle.await.unwrap(), Some(x * 2));
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 5]);
    }

    #[tokio::test]
    async fn batches_respect_items_and_bytes() {
        let (b, sizes, gate) = doubler(3, 10);
        one_on_the_wire(&b, &sizes).await;
        // Queued: 1,1,1 (3 items at most); 1,8 (then 4 would make 13
        // bytes); 4 (then 20 would make 24); 20, over the limit alone,
        // still goes, by itself.
        let items = [1, 1, 1, 1, 8, 4, 20];
        let handles: Vec<_> = items.iter().map(|&x| call(&b, x)).collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate.send_replace(true);
        for (&x, h) in items.iter().zip(handles) {
            assert_eq!(h.await.unwrap(), Some(x * 2));
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 3, 2, 1, 1]);
    }
}
