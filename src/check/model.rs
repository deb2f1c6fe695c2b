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

use super::linearizability::Model;

/// An interned value (its index in the history's value table).
pub type ValueId = u32;

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
#[derive(Debug, Clone, Copy, Default)]
pub struct VersionedRegister;

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
            (Input::Write(value), Output::WriteUnknown) => Some(Some((*value, version + 1))),
            (Input::Read, Output::Found(value, v)) if *state == Some((*value, *v)) => Some(*state),
            (Input::Read, Output::NotFound) if state.is_none() => Some(None),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_take_the_next_version_and_reads_see_them() {
        let m = VersionedRegister;
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
    }
}
