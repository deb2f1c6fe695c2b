//! End-to-end runs of `kvlab bench` against a stub server in this process.
//!
//! The stub speaks both protocols (kvlab's `/write` and `/read/{key}`, and
//! etcd's `/v3/kv/put` and `/v3/kv/range`) over an in-memory map, and refuses
//! every fifth kvlab write with 429, so the tests can check that what the
//! generator reports matches what the server saw, request for request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use kvlab::api::WriteRequest;
use kvlab::bench::args::{Distribution, Plan, Stop, TargetKind};
use kvlab::bench::{execute, BenchError};

/// Every `RATE_LIMIT_EVERY`-th kvlab write is refused with 429.
const RATE_LIMIT_EVERY: u64 = 5;

#[derive(Default)]
struct Stub {
    data: Mutex<HashMap<String, String>>,
    requests: AtomicU64,
    writes: AtomicU64,
    refused: AtomicU64,
}

type Shared = Arc<Stub>;

async fn write(
    State(stub): State<Shared>,
    Json(req): Json<WriteRequest>,
) -> (StatusCode, Json<Value>) {
    stub.requests.fetch_add(1, Ordering::Relaxed);
    let n = stub.writes.fetch_add(1, Ordering::Relaxed) + 1;
    if n % RATE_LIMIT_EVERY == 0 {
        stub.refused.fetch_add(1, Ordering::Relaxed);
        let body = json!({"error": "Too Many Requests", "retry_after": 1, "message": "stub"});
        return (StatusCode::TOO_MANY_REQUESTS, Json(body));
    }
    stub.data
        .lock()
        .unwrap()
        .insert(req.key.clone(), req.value.clone());
    (
        StatusCode::OK,
        Json(json!({"status": "success", "key": req.key, "value": req.value})),
    )
}

async fn read(State(stub): State<Shared>, Path(key): Path<String>) -> (StatusCode, Json<Value>) {
    stub.requests.fetch_add(1, Ordering::Relaxed);
    match stub.data.lock().unwrap().get(&key) {
        Some(value) => (StatusCode::OK, Json(json!({"key": key, "value": value}))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"detail": format!("Key '{key}' not found")})),
        ),
    }
}

/// etcd stores base64 keys as given: the stub does not need to decode them.
async fn etcd_put(State(stub): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    stub.requests.fetch_add(1, Ordering::Relaxed);
    let key = body["key"].as_str().unwrap_or_default().to_string();
    let value = body["value"].as_str().unwrap_or_default().to_string();
    stub.data.lock().unwrap().insert(key, value);
    Json(json!({"header": {"revision": "1"}}))
}

async fn etcd_range(State(stub): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    stub.requests.fetch_add(1, Ordering::Relaxed);
    let key = body["key"].as_str().unwrap_or_default();
    match stub.data.lock().unwrap().get(key) {
        // Like etcd's gateway: a miss leaves `kvs` out entirely.
        Some(value) => {
            Json(json!({"header": {}, "kvs": [{"key": key, "value": value}], "count": "1"}))
        }
        None => Json(json!({"header": {}})),
    }
}

/// Start the stub on an ephemeral loopback port; returns its base URL.
async fn start_stub() -> (String, Shared) {
    let stub = Shared::default();
    let app = Router::new()
        .route("/write", post(write))
        .route("/read/{*key}", get(read))
        .route("/v3/kv/put", post(etcd_put))
        .route("/v3/kv/range", post(etcd_range))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), stub)
}

