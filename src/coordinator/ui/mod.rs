//! The live view: a page at the coordinator's `/ui` that draws the cluster
//! as it runs (nodes, quorum sets, entries travelling on each replication
//! link, the event log) and has buttons for the lab's faults.
//!
//! The page (`index.html`, `app.js`, `style.css`) is built into the binary
//! with `include_str!`: no CDN, no build step, it works offline. It talks
//! only to the coordinator that served it (same origin):
//! - `GET /ui/state`: one JSON snapshot, aggregated here from `/status`, the
//!   leader's `/replication/links`, each node's `/stats`, the registry's
//!   `/nodes` (heartbeat ages) and the gateway's `/stats`, plus the faults
//!   injected through the coordinator that are in effect. Each component is
//!   asked with a short timeout; a part that does not answer is left out, so
//!   a dead component never stalls the page;
//! - `GET /ui/events`: the event log as server-sent events;
//! - `GET /ui/read/{key}`, `POST /ui/pause/{node}`: the two actions the
//!   coordinator's API does not have; the others (write, kill, crash,
//!   spawn, partition, slow disk) use the coordinator's own endpoints.
//!
//! `timeline.js` is kvlab's one timeline renderer: this page draws its
//! events with it, and `kvlab check` embeds it in report.html.
//!
//! Nothing here is on a request path: the view costs nothing when no
//! browser has it open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_FRAME_OPTIONS};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{LinkView, NodeStats, RegistryNodes, StatusResponse};
use crate::coordinator::faults::{Fault, FaultView};
use crate::coordinator::Coordinator;
use crate::http::{ApiError, ApiPath};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");
/// kvlab's one timeline renderer: the live view serves it, and `kvlab
/// check` embeds it in report.html (see the script's opening comment).
pub const TIMELINE_JS: &str = include_str!("timeline.js");

/// How long `/ui/state` waits for each component.
const ASK_TIMEOUT: Duration = Duration::from_millis(400);
/// How often the event stream looks for new events.
const EVENT_POLL: Duration = Duration::from_millis(200);

