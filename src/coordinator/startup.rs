//! Starting the cluster: the data directory, the runtime, the leader and the
//! N followers (or, with `--runtime external`, waiting for them to join),
//! then the first election.
//!
//! Invariants:
//! - `--fresh` wipes the data directory (`--runtime process`) before any
//!   node starts;
//! - the cluster is ready only once an election made a leader (three tries,
//!   else the start fails); until then a transition's narration has no set
//!   tags and no quorum changes, since the sets change with every node that
//!   comes up;
//! - a node that refuses its damaged log (the leader included) never stops
//!   the start: it waits out of the first election, which only healthy nodes
//!   enter, and is then set aside and rebuilt from the new leader. Unless
//!   the damaged logs may have held an acknowledged write no healthy node
//!   holds: a write was acknowledged once on the leader's disk and W
//!   followers', so with W + 1 damaged logs (or no healthy one) the start is
//!   refused, naming each node's state ([`StartRefused`]).

use std::sync::Arc;

use super::failover;
use super::slots::CorruptLogRefused;
use super::Coordinator;
use crate::api::*;
use crate::events::EventKind;

impl Coordinator {
    /// Starts the leader and the N followers, and waits until all answer.
    pub async fn start_cluster(self: &Arc<Self>) -> anyhow::Result<()> {
        let cfg = &self.config;
        let (sd, ad) = (cfg.launch.sync_delay, cfg.launch.async_delay);
        self.events.info(
            EventKind::ClusterStarting,
            None,
            format!(
                "🚀 cluster starting: leader + {} followers, W={} R={}, registry {}, \
                 delays sync {sd} s / async {ad} s, node logs in {}",
                cfg.followers,
                cfg.w,
                cfg.r,
                cfg.launch.registry.as_deref().unwrap_or("none"),
                cfg.launch.log_dir.display()
            ),
        );
        self.events.info(
            EventKind::ControlState,
            None,
            format!(
                "🗂️  coordinator state in {}: epoch {} ({}); nodes refuse requests of older \
                 epochs",
                self.control.describe(),
                self.control.epoch,
                match self.control.found() {
                    Some(m) => format!("a coordinator of epoch {} ran here before", m.epoch),
                    None => "the first coordinator here".to_string(),
                }
            ),
        );
        let kind = self.runtime.kind();
        let external = kind == super::runtime::RuntimeKind::External;
        if kind == super::runtime::RuntimeKind::Process {
            // Containers keep their data in volumes, external nodes where
            // their own flags say.
            self.prepare_data_dir()?;
        }
        self.prepare_runtime().await?;
        // Nodes a previous coordinator left running are adopted, not
        // restarted (kvlab's own processes only: see `adopt`), and so are
        // nodes that joined it (`--runtime external`: a standby taking over
        // in etcd mode finds them running; they will not join again).
        let adopted = if kind == super::runtime::RuntimeKind::Process || external {
            self.adopt_running().await?
        } else {
            super::adopt::Adopted::default()
        };
        if external {
            // Returns at once when every slot was adopted.
            self.wait_for_joins().await;
        }
        let damaged = if external {
            vec![]
        } else {
            self.start_all(&adopted.ids).await?
        };
        // Every leader start is an election: the most advanced node leads
        // (on a fresh cluster, every log is empty and `leader` keeps it);
        // unless an adopted leader still leads the highest term.
        let mut elected = adopted.leader_kept;
        for _ in 0..3 {
            if elected {
                break;
            }
            elected = self.elect(failover::Reason::Start).await;
            if elected {
                break;
            }
        }
        if !elected {
            anyhow::bail!("no node could be made the leader (see the events above)");
        }
        // A healthy node leads: rebuild the damaged ones from it.
        for (refused, role, port) in damaged {
            let id = refused.node_id.clone();
            self.set_aside_corrupt(&id, &anyhow::Error::new(refused))?;
            self.start_slot_once(id, role, port).await?;
        }
        let c = self.snapshot();
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        self.events.good(
            EventKind::ClusterReady,
            None,
            format!(
                "✅ cluster ready: {} alive followers, can write: {}, can read: {}",
                c.alive_followers(),
                c.can_write(cfg.w),
                c.can_read(cfg.r)
            ),
        );
        let roles: Vec<String> = std::iter::once(&c.leader)
            .chain(c.followers.iter())
            .map(|slot| format!("{} [{}]", slot.node_id, self.role_tag(&c, slot)))
            .collect();
        self.events.info(
            EventKind::Roles,
            None,
            format!("🧭 roles: {}", roles.join(", ")),
        );
        Ok(())
    }

