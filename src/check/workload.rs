//! The clients: concurrent writes with unique values and reads over a few keys.
//!
//! Each client is a task with its own HTTP connection pool (keep-alive), its
//! own seeded random choices, and a name (`client_id`). It does one operation
//! at a time, as a real client would, and records each one: input, call
//! time, output, return time. Everything goes through one entry point (the
//! gateway, or the coordinator), using only the lab's API (`POST /write`,
//! `GET /read/{key}`), so any cluster that speaks it can be checked.
//!
//! What a write's answer means (the part that is easy to get wrong):
//! - 200: acknowledged, at the version it reports;
//! - 503 "Write quorum not available", kvlab's "Leader unreachable: cannot
//!   connect" (or the original's "... unreachable: ... Connection
//!   refused"), 429, another 4xx, or a connection that was never made:
//!   refused before the leader saw it, so it certainly did not happen,
//!   however deep the message is nested (see [`write_outcome`]);
//! - anything else (503 "Write quorum not met", "Leader unreachable", a
//!   timeout, a reset): the write may have happened, or may yet. Unknown.
//!
//! Several gateways (`--gateway URL1,URL2`): a client uses one until it
//! stops answering. A request whose connection was never made is sent at
//! once to the next one (it certainly did nothing). A request that may have
//! been delivered (a timeout, a reset) is never sent again elsewhere: it is
//! recorded as it is (a write stays unknown), and the client's *next*
//! operation goes to the next gateway. An HTTP answer, an error included,
//! is the cluster's answer and never moves a client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use super::history::{Input, Op, Outcome};
use crate::api;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The gateway's (or coordinator's) base URL; several, comma-separated.
    pub target: String,
    pub clients: usize,
    pub keys: usize,
    pub seed: u64,
    /// Put before every written value (`r3fa2c1.`), so that values are
    /// unique to the run when it shares a cluster with earlier runs
    /// (`--no-start-cluster`); empty for a cluster the run started.
    pub run: String,
    /// How long one request may take before its outcome counts as unknown.
    pub request_timeout: Duration,
    /// Each client pauses up to this long between operations, so a fast
    /// cluster does not produce a history too big to look at.
    pub max_think: Duration,
}

/// Running totals, for the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub refused: AtomicU64,
    pub unknown: AtomicU64,
    pub read_failed: AtomicU64,
}

impl Counters {
    fn count(&self, outcome: &Outcome) {
        let c = match outcome {
            Outcome::Written { .. } | Outcome::Found { .. } | Outcome::NotFound => &self.ok,
            Outcome::Refused { .. } => &self.refused,
            Outcome::Unknown { .. } => &self.unknown,
            Outcome::ReadFailed { .. } => &self.read_failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.refused.load(Ordering::Relaxed)
            + self.unknown.load(Ordering::Relaxed)
            + self.read_failed.load(Ordering::Relaxed)
    }
}

/// The key names: `k0`, `k1`, ...
pub fn key_name(i: usize) -> String {
    format!("k{i}")
}

/// One client's connection and identity.
pub struct Client {
    pub id: usize,
    http: reqwest::Client,
    /// The entry points; this client's current one.
    targets: crate::http::Endpoints,
    /// The run's clock: every time is measured from here.
    epoch: Instant,
}

impl Client {
    /// `target`: one base URL, or several comma-separated.
    pub fn new(id: usize, target: &str, timeout: Duration, epoch: Instant) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(1)
            .build()
            .unwrap_or_default();
        Client {
            id,
            http,
            // Checked by `check::start`; anything else is reported by the
            // first request, naming the URL.
            targets: crate::http::Endpoints::parse("--gateway", &[target.to_string()])
                .unwrap_or_else(|_| crate::http::Endpoints::one(target)),
            epoch,
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// One operation, recorded (its `id` is given later, in call order).
    pub async fn run(&self, input: Input) -> Op {
        let call = self.now();
        let output = match &input {
            Input::Write { key, value } => self.write(key, value).await,
            Input::Read { key } => self.read(key).await,
        };
        let end = self.now();
        let ret = (!output.is_unknown()).then_some(end);
        Op {
            id: 0,
            client_id: self.id,
            input,
            call,
            output,
            ret,
            end,
            start: false,
        }
    }

    /// Sends one request to the current entry point, or, if its connection
    /// cannot be made, to the next ones (see the module's notes). A request
    /// that may have been delivered is not sent again; the next one goes to
    /// the next entry point.
    async fn send(
        &self,
        request: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut tried = 0;
        loop {
            let (i, base) = self.targets.current();
            tried += 1;
            match request(base).send().await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    self.targets.move_past(i);
                    if !crate::http::never_reached(&e) || tried >= self.targets.len() {
                        return Err(e);
                    }
                }
            }
        }
    }

