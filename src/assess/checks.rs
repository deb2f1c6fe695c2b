//! One function per test type: do it against the cluster, say what happened.
//!
//! Each check returns an [`Outcome`]: passed or not, and a sentence a student
//! can act on. A check never panics and never returns an error: a cluster
//! that does not answer is a failed test, with the reason in its detail.
//!
//! Writes and reads go to the coordinator directly, so the gateway's limiter
//! cannot interfere with them; the rate-limit checks go through the gateway.
//! The waits inside checks (the stale read's delay, the sustained burst's
//! 5 s, the network blip's length) are the scenarios' own: the lesson is in
//! what time does to the cluster.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use super::grade;
use super::scenario::{BurstOperation, CostModel, KillCount, TestKind};
use super::settings::Settings;
use crate::api::{NodeStatus, RegistryNodes, StatusResponse};

/// An HTTP answer (status, body), or why there was none.
type Answer = Result<(u16, Value), String>;

/// What one test found.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub passed: bool,
    pub detail: String,
}

fn pass(detail: impl Into<String>) -> Outcome {
    Outcome {
        passed: true,
        detail: detail.into(),
    }
}

fn fail(detail: impl Into<String>) -> Outcome {
    Outcome {
        passed: false,
        detail: detail.into(),
    }
}

/// Where the cluster listens, the student's settings, and an HTTP client.
pub struct Target {
    pub http: reqwest::Client,
    pub coordinator: String,
    pub gateway: String,
    pub registry: String,
    pub settings: Settings,
    pub cost_model: CostModel,
}

/// The registry's heartbeat timeout and the nodes' heartbeat interval, as
/// `kvlab up` runs them: the network blip's timing depends on both.
const REGISTRY_TIMEOUT: f64 = 5.0;
const HEARTBEAT_INTERVAL: f64 = 2.0;
/// How many requests of a burst are in flight at once.
const BURST_CONCURRENCY: usize = 32;

impl Target {
    pub async fn run(&self, kind: &TestKind) -> Outcome {
        match kind {
            TestKind::Write { key, value } => self.write_check(key, value).await,
            TestKind::Read {
                key,
                expected_value,
            } => self.read_check(key, expected_value.as_deref()).await,
            TestKind::KillNode { target } => self.kill_check(std::slice::from_ref(target)).await,
            TestKind::KillNodes { count } => self.kill_nodes(*count).await,
            TestKind::SpawnNode {} => self.spawn_check().await,
            TestKind::RateLimit {} => self.rate_limit().await,
            TestKind::RateLimitSustained {} => self.rate_limit_sustained().await,
            TestKind::Burst {
                operation,
                count,
                key_prefix,
            } => self.burst(*operation, *count, key_prefix).await,
            TestKind::VerifyBurst { key_prefix, count } => {
                self.verify_burst(key_prefix, *count).await
            }
            TestKind::StaleRead { key, delay_ms } => self.stale_read(key, *delay_ms).await,
            TestKind::NetworkBlip { target, seconds } => self.network_blip(target, *seconds).await,
            TestKind::Budget {} => self.budget(),
        }
    }

    // -----------------------------------------------------------------------
    // HTTP helpers: (status, body) or a sentence saying why there is none.
    // -----------------------------------------------------------------------

