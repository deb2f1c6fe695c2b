//! Network-namespace hosts: each node on its own network stack and address,
//! so that partitions and slow links are real packets dropped or delayed by
//! the kernel, not hooks inside the node.
//!
//! Layout for a cluster whose coordinator listens on port P (`kvlab up
//! --hosts netns`):
//! - a bridge `kvl<P>br` on the host side, with address `10.A.B.1/24`
//!   (A.B derived from P, see [`subnet_for`]); the coordinator and the
//!   registry are reached there;
//! - per node slot `i` (its port minus the leader's port), a namespace
//!   `kvl<P>n<i>` holding `eth0` at `10.A.B.(10+i)`, the other end of a veth
//!   pair whose host end `kvl<P>v<i>` is enslaved to the bridge.
//!
//! Invariants:
//! - **Every name carries the prefix and P**, so [`remove_leftovers`] can find
//!   what an earlier run left behind (even one killed with SIGKILL) and
//!   delete it before a new run, without touching anyone else's devices.
//!   A run also records its pid; a later start on any port removes the
//!   devices of runs whose process is gone.
//! - **A slot keeps its namespace** across process restarts: a respawned
//!   node gets the same address, as a restarted machine would.
//! - **Faults belong to the network, not the process**: they stay until
//!   they expire or are healed, whatever happens to the node.
//! - **Everything happens in the node's own namespace**: partitions are
//!   iptables DROP rules in its chain `KVLAB-CUT`, slow links are rules in
//!   `KVLAB-LINK` that queue a link's packets (NFQUEUE) to a delayer thread
//!   with netem's model (see [`super::delayer`]: this kernel has no
//!   `sch_netem`). Both chains are jumped to from INPUT and OUTPUT, so
//!   `in` and `out` are the node's own directions. Nothing here changes
//!   the host's rules except one FORWARD accept for the bridge (hosts that
//!   run Docker drop forwarded bridge traffic by default).

use std::collections::{BTreeMap, BTreeSet};

use super::delayer::Delayer;
use crate::api::{Direction, Netem};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Every device, namespace and rule kvlab makes starts with this.
const PREFIX: &str = "kvl";
/// The host-side address is `.1`; node slot `i` is at `.(FIRST_NODE + i)`.
const FIRST_NODE: usize = 10;
/// Node slots per cluster (addresses .10 to .253).
pub const MAX_NODES: usize = 244;
/// Where runs record their pid, so a later start knows which are gone.
const PID_DIR: &str = "/run/kvlab-netns";
/// The iptables chain that holds a node's partition rules.
const CHAIN: &str = "KVLAB-CUT";
/// The chain that sends shaped links' packets to the delayer.
const LINK_CHAIN: &str = "KVLAB-LINK";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "--hosts netns needs root: it creates network namespaces, veth pairs and a bridge \
         (run it as root, e.g. with sudo, or leave out --hosts to run nodes as plain processes)"
    )]
    NotRoot,
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error(
        "the subnet {subnet} that --hosts netns derives from coordinator port {port} is already \
         routed on this machine ({route}); pick another --coordinator-port"
    )]
    SubnetTaken {
        subnet: String,
        port: u16,
        route: String,
    },
    #[error(
        "another kvlab up (pid {pid}) runs netns hosts for coordinator port {port}; \
         stop it or pick another --coordinator-port"
    )]
    InUse { port: u16, pid: i32 },
    #[error(
        "node port {port} is outside the netns hosts' range (the leader's port {base} to {max})"
    )]
    PortOutOfRange { port: u16, base: u16, max: usize },
    #[error("cannot open the namespace {name}: {source}")]
    OpenNamespace {
        name: String,
        source: std::io::Error,
    },
}

/// Is this process root? Namespaces, veths and iptables need it.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The /24 of a cluster whose coordinator listens on `port`: `10.A.B.0`,
/// A = 64 + bits 8-13 of the port, B = its low byte. Clusters whose ports
/// differ by less than 16384 never share a subnet.
pub fn subnet_for(port: u16) -> [u8; 3] {
    [10, 64 + ((port >> 8) & 63) as u8, (port & 0xff) as u8]
}

