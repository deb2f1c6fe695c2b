//! The linearizability checker: Wing & Gong's search with Lowe's memoisation.
//!
//! A history is linearizable when its operations can be put in one order that
//! (a) respects real time: if `a` returned before `b` was called, `a` comes
//! first, and (b) a sequential model accepts, operation by operation. The
//! search below looks for such an order:
//!
//! - The calls and returns of all operations go in one list, sorted by time
//!   (a call before a return at the same instant: touching operations count
//!   as concurrent).
//! - Walking the list, the search *linearizes* a pending operation (its call
//!   is reached, its return not yet) if the model accepts it from the current
//!   state: it remembers (entry, state) on a stack and lifts the operation's
//!   call and return out of the list. Reaching a *return* means that
//!   operation should have been linearized already: undo the last choice
//!   (pop, put the entries back) and try the next candidate.
//! - Lowe's memoisation: the pair (set of linearized operations, model state)
//!   fully describes where the search stands (a *configuration*), so a pair
//!   seen before is never explored twice. The set is a bitset over the
//!   operations.
//!
//! Operations with an unknown outcome (a write that timed out: it may have
//! taken effect at any time after its call, or never) get a return time of
//! infinity, as Porcupine does: nothing is ever forced after them. Once
//! every operation with a known outcome is linearized, the search stops with
//! success: the unknown ones left over are those that never took effect
//! (Porcupine would linearize them at the very end, to the same effect).
//!
//! Three additions keep the search fast on a busy key. None of them changes
//! the answer: each skips only configurations from which no order exists.
//!
//! - *Reads first.* When an operation that the model calls read-only (it
//!   never changes the state) is pending and accepted from the current
//!   state, the search linearizes it at once and tries nothing else there;
//!   if the search fails after it, the configuration before it fails too.
//!   Why: take any order that works from here; the read sits somewhere
//!   later in it. Move it to the front. Real time still holds: moving an
//!   operation earlier can only break "`q` returned before the read was
//!   called", and every such `q` is linearized already (else the walk would
//!   have met `q`'s return before the read's call). The model still accepts
//!   the order: the read is accepted now, and since it changes nothing,
//!   every operation it jumps over sees the same states as before. Without
//!   this rule, `k` reads pending on one state would have their `2^k`
//!   subsets tried in turn each time a later step failed.
//! - *Interchangeable operations* (see [`Model::interchangeable`]): only
//!   the earliest pending one is tried at each point.
//! - *Memo keys without copies.* The set of linearized operations keeps a
//!   hash of itself up to date as bits are set and cleared (Zobrist
//!   hashing: the XOR of one fixed random number per operation in the set).
//!   Looking a configuration up costs neither a copy of the set nor a pass
//!   over it; the bits are compared in full only when the hashes match, and
//!   copied only when a new configuration is stored.
//!
//! The model can prune too: see `model` for the versioned register's rules.
//!
//! The search is exponential in the worst case, so it runs against a
//! deadline; past it, the verdict is [`Outcome::Unknown`].

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification: the state, and which steps it accepts.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    type Output;
    fn init(&self) -> Self::State;
    /// The state after `input` answered `output`, or `None` if the model
    /// cannot answer that from `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;
    /// Operations for which this is true must be interchangeable: same
    /// input, same output, unknown outcome (no return). The search then
    /// tries only the earliest one that is pending at each point; trying
    /// another would reach an equivalent state (swap the two in any order
    /// that uses the later one). This is what keeps hundreds of timed-out
    /// writes nobody ever read from exploding the search.
    fn interchangeable(&self, _input: &Self::Input, _output: &Self::Output) -> bool {
        false
    }
    /// True if `step` never changes the state for this input (a read): it
    /// returns the same state or `None`. Such operations are linearized as
    /// soon as they are accepted ("reads first" in the module doc).
    fn read_only(&self, _input: &Self::Input) -> bool {
        false
    }
}

/// One operation as the checker sees it. `ret: None` is an unknown outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation<I, O> {
    pub call: f64,
    pub ret: Option<f64>,
    pub input: I,
    pub output: O,
}

