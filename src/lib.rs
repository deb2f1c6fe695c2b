//! kvlab: a replicated key-value store built as a distributed-systems lab.
//!
//! One library, one binary. Each component lives in its own module and is
//! started by a `kvlab <component>` subcommand (see `main.rs`).

pub mod api;
pub mod assess;
pub mod auth;
pub mod bench;
pub mod check;
pub mod child_cluster;
pub mod client;
pub mod control;
pub mod coordinator;
pub mod events;
pub mod gate;
pub mod gateway;
pub mod grade_node;
pub mod hosts;
pub mod http;
pub mod lab;
pub mod labconfig;
pub mod metrics;
pub mod node;
pub mod process;
pub mod ratelimit;
pub mod registry;
pub mod storage;
pub mod tls;
pub mod up;