/// Who a node is cut off from, or has a slow link to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// Another node slot.
    Node(usize),
    Coordinator,
    Registry,
}

/// One direction of the link between a node and a peer, seen from the
/// node: `out` is what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Link {
    out: bool,
    peer: Peer,
}

impl Link {
    const MIN: Link = Link {
        out: false,
        peer: Peer::Node(0),
    };
    const MAX: Link = Link {
        out: true,
        peer: Peer::Registry,
    };

    /// Its NFQUEUE number in the node's namespace.
    fn queue(self) -> u16 {
        let base = match self.peer {
            Peer::Coordinator => 0x10,
            Peer::Registry => 0x11,
            Peer::Node(s) => 0x100 + s as u16,
        };
        if self.out {
            base
        } else {
            base + 0x1000
        }
    }

    /// Every link of `slot` that has (or had) a shape.
    fn all_of(state: &State, slot: usize) -> Vec<Link> {
        state
            .shapes
            .range((slot, Link::MIN)..=(slot, Link::MAX))
            .map(|((_, l), _)| *l)
            .collect()
    }
}

/// Where a link's shape comes from: the lab's delays, or a fault (which
/// wins while it lasts).
#[derive(Debug, Default)]
struct Shape {
    lab: Option<Netem>,
    fault: Option<(Netem, u64)>,
}

#[derive(Debug, Default)]
struct State {
    /// Node slots whose namespace exists.
    hosts: BTreeSet<usize>,
    /// (node slot, link) → its shape.
    shapes: BTreeMap<(usize, Link), Shape>,
    /// The user-space netem of each slot that has shaped links.
    delayers: BTreeMap<usize, Delayer>,
    /// Per node slot: the generation of its partition (0: none).
    partitions: BTreeMap<usize, u64>,
    next_generation: u64,
    cleaned: bool,
}

/// The namespaces, veths and bridge of one cluster, and the faults on them.
#[derive(Debug)]
pub struct NetnsHosts {
    /// The coordinator's port: part of every name.
    port: u16,
    registry_port: u16,
    /// The leader's port; slot `i` listens on `node_base_port + i`.
    node_base_port: u16,
    subnet: [u8; 3],
    /// `Some((sync, async))`: the lab's delays as netem on the leader's links.
    lab_delays: Option<(Duration, Duration)>,
    state: Mutex<State>,
    /// For the expiry timers.
    me: Weak<NetnsHosts>,
}

impl NetnsHosts {
    /// Removes what earlier runs left behind, then creates the bridge.
    /// `lab_delays`: `Some((sync, async))` with `--lab-delays netem`.
    pub fn create(
        coordinator_port: u16,
        registry_port: u16,
        node_base_port: u16,
        lab_delays: Option<(Duration, Duration)>,
    ) -> Result<Arc<NetnsHosts>, NetnsError> {
        if !is_root() {
            return Err(NetnsError::NotRoot);
        }
        if let Some(pid) = owner_of_port(coordinator_port).filter(|&p| process_running(p)) {
            return Err(NetnsError::InUse {
                port: coordinator_port,
                pid,
            });
        }
        remove_stale_runs();
        remove_leftovers(coordinator_port);
        let hosts = Arc::new_cyclic(|me| NetnsHosts {
            port: coordinator_port,
            registry_port,
            node_base_port,
            subnet: subnet_for(coordinator_port),
            lab_delays,
            state: Mutex::new(State::default()),
            me: me.clone(),
        });
        hosts.check_subnet_free()?;
        // The pid file first: a run starting meanwhile must not take our
        // bridge for a dead run's.
        let _ = std::fs::create_dir_all(PID_DIR);
        let _ = std::fs::write(pid_file(coordinator_port), std::process::id().to_string());
        hosts.create_bridge().inspect_err(|_| hosts.cleanup())?;
        Ok(hosts)
    }

