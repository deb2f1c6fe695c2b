//! Bounded everything: no input can exhaust a component.
//!
//! - Connections: idle ones are closed after the header-read timeout, a
//!   listener serves a capped number at once, and a thousand idle ones do
//!   not stop a write (the soft file limit is raised at start).
//! - Slow requests: a body that does not arrive whole within its deadline
//!   is answered 408 and its connection closed; one client address holds
//!   at most half a listener's connections, so thousands of half-sent
//!   bodies from one address stop nobody else.
//! - Bodies: no route buffers an unbounded body; a snapshot is sent in
//!   chunks, each under the body limit, so a store of any size still
//!   catches a follower up.
//! - The registry's table is bounded, and forgets what the coordinator
//!   does not own.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    always, cluster_secret, free_port_block, http, internal_http, kvlab, millis, secs, wait,
    Cluster, FAST_1_1_1, FAST_2_1_1, GATEWAY_OFFSET,
};
use serde_json::json;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Sets the open-file limit of a process about to be started (between fork
/// and exec), as a shell's `ulimit -n` would.
fn with_file_limit(cmd: &mut Command, soft: u64, hard: Option<u64>) {
    // SAFETY: getrlimit/setrlimit are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = soft;
            if let Some(hard) = hard {
                lim.rlim_max = hard;
            }
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// This test process holds thousands of sockets: raise its own soft limit.
fn raise_own_file_limit(at_least: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        assert!(
            lim.rlim_max >= at_least,
            "this test needs a hard open-file limit of at least {at_least} (it is {})",
            lim.rlim_max
        );
        if lim.rlim_cur < at_least {
            lim.rlim_cur = at_least;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

/// File descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A connection to `addr` from the local address `from` (any 127.x.y.z is
/// this machine: each is a client address of its own to a server).
fn connect_from(from: std::net::Ipv4Addr, addr: std::net::SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

/// The soft open-file limit of a running process.
fn file_limit_of(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap()
}

/// A `kvlab registry` on its own, with its open-file limit set to `limit`
/// (soft and hard), so its connection cap is small and known.
struct Registry {
    child: Child,
    url: String,
    port: u16,
}

impl Registry {
    fn start(limit: Option<u64>, extra: &[&str]) -> Registry {
        let port = free_port_block();
        let mut cmd = kvlab();
        cmd.args(["registry", "--port", &port.to_string()])
            // Nobody listens there: its notices fail at once.
            .args(["--coordinator", &format!("http://127.0.0.1:{}", port + 1)])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(limit) = limit {
            with_file_limit(&mut cmd, limit, Some(limit));
        }
        let child = cmd.spawn().unwrap();
        let registry = Registry {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
        };
        let http = http().build();
        wait("the registry to answer", secs(10))
            .every(millis(20))
            .until(|| http.get(&registry.url).send().is_ok());
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// The case: at the usual soft limit of 1,024 open files, 1,100 idle
/// connections to each listener of `kvlab up` stopped it from accepting
/// anything. Now the soft limit is raised to the hard one at start and each
/// listener serves up to a quarter of it: a write still succeeds in 1 s.
#[test]
fn a_thousand_idle_connections_do_not_stop_a_write() {
    const IDLE: usize = 1100;
    raise_own_file_limit(3 * IDLE as u64 + 200);
    let c = Cluster::start_with(FAST_1_1_1, |cmd| with_file_limit(cmd, 1024, None));
    let up = c.child.id();
    let mut idle = Vec::new();
    for port in [c.base + GATEWAY_OFFSET, c.base, c.base + 1] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..IDLE {
            // A listener that stopped accepting fills its queue, and then
            // a connect hangs: fail instead.
            let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("port {port} no longer takes connections: {e}"));
            idle.push(conn);
        }
    }
    // The process has taken them (or as many as it could).
    wait("the idle connections to be accepted", secs(10))
        .every(millis(20))
        .until(|| open_fds(up) > 1000);
    let http = http().timeout(secs(1)).build();
    let started = Instant::now();
    let resp = http
        .post(format!("{}/write", c.gateway))
        .json(&json!({"key": "k", "value": "v"}))
        .send()
        .expect("a write within 1 s, despite the idle connections");
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(idle);
}

/// A connection that sends nothing, and one that idles after an answer, are
/// closed after the header-read timeout (10 s). With an open-file limit of
/// 256, a listener serves at most 64 connections at once (at most 32 of one
/// client address): the others wait, holding no descriptor, and are served
/// as the first ones time out.
#[test]
fn idle_connections_time_out_and_the_cap_bounds_descriptors() {
    let registry = Registry::start(Some(256), &[]);
    let addr = ("127.0.0.1", registry.port);
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: registry\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 512];
    let n = kept.read(&mut answer).unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    // From four other addresses, 25 each: under the cap of one address.
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], registry.port));
    let waiting: Vec<TcpStream> = (0..100)
        .map(|i| connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2 + i % 4), to))
        .collect();
    // 64 served (the two above and 62 of these), 38 waiting in the accept
    // queue, which costs the registry no descriptor. (About 12 are its own:
    // standard streams, the listener, the runtime's.) Once it holds its
    // share, give it time to take more, if it would.
    let pid = registry.child.id();
    wait("64 connections served", secs(5))
        .every(millis(20))
        .until(|| open_fds(pid) >= 64 + 8);
    always(
        "the registry to take no more",
        millis(300),
        millis(20),
        || {
            let fds = open_fds(pid);
            if fds <= 64 + 16 {
                Ok(())
            } else {
                Err(format!("the registry holds {fds} descriptors"))
            }
        },
    );
    let fds = open_fds(pid);
    assert!(fds <= 64 + 16, "the registry holds {fds} descriptors");

    for (name, conn) in [("silent", &mut silent), ("kept-alive", &mut kept)] {
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let got = conn.read(&mut answer);
        assert!(
            matches!(got, Ok(0)),
            "the {name} connection is closed by the server, got {got:?}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "{waited:?}"
    );
    // The listener goes on: once the first ones timed out, a new request
    // (behind the 38 waiting) is served.
    let resp = http()
        .timeout(secs(10))
        .build()
        .get(&registry.url)
        .send()
        .expect("served once the first connections timed out");
    assert_eq!(resp.status(), 200);
    drop(waiting);
}

