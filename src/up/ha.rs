//! `kvlab up --ha`: a cluster whose control plane survives its coordinator,
//! on one machine, for the lab.
//!
//! Unlike plain `up`, every component is its own process, so that any one
//! of them can be killed: a 3-member etcd (Debian's `etcd-server`), three
//! coordinators sharing the cluster through it (`--control-store etcd://`,
//! one active, two standbys), one registry and two gateways, each told
//! every coordinator. The active coordinator starts the nodes.
//!
//! `up --ha` supervises its children: one that dies or exits is started
//! again with the same command line (a coordinator comes back as a
//! standby), and says so. Ctrl-C (or SIGTERM) stops everything: the
//! gateways and the registry, the standbys, then the active coordinator
//! (which stops its nodes), then etcd.
//!
//! Ports (the plain `up` flags, and fixed offsets from them):
//! - coordinator `i` (c1, c2, c3): `--coordinator-port` + 10 × (i − 1);
//! - etcd member `i` (e1, e2, e3): client port `--coordinator-port` + 30 +
//!   2 × (i − 1), peer port the next one;
//! - gateways: `--gateway-port` and `--gateway-port` − 1;
//!
//! With the defaults: coordinators 7000, 7010, 7020; etcd 7030-7035; the
//! registry 9000; gateways 8000 and 7999; nodes from 7001.
//! - the registry `--registry-port`, the nodes from `--node-base-port`.
//!
//! Files: `<temp dir>/kvlab-<coordinator port>/ha/` holds each process's
//! log and the etcd members' data; the nodes' data is in `--data-dir`
//! (default `<temp dir>/kvlab-<coordinator port>/data`), shared by the
//! three coordinators, with the cluster's secret. Both are kept across runs
//! (`--fresh` wipes them): a run started again after a killed one finds the
//! cluster map in etcd and adopts the nodes still running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use super::Args;

/// How many coordinators and etcd members `--ha` runs.
pub const COORDINATORS: u16 = 3;
pub const ETCD_MEMBERS: u16 = 3;
/// Coordinator `i` listens on `--coordinator-port` + this × (i − 1).
pub const COORDINATOR_STEP: u16 = 10;
/// etcd member 1's client port is `--coordinator-port` + this.
pub const ETCD_OFFSET: u16 = 30;

/// The exit code when `etcd` is not installed.
pub const EXIT_NO_ETCD: i32 = 2;

/// What kind of process a child is (what a restart means, and the order
/// of the stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Etcd,
    Coordinator,
    Registry,
    Gateway,
}

/// One process `up --ha` runs and keeps running.
struct Supervised {
    name: String,
    kind: Kind,
    url: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    process: Option<Child>,
    restarts: u32,
}

/// The whole `--ha` plan: every process, its command line and where it
/// listens. Built from the flags alone (pure), so it is tested without
/// starting anything.
struct Plan {
    children: Vec<Supervised>,
    coordinator_urls: Vec<String>,
    gateway_urls: Vec<String>,
    etcd_endpoints: Vec<String>,
    dir: PathBuf,
    data_dir: Option<PathBuf>,
    log_dir: PathBuf,
}

impl Args {
    /// Every `--ha` port with the flag (or offset) it comes from.
    fn ha_ports(&self) -> Vec<(String, u32)> {
        let c = u32::from(self.coordinator_port);
        let mut ports = Vec::new();
        for i in 0..u32::from(COORDINATORS) {
            let flag = format!("coordinator c{} (--coordinator-port + {})", i + 1, i * 10);
            ports.push((flag, c + i * u32::from(COORDINATOR_STEP)));
        }
        for i in 0..u32::from(ETCD_MEMBERS) {
            let client = c + u32::from(ETCD_OFFSET) + 2 * i;
            ports.push((format!("etcd e{} client port", i + 1), client));
            ports.push((format!("etcd e{} peer port", i + 1), client + 1));
        }
        ports.push(("--registry-port".into(), u32::from(self.registry_port)));
        ports.push(("--gateway-port".into(), u32::from(self.gateway_port)));
        ports.push((
            "the second gateway (--gateway-port - 1)".into(),
            u32::from(self.gateway_port).wrapping_sub(1),
        ));
        ports
    }

