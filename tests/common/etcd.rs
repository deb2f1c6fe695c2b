//! A real etcd for the control plane's tests: Debian's `etcd-server`
//! (binary `etcd`), one or three members on loopback ports of a test port
//! block, data in a temp dir; killed (and the dir deleted) on drop.
//!
//! Without `etcd` on the PATH a test skips, saying so, unless
//! `KVLAB_REQUIRE_ETCD=1` (CI), which makes it a failure.

use std::process::{Child, Command, Stdio};

use super::{free_port_block, secs, wait};

/// Whether the test can run: `etcd` is on the PATH. Prints why not; panics
/// instead when `KVLAB_REQUIRE_ETCD=1`.
pub fn available(test: &str) -> bool {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("KVLAB_REQUIRE_ETCD").as_deref() == Ok("1") {
        panic!(
            "{test}: etcd is not on the PATH and KVLAB_REQUIRE_ETCD=1 (apt install etcd-server)"
        );
    }
    eprintln!("SKIPPED {test}: etcd is not on the PATH (apt install etcd-server)");
    false
}

pub struct Etcd {
    members: Vec<Child>,
    /// `HOST:PORT` of each member's client port.
    pub endpoints: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `n` members as one cluster and waits until it answers.
    pub fn start(n: usize) -> Etcd {
        let base = free_port_block();
        let dir = tempfile::Builder::new()
            .prefix("kvlab-etcd-")
            .tempdir()
            .unwrap();
        let peer = |i: usize| format!("http://127.0.0.1:{}", base + 2 * i as u16 + 1);
        let client = |i: usize| format!("127.0.0.1:{}", base + 2 * i as u16);
        let initial: Vec<String> = (0..n).map(|i| format!("m{i}={}", peer(i))).collect();
        let members = (0..n)
            .map(|i| {
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
                Command::new("etcd")
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("m{i}")))
                    .args(["--listen-client-urls", &format!("http://{}", client(i))])
                    .args(["--advertise-client-urls", &format!("http://{}", client(i))])
                    .args(["--listen-peer-urls", &peer(i)])
                    .args(["--initial-advertise-peer-urls", &peer(i)])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", &format!("kvlab-test-{base}")])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("starting etcd")
            })
            .collect();
        let etcd = Etcd {
            members,
            endpoints: (0..n).map(client).collect(),
            dir,
        };
        let http = reqwest::blocking::Client::new();
        for e in &etcd.endpoints {
            wait(format!("etcd member {e} to be healthy"), secs(30)).until(|| {
                http.get(format!("http://{e}/health"))
                    .send()
                    .ok()
                    .and_then(|r| r.text().ok())
                    .filter(|t| t.contains("true"))
            });
        }
        etcd
    }

    /// `etcd://` and every endpoint, as `--control-store` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}
