//! `kvlab up --ha`: a control plane that survives its coordinator (issue
//! 25, done-means 2). Under a real 3-member etcd, three coordinators, a
//! registry and two gateways:
//!
//! - SIGKILL of the active coordinator under a write load: writes resume
//!   within the lease TTL + 1 s (measured and printed), and every
//!   acknowledged write is read back;
//! - SIGSTOP of the active coordinator for longer than its lease, then
//!   SIGCONT: a standby took over with a higher epoch, the old one does not
//!   act again (the nodes refuse its epoch; it exits and comes back as a
//!   standby), and one coordinator at a time says it is active.
//!
//! Skips without `etcd` on the PATH unless `KVLAB_REQUIRE_ETCD=1`.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{etcd, free_port_block, http, kvlab_in, millis, secs, up_ports, wait, GATEWAY_OFFSET};
use serde_json::{json, Value};

/// The lease these tests run with (the default).
const TTL: Duration = Duration::from_secs(3);

/// A `kvlab up --ha` cluster on one port block; stopped (its whole
/// process group) on drop.
struct Ha {
    child: Child,
    coordinators: Vec<String>,
    gateways: Vec<String>,
    http: reqwest::blocking::Client,
    console: std::path::PathBuf,
    _scratch: tempfile::TempDir,
}