    fn bridge(&self) -> String {
        format!("{PREFIX}{}br", self.port)
    }
    fn namespace(&self, slot: usize) -> String {
        format!("{PREFIX}{}n{slot}", self.port)
    }
    fn veth(&self, slot: usize) -> String {
        format!("{PREFIX}{}v{slot}", self.port)
    }
    fn subnet_text(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// The host side's address on the bridge: the coordinator and the
    /// registry, as the nodes reach them.
    pub fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The address of node slot `slot`.
    pub fn node_ip(&self, slot: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, (FIRST_NODE + slot.min(MAX_NODES - 1)) as u8)
    }

    /// The node slot that listens on `port`.
    pub fn slot_of(&self, port: u16) -> Result<usize, NetnsError> {
        match port.checked_sub(self.node_base_port) {
            Some(i) if (i as usize) < MAX_NODES => Ok(i as usize),
            _ => Err(NetnsError::PortOutOfRange {
                port,
                base: self.node_base_port,
                max: self.node_base_port as usize + MAX_NODES - 1,
            }),
        }
    }

    /// The registry, as the nodes reach it (on the bridge).
    pub fn registry_url(&self) -> String {
        let ip = self.host_ip().into();
        crate::tls::url(ip, ip, self.registry_port)
    }

    /// Do the links carry the lab's delays (`--lab-delays netem`)?
    pub fn lab_delays_are_netem(&self) -> bool {
        self.lab_delays.is_some()
    }

    /// Where the node on `port` is reached.
    pub fn node_url(&self, port: u16) -> String {
        let ip = self
            .slot_of(port)
            .map(|s| self.node_ip(s))
            .unwrap_or(Ipv4Addr::LOCALHOST);
        crate::tls::url(ip.into(), ip.into(), port)
    }

    fn check_subnet_free(&self) -> Result<(), NetnsError> {
        let subnet = self.subnet_text();
        // `root`: routes on our /24 or inside it (a wider one, such as a
        // default route, is no clash: ours is more specific).
        let routes = run("ip", &["-4", "route", "show", "root", &subnet])?;
        match routes.lines().find(|l| !l.trim().is_empty()) {
            Some(route) => Err(NetnsError::SubnetTaken {
                subnet,
                port: self.port,
                route: route.trim().to_string(),
            }),
            None => Ok(()),
        }
    }

    fn create_bridge(&self) -> Result<(), NetnsError> {
        let br = self.bridge();
        run("ip", &["link", "add", &br, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("{}/24", self.host_ip()), "dev", &br],
        )?;
        run("ip", &["link", "set", &br, "up"])?;
        // Docker sets FORWARD's policy to DROP, and bridged packets pass
        // FORWARD when br_netfilter is loaded: let ours through.
        run("iptables", &forward_rule("-I", &br))?;
        Ok(())
    }

    /// Makes sure node slot `slot` has its namespace, veth and address.
    /// Returns its address.
    pub fn ensure_host(&self, slot: usize) -> Result<Ipv4Addr, NetnsError> {
        let mut state = self.state.lock().unwrap();
        if !state.hosts.contains(&slot) {
            self.create_host(slot)?;
            state.hosts.insert(slot);
        }
        Ok(self.node_ip(slot))
    }