/// What the search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No order fits. `longest` is the longest prefix of a linearization the
    /// search built (operation indices, in order); `stuck` holds the
    /// operations whose return was reached, at that deepest point, without
    /// any way to linearize them: the ones to look at first.
    Violation {
        longest: Vec<usize>,
        stuck: Vec<usize>,
    },
    /// The deadline passed first.
    Unknown,
}

/// How many search steps between two looks at the clock.
const CLOCK_EVERY: u64 = 1 << 12;

/// Checks one history (one key's operations) against `model` before `deadline`.
pub fn check<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    deadline: Instant,
) -> Outcome {
    Search::new(model, ops).run(deadline)
}

/// One linearization on the stack: what is needed to undo it.
struct Choice<S> {
    /// The call entry lifted out of the list.
    call: usize,
    /// The state before it.
    before: S,
    /// Whether the pass had tried an interchangeable operation before it.
    tried_alike: bool,
    /// Taken by "reads first", without alternatives: if the search fails
    /// after it, it fails before it too.
    forced: bool,
}

/// Where the search stands.
struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [Operation<M::Input, M::Output>],
    list: EntryList,
    state: M::State,
    linearized: Bitset,
    memo: Memo<M::State>,
    stack: Vec<Choice<M::State>>,
    /// The next entry the walk looks at.
    cursor: Option<usize>,
    /// Just linearized something: a new configuration, where the walk
    /// starts over from the head (after looking for a read to force).
    fresh: bool,
    /// Whether this pass over the list already tried an interchangeable op.
    tried_alike: bool,
    /// Operations with a known outcome not linearized yet: at 0, done.
    known_left: usize,
    deepest: Deepest,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, ops: &'a [Operation<M::Input, M::Output>]) -> Self {
        let list = EntryList::new(ops);
        Search {
            model,
            ops,
            cursor: list.first(),
            list,
            state: model.init(),
            linearized: Bitset::new(ops.len()),
            memo: Memo::default(),
            stack: Vec::new(),
            fresh: true,
            tried_alike: false,
            known_left: ops.iter().filter(|op| op.ret.is_some()).count(),
            deepest: Deepest::default(),
        }
    }

    fn run(mut self, deadline: Instant) -> Outcome {
        let mut steps = 0u64;
        loop {
            if self.known_left == 0 {
                return Outcome::Linearizable;
            }
            steps += 1;
            if steps.is_multiple_of(CLOCK_EVERY) && Instant::now() > deadline {
                return Outcome::Unknown;
            }
            if self.fresh {
                self.fresh = false;
                self.cursor = self.list.first();
                if let Some((call, next)) = self.enabled_read() {
                    // Seen before, this read's configuration failed: by the
                    // reads-first argument, so does this one.
                    if !self.linearize(call, next, true) && !self.backtrack() {
                        return self.deepest.violation();
                    }
                    continue;
                }
            }
            // Only `None` for an empty history: the returns of unknown
            // operations come last, and reaching one means every known
            // operation is linearized.
            let Some(entry) = self.cursor else {
                return Outcome::Linearizable;
            };
            let op = self.list.entries[entry].op;
            if self.list.entries[entry].is_call {
                self.try_call(entry);
            } else {
                // The return of an operation not linearized yet: back up.
                self.deepest.note(&self.stack, &self.list, op);
                if !self.backtrack() {
                    return self.deepest.violation();
                }
            }
        }
    }

    /// A pending read-only operation the model accepts from here, with the
    /// state after it (the same state, for a read).
    fn enabled_read(&self) -> Option<(usize, M::State)> {
        let mut cursor = self.list.first();
        while let Some(entry) = cursor {
            let Entry { op, is_call, .. } = self.list.entries[entry];
            if !is_call {
                // Past the first return, nothing is pending yet.
                return None;
            }
            let op = &self.ops[op];
            if self.model.read_only(&op.input) {
                if let Some(next) = self.model.step(&self.state, &op.input, &op.output) {
                    return Some((entry, next));
                }
            }
            cursor = self.list.entries[entry].next;
        }
        None
    }

    /// Tries to linearize the operation whose call `entry` the walk reached;
    /// if it cannot, the walk moves on.
    fn try_call(&mut self, entry: usize) {
        let op = &self.ops[self.list.entries[entry].op];
        let alike = self.model.interchangeable(&op.input, &op.output);
        // A read is not accepted here (`enabled_read` would have forced
        // it); an interchangeable op is tried once a pass.
        let skip = self.model.read_only(&op.input) || (alike && self.tried_alike);
        if !skip {
            if let Some(next) = self.model.step(&self.state, &op.input, &op.output) {
                if self.linearize(entry, next, false) {
                    return;
                }
            }
            self.tried_alike |= alike;
        }
        self.cursor = self.list.entries[entry].next;
    }

    /// Linearizes the operation of call entry `call`, reaching `next`,
    /// unless that configuration was seen before (then `false`).
    fn linearize(&mut self, call: usize, next: M::State, forced: bool) -> bool {
        let op = self.list.entries[call].op;
        self.linearized.set(op);
        if !self.memo.insert(&self.linearized, &next) {
            self.linearized.clear(op);
            return false;
        }
        self.stack.push(Choice {
            call,
            before: std::mem::replace(&mut self.state, next),
            tried_alike: self.tried_alike,
            forced,
        });
        self.known_left -= usize::from(self.ops[op].ret.is_some());
        self.list.lift(call);
        self.tried_alike = false;
        self.fresh = true;
        true
    }

    /// Undoes the last choice (and the forced reads on top of it), and sets
    /// the walk to go on after it. `false` if there was none left: no order
    /// exists.
    fn backtrack(&mut self) -> bool {
        while let Some(choice) = self.stack.pop() {
            let op = self.list.entries[choice.call].op;
            self.state = choice.before;
            self.linearized.clear(op);
            self.known_left += usize::from(self.ops[op].ret.is_some());
            self.list.unlift(choice.call);
            if !choice.forced {
                let undone = &self.ops[op];
                self.tried_alike =
                    choice.tried_alike || self.model.interchangeable(&undone.input, &undone.output);
                self.cursor = self.list.entries[choice.call].next;
                return true;
            }
        }
        false
    }
}