    /// Starts the leader's and the followers' processes. Returns the nodes
    /// that refused their damaged log (each waiting for repair), or an
    /// error if the cluster must not start (see the module doc).
    /// `adopted`: slots whose running process was adopted (not started).
    async fn start_all(
        self: &Arc<Self>,
        adopted: &[String],
    ) -> anyhow::Result<Vec<(CorruptLogRefused, Role, u16)>> {
        let cfg = &self.config;
        let mut slots = vec![(LEADER_ID.to_string(), Role::Leader, cfg.node_base_port)];
        for i in 1..=cfg.followers {
            let port = cfg.node_base_port + i as u16;
            slots.push((format!("follower-{i}"), Role::Follower, port));
        }
        // Slots an adoption took from the map (a follower added by /spawn).
        let table = self.snapshot();
        for s in std::iter::once(&table.leader).chain(&table.followers) {
            if s.incarnation > 0 && !slots.iter().any(|(id, ..)| *id == s.node_id) {
                slots.push((s.node_id.clone(), s.role, s.port));
            }
        }
        slots.retain(|(id, ..)| !adopted.contains(id));
        // `start_slot_once`, not `start_slot`: a damaged follower is not
        // rebuilt before we know a healthy node holds every acknowledged write.
        let starts = slots
            .iter()
            .map(|(id, role, port)| self.start_slot_once(id.clone(), *role, *port));
        let results = futures::future::join_all(starts).await;
        let mut healthy = vec![];
        let mut damaged = vec![];
        for ((id, role, port), result) in slots.into_iter().zip(results) {
            match result {
                Ok(_) => healthy.push(id),
                Err(e) if e.is::<CorruptLogRefused>() && self.config.launch.storage.is_some() => {
                    let refused = e.downcast::<CorruptLogRefused>().expect("checked");
                    self.hold_for_repair(&refused);
                    damaged.push((refused, role, port));
                }
                Err(e) => return Err(e),
            }
        }
        if damaged.is_empty() {
            return Ok(damaged);
        }
        let unsafe_to_repair = healthy.is_empty() || damaged.len() > cfg.w;
        // `--unclean-failover` accepts the risk, but needs a healthy node.
        let accepted = cfg.unclean_failover && !healthy.is_empty();
        if unsafe_to_repair && !accepted {
            let refused = StartRefused {
                healthy,
                damaged: damaged.iter().map(|(r, ..)| r.to_string()).collect(),
                w: cfg.w,
            };
            // The event says why in one line; the error (printed at exit)
            // lists every node.
            let text = refused.to_string();
            let why = text.lines().next().unwrap_or_default();
            self.events
                .bad(EventKind::StartRefused, None, format!("⛔ {why}"));
            return Err(refused.into());
        }
        if unsafe_to_repair {
            self.events.bad(
                EventKind::StartRefused,
                None,
                format!(
                    "⚠️  UNCLEAN START (--unclean-failover): {} damaged logs may have held \
                     acknowledged writes no healthy node has; rebuilding them from {} anyway",
                    damaged.len(),
                    healthy.join(", ")
                ),
            );
        }
        Ok(damaged)
    }

