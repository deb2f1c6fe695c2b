//! `kvlab up`: a whole cluster with one command.
//!
//! The gateway, the registry and the coordinator run inside this process (they
//! are small and stateless apart from what the nodes report); the coordinator then
//! starts the leader and the followers as separate processes, exactly as when
//! the components are started one by one. Ctrl-C stops everything; if this
//! process is killed outright, the nodes die with it (parent-death signal).
//!
//! Since the coordinator is right here, the gateway calls its router directly
//! instead of over loopback HTTP ([`Gateway::in_process`]): same answers, a
//! fraction of the CPU. The coordinator still listens on its own port, for
//! the registry, the client and course scripts.
//!
//! `kvlab up --ha` is the other way round: every component in its own
//! process, three coordinators on etcd, so that any one can die (see [`ha`]).

mod ha;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use futures::future::BoxFuture;

use crate::api::{ports, ReadResponse, WriteRequest, WriteResponse};
use crate::coordinator::{self, ClusterArgs, Coordinator};
use crate::gateway::{self, Gateway, LocalCoordinator, RateLimitArgs};
use crate::hosts::netns::NetnsHosts;
use crate::http::ApiError;
use crate::labconfig::StudentConfig;
use crate::registry::{self, Registry};

#[derive(Debug, Clone, Parser)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Address every component listens on (and nodes are started on).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The coordinator's port (membership, writes, reads, the event log).
    #[arg(long, default_value_t = ports::COORDINATOR)]
    pub coordinator_port: u16,
    /// The registry's port (heartbeats, failure detection).
    #[arg(long, default_value_t = ports::REGISTRY)]
    pub registry_port: u16,
    /// The gateway's port: the one clients need.
    #[arg(long, default_value_t = ports::GATEWAY)]
    pub gateway_port: u16,
    #[command(flatten)]
    pub rate: RateLimitArgs,
    /// Replace dead followers automatically.
    #[arg(long)]
    pub auto_spawn: bool,
    /// Seconds to wait before replacing a dead follower.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5.0)]
    pub spawn_delay: f64,
    /// Seconds of heartbeat silence after which the registry declares a
    /// node dead (and, for the leader, failover begins). Nodes heartbeat at
    /// least three times per timeout.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 5.0,
        value_name = "S"
    )]
    pub failure_timeout: f64,
    /// Where node log files go.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Do not narrate events on the console.
    #[arg(long)]
    pub quiet: bool,
    /// Take followers, quorums, auto-spawn and rate limiting from the lab's
    /// student config file (its settings win over the flags).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write a Prometheus scrape config for this cluster to FILE: the
    /// gateway, coordinator and registry, and the nodes (found through the
    /// coordinator's `/metrics/targets`, so respawned ones are followed).
    #[arg(long, value_name = "FILE")]
    pub prometheus_config: Option<PathBuf>,
    #[command(flatten)]
    pub secret: crate::auth::SecretArgs,
    #[command(flatten)]
    pub admin: crate::auth::AdminArgs,
    /// TLS (see `tls`): with `auto`, every listener off loopback speaks TLS
    /// only. Without --tls-ca/--tls-cert/--tls-key, `up` makes a cluster CA
    /// and a certificate for the run in `<temp dir>/kvlab-<coordinator
    /// port>/tls`.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Where the nodes run: `processes` (on this address) or `netns` (each
    /// in its own network namespace and address, joined by a bridge; root
    /// only). Netns hosts make partitions and slow links real packets.
    #[arg(long, value_enum, default_value_t = Hosts::Processes)]
    pub hosts: Hosts,
    /// How the lab's replication delays happen: `timer` (the leader holds
    /// each entry) or `netem` (real link latency on the leader's links;
    /// needs `--hosts netns`).
    #[arg(long, value_enum, default_value_t = LabDelays::Timer)]
    pub lab_delays: LabDelays,
    /// A control plane that survives its coordinator: every component in
    /// its own process, a 3-member etcd (needs `etcd` on the PATH: `apt
    /// install etcd-server`), 3 coordinators (on --coordinator-port, +10,
    /// +20; one active, two standbys), a registry and 2 gateways
    /// (--gateway-port and the port below it); etcd's members on
    /// --coordinator-port + 30 to + 35. A process that dies is started again.
    #[arg(long)]
    pub ha: bool,
    /// With --ha: seconds of the active coordinator's lease in etcd (how
    /// long a dead one keeps the standbys waiting).
    #[arg(long, value_name = "S", default_value_t = 3, requires = "ha")]
    pub lease_ttl: u64,
}

