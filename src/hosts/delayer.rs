//! Link latency, jitter and loss in user space: netem's model, through
//! NFQUEUE.
//!
//! Why not `tc netem`: kernels built without `sch_netem` (this project's
//! machines and CI run one: `CONFIG_NET_SCH_NETEM` is not set and there are
//! no modules) cannot delay packets in a qdisc. Every kernel with nftables
//! or iptables has NFQUEUE, which hands each matching packet to a user-space
//! program and holds it until that program gives a verdict. So an iptables
//! rule in the node's namespace sends a link's packets to a queue, and this
//! module's thread accepts each one `delay ± jitter` after it arrived, or
//! drops it with the loss probability, as netem would.
//!
//! Invariants:
//! - one thread per namespace, owning one netlink socket created *inside*
//!   that namespace (a queue number means something only in its
//!   namespace); the queue number says which link a packet took;
//! - a packet whose link has no shape (any more) is accepted at once, so
//!   healing never strands packets; rules use `--queue-bypass`, so packets
//!   pass if no thread listens (the process died, say);
//! - dropping the [`Delayer`] stops the thread, which first accepts every
//!   packet it holds.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::api::Netem;

/// The most packets one link holds; beyond it new ones are dropped (a full
/// queue, as on a real router).
const MAX_HELD: usize = 50_000;
/// The kernel's own queue per link, before this thread reads it.
const KERNEL_QUEUE: u32 = 10_000;
/// How long the thread sleeps when nothing is due and nothing arrives.
const TICK: Duration = Duration::from_millis(1);

/// Shapes, by queue number, shared with the thread.
type Shapes = Arc<Mutex<HashMap<u16, Netem>>>;

/// The user-space netem of one namespace.
pub struct Delayer {
    shapes: Shapes,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Delayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayer")
            .field("shapes", &self.shapes.lock().unwrap())
            .finish()
    }
}

impl Delayer {
    /// Starts the thread in the namespace at `/run/netns/<namespace>`.
    pub fn start(namespace: &str) -> std::io::Result<Delayer> {
        let ns = std::fs::File::open(format!("/run/netns/{namespace}"))?;
        let shapes: Shapes = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (shapes, stop) = (shapes.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("delayer-{namespace}"))
                .spawn(move || {
                    // SAFETY: setns on this thread only (CLONE_NEWNET is
                    // per thread); the socket below is then created inside.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                        return;
                    }
                    match nfq::Queue::open() {
                        Ok(queue) => {
                            let _ = ready_tx.send(Ok(()));
                            run(queue, &shapes, &stop);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })?
        };
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the delayer thread ended at start"))??;
        Ok(Delayer {
            shapes,
            stop,
            thread: Some(thread),
        })
    }

    /// Sets (or, with `None`, removes) the shape of queue `num`.
    pub fn set(&self, num: u16, netem: Option<Netem>) {
        let mut shapes = self.shapes.lock().unwrap();
        match netem {
            Some(n) => shapes.insert(num, n),
            None => shapes.remove(&num),
        };
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: read packets, hold each until it is due, accept or drop.
fn run(mut queue: nfq::Queue, shapes: &Shapes, stop: &AtomicBool) {
    queue.set_nonblocking(true);
    let mut rng = SmallRng::seed_from_u64(std::process::id() as u64);
    let mut bound: Vec<u16> = Vec::new();
    // (due, arrival order) → packet: released in due order.
    let mut held: BTreeMap<(Instant, u64), nfq::Message> = BTreeMap::new();
    let mut order = 0u64;
    while !stop.load(Ordering::Relaxed) {
        bind_new(&mut queue, shapes, &mut bound);
        let mut idle = true;
        // Read what has arrived (bounded, so releases are not starved).
        for _ in 0..256 {
            let Ok(mut msg) = queue.recv() else { break };
            idle = false;
            let shape = shapes.lock().unwrap().get(&msg.get_queue_num()).copied();
            let Some(n) = shape else {
                msg.set_verdict(nfq::Verdict::Accept);
                let _ = queue.verdict(msg);
                continue;
            };
            if n.loss_percent > 0.0 && rng.random_range(0.0..100.0) < n.loss_percent
                || held.len() >= MAX_HELD
            {
                msg.set_verdict(nfq::Verdict::Drop);
                let _ = queue.verdict(msg);
                continue;
            }
            let jitter = if n.jitter_ms > 0.0 {
                rng.random_range(-n.jitter_ms..=n.jitter_ms)
            } else {
                0.0
            };
            let wait = Duration::from_secs_f64((n.delay_ms + jitter).max(0.0) / 1000.0);
            order += 1;
            held.insert((Instant::now() + wait, order), msg);
        }
        // Release what is due.
        let now = Instant::now();
        while let Some(entry) = held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let mut msg = entry.remove();
            msg.set_verdict(nfq::Verdict::Accept);
            let _ = queue.verdict(msg);
        }
        if idle {
            std::thread::sleep(TICK);
        }
    }
    // Stopping: nothing stays held.
    for (_, mut msg) in std::mem::take(&mut held) {
        msg.set_verdict(nfq::Verdict::Accept);
        let _ = queue.verdict(msg);
    }
    for num in bound {
        let _ = queue.unbind(num);
    }
}

/// Binds the queues of shapes added since the last look.
fn bind_new(queue: &mut nfq::Queue, shapes: &Shapes, bound: &mut Vec<u16>) {
    let wanted: Vec<u16> = shapes.lock().unwrap().keys().copied().collect();
    for num in wanted {
        if bound.contains(&num) {
            continue;
        }
        // Configuration waits for the kernel's answer.
        queue.set_nonblocking(false);
        let ok = queue.bind(num).is_ok()
            // Only the packets' metadata comes up: the verdict needs no payload.
            && queue.set_copy_range(num, 0).is_ok()
            && queue.set_queue_max_len(num, KERNEL_QUEUE).is_ok();
        queue.set_nonblocking(true);
        if !ok {
            tracing::warn!(queue = num, "could not bind an NFQUEUE for a slow link");
        }
        // Counted as bound either way: a failed bind is not retried every tick.
        bound.push(num);
    }
}