    async fn write(&self, key: &str, value: &str) -> Outcome {
        let body = serde_json::json!({"key": key, "value": value});
        let sent = self
            .send(|base| self.http.post(format!("{base}/write")).json(&body))
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => return request_failed(&e),
        };
        let status = resp.status().as_u16();
        let body: Value = match resp.json().await {
            Ok(body) => body,
            Err(e) => {
                return Outcome::Unknown {
                    reason: format!("HTTP {status} with an unreadable body: {e}"),
                }
            }
        };
        write_outcome(status, &body)
    }

    async fn read(&self, key: &str) -> Outcome {
        let sent = self
            .send(|base| self.http.get(format!("{base}/read/{key}")))
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                return Outcome::ReadFailed {
                    reason: crate::http::describe_reqwest_error(&e),
                }
            }
        };
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        read_outcome(status, &body)
    }
}

/// A request that got no HTTP answer: certain failure only if it never left.
fn request_failed(e: &reqwest::Error) -> Outcome {
    let reason = crate::http::describe_reqwest_error(e);
    if e.is_connect() {
        Outcome::Refused { reason }
    } else {
        Outcome::Unknown { reason }
    }
}

/// The meaning of a write's answer (see the module's notes).
pub fn write_outcome(status: u16, body: &Value) -> Outcome {
    if status == 200 {
        return match body["version"].as_u64() {
            Some(version) => Outcome::Written { version },
            None => Outcome::Unknown {
                reason: "acknowledged without a version".into(),
            },
        };
    }
    let messages = messages(body);
    let reason = format!(
        "HTTP {status}: {}",
        messages
            .first()
            .map_or("no detail".to_string(), |m| short_text(m))
    );
    let never_sent = messages.iter().any(|m| refused_before_sending(m));
    let certain = (status == 503 && never_sent) || status == 429 || (400..500).contains(&status);
    if certain {
        Outcome::Refused { reason }
    } else {
        Outcome::Unknown { reason }
    }
}