impl Ha {
    fn start(flags: &[&str]) -> Ha {
        let base = free_port_block();
        let scratch = common::scratch();
        let console = scratch.path().join("up.log");
        let out = std::fs::File::create(&console).unwrap();
        let mut cmd = kvlab_in(&scratch);
        cmd.args(["up", "--ha"])
            .args(up_ports(base))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // Its own process group, so the drop can end every process in it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().unwrap();
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let ha = Ha {
            child,
            coordinators: (0..3).map(|i| url(base + 10 * i)).collect(),
            gateways: vec![url(base + GATEWAY_OFFSET), url(base + GATEWAY_OFFSET - 1)],
            http: http().secret().timeout(secs(2)).build(),
            console,
            _scratch: scratch,
        };
        wait("kvlab up --ha to be ready", secs(60))
            .every(millis(100))
            .until(|| {
                ha.console()
                    .contains("kvlab up --ha: ready")
                    .then_some(())
                    .ok_or_else(|| ha.console())
            });
        ha
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn status_of(&self, url: &str) -> Option<Value> {
        let resp = self
            .http
            .get(format!("{url}/status"))
            .timeout(millis(500))
            .send()
            .ok()?;
        resp.json().ok()
    }

    /// A gateway's `GET /` (whom it follows).
    fn status_of_gateway(&self, url: &str) -> Value {
        self.http
            .get(format!("{url}/"))
            .timeout(millis(500))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default()
    }

    /// The active coordinator's `/status`, as it says itself.
    fn active(&self) -> Option<Value> {
        self.coordinators
            .iter()
            .filter_map(|u| self.status_of(u))
            .find(|s| s["control_plane"]["this"] == "active")
    }

    /// How many coordinators say they are active now.
    fn claims(&self) -> Vec<(String, u64)> {
        self.coordinators
            .iter()
            .filter_map(|u| self.status_of(u))
            .filter(|s| s["control_plane"]["this"] == "active")
            .map(|s| {
                let cp = &s["control_plane"];
                (
                    cp["active"]["id"].as_str().unwrap_or("").to_string(),
                    cp["epoch"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let child = &mut self.child;
        let stopped = wait("kvlab up --ha to stop", secs(30))
            .every(millis(50))
            .try_until(|| matches!(child.try_wait(), Ok(Some(_))));
        // Whatever is left in its group (nodes of a coordinator killed
        // outright, say) goes now.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        if stopped.is_none() {
            let _ = self.child.wait();
        }
    }
}

/// One acknowledged write: when it was sent, when its ack came, key, value.
type Acked = (Instant, Instant, String, String);

/// A writer through the gateways, moving to the next on a connection
/// error, recording every acknowledged write and when it was sent.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(gateways: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let client = http().timeout(secs(5)).build();
            let mut i = 0u64;
            let mut g = 0usize;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let (key, value) = (format!("k{}", i % 50), format!("v{i}"));
                let sent = Instant::now();
                let resp = client
                    .post(format!("{}/write", gateways[g]))
                    .json(&json!({"key": key, "value": value}))
                    .send();
                match resp {
                    Ok(r) if r.status().is_success() => {
                        a.lock().unwrap().push((sent, Instant::now(), key, value));
                    }
                    Ok(_) => std::thread::sleep(millis(20)),
                    Err(_) => g = (g + 1) % gateways.len(),
                }
            }
        });
        Load {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn finish(mut self) -> Vec<Acked> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

fn pid_of(status: &Value) -> i32 {
    status["control_plane"]["active"]["pid"]
        .as_i64()
        .expect("the active one's pid") as i32
}

#[test]
fn sigkill_of_the_active_coordinator_under_load_resumes_writes_within_the_lease_and_loses_none() {
    if !etcd::available("ha sigkill") {
        return;
    }
    let ha = Ha::start(&["--no-delay", "--followers", "2", "-W", "2", "-R", "1"]);
    let load = Load::start(ha.gateways.clone());
    wait("writes before the kill", secs(20)).until(|| load.count() >= 30);
    let before = ha.active().expect("an active coordinator");
    let (old_id, old_epoch) = (
        before["control_plane"]["active"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        before["control_plane"]["epoch"].as_u64().unwrap(),
    );
    let killed = Instant::now();
    unsafe { libc::kill(pid_of(&before), libc::SIGKILL) };
    // Writes resume: an acknowledged write that was sent after the kill.
    let resumed = wait("a write acknowledged after the kill", secs(20))
        .every(millis(10))
        .until(|| {
            load.acked
                .lock()
                .unwrap()
                .iter()
                .find(|(sent, _, _, _)| *sent >= killed)
                .map(|(_, done, _, _)| *done - killed)
        });
    let after_resume = load.count();
    wait("more writes after the takeover", secs(10)).until(|| load.count() >= after_resume + 30);
    let acked = load.finish();
    println!(
        "takeover: writes resumed {:.2} s after SIGKILL of the active coordinator {old_id} \
         (lease TTL {} s)",
        resumed.as_secs_f64(),
        TTL.as_secs()
    );
    assert!(
        resumed <= TTL + secs(1),
        "writes resumed after {resumed:?}, beyond the lease TTL + 1 s\n{}",
        ha.console()
    );
    // Another process is in charge (possibly the killed one's id, started
    // again by up --ha as a standby, that won the election), with a higher
    // epoch.
    let now = ha.active().expect("a new active coordinator");
    let cp = &now["control_plane"];
    assert_ne!(
        cp["active"]["pid"], before["control_plane"]["active"]["pid"],
        "{cp}"
    );
    assert!(cp["epoch"].as_u64().unwrap() > old_epoch, "{cp}");

    // Every acknowledged write is readable: the last one acked for each
    // key, or one acked later than it.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (_, _, key, value) in &acked {
        let n: u64 = value[1..].parse().unwrap();
        last.entry(key.clone())
            .and_modify(|m| *m = (*m).max(n))
            .or_insert(n);
    }
    let client = http().timeout(secs(5)).build();
    for (key, n) in &last {
        let read: Value = client
            .get(format!("{}/read/{key}", ha.gateways[0]))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let got: u64 = read["value"].as_str().unwrap_or("v0")[1..]
            .parse()
            .unwrap_or(0);
        assert!(got >= *n, "{key}: acknowledged v{n}, read {read}");
    }
    println!("{} acknowledged writes, 0 lost", acked.len());

    // up --ha started the killed one again, as a standby.
    let restarted = &ha.coordinators;
    wait("the killed coordinator to be back as a standby", secs(20)).until(|| {
        restarted
            .iter()
            .filter_map(|u| ha.status_of(u))
            .filter(|s| s["control_plane"]["this"] == "standby")
            .count()
            == 2
    });
    assert!(
        ha.console().contains("starting it again (as a standby)"),
        "{}",
        ha.console()
    );
}

#[test]
fn a_coordinator_paused_beyond_its_lease_never_acts_again_and_one_stays_in_charge() {
    if !etcd::available("ha sigstop") {
        return;
    }
    let ha = Ha::start(&["--no-delay", "--followers", "2", "-W", "1", "-R", "1"]);
    let before = ha.active().expect("an active coordinator");
    let old_epoch = before["control_plane"]["epoch"].as_u64().unwrap();
    let old_id = before["control_plane"]["active"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let leader_url = before["leader"]["url"].as_str().unwrap().to_string();
    let leader_incarnation = before["leader"]["incarnation"].as_u64().unwrap();
    let pid = pid_of(&before);
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let paused = Instant::now();
    let now = wait("a standby to take over", TTL + secs(10))
        .every(millis(50))
        .until(|| {
            let s = ha.active().ok_or("none active")?;
            let e = s["control_plane"]["epoch"].as_u64().unwrap_or(0);
            if e > old_epoch {
                Ok(s)
            } else {
                Err(format!("epoch {e}"))
            }
        });
    println!(
        "takeover from paused {old_id}: {:.2} s (lease TTL {} s)",
        paused.elapsed().as_secs_f64(),
        TTL.as_secs()
    );
    let new_epoch = now["control_plane"]["epoch"].as_u64().unwrap();
    // A request the gateway sent the paused one hangs (its TCP accepts);
    // the gateway follows the new one at its next poll (every 400 ms).
    wait("the gateway to follow the new active coordinator", secs(5)).until(|| {
        let info = ha.status_of_gateway(&ha.gateways[0]);
        (info["following"]["epoch"].as_u64() == Some(new_epoch))
            .then_some(())
            .ok_or(info)
    });
    let client = http().timeout(secs(5)).build();
    let write = |v: &str| {
        client
            .post(format!("{}/write", ha.gateways[0]))
            .json(&json!({"key": "paused", "value": v}))
            .send()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(write("under-new").unwrap(), 200);
    // The new active coordinator took over the running nodes (same
    // process), and they now refuse the paused one's epoch: this is what
    // any request it had in flight, or sends on waking, gets.
    assert_eq!(
        now["leader"]["incarnation"].as_u64(),
        Some(leader_incarnation),
        "{now}"
    );
    let refused = ha
        .http
        .post(format!("{leader_url}/admin/adopt"))
        .header(kvlab::api::HEADER_COORDINATOR_EPOCH, old_epoch.to_string())
        .json(
            &json!({"epoch": old_epoch, "incarnation": leader_incarnation,
                      "coordinator_pid": pid, "coordinator_url": "paused"}),
        )
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    let body: Value = refused.json().unwrap();
    assert!(
        body["detail"]
            .to_string()
            .contains(kvlab::api::STALE_COORDINATOR),
        "{body}"
    );

    // Wake it: it notices its lease is gone, stops acting, exits; up --ha
    // starts it again as a standby. At every look, one coordinator at most
    // says it is active, and it is the new one.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    common::always(
        "one coordinator in charge, at the new epoch",
        secs(3),
        millis(50),
        || {
            let claims = ha.claims();
            match claims.as_slice() {
                [] => Ok(()),
                [(_, epoch)] if *epoch == new_epoch => Ok(()),
                _ => Err(format!("claims: {claims:?}")),
            }
        },
    );
    wait("the paused coordinator to exit", secs(10)).until(|| !common::process_alive(pid as u32));
    let console = ha.console();
    assert!(
        console.contains(&format!("coordinator {old_id} deposed")),
        "{console}"
    );
    assert_eq!(write("after-wake").unwrap(), 200);
    wait("the woken one back as a standby", secs(20)).until(|| {
        ha.coordinators
            .iter()
            .filter_map(|u| ha.status_of(u))
            .filter(|s| s["control_plane"]["this"] == "standby")
            .count()
            == 2
    });
    assert_eq!(ha.claims().len(), 1);
}

#[test]
fn up_ha_without_etcd_says_how_to_get_it_and_exits_2() {
    let scratch = common::scratch();
    let out = kvlab_in(&scratch)
        .args(["up", "--ha"])
        .args(up_ports(free_port_block()))
        .env("PATH", scratch.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt install etcd-server"), "{err}");
}
