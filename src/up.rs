//! `kvlab up`: a whole cluster with one command.
//!
//! The gateway, the registry and the coordinator run inside this process (they
//! are small and stateless apart from what the nodes report); the coordinator then
//! starts the leader and the followers as separate processes, exactly as when
//! the components are started one by one. Ctrl-C stops everything; if this
//! process is killed outright, the nodes die with it (parent-death signal).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

use crate::api::ports;
use crate::coordinator::{self, ClusterArgs, Coordinator};
use crate::gateway::{self, Gateway, RateLimitArgs};
use crate::registry::{self, Registry};

#[derive(Debug, Clone, Parser)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = ports::COORDINATOR)]
    pub coordinator_port: u16,
    #[arg(long, default_value_t = ports::REGISTRY)]
    pub registry_port: u16,
    #[arg(long, default_value_t = ports::GATEWAY)]
    pub gateway_port: u16,
    #[command(flatten)]
    pub rate: RateLimitArgs,
    /// Replace dead followers automatically.
    #[arg(long)]
    pub auto_spawn: bool,
    /// Seconds to wait before replacing a dead follower.
    #[arg(long, default_value_t = 5.0)]
    pub spawn_delay: f64,
    /// Where node log files go.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Do not narrate events on the console.
    #[arg(long)]
    pub quiet: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.cluster.validate()?;
    let registry_url = format!("http://{}:{}", args.host, args.registry_port);
    let coordinator_url = format!("http://{}:{}", args.host, args.coordinator_port);
    let registry_args = registry::Args {
        port: args.registry_port,
        host: args.host,
        coordinator: coordinator_url.clone(),
        auto_spawn: args.auto_spawn,
        spawn_delay: args.spawn_delay,
        timeout: 5.0,
    };
    let coordinator_args = coordinator::Args {
        port: args.coordinator_port,
        host: args.host,
        cluster: args.cluster.clone(),
        registry: registry_url.clone(),
        log_dir: args.log_dir.clone(),
        quiet: args.quiet,
    };
    let gateway_args = gateway::Args {
        port: args.gateway_port,
        host: args.host,
        coordinator: coordinator_url.clone(),
        rate: args.rate.clone(),
        timeout: 30.0,
    };
    let registry_config = registry::Config::from_args(&registry_args)?;
    let coordinator_config = coordinator::Config::from_args(&coordinator_args)?;
    let gateway = Gateway::new(gateway::Config::from_args(&gateway_args)?)?;
    // Bind all three first, so a taken port is reported before anything starts.
    let registry_listener =
        crate::http::bind(SocketAddr::new(args.host, args.registry_port)).await?;
    let coordinator_listener =
        crate::http::bind(SocketAddr::new(args.host, args.coordinator_port)).await?;
    let gateway_listener = crate::http::bind(SocketAddr::new(args.host, args.gateway_port)).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let registry = tokio::spawn(registry::serve(
        Registry::new(registry_config),
        registry_listener,
        stopped(),
    ));
    println!("kvlab up: gateway {}", gateway::describe(&gateway));
    let gateway = tokio::spawn(gateway::serve(gateway, gateway_listener, stopped()));
    let coordinator = Coordinator::new(coordinator_config);
    println!(
        "kvlab up: coordinator {coordinator_url}, registry {registry_url}. Ctrl-C stops the cluster."
    );
    let mut cluster = tokio::spawn(coordinator::serve(
        coordinator,
        coordinator_listener,
        stopped(),
    ));
    // Runs until Ctrl-C / SIGTERM, or until the cluster fails to start.
    let result = tokio::select! {
        _ = crate::http::shutdown_signal() => {
            let _ = stop_tx.send(true);
            cluster.await?
        }
        finished = &mut cluster => finished?,
    };
    registry.abort();
    gateway.abort();
    result
}
