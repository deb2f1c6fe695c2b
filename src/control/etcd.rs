//! The replicated control store: the [`ClusterMap`] and the election of the
//! active coordinator, in an etcd cluster that several coordinator
//! processes share (`kvlab coordinator --control-store etcd://...`).
//!
//! Every key lives under `/kvlab/<cluster name>/`:
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `active` | [`ActiveRecord`]: who is in charge, and its epoch | the active coordinator's lease |
//! | `epoch` | the last epoch handed out (decimal) | forever |
//! | `map` | the [`ClusterMap`] (JSON) | forever |
//! | `members/<id>` | each coordinator's [`CoordinatorRef`] | that coordinator's lease |
//!
//! Invariants:
//! - **At most one active coordinator.** `active` is created only by a
//!   transaction that finds it absent ([`EtcdStore::campaign`]), attached to
//!   the winner's lease, so it disappears by itself when that lease lapses
//!   (the winner died, paused or lost etcd) and only then can another win.
//! - **Epochs only grow.** The same transaction that creates `active` puts
//!   `epoch` + 1, and it is conditioned on `epoch` not having changed since
//!   it was read: two campaigns can never hand out the same epoch.
//! - **A deposed coordinator cannot write the map.** A [`Mandate`] (what
//!   winning gives) writes `map` only in a transaction conditioned on
//!   `active`'s mod revision being the one its own campaign created
//!   ([`Mandate::save_map`]). Once its lease lapsed, `active` is gone or
//!   someone else's, and the write is refused ([`EtcdError::Deposed`]).
//! - **Every call has a deadline.** etcd that does not answer (a paused or
//!   partitioned member) is an error after [`EtcdStore::timeout`], never a
//!   hang: the coordinator's deposition depends on noticing in time.

use std::time::{Duration, Instant};

use etcdv3client::pb;
use etcdv3client::pb::compare::{CompareResult, TargetUnion};
use serde::{Deserialize, Serialize};

use super::ClusterMap;
use crate::api::CoordinatorRef;

/// The scheme of `--control-store`.
pub const SCHEME: &str = "etcd://";

/// `--cluster-name`'s default: the keys' prefix is `/kvlab/kvlab/`.
pub const DEFAULT_CLUSTER_NAME: &str = "kvlab";

/// The value of the `active` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveRecord {
    #[serde(flatten)]
    pub coordinator: CoordinatorRef,
    pub epoch: u64,
}

/// `active` as read from etcd: the record and the revision that created it
/// (a coordinator recognises its own mandate by it).
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub record: ActiveRecord,
    pub revision: i64,
}

/// What went wrong talking to etcd; each names the endpoints.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "bad --control-store {given:?}: {why} (expected etcd://HOST:PORT[,HOST:PORT...], \
         or `file` for coordinator.json in the data directory)"
    )]
    BadUrl { given: String, why: String },
    #[error("bad --cluster-name {0:?}: use letters, digits, '-', '_' and '.' only")]
    BadClusterName(String),
    #[error("etcd at {endpoints}: {what} failed: {source}")]
    Request {
        endpoints: String,
        what: &'static str,
        source: etcdv3client::Error,
    },
    #[error(
        "etcd at {endpoints}: {what} got no answer within {timeout:?} (is etcd running \
         and reachable? `etcdctl --endpoints {endpoints} endpoint health` tells)"
    )]
    Timeout {
        endpoints: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("etcd at {endpoints}: the value of {key} is not what kvlab wrote ({why})")]
    Corrupt {
        endpoints: String,
        key: String,
        why: String,
    },
    #[error("etcd at {endpoints}: lease {lease:x} has expired (its keep-alive came too late)")]
    LeaseExpired { endpoints: String, lease: i64 },
    #[error("etcd at {endpoints}: the keep-alive stream of lease {lease:x} ended")]
    KeepAliveEnded { endpoints: String, lease: i64 },
    #[error(
        "etcd at {endpoints}: this coordinator is no longer the active one (its `active` key \
         of revision {revision} is gone or replaced): refused to write the cluster map"
    )]
    Deposed { endpoints: String, revision: i64 },
}

