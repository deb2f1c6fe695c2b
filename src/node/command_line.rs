//! A node's command line, as whoever starts a node writes it: the
//! coordinator for a child process, `hosts::docker` for a container. It
//! lives next to [`super::Args`], which parses it, and a round-trip test
//! keeps the two in step.

use std::path::PathBuf;

use crate::api::Role;
use crate::storage::FsyncPolicy;
use crate::tls::TlsArgs;

/// One node to start.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub node_id: String,
    pub role: Role,
    pub port: u16,
    pub incarnation: u64,
}

/// What every node of a cluster is told (the same for each).
#[derive(Debug, Clone)]
pub struct NodeFlags {
    pub sync_delay: f64,
    pub async_delay: f64,
    pub heartbeat_interval: f64,
    pub log_retain: usize,
    /// `None`: the nodes keep everything in memory.
    pub storage: Option<StorageFlags>,
    /// `--tls` and, when there are any, the cluster's TLS files.
    pub tls: TlsArgs,
    /// `Some` for a node kvlab starts as a process on this machine: it
    /// watches its supervisor and may be adopted (see `node::supervision`).
    pub supervisor: Option<Supervisor>,
    /// `--internal-wire` (written only when it is not the default).
    pub internal_wire: crate::http::wire::Mode,
}

/// `--supervisor-pid` and `--orphan-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervisor {
    pub pid: u32,
    /// Seconds the node waits for an adoption once the supervisor is gone.
    pub orphan_timeout: u64,
}

/// How the nodes persist their data.
#[derive(Debug, Clone)]
pub struct StorageFlags {
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    pub snapshot_every: u64,
    pub simulate_power_loss: bool,
}

/// Where a node runs, as its command line says it: the address it listens
/// on (and, behind NAT or in a container, the URL it is reached at), the
/// registry as seen from there, and its data directory there.
pub struct Placement<'a> {
    pub host: &'a str,
    pub advertise: Option<&'a str>,
    pub registry: Option<&'a str>,
    pub data_dir: Option<PathBuf>,
}