/// Issue 24: a client that sends the headers and one byte of a 100-byte
/// body held its connection forever: 5,100 of them stopped the gateway, the
/// same the coordinator. Now a body has 10 s (`http::BODY_READ_TIMEOUT`)
/// after its headers, and one client address holds at most half of a
/// listener's connections (`http::per_address_cap`). 5,200 such requests
/// from 127.0.0.1, half to the gateway and half to the coordinator: those
/// past the address's cap are answered 503 at once, a client at another
/// address (127.0.0.2) writes through the gateway and reads `/status`
/// within 2 s while they are open, and every slow request is answered 408
/// and closed within the deadline of its headers.
#[test]
fn thousands_of_half_sent_bodies_stop_no_other_client() {
    const SLOW: usize = 5_200;
    raise_own_file_limit(SLOW as u64 + 500);
    let c = Cluster::start(&format!("{FAST_1_1_1} --in-memory"));
    let up = c.child.id();
    let cap = kvlab::http::per_address_cap((file_limit_of(up) / 4).clamp(32, 16_384));
    let request = b"POST /write HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    // A watcher reads every connection all along, to note when the server
    // answers and closes it (not when the test gets round to looking).
    let slow = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Watched>::new()));
    let watcher = {
        let slow = slow.clone();
        std::thread::spawn(move || watch_until_closed(&slow, SLOW))
    };
    let started = Instant::now();
    for port in [c.base + GATEWAY_OFFSET, c.base] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..SLOW / 2 {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("port {port} no longer takes connections: {e}"));
            // Refused past the cap: the server may have closed it already.
            let _ = conn.write_all(request);
            conn.set_nonblocking(true).unwrap();
            slow.lock().unwrap().push(Watched {
                opened: Instant::now(),
                conn,
                answer: Vec::new(),
                closed_after: None,
            });
        }
    }
    eprintln!(
        "{SLOW} half-sent requests opened in {:?}",
        started.elapsed()
    );

    // Another client address is served at once, while they are open.
    let other = http()
        .from(std::net::Ipv4Addr::new(127, 0, 0, 2).into())
        .timeout(secs(2))
        .build();
    let asked = Instant::now();
    let resp = other
        .post(format!("{}/write", c.gateway))
        .json(&json!({"key": "k", "value": "v"}))
        .send()
        .expect("a write through the gateway within 2 s");
    assert_eq!(resp.status(), 200);
    let resp = other
        .get(format!("{}/status", c.coordinator))
        .send()
        .expect("the coordinator's /status within 2 s");
    assert_eq!(resp.status(), 200);
    let open_now = slow
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.closed_after.is_none())
        .count();
    eprintln!(
        "the other client's write and /status took {:?}, with {open_now} slow requests open",
        asked.elapsed()
    );
    // The up process holds at most the cap of 127.0.0.1 on each listener.
    let fds = open_fds(up);
    assert!(
        fds < 2 * cap + 200,
        "{fds} descriptors held (cap {cap} per listener)"
    );

    // Every slow request is answered (408, or 503 past the cap) and closed
    // by the server within the deadline of its headers (plus the watcher's
    // and a loaded machine's slack).
    let deadline = kvlab::http::BODY_READ_TIMEOUT;
    watcher.join().unwrap();
    let slow = std::mem::take(&mut *slow.lock().unwrap());
    let late: Vec<Duration> = slow
        .iter()
        .filter_map(|w| w.closed_after)
        .filter(|&held| held > deadline + secs(2))
        .collect();
    assert!(
        late.is_empty(),
        "{} closed late, the latest after {:?}",
        late.len(),
        late.iter().max()
    );
    let answers: Vec<&Vec<u8>> = slow.iter().map(|w| &w.answer).collect();
    let count = |status: &[u8]| answers.iter().filter(|a| a.starts_with(status)).count();
    let (timed_out, refused) = (count(b"HTTP/1.1 408"), count(b"HTTP/1.1 503"));
    eprintln!(
        "{timed_out} answered 408, {refused} refused (cap {cap} per address), all closed after {:?}",
        started.elapsed()
    );
    assert!(timed_out >= cap.min(SLOW / 2), "{timed_out} answered 408");
    let answer_408 = answers
        .iter()
        .find(|a| a.starts_with(b"HTTP/1.1 408"))
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap();
    assert!(
        answer_408.contains("did not arrive in time"),
        "{answer_408}"
    );
    drop(slow);
    // And 127.0.0.1 is served again.
    let (code, w) = c.write("after", "v");
    assert_eq!(code, 200, "{w}");
}