    async fn post(&self, url: String, body: Value) -> Answer {
        let resp = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(35))
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "no answer from {url}: {}",
                    crate::http::describe_reqwest_error(&e)
                )
            })?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn get(&self, url: reqwest::Url) -> Answer {
        let resp = self
            .http
            .get(url.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "no answer from {url}: {}",
                    crate::http::describe_reqwest_error(&e)
                )
            })?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// `<base>/read/<key>`, with the key as one escaped path segment.
    fn read_url(base: &str, key: &str) -> Result<reqwest::Url, String> {
        let base = base.trim_end_matches('/');
        let url = format!("{base}/read/{}", crate::api::key_segment(key));
        reqwest::Url::parse(&url).map_err(|e| format!("{base}: {e}"))
    }

    pub async fn status(&self) -> Result<StatusResponse, String> {
        let url = format!("{}/status", self.coordinator);
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "no answer from {url}: {}",
                    crate::http::describe_reqwest_error(&e)
                )
            })?;
        resp.json().await.map_err(|e| format!("{url}: {e}"))
    }

    async fn write(&self, key: &str, value: &str) -> Answer {
        self.post(
            format!("{}/write", self.coordinator),
            json!({"key": key, "value": value}),
        )
        .await
    }

    async fn read(&self, key: &str) -> Answer {
        self.get(Self::read_url(&self.coordinator, key)?).await
    }

    // -----------------------------------------------------------------------
    // Writes and reads
    // -----------------------------------------------------------------------

    async fn write_check(&self, key: &str, value: &str) -> Outcome {
        match self.write(key, value).await {
            Ok((200, b)) => pass(format!(
                "wrote {key} = {value}: version {}, acks {}/{}",
                b["version"], b["sync_acks"], b["quorum"]
            )),
            Ok((status, b)) => fail(format!(
                "write of {key} refused: HTTP {status} {}",
                detail(&b)
            )),
            Err(e) => fail(e),
        }
    }

    async fn read_check(&self, key: &str, expected: Option<&str>) -> Outcome {
        let answer = match self.read(key).await {
            Ok(a) => a,
            Err(e) => return fail(e),
        };
        match (answer, expected) {
            ((200, b), Some(want)) if b["value"] == want => pass(format!(
                "read {key} = {want} (version {}) from {}",
                b["version"],
                served_by(&b)
            )),
            ((200, b), Some(want)) => fail(format!(
                "read {key} = {} (version {}) from {}, expected {want}: a stale read",
                text(&b["value"]),
                b["version"],
                served_by(&b)
            )),
            ((200, b), None) => pass(format!(
                "read {key} = {} (version {}) from {}",
                text(&b["value"]),
                b["version"],
                served_by(&b)
            )),
            ((404, _), Some(want)) => fail(format!(
                "{key} not found by the read set, expected {want}: the write has not reached the followers this read asked (a stale read)"
            )),
            // The original's rule: a test reads keys the scenario wrote, so
            // "not found" is a failure even without an expected value.
            ((404, _), None) => fail(format!(
                "{key} not found by the read set: the write has not reached the followers this read asked (a stale read)"
            )),
            ((status, b), _) => fail(format!("read of {key} failed: HTTP {status} {}", detail(&b))),
        }
    }

    /// Write, wait, read: is the version read at least the one written?
    async fn stale_read(&self, key: &str, delay_ms: u64) -> Outcome {
        let value = format!("cart-{}", chrono::Utc::now().timestamp_millis());
        let written = match self.write(key, &value).await {
            Ok((200, b)) => b["version"].as_u64().unwrap_or(0),
            Ok((status, b)) => {
                return fail(format!("the write failed: HTTP {status} {}", detail(&b)))
            }
            Err(e) => return fail(e),
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let waited = format!("wrote {key} version {written}, read {delay_ms} ms later");
        match self.read(key).await {
            Ok((200, b)) => {
                let read = b["version"].as_u64().unwrap_or(0);
                let from = served_by(&b);
                if read >= written {
                    pass(format!("{waited}: version {read} from {from}"))
                } else {
                    fail(format!("{waited}: STALE, version {read} from {from}"))
                }
            }
            Ok((404, _)) => fail(format!(
                "{waited}: STALE, the followers asked do not have the key yet"
            )),
            Ok((status, b)) => fail(format!("{waited}: HTTP {status} {}", detail(&b))),
            Err(e) => fail(e),
        }
    }

    // -----------------------------------------------------------------------
    // Membership
    // -----------------------------------------------------------------------

    async fn kill_check(&self, targets: &[String]) -> Outcome {
        let mut stopped = Vec::new();
        let mut can_write = Value::Null;
        for id in targets {
            let url = format!("{}/kill/{id}", self.coordinator);
            match self.post(url, json!({})).await {
                Ok((200, b)) => {
                    stopped.push(id.clone());
                    can_write = b["can_write"].clone();
                }
                Ok((status, b)) => {
                    return fail(format!("could not stop {id}: HTTP {status} {}", detail(&b)))
                }
                Err(e) => return fail(e),
            }
        }
        if stopped.is_empty() {
            return pass("nothing to stop (k = 0)");
        }
        pass(format!(
            "stopped {}; the cluster can write: {can_write}",
            stopped.join(", ")
        ))
    }

    async fn kill_nodes(&self, count: KillCount) -> Outcome {
        let k = count.resolve(self.settings.followers);
        let targets: Vec<String> = (1..=k).map(|i| format!("follower-{i}")).collect();
        self.kill_check(&targets).await
    }

    async fn spawn_check(&self) -> Outcome {
        let id = match self
            // A dead slot is reused first; else a new follower, even if the
            // larger N makes W + R <= N: the scenario asked for one.
            .post(format!("{}/spawn", self.coordinator), json!({"grow": true}))
            .await
        {
            Ok((200, b)) => b["node_id"].as_str().unwrap_or_default().to_string(),
            Ok((status, b)) => return fail(format!("spawn refused: HTTP {status} {}", detail(&b))),
            Err(e) => return fail(e),
        };
        match self.catch_up(&id).await {
            Ok(seq) => pass(format!("spawned {id}; caught up to log position {seq}")),
            Err(e) => fail(format!("spawned {id}, but it did not catch up: {e}")),
        }
    }

    /// Asks the coordinator to bring a follower up to date, and waits.
    pub async fn catch_up(&self, node_id: &str) -> Result<u64, String> {
        let url = format!("{}/catchup", self.coordinator);
        match self.post(url, json!({"node_id": node_id})).await? {
            (200, b) => Ok(b["applied_seq"].as_u64().unwrap_or(0)),
            (status, b) => Err(format!("HTTP {status} {}", detail(&b))),
        }
    }

    // -----------------------------------------------------------------------
    // Rate limiting and bursts
    // -----------------------------------------------------------------------

    /// Sends `n` reads through the gateway at once; counts the 429s.
    async fn gateway_burst(&self, n: usize) -> Result<usize, String> {
        let url = Self::read_url(&self.gateway, "rate-limit-probe")?;
        let answers: Vec<Result<u16, String>> = futures::stream::iter(0..n)
            .map(|_| {
                let url = url.clone();
                async move { self.get(url).await.map(|(s, _)| s) }
            })
            .buffer_unordered(BURST_CONCURRENCY)
            .collect()
            .await;
        let mut refused = 0;
        for a in answers {
            if a? == 429 {
                refused += 1;
            }
        }
        Ok(refused)
    }

    async fn rate_limit(&self) -> Outcome {
        let n = self.settings.rate_limit_max as usize + 5;
        match self.gateway_burst(n).await {
            Ok(0) => fail(format!(
                "{n} requests at once through the gateway: none refused, the flood reaches the cluster"
            )),
            Ok(r) => pass(format!("{n} requests at once: {r} refused with 429")),
            Err(e) => fail(e),
        }
    }

    /// A burst, 5 s of quiet, a second burst: the second should still be
    /// limited, or the limit forgets a flash sale within seconds.
    async fn rate_limit_sustained(&self) -> Outcome {
        let max = self.settings.rate_limit_max as usize;
        let (first, second) = (max + 5, max.min(10));
        let r1 = match self.gateway_burst(first).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r2 = match self.gateway_burst(second).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let said =
            format!("burst of {first}: {r1} refused; 5 s later, burst of {second}: {r2} refused");
        if second > 0 && r2 * 2 >= second {
            pass(said)
        } else {
            fail(format!("{said}: the limit forgot the first burst"))
        }
    }

    async fn burst(&self, op: BurstOperation, count: usize, prefix: &str) -> Outcome {
        let results: Vec<Answer> = futures::stream::iter(0..count)
            .map(|i| {
                let key = format!("{prefix}{i}");
                async move {
                    match op {
                        BurstOperation::Write => self.write(&key, &burst_value(&key)).await,
                        BurstOperation::Read => self.read(&key).await,
                    }
                }
            })
            .buffer_unordered(BURST_CONCURRENCY)
            .collect()
            .await;
        let ok = results
            .iter()
            .filter(|r| {
                matches!(
                    (op, r),
                    (BurstOperation::Write, Ok((200, _)))
                        | (BurstOperation::Read, Ok((200 | 404, _)))
                )
            })
            .count();
        let first_bad = results.iter().find_map(|r| match r {
            Ok((200, _)) => None,
            Ok((404, _)) if op == BurstOperation::Read => None,
            Ok((status, b)) => Some(format!("HTTP {status} {}", detail(b))),
            Err(e) => Some(e.clone()),
        });
        let what = match op {
            BurstOperation::Write => "writes",
            BurstOperation::Read => "reads",
        };
        match first_bad {
            None => pass(format!("{ok} of {count} {what} of {prefix}* succeeded")),
            Some(e) => fail(format!(
                "{ok} of {count} {what} of {prefix}* succeeded; first failure: {e}"
            )),
        }
    }

    async fn verify_burst(&self, prefix: &str, count: usize) -> Outcome {
        let results: Vec<(String, Answer)> = futures::stream::iter(0..count)
            .map(|i| {
                let key = format!("{prefix}{i}");
                async move {
                    let r = self.read(&key).await;
                    (key, r)
                }
            })
            .buffer_unordered(BURST_CONCURRENCY)
            .collect()
            .await;
        let mut good = 0;
        let mut first_bad = None;
        for (key, r) in results {
            match r {
                Ok((200, b)) if b["value"] == burst_value(&key) => good += 1,
                other => {
                    first_bad.get_or_insert_with(|| match other {
                        Ok((200, b)) => format!("{key} = {}", b["value"]),
                        Ok((status, _)) => format!("{key}: HTTP {status}"),
                        Err(e) => e,
                    });
                }
            }
        }
        match first_bad {
            None => pass(format!("all {count} keys of {prefix}* read back intact")),
            Some(e) => fail(format!(
                "{good} of {count} keys of {prefix}* read back intact; first miss: {e}"
            )),
        }
    }

    // -----------------------------------------------------------------------
    // Network blip (INC-2) and budget (INC-5)
    // -----------------------------------------------------------------------

    /// Silences a follower's heartbeats for `seconds` (the node's fault
    /// hook), then watches what the registry does about it.
    async fn network_blip(&self, target: &str, seconds: f64) -> Outcome {
        let original = match self.follower(target).await {
            Ok(f) if f.status == NodeStatus::Alive => f,
            Ok(f) => return fail(format!("{target} is {} before the blip", f.status.as_str())),
            Err(e) => return fail(e),
        };
        let url = format!("{}/admin/pause-heartbeats", original.url);
        match self.post(url, json!({"seconds": seconds})).await {
            Ok((200, _)) => {}
            Ok((status, b)) => {
                return fail(format!(
                    "the fault hook refused: HTTP {status} {}",
                    detail(&b)
                ))
            }
            Err(e) => return fail(e),
        }
        match self.watch_blip(target, original.incarnation, seconds).await {
            Blip::Replaced(new) => fail(self.ghost_detail(target, seconds, original.incarnation, new)),
            Blip::Survived => pass(format!(
                "{target} was silent for {seconds} s and came back before the registry replaced it: \
                 still incarnation {}, no ghost",
                original.incarnation
            )),
            Blip::NeverBack => fail(format!("{target} did not resume heartbeats after the {seconds} s blip")),
        }
    }

    /// Ends as soon as the coordinator shows a new incarnation in the slot (a
    /// replacement for a node that never died). Otherwise ends once the
    /// node's own heartbeats are back in the registry and, a moment later,
    /// it still holds its slot: a respawn the registry decided just before
    /// the heartbeats came back has reached the coordinator by then, and any
    /// later decision finds the node alive and leaves it alone.
    async fn watch_blip(&self, target: &str, incarnation: u64, seconds: f64) -> Blip {
        let start = tokio::time::Instant::now();
        let blip = Duration::from_secs_f64(seconds);
        let deadline = start + blip + Duration::from_secs_f64(HEARTBEAT_INTERVAL + 10.0);
        let mut back_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(now) = self.follower(target).await {
                if now.incarnation != incarnation {
                    return Blip::Replaced(now.incarnation);
                }
            }
            let elapsed = start.elapsed();
            if back_since.is_none()
                && elapsed >= blip
                && self
                    .heartbeating_since(target, incarnation, elapsed - blip)
                    .await
            {
                back_since = Some(tokio::time::Instant::now());
            }
            if back_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) {
                return Blip::Survived;
            }
            if tokio::time::Instant::now() > deadline {
                return Blip::NeverBack;
            }
        }
    }

    fn ghost_detail(&self, target: &str, seconds: f64, old: u64, new: u64) -> String {
        let s = &self.settings;
        let why = if seconds > REGISTRY_TIMEOUT {
            format!(
                "the {seconds} s blip outlasted the registry's {REGISTRY_TIMEOUT} s timeout, and auto-spawn replaced it after only {} s",
                s.auto_spawn_delay
            )
        } else {
            "it was replaced during the blip".to_string()
        };
        format!(
            "GHOST: {target} was alive all along, yet a replacement (incarnation {new}) took the slot of incarnation {old}: {why}. \
             Fencing means only the new copy serves (the old process was killed), but a healthy follower was thrown away and a new one had to be caught up"
        )
    }

    async fn follower(&self, id: &str) -> Result<crate::api::NodeView, String> {
        let s = self.status().await?;
        s.followers
            .into_iter()
            .find(|f| f.node_id == id)
            .ok_or_else(|| format!("{id} is not a follower of this cluster"))
    }

    /// Has this incarnation heartbeated within the last `within`?
    async fn heartbeating_since(&self, id: &str, incarnation: u64, within: Duration) -> bool {
        let url = format!("{}/nodes", self.registry);
        let Ok(resp) = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            return false;
        };
        let Ok(nodes) = resp.json::<RegistryNodes>().await else {
            return false;
        };
        nodes.nodes.iter().any(|n| {
            n.node_id == id
                && n.status == "alive"
                && n.incarnation == Some(incarnation)
                && n.last_seen_seconds_ago < within.as_secs_f64()
        })
    }

    fn budget(&self) -> Outcome {
        let c = grade::cost(self.settings.followers, self.cost_model);
        let said = format!(
            "{} nodes (1 leader + {} followers) x ${}/hour = ${}/hour, budget ${}/hour",
            c.nodes, self.settings.followers, self.cost_model.per_node_cost, c.per_hour, c.budget
        );
        if c.within_budget {
            pass(said)
        } else {
            fail(format!("{said}: over budget"))
        }
    }
}

/// How a network blip ended.
enum Blip {
    /// A new incarnation took the slot.
    Replaced(u64),
    /// The node's heartbeats came back and nobody replaced it.
    Survived,
    NeverBack,
}

fn burst_value(key: &str) -> String {
    format!("{key}-value")
}

/// A JSON string without its quotes; anything else as JSON.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn served_by(b: &Value) -> String {
    b["served_by"].as_str().unwrap_or("?").to_string()
}

/// An error body's `detail`, compactly.
fn detail(b: &Value) -> String {
    match b.get("detail") {
        Some(Value::String(s)) => s.clone(),
        Some(d) => d.to_string(),
        None if b.is_null() => String::new(),
        None => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_urls_escape_the_key() {
        let u = Target::read_url("http://127.0.0.1:7000", "cart/42 x").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:7000/read/cart%2F42%20x");
    }

    #[test]
    fn error_details_are_compact() {
        assert_eq!(
            detail(&json!({"detail": "Read quorum not available"})),
            "Read quorum not available"
        );
        assert_eq!(
            detail(&json!({"detail": {"error": "Write quorum not available"}})),
            r#"{"error":"Write quorum not available"}"#
        );
        assert_eq!(detail(&Value::Null), "");
    }
}