    /// Refuses `--ha` ports that collide or do not exist, naming them.
    fn check_ha_ports(&self) -> anyhow::Result<()> {
        let ports = self.ha_ports();
        let mut problems = Vec::new();
        for (name, port) in &ports {
            if *port == 0 || *port > u32::from(u16::MAX) {
                problems.push(format!("{name} would be {port}, not a port"));
            }
        }
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if pa == pb {
                    problems.push(format!("{a} and {b} are both {pa}"));
                }
            }
        }
        let base = u32::from(self.cluster.node_base_port);
        let last = base.saturating_add(u32::try_from(self.cluster.followers).unwrap_or(u32::MAX));
        for (name, port) in &ports {
            if (base..=last).contains(port) {
                problems.push(format!(
                    "{name} {port} is inside the nodes' ports {base}-{last}"
                ));
            }
        }
        anyhow::ensure!(
            problems.is_empty(),
            "with --ha these ports collide: {}; choose other --coordinator-port, \
             --registry-port, --gateway-port or --node-base-port values",
            problems.join("; ")
        );
        Ok(())
    }

    /// What `--ha` does not run with, said before anything starts.
    fn check_ha_supported(&self) -> anyhow::Result<()> {
        let refuse = |what: &str| anyhow::bail!("--ha does not go with {what} (yet)");
        if !self.host.is_loopback() {
            return refuse("--host off loopback: it runs every process on this machine's loopback");
        }
        if self.tls.mode == crate::tls::Mode::On {
            return refuse("--tls on");
        }
        if self.cluster.runtime.runtime != crate::coordinator::RuntimeKind::Process
            || self.cluster.runtime.node_cmd.is_some()
        {
            return refuse("--runtime docker/external or --node-cmd");
        }
        if self.hosts != super::Hosts::Processes {
            return refuse("--hosts netns");
        }
        if self.prometheus_config.is_some() {
            return refuse("--prometheus-config");
        }
        anyhow::ensure!(
            (1..=300).contains(&self.lease_ttl),
            "--lease-ttl must be between 1 and 300 seconds, got {}",
            self.lease_ttl
        );
        Ok(())
    }

    /// The coordinator's flags for the cluster's shape, storage and timing.
    fn cluster_flags(&self, data_dir: Option<&Path>, log_dir: &Path) -> Vec<String> {
        let c = &self.cluster;
        let s = &c.storage;
        let mut flags = vec![
            "--followers".into(),
            c.followers.to_string(),
            "--write-quorum".into(),
            c.write_quorum.to_string(),
            "--read-quorum".into(),
            c.read_quorum.to_string(),
            "--sync-delay".into(),
            c.sync_delay.to_string(),
            "--async-delay".into(),
            c.async_delay.to_string(),
            "--node-base-port".into(),
            c.node_base_port.to_string(),
            "--heartbeat-interval".into(),
            c.heartbeat_interval.to_string(),
            "--log-retain".into(),
            c.log_retain.to_string(),
            "--orphan-timeout".into(),
            c.orphan_timeout.to_string(),
            "--log-dir".into(),
            log_dir.display().to_string(),
        ];
        let mut switch = |on: bool, flag: &str| {
            if on {
                flags.push(flag.into());
            }
        };
        switch(c.no_delay, "--no-delay");
        switch(
            c.internal_wire == crate::http::wire::Mode::Http,
            "--internal-wire=http",
        );
        switch(c.unclean_failover, "--unclean-failover");
        switch(s.simulate_power_loss, "--simulate-power-loss");
        switch(self.quiet, "--quiet");
        match data_dir {
            Some(dir) => {
                flags.extend([
                    "--data-dir".into(),
                    dir.display().to_string(),
                    "--fsync".into(),
                    s.fsync.name().into(),
                    "--fsync-interval-ms".into(),
                    s.fsync_interval_ms.to_string(),
                    "--snapshot-every".into(),
                    s.snapshot_every.to_string(),
                ]);
            }
            None => flags.push("--in-memory".into()),
        }
        flags
    }

    /// Every process of the `--ha` cluster. Pure.
    fn ha_plan(&self, kvlab: &Path, dir: &Path) -> Plan {
        let host = self.host;
        let url = |port: u16| crate::tls::url(host, host, port);
        let etcd_client = |i: u16| self.coordinator_port + ETCD_OFFSET + 2 * i;
        let etcd_endpoints: Vec<String> = (0..ETCD_MEMBERS)
            .map(|i| format!("{host}:{}", etcd_client(i)))
            .collect();
        let peer = |i: u16| format!("http://{host}:{}", etcd_client(i) + 1);
        let initial: Vec<String> = (0..ETCD_MEMBERS)
            .map(|i| format!("e{}={}", i + 1, peer(i)))
            .collect();
        let data_dir = (!self.cluster.storage.in_memory).then(|| {
            self.cluster
                .storage
                .data_dir
                .clone()
                .unwrap_or_else(|| dir.parent().unwrap_or(dir).join("data"))
        });
        let log_dir = self
            .log_dir
            .clone()
            .unwrap_or_else(|| dir.parent().unwrap_or(dir).join("logs"));
        let coordinator_urls: Vec<String> = (0..COORDINATORS)
            .map(|i| url(self.coordinator_port + COORDINATOR_STEP * i))
            .collect();
        let gateway_urls = vec![url(self.gateway_port), url(self.gateway_port - 1)];
        let registry_url = url(self.registry_port);
        let mut children = Vec::new();
        for i in 0..ETCD_MEMBERS {
            let name = format!("e{}", i + 1);
            let client = format!("http://{host}:{}", etcd_client(i));
            children.push(Supervised {
                url: client.clone(),
                kind: Kind::Etcd,
                program: "etcd".into(),
                args: vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    dir.join(format!("etcd-{name}")).display().to_string(),
                    "--listen-client-urls".into(),
                    client.clone(),
                    "--advertise-client-urls".into(),
                    client,
                    "--listen-peer-urls".into(),
                    peer(i),
                    "--initial-advertise-peer-urls".into(),
                    peer(i),
                    "--initial-cluster".into(),
                    initial.join(","),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    format!("kvlab-{}", self.coordinator_port),
                ],
                log: dir.join(format!("etcd-{name}.log")),
                name: format!("etcd member {name}"),
                process: None,
                restarts: 0,
            });
        }
        let store = format!("etcd://{}", etcd_endpoints.join(","));
        for (i, coordinator_url) in coordinator_urls.iter().enumerate() {
            let id = format!("c{}", i + 1);
            let port = self.coordinator_port + COORDINATOR_STEP * i as u16;
            let mut args: Vec<String> = vec![
                "coordinator".into(),
                "--port".into(),
                port.to_string(),
                "--host".into(),
                host.to_string(),
                "--registry".into(),
                registry_url.clone(),
                "--control-store".into(),
                store.clone(),
                "--coordinator-id".into(),
                id.clone(),
                "--lease-ttl".into(),
                self.lease_ttl.to_string(),
                "--cluster-name".into(),
                format!("kvlab-{}", self.coordinator_port),
            ];
            args.extend(self.cluster_flags(data_dir.as_deref(), &log_dir));
            children.push(Supervised {
                name: format!("coordinator {id}"),
                kind: Kind::Coordinator,
                url: coordinator_url.clone(),
                program: kvlab.to_path_buf(),
                args,
                log: dir.join(format!("coordinator-{id}.log")),
                process: None,
                restarts: 0,
            });
        }
        let mut registry_args: Vec<String> = vec![
            "registry".into(),
            "--port".into(),
            self.registry_port.to_string(),
            "--host".into(),
            host.to_string(),
            "--coordinator".into(),
            coordinator_urls.join(","),
            "--spawn-delay".into(),
            self.spawn_delay.to_string(),
            "--timeout".into(),
            self.failure_timeout.to_string(),
        ];
        if self.auto_spawn {
            registry_args.push("--auto-spawn".into());
        }
        children.push(Supervised {
            name: "registry".into(),
            kind: Kind::Registry,
            url: registry_url,
            program: kvlab.to_path_buf(),
            args: registry_args,
            log: dir.join("registry.log"),
            process: None,
            restarts: 0,
        });
        for (i, (gateway_url, port)) in gateway_urls
            .iter()
            .zip([self.gateway_port, self.gateway_port - 1])
            .enumerate()
        {
            let mut args: Vec<String> = vec![
                "gateway".into(),
                "--port".into(),
                port.to_string(),
                "--host".into(),
                host.to_string(),
                "--coordinator".into(),
                coordinator_urls.join(","),
            ];
            if self.rate.rate_limit {
                args.extend([
                    "--rate-limit".into(),
                    "--rate-limit-max".into(),
                    self.rate.rate_limit_max.to_string(),
                    "--rate-limit-window".into(),
                    self.rate.rate_limit_window.to_string(),
                ]);
            }
            children.push(Supervised {
                name: format!("gateway g{}", i + 1),
                kind: Kind::Gateway,
                url: gateway_url.clone(),
                program: kvlab.to_path_buf(),
                args,
                log: dir.join(format!("gateway-g{}.log", i + 1)),
                process: None,
                restarts: 0,
            });
        }
        Plan {
            children,
            coordinator_urls,
            gateway_urls,
            etcd_endpoints,
            dir: dir.to_path_buf(),
            data_dir,
            log_dir,
        }
    }
}