/// What the view remembers that the coordinator's table does not.
pub struct UiState {
    /// The gateway's URL, when the coordinator runs inside `kvlab up`.
    pub gateway: OnceLock<String>,
    /// Set when the coordinator stops: open event streams end, so the
    /// server's graceful shutdown does not wait for browsers forever.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for UiState {
    fn default() -> Self {
        UiState {
            gateway: OnceLock::new(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl UiState {
    /// Ends every open event stream (the coordinator is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

type Shared = State<Arc<Coordinator>>;

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/ui", get(|| page(INDEX_HTML, "text/html; charset=utf-8")))
        .route("/ui/app.js", get(|| page(APP_JS, "text/javascript")))
        .route(
            "/ui/timeline.js",
            get(|| page(TIMELINE_JS, "text/javascript")),
        )
        .route("/ui/style.css", get(|| page(STYLE_CSS, "text/css")))
        .route("/ui/state", get(state))
        .route("/ui/events", get(events))
        .route("/ui/read/{*key}", get(read))
        .route("/ui/pause/{node_id}", post(pause))
}

/// A file of the page. Never inside another site's frame: a page that
/// framed the view could trick a person into clicking its buttons.
async fn page(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (X_FRAME_OPTIONS, "DENY"),
            (CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        ],
        body,
    )
}

/// `GET /ui/state`: everything the page draws, in one answer.
#[derive(Serialize)]
struct UiSnapshot {
    now_ms: i64,
    status: StatusResponse,
    sync_delay_ms: u64,
    async_delay_ms: u64,
    links: Vec<LinkView>,
    /// node id → its `/stats` (applied seq, storage).
    stats: HashMap<String, NodeStats>,
    /// node id → seconds since its last heartbeat, as the registry sees it.
    heartbeat_age: HashMap<String, f64>,
    heartbeat_timeout_s: f64,
    /// node id → the faults in effect on it (heartbeats paused,
    /// partitioned, slow disk), injected through the coordinator.
    faults: HashMap<String, Vec<FaultView>>,
    gateway: Option<Value>,
}

async fn state(State(c): Shared) -> Json<UiSnapshot> {
    let status = c.status();
    let http = c.http.clone();
    let get_json = |url: String| {
        let http = http.clone();
        async move {
            let resp = http.get(url).timeout(ASK_TIMEOUT).send().await.ok()?;
            resp.json::<Value>().await.ok()
        }
    };
    let nodes: Vec<_> = status
        .leader
        .iter()
        .chain(&status.followers)
        .filter(|n| n.status != crate::api::NodeStatus::Dead)
        .map(|n| (n.node_id.clone(), n.url.clone()))
        .collect();
    let leader_url = status.leader.as_ref().map(|l| l.url.clone());
    let registry = c.config.launch.registry.clone();
    let gateway = c.ui.gateway.get().cloned();
    let (links, stats, registry, gateway) = tokio::join!(
        async {
            match leader_url {
                Some(u) => get_json(format!("{u}/replication/links")).await,
                None => None,
            }
        },
        futures::future::join_all(nodes.iter().map(|(id, url)| {
            let ask = get_json(format!("{url}/stats"));
            async move { (id.clone(), ask.await) }
        })),
        async {
            match registry {
                Some(u) => get_json(format!("{u}/nodes")).await,
                None => None,
            }
        },
        async {
            match gateway {
                Some(u) => get_json(format!("{u}/stats")).await,
                None => None,
            }
        },
    );
    let links = links
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let stats = stats
        .into_iter()
        .filter_map(|(id, v)| Some((id, serde_json::from_value(v?).ok()?)))
        .collect();
    let heartbeat_age = registry
        .and_then(|v| serde_json::from_value::<RegistryNodes>(v).ok())
        .map(|r| {
            r.nodes
                .into_iter()
                .map(|n| (n.node_id, n.last_seen_seconds_ago))
                .collect()
        })
        .unwrap_or_default();
    let incarnations: HashMap<&str, u64> = status
        .leader
        .iter()
        .chain(&status.followers)
        .map(|n| (n.node_id.as_str(), n.incarnation))
        .collect();
    let faults = c.faults.view(|id| incarnations.get(id).copied());
    Json(UiSnapshot {
        now_ms: chrono::Utc::now().timestamp_millis(),
        status,
        sync_delay_ms: (c.config.launch.sync_delay * 1000.0) as u64,
        async_delay_ms: (c.config.launch.async_delay * 1000.0) as u64,
        links,
        stats,
        heartbeat_age,
        heartbeat_timeout_s: 5.0,
        faults,
        gateway,
    })
}

/// `GET /ui/events`: every event from the ring, then each new one, as
/// server-sent events (`data:` is the event's JSON).
async fn events(State(c): Shared) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures::stream::unfold((c, 0u64, true), |(c, since, first)| async move {
        let mut closing = c.ui.closing.subscribe();
        loop {
            if *closing.borrow() {
                return None;
            }
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(EVENT_POLL) => {}
                    _ = closing.changed() => return None,
                }
            }
            let batch = c.events.since(since, 500);
            if let Some(last) = batch.last() {
                let next = last.id;
                let data = serde_json::to_string(&batch).unwrap_or_else(|_| "[]".into());
                return Some((Ok(SseEvent::default().data(data)), (c, next, false)));
            }
            if first {
                return Some((Ok(SseEvent::default().data("[]")), (c, since, false)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /ui/read/{key}`: a quorum read, as a client gets it, plus what each
/// follower of the read set answers when asked directly right after (so the
/// page can show a stale follower next to the version that won).
async fn read(State(c): Shared, ApiPath(key): ApiPath<String>) -> Json<Value> {
    let result = match c.read(key.clone(), true).await {
        Ok(r) => json!({"ok": true, "read": r}),
        Err(e) => json!({"ok": false, "status": e.status.as_u16(), "detail": e.detail}),
    };
    let status = c.status();
    let readers: Vec<_> = status
        .followers
        .iter()
        .filter(|f| f.sets.iter().any(|s| s == "read"))
        .collect();
    let http = c.http.clone();
    let answers = futures::future::join_all(readers.iter().map(|f| {
        let url = format!("{}/data/{}", f.url, crate::api::key_segment(&key));
        let http = http.clone();
        let id = f.node_id.clone();
        async move {
            let answer = match http.get(url).timeout(ASK_TIMEOUT).send().await {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    json!({"version": v["version"], "value": v["value"]})
                }
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => json!({"version": null}),
                Ok(r) => json!({"error": format!("HTTP {}", r.status().as_u16())}),
                Err(e) => json!({"error": crate::http::describe_reqwest_error(&e)}),
            };
            json!({"node_id": id, "answer": answer})
        }
    }))
    .await;
    Json(json!({"result": result, "followers": answers}))
}

/// `POST /ui/pause/{node}`: pauses that node's heartbeats for 8 s (longer
/// than the registry's 5 s timeout): the "network blip" fault. It goes the
/// way of every fault hook (see [`crate::coordinator::faults`]).
async fn pause(
    State(c): Shared,
    ApiPath(node_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    const SECONDS: f64 = 8.0;
    c.inject_fault(&node_id, Fault::PauseHeartbeats { seconds: SECONDS })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Code points that render as emoji, or ask for emoji presentation:
    /// where no emoji font is installed they show as empty boxes.
    fn is_emoji(c: char) -> bool {
        matches!(c as u32,
            0x1F000..=0x1FAFF   // pictographs, emoticons, transport, symbols
            | 0x2300..=0x23FF   // ⌚ ⏰ ⏳ ...
            | 0x2600..=0x27BF   // misc symbols and dingbats (☠ ✅ ✍ ❌ ➕)
            | 0x2B00..=0x2BFF   // ⬆ ⭐ ...
            | 0xFE0F            // emoji presentation selector
            | 0x200D            // zero-width joiner of emoji sequences
        )
    }

    /// The live view draws its icons itself (inline SVG, CSS shapes): the
    /// page's files hold no emoji, so nothing shows as an empty box.
    #[test]
    fn the_live_view_draws_its_icons_without_emoji() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
            ("timeline.js", TIMELINE_JS),
        ] {
            for (i, line) in text.lines().enumerate() {
                let found: Vec<char> = line.chars().filter(|c| is_emoji(*c)).collect();
                assert!(
                    found.is_empty(),
                    "{name}:{}: emoji {found:?} in `{}`",
                    i + 1,
                    line.trim()
                );
            }
        }
        assert!(INDEX_HTML.contains("<svg class=\"icon\""));
        assert!(APP_JS.contains("withoutEmoji(e.message)"));
    }
}
