//! The conformance tests: one exchange at a time with the student's node,
//! each named, each failing with what was sent, what came back and what the
//! protocol requires (docs/node-protocol.md).
//!
//! Every test starts the node afresh on its own [`Stage`], so tests do not
//! depend on each other and `--only TEST` runs one alone. A test's level is
//! the protocol level that asks for the behaviour: `--level N` runs the
//! tests of levels 1 to N.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::harness::{Answer, Failure, Outcome, Stage, HEARTBEAT_INTERVAL, NODE_ID};

type Run = for<'a> fn(&'a mut Stage) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One conformance test.
pub struct Test {
    pub id: &'static str,
    pub level: u8,
    /// What it checks, in one line, for the report.
    pub what: &'static str,
    /// Does the node need a data directory?
    pub durable: bool,
    pub run: Run,
}

/// Every test, in the order they run.
pub const TESTS: &[Test] = &[
    Test { id: "starts", level: 1, durable: false, run: |s| Box::pin(starts(s)),
        what: "starts and answers GET /health" },
    Test { id: "heartbeats", level: 1, durable: false, run: |s| Box::pin(heartbeats(s)),
        what: "heartbeats to the registry with its id, port, url, role, incarnation and the cluster secret" },
    Test { id: "guards_internal_routes", level: 1, durable: false, run: |s| Box::pin(guards_internal_routes(s)),
        what: "refuses replication without the cluster secret (401), serves /health without it" },
    Test { id: "handshake", level: 1, durable: false, run: |s| Box::pin(handshake(s)),
        what: "GET /replicate tells where an empty log stands: its id, incarnation, acked_seq 0" },
    Test { id: "applies_in_order", level: 1, durable: false, run: |s| Box::pin(applies_in_order(s)),
        what: "applies entries 1..3, acknowledges seq 3 and serves them at GET /data/{key}" },
    Test { id: "refuses_gaps", level: 1, durable: false, run: |s| Box::pin(refuses_gaps(s)),
        what: "never applies an entry that does not continue its log (a gap)" },
    Test { id: "ignores_duplicates", level: 1, durable: false, run: |s| Box::pin(ignores_duplicates(s)),
        what: "entries it already holds, sent again, change nothing" },
    Test { id: "batch_read", level: 1, durable: false, run: |s| Box::pin(batch_read(s)),
        what: "POST /batch/read answers each key's value and version, null for a missing key" },
    Test { id: "missing_key", level: 1, durable: false, run: |s| Box::pin(missing_key(s)),
        what: "GET /data/{key} of a key it does not hold is 404" },
    Test { id: "fencing", level: 1, durable: false, run: |s| Box::pin(fencing(s)),
        what: "refuses entries meant for another incarnation, and entries of an older term" },
    Test { id: "shutdown", level: 1, durable: false, run: |s| Box::pin(shutdown(s)),
        what: "POST /admin/shutdown stops the process" },
    Test { id: "truncates", level: 2, durable: false, run: |s| Box::pin(truncates(s)),
        what: "POST /replicate/truncate cuts the log after a seq, and the cut entries are gone" },
    Test { id: "installs_snapshot", level: 2, durable: false, run: |s| Box::pin(installs_snapshot(s)),
        what: "installs a snapshot sent in two chunks, only once the last is in" },
    Test { id: "vouches_for_reads", level: 2, durable: false, run: |s| Box::pin(vouches_for_reads(s)),
        what: "reads carry the term of the leader that last reconciled its log, never a term it only heard of" },
    Test { id: "survives_crash", level: 3, durable: true, run: |s| Box::pin(survives_crash(s)),
        what: "every entry it acknowledged is still there after a SIGKILL right after the ack" },
    Test { id: "recovers_term", level: 3, durable: true, run: |s| Box::pin(recovers_term(s)),
        what: "after a SIGKILL, refuses entries of a term older than one it had seen" },
];

/// The tests `--level` asks for.
pub fn for_level(level: u8) -> impl Iterator<Item = &'static Test> {
    TESTS.iter().filter(move |t| t.level <= level)
}

// ---------------------------------------------------------------------------
// Building requests and reading answers.

fn entry(seq: u64, term: u64, key: &str, value: &str, version: u64) -> Value {
    json!({"seq": seq, "term": term, "key": key, "value": value, "version": version})
}

/// Entries `from..=to` of term 1, on keys `k<seq>` with value `v<seq>`.
fn entries(from: u64, to: u64) -> Vec<Value> {
    (from..=to)
        .map(|s| entry(s, 1, &format!("k{s}"), &format!("v{s}"), 1))
        .collect()
}