/// A slow request's connection, as the watcher sees it.
struct Watched {
    opened: Instant,
    conn: TcpStream,
    answer: Vec<u8>,
    /// How long after `opened` the server closed it.
    closed_after: Option<Duration>,
}

/// Reads every watched connection four times a second, noting what the
/// server answers and when it closes each, until all `total` are closed
/// (or 60 s have passed).
fn watch_until_closed(slow: &std::sync::Mutex<Vec<Watched>>, total: usize) {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let mut closed = 0;
        for w in slow.lock().unwrap().iter_mut() {
            if w.closed_after.is_some() {
                closed += 1;
                continue;
            }
            let mut buf = [0u8; 1024];
            loop {
                match w.conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => w.answer.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Closed: the last read ended it (0 or an error), not WouldBlock.
            let mut probe = [0u8; 1];
            let gone = match w.conn.peek(&mut probe) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if gone {
                w.closed_after = Some(w.opened.elapsed());
                closed += 1;
            }
        }
        if closed == total {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One address past its cap is told why (503), and the others are served:
/// a registry with 256 open files serves 64 connections, 32 per address.
#[test]
fn past_its_cap_an_address_is_answered_503_and_others_are_served() {
    let registry = Registry::start(Some(256), &[]);
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], registry.port));
    let held: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(to).unwrap()).collect();
    let pid = registry.child.id();
    wait("32 connections served", secs(5))
        .every(millis(20))
        .until(|| open_fds(pid) >= 32 + 8);
    let mut past = TcpStream::connect(to).unwrap();
    past.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = past.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );
    assert!(answer.contains("at most 32"), "{answer}");
    let other = http()
        .from(std::net::Ipv4Addr::new(127, 0, 0, 3).into())
        .timeout(secs(2))
        .build();
    assert_eq!(other.get(&registry.url).send().unwrap().status(), 200);
    drop(held);
}