fn plan(url: &str, stop: Stop) -> Plan {
    Plan {
        url: url.to_string(),
        urls: url.split(',').map(String::from).collect(),
        target: TargetKind::Kvlab,
        clients: 4,
        stop,
        read_pct: 50,
        keys: 50,
        distribution: Distribution::Uniform,
        zipf_s: 1.0,
        value_size: 32,
        warmup: Duration::ZERO,
        preload: false,
        timeout: Duration::from_secs(5),
        seed: 7,
        json: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_count_run_adds_up_with_what_the_server_saw() {
    let (url, stub) = start_stub().await;
    let report = execute(&plan(&url, Stop::Ops(300))).await.unwrap();

    // Exactly the requested number of operations, split into reads and writes.
    assert_eq!(report.all.requests, 300);
    assert_eq!(report.read.requests + report.write.requests, 300);
    assert!(report.read.requests > 0 && report.write.requests > 0);
    // Plus one preflight read, which is not part of the figures.
    assert_eq!(stub.requests.load(Ordering::Relaxed), 301);

    // Every refusal the stub made shows up as a 429 on a write, and nothing else failed.
    let w = &report.write.outcomes;
    assert_eq!(stub.writes.load(Ordering::Relaxed), report.write.requests);
    assert_eq!(w.rate_limited_429, stub.refused.load(Ordering::Relaxed));
    assert_eq!(w.rate_limited_429, report.write.requests / RATE_LIMIT_EVERY);
    assert_eq!(w.ok + w.rate_limited_429, report.write.requests);
    assert_eq!(report.all.errors, w.rate_limited_429);

    // Reads found a key or did not: both are answers.
    let r = &report.read.outcomes;
    assert_eq!(r.ok + r.not_found, report.read.requests);
    assert!(r.not_found > 0, "the store started empty");

    let answers = report.all.outcomes.ok + report.all.outcomes.not_found;
    assert!(report.all.ops_per_sec > 0.0);
    assert!((report.all.ops_per_sec * report.elapsed_secs - answers as f64).abs() < 1e-6);
    let latency = report.all.latency_us.as_ref().expect("answers were timed");
    assert!(latency.p50 <= latency.p99 && latency.p99 <= latency.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_run_with_warmup_measures_only_the_window() {
    let (url, stub) = start_stub().await;
    let mut p = plan(&url, Stop::After(Duration::from_millis(300)));
    p.warmup = Duration::from_millis(200);
    p.read_pct = 100;
    let report = execute(&p).await.unwrap();

    assert!(report.all.requests > 0);
    // The warm-up's requests reached the server but are not in the figures.
    assert!(stub.requests.load(Ordering::Relaxed) > report.all.requests + 1);
    assert!(
        report.elapsed_secs >= 0.3,
        "window {} s",
        report.elapsed_secs
    );
    assert!(
        report.elapsed_secs < 2.0,
        "window {} s",
        report.elapsed_secs
    );
    assert_eq!(report.write.requests, 0);
    assert!(report.generator_cpu.wall_secs > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_target_with_preload_finds_every_key() {
    let (url, stub) = start_stub().await;
    let mut p = plan(&url, Stop::Ops(100));
    p.target = TargetKind::Etcd;
    p.read_pct = 100;
    p.keys = 20;
    p.preload = true;
    p.distribution = Distribution::Zipf;
    let report = execute(&p).await.unwrap();

    assert_eq!(
        stub.data.lock().unwrap().len(),
        20,
        "preload wrote every key"
    );
    assert_eq!(report.read.outcomes.ok, 100);
    assert_eq!(report.read.outcomes.not_found, 0);
    assert_eq!(report.all.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_fails_fast_and_clearly() {
    // Bind then drop, to get a loopback port that nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = execute(&plan(&url, Stop::Ops(10))).await.unwrap_err();
    assert!(matches!(err, BenchError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_refused_by_the_server_is_an_error() {
    let (url, _stub) = start_stub().await;
    let mut p = plan(&url, Stop::Ops(10));
    p.preload = true; // every fifth kvlab write is refused
    let err = execute(&p).await.unwrap_err();
    assert!(
        matches!(
            err,
            BenchError::Preload {
                failed: 10,
                total: 50,
                ..
            }
        ),
        "{err}"
    );
}

/// Run the real binary, as a person or a script would.
async fn kvlab(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kvlab"))
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_json_with_the_same_figures() {
    let (url, stub) = start_stub().await;
    let out = kvlab(&["bench", "--url", &url, "--ops", "40", "-c", "2", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(v["all"]["requests"], 40);
    assert_eq!(v["clients"], 2);
    assert_eq!(stub.requests.load(Ordering::Relaxed), 41);
    let refused = stub.refused.load(Ordering::Relaxed);
    assert_eq!(v["write"]["outcomes"]["rate_limited_429"], refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_explains_bad_flags() {
    let out = kvlab(&["bench", "--reads", "150", "--ops", "1"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--reads is a percentage: 0 to 100 (got 150)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_never_answer_are_counted_as_timeouts() {
    // Reads answer (so the preflight passes); writes hang forever.
    let app = Router::new()
        .route("/read/{*key}", get(|| async { StatusCode::NOT_FOUND }))
        .route("/write", post(std::future::pending::<StatusCode>));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut p = plan(&url, Stop::Ops(4));
    p.clients = 2;
    p.read_pct = 0;
    p.timeout = Duration::from_millis(200);
    let report = execute(&p).await.unwrap();
    assert_eq!(report.write.outcomes.timeout, 4);
    assert_eq!(report.all.errors, 4);
    assert!(report.all.latency_us.is_none(), "timeouts are not timed");
}

/// Several URLs, the first dead: the run goes to the next, and no operation
/// is lost to the dead one (the preflight found the one that answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_url_is_skipped() {
    let (url, stub) = start_stub().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let report = execute(&plan(&format!("{dead},{url}"), Stop::Ops(100)))
        .await
        .unwrap();
    assert_eq!(report.all.requests, 100);
    assert_eq!(
        report.all.outcomes.connect, 0,
        "nothing went to the dead one"
    );
    assert_eq!(
        stub.requests.load(Ordering::Relaxed),
        101,
        "and the preflight"
    );
    // Through the command, the flag repeated as `--gateway`; a bad one is named.
    let out = kvlab(&[
        "bench",
        "--gateway",
        &dead,
        "--gateway",
        &url,
        "--ops",
        "20",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kvlab(&["bench", "--url", &format!("{url},ftp://x"), "--ops", "1"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--url") && stderr.contains("ftp://x"),
        "{stderr}"
    );
}

/// The ceiling of `bench/compare.sh`: the bare server (`kvlab bench-server`)
/// answers every read and write `--target bare` sends, on kvlab's own
/// listener loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_server_answers_every_request_of_the_bare_target() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kvlab::http::serve(
        listener,
        kvlab::bench::bare::router(),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut p = plan(&format!("http://{addr}"), Stop::Ops(200));
    p.target = TargetKind::Bare;
    p.value_size = 100;
    let report = execute(&p).await.unwrap();
    assert_eq!(report.all.requests, 200);
    assert_eq!(report.all.errors, 0);
    assert_eq!(report.all.outcomes.ok, 200, "every request answered 200");
    assert!(report.read.requests > 0 && report.write.requests > 0);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
