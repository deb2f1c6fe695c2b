//! `kvlab check`: a Jepsen-style checker of a real cluster.
pub mod explain;
pub mod history;
pub mod workload;
pub mod linearizability;
pub mod model;
pub mod nemesis;
pub mod observe;
pub mod verdict;