/// `kvlab up --hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hosts {
    Processes,
    Netns,
}

/// `kvlab up --lab-delays`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabDelays {
    Timer,
    Netem,
}

impl Args {
    /// Applies a student config's settings on top of the flags.
    pub fn apply(&mut self, c: &StudentConfig) {
        let d = &c.deployment;
        set(&mut self.cluster.followers, d.followers);
        set(&mut self.cluster.write_quorum, d.write_quorum);
        set(&mut self.cluster.read_quorum, d.read_quorum);
        set(&mut self.auto_spawn, d.auto_spawn);
        set(&mut self.spawn_delay, d.auto_spawn_delay);
        let g = &c.gateway;
        set(&mut self.rate.rate_limit, g.rate_limit_enabled);
        set(&mut self.rate.rate_limit_max, g.rate_limit_max);
        set(&mut self.rate.rate_limit_window, g.rate_limit_window);
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    if let Some(path) = args.config.clone() {
        let config = StudentConfig::load(&path)?;
        args.apply(&config);
        println!(
            "kvlab up: settings from {}: {} followers, W={} R={}, auto-spawn {} (delay {} s), \
             rate limit {} ({} per {} s)",
            path.display(),
            args.cluster.followers,
            args.cluster.write_quorum,
            args.cluster.read_quorum,
            if args.auto_spawn { "on" } else { "off" },
            args.spawn_delay,
            if args.rate.rate_limit { "on" } else { "off" },
            args.rate.rate_limit_max,
            args.rate.rate_limit_window,
        );
    }
    args.cluster.validate()?;
    if !args.failure_timeout.is_finite() || !(0.1..=3600.0).contains(&args.failure_timeout) {
        anyhow::bail!(
            "--failure-timeout must be between 0.1 and 3600 seconds, got {}",
            args.failure_timeout
        );
    }
    let beats = args.failure_timeout / 3.0;
    if args.cluster.heartbeat_interval > beats {
        args.cluster.heartbeat_interval = beats;
    }
    if args.ha {
        return ha::run(&args).await;
    }
    args.check_port_collisions()?;
    if let Some(warning) =
        ephemeral_range().and_then(|range| ephemeral_warning(&args.ports(), range))
    {
        eprintln!("kvlab up: warning: {warning}");
    }
    // Removes the namespaces, veths and bridge on every way out of here.
    let netns = netns_hosts(&args)?;
    let tls = tls_settings(&args, netns.as_ref().map(|g| &*g.0))?;
    let registry_url = crate::tls::url(registry_host(&args), args.host, args.registry_port);
    let coordinator_url = crate::tls::url(args.host, args.host, args.coordinator_port);
    let registry_args = registry::Args {
        port: args.registry_port,
        host: args.host,
        coordinator: vec![coordinator_url.clone()],
        auto_spawn: args.auto_spawn,
        spawn_delay: args.spawn_delay,
        timeout: args.failure_timeout,
        secret: args.secret.clone(),
        tls: tls.clone(),
    };
    let coordinator_args = coordinator::Args {
        port: args.coordinator_port,
        host: args.host,
        cluster: args.cluster.clone(),
        registry: registry_url.clone(),
        log_dir: args.log_dir.clone(),
        quiet: args.quiet,
        secret: args.secret.clone(),
        admin: args.admin.clone(),
        tls: tls.clone(),
        control: Default::default(),
    };
    let gateway_args = gateway::Args {
        port: args.gateway_port,
        host: args.host,
        coordinator: vec![coordinator_url.clone()],
        rate: args.rate.clone(),
        timeout: 30.0,
        tls: tls.clone(),
    };
    let registry_config = registry::Config::from_args(&registry_args)?;
    let mut coordinator_config = coordinator::Config::from_args(&coordinator_args)?;
    // The cluster's own secret, unless given: `up` starts each of the
    // cluster's processes itself and hands it down, and keeps it beside the
    // coordinator's state, so that an `up` started again over nodes a killed
    // one left running can adopt them.
    let secret_file = coordinator_config
        .state_dir()
        .join(crate::auth::CLUSTER_SECRET_DIR)
        .join("cluster-secret");
    crate::auth::load_and_install(
        &args.secret,
        crate::auth::Fallback::ClusterFile(secret_file),
    )?;
    coordinator_config.launch.netns = netns.as_ref().map(|g| g.0.clone());
    // Creating the coordinator starts nothing (`serve` does), so it can come
    // first: the gateway needs its router.
    let coordinator = Coordinator::new(coordinator_config)?;
    let _ = coordinator
        .ui
        .gateway
        .set(crate::tls::url(args.host, args.host, args.gateway_port));
    let gateway = Gateway::in_process(
        gateway::Config::from_args(&gateway_args)?,
        coordinator::router(coordinator.clone()),
        Arc::new(Direct(coordinator.clone())),
    )?;
    // Bind all three first, so a taken port is reported before anything starts.
    let registry_listener = crate::http::bind_flag(
        SocketAddr::new(registry_host(&args), args.registry_port),
        "--registry-port",
    )
    .await?;
    let coordinator_listener = crate::http::bind_flag(
        SocketAddr::new(args.host, args.coordinator_port),
        "--coordinator-port",
    )
    .await?;
    let gateway_listener = crate::http::bind_flag(
        SocketAddr::new(args.host, args.gateway_port),
        "--gateway-port",
    )
    .await?;
    // Nodes in namespaces reach the registry on the bridge.
    let registry_on_bridge = match &netns {
        Some(g) => {
            let addr = SocketAddr::new(g.0.host_ip().into(), args.registry_port);
            Some(crate::http::bind_flag(addr, "--registry-port").await?)
        }
        None => None,
    };
    if let Some(file) = &args.prometheus_config {
        let text = crate::metrics::scrape_config(&crate::metrics::ScrapeTargets {
            gateway: format!("{}:{}", args.host, args.gateway_port),
            coordinator: format!("{}:{}", args.host, args.coordinator_port),
            registry: format!("{}:{}", args.host, args.registry_port),
            tls: tls.tls_ca.as_ref().map(|ca| crate::metrics::ScrapeTls {
                ca_file: ca.display().to_string(),
                gateway: crate::tls::tls_at(args.host),
                coordinator: crate::tls::tls_at(args.host),
                registry: crate::tls::tls_at(registry_host(&args)),
                nodes: crate::tls::tls_at(nodes_listen(&args, netns.as_ref().map(|g| &*g.0)).1),
            }),
        });
        std::fs::write(file, text).map_err(|e| {
            anyhow::anyhow!("cannot write the Prometheus config {}: {e}", file.display())
        })?;
        println!(
            "kvlab up: Prometheus scrape config written to {}",
            file.display()
        );
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let registry_state = Registry::new(registry_config);
    let bridge_registry = registry_on_bridge.map(|listener| {
        let router = registry::router(registry_state.clone());
        tokio::spawn(crate::http::serve(listener, router, stopped()))
    });
    let registry = tokio::spawn(registry::serve(
        registry_state,
        registry_listener,
        stopped(),
    ));
    println!("kvlab up: gateway {}", gateway::describe(&gateway));
    let gateway = tokio::spawn(gateway::serve(gateway, gateway_listener, stopped()));
    println!(
        "kvlab up: coordinator {coordinator_url}, registry {registry_url}. Ctrl-C stops the cluster."
    );
    println!("kvlab up: live view {coordinator_url}/ui (metrics at /metrics on each component)");
    if let Some(line) = coordinator::admin_token_notice(&coordinator.config) {
        println!("kvlab up: {line}");
    }
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
    if let Some(task) = bridge_registry {
        task.abort();
    }
    drop(netns);
    result
}

/// Every listener of the cluster, for `tls::install`: this process's
/// three, the registry's on the netns bridge, and the nodes'.
fn listeners(args: &Args, netns: Option<&NetnsHosts>) -> Vec<(&'static str, IpAddr)> {
    let mut all = vec![
        ("the coordinator (--host)", args.host),
        ("the gateway (--host)", args.host),
        ("the registry", registry_host(args)),
    ];
    if let Some(hosts) = netns {
        all.push(("the registry, on the netns bridge", hosts.host_ip().into()));
    }
    all.push(nodes_listen(args, netns));
    all
}

/// Where the nodes listen: in their namespaces, in their containers
/// (0.0.0.0), or on `--host`.
fn nodes_listen(args: &Args, netns: Option<&NetnsHosts>) -> (&'static str, IpAddr) {
    if let Some(hosts) = netns {
        (
            "each node, in its network namespace",
            hosts.node_ip(0).into(),
        )
    } else if args.cluster.runtime.runtime == coordinator::RuntimeKind::Docker {
        ("each node, in its container", IpAddr::from([0, 0, 0, 0]))
    } else {
        ("each node (--host)", args.host)
    }
}

/// This run's TLS settings, installed: the operator's files, or (when a
/// listener must speak TLS and none were given) a cluster CA and a
/// certificate made for the run in `<temp dir>/kvlab-<coordinator port>/tls`.
/// Returns the flags every component and node gets.
fn tls_settings(args: &Args, netns: Option<&NetnsHosts>) -> anyhow::Result<crate::tls::TlsArgs> {
    let listeners = listeners(args, netns);
    let needed = listeners.iter().any(|(_, ip)| args.tls.mode.tls_at(*ip));
    let mut tls = args.tls.clone();
    if needed && args.tls.tls_cert.is_none() {
        let dir = std::env::temp_dir()
            .join(format!("kvlab-{}", args.coordinator_port))
            .join("tls");
        // On netns hosts the addresses are known now: the bridge and every
        // node slot's, so that curl can check them too.
        let hosts: Vec<IpAddr> = netns
            .map(|h| {
                let nodes = (0..crate::hosts::netns::MAX_NODES).map(|i| h.node_ip(i).into());
                std::iter::once(h.host_ip().into()).chain(nodes).collect()
            })
            .unwrap_or_default();
        let names = crate::tls::names_for(args.host, &hosts);
        let files = crate::tls::make(&dir, &names)?;
        println!(
            "kvlab up: TLS {}: a cluster CA made for this run, {} (curl --cacert {} https://...)",
            which_listeners(args.tls.mode),
            files.ca.display(),
            files.ca.display()
        );
        tls = tls.with_files(&files);
    } else if needed {
        println!(
            "kvlab up: TLS {}: the cluster CA {}",
            which_listeners(args.tls.mode),
            tls.tls_ca
                .as_deref()
                .unwrap_or(std::path::Path::new("?"))
                .display()
        );
    }
    crate::tls::install(&tls, &listeners)?;
    Ok(tls)
}

fn which_listeners(mode: crate::tls::Mode) -> &'static str {
    match mode {
        crate::tls::Mode::On => "on every listener",
        _ => "on every listener off loopback (plain HTTP there is refused)",
    }
}

/// Deletes the netns hosts when `up` returns, whichever way (the nodes
/// are stopped by then).
struct NetnsGuard(std::sync::Arc<NetnsHosts>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

/// `--hosts netns`: the bridge (namespaces come with their nodes).
fn netns_hosts(args: &Args) -> anyhow::Result<Option<NetnsGuard>> {
    if args.hosts == Hosts::Processes {
        anyhow::ensure!(
            args.lab_delays == LabDelays::Timer,
            "--lab-delays netem needs --hosts netns: the delays become latency on the links \
             between the nodes' network namespaces"
        );
        return Ok(None);
    }
    anyhow::ensure!(
        args.cluster.runtime.runtime == coordinator::RuntimeKind::Process,
        "--hosts netns places node processes that kvlab starts itself; it cannot be combined \
         with --runtime docker (containers have their own network) or --runtime external"
    );
    let lab = (args.lab_delays == LabDelays::Netem).then(|| {
        let (sync, asynchronous) = args.cluster.delays();
        (
            std::time::Duration::from_secs_f64(sync),
            std::time::Duration::from_secs_f64(asynchronous),
        )
    });
    let hosts = NetnsHosts::create(
        args.coordinator_port,
        args.registry_port,
        args.cluster.node_base_port,
        lab,
    )?;
    println!(
        "kvlab up: netns hosts: bridge {} at {}, node i at {} + i (namespaces kvl{}n<i>){}",
        format_args!("kvl{}br", args.coordinator_port),
        hosts.host_ip(),
        hosts.node_ip(0),
        args.coordinator_port,
        if lab.is_some() {
            ", lab delays as netem link latency"
        } else {
            ""
        }
    );
    Ok(Some(NetnsGuard(hosts)))
}

/// Containers reach the registry through their network's gateway address,
/// so with `--runtime docker` it listens on every address, not just loopback.
fn registry_host(args: &Args) -> IpAddr {
    if args.cluster.runtime.runtime == coordinator::RuntimeKind::Docker && args.host.is_loopback() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        args.host
    }
}

impl Args {
    /// Every port the cluster will listen on: the three services, the
    /// leader and each follower.
    fn ports(&self) -> Vec<u16> {
        let nodes = (0..=self.cluster.followers).filter_map(|i| {
            self.cluster
                .node_base_port
                .checked_add(u16::try_from(i).ok()?)
        });
        [self.coordinator_port, self.registry_port, self.gateway_port]
            .into_iter()
            .chain(nodes)
            .collect()
    }
}

impl Args {
    /// Refuses ports the flags make collide (two components on one port, a
    /// component inside the nodes' range), naming the flags: without this,
    /// the second bind fails as if another program held the port.
    fn check_port_collisions(&self) -> anyhow::Result<()> {
        let services = [
            ("--coordinator-port", self.coordinator_port),
            ("--registry-port", self.registry_port),
            ("--gateway-port", self.gateway_port),
        ];
        let mut problems = Vec::new();
        for (i, (a, pa)) in services.iter().enumerate() {
            for (b, pb) in &services[i + 1..] {
                if pa == pb {
                    problems.push(format!("{a} and {b} are both {pa}"));
                }
            }
        }
        let base = u32::from(self.cluster.node_base_port);
        // `cluster.validate` has refused a range past 65535 already.
        let n = u32::try_from(self.cluster.followers).unwrap_or(u32::MAX);
        let last = base.saturating_add(n);
        for (flag, port) in services {
            if (base..=last).contains(&u32::from(port)) {
                problems.push(format!(
                    "{flag} {port} is inside the nodes' ports {base}-{last} \
                     (--node-base-port {base}: the leader and {} followers)",
                    self.cluster.followers
                ));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "these ports collide: {}; choose different values for the flags named",
            problems.join("; ")
        )
    }
}

/// The kernel's ephemeral port range, when it can be read (Linux).
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((parts.next()??, parts.next()??))
}

/// A warning when some of `ports` lie in the ephemeral range: the kernel
/// hands those out as source ports of outgoing connections (even a
/// connection to the very port, when nothing listens there yet), and a
/// component then cannot bind its port.
fn ephemeral_warning(ports: &[u16], (low, high): (u16, u16)) -> Option<String> {
    let inside: Vec<String> = ports
        .iter()
        .filter(|p| (low..=high).contains(*p))
        .map(u16::to_string)
        .collect();
    if inside.is_empty() {
        return None;
    }
    Some(format!(
        "port(s) {} are inside the kernel's ephemeral range {low}-{high} \
         (/proc/sys/net/ipv4/ip_local_port_range): an outgoing connection can be \
         given one of them first, and that component then cannot listen. \
         Prefer ports below {low}.",
        inside.join(", ")
    ))
}

/// The coordinator as `up`'s gateway calls it: writes and reads go to the
/// same code as the coordinator's own `POST /write` and `GET /read/{key}`,
/// typed, with no encoding in between (see [`LocalCoordinator`]). It lives
/// here because `up` is where the two components meet: neither uses the
/// other's code.
struct Direct(Arc<Coordinator>);

impl LocalCoordinator for Direct {
    fn write(&self, req: WriteRequest) -> BoxFuture<'static, Result<WriteResponse, ApiError>> {
        let c = self.0.clone();
        Box::pin(async move { c.serve_write(req).await })
    }

