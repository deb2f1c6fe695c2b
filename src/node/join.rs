//! `kvlab node --join URL`: a node that someone else started (Compose,
//! systemd, Kubernetes) asks a running coordinator to take it in.
//!
//! The coordinator (run with `--runtime external`) answers with what a node
//! it launched would have been given on its command line: its incarnation,
//! the replication delays, the heartbeat interval, the registry. From then on
//! the node is supervised like any other: it heartbeats, it is declared dead
//! when silent, and a restart by its own supervisor is a new incarnation
//! that catches up.
//!
//! Invariants:
//! - the node serves nothing before the coordinator has answered: its
//!   incarnation is what fences an older process of the same id;
//! - a node started before its coordinator waits for it (supervisors start
//!   everything at once), but a refusal (a full cluster, a coordinator that
//!   launches its own nodes) ends the process with the coordinator's reason.

use std::time::Duration;

use super::Args;
use crate::api::{JoinRequest, JoinResponse, NOT_ACTIVE_COORDINATOR};
use crate::http::{describe_reqwest_error, error_detail};

/// How often a node retries a coordinator that does not answer yet.
const RETRY: Duration = Duration::from_secs(1);

/// The URL this node is reached at: `--advertise`, or its listen address
/// (https where it speaks TLS).
pub fn own_url(args: &Args) -> String {
    args.advertise
        .clone()
        .unwrap_or_else(|| crate::tls::url(args.host, args.host, args.port))
}

/// Refuses flags a joining node cannot run with (checked before it listens).
pub fn check(args: &Args) -> anyhow::Result<()> {
    if args.advertise.is_none() && args.host.is_unspecified() {
        anyhow::bail!(
            "--join with --host {} needs --advertise URL: the address others reach this \
             node at (for example http://follower-1:{})",
            args.host,
            args.port
        );
    }
    Ok(())
}

/// Joins the coordinator at `coordinators` (one URL, or several separated
/// by commas: the cluster's coordinators in etcd mode, of which the active
/// one takes the node in), then applies its answer to `args`.
pub async fn join(args: &mut Args, coordinators: &str) -> anyhow::Result<()> {
    let list: Vec<&str> = coordinators
        .split(',')
        .map(|c| c.trim().trim_end_matches('/'))
        .filter(|c| !c.is_empty())
        .collect();
    anyhow::ensure!(!list.is_empty(), "--join names no coordinator");
    let request = JoinRequest {
        node_id: args.id.clone(),
        url: own_url(args),
    };
    let http = crate::http::client_from(&args.id, Duration::from_secs(2));
    let mut waiting = false;
    let (answer, coordinator) = 'found: loop {
        for coordinator in &list {
            let sent = http
                .post(format!("{coordinator}/join"))
                .timeout(Duration::from_secs(5))
                .json(&request)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    break 'found (resp.json::<JoinResponse>().await?, *coordinator);
                }
                Ok(resp) => {
                    let status = resp.status();
                    let detail = error_detail(resp).await;
                    // A standby coordinator: the active one is another.
                    if detail.as_str() == Some(NOT_ACTIVE_COORDINATOR) {
                        continue;
                    }
                    anyhow::bail!(
                        "the coordinator {coordinator} refused the join ({status}): {detail}"
                    );
                }
                Err(e) => {
                    if !waiting {
                        tracing::warn!(%coordinator, error = %describe_reqwest_error(&e),
                            "coordinator not reachable yet; retrying every second");
                        waiting = true;
                    }
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    };
    tracing::info!(%coordinator, incarnation = answer.incarnation, "joined the cluster");
    apply(args, answer, coordinator);
    Ok(())
}

/// The coordinator's settings win; the node keeps its own disk settings and
/// a `--registry` it was given.
fn apply(args: &mut Args, answer: JoinResponse, coordinator: &str) {
    args.incarnation = answer.incarnation;
    args.sync_delay = answer.sync_delay;
    args.async_delay = answer.async_delay;
    args.heartbeat_interval = answer.heartbeat_interval;
    args.log_retain = answer.log_retain;
    if args.registry.is_none() {
        args.registry = answer
            .registry
            .map(|r| registry_seen_from_node(&r, coordinator));
    }
}

/// The coordinator names its registry as it reaches it. When that is a
/// loopback or unspecified address (the registry runs beside it, in `kvlab
/// up`), the node reaches it on the coordinator's host instead.
fn registry_seen_from_node(registry: &str, coordinator: &str) -> String {
    let (Ok(mut reg), Ok(coord)) = (url::Url::parse(registry), url::Url::parse(coordinator)) else {
        return registry.to_string();
    };
    let local = match reg.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if local && reg.set_host(coord.host_str()).is_ok() {
        return reg.as_str().trim_end_matches('/').to_string();
    }
    registry.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_join_list_without_a_coordinator_is_refused() {
        use clap::Parser;
        let mut args = Args::parse_from(["node", "--id", "n1", "--port", "7001"]);
        let e = join(&mut args, " , ,").await.unwrap_err().to_string();
        assert!(e.contains("--join names no coordinator"), "{e}");
    }

    #[test]
    fn a_local_registry_is_reached_on_the_coordinators_host() {
        let r = registry_seen_from_node("http://127.0.0.1:9000", "http://cluster:7000");
        assert_eq!(r, "http://cluster:9000");
        let r = registry_seen_from_node("http://0.0.0.0:9000", "http://10.1.2.3:7000");
        assert_eq!(r, "http://10.1.2.3:9000");
        // A registry named by a routable address is taken as it is.
        let r = registry_seen_from_node("http://registry:9000", "http://cluster:7000");
        assert_eq!(r, "http://registry:9000");
        let r = registry_seen_from_node("not a url", "http://cluster:7000");
        assert_eq!(r, "not a url");
    }

    #[test]
    fn the_coordinators_settings_win_but_not_a_given_registry() {
        use clap::Parser;
        let mut args = Args::parse_from([
            "node",
            "--id",
            "n1",
            "--port",
            "7001",
            "--registry",
            "http://r:9000",
        ]);
        let answer = JoinResponse {
            node_id: "n1".into(),
            incarnation: 7,
            registry: Some("http://127.0.0.1:9000".into()),
            sync_delay: 0.0,
            async_delay: 1.0,
            heartbeat_interval: 0.5,
            log_retain: 10,
        };
        apply(&mut args, answer.clone(), "http://c:7000");
        assert_eq!(args.incarnation, 7);
        assert_eq!((args.sync_delay, args.async_delay), (0.0, 1.0));
        assert_eq!(args.registry.as_deref(), Some("http://r:9000"));
        args.registry = None;
        apply(&mut args, answer, "http://c:7000");
        assert_eq!(args.registry.as_deref(), Some("http://c:9000"));
    }
}
