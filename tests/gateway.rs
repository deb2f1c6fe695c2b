//! The gateway: the lab's demos through it, its rate limiting on a live
//! cluster (incident INC-1), and its behaviour when the coordinator is down
//! or the input is bad (a gateway alone, in-process, with a stub coordinator).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use common::{http, millis, secs, wait, Cluster, DEMO_3_2_2, FAST_1_1_1};
use kvlab::gateway::{self, Gateway};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A blocking client whose requests come from `source` (any 127.x.y.z is
/// loopback on Linux), so a test can be several clients to the limiter.
fn client_from(source: Ipv4Addr) -> reqwest::blocking::Client {
    http().from(IpAddr::V4(source)).build()
}

const ALICE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OBSERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn answer(resp: reqwest::blocking::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().unwrap_or(Value::Null))
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn gw_write(http: &reqwest::blocking::Client, gw: &str, key: &str, value: &str) -> (u16, Value) {
    let (code, _, body) = answer(
        http.post(format!("{gw}/write"))
            .json(&json!({"key": key, "value": value}))
            .send()
            .unwrap(),
    );
    (code, body)
}

fn gw_read(http: &reqwest::blocking::Client, gw: &str, key: &str) -> (u16, Value) {
    let url = format!("{gw}/read/{}", kvlab::api::key_segment(key));
    let (code, _, body) = answer(http.get(url).send().unwrap());
    (code, body)
}

fn gw_get(http: &reqwest::blocking::Client, gw: &str, path: &str) -> (u16, Value) {
    let (code, _, body) = answer(http.get(format!("{gw}{path}")).send().unwrap());
    (code, body)
}

/// Sends `n` writes back to back; returns the statuses and the largest
/// `Retry-After` seen, with the time it was received.
fn write_burst(
    http: &reqwest::blocking::Client,
    gw: &str,
    n: usize,
) -> (Vec<u16>, Option<(u64, Instant)>) {
    let mut codes = Vec::new();
    let mut retry: Option<(u64, Instant)> = None;
    for i in 0..n {
        let resp = http
            .post(format!("{gw}/write"))
            .json(&json!({"key": format!("burst-{i}"), "value": "x"}))
            .send()
            .unwrap();
        codes.push(resp.status().as_u16());
        if let Some(after) = resp.headers().get("retry-after") {
            let after: u64 = after.to_str().unwrap().parse().unwrap();
            if retry.is_none_or(|(r, _)| after > r) {
                retry = Some((after, Instant::now()));
            }
        }
    }
    (codes, retry)
}

fn count(codes: &[u16], code: u16) -> usize {
    codes.iter().filter(|&&c| c == code).count()
}

// ---------------------------------------------------------------------------
// The demos, through the gateway
// ---------------------------------------------------------------------------

/// Demos 1 to 3 through the gateway: write, read, status, the gateway's own
/// endpoints, then the coordinator's 503 quorum errors passed through.
#[test]
fn demos_through_the_gateway() {
    // The lab's delays: follower-3 (async) is behind, so the read set's
    // sync member, follower-2, serves the read.
    let c = Cluster::start(DEMO_3_2_2);
    let http = client_from(ALICE);
    let gw = &c.gateway;

    let (code, w) = gw_write(&http, gw, "name", "distributed-systems");
    assert_eq!(code, 200, "{w}");
    assert_eq!(w["status"], "success");
    assert_eq!(
        (w["version"].as_u64(), w["sync_acks"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(w["quorum"], 2);
    assert_eq!(
        w["sync_replicated_to"],
        json!([c.node_url(1), c.node_url(2)])
    );

    let (code, r) = gw_read(&http, gw, "name");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["value"], "distributed-systems");
    assert_eq!(r["served_by"], "follower-2");
    assert_eq!(r["quorum_responses"], 2);

    // Keys with characters that mean something in a URL survive the trip.
    let odd = "path/to key?x=1#frag%";
    assert_eq!(gw_write(&http, gw, odd, "odd").0, 200);
    let (code, r) = gw_read(&http, gw, odd);
    assert_eq!((code, r["key"].as_str()), (200, Some(odd)), "{r}");

    let (code, missing) = gw_read(&http, gw, "nope");
    assert_eq!(code, 404);
    assert_eq!(missing, json!({"detail": "Key 'nope' not found"}));

    let (code, s) = gw_get(&http, gw, "/cluster-status");
    assert_eq!(code, 200);
    assert_eq!(s["leader"]["status"], "alive");
    assert_eq!(
        s["quorum"]["total_alive"], 4,
        "the leader counts, as in the original"
    );
    assert_eq!(s["quorum"]["alive_followers"], 3);
    assert_eq!(s["followers"].as_array().unwrap().len(), 3);

    let (code, headers, health) = answer(http.get(format!("{gw}/health")).send().unwrap());
    assert_eq!(code, 200);
    assert_eq!(health, json!({"status": "ok", "service": "gateway"}));
    assert!(
        headers.get("x-ratelimit-limit").is_none(),
        "no limit headers when rate limiting is off"
    );

    let (_, info) = gw_get(&http, gw, "/");
    assert_eq!(info["service"], "gateway");
    assert_eq!(info["coordinator"], c.coordinator);
    assert_eq!(info["rate_limiting"], false);

    let resp = http.get(format!("{gw}/graduate")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(resp.headers(), "content-type").starts_with("text/plain"));
    assert!(resp.text().unwrap().contains("graduate"));

    // Demo 3: two of three followers down. The coordinator's 503s come
    // through with their status and their detail, fields and all.
    assert_eq!(c.post("/kill/follower-1", json!({})).0, 200);
    assert_eq!(c.post("/kill/follower-2", json!({})).0, 200);
    let (code, w) = gw_write(&http, gw, "name", "lost");
    assert_eq!(code, 503, "{w}");
    let detail = &w["detail"];
    assert_eq!(detail["error"], "Write quorum not available");
    assert_eq!(
        (
            detail["alive_followers"].as_u64(),
            detail["required"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(
        w,
        c.write("name", "lost").1,
        "the same detail as the coordinator's"
    );
    let (code, r) = gw_read(&http, gw, "name");
    assert_eq!(code, 503, "{r}");
    assert_eq!(r["detail"], "Read quorum not available");

    let (_, stats) = gw_get(&http, gw, "/stats");
    assert_eq!(stats["rate_limiter"], Value::Null);
    let g = &stats["gateway"];
    assert_eq!(g["rate_limited_requests"], 0);
    assert_eq!(g["errors"], 2, "the two 503s: {stats}");
    // The original counts writes and reads; /cluster-status apart.
    assert_eq!(g["forwarded_requests"], 7, "{stats}");
    assert_eq!(g["forwarded_status_requests"], 1, "{stats}");
    assert_eq!(g["total_requests"], 12, "this /stats included: {stats}");
}

/// `kvlab up` hands its gateway the coordinator's router, and says so. (The
/// demos above, through `up`, check that path's answers; this checks that it
/// is the path taken. Its unit tests are in `src/gateway.rs`.)
#[test]
fn up_calls_its_coordinator_in_process() {
    use std::io::{BufRead, BufReader};
    let base = common::free_port_block();
    let port = |offset: u16| (base + offset).to_string();
    let scratch = common::scratch();
    let mut child = common::kvlab_in(&scratch)
        .args(["up", "--in-memory", "--quiet"])
        .args(FAST_1_1_1.split_whitespace())
        .args(["--coordinator-port", &port(0), "--registry-port", &port(1)])
        .args(["--node-base-port", &port(2)])
        .args(["--gateway-port", &port(common::GATEWAY_OFFSET)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start kvlab up");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("kvlab up: gateway"));
    stop(&mut child);
    let line = line.expect("kvlab up prints where its gateway forwards");
    let expected = format!("-> coordinator http://127.0.0.1:{base} (in-process),");
    assert!(line.contains(&expected), "{line}");
}

/// Inside `kvlab up` the gateway calls the coordinator's writes and reads as
/// functions (`gateway::LocalCoordinator`), not through its router: they
/// must still be the coordinator's own. The same answer through the gateway
/// as through the coordinator's port, the same refusals, and every request
/// counted in the coordinator's metrics whichever way it came.
#[test]
fn up_gateway_calls_are_the_coordinators_own() {
    let c = Cluster::start(FAST_1_1_1);
    let via_gateway = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = c.http.request(method, format!("{}{path}", c.gateway));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    let write = json!({"key": "odd/key ?", "value": "v1"});
    let (status, written) = via_gateway(reqwest::Method::POST, "/write", Some(write));
    assert_eq!(status, 200, "{written}");
    assert_eq!(
        (
            &written["status"],
            &written["version"],
            &written["sync_acks"]
        ),
        (&json!("success"), &json!(1), &json!(1)),
        "{written}"
    );
    let path = format!("/read/{}", kvlab::api::key_segment("odd/key ?"));
    let (status, read) = via_gateway(reqwest::Method::GET, &path, None);
    assert_eq!(status, 200, "{read}");
    assert_eq!(
        (status, read),
        c.read("odd/key ?"),
        "gateway and port alike"
    );

    // Refusals keep their status and detail.
    let (status, missing) = via_gateway(reqwest::Method::GET, "/read/nope", None);
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["detail"], "Key 'nope' not found");
    let (status, bad) = via_gateway(
        reqwest::Method::POST,
        "/write",
        Some(json!({"key": "", "value": "v"})),
    );
    assert_eq!(
        (status, &bad["detail"]["error"]),
        (400, &json!("invalid key"))
    );

    // Counted by the coordinator: 1 write, 2 reads found (one each way), 1
    // not found.
    let metrics = c
        .http
        .get(format!("{}/metrics", c.coordinator))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "kvlab_writes_total{result=\"ok\"} 1",
        "kvlab_reads_total{result=\"ok\"} 2",
        "kvlab_reads_total{result=\"not_found\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

/// SIGTERM (`up` stops its nodes), then SIGKILL after a grace period.
fn stop(child: &mut std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let stopped = wait("kvlab up to stop", secs(10))
        .every(millis(20))
        .try_until(|| matches!(child.try_wait(), Ok(Some(_))));
    if stopped.is_some() {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Rate limiting on a live cluster
// ---------------------------------------------------------------------------

/// A refused request gets 429 with docs/api.md's body and headers; admitted ones
/// carry the X-RateLimit and IETF RateLimit fields. /health counts too, and
/// every client address has its own quota.
#[test]
fn over_the_limit_is_429_with_headers_and_body() {
    let c = Cluster::start(&format!("{FAST_1_1_1} --rate-limit --rate-limit-max 3"));
    let alice = client_from(ALICE);
    let gw = &c.gateway;
    for expected_left in [2, 1, 0] {
        let (code, h, _) = answer(alice.get(format!("{gw}/health")).send().unwrap());
        assert_eq!(code, 200);
        assert_eq!(header(&h, "x-ratelimit-limit"), "3");
        assert_eq!(
            header(&h, "x-ratelimit-remaining"),
            expected_left.to_string()
        );
        assert_eq!(header(&h, "ratelimit-policy"), "3;w=60");
        let rl = header(&h, "ratelimit");
        let prefix = format!("limit=3, remaining={expected_left}, reset=");
        assert!(rl.starts_with(&prefix), "{rl}");
        let reset: u64 = rl[prefix.len()..].parse().unwrap();
        assert!((59..=60).contains(&reset), "{rl}");
    }
    let (code, h, body) = answer(
        alice
            .post(format!("{gw}/write"))
            .json(&json!({"key": "k", "value": "v"}))
            .send()
            .unwrap(),
    );
    assert_eq!(code, 429);
    let retry: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(header(&h, "x-ratelimit-limit"), "3");
    assert_eq!(header(&h, "x-ratelimit-remaining"), "0");
    assert_eq!(body["error"], "Too Many Requests");
    assert_eq!(body["retry_after"], retry);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("3 requests per 60 s"));

    // Another address is another client: the observer's quota is untouched.
    let observer = client_from(OBSERVER);
    let (code, stats) = gw_get(&observer, gw, "/stats");
    assert_eq!(code, 200);
    let rl = &stats["rate_limiter"];
    assert_eq!(rl["strategy"], "fixed_window", "the original's spelling");
    let clients = rl["clients"].as_object().expect("an object, by address");
    assert_eq!(
        clients.len() as u64,
        rl["tracked_clients"].as_u64().unwrap()
    );
    assert!(clients.values().all(|c| c["remaining"].as_u64().is_some()));
    assert!(stats["load_balancer"].is_null() && stats.get("load_balancer").is_some());
    assert_eq!(
        (rl["max_requests"].as_u64(), rl["window_seconds"].as_f64()),
        (Some(3), Some(60.0))
    );
    assert_eq!(rl["allowed_requests"], 4, "Alice's 3 and this one: {stats}");
    assert_eq!(rl["rejected_requests"], 1);
    assert_eq!(stats["gateway"]["rate_limited_requests"], 1);
    assert_eq!(
        stats["gateway"]["forwarded_requests"], 0,
        "the write never left"
    );
}

/// INC-1, short window: a burst of 25 against 20 per 2 s is partly refused;
/// once the window has passed (as Retry-After says), a burst of 10 sails
/// through: the limit was reset, not enforced over time.
#[test]
fn inc1_a_short_window_lets_the_next_burst_through() {
    let c = Cluster::start(&format!(
        "{FAST_1_1_1} --rate-limit --rate-limit-window 2 --rate-limit-max 20"
    ));
    let http = client_from(ALICE);
    let (codes, retry) = write_burst(&http, &c.gateway, 25);
    assert_eq!(count(&codes, 200), 20, "{codes:?}");
    assert_eq!(count(&codes, 429), 5, "{codes:?}");
    // Wait exactly as long as the gateway said (Retry-After rounds up).
    let (after, at) = retry.expect("a 429 carries Retry-After");
    assert!((1..=2).contains(&after), "{after}");
    std::thread::sleep((at + Duration::from_secs(after)).saturating_duration_since(Instant::now()));
    let (codes, _) = write_burst(&http, &c.gateway, 10);
    assert_eq!(codes, vec![200; 10]);
}

/// INC-1, the fix: with 10 per 60 s the same pattern is blocked; the second
/// burst, after the same short pause, is refused entirely.
#[test]
fn inc1_a_long_window_blocks_the_second_burst() {
    let c = Cluster::start(&format!(
        "{FAST_1_1_1} --rate-limit --rate-limit-window 60 --rate-limit-max 10"
    ));
    let http = client_from(ALICE);
    let (codes, _) = write_burst(&http, &c.gateway, 25);
    assert_eq!(count(&codes, 200), 10, "{codes:?}");
    assert_eq!(count(&codes, 429), 15, "{codes:?}");
    std::thread::sleep(Duration::from_secs(2));
    let (codes, retry) = write_burst(&http, &c.gateway, 10);
    assert_eq!(codes, vec![429; 10]);
    let (after, _) = retry.unwrap();
    assert!((50..=58).contains(&after), "about a minute left: {after}");
}

// ---------------------------------------------------------------------------
// A gateway alone, in-process
// ---------------------------------------------------------------------------

/// A gateway serving on an ephemeral port; it stops when this drops.
struct LocalGateway {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_gateway(coordinator: &str, extra: &[&str]) -> LocalGateway {
    let mut argv = vec!["gateway", "--coordinator", coordinator];
    argv.extend_from_slice(extra);
    let config = gateway::Config::from_args(&gateway::Args::parse_from(argv)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gw = Gateway::new(config).unwrap();
    tokio::spawn(gateway::serve(gw, listener, async {
        let _ = stopped.await;
    }));
    LocalGateway { url, _stop: stop }
}

/// A port nothing listens on (yet).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves a stub's `app` in the background until the returned sender is
/// dropped or used.
fn serve_stub(listener: tokio::net::TcpListener, app: Router) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    stop
}

/// A stand-in coordinator: enough of the API for the gateway to forward to.
async fn start_stub_coordinator(port: u16) -> tokio::sync::oneshot::Sender<()> {
    let app = Router::new()
        .route(
            "/write",
            post(|Json(body): Json<Value>| async move {
                Json(
                    json!({"status": "success", "key": body["key"], "value": body["value"],
                    "version": 1, "sync_acks": 1, "quorum": 1, "sync_replicated_to": []}),
                )
            }),
        )
        .route(
            "/status",
            get(|| async { Json(json!({"leader": null, "followers": [], "quorum": {}})) }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    serve_stub(listener, app)
}

async fn post_write(http: &reqwest::Client, gw: &str) -> (u16, Value) {
    let resp = http
        .post(format!("{gw}/write"))
        .json(&json!({"key": "k", "value": "v"}))
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// No coordinator: 503 "Coordinator unreachable", and the gateway keeps
/// serving. A coordinator comes up: the next request goes through. It goes
/// away and comes back again: same, with no gateway restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_down_is_503_and_recovery_needs_no_restart() {
    let port = unused_port();
    let coordinator = format!("http://127.0.0.1:{port}");
    let gw = start_gateway(&coordinator, &[]).await;
    let http = http().build_async();

    let (code, body) = post_write(&http, &gw.url).await;
    assert_eq!(code, 503, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.starts_with("Coordinator unreachable: "), "{detail}");
    assert!(
        detail.contains(&coordinator),
        "names the URL it tried: {detail}"
    );
    let resp = http
        .get(format!("{}/cluster-status", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let resp = http.get(format!("{}/health", gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the gateway itself is fine");

    for round in 0..2 {
        let stop = start_stub_coordinator(port).await;
        let (code, body) = post_write(&http, &gw.url).await;
        assert_eq!(
            (code, &body["status"]),
            (200, &json!("success")),
            "round {round}: {body}"
        );
        let resp = http
            .get(format!("{}/cluster-status", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        stop.send(()).unwrap();
        // Wait for the stub to let go of its port.
        tokio::task::block_in_place(|| {
            wait("the stub to stop", secs(5))
                .every(millis(20))
                .until(|| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        let (code, body) = post_write(&http, &gw.url).await;
        assert_eq!(code, 503, "round {round}: {body}");
    }

    let stats: Value = http
        .get(format!("{}/stats", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["gateway"]["errors"], 4, "{stats}");
    // Writes only: the original does not count /cluster-status.
    assert_eq!(stats["gateway"]["forwarded_requests"], 2, "{stats}");
    assert_eq!(stats["gateway"]["forwarded_status_requests"], 2, "{stats}");
}

/// Bad input is refused at the gateway with a clear `{"detail"}`, and never
/// forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx() {
    let gw = start_gateway(&format!("http://127.0.0.1:{}", unused_port()), &[]).await;
    let http = http().build_async();
    let url = format!("{}/write", gw.url);
    let write = |body: String, content_type: &'static str| {
        let request = http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        async move {
            let resp = request.send().await.unwrap();
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.unwrap())
        }
    };
    let json = "application/json";
    let (code, b) = write("{not json".into(), json).await;
    assert_eq!(
        (code, &b["detail"]["error"]),
        (400, &json!("malformed JSON body"))
    );
    let (code, b) = write(r#"{"key":"k"}"#.into(), json).await;
    assert_eq!(code, 422, "{b}");
    assert!(
        b["detail"]["reason"].as_str().unwrap().contains("value"),
        "{b}"
    );
    let (code, b) = write(r#"{"key":"k","value":"v"}"#.into(), "text/plain").await;
    assert_eq!(code, 415, "{b}");
    let (code, b) = write(r#"{"key":"","value":"v"}"#.into(), json).await;
    assert_eq!((code, &b["detail"]["error"]), (400, &json!("invalid key")));
    let long_key = format!(r#"{{"key":"{}","value":"v"}}"#, "k".repeat(2000));
    let (code, b) = write(long_key, json).await;
    assert_eq!(
        (code, &b["detail"]["error"]),
        (413, &json!("key too large"))
    );

    let resp = http
        .get(format!("{}/nowhere", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let b: Value = resp.json().await.unwrap();
    assert!(b["detail"].as_str().unwrap().contains("POST /write"), "{b}");

    let stats: Value = http
        .get(format!("{}/stats", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["gateway"]["forwarded_requests"], 0, "{stats}");
    assert_eq!(stats["gateway"]["errors"], 0, "{stats}");

    // No type at all is read as JSON, as the original lab did (Python's
    // `requests.post(url, data=json.dumps(...))`): it reaches the
    // coordinator (unreachable here: 503), never a 415.
    let resp = http
        .post(&url)
        .body(r#"{"key":"k","value":"v"}"#)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    assert!(code != 415 && code != 400, "{code}");
}

/// 100 concurrent requests from one client against a max of 10, over HTTP,
/// for each strategy: exactly 10 admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_the_gateway_admit_exactly_max() {
    for strategy in ["fixed-window", "sliding-window", "token-bucket"] {
        let gw = start_gateway(
            "http://127.0.0.1:1",
            &["--rate-limit", "--rate-limit-strategy", strategy],
        )
        .await;
        let http = http().build_async();
        let url = Arc::new(format!("{}/health", gw.url));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move { http.get(url.as_str()).send().await.unwrap().status() })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            if t.await.unwrap() == 200 {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10, "{strategy}");
    }
}

// ---------------------------------------------------------------------------
// Keys: every byte, every way in
// ---------------------------------------------------------------------------

/// `kvlab client --json ARGS...` against `gateway`: (exit ok, its JSON).
fn client_json(gateway: &str, args: &[&str]) -> (bool, Value) {
    let out = common::kvlab()
        .args(["client", "--gateway", gateway, "--json"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Issue 24: the gateway and `kvlab client` built the read URL with
/// `path_segments_mut().push`, which strips a tab, LF or CR (URL standard):
/// reading "a\nb" gave key "ab"'s value. The rule now, at every entry: a key
/// is carried byte for byte (`api::key_segment`). Every class of character
/// goes in through the gateway and comes back through the gateway and the
/// client, next to a decoy that it would be mistaken for if a byte were
/// lost; none reads another key's value.
#[test]
fn every_kind_of_key_reads_back_byte_exact_through_gateway_and_client() {
    let c = Cluster::start(&format!("{FAST_1_1_1} --in-memory"));
    let http = http().build();
    let all_c0: String = (1u8..0x20).map(char::from).collect();
    let longest_ascii = "k".repeat(kvlab::api::MAX_KEY_BYTES);
    let longest_utf8 = "é".repeat(kvlab::api::MAX_KEY_BYTES / 2);
    let keys: Vec<(&str, String)> = vec![
        ("tab", "t\tx".into()),
        ("LF", "a\nb".into()),
        ("CR", "a\rb".into()),
        ("CRLF", "a\r\nb".into()),
        ("NUL", "nul\0key".into()),
        ("every C0 control", format!("c0{all_c0}")),
        ("DEL and C1", "d\u{7f}\u{85}\u{9b}".into()),
        ("escape sequence", "\u{1b}[2J\u{1b}]0;title\u{7}".into()),
        ("space", "two words".into()),
        ("slash", "a/b/c".into()),
        ("question mark", "a?b=c".into()),
        ("hash", "a#b".into()),
        ("percent", "100%".into()),
        ("escaped dots", "%2e%2e".into()),
        ("escaped dots in a path", "a/%2e%2e/b".into()),
        ("encoded slash", "a%2Fb".into()),
        ("backslash", "a\\..\\b".into()),
        ("plus", "a+b".into()),
        ("non-ASCII", "ключ 鍵 🔑 é".into()),
        ("line separators", "a\u{2028}b\u{202e}c".into()),
        ("longest ASCII", longest_ascii),
        ("longest non-ASCII", longest_utf8),
    ];
    // What a lost byte would turn each key into: written first, with
    // values of their own.
    for (_, key) in &keys {
        let decoy: String = key.chars().filter(|c| !c.is_control()).collect();
        if !decoy.is_empty() && decoy != *key {
            assert_eq!(
                gw_write(&http, &c.gateway, &decoy, "DECOY").0,
                200,
                "{decoy:?}"
            );
        }
    }
    for (class, key) in &keys {
        let value = format!("value of {class}: \u{1b}\n\0");
        let (code, w) = gw_write(&http, &c.gateway, key, &value);
        assert_eq!(code, 200, "{class}: {w}");
        let (code, r) = gw_read(&http, &c.gateway, key);
        assert_eq!(code, 200, "{class} through the gateway: {r}");
        assert_eq!(r["key"], json!(key), "{class}");
        assert_eq!(r["value"], json!(value), "{class} through the gateway");
        // The client takes the key as an argument: argv holds anything
        // but NUL, which no command line can carry.
        if !key.contains('\0') {
            let (ok, r) = client_json(&c.gateway, &["read", key]);
            assert!(ok, "{class} through the client: {r}");
            assert_eq!(r["value"], json!(value), "{class} through the client");
            let again = format!("by the client: {class}\u{1b}\n");
            let (ok, w) = client_json(&c.gateway, &["write", key, &again]);
            assert!(ok, "{class}: the client's write: {w}");
            assert_eq!(gw_read(&http, &c.gateway, key).1["value"], json!(again));
        }
    }
    // The limits still hold: one byte more is refused, and dot segments.
    let too_long = "k".repeat(kvlab::api::MAX_KEY_BYTES + 1);
    assert_eq!(gw_write(&http, &c.gateway, &too_long, "v").0, 413);
    assert_eq!(gw_write(&http, &c.gateway, "a/../b", "v").0, 400);
}

// ---------------------------------------------------------------------------
// Several coordinators: the gateway follows the active one
// ---------------------------------------------------------------------------

/// A stand-in coordinator of the control plane: its `/status` says `this`
/// (`"active"` at `epoch`, or `"standby"`), and while it is not active every
/// other route is a standby's 503 `NOT_ACTIVE_COORDINATOR`; while active it
/// acknowledges writes itself (version 1). Flip `active` to depose it.
async fn start_control_plane_stub(
    epoch: u64,
    active: Arc<std::sync::atomic::AtomicBool>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    use std::sync::atomic::Ordering;
    let status_of = active.clone();
    let status = move || {
        let this = if status_of.load(Ordering::SeqCst) {
            "active"
        } else {
            "standby"
        };
        async move {
            Json(
                json!({"control_plane": {"mode": "etcd", "store": "etcd://x", "active": null,
                "epoch": epoch, "standbys": [], "this": this}}),
            )
        }
    };
    let everything_else = move |body: axum::body::Bytes| {
        let active = active.load(Ordering::SeqCst);
        async move {
            if active {
                let key =
                    serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)["key"].clone();
                if key == "hang" {
                    // A coordinator that took the write and never answers.
                    std::future::pending::<()>().await;
                }
                return Json(json!({"status": "success", "key": key, "version": 1,
                    "sync_acks": 1, "quorum": 1, "sync_replicated_to": [], "from": "stub"}))
                .into_response();
            }
            let headers = [(kvlab::api::HEADER_ACTIVE_COORDINATOR, "http://elsewhere")];
            let body = Json(json!({"detail": kvlab::api::NOT_ACTIVE_COORDINATOR}));
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, headers, body).into_response()
        }
    };
    use axum::response::IntoResponse;
    let app = Router::new()
        .route("/status", get(status))
        .fallback(everything_else);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, serve_stub(listener, app))
}

/// A gateway given a standby and a real cluster's coordinator (which has no
/// control plane: it counts as active), in either order, serves writes and
/// reads through the real one and says so; a coordinator that stops being
/// active (a standby now) costs no request: its 503 is retried on the active
/// one at once. A dead coordinator in the list is skipped the same way.
#[test]
fn a_gateway_follows_the_active_coordinator_in_any_order() {
    use std::sync::atomic::AtomicBool;
    let c = Cluster::start(FAST_1_1_1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = common::http().build();
    let standby = Arc::new(AtomicBool::new(false));
    let (standby_url, _stop_standby) = rt.block_on(start_control_plane_stub(7, standby));
    let dead = format!("http://127.0.0.1:{}", unused_port());
    for (i, list) in [
        format!("{standby_url},{}", c.coordinator),
        format!("{},{standby_url}", c.coordinator),
        format!("{dead},{standby_url},{}", c.coordinator),
    ]
    .iter()
    .enumerate()
    {
        let gw = rt.block_on(start_gateway(list, &[]));
        let key = format!("followed-{i}");
        let (code, body) = gw_write(&http, &gw.url, &key, "v");
        assert_eq!(code, 200, "{list}: {body}");
        assert!(
            body.get("from").is_none(),
            "the real coordinator answered: {body}"
        );
        let (code, body) = gw_read(&http, &gw.url, &key);
        assert_eq!((code, &body["value"]), (200, &json!("v")), "{list}: {body}");
        let (_, stats) = gw_get(&http, &gw.url, "/stats");
        assert_eq!(stats["following"]["url"], json!(c.coordinator), "{stats}");
        assert_eq!(
            stats["following"]["coordinators"].as_array().unwrap().len(),
            list.split(',').count()
        );
        let (_, info) = gw_get(&http, &gw.url, "/");
        assert_eq!(info["coordinator"], json!(c.coordinator), "{info}");
    }

    // An active coordinator of a higher epoch is followed; once it turns
    // standby, the next write is refused by it and retried on the real one.
    let active = Arc::new(AtomicBool::new(true));
    let (stub_url, _stop_stub) = rt.block_on(start_control_plane_stub(9, active.clone()));
    let gw = rt.block_on(start_gateway(&format!("{},{stub_url}", c.coordinator), &[]));
    wait("the gateway to follow the epoch-9 coordinator", secs(10))
        .until(|| gw_get(&http, &gw.url, "/stats").1["following"]["epoch"] == json!(9));
    let (code, body) = gw_write(&http, &gw.url, "epoch-9", "v");
    assert_eq!((code, &body["from"]), (200, &json!("stub")), "{body}");
    active.store(false, std::sync::atomic::Ordering::SeqCst);
    let (code, body) = gw_write(&http, &gw.url, "after-the-flip", "v");
    assert_eq!(code, 200, "retried on the active one: {body}");
    assert!(body.get("from").is_none(), "{body}");
    let (_, stats) = gw_get(&http, &gw.url, "/stats");
    assert_eq!(stats["following"]["url"], json!(c.coordinator), "{stats}");
    drop(gw);
    drop(rt);
}

/// Bad lists of coordinators are refused at start, naming the flag.
#[test]
fn a_gateway_refuses_bad_coordinator_lists() {
    for (list, needle) in [
        ("http://127.0.0.1:1,127.0.0.1:2", "'127.0.0.1:2'"),
        ("http://127.0.0.1:1,http://127.0.0.1:1", "twice"),
        (",", "at least one"),
    ] {
        let out = common::kvlab()
            .args(["gateway", "--port", "1", "--coordinator", list])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{list}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--coordinator") && err.contains(needle),
            "{list}: {err}"
        );
    }
}

/// A write that timed out on the active coordinator may have happened: it
/// is not sent to another one, and the client is told its outcome is
/// unknown. The gateway's console names the coordinator it follows.
#[test]
fn a_timed_out_write_is_not_retried_elsewhere() {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::AtomicBool;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = common::http().build();
    let (active, _stop_active) =
        rt.block_on(start_control_plane_stub(4, Arc::new(AtomicBool::new(true))));
    let (standby, _stop_standby) = rt.block_on(start_control_plane_stub(
        3,
        Arc::new(AtomicBool::new(false)),
    ));
    let gw = rt.block_on(start_gateway(
        &format!("{standby},{active}"),
        &["--timeout", "0.5"],
    ));
    wait("the gateway to follow the active stub", secs(10))
        .until(|| gw_get(&http, &gw.url, "/stats").1["following"]["epoch"] == json!(4));
    let (code, body) = gw_write(&http, &gw.url, "hang", "v");
    assert_eq!(code, 503, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("timed out") && detail.contains("may or may not have been applied"),
        "{body}"
    );
    assert!(detail.contains(&active), "names the coordinator: {body}");

    // The process says whom it follows.
    let port = common::free_port_block();
    let mut child = common::kvlab()
        .args(["gateway", "--port", &port.to_string()])
        .args(["--coordinator", &format!("{standby},{active}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("↪"));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("the gateway narrates whom it follows");
    assert_eq!(
        line,
        format!("↪ now following coordinator {active} (epoch 4) at {active}")
    );
}
