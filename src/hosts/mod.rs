//! Where nodes run besides plain processes on this machine. Each module
//! places the nodes the coordinator starts somewhere else and undoes it:
//! [`docker`] runs them as containers on a private Docker network.

pub mod docker;
