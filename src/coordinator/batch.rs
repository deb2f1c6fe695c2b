//! Gathering concurrent requests into batches.
//!
//! Every client write goes to the leader and every client read to R
//! followers. Sent one HTTP exchange each, a busy cluster spends most of its
//! CPU on the exchanges themselves (syscalls, wake-ups, parsing), not on the
//! work. A [`Batcher`] sends requests for one destination as they come, but
//! with at most `max_in_flight` exchanges outstanding: whatever arrives while
//! those are busy waits, and leaves together in the next one.
//!
//! This adds no waiting of its own, and no hand-off: a request that finds
//! the batcher idle (a free exchange, nobody queued) is sent by its own
//! caller's task, as a batch of one, with nothing in between. Only requests
//! that arrive while the exchanges are busy are queued; the exchange that
//! ends first takes them all (up to the limits) and sends them in a task of
//! its own, which goes on with the next queued batch until the queue is
//! empty. Under load, batches grow by themselves to match the round-trip
//! time; no timer or size threshold has to be tuned. (The first version had
//! one task gather every request, idle or not: a lone write then crossed
//! three more task hand-offs; "Where the time goes" in ARCHITECTURE.md
//! counts them.)
//!
//! Invariants:
//! - every request gets exactly one answer, in the order of its batch's
//!   answers (the sender returns one answer per item, in order), or `None`
//!   if the runtime is shutting down;
//! - at most `max_in_flight` exchanges are outstanding, counted under one
//!   lock with the queue: an exchange ends by taking the next batch or by
//!   giving its place back, never both, never neither, also when its caller
//!   gives up mid-way (the `InFlight` guard does it on drop);
//! - a batch holds at most `max_items` items and, past its first item, at
//!   most `max_bytes` by the caller's measure.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How a batcher sizes its batches.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Exchanges outstanding at once. 1 means strictly one after another.
    pub max_in_flight: usize,
    pub max_items: usize,
    pub max_bytes: usize,
}

type Exchange<R> = Pin<Box<dyn Future<Output = Vec<R>> + Send>>;
type Send_<T, R> = Box<dyn Fn(Vec<T>) -> Exchange<R> + Send + Sync>;
/// A queued request and where its answer goes.
type Waiting<T, R> = (T, oneshot::Sender<R>);

/// Sends items of type `T` in batches; each caller gets its own `R` back.
pub struct Batcher<T, R> {
    inner: Arc<Inner<T, R>>,
}

struct Inner<T, R> {
    limits: Limits,
    weigh: fn(&T) -> usize,
    send: Send_<T, R>,
    state: Mutex<State<T, R>>,
}