    fn create_host(&self, slot: usize) -> Result<(), NetnsError> {
        let (ns, veth) = (self.namespace(slot), self.veth(slot));
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &veth, "master", &self.bridge(), "up"],
        )?;
        let addr = format!("{}/24", self.node_ip(slot));
        run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        iptables_restore(
            &ns,
            &format!(
                "*filter\n:{CHAIN} - [0:0]\n:{LINK_CHAIN} - [0:0]\n\
                 -A INPUT -j {CHAIN}\n-A OUTPUT -j {CHAIN}\n\
                 -A INPUT -j {LINK_CHAIN}\n-A OUTPUT -j {LINK_CHAIN}\nCOMMIT\n"
            ),
        )
    }

    /// Makes `cmd` start inside node slot `slot`'s namespace (after
    /// [`ensure_host`](Self::ensure_host)). The process is otherwise
    /// unchanged: same pid, same files, same parent-death signal.
    pub fn enter(&self, cmd: &mut tokio::process::Command, slot: usize) -> Result<(), NetnsError> {
        let name = self.namespace(slot);
        let path = format!("/run/netns/{name}");
        let file = std::fs::File::open(&path)
            .map_err(|source| NetnsError::OpenNamespace { name, source })?;
        // SAFETY: setns is async-signal-safe; the closure owns the file, so
        // the descriptor stays open until the command is dropped (it is
        // close-on-exec, so the node does not inherit it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    // ---------------------------------------------------------------------
    // Partitions
    // ---------------------------------------------------------------------

    /// Drops the packets between node slot `slot` and `peers` (in the
    /// `direction` given), for `seconds` (then heals on its own). Replaces
    /// the slot's previous partition. Empty `peers` heals at once.
    pub fn partition(
        &self,
        slot: usize,
        peers: &[Peer],
        direction: Direction,
        seconds: f64,
    ) -> Result<(), NetnsError> {
        let generation = {
            let mut state = self.state.lock().unwrap();
            state.next_generation += 1;
            let g = state.next_generation;
            state
                .partitions
                .insert(slot, if peers.is_empty() { 0 } else { g });
            g
        };
        let rules = self.cut_rules(slot, peers, direction);
        let mut script = format!("*filter\n-F {CHAIN}\n");
        for r in &rules {
            script.push_str(&format!("-A {CHAIN} {r} -j DROP\n"));
        }
        script.push_str("COMMIT\n");
        iptables_restore(&self.namespace(slot), &script)?;
        if !peers.is_empty() {
            self.after(seconds, move |hosts| {
                let current =
                    hosts.state.lock().unwrap().partitions.get(&slot) == Some(&generation);
                if current {
                    let _ = hosts.partition(slot, &[], Direction::Both, 0.0);
                }
            });
        }
        Ok(())
    }

    /// The iptables matches (one per rule) that cut `slot` off from `peers`.
    fn cut_rules(&self, slot: usize, peers: &[Peer], direction: Direction) -> Vec<String> {
        let me = self.node_port(slot);
        let host = self.host_ip();
        let mut rules = Vec::new();
        for peer in peers {
            // (what comes in, what goes out), as iptables matches.
            let (inbound, outbound) = match *peer {
                Peer::Node(other) => {
                    let ip = self.node_ip(other);
                    (format!("-s {ip}"), format!("-d {ip}"))
                }
                // The coordinator calls the node's port.
                Peer::Coordinator => (
                    format!("-s {host} -p tcp --dport {me}"),
                    format!("-d {host} -p tcp --sport {me}"),
                ),
                // The node calls the registry's port (heartbeats).
                Peer::Registry => (
                    format!("-s {host} -p tcp --sport {}", self.registry_port),
                    format!("-d {host} -p tcp --dport {}", self.registry_port),
                ),
            };
            if direction.inbound() {
                rules.push(inbound);
            }
            if direction.outbound() {
                rules.push(outbound);
            }
        }
        rules
    }

    fn node_port(&self, slot: usize) -> u16 {
        self.node_base_port.saturating_add(slot as u16)
    }

    // ---------------------------------------------------------------------
    // Links (netem's model, see `delayer`)
    // ---------------------------------------------------------------------

    /// Slows the link between node slot `slot` and `peer` (in `direction`)
    /// for `seconds`; a `Netem` of zeros heals it. Replaces the link's
    /// previous fault; the lab's delay on it (if any) comes back after.
    pub fn shape_link(
        &self,
        slot: usize,
        peer: Peer,
        direction: Direction,
        netem: Netem,
        seconds: f64,
    ) -> Result<(), NetnsError> {
        let mut links = Vec::new();
        if direction.outbound() {
            links.push(Link { out: true, peer });
        }
        if direction.inbound() {
            links.push(Link { out: false, peer });
        }
        let mut state = self.state.lock().unwrap();
        state.next_generation += 1;
        let generation = state.next_generation;
        for link in &links {
            let shape = state.shapes.entry((slot, *link)).or_default();
            shape.fault = (!netem.is_none()).then_some((netem, generation));
        }
        self.apply(&mut state, slot)?;
        drop(state);
        if !netem.is_none() {
            self.after(seconds, move |hosts| {
                let mut state = hosts.state.lock().unwrap();
                let mut changed = false;
                for link in &links {
                    if let Some(shape) = state.shapes.get_mut(&(slot, *link)) {
                        if shape.fault.is_some_and(|(_, g)| g == generation) {
                            shape.fault = None;
                            changed = true;
                        }
                    }
                }
                if changed {
                    let _ = hosts.apply(&mut state, slot);
                }
            });
        }
        Ok(())
    }

    /// The lab's replication delays as link latency: the leader sends to
    /// each follower with the sync or the async delay. Called whenever the
    /// coordinator tells the leader its followers; a former leader's delays
    /// are removed. No-op unless the cluster runs `--lab-delays netem`.
    /// Nodes are named by their ports: `(port, is_sync)` per follower.
    pub fn set_lab_delays(&self, leader_port: u16, followers: &[(u16, bool)]) {
        let Some((sync, asynchronous)) = self.lab_delays else {
            return;
        };
        let Ok(leader) = self.slot_of(leader_port) else {
            return;
        };
        let wanted: BTreeMap<Link, Netem> = followers
            .iter()
            .filter_map(|&(port, is_sync)| {
                let d = if is_sync { sync } else { asynchronous };
                let netem = Netem {
                    delay_ms: d.as_secs_f64() * 1000.0,
                    ..Netem::default()
                };
                let link = Link {
                    out: true,
                    peer: Peer::Node(self.slot_of(port).ok()?),
                };
                Some((link, netem))
            })
            .collect();
        let mut state = self.state.lock().unwrap();
        let mut touched = BTreeSet::new();
        for ((owner, link), shape) in state.shapes.iter_mut() {
            let now = if *owner == leader {
                wanted.get(link).copied()
            } else {
                None
            };
            if shape.lab != now {
                shape.lab = now;
                touched.insert(*owner);
            }
        }
        for (link, netem) in wanted {
            let shape = state.shapes.entry((leader, link)).or_default();
            if shape.lab != Some(netem) {
                shape.lab = Some(netem);
                touched.insert(leader);
            }
        }
        for owner in touched {
            if let Err(e) = self.apply(&mut state, owner) {
                tracing::warn!(error = %e, "could not put the lab's delays on the links");
            }
        }
    }

    /// Puts slot `slot`'s links in effect: the delayer's shapes, then the
    /// rules that send each shaped link's packets to its queue.
    fn apply(&self, state: &mut State, slot: usize) -> Result<(), NetnsError> {
        let effective: Vec<(Link, Netem)> = state
            .shapes
            .range((slot, Link::MIN)..=(slot, Link::MAX))
            .filter_map(|((_, link), s)| {
                let n = s.fault.map(|(n, _)| n).or(s.lab)?;
                (!n.is_none()).then_some((*link, n))
            })
            .collect();
        let links = Link::all_of(state, slot);
        let delayer = match state.delayers.entry(slot) {
            std::collections::btree_map::Entry::Occupied(d) => d.into_mut(),
            // Nothing to shape, and nothing was: no thread needed.
            std::collections::btree_map::Entry::Vacant(_) if effective.is_empty() => return Ok(()),
            std::collections::btree_map::Entry::Vacant(v) => {
                let started =
                    Delayer::start(&self.namespace(slot)).map_err(|e| NetnsError::Command {
                        command: format!("NFQUEUE in {}", self.namespace(slot)),
                        detail: e.to_string(),
                    })?;
                v.insert(started)
            }
        };
        let mut script = format!("*filter\n-F {LINK_CHAIN}\n");
        for link in links {
            let netem = effective.iter().find(|(l, _)| *l == link).map(|(_, n)| *n);
            // The shape first, so no packet reaches the queue unshaped.
            delayer.set(link.queue(), netem);
            if netem.is_some() {
                script.push_str(&format!(
                    "-A {LINK_CHAIN} {} -j NFQUEUE --queue-num {} --queue-bypass\n",
                    self.link_match(slot, link),
                    link.queue()
                ));
            }
        }
        script.push_str("COMMIT\n");
        iptables_restore(&self.namespace(slot), &script)
    }

    /// iptables matches for a link's packets, in node `slot`'s namespace.
    fn link_match(&self, slot: usize, link: Link) -> String {
        let me = self.node_port(slot);
        let host = self.host_ip();
        let reg = self.registry_port;
        match (link.peer, link.out) {
            (Peer::Node(s), true) => format!("-d {}", self.node_ip(s)),
            (Peer::Node(s), false) => format!("-s {}", self.node_ip(s)),
            (Peer::Coordinator, true) => format!("-d {host} -p tcp --sport {me}"),
            (Peer::Coordinator, false) => format!("-s {host} -p tcp --dport {me}"),
            (Peer::Registry, true) => format!("-d {host} -p tcp --dport {reg}"),
            (Peer::Registry, false) => format!("-s {host} -p tcp --sport {reg}"),
        }
    }

    /// Runs `f` after `seconds`, if these hosts still exist.
    fn after(&self, seconds: f64, f: impl FnOnce(&NetnsHosts) + Send + 'static) {
        let me = self.me.clone();
        let length = Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(length).await;
            if let Some(hosts) = me.upgrade() {
                let _ = tokio::task::spawn_blocking(move || {
                    if !hosts.state.lock().unwrap().cleaned {
                        f(&hosts)
                    }
                })
                .await;
            }
        });
    }

    /// Deletes every namespace, veth and the bridge, and the FORWARD rule.
    /// Safe to call more than once; stop the nodes first.
    pub fn cleanup(&self) {
        let mut state = self.state.lock().unwrap();
        if state.cleaned {
            return;
        }
        state.cleaned = true;
        remove_leftovers(self.port);
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn pid_file(port: u16) -> String {
    format!("{PID_DIR}/{port}.pid")
}

fn forward_rule<'a>(op: &'a str, bridge: &'a str) -> [&'a str; 8] {
    [op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
}

/// Deletes whatever a run on coordinator port `port` made: its
/// namespaces, veths, bridge, FORWARD rule and pid file. Harmless when
/// there is nothing.
pub fn remove_leftovers(port: u16) {
    let tag = format!("{PREFIX}{port}");
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.strip_prefix(&tag).is_some_and(is_slot_suffix('n')) {
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
    for dev in link_names() {
        if dev.strip_prefix(&tag).is_some_and(is_slot_suffix('v')) {
            let _ = run("ip", &["link", "del", &dev]);
        }
    }
    let bridge = format!("{tag}br");
    let rule = forward_rule("-D", &bridge);
    // An earlier run may have left it twice (a crash between two starts).
    for _ in 0..8 {
        if run("iptables", &rule).is_err() {
            break;
        }
    }
    if link_names().contains(&bridge) {
        let _ = run("ip", &["link", "del", &bridge]);
    }
    let _ = std::fs::remove_file(pid_file(port));
}

/// Removes the devices of runs (on any port) whose process is gone: a
/// `kvlab up` killed outright cannot clean up, so the next start does.
pub fn remove_stale_runs() {
    for dev in link_names() {
        let Some(port) = dev
            .strip_prefix(PREFIX)
            .and_then(|d| d.strip_suffix("br"))
            .and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let alive = owner_of_port(port).is_some_and(process_running);
        if !alive {
            remove_leftovers(port);
        }
    }
}

/// The pid recorded by the run on coordinator port `port`.
fn owner_of_port(port: u16) -> Option<i32> {
    std::fs::read_to_string(pid_file(port))
        .ok()
        .and_then(|p| p.trim().parse().ok())
}

/// Is `pid` a running process (not gone, not a zombie waiting for its
/// parent)?
fn process_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|s| s != "Z")
        })
        .unwrap_or(false)
}