// ---------------------------------------------------------------------------
// Bodies and snapshots
// ---------------------------------------------------------------------------

/// Sends a request with a body of `total` bytes of spaces, in chunked
/// encoding 1 MiB at a time (the test's own memory stays small), and
/// returns the server's answer: read by a second thread all along, since
/// the server may answer, and close, before the body is all sent.
fn post_streamed(addr: &str, path: &str, total: usize) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                 X-Kvlab-Secret: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
                cluster_secret()
            )
            .as_bytes(),
        )
        .unwrap();
    // Never stuck on a server that stopped reading without closing.
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = stream.try_clone().unwrap();
    answer
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the server closes (or resets) the connection.
        while let Ok(n @ 1..) = answer.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    let chunk = vec![b' '; 1024 * 1024];
    let mut sent = 0;
    while sent < total {
        let wrote = stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| stream.write_all(&chunk))
            .and_then(|()| stream.write_all(b"\r\n"));
        if wrote.is_err() {
            break; // the server stopped reading: its answer tells why
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let _ = stream.shutdown(std::net::Shutdown::Write);
    reader.join().unwrap()
}

/// The peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// The case: a 2 GiB `/replicate/snapshot` body took a follower to
/// 4.7 GiB of memory. Now the route has the batch limit (64 MiB; snapshots
/// travel in chunks under it): a 200 MiB body, streamed without a length,
/// gets a clear 413, and the follower stays small, up and serving.
#[test]
fn an_oversized_snapshot_body_is_refused_with_413_and_the_node_serves_on() {
    let c = Cluster::start(FAST_1_1_1);
    let follower = c.node_url(1);
    let pid = c.follower("follower-1")["pid"].as_u64().unwrap() as u32;
    let addr = follower.trim_start_matches("http://");
    let answer = post_streamed(addr, "/replicate/snapshot", 200 * 1024 * 1024);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("larger than this route accepts"),
        "{answer}"
    );
    // A body announced as too big is refused before it is read.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            format!(
                "POST /replicate/snapshot HTTP/1.1\r\nHost: test\r\nX-Kvlab-Secret: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n",
                cluster_secret()
            )
            .as_bytes(),
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = [0u8; 64];
    let n = stream
        .read(&mut answer)
        .expect("a 413 without waiting for the body");
    assert!(answer[..n].starts_with(b"HTTP/1.1 413"));
    let peak = peak_rss_mib(pid);
    assert!(peak < 150, "the follower peaked at {peak} MiB");
    // Still the same process, and it still replicates and serves.
    assert_eq!(c.follower("follower-1")["pid"].as_u64(), Some(pid as u64));
    let (code, w) = c.write("after", "413");
    assert_eq!(code, 200, "{w}");
    assert_eq!(c.wait_caught_up("follower-1").0, 200);
    assert_eq!(c.node_data(&follower)["after"]["value"], "413");
}