struct State<T, R> {
    /// Requests that found every exchange busy, oldest first.
    queue: VecDeque<Waiting<T, R>>,
    /// Exchanges outstanding (inline or in their own task).
    in_flight: usize,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// A batcher whose exchanges are `send`: it turns a batch into one
    /// answer per item, in order; `weigh` gives an item's size for
    /// `max_bytes`.
    pub fn spawn<S, Fut>(limits: Limits, weigh: fn(&T) -> usize, send: S) -> Batcher<T, R>
    where
        S: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        Batcher {
            inner: Arc::new(Inner {
                limits: Limits {
                    max_in_flight: limits.max_in_flight.max(1),
                    max_items: limits.max_items.max(1),
                    ..limits
                },
                weigh,
                send: Box::new(move |items| Box::pin(send(items))),
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    in_flight: 0,
                }),
            }),
        }
    }

    /// Sends `item`, alone and at once if the batcher is idle, else with the
    /// next batch, and waits for its answer; `None` if the runtime is
    /// shutting down or the sender answered short.
    pub async fn call(&self, item: T) -> Option<R> {
        let waiting = {
            let mut state = self.inner.state.lock().unwrap();
            if state.in_flight < self.inner.limits.max_in_flight && state.queue.is_empty() {
                state.in_flight += 1;
                Err(item)
            } else {
                let (tx, rx) = oneshot::channel();
                state.queue.push_back((item, tx));
                Ok(rx)
            }
        };
        match waiting {
            Ok(rx) => rx.await.ok(),
            Err(item) => {
                // The idle path: this task is the exchange. Should the caller
                // give up mid-way, the guard still hands the place on.
                let place = InFlight(Some(self.inner.clone()));
                let answer = (self.inner.send)(vec![item]).await.pop();
                drop(place);
                answer
            }
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Inner<T, R> {
    /// Takes the next batch off the queue, or, if it is empty, gives the
    /// caller's exchange place back. Called with the lock held, by an
    /// exchange that has just ended.
    fn next_batch(&self, state: &mut State<T, R>) -> Option<Vec<Waiting<T, R>>> {
        let first = match state.queue.pop_front() {
            Some(first) => first,
            None => {
                state.in_flight -= 1;
                return None;
            }
        };
        let mut bytes = (self.weigh)(&first.0);
        let mut batch = vec![first];
        while batch.len() < self.limits.max_items {
            let Some(next) = state.queue.front() else {
                break;
            };
            bytes += (self.weigh)(&next.0);
            if bytes > self.limits.max_bytes {
                break;
            }
            batch.extend(state.queue.pop_front());
        }
        Some(batch)
    }

    /// Sends queued batches one after another, in this exchange's place,
    /// until the queue is empty.
    async fn drain(self: Arc<Self>, mut batch: Vec<Waiting<T, R>>) {
        let mut place = InFlight(Some(self.clone()));
        loop {
            let (items, waiters): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
            let answers = (self.send)(items).await;
            for (waiter, answer) in waiters.into_iter().zip(answers) {
                // The caller may have given up (its request was dropped).
                let _ = waiter.send(answer);
            }
            match place.next_batch() {
                Some(next) => batch = next,
                None => return,
            }
        }
    }
}

/// One exchange's place among the `max_in_flight`. Dropped while it still
/// holds the place (the exchange ended, or its caller gave up), it starts
/// the next queued batch in a task of its own, or gives the place back.
struct InFlight<T: Send + 'static, R: Send + 'static>(Option<Arc<Inner<T, R>>>);

impl<T: Send + 'static, R: Send + 'static> InFlight<T, R> {
    /// The next queued batch, to send in this place; `None` when the queue
    /// is empty, and then the place is given back.
    fn next_batch(&mut self) -> Option<Vec<Waiting<T, R>>> {
        let inner = self.0.as_ref()?;
        let next = inner.next_batch(&mut inner.state.lock().unwrap());
        if next.is_none() {
            self.0 = None;
        }
        next
    }
}

impl<T: Send + 'static, R: Send + 'static> Drop for InFlight<T, R> {
    fn drop(&mut self) {
        let Some(inner) = self.0.clone() else { return };
        let Some(batch) = self.next_batch() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(inner.drain(batch));
            }
            // No runtime left to send it: the waiters' senders are dropped
            // with the batch, so each caller gets `None`.
            Err(_) => drop(batch),
        }
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
    async fn a_lone_request_is_sent_by_its_own_task() {
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        let limits = Limits {
            max_in_flight: 1,
            max_items: 10,
            max_bytes: 10,
        };
        let b = Batcher::spawn(
            limits,
            |_: &u32| 1,
            move |items: Vec<u32>| {
                *record.lock().unwrap() = tokio::task::try_id();
                async move { items }
            },
        );
        let caller = tokio::spawn(async move { (tokio::task::id(), b.call(7).await) });
        let (caller_id, answer) = caller.await.unwrap();
        assert_eq!(answer, Some(7));
        assert_eq!(*seen.lock().unwrap(), Some(caller_id), "no hand-off");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_hands_its_place_on() {
        let (b, sizes, gate) = doubler(100, 1000);
        let first = call(&b, 0);
        while sizes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=3).map(|x| call(&b, x)).collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        gate.send_replace(true);
        for (x, handle) in (1..=3).zip(rest) {
            assert_eq!(handle.await.unwrap(), Some(x * 2));
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 3]);
        // The place came back: the next lone request goes at once.
        assert_eq!(b.call(5).await, Some(10));
        assert_eq!(*sizes.lock().unwrap(), vec![1, 3, 1]);
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
