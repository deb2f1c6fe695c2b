//! The etcd control store (`kvlab::control::etcd`) against a real etcd:
//! the election, the epoch counter, fenced map saves, leases that lapse
//! and leases kept alive, and what an unreachable etcd looks like.
//!
//! Skips without `etcd` on the PATH unless `KVLAB_REQUIRE_ETCD=1`.

mod common;

use std::time::{Duration, Instant};

use common::etcd::{self, Etcd};
use kvlab::api::CoordinatorRef;
use kvlab::control::etcd::{EtcdError, EtcdStore};
use kvlab::control::ClusterMap;

fn me(id: &str) -> CoordinatorRef {
    CoordinatorRef {
        id: id.into(),
        url: format!("http://127.0.0.1:1/{id}"),
        pid: Some(1),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn store(etcd: &Etcd, cluster: &str) -> EtcdStore {
    EtcdStore::connect(&etcd.endpoints, cluster, Duration::from_secs(2))
        .await
        .unwrap()
}

#[test]
fn one_campaign_wins_each_epoch_and_a_deposed_coordinator_cannot_save_the_map() {
    if !etcd::available("etcd election") {
        return;
    }
    let etcd = Etcd::start(3);
    runtime().block_on(async {
        let s = store(&etcd, "election").await;
        let ttl = Duration::from_secs(3);
        let (l1, l2) = (
            s.grant_lease(ttl).await.unwrap(),
            s.grant_lease(ttl).await.unwrap(),
        );
        s.register(&me("c1"), l1).await.unwrap();
        s.register(&me("c2"), l2).await.unwrap();
        assert_eq!(s.active().await.unwrap(), None);

        let first = s.campaign(&me("c1"), l1).await.unwrap().expect("c1 wins");
        assert_eq!(first.epoch, 1);
        assert!(
            s.campaign(&me("c2"), l2).await.unwrap().is_none(),
            "c2 loses"
        );
        let active = s.active().await.unwrap().unwrap();
        assert_eq!(
            (active.record.coordinator.id.as_str(), active.record.epoch),
            ("c1", 1)
        );
        assert_eq!(active.revision, first.revision);
        let ids: Vec<String> = s
            .members()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["c1", "c2"]);

        let map = ClusterMap {
            epoch: 1,
            next_incarnation: 4,
            term: 2,
            followers: 2,
            w: 2,
            r: 1,
            ..ClusterMap::default()
        };
        first.save_map(&map).await.unwrap();
        assert_eq!(s.load_map().await.unwrap(), Some(map.clone()));

        // c1's lease ends (as when it dies): `active` and its member key go.
        s.revoke_lease(l1).await.unwrap();
        assert_eq!(s.active().await.unwrap(), None);
        let second = s
            .campaign(&me("c2"), l2)
            .await
            .unwrap()
            .expect("c2 wins now");
        assert_eq!(second.epoch, 2, "epochs only grow");

        // c1 wakes up and tries to save: refused, the map is untouched.
        let stale = ClusterMap {
            term: 99,
            ..map.clone()
        };
        match first.save_map(&stale).await {
            Err(e @ EtcdError::Deposed { .. }) => {
                let text = e.to_string();
                assert!(text.contains("no longer the active one"), "{text}");
                assert!(
                    text.contains(&etcd.endpoints[0]),
                    "names the endpoints: {text}"
                );
            }
            other => panic!("a deposed save must be refused, got {other:?}"),
        }
        assert_eq!(s.load_map().await.unwrap(), Some(map));
        let ids: Vec<String> = s
            .members()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["c2"]);
        // Two clusters in one etcd do not see each other's keys.
        let other = store(&etcd, "another").await;
        assert_eq!(other.active().await.unwrap(), None);
        assert_eq!(other.load_map().await.unwrap(), None);
        s.wipe().await.unwrap();
        assert_eq!(s.load_map().await.unwrap(), None);
    });
}