/// A follower further behind than the leader's log gets a snapshot, sent in
/// chunks of about 8 MiB: a 12 MiB store goes in two, and the follower
/// ends up with every key.
#[test]
fn a_snapshot_larger_than_a_chunk_catches_a_follower_up() {
    let c = Cluster::start(&format!("{FAST_2_1_1} --log-retain 5"));
    c.post("/kill/follower-2", json!({}));
    let big = "v".repeat(1_000_000);
    for i in 0..12 {
        let (code, w) = c.write(&format!("big-{i}"), &big);
        assert_eq!(code, 200, "{w}");
    }
    for i in 0..20 {
        assert_eq!(c.write(&format!("small-{i}"), &format!("s{i}")).0, 200);
    }
    let (code, s) = c.post("/spawn", json!({"node_id": "follower-2"}));
    assert_eq!(code, 200, "{s}");
    assert_eq!(c.wait_caught_up("follower-2").0, 200);
    let data = c.node_data(&c.node_url(2));
    for i in 0..12 {
        assert_eq!(
            data[format!("big-{i}")]["value"].as_str().map(str::len),
            Some(1_000_000)
        );
    }
    for i in 0..20 {
        assert_eq!(data[format!("small-{i}")]["value"], format!("s{i}"));
    }
    let log = std::fs::read_to_string(c.log_dir.path().join("follower-2.log")).unwrap();
    let installed = log
        .lines()
        .find(|l| l.contains("installed a snapshot from the leader"))
        .expect("follower-2 caught up by a snapshot");
    assert!(installed.contains("chunks=2"), "{installed}");
}

// ---------------------------------------------------------------------------
// The registry's table
// ---------------------------------------------------------------------------

/// A heartbeat as a node sends it, with the cluster secret.
fn heartbeat(http: &reqwest::blocking::Client, registry: &str, node_id: &str) -> u16 {
    http.post(format!("{registry}/heartbeat"))
        .json(&json!({
            "node_id": node_id, "port": 1, "url": "http://127.0.0.1:1", "role": "leader",
        }))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// The registry kept every id it ever heard, forever. Now it keeps at most
/// 256: past that a new id takes the place of the longest-dead one, or is
/// refused with 503 while all are alive.
#[test]
fn the_registry_table_is_bounded() {
    // Silent for 5 s: dead (registering 256 takes well under that).
    let registry = Registry::start(None, &["--timeout", "5"]);
    let http = internal_http();
    for i in 0..256 {
        assert_eq!(heartbeat(&http, &registry.url, &format!("n{i}")), 200);
    }
    assert_eq!(heartbeat(&http, &registry.url, "one-too-many"), 503);
    let info = |http: &reqwest::blocking::Client| -> serde_json::Value {
        http.get(&registry.url).send().unwrap().json().unwrap()
    };
    wait("every node declared dead", secs(15))
        .every(millis(20))
        .until(|| info(&http)["dead_nodes"] == 256);
    for i in 0..10 {
        assert_eq!(heartbeat(&http, &registry.url, &format!("new-{i}")), 200);
    }
    let info = info(&http);
    assert_eq!(info["total_nodes"], 256, "{info}");
    assert_eq!(info["alive_nodes"], 10, "{info}");
}

/// The coordinator tells the registry to forget the ids that are not its
/// members: a made-up name is gone within a couple of pulls (1 s each).
#[test]
fn the_registry_forgets_nodes_the_coordinator_does_not_own() {
    let c = Cluster::start(FAST_1_1_1);
    let http = internal_http();
    assert_eq!(heartbeat(&http, &c.registry, "ghost"), 200);
    let ids = || -> Vec<String> {
        let view: serde_json::Value = http
            .get(format!("{}/nodes", c.registry))
            .send()
            .unwrap()
            .json()
            .unwrap();
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node_id"].as_str().unwrap().to_string())
            .collect()
    };
    wait("the ghost to be forgotten", secs(5))
        .every(millis(20))
        .until(|| !ids().contains(&"ghost".to_string()));
    assert_eq!(ids(), ["follower-1", "leader"]);
}
