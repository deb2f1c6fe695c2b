//! The sequential specification the cluster must look like: one versioned
//! register per key.
//!
//! A key starts absent (version 0). A write of a value makes it the key's
//! value, with the next version. A read returns the value and version, or
//! "not found" while absent. Values are unique in a workload, so they are
//! interned as numbers to keep states small (the checker stores many).
//!
//! An acknowledged write reports its version, which the model holds it to;
//! a write of unknown outcome takes whatever version comes next.
//!
//! Pruning. The search (see `linearizability`) tries every write that may
//! step from the current state; most of those tries lead nowhere, and on a
//! busy key they multiply. Versions tell the model early which ones lead
//! nowhere, so it refuses them. Each rule only refuses a step after which
//! no linearization of the whole history exists, so a history is accepted
//! with the rules exactly when it is accepted without them:
//!
//! 1. *Past the top.* An unknown write may not take the key past the
//!    highest version any known operation reported. Past it, no known
//!    operation could follow (versions only grow), so such a write can only
//!    be one that never took effect, and the search already allows for
//!    those.
//! 2. *Claimed versions.* When a known operation reported version `v` with
//!    value `x` (a write acknowledged at `v`, or a read that returned `x` at
//!    `v`), only a write of `x` may take the key to version `v`. Why: that
//!    operation must be linearized, so the state `(x, v)` must appear in
//!    the order; the one step that reaches version `v` is the write that
//!    takes it (every write adds one, nothing goes back), so that write
//!    writes `x`. If two known operations claim `v` for different values,
//!    no order exists at all, and refusing more changes nothing.
//! 3. *Pinned writes.* When a read returned `x` at version `v` and exactly
//!    one write writes `x`, that write may only take version `v`: by rule
//!    2's argument the state `(x, v)` must appear, and only this write can
//!    make it.
//!
//! Rules 2 and 3 make each write's version all but fixed, which leaves
//! the search little to choose: on one busy key it goes from minutes to
//! milliseconds (see `benches/checker.rs`).

use std::collections::HashMap;

use super::linearizability::{Model, Operation};

/// An interned value (its index in the history's value table).
pub type ValueId = u32;

/// The value of every unknown write whose value no read returned. Such
/// writes matter only by the version they may take, so they are
/// interchangeable (see [`Model::interchangeable`]).
pub const UNREAD: ValueId = ValueId::MAX;

/// The state of one key: absent, or a value at a version.
pub type RegisterState = Option<(ValueId, u64)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Write(ValueId),
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Acknowledged with this version.
    Written(u64),
    /// The write's fate is unknown (the operation's return is infinity).
    WriteUnknown,
    Found(ValueId, u64),
    NotFound,
}

/// The versioned register, with what the history tells about versions
/// (for the pruning rules of the module doc).
#[derive(Debug, Clone, Default)]
pub struct VersionedRegister {
    /// The highest version an operation with a known outcome reported
    /// (rule 1).
    pub max_version: u64,
    /// Version -> the value that a known operation reported at it (rule 2).
    claims: HashMap<u64, ValueId>,
    /// Value -> the one version its single write can take (rule 3).
    pins: HashMap<ValueId, u64>,
    /// The key's state when the history began (absent, unless the run read
    /// it first: `kvlab check --no-start-cluster` on a used cluster).
    pub start: RegisterState,
}

impl VersionedRegister {
    /// Without any pruning (for tests that compare against it).
    pub fn unbounded() -> VersionedRegister {
        VersionedRegister {
            max_version: u64::MAX,
            ..VersionedRegister::default()
        }
    }

    /// The register for one key's history, with its pruning rules.
    pub fn for_ops(ops: &[Operation<Input, Output>]) -> VersionedRegister {
        let mut model = VersionedRegister::default();
        let mut writers: HashMap<ValueId, usize> = HashMap::new();
        for op in ops {
            if let Input::Write(value) = op.input {
                *writers.entry(value).or_default() += 1;
            }
        }
        // Only operations with a known outcome must be linearized, so only
        // they say anything for certain.
        for op in ops.iter().filter(|op| op.ret.is_some()) {
            let (value, version) = match (op.input, op.output) {
                (Input::Write(value), Output::Written(v)) => (value, v),
                (Input::Read, Output::Found(value, v)) => {
                    if writers.get(&value) == Some(&1) {
                        model.pins.entry(value).or_insert(v);
                    }
                    (value, v)
                }
                _ => continue,
            };
            model.max_version = model.max_version.max(version);
            model.claims.entry(version).or_insert(value);
        }
        model
    }

    /// May a write of `value` take the key to `version` (rules 2 and 3)?
    fn may_take(&self, value: ValueId, version: u64) -> bool {
        self.claims.get(&version).is_none_or(|c| *c == value)
            && self.pins.get(&value).is_none_or(|p| *p == version)
    }
}

impl Model for VersionedRegister {
    type State = RegisterState;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> RegisterState {
        self.start
    }