fn describe(entries: &[Value]) -> String {
    let seqs: Vec<String> = entries.iter().map(|e| e["seq"].to_string()).collect();
    format!("entries with seqs [{}]", seqs.join(", "))
}

impl Stage {
    /// `GET /replicate` in `term`, as a leader's handshake.
    async fn handshake(&self, term: u64) -> Result<Answer, Failure> {
        self.send(Method::GET, "/replicate", Some(term), None).await
    }

    /// `POST /replicate` of `entries` in `term`, addressed to this incarnation.
    async fn append(&self, term: u64, entries: Vec<Value>) -> Result<Answer, Failure> {
        self.append_to(term, self.incarnation, entries).await
    }

    async fn append_to(
        &self,
        term: u64,
        incarnation: u64,
        entries: Vec<Value>,
    ) -> Result<Answer, Failure> {
        let body = json!({"term": term, "to_incarnation": incarnation, "entries": entries});
        self.send(Method::POST, "/replicate", Some(term), Some(&body))
            .await
    }

    /// An append that must succeed; returns the acked seq.
    async fn append_ok(&self, term: u64, entries: Vec<Value>) -> Result<u64, Failure> {
        let what = format!("POST /replicate (term {term}, {})", describe(&entries));
        let a = self.append(term, entries).await?;
        if !a.ok() {
            return Err(Failure(format!(
                "sent {what}\ngot {}\nthe protocol: a follower takes the entries that continue \
                 its log and answers 200 with the highest seq it now holds",
                a.show()
            )));
        }
        a.u64_field(&what, "acked_seq")
    }

    /// `GET /data/{key}`.
    async fn read(&self, key: &str) -> Result<Answer, Failure> {
        self.send(Method::GET, &format!("/data/{key}"), None, None)
            .await
    }

    /// Asserts `GET /data/{key}` answers `value` at `version`.
    async fn expect_value(&self, key: &str, value: &str, version: u64) -> Result<(), Failure> {
        self.expect_value_because(
            key,
            value,
            version,
            "the node applied that entry and acknowledged it",
        )
        .await
    }

    async fn expect_value_because(
        &self,
        key: &str,
        value: &str,
        version: u64,
        why: &str,
    ) -> Result<(), Failure> {
        let a = self.read(key).await?;
        if a.status != 200 || a.body["value"] != value || a.body["version"] != version {
            return Err(Failure(format!(
                "sent GET /data/{key}\ngot {}\nexpected 200 with \"value\": \"{value}\" and \
                 \"version\": {version}: {why}",
                a.show()
            )));
        }
        Ok(())
    }

    async fn expect_missing(&self, key: &str, why: &str) -> Result<(), Failure> {
        let a = self.read(key).await?;
        if a.status != 404 {
            return Err(Failure(format!(
                "sent GET /data/{key}\ngot {}\nexpected 404: {why}",
                a.show()
            )));
        }
        Ok(())
    }

    /// A handshake and an empty append in `term`: what a new leader does
    /// first, after which the node's log is that leader's.
    async fn reconcile(&self, term: u64) -> Result<u64, Failure> {
        let hs = self.handshake(term).await?;
        if !hs.ok() {
            return Err(Failure(format!(
                "sent GET /replicate (term {term}, the leader's handshake)\ngot {}\nexpected 200",
                hs.show()
            )));
        }
        self.append_ok(term, vec![]).await
    }
}

fn require(cond: bool, message: impl FnOnce() -> String) -> Result<(), Failure> {
    if cond {
        Ok(())
    } else {
        Err(Failure(message()))
    }
}

// ---------------------------------------------------------------------------
// Level 1: a follower.

async fn starts(s: &mut Stage) -> Outcome {
    s.start().await?;
    Ok(format!("GET /health answered 200 on port {}", s.port))
}