#[test]
fn a_lease_kept_alive_holds_active_and_one_left_alone_lapses_within_its_ttl() {
    if !etcd::available("etcd leases") {
        return;
    }
    let etcd = Etcd::start(1);
    runtime().block_on(async {
        let s = store(&etcd, "leases").await;
        let ttl = Duration::from_secs(2);
        let kept = s.grant_lease(ttl).await.unwrap();
        let (tx, mut renewed) = tokio::sync::watch::channel(Instant::now());
        let keeper = {
            let s = s.clone();
            tokio::spawn(async move { s.keep_alive(kept, ttl / 3, tx).await })
        };
        s.campaign(&me("kept"), kept).await.unwrap().expect("wins");
        // Three TTLs later it is still active, renewed all along.
        let start = Instant::now();
        let mut renewals = 0;
        while start.elapsed() < ttl * 3 {
            tokio::time::timeout(ttl, renewed.changed())
                .await
                .expect("a renewal at least every TTL")
                .unwrap();
            renewals += 1;
        }
        assert!(renewals >= 6, "{renewals} renewals in 3 TTLs");
        let active = s.active().await.unwrap().expect("still active");
        assert_eq!(active.record.coordinator.id, "kept");

        // The keeper stops (the process paused or died): `active` is gone
        // within the TTL plus etcd's expiry sweep (500 ms).
        keeper.abort();
        let stopped = Instant::now();
        loop {
            if s.active().await.unwrap().is_none() {
                break;
            }
            assert!(
                stopped.elapsed() < ttl + Duration::from_millis(1500),
                "active still there after {:?}",
                stopped.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "lease of {ttl:?} lapsed {:?} after its last keep-alive",
            stopped.elapsed()
        );

        // A keep-alive of a lease that is gone says so.
        let (tx, _rx) = tokio::sync::watch::channel(Instant::now());
        let e = s.keep_alive(kept, Duration::from_millis(10), tx).await;
        assert!(matches!(e, EtcdError::LeaseExpired { .. }), "{e}");
    });
}

#[test]
fn an_etcd_that_does_not_answer_is_a_clear_error_naming_the_endpoint() {
    // No etcd needed: nothing listens on the port.
    let port = common::free_port_block();
    let endpoint = format!("127.0.0.1:{port}");
    runtime().block_on(async {
        let started = Instant::now();
        let result = EtcdStore::connect(
            std::slice::from_ref(&endpoint),
            "x",
            Duration::from_millis(500),
        )
        .await;
        let e = match result {
            Err(e) => e,
            // Connections may be lazy: then the first call fails.
            Ok(s) => s.active().await.unwrap_err(),
        };
        let text = e.to_string();
        assert!(text.contains(&endpoint), "names the endpoint: {text}");
        assert!(started.elapsed() < Duration::from_secs(3), "no hang");
    });
    let e = kvlab::control::etcd::parse_endpoints("etcd://")
        .unwrap_err()
        .to_string();
    assert!(e.contains("names no endpoint"), "{e}");
}

/// Two `kvlab coordinator --control-store etcd://` processes on one etcd:
/// one active, one standby, and what each answers.
#[test]
fn a_standby_coordinator_answers_who_is_in_charge_and_refuses_the_rest() {
    if !etcd::available("standby coordinator") {
        return;
    }
    let etcd = Etcd::start(1);
    let base = common::free_port_block();
    let scratch = common::scratch();
    let data = scratch.path().join("data");
    let start = |id: &str, port: u16| {
        let mut cmd = common::kvlab_in(&scratch);
        cmd.args([
            "coordinator",
            "--control-store",
            &etcd.url(),
            "--coordinator-id",
            id,
        ])
        .args(["--port", &port.to_string()])
        .args(["--node-base-port", &(base + 2).to_string()])
        .args(["--registry", &format!("http://127.0.0.1:{}", base + 1)])
        .args([
            "--cluster-name",
            "standby-test",
            "--no-delay",
            "--followers",
            "1",
        ])
        .args(["-W", "1", "-R", "1", "--quiet"])
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null());
        common::StopOnDrop(cmd.spawn().unwrap())
    };
    let http = common::http().secret().timeout(common::secs(2)).build();
    let status = |port: u16| -> serde_json::Value {
        http.get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default()
    };
    let c1 = start("c1", base);
    common::wait("c1 to be active with a cluster", common::secs(30)).until(|| {
        let s = status(base);
        (s["control_plane"]["this"] == "active" && s["quorum"]["can_write"] == true)
            .then_some(())
            .ok_or(s)
    });
    let mut c2 = start("c2", base + 10);
    let s = common::wait("c2 to stand by", common::secs(30)).until(|| {
        let s = status(base + 10);
        (s["control_plane"]["this"] == "standby")
            .then_some(s.clone())
            .ok_or(s)
    });
    let cp = &s["control_plane"];
    assert_eq!(cp["mode"], "etcd", "{s}");
    assert_eq!(cp["active"]["id"], "c1", "{s}");
    assert_eq!(cp["epoch"], 1, "{s}");
    assert_eq!(cp["lease_ttl_s"], 3, "{s}");
    assert_eq!(cp["store"], etcd.endpoints[0].as_str(), "{s}");
    assert!(s["note"].as_str().unwrap().contains("c1 (epoch 1)"), "{s}");
    // The active one lists the standby.
    let a = status(base);
    common::wait("c1 to list c2 as a standby", common::secs(5)).until(|| {
        let a = status(base);
        (a["control_plane"]["standbys"][0]["id"] == "c2")
            .then_some(())
            .ok_or(a)
    });
    assert_eq!(a["control_plane"]["active"]["pid"], c1.0.id(), "{a}");

    let health: serde_json::Value = http
        .get(format!("http://127.0.0.1:{}/health", base + 10))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["this"], "standby", "{health}");
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", base + 10))
        .send()
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().unwrap().contains("kvlab_build_info"));
    let refused = http
        .post(format!("http://127.0.0.1:{}/write", base + 10))
        .json(&serde_json::json!({"key": "k", "value": "v"}))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers()[kvlab::api::HEADER_ACTIVE_COORDINATOR],
        format!("http://127.0.0.1:{base}").as_str()
    );
    let body: serde_json::Value = refused.json().unwrap();
    assert_eq!(body["detail"], kvlab::api::NOT_ACTIVE_COORDINATOR);

    // Stopping the standby leaves the nodes alone; stopping the active one
    // stops them.
    let nodes: Vec<u32> = std::iter::once(&a["leader"])
        .chain(a["followers"].as_array().unwrap())
        .map(|n| n["pid"].as_u64().unwrap() as u32)
        .collect();
    unsafe { libc::kill(c2.0.id() as i32, libc::SIGTERM) };
    common::wait("c2 to stop", common::secs(10)).until(|| matches!(c2.0.try_wait(), Ok(Some(_))));
    assert!(
        nodes.iter().all(|p| common::process_alive(*p)),
        "a standby stopped nodes"
    );
    drop(c1);
    common::wait("the active one's nodes to stop", common::secs(15))
        .until(|| nodes.iter().all(|p| !common::process_alive(*p)));
}

#[test]
fn bad_control_store_flags_are_clear_errors() {
    let scratch = common::scratch();
    let run = |args: &[&str]| {
        let out = common::kvlab_in(&scratch)
            .arg("coordinator")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--control-store", "etcd://"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("names no endpoint"), "{err}");
    let (code, err) = run(&["--control-store", "zookeeper://x:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("etcd://HOST:PORT"), "{err}");
    let port = common::free_port_block();
    let (code, err) = run(&[
        "--control-store",
        &format!("etcd://127.0.0.1:{port}"),
        "--port",
        &(port + 1).to_string(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("etcd at 127.0.0.1:{port}")), "{err}");
    let (code, err) = run(&[
        "--control-store",
        &format!("etcd://127.0.0.1:{port}"),
        "--fresh",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--fresh does not go with --control-store etcd"),
        "{err}"
    );
    let (code, err) = run(&[
        "--control-store",
        &format!("etcd://127.0.0.1:{port}"),
        "--lease-ttl",
        "0",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--lease-ttl must be between 1 and 300"),
        "{err}"
    );
}