    fn step(&self, state: &RegisterState, input: &Input, output: &Output) -> Option<RegisterState> {
        let next = state.map_or(0, |(_, v)| v) + 1;
        match (input, output) {
            (Input::Write(value), Output::Written(v))
                if *v == next && self.may_take(*value, next) =>
            {
                Some(Some((*value, next)))
            }
            (Input::Write(value), Output::WriteUnknown)
                if next <= self.max_version && self.may_take(*value, next) =>
            {
                Some(Some((*value, next)))
            }
            (Input::Read, Output::Found(value, v))
                if *value != UNREAD && *state == Some((*value, *v)) =>
            {
                Some(*state)
            }
            (Input::Read, Output::NotFound) if state.is_none() => Some(None),
            _ => None,
        }
    }

    fn interchangeable(&self, input: &Input, output: &Output) -> bool {
        *input == Input::Write(UNREAD) && *output == Output::WriteUnknown
    }

    fn read_only(&self, input: &Input) -> bool {
        *input == Input::Read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(input: Input, output: Output, ret: Option<f64>) -> Operation<Input, Output> {
        Operation {
            call: 0.0,
            ret,
            input,
            output,
        }
    }

    #[test]
    fn writes_take_the_next_version_and_reads_see_them() {
        let m = VersionedRegister {
            max_version: 2,
            ..VersionedRegister::default()
        };
        let s = m.init();
        assert_eq!(m.step(&s, &Input::Read, &Output::NotFound), Some(None));
        assert_eq!(m.step(&s, &Input::Write(7), &Output::Written(2)), None);
        let s = m.step(&s, &Input::Write(7), &Output::Written(1)).unwrap();
        assert_eq!(s, Some((7, 1)));
        assert!(m.step(&s, &Input::Read, &Output::Found(7, 1)).is_some());
        assert!(m.step(&s, &Input::Read, &Output::Found(7, 2)).is_none());
        assert!(m.step(&s, &Input::Read, &Output::NotFound).is_none());
        let s = m.step(&s, &Input::Write(8), &Output::WriteUnknown).unwrap();
        assert_eq!(s, Some((8, 2)));
        // Past the highest version anyone saw, an unknown write never fits.
        assert_eq!(m.step(&s, &Input::Write(9), &Output::WriteUnknown), None);
    }

    #[test]
    fn a_key_can_start_with_a_value_from_before_the_run() {
        let m = VersionedRegister {
            max_version: 9,
            start: Some((0, 7)),
            ..VersionedRegister::default()
        };
        let s = m.init();
        assert!(m.step(&s, &Input::Read, &Output::Found(0, 7)).is_some());
        assert!(m.step(&s, &Input::Read, &Output::NotFound).is_none());
        assert_eq!(m.step(&s, &Input::Write(1), &Output::Written(1)), None);
        assert_eq!(
            m.step(&s, &Input::Write(1), &Output::Written(8)),
            Some(Some((1, 8)))
        );
    }

    #[test]
    fn a_version_someone_reported_goes_only_to_its_value() {
        let ops = [
            op(Input::Write(1), Output::Written(2), Some(1.0)),
            op(Input::Read, Output::Found(3, 4), Some(1.0)),
            // Written once, and read at version 4: it can only take 4.
            op(Input::Write(3), Output::WriteUnknown, None),
            op(Input::Write(UNREAD), Output::WriteUnknown, None),
            // An unknown op says nothing for certain: version 3 stays free.
            op(Input::Read, Output::Found(5, 3), None),
        ];
        let m = VersionedRegister::for_ops(&ops);
        assert_eq!(m.max_version, 4);
        let (v1, v2, v3) = (Some((UNREAD, 1)), Some((1, 2)), Some((UNREAD, 3)));
        let unread = (Input::Write(UNREAD), Output::WriteUnknown);
        let three = (Input::Write(3), Output::WriteUnknown);
        // Version 1 is free, 2 is claimed by value 1, 3 is free, 4 by value 3.
        assert_eq!(m.step(&None, &unread.0, &unread.1), Some(v1));
        assert_eq!(m.step(&None, &three.0, &three.1), None);
        assert_eq!(m.step(&v1, &unread.0, &unread.1), None);
        assert_eq!(m.step(&v2, &unread.0, &unread.1), Some(v3));
        assert_eq!(m.step(&v2, &three.0, &three.1), None);
        assert_eq!(m.step(&v3, &unread.0, &unread.1), None);
        assert_eq!(m.step(&v3, &three.0, &three.1), Some(Some((3, 4))));
        // Without the rules, every write takes the next version.
        let free = VersionedRegister::unbounded();
        assert_eq!(
            free.step(&v1, &unread.0, &unread.1),
            Some(Some((UNREAD, 2)))
        );
        assert_eq!(free.step(&None, &three.0, &three.1), Some(Some((3, 1))));
    }
}