/// The deepest point the search reached, for the counterexample.
#[derive(Default)]
struct Deepest {
    longest: Vec<usize>,
    stuck: Vec<usize>,
}

impl Deepest {
    fn note<S>(&mut self, stack: &[Choice<S>], list: &EntryList, stuck_op: usize) {
        if stack.len() > self.longest.len() || self.longest.is_empty() {
            self.longest = stack.iter().map(|c| list.entries[c.call].op).collect();
            self.stuck = vec![stuck_op];
        } else if stack.len() == self.longest.len() && !self.stuck.contains(&stuck_op) {
            self.stuck.push(stuck_op);
        }
    }

    fn violation(self) -> Outcome {
        Outcome::Violation {
            longest: self.longest,
            stuck: self.stuck,
        }
    }
}

/// The configurations seen: by (hash of the set, state), the sets' bits.
/// Two sets with one hash both fit in the bucket, so a collision costs a
/// comparison, never a wrong answer.
struct Memo<S> {
    seen: HashMap<(u64, S), Vec<Box<[u64]>>>,
}

impl<S> Default for Memo<S> {
    fn default() -> Self {
        Memo {
            seen: HashMap::new(),
        }
    }
}

impl<S: Clone + Eq + Hash> Memo<S> {
    /// Records (set, state); `false` if it was there already.
    fn insert(&mut self, set: &Bitset, state: &S) -> bool {
        let bucket = self.seen.entry((set.hash, state.clone())).or_default();
        if bucket.contains(&set.words) {
            return false;
        }
        bucket.push(set.words.clone());
        true
    }
}

/// A call or a return, in a doubly linked list sorted by time.
#[derive(Debug, Clone)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return entry.
    partner: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct EntryList {
    entries: Vec<Entry>,
    head: Option<usize>,
}