async fn heartbeats(s: &mut Stage) -> Outcome {
    s.start().await?;
    let wait = Duration::from_secs_f64(HEARTBEAT_INTERVAL * 4.0 + 2.0);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && s.registry.heard().len() < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let heard = s.registry.heard();
    let beats: Vec<_> = heard.iter().filter(|h| h.path == "/heartbeat").collect();
    let Some(first) = beats.first() else {
        return Err(Failure(format!(
            "no POST /heartbeat reached the registry ({}) within {:.1}s; KVLAB_HEARTBEAT_INTERVAL \
             was {HEARTBEAT_INTERVAL}s. A node heartbeats every interval from its start. The \
             end of its log:\n{}",
            s.settings.registry.clone().unwrap_or_default(),
            wait.as_secs_f64(),
            s.log_tail()
        )));
    };
    require(first.had_secret, || {
        "the heartbeat came without the cluster secret: send KVLAB_CLUSTER_SECRET in the \
         X-Kvlab-Secret header on every request to the registry (the registry answered 401)"
            .into()
    })?;
    let b = &first.body;
    let url = format!("http://127.0.0.1:{}", s.port);
    let fields_ok = b["node_id"] == NODE_ID
        && b["port"] == s.port
        && b["url"] == url
        && b["role"] == "follower"
        && b["incarnation"] == s.incarnation;
    require(fields_ok, || {
        format!(
            "the heartbeat's body was {b}\nexpected {{\"node_id\": \"{NODE_ID}\", \"port\": {}, \
             \"url\": \"{url}\", \"role\": \"follower\", \"incarnation\": {}}} (from \
             KVLAB_NODE_ID, KVLAB_PORT, KVLAB_HOST, KVLAB_ROLE, KVLAB_INCARNATION)",
            s.port, s.incarnation
        )
    })?;
    require(beats.len() >= 2, || {
        format!(
            "only one heartbeat in {:.1}s: a node heartbeats every KVLAB_HEARTBEAT_INTERVAL \
             ({HEARTBEAT_INTERVAL}s), or the registry declares it dead",
            wait.as_secs_f64()
        )
    })?;
    let gap = beats[1].at.duration_since(beats[0].at).as_secs_f64();
    Ok(format!(
        "{} heartbeats, {gap:.2}s apart, with the secret",
        beats.len()
    ))
}

