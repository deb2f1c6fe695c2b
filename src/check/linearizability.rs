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
//!   fully describes where the search stands, so a pair seen before is never
//!   explored twice. The set is a bitset over the operations.
//!
//! Operations with an unknown outcome (a write that timed out: it may have
//! taken effect at any time after its call, or never) get a return time of
//! infinity, as Porcupine does: nothing is ever forced after them. Once
//! every operation with a known outcome is linearized, the search stops with
//! success: the unknown ones left over are those that never took effect
//! (Porcupine would linearize them at the very end, to the same effect).
//!
//! The search is exponential in the worst case, so it runs against a
//! deadline; past it, the verdict is [`Outcome::Unknown`].

use std::collections::HashSet;
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
    let mut list = EntryList::new(ops);
    let mut state = model.init();
    let mut linearized = Bitset::new(ops.len());
    let mut cache: HashSet<(Bitset, M::State)> = HashSet::new();
    // (the call entry lifted, the state before it, `tried_alike` then)
    let mut stack: Vec<(usize, M::State, bool)> = Vec::new();
    // Whether this pass over the list already tried an interchangeable op.
    let mut tried_alike = false;
    let mut deepest = Deepest::default();
    let mut steps = 0u64;
    // Operations with a known outcome not linearized yet: at 0, done.
    let mut known_left = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut cursor = list.first();
    while let Some(entry) = cursor {
        if known_left == 0 {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(CLOCK_EVERY) && Instant::now() > deadline {
            return Outcome::Unknown;
        }
        let op = list.entries[entry].op;
        if list.entries[entry].is_call {
            let alike = model.interchangeable(&ops[op].input, &ops[op].output);
            if alike && tried_alike {
                cursor = list.entries[entry].next;
                continue;
            }
            let next_state = model.step(&state, &ops[op].input, &ops[op].output);
            if let Some(next_state) = next_state {
                let mut with = linearized.clone();
                with.set(op);
                if !cache.contains(&(with.clone(), next_state.clone())) {
                    cache.insert((with.clone(), next_state.clone()));
                    stack.push((
                        entry,
                        std::mem::replace(&mut state, next_state),
                        tried_alike,
                    ));
                    linearized = with;
                    known_left -= usize::from(ops[op].ret.is_some());
                    list.lift(entry);
                    cursor = list.first();
                    tried_alike = false;
                    continue;
                }
            }
            tried_alike |= alike;
            cursor = list.entries[entry].next;
        } else {
            // The return of an operation not linearized yet: back up.
            deepest.note(&stack, &list, op);
            let Some((call, previous, alike_before)) = stack.pop() else {
                return deepest.violation(&list);
            };
            let undone = list.entries[call].op;
            tried_alike =
                alike_before || model.interchangeable(&ops[undone].input, &ops[undone].output);
            state = previous;
            linearized.clear(undone);
            known_left += usize::from(ops[undone].ret.is_some());
            list.unlift(call);
            cursor = list.entries[call].next;
        }
    }
    // Only reached for an empty history.
    Outcome::Linearizable
}

/// The deepest point the search reached, for the counterexample.
#[derive(Default)]
struct Deepest {
    longest: Vec<usize>,
    stuck: Vec<usize>,
}

impl Deepest {
    fn note<S>(&mut self, stack: &[(usize, S, bool)], list: &EntryList, stuck_op: usize) {
        if stack.len() > self.longest.len() || self.longest.is_empty() {
            self.longest = stack.iter().map(|(e, _, _)| list.entries[*e].op).collect();
            self.stuck = vec![stuck_op];
        } else if stack.len() == self.longest.len() && !self.stuck.contains(&stuck_op) {
            self.stuck.push(stuck_op);
        }
    }

    fn violation(self, _list: &EntryList) -> Outcome {
        Outcome::Violation {
            longest: self.longest,
            stuck: self.stuck,
        }
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

/// A set of operation indices, as bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(n: usize) -> Bitset {
        Bitset(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

#[cfg(test)]
mod tests {
    //! The search against a brute-force oracle: every order of the
    //! operations that respects real time, tried one by one.
    use super::*;
    use crate::check::model::{Input, Output, VersionedRegister};
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};

    type Op = Operation<Input, Output>;

    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    /// Is there an order of all `ops` that respects real time and the model?
    fn oracle(ops: &[Op]) -> bool {
        fn go(ops: &[Op], placed: &mut Vec<bool>, state: Option<(u32, u64)>) -> bool {
            if placed.iter().all(|p| *p) {
                return true;
            }
            for i in 0..ops.len() {
                if placed[i] {
                    continue;
                }
                // Some unplaced op returned before i was called: it goes first.
                let forced_before = (0..ops.len())
                    .any(|j| !placed[j] && j != i && ops[j].ret.is_some_and(|r| r < ops[i].call));
                if forced_before {
                    continue;
                }
                if let Some(next) =
                    VersionedRegister::UNBOUNDED.step(&state, &ops[i].input, &ops[i].output)
                {
                    placed[i] = true;
                    if go(ops, placed, next) {
                        return true;
                    }
                    placed[i] = false;
                }
            }
            false
        }
        go(ops, &mut vec![false; ops.len()], None)
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

    #[test]
    fn agrees_with_the_brute_force_oracle_on_random_histories() {
        let mut rng = SmallRng::seed_from_u64(11);
        let (mut valid, mut invalid) = (0, 0);
        for round in 0..5000 {
            let ops = random_history(&mut rng);
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
        // Both kinds of history were exercised.
        assert!(
            valid > 1000 && invalid > 1000,
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
        match check(&VersionedRegister::UNBOUNDED, &ops, far()) {
            Outcome::Violation { stuck, longest } => {
                assert_eq!(longest, vec![0, 1]);
                assert!(stuck.contains(&2), "stuck {stuck:?}");
            }
            other => panic!("{other:?}"),
        }
        // Overlapping the write, the same read is fine.
        let ops = vec![w(0.0, 1.0, 1, 1), w(2.0, 5.0, 2, 2), r(4.0, 5.0, 1, 1)];
        assert_eq!(
            check(&VersionedRegister::UNBOUNDED, &ops, far()),
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
            check(&VersionedRegister::UNBOUNDED, &never, far()),
            Outcome::Linearizable
        );
        let late = vec![unknown, r(100.0, 101.0, 1, 1)];
        assert_eq!(
            check(&VersionedRegister::UNBOUNDED, &late, far()),
            Outcome::Linearizable
        );
    }

    #[test]
    fn the_deadline_gives_unknown() {
        let ops: Vec<Op> = (0..20_000)
            .map(|i| w(i as f64, i as f64 + 0.5, i, i as u64 + 1))
            .collect();
        assert_eq!(
            check(&VersionedRegister::UNBOUNDED, &ops, Instant::now()),
            Outcome::Unknown
        );
        assert_eq!(
            check(&VersionedRegister::UNBOUNDED, &ops, far()),
            Outcome::Linearizable
        );
    }
}