/// `n12` after the tag: a slot number (so port 7000's `kvl7000n1` is
/// never mistaken for port 70001's names, whose tag differs).
fn is_slot_suffix(tag: char) -> impl Fn(&str) -> bool {
    move |rest| {
        rest.strip_prefix(tag)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    }
}

fn link_names() -> Vec<String> {
    run("ip", &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            // A veth shows as `name@peer`.
            Some(name.split('@').next()?.to_string())
        })
        .collect()
}

/// Runs a command to completion; its stdout, or why it failed.
fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetnsError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(NetnsError::Command {
        command: format!("{program} {}", args.join(" ")),
        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Feeds an `iptables-restore --noflush` script to a namespace: every rule
/// of a change in one go, so a partition starts (and heals) at once.
fn iptables_restore(ns: &str, script: &str) -> Result<(), NetnsError> {
    let command = format!("ip netns exec {ns} iptables-restore --noflush");
    let fail = |detail: String| NetnsError::Command {
        command: command.clone(),
        detail,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_follow_the_coordinator_port() {
        assert_eq!(subnet_for(7000), [10, 64 + 27, 88]);
        assert_ne!(subnet_for(10_000), subnet_for(10_020));
        // Ports less than 16384 apart never share a subnet.
        assert_ne!(subnet_for(10_000), subnet_for(10_000 + 256));
        assert_eq!(subnet_for(10_000), subnet_for(10_000 + 16_384));
    }

    #[test]
    fn slot_suffixes_do_not_match_other_ports() {
        let is_ns = is_slot_suffix('n');
        assert!(is_ns("n0") && is_ns("n12"));
        assert!(!is_ns("n") && !is_ns("0n1") && !is_ns("br"));
    }

    /// Hosts as `create` would make them, without touching the system.
    fn hosts() -> Arc<NetnsHosts> {
        Arc::new_cyclic(|me| NetnsHosts {
            port: 7000,
            registry_port: 9000,
            node_base_port: 7001,
            subnet: subnet_for(7000),
            lab_delays: None,
            state: Mutex::new(State {
                // Nothing to remove when the test drops it.
                cleaned: true,
                ..State::default()
            }),
            me: me.clone(),
        })
    }

    #[test]
    fn partitions_name_each_peer_by_address_and_port() {
        let h = hosts();
        assert_eq!(h.node_ip(2).to_string(), "10.91.88.12");
        assert_eq!(h.node_url(7003), "http://10.91.88.12:7003");
        assert!(h.slot_of(7000).is_err());
        let both = h.cut_rules(0, &[Peer::Node(1)], Direction::Both);
        assert_eq!(both, ["-s 10.91.88.11", "-d 10.91.88.11"]);
        // The coordinator calls the node's port; the node calls the registry's.
        let out = h.cut_rules(0, &[Peer::Coordinator, Peer::Registry], Direction::Out);
        assert_eq!(
            out,
            [
                "-d 10.91.88.1 -p tcp --sport 7001",
                "-d 10.91.88.1 -p tcp --dport 9000"
            ]
        );
        let inbound = h.cut_rules(2, &[Peer::Coordinator], Direction::In);
        assert_eq!(inbound, ["-s 10.91.88.1 -p tcp --dport 7003"]);
    }

    #[test]
    fn netem_limits() {
        assert!(Netem::default().is_none());
        let bad = |n: Netem| n.validate().is_err();
        assert!(bad(Netem {
            loss_percent: 101.0,
            ..Netem::default()
        }));
        assert!(bad(Netem {
            delay_ms: f64::NAN,
            ..Netem::default()
        }));
        assert!(!bad(Netem {
            delay_ms: 100.0,
            jitter_ms: 20.0,
            loss_percent: 5.0,
        }));
    }

    #[test]
    fn each_link_has_its_own_queue() {
        let mut seen = BTreeSet::new();
        for out in [true, false] {
            for peer in [
                Peer::Coordinator,
                Peer::Registry,
                Peer::Node(0),
                Peer::Node(243),
            ] {
                assert!(seen.insert(Link { out, peer }.queue()));
                assert!(Link::MIN <= Link { out, peer } && Link { out, peer } <= Link::MAX);
            }
        }
    }
}