impl EntryList {
    fn new<I, O>(ops: &[Operation<I, O>]) -> EntryList {
        // (time, 0 for a call / 1 for a return, op): calls sort first on ties.
        let mut events: Vec<(f64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, 0, i));
            events.push((op.ret.unwrap_or(f64::INFINITY), 1, i));
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut return_of = vec![0; ops.len()];
        for (pos, &(_, kind, op)) in events.iter().enumerate() {
            if kind == 1 {
                return_of[op] = pos;
            }
        }
        let n = events.len();
        let entries = events
            .iter()
            .enumerate()
            .map(|(pos, &(_, kind, op))| Entry {
                op,
                is_call: kind == 0,
                partner: return_of[op],
                prev: pos.checked_sub(1),
                next: (pos + 1 < n).then_some(pos + 1),
            })
            .collect();
        EntryList {
            entries,
            head: (n > 0).then_some(0),
        }
    }

    fn first(&self) -> Option<usize> {
        self.head
    }

    fn unlink(&mut self, e: usize) {
        let (prev, next) = (self.entries[e].prev, self.entries[e].next);
        match prev {
            Some(p) => self.entries[p].next = next,
            None => self.head = next,
        }
        if let Some(n) = next {
            self.entries[n].prev = prev;
        }
    }

    /// Puts `e` back where it was: its own prev/next still point at its
    /// old neighbours, since entries go back in the reverse order of removal.
    fn relink(&mut self, e: usize) {
        let (prev, next) = (self.entries[e].prev, self.entries[e].next);
        match prev {
            Some(p) => self.entries[p].next = Some(e),
            None => self.head = Some(e),
        }
        if let Some(n) = next {
            self.entries[n].prev = Some(e);
        }
    }

    /// Takes a linearized operation's call and return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.entries[call].partner);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.entries[call].partner);
        self.relink(call);
    }
}

/// A set of operation indices, as bits, with its Zobrist hash.
#[derive(Debug, Clone)]
struct Bitset {
    words: Box<[u64]>,
    /// The XOR of [`zobrist`]`(i)` over the members `i`.
    hash: u64,
}

impl Bitset {
    fn new(n: usize) -> Bitset {
        Bitset {
            words: vec![0; n.div_ceil(64)].into_boxed_slice(),
            hash: 0,
        }
    }
    /// Adds `i` (not a member yet).
    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
        self.hash ^= zobrist(i);
    }
    /// Removes `i` (a member).
    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
        self.hash ^= zobrist(i);
    }
}