async fn guards_internal_routes(s: &mut Stage) -> Outcome {
    s.start().await?;
    let body = json!({"term": 1, "to_incarnation": s.incarnation, "entries": entries(1, 1)});
    let resp = s
        .outsider
        .post(s.url("/replicate"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    require(status == 401, || {
        format!(
            "sent POST /replicate without the X-Kvlab-Secret header\ngot {status}\nexpected \
             401: replication is an internal route, and anyone on the machine can reach your \
             port; compare the header with KVLAB_CLUSTER_SECRET"
        )
    })?;
    let after = s.read("k1").await?;
    require(after.status != 200, || {
        format!(
            "sent POST /replicate without the secret (refused with 401), then GET /data/k1\n\
             got {}\nthe entry was applied anyway: check the secret before doing anything",
            after.show()
        )
    })?;
    let health = s.outsider.get(s.url("/health")).send().await?;
    require(health.status().is_success(), || {
        format!(
            "sent GET /health without the secret\ngot {}\nexpected 200: /health, /data and \
             /stats are open routes",
            health.status().as_u16()
        )
    })?;
    Ok("401 without the secret; /health open".into())
}

async fn handshake(s: &mut Stage) -> Outcome {
    s.start().await?;
    let a = s.handshake(1).await?;
    let sent = "GET /replicate (X-Kvlab-Term: 1)";
    require(a.ok(), || {
        format!("sent {sent}\ngot {}\nexpected 200", a.show())
    })?;
    let acked = a.u64_field(sent, "acked_seq")?;
    let incarnation = a.u64_field(sent, "incarnation")?;
    require(
        a.body["node_id"] == NODE_ID && incarnation == s.incarnation && acked == 0,
        || {
            format!(
                "sent {sent}\ngot {}\nexpected node_id \"{NODE_ID}\", incarnation {} (from \
                 KVLAB_INCARNATION: the leader checks it is talking to the process it means) \
                 and acked_seq 0 (the log is empty)",
                a.show(),
                s.incarnation
            )
        },
    )?;
    Ok("an empty log at acked_seq 0, with the right id and incarnation".into())
}

async fn applies_in_order(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(1).await?;
    let acked = s.append_ok(1, entries(1, 3)).await?;
    require(acked == 3, || {
        format!(
            "sent POST /replicate (term 1, entries with seqs [1, 2, 3])\ngot acked_seq {acked}\n\
             expected 3: a follower acknowledges the highest seq it holds without a gap"
        )
    })?;
    for seq in 1..=3 {
        s.expect_value(&format!("k{seq}"), &format!("v{seq}"), 1)
            .await?;
    }
    // A second batch continues the first.
    let acked = s.append_ok(1, vec![entry(4, 1, "k1", "again", 2)]).await?;
    require(acked == 4, || {
        format!("sent entry 4 after 1..3\ngot acked_seq {acked}\nexpected 4")
    })?;
    s.expect_value("k1", "again", 2).await?;
    Ok("acked 3 then 4; the values and versions read back".into())
}

async fn refuses_gaps(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(1).await?;
    s.append_ok(1, entries(1, 2)).await?;
    let gap = vec![entry(4, 1, "k4", "v4", 1)];
    let sent = "POST /replicate with the entry at seq 4 while the node holds 1..2";
    let a = s.append(1, gap).await?;
    if a.ok() {
        let acked = a.u64_field(sent, "acked_seq")?;
        require(acked == 2, || {
            format!(
                "sent {sent}\ngot {}\nexpected acked_seq 2 (or a 4xx refusal): seq 3 is \
                 missing, so the entry at seq 4 cannot be applied yet. Apply an entry only if \
                 its seq is exactly one more than the last one you hold",
                a.show()
            )
        })?;
    }
    s.expect_missing(
        "k4",
        "the entry at seq 4 came before seq 3 and must not be applied: \
         applying out of order lets two followers at the same position hold different data",
    )
    .await?;
    Ok(format!("the gap was refused ({})", a.show()))
}

async fn ignores_duplicates(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(1).await?;
    s.append_ok(1, entries(1, 3)).await?;
    s.append_ok(1, vec![entry(4, 1, "k2", "newer", 2)]).await?;
    // The leader's retry of a batch whose answer it lost.
    let acked = s.append_ok(1, entries(2, 4)).await?;
    require(acked == 4, || {
        format!(
            "sent entries 2..4 again while holding 1..4\ngot acked_seq {acked}\nexpected 4: \
             entries a follower already holds are skipped, never applied twice"
        )
    })?;
    s.expect_value_because(
        "k2",
        "newer",
        2,
        "seq 4 wrote k2 = \"newer\" (version 2); then entries 2..4 came again (a leader's retry) \
         and the old seq 2 was applied over it. Skip every entry at or below the seq you hold",
    )
    .await?;
    Ok("a resent batch changed nothing".into())
}

async fn batch_read(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(1).await?;
    s.append_ok(1, entries(1, 2)).await?;
    let body = json!({"keys": ["k2", "nope", "k1"]});
    let sent = "POST /batch/read {\"keys\": [\"k2\", \"nope\", \"k1\"]}";
    let a = s
        .send(Method::POST, "/batch/read", None, Some(&body))
        .await?;
    require(a.ok(), || {
        format!("sent {sent}\ngot {}\nexpected 200", a.show())
    })?;
    let values = &a.body["values"];
    let right = a.body["node_id"] == NODE_ID
        && values[0]["value"] == "v2"
        && values[0]["version"] == 1
        && values[1].is_null()
        && values[2]["value"] == "v1"
        && values.as_array().map(Vec::len) == Some(3);
    require(right, || {
        format!(
            "sent {sent}\ngot {}\nexpected {{\"node_id\": \"{NODE_ID}\", \"values\": \
             [{{\"value\": \"v2\", \"version\": 1}}, null, {{\"value\": \"v1\", \"version\": \
             1}}], \"seqs\": [2, 0, 1], \"term\": 1}}: one answer per key, in the order asked",
            a.show()
        )
    })?;
    let seqs = &a.body["seqs"];
    require(seqs[0] == 2 && seqs[2] == 1, || {
        format!(
            "sent {sent}\ngot {}\nexpected \"seqs\": [2, 0, 1]: for each key, the seq of the \
             entry that wrote its value (the coordinator compares it with the commit point)",
            a.show()
        )
    })?;
    Ok("values, nulls and seqs in the order asked".into())
}

async fn missing_key(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.expect_missing("never-written", "nobody wrote that key")
        .await?;
    Ok("404".into())
}

async fn fencing(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(2).await?;
    let other = s.incarnation + 7;
    let sent = format!(
        "POST /replicate addressed to incarnation {other} (yours is {})",
        s.incarnation
    );
    let a = s.append_to(2, other, entries(1, 1)).await?;
    require(a.status == 409, || {
        format!(
            "sent {sent}\ngot {}\nexpected 409: those entries were meant for another process \
             of this slot (the one before a restart); taking them would let an old leader \
             count you as holding what you never acknowledged",
            a.show()
        )
    })?;
    let a = s.append(1, entries(1, 1)).await?;
    let sent = "POST /replicate of term 1 after a leader of term 2 spoke";
    require(
        a.status == 409 && a.body["detail"]["error"] == "stale term",
        || {
            format!(
                "sent {sent}\ngot {}\nexpected 409 with {{\"detail\": {{\"error\": \"stale \
                 term\", \"term\": 2, ...}}}}: a deposed leader's entries are refused, and the \
                 refusal tells it the newer term",
                a.show()
            )
        },
    )?;
    s.expect_missing("k1", "both appends were refused").await?;
    Ok("409 for another incarnation and for a stale term".into())
}

async fn shutdown(s: &mut Stage) -> Outcome {
    s.start().await?;
    let a = s.send(Method::POST, "/admin/shutdown", None, None).await;
    if let Ok(a) = &a {
        require(a.ok(), || {
            format!(
                "sent POST /admin/shutdown\ngot {}\nexpected 200, then the process ends",
                a.show()
            )
        })?;
    }
    let how = s.wait_exit(Duration::from_secs(5)).await;
    require(how.is_some(), || {
        "sent POST /admin/shutdown\nthe process was still running 5s later: answer 200, then \
         deregister and exit"
            .into()
    })?;
    Ok(format!("the process {}", how.unwrap_or_default()))
}

// ---------------------------------------------------------------------------
// Level 2: catch-up.

async fn truncates(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(1).await?;
    s.append_ok(1, entries(1, 4)).await?;
    let body = json!({"term": 2, "to_incarnation": s.incarnation, "after_seq": 2});
    let sent = "POST /replicate/truncate {\"term\": 2, \"after_seq\": 2} while holding 1..4";
    let a = s
        .send(Method::POST, "/replicate/truncate", Some(2), Some(&body))
        .await?;
    require(a.ok(), || {
        format!("sent {sent}\ngot {}\nexpected 200", a.show())
    })?;
    let acked = a.u64_field(sent, "acked_seq")?;
    require(acked <= 2, || {
        format!(
            "sent {sent}\ngot acked_seq {acked}\nexpected at most 2: everything after seq 2 is \
             cut (a node that cannot cut precisely may drop more, down to 0, and say so)"
        )
    })?;
    for key in ["k3", "k4"] {
        s.expect_missing(key, "the entry that wrote it was cut by the truncation")
            .await?;
    }
    // The new leader sends what the node lacks: its seqs up to 2 are term
    // 1's (the logs agree there), its seq 3 is its own.
    let mut resend = entries(acked + 1, 2);
    resend.push(entry(3, 2, "k3", "new", 1));
    let now = s.append_ok(2, resend).await?;
    require(now == 3, || {
        format!(
            "after the cut (acked_seq {acked}), sent the new leader's entries {}..=3\ngot \
             acked_seq {now}\nexpected 3",
            acked + 1
        )
    })?;
    s.expect_value("k3", "new", 1).await?;
    Ok(format!(
        "cut to seq {acked}, then took the new leader's entries up to 3"
    ))
}

async fn installs_snapshot(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(1).await?;
    s.append_ok(1, entries(1, 2)).await?;
    let chunk = |n: u64, last: bool, data: Value| {
        json!({"term": 1, "to_incarnation": s.incarnation, "seq": 50, "data": data,
               "history": [[1, 1]], "chunk": n, "last": last})
    };
    let first = chunk(0, false, json!({"a": {"value": "x", "version": 3}}));
    let a = s
        .send(Method::POST, "/replicate/snapshot", Some(1), Some(&first))
        .await?;
    let sent = "POST /replicate/snapshot chunk 0 of 2 (seq 50)";
    require(a.ok(), || {
        format!("sent {sent}\ngot {}\nexpected 200", a.show())
    })?;
    s.expect_missing(
        "a",
        "only the first of two chunks arrived; a snapshot is installed once its last chunk is in",
    )
    .await?;
    let last = chunk(1, true, json!({"b": {"value": "y", "version": 9}}));
    let a = s
        .send(Method::POST, "/replicate/snapshot", Some(1), Some(&last))
        .await?;
    let sent = "POST /replicate/snapshot chunk 1 of 2 (last, seq 50)";
    require(a.ok(), || {
        format!("sent {sent}\ngot {}\nexpected 200", a.show())
    })?;
    let acked = a.u64_field(sent, "acked_seq")?;
    require(acked == 50, || {
        format!("sent {sent}\ngot acked_seq {acked}\nexpected 50: the node now holds the state at seq 50")
    })?;
    s.expect_value("a", "x", 3).await?;
    s.expect_value("b", "y", 9).await?;
    s.expect_missing(
        "k1",
        "the snapshot replaces the whole state, and it has no k1",
    )
    .await?;
    let acked = s.append_ok(1, vec![entry(51, 1, "c", "z", 1)]).await?;
    require(acked == 51, || {
        format!("after the snapshot at 50, sent entry 51\ngot acked_seq {acked}\nexpected 51")
    })?;
    Ok("installed at seq 50 after the last chunk, then took seq 51".into())
}

async fn vouches_for_reads(s: &mut Stage) -> Outcome {
    s.start().await?;
    let body = json!({"keys": ["k1"]});
    let read_term = |a: &Answer| a.body["term"].as_u64();
    let a = s
        .send(Method::POST, "/batch/read", None, Some(&body))
        .await?;
    require(a.ok() && read_term(&a) == Some(0), || {
        format!(
            "sent POST /batch/read to a node no leader has reconciled yet\ngot {}\nexpected \
             \"term\": 0: it cannot vouch that its data is any leader's",
            a.show()
        )
    })?;
    s.reconcile(1).await?;
    s.append_ok(1, entries(1, 1)).await?;
    // A new leader's handshake arrives; nothing reconciled it yet.
    s.handshake(2).await?;
    let a = s
        .send(Method::POST, "/batch/read", None, Some(&body))
        .await?;
    require(a.ok() && read_term(&a) == Some(1), || {
        format!(
            "sent GET /replicate of term 2 (a new leader's handshake), then POST /batch/read\n\
             got {}\nexpected \"term\": 1: the leader of term 2 has not yet confirmed (with an \
             append, a truncation or a snapshot) that your log is a prefix of its own, so your \
             reads are only vouched for by term 1's leader. Reporting the newest term you \
             heard of lets the coordinator count a read the new leader may take back",
            a.show()
        )
    })?;
    s.append_ok(2, vec![]).await?;
    let a = s
        .send(Method::POST, "/batch/read", None, Some(&body))
        .await?;
    require(read_term(&a) == Some(2), || {
        format!(
            "after an empty append of term 2 (the new leader's confirmation), POST /batch/read \
             got {}\nexpected \"term\": 2",
            a.show()
        )
    })?;
    Ok("term 0, then 1, and 2 only after term 2's append".into())
}

// ---------------------------------------------------------------------------
// Level 3: durable.

async fn survives_crash(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(1).await?;
    let mut held = 0;
    for round in 1..=5u64 {
        let from = held + 1;
        let to = held + round;
        let acked = s.append_ok(1, entries(from, to)).await?;
        // At once: an ack sent before the entry reached the disk is lost now.
        s.crash().await;
        s.start().await?;
        let a = s.handshake(1).await?;
        let sent = "GET /replicate after a SIGKILL and a restart";
        let now = a.u64_field(sent, "acked_seq")?;
        require(now >= acked, || {
            format!(
                "round {round}: sent entries {from}..={to}, got acked_seq {acked}, then SIGKILLed \
                 the node at once and started it again (same KVLAB_DATA_DIR)\n{sent} got {}\n\
                 expected acked_seq >= {acked}: an acknowledged entry must be on disk before the \
                 answer goes out (write it, flush, fsync, then answer)",
                a.show()
            )
        })?;
        s.expect_value(&format!("k{to}"), &format!("v{to}"), 1)
            .await?;
        held = acked;
        s.reconcile(1).await?;
    }
    Ok(format!(
        "5 crashes right after an ack; all {held} entries came back"
    ))
}

async fn recovers_term(s: &mut Stage) -> Outcome {
    s.start().await?;
    s.reconcile(3).await?;
    s.append_ok(3, vec![entry(1, 3, "t", "three", 1)]).await?;
    s.crash().await;
    s.start().await?;
    let a = s.append(2, vec![entry(2, 2, "t", "two", 2)]).await?;
    require(a.status == 409, || {
        format!(
            "the node saw term 3, was SIGKILLed and restarted; then got POST /replicate of term \
             2\ngot {}\nexpected 409 stale term: a node keeps the highest term it has seen on \
             disk, or a deposed leader could write to it after a restart",
            a.show()
        )
    })?;
    s.expect_value("t", "three", 1).await?;
    Ok("term 3 remembered across a crash".into())
}
