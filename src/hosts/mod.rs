//! Where the nodes run. By default each node is a plain process on the
//! coordinator's address; [`netns`] puts each one in a network namespace of
//! its own, with a real address and a real link that faults can cut or slow.

mod delayer;
pub mod netns;