    fn read(&self, key: String) -> BoxFuture<'static, Result<ReadResponse, ApiError>> {
        let c = self.0.clone();
        Box::pin(async move { c.serve_read(key).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_inside_the_ephemeral_range_are_named() {
        let range = (32_768, 60_999);
        assert_eq!(ephemeral_warning(&[7000, 8000, 9000, 7001], range), None);
        let w = ephemeral_warning(&[7000, 43_800, 43_801], range).unwrap();
        assert!(w.starts_with("port(s) 43800, 43801 are inside"), "{w}");
        assert!(w.contains("32768-60999"), "{w}");
        let args = Args::parse_from(["up", "--followers", "3", "--node-base-port", "40001"]);
        assert_eq!(args.ports(), [7000, 9000, 8000, 40001, 40002, 40003, 40004]);
    }

    #[test]
    fn colliding_port_flags_are_named() {
        let ok = Args::parse_from(["up"]);
        ok.check_port_collisions().unwrap();
        let same = Args::parse_from(["up", "--gateway-port", "9000"]);
        let e = same.check_port_collisions().unwrap_err().to_string();
        assert!(
            e.contains("--registry-port and --gateway-port are both 9000"),
            "{e}"
        );
        let inside = Args::parse_from(["up", "--registry-port", "7002", "--followers", "3"]);
        let e = inside.check_port_collisions().unwrap_err().to_string();
        assert!(
            e.contains("--registry-port 7002 is inside the nodes' ports 7001-7004"),
            "{e}"
        );
        assert!(!e.contains("another"), "{e}");
    }
}