/// Where `etcd` is on the PATH, if it is.
fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// Runs `kvlab up --ha` until Ctrl-C / SIGTERM.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    if find_etcd().is_none() {
        eprintln!(
            "kvlab up --ha: `etcd` is not on the PATH. --ha keeps the cluster's control state \
             in a 3-member etcd, started from Debian's package: `sudo apt install etcd-server` \
             (or put an etcd 3.4+ binary on the PATH), then run this again."
        );
        std::process::exit(EXIT_NO_ETCD);
    }
    args.check_ha_supported()?;
    args.check_ha_ports()?;
    let base = std::env::temp_dir().join(format!("kvlab-{}", args.coordinator_port));
    let dir = base.join("ha");
    let kvlab = std::env::current_exe().unwrap_or_else(|_| "kvlab".into());
    let mut plan = args.ha_plan(&kvlab, &dir);
    if args.cluster.storage.fresh {
        // etcd's data (the cluster map) and the nodes' go together.
        for member in 1..=ETCD_MEMBERS {
            let _ = std::fs::remove_dir_all(dir.join(format!("etcd-e{member}")));
        }
        if let Some(data) = &plan.data_dir {
            let _ = std::fs::remove_dir_all(data);
        }
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    // The cluster's own secret, kept beside the nodes' data as plain `up`
    // keeps it: the nodes of a killed `up --ha` still run with it, and the
    // next run's coordinators adopt them (etcd keeps the map across runs).
    let state_dir = plan
        .data_dir
        .clone()
        .unwrap_or_else(|| plan.log_dir.clone());
    crate::auth::load_and_install(
        &args.secret,
        crate::auth::Fallback::ClusterFile(
            state_dir
                .join(crate::auth::CLUSTER_SECRET_DIR)
                .join("cluster-secret"),
        ),
    )?;
    let secret = crate::auth::installed()
        .map(|s| s.expose().to_string())
        .unwrap_or_default();
    println!(
        "kvlab up --ha: starting 3 etcd members, 3 coordinators (lease {} s), a registry and \
         2 gateways; logs in {}",
        args.lease_ttl,
        dir.display()
    );
    let http = crate::http::client();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::http::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let ready = async {
        for kind in [Kind::Etcd, Kind::Coordinator, Kind::Registry, Kind::Gateway] {
            for child in plan.children.iter_mut().filter(|c| c.kind == kind) {
                child.start(&secret)?;
            }
            if kind == Kind::Etcd {
                wait_for_etcd(&http, &plan.etcd_endpoints).await?;
            }
        }
        wait_until_writable(&http, &plan).await
    };
    let started = tokio::select! {
        r = ready => r,
        _ = stop_rx.wait_for(|s| *s) => Err(anyhow::anyhow!("stopped before the cluster was ready")),
    };
    if let Err(e) = started {
        stop_all(&http, &mut plan).await;
        return Err(e);
    }
    print_table(&http, &plan).await;
    supervise(&http, &mut plan, &secret, stop_rx).await;
    stop_all(&http, &mut plan).await;
    println!("kvlab up --ha: stopped");
    Ok(())
}