/// Parses `--control-store etcd://HOST:PORT[,HOST:PORT...]` into the
/// endpoints (`HOST:PORT` each, in the order given). Pure.
pub fn parse_endpoints(given: &str) -> Result<Vec<String>, EtcdError> {
    let bad = |why: String| EtcdError::BadUrl {
        given: given.to_string(),
        why,
    };
    let rest = given
        .strip_prefix(SCHEME)
        .ok_or_else(|| bad("it does not start with etcd://".into()))?;
    let mut endpoints = Vec::new();
    for item in rest.split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        endpoints.push(parse_endpoint(item).map_err(bad)?);
    }
    if endpoints.is_empty() {
        return Err(bad("it names no endpoint".into()));
    }
    Ok(endpoints)
}

/// One `HOST:PORT`: a host name, an IPv4 address or a bracketed IPv6 one,
/// and a port above 0. Nothing else (no path, user or query).
fn parse_endpoint(item: &str) -> Result<String, String> {
    let url = url::Url::parse(&format!("http://{item}"))
        .map_err(|e| format!("endpoint {item:?} is not HOST:PORT ({e})"))?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("endpoint {item:?} has no host"))?;
    let port = url
        .port()
        .ok_or_else(|| format!("endpoint {item:?} has no port (etcd's client port is 2379)"))?;
    if port == 0 {
        return Err(format!("endpoint {item:?} has port 0"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!("endpoint {item:?} must be HOST:PORT only"));
    }
    Ok(format!("{host}:{port}"))
}

/// Checks `--cluster-name`: it becomes part of every key. Pure.
pub fn check_cluster_name(name: &str) -> Result<(), EtcdError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EtcdError::BadClusterName(name.to_string()))
    }
}

/// One cluster's keys in one etcd cluster.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    /// Shared: the client is large, and every clone of the store (each
    /// mandate holds one) uses the same connections.
    client: std::sync::Arc<etcdv3client::EtcdClient>,
    endpoints: Vec<String>,
    prefix: String,
    timeout: Duration,
}

impl EtcdStore {
    /// Connects to `endpoints` (`HOST:PORT` each, see [`parse_endpoints`]).
    /// Connections are made lazily with several endpoints (any of them
    /// answers), at once with one.
    pub async fn connect(
        endpoints: &[String],
        cluster_name: &str,
        timeout: Duration,
    ) -> Result<EtcdStore, EtcdError> {
        check_cluster_name(cluster_name)?;
        let joined = endpoints.join(",");
        let uris: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let client = tokio::time::timeout(timeout, etcdv3client::EtcdClient::new(uris, None))
            .await
            .map_err(|_| EtcdError::Timeout {
                endpoints: joined.clone(),
                what: "connecting",
                timeout,
            })?
            .map_err(|source| EtcdError::Request {
                endpoints: joined.clone(),
                what: "connecting",
                source,
            })?;
        Ok(EtcdStore {
            client: std::sync::Arc::new(client),
            endpoints: endpoints.to_vec(),
            prefix: format!("/kvlab/{cluster_name}/"),
            timeout,
        })
    }

    /// The endpoints, comma-separated (as `/status` shows the store).
    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// How long any one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }

    /// Runs one call with the deadline, naming it in the error.
    async fn call<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, etcdv3client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(EtcdError::Timeout {
                endpoints: self.endpoints(),
                what,
                timeout: self.timeout,
            }),
            Ok(Err(source)) => Err(EtcdError::Request {
                endpoints: self.endpoints(),
                what,
                source,
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Reads one key: its value and mod revision, or `None`.
    async fn get(&self, what: &'static str, name: &str) -> Result<Option<pb::KeyValue>, EtcdError> {
        let mut kv = self.client.kv.clone();
        let request = pb::RangeRequest::new(self.key(name));
        let resp = self.call(what, kv.range(request)).await?;
        Ok(resp.kvs.into_iter().next())
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        value: &[u8],
    ) -> Result<T, EtcdError> {
        serde_json::from_slice(value).map_err(|e| EtcdError::Corrupt {
            endpoints: self.endpoints(),
            key: format!("{}{name}", self.prefix),
            why: e.to_string(),
        })
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1); returns its id.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let mut lease = self.client.lease.clone();
        let request = pb::LeaseGrantRequest {
            ttl: ttl.as_secs().max(1) as i64,
            id: 0,
        };
        let resp = self
            .call("granting a lease", lease.lease_grant(request))
            .await?;
        Ok(resp.id)
    }

    /// Ends a lease at once: the keys attached to it (`active`, our
    /// `members/<id>`) go with it, so a standby need not wait for the TTL.
    pub async fn revoke_lease(&self, id: i64) -> Result<(), EtcdError> {
        let mut lease = self.client.lease.clone();
        let request = pb::LeaseRevokeRequest { id };
        self.call("revoking the lease", lease.lease_revoke(request))
            .await
            .map(|_| ())
    }

    /// Keeps the lease alive every `every` until a renewal fails, and
    /// reports each renewal etcd confirmed through `renewed`, with the time
    /// its request was *sent* (etcd's lease runs at least `ttl` from then,
    /// so that is the safe instant to count from). Returns the error that
    /// ended it: the caller must then consider the lease lost.
    pub async fn keep_alive(
        &self,
        id: i64,
        every: Duration,
        renewed: tokio::sync::watch::Sender<Instant>,
    ) -> EtcdError {
        let (mut tx, rx) = futures::channel::mpsc::channel::<pb::LeaseKeepAliveRequest>(1);
        // The first request goes in before the stream opens: etcd answers
        // the stream's headers only with its first renewal.
        let mut sent = Instant::now();
        if tx.try_send(pb::LeaseKeepAliveRequest { id }).is_err() {
            return self.keep_alive_ended(id);
        }
        let mut lease = self.client.lease.clone();
        let mut inbound = match self
            .call("opening the lease keep-alive", lease.lease_keep_alive(rx))
            .await
        {
            Ok(stream) => stream,
            Err(e) => return e,
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let answer = match self
                .call("keeping the lease alive", async {
                    inbound.message().await.map_err(etcdv3client::Error::from)
                })
                .await
            {
                Ok(Some(answer)) => answer,
                Ok(None) => return self.keep_alive_ended(id),
                Err(e) => return e,
            };
            if answer.ttl <= 0 {
                return EtcdError::LeaseExpired {
                    endpoints: self.endpoints(),
                    lease: id,
                };
            }
            if renewed.send(sent).is_err() {
                // Nobody listens any more: the coordinator is stopping.
                return self.keep_alive_ended(id);
            }
            tick.tick().await;
            sent = Instant::now();
            if futures::SinkExt::send(&mut tx, pb::LeaseKeepAliveRequest { id })
                .await
                .is_err()
            {
                return self.keep_alive_ended(id);
            }
        }
    }

    fn keep_alive_ended(&self, lease: i64) -> EtcdError {
        EtcdError::KeepAliveEnded {
            endpoints: self.endpoints(),
            lease,
        }
    }

    /// Registers this coordinator under `members/<id>` with its lease: the
    /// key lives as long as the coordinator does (the standbys list).
    pub async fn register(&self, me: &CoordinatorRef, lease: i64) -> Result<(), EtcdError> {
        let mut kv = self.client.kv.clone();
        let value = serde_json::to_vec(me).expect("a CoordinatorRef always serializes");
        let request = pb::PutRequest {
            key: self.key(&format!("members/{}", me.id)),
            value,
            lease,
            ..Default::default()
        };
        self.call("registering this coordinator", kv.put(request))
            .await
            .map(|_| ())
    }

    /// Every registered coordinator, by id.
    pub async fn members(&self) -> Result<Vec<CoordinatorRef>, EtcdError> {
        let mut kv = self.client.kv.clone();
        let request = pb::RangeRequest::new(self.key("members/")).with_prefix();
        let resp = self
            .call("listing the coordinators", kv.range(request))
            .await?;
        resp.kvs
            .iter()
            .map(|kv| self.decode("members/", &kv.value))
            .collect()
    }

    /// Who is active now, if anyone.
    pub async fn active(&self) -> Result<Option<Active>, EtcdError> {
        let Some(kv) = self.get("reading the active coordinator", "active").await? else {
            return Ok(None);
        };
        let record: ActiveRecord = self.decode("active", &kv.value)?;
        Ok(Some(Active {
            record,
            revision: kv.mod_revision,
        }))
    }

    /// The last epoch handed out, and the revision of the `epoch` key (0:
    /// no coordinator ever won here).
    async fn epoch(&self) -> Result<(u64, i64), EtcdError> {
        let Some(kv) = self.get("reading the epoch", "epoch").await? else {
            return Ok((0, 0));
        };
        let text = String::from_utf8_lossy(&kv.value);
        let epoch = text.trim().parse().map_err(|_| EtcdError::Corrupt {
            endpoints: self.endpoints(),
            key: format!("{}epoch", self.prefix),
            why: format!("{text:?} is not a number"),
        })?;
        Ok((epoch, kv.mod_revision))
    }

    /// One election round: wins iff `active` does not exist (and nobody
    /// took an epoch meanwhile); then `active` (attached to `lease`) and
    /// `epoch` + 1 are put in the same transaction. `None`: lost this round.
    pub async fn campaign(
        &self,
        me: &CoordinatorRef,
        lease: i64,
    ) -> Result<Option<Mandate>, EtcdError> {
        let (last, epoch_revision) = self.epoch().await?;
        let epoch = last + 1;
        let record = ActiveRecord {
            coordinator: me.clone(),
            epoch,
        };
        let txn = campaign_txn(
            self.key("active"),
            self.key("epoch"),
            epoch_revision,
            &record,
            lease,
        );
        let mut kv = self.client.kv.clone();
        let resp = self.call("campaigning", kv.txn(txn)).await?;
        if !resp.succeeded {
            return Ok(None);
        }
        let revision = resp.header.map(|h| h.revision).unwrap_or_default();
        Ok(Some(Mandate {
            store: self.clone(),
            epoch,
            revision,
        }))
    }

    /// The cluster map, if a coordinator ever saved one.
    pub async fn load_map(&self) -> Result<Option<ClusterMap>, EtcdError> {
        match self.get("reading the cluster map", "map").await? {
            Some(kv) => self.decode("map", &kv.value).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes everything under this cluster's prefix (`--fresh` in etcd
    /// mode, and tests). Leases and their keys go with their owners.
    pub async fn wipe(&self) -> Result<(), EtcdError> {
        let mut kv = self.client.kv.clone();
        let mut request = pb::DeleteRangeRequest {
            key: self.key(""),
            ..Default::default()
        };
        request.range_end = prefix_end(&request.key);
        self.call("deleting the cluster's keys", kv.delete_range(request))
            .await
            .map(|_| ())
    }
}

/// The campaign's transaction: if `active` does not exist and `epoch` is
/// still at the revision read (0: absent), put both. Pure, so it is tested
/// without etcd.
fn campaign_txn(
    active_key: Vec<u8>,
    epoch_key: Vec<u8>,
    epoch_revision: i64,
    record: &ActiveRecord,
    lease: i64,
) -> pb::TxnRequest {
    let value = serde_json::to_vec(record).expect("an ActiveRecord always serializes");
    pb::TxnRequest::new()
        .with_if(vec![
            // Version 0: the key does not exist.
            pb::Compare::new(
                active_key.clone(),
                CompareResult::Equal,
                TargetUnion::Version(0),
            ),
            pb::Compare::new(
                epoch_key.clone(),
                CompareResult::Equal,
                TargetUnion::ModRevision(epoch_revision),
            ),
        ])
        .with_then(vec![
            pb::PutRequest {
                key: active_key,
                value,
                lease,
                ..Default::default()
            }
            .into(),
            pb::PutRequest {
                key: epoch_key,
                value: record.epoch.to_string().into_bytes(),
                ..Default::default()
            }
            .into(),
        ])
}

/// The end of the range of every key starting with `prefix` (etcd's
/// convention: the prefix with its last byte below 0xff plus one).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What winning the election gives: the epoch, and the right to write the
/// map as long as `active` is still the key this campaign created.
#[derive(Debug, Clone)]
pub struct Mandate {
    store: EtcdStore,
    pub epoch: u64,
    /// The mod revision of the `active` key this campaign created.
    pub revision: i64,
}

impl Mandate {
    pub fn store(&self) -> &EtcdStore {
        &self.store
    }

    /// Saves the map, fenced: refused with [`EtcdError::Deposed`] unless
    /// `active` is still ours.
    pub async fn save_map(&self, map: &ClusterMap) -> Result<(), EtcdError> {
        let s = &self.store;
        let value = serde_json::to_vec(map).expect("a map always serializes");
        let txn = fenced_put(s.key("active"), self.revision, s.key("map"), value);
        let mut kv = s.client.kv.clone();
        let resp = s.call("saving the cluster map", kv.txn(txn)).await?;
        if resp.succeeded {
            Ok(())
        } else {
            Err(EtcdError::Deposed {
                endpoints: s.endpoints(),
                revision: self.revision,
            })
        }
    }
}

/// A put of `key` only while `active` is at `revision`. Pure.
fn fenced_put(active_key: Vec<u8>, revision: i64, key: Vec<u8>, value: Vec<u8>) -> pb::TxnRequest {
    pb::TxnRequest::new()
        .with_if(vec![pb::Compare::new(
            active_key,
            CompareResult::Equal,
            TargetUnion::ModRevision(revision),
        )])
        .with_then(vec![pb::PutRequest {
            key,
            value,
            ..Default::default()
        }
        .into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_in_order_and_bad_urls_say_why() {
        assert_eq!(
            parse_endpoints("etcd://127.0.0.1:2379, localhost:22379,[::1]:32379").unwrap(),
            vec!["127.0.0.1:2379", "localhost:22379", "[::1]:32379"]
        );
        for (given, why) in [
            ("http://127.0.0.1:2379", "does not start with etcd://"),
            ("etcd://", "names no endpoint"),
            ("etcd://,,", "names no endpoint"),
            ("etcd://127.0.0.1", "has no port"),
            ("etcd://127.0.0.1:0", "port 0"),
            ("etcd://127.0.0.1:99999", "not HOST:PORT"),
            ("etcd://127.0.0.1:2379/x", "HOST:PORT only"),
            ("etcd://user@h:2379", "HOST:PORT only"),
        ] {
            let e = parse_endpoints(given).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(given), "{given}: {e}");
        }
    }

    #[test]
    fn cluster_names_are_checked() {
        assert!(check_cluster_name("lab-1.a_b").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_cluster_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_campaign_puts_active_and_the_next_epoch_only_if_active_is_absent() {
        let record = ActiveRecord {
            coordinator: CoordinatorRef {
                id: "c1".into(),
                url: "http://127.0.0.1:8000".into(),
                pid: Some(7),
            },
            epoch: 5,
        };
        let txn = campaign_txn(b"/a".to_vec(), b"/e".to_vec(), 42, &record, 9);
        assert_eq!(txn.compare.len(), 2);
        assert_eq!(txn.compare[0].target_union, Some(TargetUnion::Version(0)));
        assert_eq!(
            txn.compare[1].target_union,
            Some(TargetUnion::ModRevision(42))
        );
        let puts: Vec<&pb::PutRequest> = txn
            .success
            .iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(p)) => p,
                other => panic!("not a put: {other:?}"),
            })
            .collect();
        assert_eq!(puts[0].lease, 9, "active dies with the lease");
        let back: ActiveRecord = serde_json::from_slice(&puts[0].value).unwrap();
        assert_eq!(back, record);
        assert_eq!(puts[1].value, b"5");
        assert_eq!(puts[1].lease, 0, "the epoch outlives every lease");
    }

    #[test]
    fn a_map_save_is_conditioned_on_our_active_revision() {
        let txn = fenced_put(b"/a".to_vec(), 17, b"/m".to_vec(), b"{}".to_vec());
        assert_eq!(
            txn.compare[0].target_union,
            Some(TargetUnion::ModRevision(17))
        );
        assert_eq!(txn.compare[0].key, b"/a");
        assert!(txn.failure.is_empty());
    }

    #[test]
    fn the_prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/kvlab/x/"), b"/kvlab/x0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
