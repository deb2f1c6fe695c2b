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
//! One pruning rule keeps unknown writes from blowing up the search: an
//! unknown write may not take the key past the highest version any known
//! operation reported. Past it, no known operation could follow (versions
//! only grow), so such a write can only be one that never took effect,
//! and the search already allows for those (see `linearizability`).

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

/// The versioned register.
#[derive(Debug, Clone, Copy)]
pub struct VersionedRegister {
    /// The highest version an operation with a known outcome reported.
    pub max_version: u64,
}

impl VersionedRegister {
    /// Without the pruning bound (for tests that compare against it).
    pub const UNBOUNDED: VersionedRegister = VersionedRegister {
        max_version: u64::MAX,
    };

    /// The register for one key's history, with its pruning bound.
    pub fn for_ops(ops: &[Operation<Input, Output>]) -> VersionedRegister {
        let max_version = ops
            .iter()
            .filter_map(|op| match op.output {
                Output::Written(v) | Output::Found(_, v) => Some(v),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        VersionedRegister { max_version }
    }
}

impl Model for VersionedRegister {
    type State = RegisterState;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> RegisterState {
        None
    }

    fn step(&self, state: &RegisterState, input: &Input, output: &Output) -> Option<RegisterState> {
        let version = state.map_or(0, |(_, v)| v);
        match (input, output) {
            (Input::Write(value), Output::Written(v)) if *v == version + 1 => {
                Some(Some((*value, *v)))
            }
            (Input::Write(value), Output::WriteUnknown) if version < self.max_version => {
                Some(Some((*value, version + 1)))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_take_the_next_version_and_reads_see_them() {
        let m = VersionedRegister { max_version: 2 };
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
}
