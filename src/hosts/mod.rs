//! Where the nodes run. By default each node is a plain process on the
//! coordinator's address. The modules here place them somewhere else and
//! undo it when the cluster stops:
//! - [`netns`] puts each node in a network namespace of its own, with a real
//!   address and a real link that faults can cut or slow;
//! - [`docker`] runs them as containers on a private Docker network.

mod delayer;
pub mod docker;
pub mod netns;