impl Supervised {
    fn start(&mut self, secret: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", self.log.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stderr(log.try_clone()?)
            .env(crate::auth::ENV_SECRET, secret)
            .kill_on_drop(false);
        // A coordinator's narration is the lab's console: it is shown here
        // (and kept in its log); the others only go to their logs.
        if self.kind == Kind::Coordinator {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(log);
        }
        crate::process::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot start {} ({}): {e}",
                self.name,
                self.program.display()
            )
        })?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(relay(out, self.name.clone(), self.log.clone()));
        }
        self.process = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.id())
    }

    /// `Some(status)` once the process has ended.
    fn ended(&mut self) -> Option<ExitStatus> {
        self.process.as_mut()?.try_wait().ok().flatten()
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a child's pid; it is ours until waited.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }
}

/// Prints a coordinator's output lines, prefixed with its name, and keeps
/// them in its log.
async fn relay(out: tokio::process::ChildStdout, name: String, log: PathBuf) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ok();
    let mut lines = tokio::io::BufReader::new(out).lines();
    let short = name.trim_start_matches("coordinator ").to_string();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{short:>3} │ {line}");
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

async fn wait_for_etcd(http: &reqwest::Client, endpoints: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for e in endpoints {
        loop {
            let healthy = http
                .get(format!("http://{e}/health"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .is_some();
            if healthy {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "etcd member {e} did not become healthy within 30 s (see its log)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The control plane as the coordinators' `/status` shows it: the active
/// one's view, if any answers.
async fn control_plane(
    http: &reqwest::Client,
    urls: &[String],
) -> Option<(crate::api::ControlPlaneView, serde_json::Value)> {
    for url in urls {
        let Ok(resp) = http
            .get(format!("{url}/status"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
        else {
            continue;
        };
        let Ok(body) = resp.json::<serde_json::Value>().await else {
            continue;
        };
        let Ok(view) =
            serde_json::from_value::<crate::api::ControlPlaneView>(body["control_plane"].clone())
        else {
            continue;
        };
        if view.this == "active" {
            return Some((view, body));
        }
    }
    None
}

async fn wait_until_writable(http: &reqwest::Client, plan: &Plan) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, status)) = control_plane(http, &plan.coordinator_urls).await {
            if status["quorum"]["can_write"] == true {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster could not write within 60 s of its start (see the coordinators' logs \
             in {})",
            plan.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where everything is, for the student.
async fn print_table(http: &reqwest::Client, plan: &Plan) {
    let view = control_plane(http, &plan.coordinator_urls).await;
    let active = view.as_ref().and_then(|(v, _)| v.active.clone());
    println!();
    println!("  {:<16} {:<26} {:>8}  log", "process", "address", "pid");
    for child in &plan.children {
        let role = match (&active, child.kind) {
            (Some(a), Kind::Coordinator) if child.url == a.url => "  (active)",
            (_, Kind::Coordinator) => "  (standby)",
            (_, Kind::Gateway) => "  ← clients",
            _ => "",
        };
        println!(
            "  {:<16} {:<26} {:>8}  {}{role}",
            child.name,
            child.url,
            child.pid().map(|p| p.to_string()).unwrap_or_default(),
            child.log.display()
        );
    }
    if let Some((_, status)) = &view {
        let nodes: Vec<String> = std::iter::once(&status["leader"])
            .chain(status["followers"].as_array().into_iter().flatten())
            .filter_map(|n| {
                Some(format!(
                    "{} {} (pid {})",
                    n["node_id"].as_str()?,
                    n["url"].as_str()?,
                    n["pid"]
                        .as_u64()
                        .map(|p| p.to_string())
                        .unwrap_or("?".into())
                ))
            })
            .collect();
        println!("  nodes (the active coordinator's): {}", nodes.join(", "));
    }
    println!();
    println!(
        "kvlab up --ha: ready. Clients: kvlab client --gateway {}",
        plan.gateway_urls.join(",")
    );
    println!(
        "kvlab up --ha: who is in charge: curl {}/status (control_plane); kill -9 the active \
         coordinator's pid and watch a standby take over within the lease. Ctrl-C stops \
         everything.",
        plan.coordinator_urls[0]
    );
}

/// Keeps every child running until a stop is asked, and narrates changes
/// of the active coordinator.
async fn supervise(
    http: &reqwest::Client,
    plan: &mut Plan,
    secret: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_active: Option<(String, u64)> = None;
    let mut next_view = Instant::now();
    let mut restart_after: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // A Ctrl-C in the terminal reaches every child at once: what ends
        // then is stopping, not to be started again.
        if *stop.borrow() {
            return;
        }
        for child in plan.children.iter_mut() {
            if let Some(status) = child.ended() {
                child.process = None;
                println!(
                    "kvlab up --ha: 🔁 {} {}; starting it again{}",
                    child.name,
                    describe_exit(status),
                    if child.kind == Kind::Coordinator {
                        " (as a standby)"
                    } else {
                        ""
                    }
                );
                // One restart a second at most, so a process that cannot
                // start does not spin.
                restart_after.insert(child.name.clone(), Instant::now() + Duration::from_secs(1));
            }
            let due = restart_after
                .get(&child.name)
                .is_none_or(|t| Instant::now() >= *t);
            if child.process.is_none() && due {
                restart_after.remove(&child.name);
                child.restarts += 1;
                if let Err(e) = child.start(secret) {
                    println!("kvlab up --ha: ❌ {e:#}");
                    restart_after
                        .insert(child.name.clone(), Instant::now() + Duration::from_secs(1));
                }
            }
        }
        if Instant::now() >= next_view {
            next_view = Instant::now() + Duration::from_millis(500);
            if let Some((view, _)) = control_plane(http, &plan.coordinator_urls).await {
                if let Some(a) = view.active {
                    let now = (a.id.clone(), view.epoch);
                    if last_active.as_ref() != Some(&now) {
                        if last_active.is_some() {
                            println!(
                                "kvlab up --ha: 👑 coordinator {} (pid {}) is now active, epoch {}",
                                a.id,
                                a.pid.map(|p| p.to_string()).unwrap_or("?".into()),
                                view.epoch
                            );
                        }
                        last_active = Some(now);
                    }
                }
            }
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited (code 0)".into(),
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".into(),
    }
}

/// Stops everything in an order that keeps the nodes' end clean: the
/// gateways and the registry, then the standbys (so none takes over), the
/// active coordinator (which stops its nodes), and etcd last.
async fn stop_all(http: &reqwest::Client, plan: &mut Plan) {
    println!("kvlab up --ha: stopping");
    let active_url = control_plane(http, &plan.coordinator_urls)
        .await
        .and_then(|(v, _)| v.active.map(|a| a.url));
    let is_active = |c: &Supervised| Some(&c.url) == active_url.as_ref();
    let waves: [&dyn Fn(&Supervised) -> bool; 4] = [
        &|c| matches!(c.kind, Kind::Gateway | Kind::Registry),
        &|c| c.kind == Kind::Coordinator && !is_active(c),
        &|c| c.kind == Kind::Coordinator,
        &|c| c.kind == Kind::Etcd,
    ];
    for (i, wave) in waves.into_iter().enumerate() {
        // The active coordinator may take a while to stop its nodes; etcd's
        // data is thrown away at the next start, so it gets little time.
        let grace = Duration::from_secs(if i == 3 { 3 } else { 20 });
        for child in plan.children.iter().filter(|c| wave(c)) {
            child.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for child in plan.children.iter_mut().filter(|c| wave(c)) {
            let Some(process) = child.process.as_mut() else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, process.wait()).await.is_err() {
                let _ = process.kill().await;
            }
            child.process = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_ha_plan_puts_every_process_on_its_documented_port() {
        let args = Args::parse_from(["up", "--ha"]);
        args.check_ha_ports().unwrap();
        let plan = args.ha_plan(Path::new("/bin/kvlab"), Path::new("/tmp/kvlab-7000/ha"));
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        assert_eq!(plan.coordinator_urls, [url(7000), url(7010), url(7020)]);
        assert_eq!(
            plan.etcd_endpoints,
            ["127.0.0.1:7030", "127.0.0.1:7032", "127.0.0.1:7034"]
        );
        assert_eq!(plan.gateway_urls, [url(8000), url(7999)]);
        let args_of = |name: &str| {
            let child = plan.children.iter().find(|c| c.name == name).unwrap();
            child.args.join(" ")
        };
        let c2 = args_of("coordinator c2");
        for part in [
            "--control-store etcd://127.0.0.1:7030,127.0.0.1:7032,127.0.0.1:7034",
            "--coordinator-id c2",
            "--port 7010",
            "--data-dir /tmp/kvlab-7000/data",
        ] {
            assert!(c2.contains(part), "{part}: {c2}");
        }
        assert!(
            !c2.contains("--fresh"),
            "a restarted coordinator keeps the cluster"
        );
        let all = format!("--coordinator {},{},{}", url(7000), url(7010), url(7020));
        assert!(args_of("gateway g2").contains(&all));
        assert!(args_of("registry").contains(&all));
    }

    #[test]
    fn colliding_ha_ports_are_named() {
        let args = Args::parse_from(["up", "--ha", "--registry-port", "7010"]);
        let e = args.check_ha_ports().unwrap_err().to_string();
        assert!(
            e.contains("coordinator c2") && e.contains("--registry-port"),
            "{e}"
        );
        let args = Args::parse_from(["up", "--ha", "--gateway-port", "7031"]);
        let e = args.check_ha_ports().unwrap_err().to_string();
        assert!(e.contains("etcd e1"), "{e}");
    }

    #[test]
    fn what_ha_cannot_run_with_is_refused() {
        let args = Args::parse_from(["up", "--ha", "--host", "10.0.0.1"]);
        let e = args.check_ha_supported().unwrap_err().to_string();
        assert!(e.contains("--ha does not go with --host"), "{e}");
    }
}