/// A fixed pseudo-random number for operation `i` (SplitMix64's mixer):
/// sets that differ get different hashes but for a 2^-64 chance.
fn zobrist(i: usize) -> u64 {
    let mut z = (i as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    //! The search against a brute-force oracle: every order of the
    //! operations that respects real time, tried one by one.
    use super::*;
    use crate::check::model::{Input, Output, VersionedRegister};
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};
    use std::collections::HashSet;

    type Op = Operation<Input, Output>;

    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    /// A plain versioned register, written apart from the model under test
    /// (which prunes): a write takes the next version, a read sees the state.
    fn register(state: Option<(u32, u64)>, op: &Op) -> Option<Option<(u32, u64)>> {
        let next = state.map_or(0, |s| s.1) + 1;
        match (op.input, op.output) {
            (Input::Write(v), Output::Written(ver)) => (ver == next).then_some(Some((v, ver))),
            (Input::Write(v), Output::WriteUnknown) => Some(Some((v, next))),
            (Input::Read, Output::Found(v, ver)) => (state == Some((v, ver))).then_some(state),
            (Input::Read, Output::NotFound) => state.is_none().then_some(state),
            _ => None,
        }
    }

    /// Is there an order of all `ops` that respects real time and the
    /// plain register? Every order is tried, one by one; the only shortcut
    /// is to remember the (placed, state) pairs that led nowhere.
    fn oracle(ops: &[Op]) -> bool {
        type Failed = HashSet<(u32, Option<(u32, u64)>)>;
        fn go(ops: &[Op], placed: u32, state: Option<(u32, u64)>, failed: &mut Failed) -> bool {
            let all = (1u32 << ops.len()) - 1;
            if placed == all {
                return true;
            }
            if failed.contains(&(placed, state)) {
                return false;
            }
            let unplaced = |j: usize| placed & (1 << j) == 0;
            for i in (0..ops.len()).filter(|&i| unplaced(i)) {
                // Some unplaced op returned before i was called: it goes first.
                let forced_before = (0..ops.len())
                    .any(|j| unplaced(j) && j != i && ops[j].ret.is_some_and(|r| r < ops[i].call));
                if forced_before {
                    continue;
                }
                if let Some(next) = register(state, &ops[i]) {
                    if go(ops, placed | (1 << i), next, failed) {
                        return true;
                    }
                }
            }
            failed.insert((placed, state));
            false
        }
        assert!(ops.len() < 32);
        go(ops, 0, None, &mut HashSet::new())
    }

    /// A random history of a few concurrent operations on one register:
    /// run for real (each op takes effect at a random point of its
    /// interval), then, half the time, one answer is tampered with.
    fn random_history(rng: &mut SmallRng) -> Vec<Op> {
        let n = rng.random_range(1..=7);
        let mut ops: Vec<(Op, f64)> = (0..n)
            .map(|i| {
                let call = rng.random_range(0..20) as f64;
                let ret = call + rng.random_range(0..8) as f64;
                let point = call + rng.random_range(0.0..=1.0) * (ret - call);
                let input = if rng.random_range(0..2) == 0 {
                    Input::Write(i as u32)
                } else {
                    Input::Read
                };
                let op = Op {
                    call,
                    ret: Some(ret),
                    input,
                    output: Output::NotFound,
                };
                (op, point)
            })
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| ops[a].1.total_cmp(&ops[b].1));
        let mut state: Option<(u32, u64)> = None;
        for &i in &order {
            let op = &mut ops[i].0;
            match op.input {
                Input::Write(v) => {
                    let unknown = rng.random_range(0..3) == 0;
                    // An unknown write sometimes never happens at all.
                    if unknown && rng.random_range(0..2) == 0 {
                        op.output = Output::WriteUnknown;
                        op.ret = None;
                        continue;
                    }
                    let version = state.map_or(0, |s| s.1) + 1;
                    state = Some((v, version));
                    op.output = if unknown {
                        Output::WriteUnknown
                    } else {
                        Output::Written(version)
                    };
                    if unknown {
                        op.ret = None;
                    }
                }
                Input::Read => {
                    op.output = match state {
                        Some((v, ver)) => Output::Found(v, ver),
                        None => Output::NotFound,
                    };
                }
            }
        }
        let mut ops: Vec<Op> = ops.into_iter().map(|(op, _)| op).collect();
        if rng.random_range(0..2) == 0 {
            let i = rng.random_range(0..n);
            ops[i].output = match ops[i].output {
                Output::Found(v, ver) if rng.random_range(0..2) == 0 => {
                    Output::Found(v, ver.saturating_sub(1))
                }
                Output::Found(..) => Output::NotFound,
                Output::NotFound => {
                    Output::Found(rng.random_range(0..n as u32), rng.random_range(1..3))
                }
                Output::Written(ver) => Output::Written(ver + 1),
                Output::WriteUnknown => Output::WriteUnknown,
            };
        }
        ops
    }

    /// What `history::by_key` does: unknown writes nobody read become one
    /// interchangeable kind. The oracle keeps the real values.
    fn unread_as_one(ops: &[Op]) -> Vec<Op> {
        let read = |v: u32| {
            ops.iter()
                .any(|o| matches!(o.output, Output::Found(x, _) if x == v))
        };
        ops.iter()
            .map(|op| match (op.input, op.output) {
                (Input::Write(v), Output::WriteUnknown) if !read(v) => Op {
                    input: Input::Write(crate::check::model::UNREAD),
                    ..op.clone()
                },
                _ => op.clone(),
            })
            .collect()
    }

    #[test]
    fn many_unread_unknown_writes_do_not_explode_the_search() {
        // A leader down for a while: 300 writes time out, then life goes on.
        let mut ops: Vec<Op> = (0..300)
            .map(|i| Op {
                call: i as f64,
                ret: None,
                input: Input::Write(crate::check::model::UNREAD),
                output: Output::WriteUnknown,
            })
            .collect();
        for i in 0..200u32 {
            let t = 1000.0 + 2.0 * i as f64;
            ops.push(w(t, t + 1.0, i, i as u64 + 3));
        }
        let started = Instant::now();
        // Two of the timed-out writes happened (versions 1 and 2).
        assert_eq!(
            check(&VersionedRegister::for_ops(&ops), &ops, far()),
            Outcome::Linearizable
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    /// A busier history, aimed at the pruning rules: 2 to 4 clients with
    /// up to 12 operations back to back, so most of them overlap; several
    /// reads of one state; unknown writes that are read later, or never
    /// (the versions they take are gaps nobody claims), or never happen;
    /// now and then two writes of one value. Then, half the time, damage.
    fn busy_history(rng: &mut SmallRng) -> Vec<Op> {
        let clients = rng.random_range(2..=4);
        let mut free_at = vec![0u32; clients];
        let n = rng.random_range(2..=12);
        // (the op, the moment it takes effect, or None if it never does)
        let mut ops: Vec<(Op, Option<f64>)> = (0..n)
            .map(|i| {
                let client = rng.random_range(0..clients);
                let call = free_at[client] + rng.random_range(0..3);
                let ret = call + rng.random_range(0..6);
                free_at[client] = ret + 1;
                let (call, ret) = (call as f64, ret as f64);
                let mut point = call + rng.random_range(0.0..=1.0) * (ret - call);
                let (input, output, ret) = if rng.random_range(0..2) == 0 {
                    (Input::Read, Output::NotFound, Some(ret))
                } else {
                    // Mostly a value of its own, sometimes an earlier one.
                    let value = if i > 0 && rng.random_range(0..8) == 0 {
                        rng.random_range(0..i as u32)
                    } else {
                        i as u32
                    };
                    match rng.random_range(0..20) {
                        0..12 => (Input::Write(value), Output::Written(0), Some(ret)),
                        outcome => {
                            // Unknown: it may take effect well after the call.
                            point = call + rng.random_range(0.0..10.0);
                            if outcome >= 17 {
                                let op = Op {
                                    call,
                                    ret: None,
                                    input: Input::Write(value),
                                    output: Output::WriteUnknown,
                                };
                                return (op, None);
                            }
                            (Input::Write(value), Output::WriteUnknown, None)
                        }
                    }
                };
                let op = Op {
                    call,
                    ret,
                    input,
                    output,
                };
                (op, Some(point))
            })
            .collect();
        let mut order: Vec<usize> = (0..n).filter(|&i| ops[i].1.is_some()).collect();
        order.sort_by(|&a, &b| ops[a].1.unwrap().total_cmp(&ops[b].1.unwrap()));
        let mut state: Option<(u32, u64)> = None;
        for &i in &order {
            let op = &mut ops[i].0;
            match (op.input, op.output) {
                (Input::Write(v), output) => {
                    let version = state.map_or(0, |s| s.1) + 1;
                    state = Some((v, version));
                    if output != Output::WriteUnknown {
                        op.output = Output::Written(version);
                    }
                }
                (Input::Read, _) => {
                    op.output = match state {
                        Some((v, ver)) => Output::Found(v, ver),
                        None => Output::NotFound,
                    };
                }
            }
        }
        let mut ops: Vec<Op> = ops.into_iter().map(|(op, _)| op).collect();
        if rng.random_range(0..2) == 0 {
            damage(rng, &mut ops);
        }
        ops
    }

    /// One wrong answer, of a kind that the pruning rules look at.
    fn damage(rng: &mut SmallRng, ops: &mut [Op]) {
        let n = ops.len();
        let i = rng.random_range(0..n);
        let j = rng.random_range(0..n);
        let other_value = match ops[j].input {
            Input::Write(v) => v,
            Input::Read => n as u32,
        };
        let top = ops
            .iter()
            .filter_map(|op| match op.output {
                Output::Written(v) | Output::Found(_, v) => Some(v),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        ops[i].output = match (ops[i].output, rng.random_range(0..4)) {
            // A stale read, or one a version ahead.
            (Output::Found(v, ver), 0) => Output::Found(v, ver - 1),
            (Output::Found(v, ver), 1) => Output::Found(v, ver + 1),
            // Another write's value (maybe one that never happened), at a
            // version someone else may claim.
            (Output::Found(..) | Output::NotFound, _) => {
                Output::Found(other_value, rng.random_range(1..=top + 1))
            }
            (Output::Written(ver), 0) => Output::Written(ver + 1),
            (Output::Written(ver), _) => Output::Written(ver.max(2) - 1),
            (Output::WriteUnknown, _) => Output::Written(rng.random_range(1..=top + 1)),
        };
        if ops[i].ret.is_none() {
            ops[i].ret = Some(ops[i].call + 1.0);
        }
    }

    /// Runs `rounds` histories from `generate` through the checker and the
    /// oracle; returns how many were valid and invalid.
    fn compare(generate: fn(&mut SmallRng) -> Vec<Op>, seed: u64, rounds: usize) -> (usize, usize) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut valid, mut invalid) = (0, 0);
        for round in 0..rounds {
            let ops = generate(&mut rng);
            let expected = oracle(&ops);
            let canonical = unread_as_one(&ops);
            let got = check(&VersionedRegister::for_ops(&canonical), &canonical, far());
            assert!(
                (got == Outcome::Linearizable) == expected,
                "round {round}: checker says {got:?}, oracle says {expected}, history {ops:#?}"
            );
            if expected {
                valid += 1
            } else {
                invalid += 1
            }
        }
        (valid, invalid)
    }

    #[test]
    fn agrees_with_the_brute_force_oracle_on_random_histories() {
        let (valid, invalid) = compare(random_history, 11, 5000);
        // Both kinds of history were exercised.
        assert!(
            valid > 1000 && invalid > 1000,
            "valid {valid}, invalid {invalid}"
        );
    }

    #[test]
    fn agrees_with_the_oracle_on_busy_histories() {
        let (valid, invalid) = compare(busy_history, 12, 20_000);
        assert!(
            valid > 5000 && invalid > 5000,
            "valid {valid}, invalid {invalid}"
        );
    }

    fn w(call: f64, ret: f64, v: u32, ver: u64) -> Op {
        Op {
            call,
            ret: Some(ret),
            input: Input::Write(v),
            output: Output::Written(ver),
        }
    }
    fn r(call: f64, ret: f64, v: u32, ver: u64) -> Op {
        Op {
            call,
            ret: Some(ret),
            input: Input::Read,
            output: Output::Found(v, ver),
        }
    }

    #[test]
    fn a_stale_read_is_a_violation_and_names_the_read() {
        // w(1)@v1, then w(2)@v2 acknowledged, then a read returning v1.
        let ops = vec![w(0.0, 1.0, 1, 1), w(2.0, 3.0, 2, 2), r(4.0, 5.0, 1, 1)];
        match check(&VersionedRegister::unbounded(), &ops, far()) {
            Outcome::Violation { stuck, longest } => {
                assert_eq!(longest, vec![0, 1]);
                assert!(stuck.contains(&2), "stuck {stuck:?}");
            }
            other => panic!("{other:?}"),
        }
        // Overlapping the write, the same read is fine.
        let ops = vec![w(0.0, 1.0, 1, 1), w(2.0, 5.0, 2, 2), r(4.0, 5.0, 1, 1)];
        assert_eq!(
            check(&VersionedRegister::unbounded(), &ops, far()),
            Outcome::Linearizable
        );
    }

    #[test]
    fn an_unknown_write_may_show_up_late_or_never() {
        let unknown = Op {
            call: 0.0,
            ret: None,
            input: Input::Write(1),
            output: Output::WriteUnknown,
        };
        let never = vec![
            unknown.clone(),
            Op {
                call: 5.0,
                ret: Some(6.0),
                input: Input::Read,
                output: Output::NotFound,
            },
        ];
        assert_eq!(
            check(&VersionedRegister::unbounded(), &never, far()),
            Outcome::Linearizable
        );
        let late = vec![unknown, r(100.0, 101.0, 1, 1)];
        assert_eq!(
            check(&VersionedRegister::unbounded(), &late, far()),
            Outcome::Linearizable
        );
    }

    #[test]
    fn the_deadline_gives_unknown() {
        let ops: Vec<Op> = (0..20_000)
            .map(|i| w(i as f64, i as f64 + 0.5, i, i as u64 + 1))
            .collect();
        assert_eq!(
            check(&VersionedRegister::unbounded(), &ops, Instant::now()),
            Outcome::Unknown
        );
        assert_eq!(
            check(&VersionedRegister::unbounded(), &ops, far()),
            Outcome::Linearizable
        );
    }
}
