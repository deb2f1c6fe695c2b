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
//!   comes up.

use std::sync::Arc;

use super::failover;
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
        let kind = self.runtime.kind();
        let external = kind == super::runtime::RuntimeKind::External;
        if kind == super::runtime::RuntimeKind::Process {
            // Containers keep their data in volumes, external nodes where
            // their own flags say.
            self.prepare_data_dir()?;
        }
        self.prepare_runtime().await?;
        if external {
            self.wait_for_joins().await;
        } else {
            let mut starts =
                vec![self.start_slot(LEADER_ID.to_string(), Role::Leader, cfg.node_base_port)];
            for i in 1..=cfg.followers {
                let port = cfg.node_base_port + i as u16;
                starts.push(self.start_slot(format!("follower-{i}"), Role::Follower, port));
            }
            for result in futures::future::join_all(starts).await {
                result?;
            }
        }
        // Every leader start is an election: the most advanced node leads
        // (on a fresh cluster, every log is empty and `leader` keeps it).
        let mut elected = false;
        for _ in 0..3 {
            elected = self.elect(failover::Reason::Start).await;
            if elected {
                break;
            }
        }
        if !elected {
            anyhow::bail!("no node could be made the leader (see the events above)");
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
        if storage.fresh && dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot wipe the data directory {} (--fresh): {e}",
                    dir.display()
                )
            })?;
        }
        let recovering = dir.exists();
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