/// The `kvlab node ...` arguments (without the binary) for `spec`.
pub fn node_args(flags: &NodeFlags, spec: &NodeSpec, at: &Placement) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "node".into(),
        "--id".into(),
        spec.node_id.clone(),
        "--port".into(),
        spec.port.to_string(),
        "--role".into(),
        spec.role.as_str().into(),
        "--host".into(),
        at.host.into(),
        "--incarnation".into(),
        spec.incarnation.to_string(),
        "--sync-delay".into(),
        flags.sync_delay.to_string(),
        "--async-delay".into(),
        flags.async_delay.to_string(),
        "--heartbeat-interval".into(),
        flags.heartbeat_interval.to_string(),
        "--log-retain".into(),
        flags.log_retain.to_string(),
    ];
    let mut flag = |name: &str, value: String| args.extend([name.to_string(), value]);
    if let Some(url) = at.advertise {
        flag("--advertise", url.into());
    }
    if let Some(registry) = at.registry {
        flag("--registry", registry.into());
    }
    flag("--tls", flags.tls.mode.name().into());
    if flags.internal_wire == crate::http::wire::Mode::Http {
        flag("--internal-wire", "http".into());
    }
    let files = [
        ("--tls-ca", &flags.tls.tls_ca),
        ("--tls-cert", &flags.tls.tls_cert),
        ("--tls-key", &flags.tls.tls_key),
    ];
    for (name, path) in files {
        if let Some(path) = path {
            flag(name, path.display().to_string());
        }
    }
    if let Some(s) = flags.supervisor {
        flag("--supervisor-pid", s.pid.to_string());
        flag("--orphan-timeout", s.orphan_timeout.to_string());
    }
    if let (Some(storage), Some(dir)) = (&flags.storage, &at.data_dir) {
        flag("--data-dir", dir.display().to_string());
        flag("--fsync", storage.fsync.name().into());
        flag("--fsync-interval-ms", storage.fsync_interval_ms.to_string());
        flag("--snapshot-every", storage.snapshot_every.to_string());
        if storage.simulate_power_loss {
            args.push("--simulate-power-loss".into());
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::node::{Args, RoleArg};

    #[test]
    fn the_command_line_a_starter_writes_parses_back_to_the_same_values() {
        let flags = NodeFlags {
            sync_delay: 0.25,
            async_delay: 7.5,
            heartbeat_interval: 1.5,
            log_retain: 1234,
            storage: Some(StorageFlags {
                fsync: FsyncPolicy::Interval(FsyncPolicy::DEFAULT_INTERVAL),
                fsync_interval_ms: 17,
                snapshot_every: 99,
                simulate_power_loss: true,
            }),
            tls: TlsArgs {
                mode: crate::tls::Mode::On,
                tls_ca: Some("/tls/ca.pem".into()),
                tls_cert: Some("/tls/cert.pem".into()),
                tls_key: Some("/tls/key.pem".into()),
            },
            supervisor: Some(Supervisor {
                pid: 4321,
                orphan_timeout: 7,
            }),
            internal_wire: crate::http::wire::Mode::Http,
        };
        let spec = NodeSpec {
            node_id: "follower-3".into(),
            role: Role::Follower,
            port: 7004,
            incarnation: 42,
        };
        let at = Placement {
            host: "0.0.0.0",
            advertise: Some("http://10.0.0.4:7004"),
            registry: Some("http://10.0.0.1:9000"),
            data_dir: Some(PathBuf::from("/data")),
        };
        let args = Args::try_parse_from(node_args(&flags, &spec, &at)).unwrap();
        assert_eq!(args.id, spec.node_id);
        assert_eq!(args.port, spec.port);
        assert_eq!(args.role, RoleArg::Follower);
        assert_eq!(args.host.to_string(), at.host);
        assert_eq!(args.incarnation, spec.incarnation);
        assert_eq!(args.sync_delay, flags.sync_delay);
        assert_eq!(args.async_delay, flags.async_delay);
        assert_eq!(args.heartbeat_interval, flags.heartbeat_interval);
        assert_eq!(args.log_retain, flags.log_retain);
        assert_eq!(args.advertise.as_deref(), at.advertise);
        assert_eq!(args.registry.as_deref(), at.registry);
        assert_eq!(args.data_dir, at.data_dir);
        let storage = flags.storage.as_ref().unwrap();
        assert_eq!(args.fsync, storage.fsync);
        assert_eq!(args.fsync_interval_ms, storage.fsync_interval_ms);
        assert_eq!(args.snapshot_every, storage.snapshot_every);
        assert_eq!(args.simulate_power_loss, storage.simulate_power_loss);
        assert_eq!(args.tls.mode, crate::tls::Mode::On);
        assert_eq!(args.tls.files(), flags.tls.files());
        assert_eq!(args.supervisor_pid, Some(4321));
        assert_eq!(args.orphan_timeout, 7);
        assert_eq!(args.internal_wire, crate::http::wire::Mode::Http);

        // A leader in memory, with no registry: the defaults stand.
        let memory = NodeFlags {
            storage: None,
            tls: TlsArgs::default(),
            supervisor: None,
            internal_wire: crate::http::wire::Mode::Frames,
            ..flags
        };
        let leader = NodeSpec {
            node_id: "leader".into(),
            role: Role::Leader,
            ..spec
        };
        let here = Placement {
            host: "127.0.0.1",
            advertise: None,
            registry: None,
            data_dir: Some(PathBuf::from("/ignored/without/storage")),
        };
        let args = Args::try_parse_from(node_args(&memory, &leader, &here)).unwrap();
        assert_eq!(args.id, "leader");
        assert_eq!(args.role, RoleArg::Leader);
        assert_eq!(args.host.to_string(), "127.0.0.1");
        assert_eq!(
            (args.advertise, args.registry, args.data_dir),
            (None, None, None)
        );
        assert_eq!(args.tls.mode, crate::tls::Mode::Auto);
        assert_eq!(args.tls.files(), None);
        assert_eq!(args.supervisor_pid, None);
        assert_eq!(args.orphan_timeout, crate::node::DEFAULT_ORPHAN_TIMEOUT);
        assert_eq!(args.internal_wire, crate::http::wire::Mode::Frames);
    }
}