    /// Says where the nodes keep their data, wiping it first with `--fresh`.
    fn prepare_data_dir(&self) -> anyhow::Result<()> {
        let Some(storage) = &self.config.launch.storage else {
            self.events.info(
                EventKind::Storage,
                None,
                "💾 in-memory cluster: a node that stops loses its data (--in-memory)",
            );
            return Ok(());
        };
        let dir = &storage.base_dir;
        if storage.fresh {
            self.kill_leftovers();
        }
        if storage.fresh && dir.exists() {
            wipe_keeping_secret(dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot wipe the data directory {} (--fresh): {e}",
                    dir.display()
                )
            })?;
        }
        if storage.fresh {
            // The wipe took the state file: save it again (its epoch and
            // incarnations still count; its slots are gone).
            self.control.forget_found_slots();
            self.control.save_found()?;
        }
        // Node directories, not the coordinator's own files, mean data.
        let recovering = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                name != crate::auth::CLUSTER_SECRET_DIR && name != crate::control::file::FILE_NAME
            })
        });
        self.events.info(
            EventKind::Storage,
            None,
            format!(
                "💾 nodes persist to {}/<node-id> with --fsync {}{}",
                dir.display(),
                storage.fsync.name(),
                if recovering {
                    " (existing data: nodes recover it; --fresh starts empty)"
                } else {
                    ""
                }
            ),
        );
        Ok(())
    }
}

impl Coordinator {
    /// `--fresh`: the nodes a previous coordinator left running are
    /// SIGKILLed before their data is wiped; only a pid that is still a
    /// kvlab node of that slot (its command line says so).
    fn kill_leftovers(&self) {
        let Some(map) = self.control.found() else {
            return;
        };
        for slot in &map.slots {
            let Some(pid) = slot.pid.filter(|&p| is_node_of(p, &slot.node_id)) else {
                continue;
            };
            super::launcher::signal(pid, libc::SIGKILL);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while crate::process::exists(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            self.events.warn(
                EventKind::Storage,
                Some(&slot.node_id),
                format!(
                    "🧹 {} (pid {pid}) was still running from an earlier coordinator:                      stopped (--fresh)",
                    slot.node_id
                ),
            );
        }
    }
}

/// Is `pid` a `kvlab node --id <node_id>` (and not some other process that
/// got the number since)?
fn is_node_of(pid: u32, node_id: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    let has = |w: &str| args.contains(&w.as_bytes());
    let id_follows = args
        .windows(2)
        .any(|w| w[0] == b"--id" && w[1] == node_id.as_bytes());
    has("node") && has("--supervisor-pid") && id_follows
}

/// `--fresh`: deletes everything in the data directory but the cluster's
/// secret ([`crate::auth::CLUSTER_SECRET_DIR`], which `kvlab up` keeps there
/// and has already read).
fn wipe_keeping_secret(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == crate::auth::CLUSTER_SECRET_DIR {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The cluster refuses to start: the damaged logs may have held acknowledged
/// writes that no healthy node holds.
#[derive(Debug, thiserror::Error)]
pub struct StartRefused {
    /// The nodes that recovered their log.
    healthy: Vec<String>,
    /// Each damaged node's refusal: its id, what recovery found, its log.
    damaged: Vec<String>,
    w: usize,
}

impl std::fmt::Display for StartRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = if self.healthy.is_empty() {
            "every node's log on disk is damaged before its last durable write".to_string()
        } else {
            format!(
                "{} nodes' logs are damaged before their last durable write, and a write was \
                 acknowledged once on the leader and W={} followers: the damaged logs may have \
                 held acknowledged writes that no healthy node holds",
                self.damaged.len(),
                self.w
            )
        };
        writeln!(
            f,
            "refusing to start the cluster: {why}. Starting would silently serve less than \
             was acknowledged. What each node found:"
        )?;
        for d in &self.damaged {
            writeln!(f, "  - DAMAGED: {d}")?;
        }
        for h in &self.healthy {
            writeln!(f, "  - healthy: {h} recovered its log")?;
        }
        write!(
            f,
            "What you can do: inspect the damaged segments (the offsets above) and restore \
             the directories from a backup; or accept losing what only they held: "
        )?;
        if self.healthy.is_empty() {
            write!(
                f,
                "move the damaged directories aside by hand (the cluster then starts empty), \
                 or start with --fresh"
            )
        } else {
            write!(
                f,
                "start again with --unclean-failover (the damaged nodes are set aside and \
                 rebuilt from {})",
                self.healthy.join(", ")
            )
        }
    }
}
