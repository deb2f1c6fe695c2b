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
//!   connect", 429, another 4xx, or a connection that was never made:
//!   refused before the leader saw it, so it certainly did not happen;
//! - anything else (503 "Write quorum not met", "Leader unreachable", a
//!   timeout, a reset): the write may have happened, or may yet. Unknown.

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
    /// The gateway's (or coordinator's) base URL.
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
    target: String,
    /// The run's clock: every time is measured from here.
    epoch: Instant,
}

impl Client {
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
            target: target.trim_end_matches('/').to_string(),
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

    async fn write(&self, key: &str, value: &str) -> Outcome {
        let body = serde_json::json!({"key": key, "value": value});
        let sent = self
            .http
            .post(format!("{}/write", self.target))
            .json(&body)
            .send()
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
            .http
            .get(format!("{}/read/{key}", self.target))
            .send()
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
    let detail = &body["detail"];
    let error = detail["error"].as_str().or(detail.as_str()).unwrap_or("");
    let reason = format!("HTTP {status}: {}", short(detail));
    // kvlab's coordinator says "Leader unreachable: cannot connect" when its
    // connection to the leader was never made: the leader never saw it.
    let never_sent = error.starts_with("Leader unreachable: cannot connect");
    let certain = (status == 503 && (error == api::WRITE_QUORUM_NOT_AVAILABLE || never_sent))
        || status == 429
        || (400..500).contains(&status);
    if certain {
        Outcome::Refused { reason }
    } else {
        Outcome::Unknown { reason }
    }
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
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Null => "no detail".into(),
        other => other.to_string(),
    };
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