/// Every message an error body carries, outermost first. The lab's API
/// has nested them differently over time: kvlab's `{"detail": "..."}` or
/// `{"detail": {"error": "..."}}`; the original's coordinator's
/// `{"detail": {"error": "..."}}`, which its gateway wraps once more
/// (`{"detail": {"detail": {"error": "..."}}}`); `error` or `message` at
/// the top (a rate limiter's). So the search goes down through `detail`,
/// `error` and `message` at any depth (bounded).
fn messages(body: &Value) -> Vec<&str> {
    fn walk<'a>(v: &'a Value, depth: usize, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Object(map) if depth < 6 => {
                for field in ["detail", "error", "message"] {
                    if let Some(inner) = map.get(field) {
                        walk(inner, depth + 1, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(body, 0, &mut out);
    out
}

/// Does this message prove the write never reached the leader?
/// - "Write quorum not available": the coordinator refused it up front
///   (kvlab's and the original's words);
/// - a hop that could not even connect: kvlab's "Leader unreachable:
///   cannot connect", or the original's "Leader unreachable: ..." /
///   "Coordinator unreachable: ..." when its cause is a refused
///   connection ("Connection refused", "Failed to establish a new
///   connection"), or a bare "Connection refused".
///
/// A timeout or a reset after connecting proves nothing (the request may
/// have arrived), so those stay unknown.
fn refused_before_sending(message: &str) -> bool {
    let m = message.trim();
    if m.starts_with(api::WRITE_QUORUM_NOT_AVAILABLE) {
        return true;
    }
    let lower = m.to_ascii_lowercase();
    let connect_refused = lower.contains("connection refused")
        || lower.contains("failed to establish a new connection")
        || lower.starts_with("leader unreachable: cannot connect");
    let first_hop = lower.starts_with("leader unreachable")
        || lower.starts_with("coordinator unreachable")
        || lower.starts_with("connection refused")
        || lower.starts_with("[errno 111]");
    connect_refused && first_hop
}

/// The meaning of a read's answer: a value, "not found", or nothing learnt.
pub fn read_outcome(status: u16, body: &Value) -> Outcome {
    match (status, body["value"].as_str(), body["version"].as_u64()) {
        (200, Some(value), Some(version)) => Outcome::Found {
            value: value.to_string(),
            version,
            served_by: body["served_by"].as_str().unwrap_or("?").to_string(),
        },
        (404, _, _) => Outcome::NotFound,
        _ => Outcome::ReadFailed {
            reason: format!("HTTP {status}: {}", short(&body["detail"])),
        },
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => short_text(s),
        Value::Null => "no detail".into(),
        other => short_text(&other.to_string()),
    }
}

fn short_text(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Runs the clients until `stop` fires; returns every operation, in call
/// order, with ids. Values are unique: client c's n-th write is `c{c}-{n}`.
pub async fn run(
    config: &WorkloadConfig,
    epoch: Instant,
    counters: Arc<Counters>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Op> {
    let tasks: Vec<_> = (0..config.clients)
        .map(|id| {
            let config = config.clone();
            let counters = counters.clone();
            let stop = stop.clone();
            tokio::spawn(async move { client_loop(id, &config, epoch, &counters, stop).await })
        })
        .collect();
    let mut ops = Vec::new();
    for t in tasks {
        ops.extend(t.await.unwrap_or_default());
    }
    ops
}

async fn client_loop(
    id: usize,
    config: &WorkloadConfig,
    epoch: Instant,
    counters: &Counters,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Op> {
    let client = Client::new(id, &config.target, config.request_timeout, epoch);
    let mut rng =
        SmallRng::seed_from_u64(config.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut ops = Vec::new();
    let mut writes = 0;
    while !*stop.borrow() {
        let key = key_name(rng.random_range(0..config.keys.max(1)));
        let input = if rng.random_range(0..2) == 0 {
            writes += 1;
            Input::Write {
                key,
                value: format!("{}c{id}-{writes}", config.run),
            }
        } else {
            Input::Read { key }
        };
        let op = client.run(input).await;
        counters.count(&op.output);
        ops.push(op);
        let think = rng.random_range(0..=config.max_think.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    ops
}

/// Gives ids in call order (the order reports and the timeline use).
pub fn number(mut ops: Vec<Op>) -> Vec<Op> {
    ops.sort_by_key(|op| (op.call, op.client_id));
    for (i, op) in ops.iter_mut().enumerate() {
        op.id = i;
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_answers_are_classified_by_what_they_prove() {
        assert_eq!(
            write_outcome(200, &json!({"version": 3})),
            Outcome::Written { version: 3 }
        );
        let refused = json!({"detail": {"error": "Write quorum not available"}});
        assert!(matches!(
            write_outcome(503, &refused),
            Outcome::Refused { .. }
        ));
        let not_met = json!({"detail": {"error": "Write quorum not met", "sync_acks": 1}});
        assert!(matches!(
            write_outcome(503, &not_met),
            Outcome::Unknown { .. }
        ));
        let unreachable = json!({"detail": "Leader unreachable: timed out"});
        assert!(matches!(
            write_outcome(503, &unreachable),
            Outcome::Unknown { .. }
        ));
        let refused = json!({"detail": "Leader unreachable: cannot connect: Connection refused (os error 111)"});
        assert!(matches!(
            write_outcome(503, &refused),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            write_outcome(429, &json!({})),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            write_outcome(200, &json!({})),
            Outcome::Unknown { .. }
        ));
    }

    /// Done-means 4 of issue 27: every shape the lab's API has given a
    /// refusal in counts as refused, and the look-alikes that prove
    /// nothing stay unknown.
    #[test]
    fn refusals_are_found_however_the_lab_nests_them() {
        let refused = |status, body: Value| {
            assert!(
                matches!(write_outcome(status, &body), Outcome::Refused { .. }),
                "{status} {body} should be refused"
            )
        };
        let unknown = |status, body: Value| {
            assert!(
                matches!(write_outcome(status, &body), Outcome::Unknown { .. }),
                "{status} {body} should be unknown"
            )
        };
        // kvlab: a string, or an object with `error`.
        refused(503, json!({"detail": "Write quorum not available"}));
        refused(
            503,
            json!({"detail": {"error": "Write quorum not available", "alive_followers": 1, "required": 3}}),
        );
        // The original's coordinator behind its gateway: one level deeper.
        refused(
            503,
            json!({"detail": {"detail": {"error": "Write quorum not available", "alive_followers": 2, "required": 3}}}),
        );
        refused(
            503,
            json!({"detail": {"detail": "Write quorum not available: 2/3 followers"}}),
        );
        // A hop that could not connect, as kvlab and the original say it.
        refused(
            503,
            json!({"detail": "Leader unreachable: cannot connect: tcp connect error"}),
        );
        refused(
            503,
            json!({"detail": {"detail": "Leader unreachable: HTTPConnectionPool(host='localhost', port=7001): Max retries exceeded with url: /data (Caused by NewConnectionError('<urllib3.connection.HTTPConnection object>: Failed to establish a new connection: [Errno 111] Connection refused'))"}}),
        );
        refused(
            503,
            json!({"detail": "Coordinator unreachable: ('Connection aborted.', ConnectionRefusedError(111, 'Connection refused'))"}),
        );
        refused(503, json!({"detail": "Connection refused"}));
        // The original's rate limiter: no `detail` at all.
        refused(
            429,
            json!({"error": "Too Many Requests", "message": "Gateway rate limit exceeded"}),
        );
        // Nothing proves these never reached the leader.
        unknown(
            503,
            json!({"detail": {"detail": {"error": "Write quorum not met", "sync_acks": 1}}}),
        );
        unknown(
            503,
            json!({"detail": {"detail": "Leader unreachable: HTTPConnectionPool(host='localhost', port=7001): Read timed out. (read timeout=30)"}}),
        );
        unknown(
            503,
            json!({"detail": "Coordinator unreachable: Read timed out"}),
        );
        unknown(
            500,
            json!({"detail": "Internal Server Error: Connection refused by follower-2"}),
        );
        unknown(502, json!("Bad Gateway"));
    }

    /// A connection refused before anything was sent: refused, not unknown.
    #[tokio::test]
    async fn a_connection_refused_before_sending_is_a_refusal() {
        // Bind, learn the port, close: nothing listens there now.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = Client::new(
            0,
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(2),
            Instant::now(),
        );
        let op = client
            .run(Input::Write {
                key: "k0".into(),
                value: "v".into(),
            })
            .await;
        assert!(
            matches!(op.output, Outcome::Refused { .. }),
            "{:?}",
            op.output
        );
        assert!(op.ret.is_some());
    }

    /// A stand-in gateway on an ephemeral port: writes hang forever
    /// (`hang`) or are acknowledged at version 1.
    async fn stub_gateway(hang: bool) -> String {
        use axum::routing::post;
        let write = move || async move {
            if hang {
                std::future::pending::<()>().await;
            }
            axum::Json(json!({"version": 1}))
        };
        let app = axum::Router::new().route("/write", post(write));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    /// Several gateways: a write whose connection was never made goes to the
    /// next one at once; a write that timed out stays unknown (never sent
    /// again elsewhere), and only the client's next operation moves on.
    #[tokio::test]
    async fn a_client_moves_on_without_sending_a_write_twice() {
        let write = || Input::Write {
            key: "k0".into(),
            value: "v".into(),
        };
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (hangs, answers) = (stub_gateway(true).await, stub_gateway(false).await);
        let timeout = Duration::from_millis(300);
        let client = Client::new(0, &format!("{dead},{answers}"), timeout, Instant::now());
        let op = client.run(write()).await;
        assert_eq!(op.output, Outcome::Written { version: 1 });
        let client = Client::new(0, &format!("{hangs},{answers}"), timeout, Instant::now());
        let op = client.run(write()).await;
        assert!(op.output.is_unknown(), "{:?}", op.output);
        let op = client.run(write()).await;
        assert_eq!(
            op.output,
            Outcome::Written { version: 1 },
            "the next one moved"
        );
    }

    #[test]
    fn read_answers_are_values_not_found_or_nothing() {
        let found = json!({"value": "c1-2", "version": 2, "served_by": "follower-3"});
        assert_eq!(
            read_outcome(200, &found),
            Outcome::Found {
                value: "c1-2".into(),
                version: 2,
                served_by: "follower-3".into()
            }
        );
        assert_eq!(
            read_outcome(404, &json!({"detail": "Key 'k' not found"})),
            Outcome::NotFound
        );
        assert!(matches!(
            read_outcome(503, &json!({"detail": "Read quorum not available"})),
            Outcome::ReadFailed { .. }
        ));
    }
}
